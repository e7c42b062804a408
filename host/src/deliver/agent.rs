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
    /// What a delivery means for a `NOTIFY=SUCCESS` report.
    pub handoff: Handoff,
}

/// Who reports a success the sender asked to hear of (RFC 3461 §5.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Handoff {
    /// The final delivery was ours: we report `delivered`.
    #[default]
    Delivered,
    /// Sent on to a server without DSN: we report `relayed`.
    Relayed,
    /// Sent on with the DSN request to a server that offers DSN: it
    /// reports, we say nothing.
    PassedOn,
}

impl Outcome {
    /// A delivered recipient.
    pub fn sent(relay: &str, detail: impl Into<String>) -> Outcome {
        Outcome {
            status: Status::Sent,
            dsn: "2.0.0".into(),
            relay: relay.into(),
            detail: detail.into(),
            handoff: Handoff::Delivered,
        }
    }

    /// A recipient that failed for good.
    pub fn bounced(relay: &str, dsn: &str, detail: impl Into<String>) -> Outcome {
        Outcome {
            status: Status::Bounced,
            dsn: dsn.into(),
            relay: relay.into(),
            detail: detail.into(),
            handoff: Handoff::Delivered,
        }
    }

    /// A recipient to retry.
    pub fn deferred(relay: &str, dsn: &str, detail: impl Into<String>) -> Outcome {
        Outcome {
            status: Status::Deferred,
            dsn: dsn.into(),
            relay: relay.into(),
            detail: detail.into(),
            handoff: Handoff::Delivered,
        }
    }
}

/// A delivery agent.
pub trait Agent {
    /// Delivers `msg` to `rcpts` (all routed to this agent), blocking, and
    /// returns one outcome per recipient, in their order.
    fn deliver(&self, msg: Message<'_>, rcpts: &[Rcpt<'_>]) -> Vec<Outcome>;
}

/// For paths that deliver local mail only (direct delivery at the end of
/// DATA, the journal): a message with any other recipient never takes
/// them, so one here is a bug, kept in the queue rather than lost.
pub struct LocalOnly;

impl Agent for LocalOnly {
    fn deliver(&self, _msg: Message<'_>, rcpts: &[Rcpt<'_>]) -> Vec<Outcome> {
        rcpts
            .iter()
            .map(|_| {
                Outcome::deferred(
                    "none",
                    "4.3.5",
                    "not a local recipient on a local-only path",
                )
            })
            .collect()
    }
}
