//! DATA (RFC 5321 §4.1.1.4) and BDAT (RFC 3030): entering content mode and
//! deciding what happens once the content is complete.

use super::receiver::Body;
use super::reply::{Reply, r};
use super::session::{Content, Session, Step};

impl<R> Session<R> {
    /// The reason a DATA/BDAT cannot start, if any.
    fn content_refusal(&self) -> Option<Reply> {
        match &self.tx {
            None => Some(r(503, 5, 5, 1, "Error: need MAIL command")),
            Some(tx) if tx.rcpts.is_empty() => Some(r(554, 5, 5, 1, "Error: no valid recipients")),
            Some(_) => None,
        }
    }

    pub(super) fn data(&mut self) -> Step {
        if let Some(reply) = self.content_refusal() {
            return self.fail(reply);
        }
        if self.tx.as_ref().is_some_and(|tx| tx.bdat) {
            return self.fail(r(503, 5, 5, 1, "Error: DATA during BDAT transfer"));
        }
        self.content = Content::Data;
        Step::StartData(Reply::plain(
            354,
            vec!["End data with <CR><LF>.<CR><LF>".into()],
        ))
    }

    pub(super) fn bdat(&mut self, size: u64, last: bool) -> Step {
        // RFC 3030 §2: the chunk is read in any case, then answered.
        let discard = self.content_refusal().is_some();
        if let Some(tx) = &mut self.tx {
            tx.bdat = true;
        }
        self.content = Content::Bdat {
            last,
            discard,
            size,
        };
        Step::StartBdat(size)
    }

    /// The DATA terminator was seen.
    pub fn data_end(&mut self, body: &Body) -> Step {
        self.content = Content::None;
        if body.overflowed() {
            self.reset();
            return self.fail(r(552, 5, 3, 4, "Error: message file too big"));
        }
        if body.over_budget {
            self.reset();
            return self.fail(insufficient_storage());
        }
        Step::Commit
    }

    /// DATA contained a bare CR or LF: refuse and disconnect, so that
    /// nothing the client sends afterwards is read as commands (smuggling).
    pub fn bare_newline(&mut self) -> Step {
        self.reset();
        Step::Close(r(
            521,
            5,
            5,
            2,
            "Error: bare <CR> or <LF> received, closing",
        ))
    }

    /// A BDAT chunk has been read completely.
    pub fn chunk_end(&mut self, body: &Body) -> Step {
        let Content::Bdat {
            last,
            discard,
            size,
        } = self.content
        else {
            return Step::Close(r(421, 4, 3, 0, "Internal error: no BDAT in progress"));
        };
        self.content = Content::None;
        if discard {
            let reply = self
                .content_refusal()
                .unwrap_or_else(|| r(503, 5, 5, 1, "Error: bad sequence of commands"));
            self.reset();
            return self.fail(reply);
        }
        if body.overflowed() {
            self.reset();
            return self.fail(r(552, 5, 3, 4, "Error: message file too big"));
        }
        if body.over_budget {
            self.reset();
            return self.fail(insufficient_storage());
        }
        if !last {
            return Step::Reply(r(250, 2, 0, 0, format!("{size} octets received")));
        }
        // A CR at the very end is bare too: no chunk follows with its LF.
        if body.bare_newline || body.trailing_cr {
            self.reset();
            return self.fail(r(550, 5, 6, 0, "Error: message contains bare <CR> or <LF>"));
        }
        Step::Commit
    }

    /// The message was spooled (`Ok`) or refused; ends the transaction.
    pub fn commit_done(&mut self, result: Result<Reply, Reply>) -> Step {
        self.reset();
        match result {
            Ok(reply) => {
                self.messages += 1;
                Step::Reply(reply)
            }
            Err(reply) => self.fail(reply),
        }
    }
}

/// The reply when the memory for messages in transit is used up.
fn insufficient_storage() -> Reply {
    r(
        452,
        4,
        3,
        1,
        "Error: insufficient system storage, try again later",
    )
}

#[cfg(test)]
mod tests {
    use crate::smtp::address::ReversePath;
    use crate::smtp::command::MailParams;
    use crate::smtp::receiver::Body;
    use crate::smtp::session::tests::{cmd, code, session};
    use crate::smtp::session::{Decision, Session, SessionConfig, Step};

    fn ready() -> Session<()> {
        let mut s = session(SessionConfig::default());
        let _ = s.mail_done(
            "Q1".into(),
            ReversePath::Null,
            MailParams::default(),
            Decision::Accept(None),
        );
        let Step::Rcpt(to, _) = cmd(&mut s, "RCPT TO:<a@b.test>") else {
            panic!("expected Rcpt step");
        };
        let _ = s.rcpt_done(to, &Vec::new(), Decision::Accept(()));
        s
    }

    #[test]
    fn data_sequence() {
        let mut s = session(SessionConfig::default());
        assert_eq!(code(&cmd(&mut s, "DATA")), 503);
        let _ = s.mail_done(
            "Q1".into(),
            ReversePath::Null,
            MailParams::default(),
            Decision::Accept(None),
        );
        assert_eq!(code(&cmd(&mut s, "DATA")), 554);
        let mut s = ready();
        assert_eq!(code(&cmd(&mut s, "DATA")), 354);
        assert!(matches!(s.data_end(&Body::new(10)), Step::Commit));
    }

    #[test]
    fn oversize_data_is_refused() {
        let mut s = ready();
        let _ = cmd(&mut s, "DATA");
        let mut body = Body::new(1);
        body.received = 2;
        assert_eq!(code(&s.data_end(&body)), 552);
        assert!(s.transaction().is_none());
    }

    #[test]
    fn bdat_flow() {
        let mut s = ready();
        assert!(matches!(cmd(&mut s, "BDAT 3"), Step::StartBdat(3)));
        assert!(!s.in_last_chunk());
        assert_eq!(code(&s.chunk_end(&Body::new(10))), 250);
        assert_eq!(code(&cmd(&mut s, "DATA")), 503);
        assert!(matches!(cmd(&mut s, "BDAT 0 LAST"), Step::StartBdat(0)));
        assert!(s.in_last_chunk());
        assert!(matches!(s.chunk_end(&Body::new(10)), Step::Commit));
        assert!(!s.in_last_chunk());
    }

    #[test]
    fn bdat_without_transaction_is_drained_then_refused() {
        let mut s = session(SessionConfig::default());
        assert!(matches!(cmd(&mut s, "BDAT 5 LAST"), Step::StartBdat(5)));
        assert_eq!(code(&s.chunk_end(&Body::new(10))), 503);
    }
}
