//! RCPT TO (RFC 5321 §4.1.1.3): the session's protocol checks (sequence,
//! SMTPUTF8, recipient limit, rejects held back until RCPT). The recipient
//! itself (relay control, routing, plugins, scores) is judged by the driver's
//! RCPT stage, `server/stage/rcpt.rs`, between [`Step::Rcpt`] and
//! [`Session::rcpt_done`].

use super::address::ForwardPath;
use super::command::{EsmtpParams, check_rcpt_utf8};
use super::reply::r;
use super::session::{AcceptedRcpt, Decision, Session, Step};
use crate::dsn::RcptDsn;

impl<R> Session<R> {
    pub(super) fn rcpt(&mut self, to: ForwardPath, params: EsmtpParams) -> Step {
        let Some(tx) = &self.tx else {
            return self.fail(r(503, 5, 5, 1, "Error: need MAIL command"));
        };
        if tx.bdat {
            return self.fail(r(503, 5, 5, 1, "Error: RCPT during BDAT transfer"));
        }
        if let Err(e) = check_rcpt_utf8(&to, tx.params.smtputf8) {
            return self.fail(e.reply());
        }
        if tx.rcpts.len() >= self.cfg.max_recipients {
            return self.fail(r(452, 4, 5, 3, "Error: too many recipients"));
        }
        // Rejects decided at connect, HELO or MAIL are reported here, where
        // clients handle them best (Postfix smtpd_delay_reject).
        if let Some(reply) = self
            .delayed_reject
            .clone()
            .or_else(|| tx.delayed_reject.clone())
        {
            return self.fail(reply);
        }
        Step::Rcpt(to, params)
    }

    /// Completes RCPT TO with the caller's routing decision; `params` are
    /// the ones [`Step::Rcpt`] gave (their DSN values are kept).
    pub fn rcpt_done(
        &mut self,
        path: ForwardPath,
        params: &EsmtpParams,
        decision: Decision<R>,
    ) -> Step {
        match decision {
            Decision::Reject(reply) => self.fail(reply),
            Decision::Accept(route) => match &mut self.tx {
                Some(tx) => {
                    // Checked when the command was parsed.
                    let dsn = RcptDsn::from_params(params).unwrap_or_default();
                    tx.rcpts.push(AcceptedRcpt { path, route, dsn });
                    Step::Reply(r(250, 2, 1, 5, "Ok"))
                }
                None => self.fail(r(503, 5, 5, 1, "Error: need MAIL command")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::smtp::address::ReversePath;
    use crate::smtp::command::MailParams;
    use crate::smtp::reply::r;
    use crate::smtp::session::tests::{cmd, code, session};
    use crate::smtp::session::{Decision, SessionConfig, Step};

    #[test]
    fn rcpt_needs_mail_and_respects_limit() {
        let mut s = session(SessionConfig {
            max_recipients: 2,
            ..SessionConfig::default()
        });
        assert_eq!(code(&cmd(&mut s, "RCPT TO:<a@b.test>")), 503);
        let _ = s.mail_done(
            "Q1".into(),
            ReversePath::Null,
            MailParams::default(),
            Decision::Accept(None),
        );
        for _ in 0..2 {
            let Step::Rcpt(to, params) = cmd(&mut s, "RCPT TO:<a@b.test>") else {
                panic!("expected Rcpt step");
            };
            assert_eq!(code(&s.rcpt_done(to, &params, Decision::Accept(()))), 250);
        }
        assert_eq!(code(&cmd(&mut s, "RCPT TO:<c@b.test>")), 452);
    }

    #[test]
    fn delayed_reject_applies_at_rcpt() {
        let mut s = session(SessionConfig::default());
        let reject = r(554, 5, 7, 1, "Sender blocked");
        let _ = s.mail_done(
            "Q1".into(),
            ReversePath::Null,
            MailParams::default(),
            Decision::Accept(Some(reject)),
        );
        assert_eq!(code(&cmd(&mut s, "RCPT TO:<a@b.test>")), 554);
        assert_eq!(code(&cmd(&mut s, "RSET")), 250);
        assert!(matches!(cmd(&mut s, "MAIL FROM:<>"), Step::Mail(..)));
    }

    #[test]
    fn utf8_recipient_needs_smtputf8() {
        let mut s = session(SessionConfig::default());
        let _ = s.mail_done(
            "Q1".into(),
            ReversePath::Null,
            MailParams::default(),
            Decision::Accept(None),
        );
        assert_eq!(code(&cmd(&mut s, "RCPT TO:<jörg@example.test>")), 553);
    }
}
