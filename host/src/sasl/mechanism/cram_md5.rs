//! CRAM-MD5 (RFC 2195): the server sends a unique challenge, the client
//! answers `user SP hex(HMAC-MD5(secret, challenge))`.
//!
//! The server needs the secret itself (or the HMAC-MD5 key states derived
//! from it), which lets anyone holding it log in: it is password
//! equivalent. Backends store it only where an operator asks for it.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use md5::Md5;

use super::{Output, printable};

type HmacMd5 = Hmac<Md5>;

/// A fresh challenge `<random.timestamp@hostname>` in the RFC 2195 form;
/// the random part makes it unique even within one second.
pub fn challenge(hostname: &str) -> Result<Vec<u8>, getrandom::Error> {
    let random = getrandom::u64()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(format!("<{random}.{now}@{hostname}>").into_bytes())
}

/// The server side of CRAM-MD5.
///
/// The caller must create it with a challenge that is never reused
/// ([`challenge`]), pass `None` to the first [`CramMd5::step`] (the
/// mechanism takes no initial response), send the
/// [`Output::Challenge`], and pass the answer to `step`. On
/// [`Output::NeedCredentials`] the caller must look up the user's secret
/// and call [`CramMd5::credentials`], which ends the exchange.
#[derive(Debug)]
pub struct CramMd5 {
    challenge: Vec<u8>,
    state: State,
}

#[derive(Debug)]
enum State {
    Start,
    AwaitResponse,
    AwaitCredentials { user: String, digest: [u8; 16] },
    Done,
}

impl CramMd5 {
    /// A new exchange that will send `challenge`.
    pub fn new(challenge: Vec<u8>) -> CramMd5 {
        CramMd5 {
            challenge,
            state: State::Start,
        }
    }

    /// Feeds the client's response: `None` on the first step.
    pub fn step(&mut self, response: Option<&[u8]>) -> Output {
        match (std::mem::replace(&mut self.state, State::Done), response) {
            (State::Start, None) => {
                self.state = State::AwaitResponse;
                Output::Challenge(self.challenge.clone())
            }
            (State::Start, Some(_)) => {
                Output::Failure("CRAM-MD5: unexpected initial response".into())
            }
            (State::AwaitResponse, Some(response)) => match parse(response) {
                Some((user, digest)) => {
                    self.state = State::AwaitCredentials {
                        user: user.clone(),
                        digest,
                    };
                    Output::NeedCredentials { user }
                }
                None => Output::Failure("CRAM-MD5: malformed response".into()),
            },
            (State::AwaitResponse, None) => Output::Failure("CRAM-MD5: missing response".into()),
            (State::AwaitCredentials { .. }, _) => {
                Output::Failure("CRAM-MD5: step called before credentials".into())
            }
            (State::Done, _) => Output::Failure("CRAM-MD5: exchange already finished".into()),
        }
    }

    /// Ends the exchange after [`Output::NeedCredentials`]: `identity` is
    /// the name to report on success (the backend's canonical form),
    /// `secret` the user's stored CRAM-MD5 secret, `None` when the user is
    /// unknown or has none.
    pub fn credentials(&mut self, identity: &str, secret: Option<&[u8]>) -> Output {
        let State::AwaitCredentials { user, digest } =
            std::mem::replace(&mut self.state, State::Done)
        else {
            return Output::Failure("CRAM-MD5: credentials given out of turn".into());
        };
        // Without a secret, still compute a MAC so that "no such user"
        // costs what a wrong password costs.
        let ok = verify(
            secret.unwrap_or(b"postern-no-secret"),
            &self.challenge,
            &digest,
        );
        match (secret, ok) {
            (Some(_), true) => Output::Success(identity.to_owned()),
            (Some(_), false) => {
                Output::Failure(format!("CRAM-MD5: wrong password for {}", printable(&user)))
            }
            (None, _) => Output::Failure(format!(
                "CRAM-MD5: no CRAM-MD5 secret for {}",
                printable(&user)
            )),
        }
    }
}

/// Splits `user SP 32-hex-digits`; the user name may itself hold spaces.
fn parse(response: &[u8]) -> Option<(String, [u8; 16])> {
    let response = std::str::from_utf8(response).ok()?;
    let (user, hex) = response.rsplit_once(' ')?;
    if user.is_empty()
        || !super::plausible_name(user)
        || hex.len() != 32
        || !hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    let mut digest = [0u8; 16];
    for (i, out) in digest.iter_mut().enumerate() {
        *out = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some((user.to_owned(), digest))
}

fn verify(secret: &[u8], challenge: &[u8], digest: &[u8; 16]) -> bool {
    let mut mac = HmacMd5::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(challenge);
    // verify_slice compares in constant time.
    mac.verify_slice(digest).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHALLENGE: &[u8] = b"<1896.697170952@postoffice.reston.mci.net>";

    #[test]
    fn rfc2195_example() {
        let mut m = CramMd5::new(CHALLENGE.to_vec());
        assert_eq!(m.step(None), Output::Challenge(CHALLENGE.to_vec()));
        assert_eq!(
            m.step(Some(b"tim b913a602c7eda7a495b4e6e7334d3890")),
            Output::NeedCredentials { user: "tim".into() }
        );
        assert_eq!(
            m.credentials("tim", Some(b"tanstaaftanstaaf")),
            Output::Success("tim".into())
        );
        assert!(matches!(m.step(Some(b"x")), Output::Failure(_)));
    }

    #[test]
    fn uppercase_hex_is_accepted() {
        let mut m = CramMd5::new(CHALLENGE.to_vec());
        let _ = m.step(None);
        let _ = m.step(Some(b"tim B913A602C7EDA7A495B4E6E7334D3890"));
        assert_eq!(
            m.credentials("tim", Some(b"tanstaaftanstaaf")),
            Output::Success("tim".into())
        );
    }

    #[test]
    fn wrong_secret_or_none_fails() {
        for secret in [Some(&b"tanstaaftanstaaX"[..]), None] {
            let mut m = CramMd5::new(CHALLENGE.to_vec());
            let _ = m.step(None);
            let _ = m.step(Some(b"tim b913a602c7eda7a495b4e6e7334d3890"));
            assert!(matches!(m.credentials("tim", secret), Output::Failure(_)));
        }
    }

    #[test]
    fn malformed_responses_fail() {
        for resp in [
            &b""[..],
            b"tim",
            b"tim b913",
            b" b913a602c7eda7a495b4e6e7334d3890",
            b"tim zz13a602c7eda7a495b4e6e7334d3890",
            b"tim +913a602c7eda7a495b4e6e7334d3890",
            b"tim b913a602c7eda7a495b4e6e7334d389\xc3\xa9",
        ] {
            let mut m = CramMd5::new(CHALLENGE.to_vec());
            let _ = m.step(None);
            assert!(matches!(m.step(Some(resp)), Output::Failure(_)), "{resp:?}");
        }
    }

    #[test]
    fn initial_response_is_refused() {
        let mut m = CramMd5::new(CHALLENGE.to_vec());
        assert!(matches!(m.step(Some(b"tim")), Output::Failure(_)));
    }

    #[test]
    fn generated_challenges_have_the_rfc_form() {
        let c = String::from_utf8(challenge("mx.test").expect("random")).expect("ascii");
        assert!(c.starts_with('<') && c.ends_with("@mx.test>"), "{c}");
        let inner = &c[1..c.len() - "@mx.test>".len()];
        let (a, b) = inner.split_once('.').expect("dot");
        assert!(a.bytes().all(|b| b.is_ascii_digit()));
        assert!(b.bytes().all(|b| b.is_ascii_digit()));
        assert_ne!(challenge("mx.test").expect("random"), c.into_bytes());
    }
}
