//! EHLO / HELO (RFC 5321 §4.1.1.1) and the ESMTP extensions we announce.

use super::reply::Reply;
use super::session::{Decision, Greeting, Session, Step};

impl<R> Session<R> {
    pub(super) fn ehlo(&mut self, name: String, esmtp: bool) -> Step {
        // A new greeting resets any transaction (RFC 5321 §4.1.4).
        self.reset();
        Step::Helo(Greeting { name, esmtp })
    }

    /// Completes EHLO/HELO once the caller has checked the name.
    pub fn helo_done(&mut self, greeting: Greeting, decision: Decision<()>) -> Step {
        if let Decision::Reject(reply) = decision {
            return self.fail(reply);
        }
        let esmtp = greeting.esmtp;
        self.greeting = Some(greeting);
        if !esmtp {
            return Step::Reply(Reply::plain(250, vec![self.cfg.hostname.clone().into()]));
        }
        let mut lines = vec![
            self.cfg.hostname.clone().into(),
            "PIPELINING".into(),
            format!("SIZE {}", self.cfg.max_message_size).into(),
        ];
        if self.cfg.vrfy {
            lines.push("VRFY".into());
        }
        if self.cfg.starttls && !self.tls_active {
            lines.push("STARTTLS".into());
        }
        if self.auth_offered() && self.auth_user.is_none() {
            lines.push(format!("AUTH {}", self.cfg.auth_mechanisms.join(" ")).into());
        }
        for ext in [
            "ENHANCEDSTATUSCODES",
            "8BITMIME",
            "SMTPUTF8",
            "CHUNKING",
            "DSN",
        ] {
            lines.push(ext.into());
        }
        Step::Reply(Reply::plain(250, lines))
    }
}

#[cfg(test)]
mod tests {
    use crate::smtp::session::tests::{cmd, session};
    use crate::smtp::session::{Decision, SessionConfig, Step};

    #[test]
    fn ehlo_lists_extensions() {
        let mut s = session(SessionConfig {
            hostname: "mx.example.test".into(),
            max_message_size: 1000,
            starttls: true,
            auth_mechanisms: vec!["PLAIN".into()],
            ..SessionConfig::default()
        });
        let Step::Helo(g) = cmd(&mut s, "EHLO client.test") else {
            panic!("expected Helo step");
        };
        let Step::Reply(reply) = s.helo_done(g, Decision::Accept(())) else {
            panic!("expected reply");
        };
        let wire = String::from_utf8(reply.to_bytes()).unwrap();
        assert!(wire.starts_with("250-mx.example.test\r\n"));
        assert!(wire.contains("250-SIZE 1000\r\n"));
        assert!(wire.contains("250-STARTTLS\r\n"));
        // AUTH only after TLS by default.
        assert!(!wire.contains("AUTH"));
        assert!(wire.contains("250-CHUNKING\r\n"));
        assert!(wire.ends_with("250 DSN\r\n"));
        assert_eq!(s.protocol(), "ESMTP");
    }
}
