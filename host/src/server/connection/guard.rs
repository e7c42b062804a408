//! What the driver does not let a session do, whatever the protocol allows:
//! outlive its age or command limit, pipeline where RFC 2920 says to wait
//! (unless trusted or authenticated), or keep relaying under the rules of an
//! old configuration generation.

use std::time::{Duration, Instant};

use super::{Connection, loggable};
use crate::server::limits::Expired;
use crate::server::reply;
use crate::smtp::reply::Reply;

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
        reply::session_limit()
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
        if !forbidden || self.judge.info().trusted || self.session.auth_user.is_some() {
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
        Some(reply::pipelining())
    }

    /// Between transactions (at MAIL), moves the session to the current
    /// configuration generation: a transaction runs on one generation
    /// (its plugins, routing and relay rules do not change under it), and
    /// each new one on the current one, so a reload that removes a
    /// trusted network, changes `sender_logins` or deletes a user stops an
    /// open session from relaying under the old rules at its next
    /// transaction. What the connect and HELO stages decided stands.
    pub(super) fn renew_generation(&mut self) {
        let current = self.shared.generation.load_full();
        if current.id != self.generation.id
            && let Some(lgen) = current.listener(self.listener)
        {
            tracing::info!(
                "{}: session moves from generation {} to {}",
                self.client,
                self.generation.id,
                current.id
            );
            self.session.set_config(lgen.session.clone());
            self.receiver
                .set_max_line(current.config.smtp.max_line_length);
            self.judge.renew(&current, &lgen.name);
            self.generation = current;
        }
        self.recheck_login();
    }

    /// An identity the listener's backend no longer knows (a user deleted
    /// from the password file, or AUTH gone from the listener) loses its
    /// authentication before the next transaction: it starts as an
    /// unauthenticated one (refused on a submission listener, no relaying
    /// anywhere).
    fn recheck_login(&mut self) {
        let Some(user) = self.session.auth_user.clone() else {
            return;
        };
        let why = match self.generation.listener(self.listener).map(|l| &l.auth) {
            Some(Some(backend)) if backend.knows(&user) == Some(false) => {
                "the user no longer exists"
            }
            Some(Some(_)) => return,
            _ => "AUTH is no longer offered on this listener",
        };
        tracing::warn!(
            "{}: authentication of {} withdrawn: {why}",
            self.client,
            crate::sasl::mechanism::printable(&user)
        );
        self.session.auth_user = None;
        self.judge.authenticated(None);
    }
}
