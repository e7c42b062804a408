//! SASL mechanisms as sans-IO server-side state machines.
//!
//! Each mechanism takes the client's (base64-decoded) responses and
//! answers with an [`Output`]; it never reads a file, a socket or a clock.
//! Where it needs to know something about the user it says so
//! ([`Output::NeedCredentials`], [`Output::CheckPassword`]) and the caller
//! — a backend — looks it up and hands it back. That is what lets one
//! PLAIN implementation serve the password file, saslauthd and the tests
//! alike, and lets a fuzzer drive every mechanism with byte strings.
//!
//! Randomness (nonces, CRAM-MD5 challenges) is passed in by the caller for
//! the same reason; [`random_token`] is the helper backends use.

#[cfg(test)]
pub(crate) mod client;
pub mod cram_md5;
pub mod login;
pub mod plain;
pub mod scram;

#[cfg(test)]
mod proptests;

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// True if a user name may be taken as an identity: no control
/// characters (a line break in a name would forge log lines, and no
/// account has one).
pub fn plausible_name(name: &str) -> bool {
    !name.chars().any(char::is_control)
}

/// What a mechanism asks of its caller after a step.
#[must_use = "the caller must act on a mechanism's output"]
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// The caller must send this challenge to the client and pass the
    /// client's answer to the mechanism's `step`.
    Challenge(Vec<u8>),
    /// The client presented a plaintext password (PLAIN, LOGIN). The
    /// mechanism is finished: the caller must verify `password` for `user`
    /// and itself end the exchange with success or failure.
    CheckPassword {
        /// Authentication identity as the client sent it.
        user: String,
        /// The password; never log it.
        password: Password,
    },
    /// The mechanism needs the stored credentials of `user` (CRAM-MD5,
    /// SCRAM). The caller must look them up and pass them to the
    /// mechanism's `credentials` method before anything else.
    NeedCredentials {
        /// Authentication identity as the client sent it.
        user: String,
    },
    /// Authenticated as this identity; the exchange is over.
    Success(String),
    /// Not authenticated; the reason is for the log and holds no secret.
    Failure(String),
}

/// A password received from a client: bytes that never show in `Debug`
/// output and are overwritten when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(Vec<u8>);

impl Password {
    /// Wraps password bytes.
    pub fn new(bytes: Vec<u8>) -> Password {
        Password(bytes)
    }

    /// The password bytes, for the one place that checks them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl Drop for Password {
    fn drop(&mut self) {
        // Best effort: keeps the bytes out of freed heap memory; black_box
        // stops the compiler from dropping the "dead" stores.
        self.0.fill(0);
        std::hint::black_box(&self.0);
    }
}

/// Decides whether `authcid` may act as `authzid` (the identity a client
/// asks to be authorised as). Only the trivial case is allowed for now:
/// no authzid, or one naming the same user (ASCII case-insensitively, as
/// the password file lower-cases names). Proxy authorisation would plug
/// in here.
pub fn authorize(authcid: &str, authzid: Option<&str>) -> Result<(), String> {
    match authzid {
        None | Some("") => Ok(()),
        Some(z) if z.eq_ignore_ascii_case(authcid) => Ok(()),
        Some(_) => Err(format!(
            "{authcid} may not act as a different authorization identity"
        )),
    }
}

/// A random printable token of `bytes` random bytes (base64, so it holds
/// no `,` and fits SCRAM nonces and CRAM-MD5 challenges).
pub fn random_token(bytes: usize) -> Result<String, getrandom::Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)?;
    Ok(BASE64.encode(&buf))
}

/// Keeps a client-supplied user name printable in a log line.
pub(crate) fn printable(user: &str) -> String {
    const MAX: usize = 128;
    let mut out: String = user
        .chars()
        .take(MAX)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if user.chars().count() > MAX {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_debug_is_redacted() {
        let p = Password::new(b"hunter2".to_vec());
        assert_eq!(format!("{p:?}"), "Password(<redacted>)");
        let out = Output::CheckPassword {
            user: "u".into(),
            password: p,
        };
        assert!(!format!("{out:?}").contains("hunter2"));
    }

    #[test]
    fn authorization_is_same_user_only() {
        assert!(authorize("tim", None).is_ok());
        assert!(authorize("tim", Some("")).is_ok());
        assert!(authorize("tim@x.test", Some("TIM@x.test")).is_ok());
        assert!(authorize("Kurt", Some("Ursel")).is_err());
    }

    #[test]
    fn random_tokens_differ_and_hold_no_comma() {
        let a = random_token(18).expect("random");
        let b = random_token(18).expect("random");
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
        assert!(!a.contains(','));
    }

    #[test]
    fn printable_strips_controls_and_caps_length() {
        assert_eq!(printable("a\r\nb"), "a??b");
        assert_eq!(printable(&"x".repeat(500)).chars().count(), 129);
    }
}
