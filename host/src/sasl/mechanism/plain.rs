//! PLAIN (RFC 4616): one message `[authzid] NUL authcid NUL passwd`.

use super::{Output, Password, authorize, printable};

/// The server side of PLAIN.
///
/// The caller must pass the client's initial response (or `None`) to the
/// first [`Plain::step`], send any [`Output::Challenge`], and pass the
/// answer to the next `step`. The exchange ends with
/// [`Output::CheckPassword`] (the caller verifies the password) or
/// [`Output::Failure`].
#[derive(Debug, Default)]
pub struct Plain {
    state: State,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum State {
    #[default]
    Start,
    AwaitMessage,
    Done,
}

impl Plain {
    /// A new exchange.
    pub fn new() -> Plain {
        Plain::default()
    }

    /// Feeds the client's response: `None` only on the first step, when
    /// the client sent no initial response.
    pub fn step(&mut self, response: Option<&[u8]>) -> Output {
        match (&self.state, response) {
            (State::Start, None) => {
                // RFC 4954: no initial response, so an empty challenge asks
                // for the message.
                self.state = State::AwaitMessage;
                Output::Challenge(Vec::new())
            }
            (State::Start | State::AwaitMessage, Some(message)) => {
                self.state = State::Done;
                parse(message)
            }
            (State::AwaitMessage, None) => {
                self.state = State::Done;
                Output::Failure("PLAIN: missing response".into())
            }
            (State::Done, _) => Output::Failure("PLAIN: exchange already finished".into()),
        }
    }
}

fn parse(message: &[u8]) -> Output {
    let mut parts = message.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        // Never echo the message: it holds the password.
        return Output::Failure("PLAIN: malformed response".into());
    };
    let (Ok(authzid), Ok(authcid)) = (std::str::from_utf8(authzid), std::str::from_utf8(authcid))
    else {
        return Output::Failure("PLAIN: identity is not UTF-8".into());
    };
    if authcid.is_empty() || password.is_empty() {
        return Output::Failure("PLAIN: empty user name or password".into());
    }
    if !super::plausible_name(authcid) || !super::plausible_name(authzid) {
        return Output::Failure("PLAIN: control characters in the identity".into());
    }
    if let Err(reason) = authorize(authcid, Some(authzid)) {
        return Output::Failure(format!("PLAIN: {}", printable(&reason)));
    }
    Output::CheckPassword {
        user: authcid.to_owned(),
        password: Password::new(password.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(user: &str, password: &[u8]) -> Output {
        Output::CheckPassword {
            user: user.into(),
            password: Password::new(password.to_vec()),
        }
    }

    #[test]
    fn rfc4616_example_with_initial_response() {
        let mut m = Plain::new();
        assert_eq!(
            m.step(Some(b"\0tim\0tanstaaftanstaaf")),
            check("tim", b"tanstaaftanstaaf")
        );
        assert!(matches!(m.step(Some(b"x")), Output::Failure(_)));
    }

    #[test]
    fn without_initial_response_sends_empty_challenge() {
        let mut m = Plain::new();
        assert_eq!(m.step(None), Output::Challenge(Vec::new()));
        assert_eq!(m.step(Some(b"tim\0tim\0secret")), check("tim", b"secret"));
    }

    #[test]
    fn rfc4616_proxy_example_is_refused() {
        // "Ursel" as authzid, "Kurt" authenticating: not allowed (yet).
        let mut m = Plain::new();
        let out = m.step(Some(b"Ursel\0Kurt\0xipj3plmq"));
        assert!(matches!(out, Output::Failure(ref r) if !r.contains("xipj3plmq")));
    }

    #[test]
    fn malformed_messages_fail_without_leaking() {
        for msg in [
            &b""[..],
            b"tim",
            b"\0tim",
            b"\0tim\0",
            b"\0\0pw",
            b"\0tim\0pw\0extra",
            b"\0\xff\0pw",
            // A line break in the name would forge a log line.
            b"\0tim\nINFO forged\0pw",
            b"tim\r\0tim\0pw",
        ] {
            let out = Plain::new().step(Some(msg));
            assert!(
                matches!(out, Output::Failure(ref r) if !r.contains("pw")),
                "{msg:?}"
            );
        }
    }

    #[test]
    fn missing_response_after_challenge_fails() {
        let mut m = Plain::new();
        assert_eq!(m.step(None), Output::Challenge(Vec::new()));
        assert!(matches!(m.step(None), Output::Failure(_)));
    }
}
