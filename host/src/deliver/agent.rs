//! The delivery-agent interface: a message and the recipients one
//! transport takes go in, one outcome per recipient comes out. Every
//! agent (local Maildir today; LMTP, pipe, mbox and SMTP next) sits behind
//! it, so the queue manager never knows how a transport works.

use crate::route::Transport;
use crate::spool::{Envelope, Recipient};

use super::Durability;

/// What an agent delivers: one queued message.
#[derive(Clone, Copy)]
pub struct Message<'a> {
    /// Its envelope (queue ID, sender, recipients, trace fields).
    pub env: &'a Envelope,
    /// Its content as received (without the envelope's trace fields).
    pub content: &'a [u8],
    /// Our host name.
    pub hostname: &'a str,
    /// How a local copy is named and made durable.
    pub how: Durability<'a>,
}

/// One recipient handed to an agent.
#[derive(Clone, Copy)]
pub struct Rcpt<'a> {
    /// Its index in the envelope (stable across attempts).
    pub index: usize,
    /// Its record in the queue file.
    pub record: &'a Recipient,
    /// Where routing sends it now.
    pub transport: &'a Transport,
}

/// How one recipient's delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Delivered: done.
    Sent,
    /// Failed for now: retried later.
    Deferred,
    /// Failed for good: done, reported to the sender (with bounces).
    Bounced,
}

impl Status {
    /// The word in the log line (`status=`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Sent => "sent",
            Status::Deferred => "deferred",
            Status::Bounced => "bounced",
        }
    }
}

/// One recipient's outcome, with what the log line and a DSN say of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Sent, deferred or bounced.
    pub status: Status,
    /// Enhanced status code (RFC 3463), e.g. `2.0.0`.
    pub dsn: String,
    /// Who took it or answered (`local`, `mx1.dest.test[127.0.0.10]:25`,
    /// `none`).
    pub relay: String,
    /// The reply or the reason, for the log and `queue list`.
    pub detail: String,
}

impl Outcome {
    /// A delivered recipient.
    pub fn sent(relay: &str, detail: impl Into<String>) -> Outcome {
        Outcome {
            status: Status::Sent,
            dsn: "2.0.0".into(),
            relay: relay.into(),
            detail: detail.into(),
        }
    }

    /// A recipient that failed for good.
    pub fn bounced(relay: &str, dsn: &str, detail: impl Into<String>) -> Outcome {
        Outcome {
            status: Status::Bounced,
            dsn: dsn.into(),
            relay: relay.into(),
            detail: detail.into(),
        }
    }

    /// A recipient to retry.
    pub fn deferred(relay: &str, dsn: &str, detail: impl Into<String>) -> Outcome {
        Outcome {
            status: Status::Deferred,
            dsn: dsn.into(),
            relay: relay.into(),
            detail: detail.into(),
        }
    }
}

/// A delivery agent.
pub trait Agent {
    /// Delivers `msg` to `rcpts` (all routed to this agent), blocking, and
    /// returns one outcome per recipient, in their order.
    fn deliver(&self, msg: Message<'_>, rcpts: &[Rcpt<'_>]) -> Vec<Outcome>;
}

/// The SMTP client is not built yet: mail for other domains waits in the
/// queue (deferred) until it is.
pub struct NoRemote;

impl Agent for NoRemote {
    fn deliver(&self, _msg: Message<'_>, rcpts: &[Rcpt<'_>]) -> Vec<Outcome> {
        rcpts
            .iter()
            .map(|_| {
                Outcome::deferred(
                    "none",
                    "4.3.0",
                    "remote delivery is not available in this version",
                )
            })
            .collect()
    }
}
