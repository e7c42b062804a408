//! Spooled mail through the journal: a message for the delivery manager
//! (remote recipients, or a success report asked for) is made durable in
//! the [`Journal`] (one fdatasync per batch of sessions) instead of a queue
//! file of its own, and handed to the manager from memory. The common case,
//! delivered at the first attempt, then writes, syncs and removes no queue
//! file at all: the record is marked delivered and released. Only a
//! message that is not finished after its first attempt gets a queue file
//! (with its per-recipient state) before the journal lets go of it.
//!
//! At every moment an acknowledged message is durable in the journal or
//! in the spool, or was taken by its next hop; a restart re-queues what
//! the journal still holds ([`crate::deliver::journaled::recover`]).
//! Memory is bounded: past [`BUDGET`] bytes waiting, sessions write queue
//! files as before.

use std::collections::HashMap;
use std::sync::Mutex;

use super::journal::{Journal, Placed, Record};
use super::{Envelope, Loaded, format};

/// Bytes of messages held in memory for the manager, at most.
pub const BUDGET: usize = 64 << 20;

/// A journaled message waiting for (or in) its first attempt.
#[derive(Debug)]
pub struct InJournal {
    /// Where its record is.
    pub placed: Placed,
    /// The message as a queue file would hold it.
    pub loaded: Loaded,
}

#[derive(Debug, Default)]
struct Held {
    messages: HashMap<String, InJournal>,
    /// Their file sizes, summed.
    bytes: usize,
}

/// The journal in front of the spool.
#[derive(Debug)]
pub struct Front {
    journal: Journal,
    held: Mutex<Held>,
}

fn lock(m: &Mutex<Held>) -> std::sync::MutexGuard<'_, Held> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Front {
    /// A front on `journal`.
    pub fn new(journal: Journal) -> Front {
        Front {
            journal,
            held: Mutex::default(),
        }
    }

    /// Makes the message durable in the journal and keeps it for the
    /// manager. `Err` gives the message back (no room, the journal failed,
    /// is closed, or can no longer reclaim segments): the caller writes a
    /// queue file instead.
    pub async fn commit(&self, content: Vec<u8>, env: Envelope) -> Result<(), (Vec<u8>, Envelope)> {
        if !self.journal.healthy() {
            // Its segments would never be reclaimed (as for local mail,
            // which takes the fsynced path then).
            return Err((content, env));
        }
        let (tail, crc) = format::encode_tail_crc(&content, &env);
        let size = content.len() + tail.len();
        {
            let mut h = lock(&self.held);
            if h.bytes + size > BUDGET {
                return Err((content, env));
            }
            // Reserved now, so that concurrent sessions cannot overshoot.
            h.bytes += size;
        }
        let len = content.len();
        let mut file = content;
        file.extend_from_slice(&tail);
        match self
            .journal
            .append_placed(Record::new(file.clone(), crc))
            .await
        {
            Ok(placed) => {
                let id = env.id.clone();
                let loaded = Loaded {
                    envelope: env,
                    file,
                    content: 0..len,
                };
                lock(&self.held)
                    .messages
                    .insert(id, InJournal { placed, loaded });
                Ok(())
            }
            Err(e) => {
                lock(&self.held).bytes -= size;
                tracing::warn!("{}: journal: {e}; writing a queue file instead", env.id);
                file.truncate(len);
                Err((file, env))
            }
        }
    }

    /// Takes the message `id` for an attempt, if the journal holds it.
    pub fn take(&self, id: &str) -> Option<InJournal> {
        let mut h = lock(&self.held);
        let m = h.messages.remove(id)?;
        h.bytes -= m.loaded.file.len();
        Some(m)
    }

    /// Gives a message back after an attempt that could neither finish it
    /// nor spool it: the next attempt takes it again.
    pub fn put_back(&self, m: InJournal) {
        let mut h = lock(&self.held);
        h.bytes += m.loaded.file.len();
        h.messages.insert(m.loaded.envelope.id.clone(), m);
    }

    /// Whether the journal holds `id` for the manager.
    pub fn holds(&self, id: &str) -> bool {
        lock(&self.held).messages.contains_key(id)
    }

    /// The message is done (every recipient delivered or told about):
    /// marked so that a restart does not send it again, and released.
    pub fn delivered(&self, at: Placed) {
        self.journal.mark_delivered(at);
        self.journal.release(at.segment);
    }

    /// The message is safe in the spool now (its queue file synced):
    /// marked, so that a restart does not queue it a second time once the
    /// queue file is delivered and gone, and released.
    pub fn spooled(&self, at: Placed) {
        self.journal.mark_delivered(at);
        self.journal.release(at.segment);
    }
}
