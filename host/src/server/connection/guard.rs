//! What the driver does not let a session do, whatever the protocol allows:
//! outlive its age or command limit, or pipeline where RFC 2920 says to wait
//! (unless trusted or authenticated).

use std::time::{Duration, Instant};

use super::{Connection, loggable};
use crate::server::limits::Expired;
use crate::smtp::reply::{Reply, r};

impl Connection {
    /// The session reached its age or command limit: it ends at this
    /// command with a 421 (a transaction in progress is sent again).
    pub(super) fn expire(&self, why: Expired) -> Reply {
        let smtp = &self.generation.config.smtp;
        let now = Instant::now();
        tracing::info!(
            "{}: session with {} reached {} ({}) after {} commands in {}; closing with 421 4.7.0",
            self.qid(),
            self.client,
            why.key(),
            match why {
                Expired::Age => humantime::format_duration(smtp.max_session_age.0).to_string(),
                Expired::Commands => smtp.max_session_commands.to_string(),
            },
            self.lifetime.commands(),
            humantime::format_duration(Duration::from_secs(self.lifetime.age(now).as_secs()))
        );
        r(
            421,
            4,
            7,
            0,
            "Error: session limit reached, closing transmission channel",
        )
    }

    /// Postfix's `smtpd_forbid_unauth_pipelining`: a client neither
    /// trusted nor authenticated that sent more before the reply to a
    /// command it must wait for (`after`) is refused and disconnected.
    /// Such a client is either a bot or a server that could be made to
    /// smuggle one message inside another; a correct PIPELINING client
    /// never does it.
    pub(super) fn pipelining_violation(&mut self, after: &str) -> Option<Reply> {
        let forbidden = self
            .generation
            .config
            .listeners
            .get(self.listener)
            .is_some_and(|l| l.forbid_unauth_pipelining);
        if !forbidden || self.info.trusted || self.session.auth_user.is_some() {
            return None;
        }
        if !self.wire.input_pending() {
            return None;
        }
        let pending = &self.wire.inbuf;
        let line = memchr::memchr(b'\n', pending)
            .and_then(|end| pending.get(..end))
            .unwrap_or(pending);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        tracing::warn!(
            "{}: reject: improper command pipelining after {after} from {}: {:?} ({} bytes sent before the reply); disconnecting",
            self.qid(),
            self.client,
            loggable(line),
            pending.len()
        );
        Some(r(554, 5, 5, 0, "Error: SMTP protocol synchronization"))
    }
}
