//! SCRAM-SHA-256 (RFC 7677, RFC 5802) without channel binding.
//!
//! The server stores no password, only the salt, the iteration count,
//! `StoredKey = H(HMAC(SaltedPassword, "Client Key"))` and
//! `ServerKey = HMAC(SaltedPassword, "Server Key")`, and proves to the
//! client that it knows them (`v=`). We do not offer SCRAM-SHA-256-PLUS,
//! so a client asking for channel binding (`p=`) is refused and one that
//! could have used it (`y`) is accepted.
//!
//! Over SMTP (RFC 4954) the server-final message travels as a `334`
//! challenge that the client acknowledges with an empty response before
//! the server says `235`; the state machine models that last round trip.
//!
//! Passwords are SASLprep'd where the keys are derived (`postern user`,
//! see `passwd::file::scram_password`), as clients do before hashing.
//! Names are used as they come (they are mail addresses); -PLUS channel
//! binding is not offered.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Output, authorize, printable};

type HmacSha256 = Hmac<Sha256>;

/// The mechanism's name.
pub const NAME: &str = "SCRAM-SHA-256";
/// Iteration count for newly derived keys (RFC 7677's minimum, and what
/// clients expect).
pub const ITERATIONS: u32 = 4096;
/// Length of newly generated salts, in bytes.
pub const SALT_LEN: usize = 16;

/// A user's stored SCRAM-SHA-256 verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// PBKDF2 salt.
    pub salt: Vec<u8>,
    /// `H(ClientKey)`: checks the client's proof.
    pub stored_key: [u8; 32],
    /// Signs the server's proof.
    pub server_key: [u8; 32],
}

impl fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramKeys")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramKeys {
    /// Derives the verifier from a password (slow by design: PBKDF2 with
    /// `iterations` rounds).
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> ScramKeys {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        ScramKeys {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// Keys for a user who does not exist, stable per name so that a
    /// client cannot tell an unknown user by a salt that changes on every
    /// attempt. `secret` must be random and stay private to the process;
    /// no proof can match these keys.
    pub fn dummy(user: &str, secret: &[u8]) -> ScramKeys {
        let derive = |label: &[u8]| {
            let mut mac =
                HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
            mac.update(label);
            mac.update(user.as_bytes());
            <[u8; 32]>::from(mac.finalize().into_bytes())
        };
        ScramKeys {
            iterations: ITERATIONS,
            salt: derive(b"salt\0")[..SALT_LEN].to_vec(),
            stored_key: derive(b"stored\0"),
            server_key: derive(b"server\0"),
        }
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The server side of SCRAM-SHA-256.
///
/// The caller must create it with a fresh random nonce (printable ASCII
/// without `,`, for example [`super::random_token`]), pass the client's
/// initial response (or `None`) to the first [`ScramSha256::step`], and
/// then:
/// - on [`Output::Challenge`], send it and pass the answer to `step`;
/// - on [`Output::NeedCredentials`], look up the user's keys and call
///   [`ScramSha256::credentials`] — with [`ScramKeys::dummy`] keys when
///   the user is unknown, so that the exchange looks the same and fails
///   only at the proof.
///
/// After a valid proof the mechanism sends the server-final message as a
/// challenge; the client's empty answer yields [`Output::Success`].
#[derive(Debug)]
pub struct ScramSha256 {
    server_nonce: String,
    state: State,
}

#[derive(Debug)]
enum State {
    Start,
    AwaitClientFirst,
    AwaitCredentials(ClientFirst),
    AwaitClientFinal {
        first: ClientFirst,
        server_first: String,
        keys: ScramKeys,
        identity: String,
    },
    AwaitAck {
        identity: String,
    },
    Done,
}

#[derive(Debug)]
struct ClientFirst {
    gs2_header: String,
    bare: String,
    user: String,
    nonce: String,
}

impl ScramSha256 {
    /// A new exchange with our part of the nonce.
    pub fn new(server_nonce: String) -> ScramSha256 {
        ScramSha256 {
            server_nonce,
            state: State::Start,
        }
    }

    /// Feeds the client's response: `None` only on the first step, when
    /// the client sent no initial response.
    pub fn step(&mut self, response: Option<&[u8]>) -> Output {
        match (std::mem::replace(&mut self.state, State::Done), response) {
            (State::Start, None) => {
                self.state = State::AwaitClientFirst;
                Output::Challenge(Vec::new())
            }
            (State::Start | State::AwaitClientFirst, Some(message)) => {
                match parse_client_first(message) {
                    Ok(first) => {
                        let user = first.user.clone();
                        self.state = State::AwaitCredentials(first);
                        Output::NeedCredentials { user }
                    }
                    Err(reason) => Output::Failure(format!("{NAME}: {reason}")),
                }
            }
            (
                State::AwaitClientFinal {
                    first,
                    server_first,
                    keys,
                    identity,
                },
                Some(message),
            ) => match self.verify_client_final(&first, &server_first, &keys, message) {
                Ok(server_final) => {
                    self.state = State::AwaitAck { identity };
                    Output::Challenge(server_final.into_bytes())
                }
                Err(reason) => {
                    Output::Failure(format!("{NAME}: {reason} for {}", printable(&first.user)))
                }
            },
            (State::AwaitAck { identity }, Some(b"")) => Output::Success(identity),
            (State::AwaitAck { .. }, Some(_)) => {
                Output::Failure(format!("{NAME}: unexpected data after server-final"))
            }
            (State::AwaitCredentials(_), _) => {
                Output::Failure(format!("{NAME}: step called before credentials"))
            }
            (State::Done, _) => Output::Failure(format!("{NAME}: exchange already finished")),
            (_, None) => Output::Failure(format!("{NAME}: missing response")),
        }
    }

    /// Continues after [`Output::NeedCredentials`]: `identity` is the name
    /// to report on success (the backend's canonical form), `keys` the
    /// user's stored keys (or dummy keys for an unknown user).
    pub fn credentials(&mut self, identity: &str, keys: &ScramKeys) -> Output {
        let State::AwaitCredentials(first) = std::mem::replace(&mut self.state, State::Done) else {
            return Output::Failure(format!("{NAME}: credentials given out of turn"));
        };
        let server_first = format!(
            "r={}{},s={},i={}",
            first.nonce,
            self.server_nonce,
            BASE64.encode(&keys.salt),
            keys.iterations
        );
        self.state = State::AwaitClientFinal {
            first,
            server_first: server_first.clone(),
            keys: keys.clone(),
            identity: identity.to_owned(),
        };
        Output::Challenge(server_first.into_bytes())
    }

    /// Checks client-final-message and returns server-final-message.
    fn verify_client_final(
        &self,
        first: &ClientFirst,
        server_first: &str,
        keys: &ScramKeys,
        message: &[u8],
    ) -> Result<String, &'static str> {
        let message = std::str::from_utf8(message).map_err(|_| "client-final is not UTF-8")?;
        let (without_proof, proof) = message
            .rsplit_once(",p=")
            .ok_or("client-final without proof")?;
        let mut attrs = without_proof.split(',');
        let binding = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or("client-final without channel binding")?;
        let binding = BASE64
            .decode(binding)
            .map_err(|_| "channel binding is not base64")?;
        if binding != first.gs2_header.as_bytes() {
            return Err("channel binding does not match the gs2 header");
        }
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or("client-final without nonce")?;
        if nonce.strip_prefix(first.nonce.as_str()) != Some(self.server_nonce.as_str()) {
            return Err("nonce mismatch");
        }
        let proof: [u8; 32] = BASE64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or("malformed proof")?;
        let auth_message = format!("{},{server_first},{without_proof}", first.bare);
        let signature = hmac(&keys.stored_key, auth_message.as_bytes());
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(signature) {
            *k ^= s;
        }
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        if !bool::from(stored.ct_eq(&keys.stored_key)) {
            return Err("wrong password");
        }
        let server_signature = hmac(&keys.server_key, auth_message.as_bytes());
        Ok(format!("v={}", BASE64.encode(server_signature)))
    }
}

/// Parses `gs2-header client-first-message-bare`.
fn parse_client_first(message: &[u8]) -> Result<ClientFirst, String> {
    let message = std::str::from_utf8(message).map_err(|_| "client-first is not UTF-8")?;
    let mut parts = message.splitn(3, ',');
    let (Some(flag), Some(authzid), Some(bare)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("malformed client-first".into());
    };
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => return Err("channel binding is not supported".into()),
        _ => return Err("malformed gs2 header".into()),
    }
    // The gs2 header must come back byte for byte in `c=`.
    let gs2_header = format!("{flag},{authzid},");
    let authzid = match authzid {
        "" => None,
        a => Some(decode_saslname(
            a.strip_prefix("a=").ok_or("malformed authzid")?,
        )?),
    };
    let mut attrs = bare.split(',');
    let user = match attrs.next() {
        Some(a) if a.starts_with("m=") => return Err("mandatory extension not supported".into()),
        Some(a) => decode_saslname(
            a.strip_prefix("n=")
                .ok_or("client-first without user name")?,
        )?,
        None => return Err("client-first without user name".into()),
    };
    if user.is_empty() {
        return Err("empty user name".into());
    }
    if !super::plausible_name(&user) {
        return Err("control characters in the user name".into());
    }
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or("client-first without nonce")?;
    if nonce.is_empty() || !nonce.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err("malformed client nonce".into());
    }
    authorize(&user, authzid.as_deref()).map_err(|r| printable(&r))?;
    Ok(ClientFirst {
        gs2_header,
        bare: bare.to_owned(),
        user,
        nonce: nonce.to_owned(),
    })
}

/// Decodes a SCRAM `saslname`: `=2C` is `,` and `=3D` is `=`.
fn decode_saslname(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err("malformed user name encoding".into()),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677 section 3.
    const CLIENT_FIRST: &[u8] = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const SERVER_FIRST: &[u8] =
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &[u8] = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &[u8] = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_keys() -> ScramKeys {
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        ScramKeys::derive(b"pencil", &salt, 4096)
    }

    fn to_client_final(m: &mut ScramSha256) {
        assert_eq!(
            m.step(Some(CLIENT_FIRST)),
            Output::NeedCredentials {
                user: "user".into()
            }
        );
        assert_eq!(
            m.credentials("user", &rfc_keys()),
            Output::Challenge(SERVER_FIRST.to_vec())
        );
    }

    #[test]
    fn rfc7677_example() {
        let mut m = ScramSha256::new(SERVER_NONCE.into());
        to_client_final(&mut m);
        assert_eq!(
            m.step(Some(CLIENT_FINAL)),
            Output::Challenge(SERVER_FINAL.to_vec())
        );
        assert_eq!(m.step(Some(b"")), Output::Success("user".into()));
        assert!(matches!(m.step(Some(b"")), Output::Failure(_)));
    }

    #[test]
    fn rfc7677_example_without_initial_response() {
        let mut m = ScramSha256::new(SERVER_NONCE.into());
        assert_eq!(m.step(None), Output::Challenge(Vec::new()));
        to_client_final(&mut m);
        assert_eq!(
            m.step(Some(CLIENT_FINAL)),
            Output::Challenge(SERVER_FINAL.to_vec())
        );
        assert_eq!(m.step(Some(b"")), Output::Success("user".into()));
    }

    #[test]
    fn wrong_password_fails() {
        let mut m = ScramSha256::new(SERVER_NONCE.into());
        let _ = m.step(Some(CLIENT_FIRST));
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        let _ = m.credentials("user", &ScramKeys::derive(b"pencil2", &salt, 4096));
        let out = m.step(Some(CLIENT_FINAL));
        assert!(
            matches!(out, Output::Failure(ref r) if r.contains("wrong password")),
            "{out:?}"
        );
    }

    #[test]
    fn dummy_keys_are_stable_and_fail() {
        let a = ScramKeys::dummy("nobody", b"k");
        assert_eq!(a, ScramKeys::dummy("nobody", b"k"));
        assert_ne!(a.salt, ScramKeys::dummy("other", b"k").salt);
        let mut m = ScramSha256::new(SERVER_NONCE.into());
        let _ = m.step(Some(CLIENT_FIRST));
        let _ = m.credentials("user", &a);
        assert!(matches!(m.step(Some(CLIENT_FINAL)), Output::Failure(_)));
    }

    #[test]
    fn tampered_final_messages_fail() {
        let bad: [&[u8]; 6] = [
            // channel binding for "y,," instead of "n,,"
            b"c=eSws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            // nonce without the server part
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            // proof flipped
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=eHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            // short proof
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzb",
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            b"",
        ];
        for msg in bad {
            let mut m = ScramSha256::new(SERVER_NONCE.into());
            to_client_final(&mut m);
            assert!(matches!(m.step(Some(msg)), Output::Failure(_)), "{msg:?}");
        }
    }

    #[test]
    fn ack_must_be_empty() {
        let mut m = ScramSha256::new(SERVER_NONCE.into());
        to_client_final(&mut m);
        let _ = m.step(Some(CLIENT_FINAL));
        assert!(matches!(m.step(Some(b"x")), Output::Failure(_)));
    }

    #[test]
    fn client_first_variants() {
        let ok = |msg: &[u8]| {
            matches!(
                ScramSha256::new("s".into()).step(Some(msg)),
                Output::NeedCredentials { .. }
            )
        };
        assert!(ok(b"y,,n=user,r=abc"));
        assert!(ok(b"n,a=user,n=user,r=abc"));
        assert!(ok(b"n,,n=user,r=abc,x=ext"));
        assert!(!ok(b"p=tls-unique,,n=user,r=abc"));
        assert!(!ok(b"n,a=other,n=user,r=abc"));
        assert!(!ok(b"n,,m=ext,n=user,r=abc"));
        assert!(!ok(b"n,,n=,r=abc"));
        assert!(!ok(b"n,,n=us=er,r=abc"));
        assert!(!ok(b"n,,n=user,r="));
        assert!(!ok(b"n,,n=user"));
        assert!(!ok(b"x,,n=user,r=abc"));
        assert!(!ok(b"n,,"));
        assert!(!ok(b"\xff"));
    }

    #[test]
    fn saslname_decoding() {
        assert_eq!(decode_saslname("a=2Cb=3Dc").expect("valid"), "a,b=c");
        assert!(decode_saslname("a=2").is_err());
        assert!(decode_saslname("a=41").is_err());
        let mut m = ScramSha256::new("s".into());
        assert_eq!(
            m.step(Some(b"n,,n=a=2Cb,r=abc")),
            Output::NeedCredentials { user: "a,b".into() }
        );
    }

    #[test]
    fn y_flag_binds_its_own_header() {
        // The client sent "y,,": c= must carry base64("y,,") = "eSws".
        let salt = b"saltsaltsaltsalt";
        let keys = ScramKeys::derive(b"pw", salt, 4096);
        let mut m = ScramSha256::new("SRV".into());
        let _ = m.step(Some(b"y,,n=u,r=CLI"));
        let server_first = match m.credentials("u", &keys) {
            Output::Challenge(c) => String::from_utf8(c).expect("utf8"),
            other => panic!("{other:?}"),
        };
        let without_proof = "c=eSws,r=CLISRV";
        let auth_message = format!("n=u,r=CLI,{server_first},{without_proof}");
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(b"pw", salt, 4096, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let sig = hmac(&keys.stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect();
        let final_msg = format!("{without_proof},p={}", BASE64.encode(proof));
        assert!(matches!(
            m.step(Some(final_msg.as_bytes())),
            Output::Challenge(ref v) if v.starts_with(b"v=")
        ));
        assert_eq!(m.step(Some(b"")), Output::Success("u".into()));
    }
}
