//! Journaled local delivery: the default for mail whose recipients are all
//! local mailboxes.
//!
//! A session appends the message to the [`Journal`] (group-committed with
//! every other session's: one fdatasync per batch), answers `250`, and
//! hands the message to a delivery thread here. The thread writes the
//! Maildir copies without an fsync each and releases the journal record;
//! the journal syncs the mailboxes' file systems in bulk before it drops a
//! segment. A recipient that cannot be delivered at once puts the message
//! into the spool (durably, with the delivered recipients marked done) for
//! the delivery manager's retries.

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Durability, Queue, deliver_pending};
use crate::route::Router;
use crate::spool::journal::{self, Journal, Leftovers, Touched};
use crate::spool::{DeliveryState, Envelope, Spool, SpoolError, format};

/// Delivery threads. Each Maildir write is a few system calls with no
/// wait for the disk, so two keep up with both cores' worth of sessions.
const THREADS: usize = 2;

/// Content waiting for its delivery thread, at most (KiB). Beyond this,
/// sessions wait before they journal another message.
const BUDGET_KIB: u32 = 64 * 1024;

/// A journaled message on its way into the mailboxes.
struct Item {
    segment: u64,
    env: Envelope,
    content: Vec<u8>,
    router: Arc<Router>,
    hostname: String,
    /// Tried before: copies made then are recognised, not made twice.
    retry: bool,
    _budget: OwnedSemaphorePermit,
}

#[derive(Default)]
struct Work {
    items: VecDeque<Item>,
    stopping: bool,
}

struct Ctx {
    journal: Journal,
    spool: Arc<Spool>,
    queue: Queue,
    touched: Arc<Touched>,
    work: Mutex<Work>,
    ready: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The journal with its delivery threads.
pub struct Journaled {
    ctx: Arc<Ctx>,
    budget: Arc<Semaphore>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Journaled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journaled")
            .field("journal", &self.ctx.journal)
            .finish()
    }
}

impl Journaled {
    /// Starts the delivery threads.
    pub fn start(
        journal: Journal,
        spool: Arc<Spool>,
        queue: Queue,
        touched: Arc<Touched>,
    ) -> io::Result<Journaled> {
        let ctx = Arc::new(Ctx {
            journal,
            spool,
            queue,
            touched,
            work: Mutex::new(Work::default()),
            ready: Condvar::new(),
        });
        let mut threads = Vec::new();
        for n in 0..THREADS {
            let c = ctx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("postern-deliver-{n}"))
                    .spawn(move || work_loop(&c))?,
            );
        }
        Ok(Journaled {
            ctx,
            budget: Arc::new(Semaphore::new(BUDGET_KIB as usize)),
            threads: Mutex::new(threads),
        })
    }

    /// False once a sync of the mailboxes failed: then the journal can no
    /// longer let go of messages, and new ones take the fsynced path.
    pub fn healthy(&self) -> bool {
        !self.ctx.touched.failed()
    }

    /// Makes the message durable in the journal, calls `durable` (which
    /// logs the message's arrival before its deliveries can), and queues
    /// its delivery. When this returns Ok the caller may answer 250.
    pub async fn accept(
        &self,
        content: Vec<u8>,
        env: Envelope,
        router: Arc<Router>,
        hostname: String,
        durable: impl FnOnce(),
    ) -> io::Result<()> {
        let kib = u32::try_from(content.len() / 1024 + 1)
            .unwrap_or(u32::MAX)
            .min(BUDGET_KIB);
        let budget = self
            .budget
            .clone()
            .acquire_many_owned(kib)
            .await
            .map_err(io::Error::other)?;
        let tail = format::encode_tail(&content, &env);
        let mut record = journal::record(content.len() + tail.len());
        record.extend_from_slice(&content);
        record.extend_from_slice(&tail);
        let segment = self.ctx.journal.append(record).await?;
        durable();
        lock(&self.ctx.work).items.push_back(Item {
            segment,
            env,
            content,
            router,
            hostname,
            retry: false,
            _budget: budget,
        });
        self.ctx.ready.notify_one();
        Ok(())
    }

    /// Stops taking messages, delivers what is queued, and stops the
    /// threads (blocking). What the journal still holds after that is
    /// delivered on the next start.
    pub fn close(&self) {
        self.ctx.journal.close();
        lock(&self.ctx.work).stopping = true;
        self.ctx.ready.notify_all();
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
        self.ctx.journal.finish();
        let left = self.ctx.journal.outstanding();
        if left > 0 {
            tracing::warn!(
                "journal: {left} messages not confirmed delivered; they are delivered again on the next start"
            );
        }
    }
}

fn work_loop(ctx: &Ctx) {
    loop {
        let item = {
            let mut w = lock(&ctx.work);
            loop {
                if let Some(item) = w.items.pop_front() {
                    break item;
                }
                if w.stopping {
                    return;
                }
                w = ctx.ready.wait(w).unwrap_or_else(|p| p.into_inner());
            }
        };
        let how = Durability::Journaled {
            touched: &ctx.touched,
            recovering: item.retry,
        };
        let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            deliver(
                &item.router,
                &item.env,
                &item.content,
                &item.hostname,
                &ctx.spool,
                &ctx.touched,
                how,
            )
        }));
        match attempt {
            Ok(Ok(Some(id))) => ctx.queue.queued(id),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                // Neither delivered nor spooled; still durable in the
                // journal. Try again in a while (the journal keeps it
                // across a restart meanwhile).
                if lock(&ctx.work).stopping {
                    tracing::error!(
                        "{}: cannot queue for retry: {e}; the journal keeps the message for the next start",
                        item.env.id
                    );
                    continue;
                }
                tracing::error!(
                    "{}: cannot queue for retry: {e}; trying again in 1s",
                    item.env.id
                );
                std::thread::sleep(Duration::from_secs(1));
                let mut item = item;
                item.retry = true;
                lock(&ctx.work).items.push_back(item);
                continue;
            }
            Err(_) => {
                tracing::error!(
                    "{}: delivery failed unexpectedly; the journal keeps the message for the next start",
                    item.env.id
                );
                continue;
            }
        }
        ctx.journal.release(item.segment);
    }
}

/// Delivers to every recipient; one that cannot be delivered now puts the
/// message into the spool with the others marked done. Returns the queue
/// ID if it was spooled.
fn deliver(
    router: &Router,
    env: &Envelope,
    content: &[u8],
    hostname: &str,
    spool: &Spool,
    touched: &Touched,
    how: Durability<'_>,
) -> Result<Option<String>, SpoolError> {
    let mut done = BTreeSet::new();
    let Some(last_error) = deliver_pending(router, env, content, &mut done, hostname, how) else {
        return Ok(None);
    };
    // The spool will say these recipients are done: their copies must be
    // durable before it does.
    touched.sync().map_err(|source| SpoolError::Io {
        op: "sync mailboxes for",
        path: env.id.clone().into(),
        source,
    })?;
    let state = DeliveryState::after_first_attempt(last_error, done);
    match spool.commit_blocking(content, env, state.clone()) {
        Ok(()) => {
            tracing::info!("{}: queued for retry", env.id);
            Ok(Some(env.id.clone()))
        }
        Err(SpoolError::Taken(_)) => {
            // Another message holds the ID (one reissued before IDs were
            // kept unique across restarts): this one gets a new ID rather
            // than replace it. Its copies made so far keep their names.
            let mut renamed = env.clone();
            renamed.id = crate::spool::new_queue_id();
            spool.commit_blocking(content, &renamed, state)?;
            tracing::warn!(
                "{}: queue ID taken by another message; queued for retry as {}",
                env.id,
                renamed.id
            );
            Ok(Some(renamed.id))
        }
        Err(e) => Err(e),
    }
}

/// Start-up: delivers the messages of journal segments an earlier run left
/// (a crash, or a stop before their copies were synced). A copy that
/// reached its mailbox is recognised by its name and content, not
/// delivered twice; a message already in the spool is left to the spool.
/// A record that fails its checksum is kept in the spool's `corrupt/`.
/// Returns the IDs it spooled for retry. Blocking.
pub fn recover(
    journal: &Journal,
    left: Leftovers,
    router: &Router,
    hostname: &str,
    spool: &Spool,
    touched: &Touched,
) -> anyhow::Result<Vec<String>> {
    if left.segments.is_empty() {
        return Ok(Vec::new());
    }
    if !left.records.is_empty() {
        tracing::info!(
            "journal: delivering {} messages left by an earlier run",
            left.records.len()
        );
    }
    let how = Durability::Journaled {
        touched,
        recovering: true,
    };
    let mut spooled = Vec::new();
    for rec in &left.records {
        let (env, range) = match format::decode(&rec.file) {
            Ok(x) => x,
            Err(e) => {
                // Written whole and fsynced before any 250, so this is a
                // batch cut short by the crash (never acknowledged) or
                // damage on disk: kept for the operator either way.
                let name = format!("journal-{:016x}-{}", rec.segment, rec.offset);
                let path = spool.quarantine(&name, &rec.file)?;
                tracing::warn!(
                    "journal: a record failed its check ({e}); kept in {}",
                    path.display()
                );
                continue;
            }
        };
        crate::spool::note_used(&env.id);
        match spool.holds(&env.id, &rec.file) {
            // Handed to the spool before the crash: the spool delivers it.
            Some(true) => continue,
            Some(false) => tracing::warn!(
                "{}: a different message is queued under this ID; delivering the journal's all the same",
                env.id
            ),
            None => {}
        }
        if let Some(id) = deliver(
            router,
            &env,
            &rec.file[range],
            hostname,
            spool,
            touched,
            how,
        )? {
            spooled.push(id);
        }
    }
    touched.sync()?;
    let segments = left.segments.len();
    journal.forget(left.segments)?;
    tracing::info!(
        "journal: recovery done ({} messages, {} spooled for retry, {segments} segments removed)",
        left.records.len(),
        spooled.len()
    );
    Ok(spooled)
}
