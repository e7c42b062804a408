//! What the driver does not let a session do, whatever the protocol allows:
//! outlive its age or command limit.

use std::time::{Duration, Instant};

use super::Connection;
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
}
