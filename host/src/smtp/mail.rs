//! MAIL FROM (RFC 5321 §4.1.1.2): sequence, TLS/AUTH requirements, SIZE.

use super::address::ReversePath;
use super::command::MailParams;
use super::reply::{Reply, r};
use super::session::{Decision, Session, Step, Transaction};

impl<R> Session<R> {
    pub(super) fn mail(&mut self, from: ReversePath, params: MailParams) -> Step {
        if self.tx.is_some() {
            return self.fail(r(503, 5, 5, 1, "Error: nested MAIL command"));
        }
        if self.cfg.helo_required && self.greeting.is_none() {
            return self.fail(r(503, 5, 5, 1, "Error: send HELO/EHLO first"));
        }
        if self.cfg.tls_required && !self.tls_active {
            return self.fail(r(530, 5, 7, 0, "Must issue a STARTTLS command first"));
        }
        if self.cfg.auth_required && self.auth_user.is_none() {
            return self.fail(r(530, 5, 7, 0, "Authentication required"));
        }
        // RFC 4954 §5: AUTH= belongs to the AUTH extension; where it is
        // not enabled it is an unknown parameter (as in Postfix).
        if params.auth.is_some() && self.cfg.auth_mechanisms.is_empty() {
            return self.fail(r(555, 5, 5, 4, "Unsupported parameter AUTH"));
        }
        if params.size.is_some_and(|s| s > self.cfg.max_message_size) {
            return self.fail(r(552, 5, 3, 4, "Message size exceeds fixed limit"));
        }
        Step::Mail(from, params)
    }

    /// Completes MAIL FROM. `Accept(Some(reply))` accepts now but refuses
    /// every RCPT of this transaction with `reply` (delay_reject).
    pub fn mail_done(
        &mut self,
        id: String,
        from: ReversePath,
        params: MailParams,
        decision: Decision<Option<Reply>>,
    ) -> Step {
        match decision {
            Decision::Reject(reply) => self.fail(reply),
            Decision::Accept(delayed_reject) => {
                self.tx = Some(Transaction {
                    id,
                    from,
                    params,
                    rcpts: Vec::new(),
                    delayed_reject,
                    bdat: false,
                });
                Step::Reply(r(250, 2, 1, 0, "Ok"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::smtp::session::tests::{cmd, code, session};
    use crate::smtp::session::{SessionConfig, Step};

    #[test]
    fn auth_parameter_needs_the_auth_extension() {
        let mut s = session(SessionConfig::default());
        assert_eq!(code(&cmd(&mut s, "MAIL FROM:<a@b.test> AUTH=<>")), 555);
        let mut s = session(SessionConfig {
            auth_mechanisms: vec!["PLAIN".into()],
            ..SessionConfig::default()
        });
        assert!(matches!(
            cmd(&mut s, "MAIL FROM:<a@b.test> AUTH=<>"),
            Step::Mail(..)
        ));
    }

    #[test]
    fn helo_required() {
        let mut s = session(SessionConfig {
            helo_required: true,
            ..SessionConfig::default()
        });
        assert_eq!(code(&cmd(&mut s, "MAIL FROM:<a@b.test>")), 503);
        let mut s = session(SessionConfig::default());
        assert!(matches!(
            cmd(&mut s, "MAIL FROM:<a@b.test>"),
            Step::Mail(..)
        ));
    }

    #[test]
    fn size_limit_and_requirements() {
        let mut s = session(SessionConfig {
            max_message_size: 100,
            ..SessionConfig::default()
        });
        assert_eq!(code(&cmd(&mut s, "MAIL FROM:<a@b.test> SIZE=101")), 552);
        assert!(matches!(
            cmd(&mut s, "MAIL FROM:<a@b.test> SIZE=100"),
            Step::Mail(..)
        ));
        let mut s = session(SessionConfig {
            tls_required: true,
            ..SessionConfig::default()
        });
        assert_eq!(code(&cmd(&mut s, "MAIL FROM:<a@b.test>")), 530);
        let mut s = session(SessionConfig {
            auth_required: true,
            ..SessionConfig::default()
        });
        assert_eq!(code(&cmd(&mut s, "MAIL FROM:<a@b.test>")), 530);
    }
}
