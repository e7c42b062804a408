//! LOGIN: the de-facto mechanism (draft-murchison-sasl-login) that asks
//! for `Username:` and `Password:` in two challenges.

use super::{Output, Password, printable};

/// The first challenge, exactly as clients expect it.
pub const USERNAME_CHALLENGE: &[u8] = b"Username:";
/// The second challenge.
pub const PASSWORD_CHALLENGE: &[u8] = b"Password:";

/// The server side of LOGIN.
///
/// The caller must pass the client's initial response (the user name, or
/// `None`) to the first [`Login::step`], send each [`Output::Challenge`]
/// and pass each answer to the next `step`. The exchange ends with
/// [`Output::CheckPassword`] (the caller verifies the password) or
/// [`Output::Failure`].
#[derive(Debug, Default)]
pub struct Login {
    state: State,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Start,
    AwaitUser,
    AwaitPassword(String),
    Done,
}

impl Login {
    /// A new exchange.
    pub fn new() -> Login {
        Login::default()
    }

    /// Feeds the client's response: `None` only on the first step, when
    /// the client sent no initial response.
    pub fn step(&mut self, response: Option<&[u8]>) -> Output {
        match (std::mem::replace(&mut self.state, State::Done), response) {
            (State::Start, None) => {
                self.state = State::AwaitUser;
                Output::Challenge(USERNAME_CHALLENGE.to_vec())
            }
            (State::Start | State::AwaitUser, Some(user)) => match std::str::from_utf8(user) {
                Ok("") => Output::Failure("LOGIN: empty user name".into()),
                Ok(user) if !super::plausible_name(user) => {
                    Output::Failure("LOGIN: control characters in the user name".into())
                }
                Ok(user) => {
                    self.state = State::AwaitPassword(user.to_owned());
                    Output::Challenge(PASSWORD_CHALLENGE.to_vec())
                }
                Err(_) => Output::Failure("LOGIN: user name is not UTF-8".into()),
            },
            (State::AwaitPassword(user), Some(password)) => {
                if password.is_empty() {
                    Output::Failure(format!("LOGIN: empty password for {}", printable(&user)))
                } else {
                    Output::CheckPassword {
                        user,
                        password: Password::new(password.to_vec()),
                    }
                }
            }
            (State::AwaitUser | State::AwaitPassword(_), None) => {
                Output::Failure("LOGIN: missing response".into())
            }
            (State::Done, _) => Output::Failure("LOGIN: exchange already finished".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_challenges() {
        let mut m = Login::new();
        assert_eq!(m.step(None), Output::Challenge(b"Username:".to_vec()));
        assert_eq!(
            m.step(Some(b"tim")),
            Output::Challenge(b"Password:".to_vec())
        );
        assert_eq!(
            m.step(Some(b"tanstaaftanstaaf")),
            Output::CheckPassword {
                user: "tim".into(),
                password: Password::new(b"tanstaaftanstaaf".to_vec()),
            }
        );
        assert!(matches!(m.step(Some(b"again")), Output::Failure(_)));
    }

    #[test]
    fn initial_response_is_the_user_name() {
        let mut m = Login::new();
        assert_eq!(
            m.step(Some(b"tim")),
            Output::Challenge(b"Password:".to_vec())
        );
        assert!(matches!(
            m.step(Some(b"pw")),
            Output::CheckPassword { ref user, .. } if user == "tim"
        ));
    }

    #[test]
    fn empty_or_invalid_answers_fail() {
        assert!(matches!(Login::new().step(Some(b"")), Output::Failure(_)));
        assert!(matches!(
            Login::new().step(Some(b"\xff")),
            Output::Failure(_)
        ));
        let mut m = Login::new();
        let _ = m.step(Some(b"tim"));
        assert!(matches!(m.step(Some(b"")), Output::Failure(_)));
        let mut m = Login::new();
        let _ = m.step(None);
        assert!(matches!(m.step(None), Output::Failure(_)));
    }
}
