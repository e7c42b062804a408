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
//! the delivery manager's retries. A message that can go neither into its
//! mailboxes nor into the spool (a full disk) stays in the journal and is
//! tried again with backoff, holding its share of the budget: sessions
//! that cannot get theirs in time are told `452 4.3.1`.

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::agent::LocalOnly;
use super::{DeliveryConfig, Durability, Queue, backoff, deliver_pending};
use crate::route::Router;
use crate::spool::journal::{Journal, Leftovers, Record, Touched};
use crate::spool::{DeliveryState, DirSyncer, Envelope, Spool, SpoolError, format};

/// Delivery threads. Each Maildir write is a few system calls with no
/// wait for the disk, so two keep up with both cores' worth of sessions.
const THREADS: usize = 2;

/// Content waiting for its delivery thread, at most (KiB). Beyond this,
/// sessions wait before they journal another message.
const BUDGET_KIB: u32 = 64 * 1024;

/// How long a session waits for its share of the budget. Deliveries free
/// it within milliseconds; when they cannot (a full disk keeps messages in
/// the journal), the client is told to come back (`452 4.3.1`) instead of
/// being kept waiting.
const BUDGET_WAIT: Duration = Duration::from_secs(5);

/// A journaled message on its way into the mailboxes.
struct Item {
    segment: u64,
    env: Envelope,
    content: Vec<u8>,
    router: Arc<Router>,
    hostname: String,
    /// Tried before: copies made then are recognised, not made twice.
    retry: bool,
    /// Attempts that could neither deliver nor spool it.
    failures: u32,
    /// Its share of the budget (none for one recovered at start).
    _budget: Option<OwnedSemaphorePermit>,
}

#[derive(Default)]
struct Work {
    items: VecDeque<Item>,
    /// Items to try again at a time.
    later: Vec<(Instant, Item)>,
    stopping: bool,
}

struct Ctx {
    journal: Journal,
    spool: Arc<Spool>,
    queue: Queue,
    touched: Arc<Touched>,
    syncer: DirSyncer,
    retry: DeliveryConfig,
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
    /// How long a session waits for its share ([`BUDGET_WAIT`]).
    budget_wait: Duration,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Journaled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journaled")
            .field("journal", &self.ctx.journal)
            .finish()
    }
}

/// A message the journal holds that recovery could neither deliver nor
/// spool: tried again while running ([`Journaled::retry_recovered`]).
#[derive(Debug)]
pub struct Unfinished {
    segment: u64,
    env: Envelope,
    content: Vec<u8>,
}

/// What start-up recovery did.
#[derive(Debug, Default)]
pub struct Recovered {
    /// IDs it put into the spool for retry: to be scheduled.
    pub spooled: Vec<String>,
    /// Messages left in the journal, to be tried again while running.
    pub unfinished: Vec<Unfinished>,
}

impl Journaled {
    /// Starts the delivery threads. `retry` says how long to wait before a
    /// message that could go neither into its mailboxes nor into the spool
    /// is tried again.
    pub fn start(
        journal: Journal,
        spool: Arc<Spool>,
        queue: Queue,
        touched: Arc<Touched>,
        syncer: DirSyncer,
        retry: DeliveryConfig,
    ) -> io::Result<Journaled> {
        let ctx = Arc::new(Ctx {
            journal,
            spool,
            queue,
            touched,
            syncer,
            retry,
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
            budget_wait: BUDGET_WAIT,
            threads: Mutex::new(threads),
        })
    }

    /// From now on, mail the sessions spool (for the delivery manager)
    /// goes into the journal too, and is handed to the manager from
    /// memory ([`crate::spool::front`]): no queue file unless its first
    /// attempt leaves it unfinished.
    pub fn take_spooled_mail(&self) {
        self.ctx.spool.attach_journal(self.ctx.journal.clone());
    }

    /// False once a sync of the mailboxes failed (or where syncfs cannot
    /// report errors): then the journal can no longer let go of messages,
    /// and new ones take the fsynced path.
    pub fn healthy(&self) -> bool {
        !self.ctx.touched.failed()
    }

    /// Makes the message durable in the journal, calls `durable` (which
    /// logs the message's arrival before its deliveries can), and queues
    /// its delivery. When this returns Ok the caller may answer 250. An
    /// error of kind [`io::ErrorKind::StorageFull`] means the disk (or the
    /// budget of messages waiting for it) is full: `452 4.3.1`.
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
        let wanted = self.budget.clone().acquire_many_owned(kib);
        let budget = match tokio::time::timeout(self.budget_wait, wanted).await {
            Ok(permit) => permit.map_err(io::Error::other)?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!(
                        "journal: no room for {kib} KiB after {:?}: messages wait for a disk that takes none",
                        self.budget_wait
                    ),
                ));
            }
        };
        let (tail, crc) = format::encode_tail_crc(&content, &env);
        let mut file = Vec::with_capacity(content.len() + tail.len());
        file.extend_from_slice(&content);
        file.extend_from_slice(&tail);
        let segment = self.ctx.journal.append(Record::new(file, crc)).await?;
        durable();
        self.push(Item {
            segment,
            env,
            content,
            router,
            hostname,
            retry: false,
            failures: 0,
            _budget: Some(budget),
        });
        Ok(())
    }

    /// Takes the messages recovery could not finish: each is tried again
    /// after the first backoff, and its record released once delivered or
    /// spooled (which lets the journal reclaim its segment).
    pub fn retry_recovered(
        &self,
        unfinished: Vec<Unfinished>,
        router: Arc<Router>,
        hostname: &str,
    ) {
        let at = Instant::now() + backoff(&self.ctx.retry, 1);
        let mut w = lock(&self.ctx.work);
        for u in unfinished {
            w.later.push((
                at,
                Item {
                    segment: u.segment,
                    env: u.env,
                    content: u.content,
                    router: router.clone(),
                    hostname: hostname.to_string(),
                    retry: true,
                    failures: 1,
                    _budget: None,
                },
            ));
        }
        drop(w);
        self.ctx.ready.notify_all();
    }

    fn push(&self, item: Item) {
        lock(&self.ctx.work).items.push_back(item);
        self.ctx.ready.notify_one();
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

/// The next item to deliver, waiting for one (or for a retry to fall
/// due); `None` once stopping with nothing ready.
fn next_item(ctx: &Ctx) -> Option<Item> {
    let mut w = lock(&ctx.work);
    loop {
        let now = Instant::now();
        if let Some(i) = w.later.iter().position(|(at, _)| *at <= now) {
            let (_, item) = w.later.swap_remove(i);
            return Some(item);
        }
        if let Some(item) = w.items.pop_front() {
            return Some(item);
        }
        if w.stopping {
            // What waits for a retry stays in the journal for the next
            // start.
            return None;
        }
        w = match w.later.iter().map(|(at, _)| *at).min() {
            Some(at) => {
                ctx.ready
                    .wait_timeout(w, at.saturating_duration_since(now))
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
            None => ctx.ready.wait(w).unwrap_or_else(|p| p.into_inner()),
        };
    }
}

fn work_loop(ctx: &Ctx) {
    while let Some(item) = next_item(ctx) {
        // Once the journal's bulk sync has failed, copies are synced one by
        // one (the journal keeps its segments for the next start anyway).
        let how = if ctx.touched.failed() {
            Durability::Requeued(&ctx.syncer)
        } else {
            Durability::Journaled {
                touched: &ctx.touched,
                recovering: item.retry,
            }
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
                // journal (which keeps it across a restart meanwhile).
                let mut item = item;
                item.retry = true;
                item.failures += 1;
                let wait = backoff(&ctx.retry, item.failures);
                tracing::error!(
                    "{}: cannot deliver or queue for retry: {e}; next attempt in {}",
                    item.env.id,
                    humantime::format_duration(wait)
                );
                lock(&ctx.work).later.push((Instant::now() + wait, item));
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
/// message into the spool with the others marked done. A message for the
/// delivery manager is spooled as it is. Returns the queue ID if it was
/// spooled.
fn deliver(
    router: &Router,
    env: &Envelope,
    content: &[u8],
    hostname: &str,
    spool: &Spool,
    touched: &Touched,
    how: Durability<'_>,
) -> Result<Option<String>, SpoolError> {
    if !for_local_delivery(router, env) {
        // Accepted for the delivery manager ([`crate::spool::front`]),
        // whose first attempt a crash cut short or never began: queued as
        // the session would have, with no attempt counted.
        let id = spool_message(spool, content, env, DeliveryState::default())?;
        tracing::info!("{id}: queued for delivery");
        return Ok(Some(id));
    }
    let mut state = DeliveryState::default();
    let Some(last_error) =
        deliver_pending(&LocalOnly, router, env, content, &mut state, hostname, how).left()
    else {
        return Ok(None);
    };
    // The spool will say these recipients are done: their copies must be
    // durable before it does.
    if matches!(how, Durability::Journaled { .. }) {
        touched.sync().map_err(|source| SpoolError::Io {
            op: "sync mailboxes for",
            path: env.id.clone().into(),
            source,
        })?;
    }
    let state = state.first_attempt_failed(last_error);
    let id = spool_message(spool, content, env, state)?;
    tracing::info!("{id}: queued for retry");
    Ok(Some(id))
}

/// Writes a journaled message into the spool with its delivery state
/// (blocking); returns the queue ID it went under. A queue file already
/// there under its ID that is this message's stands (a hand-off repeated);
/// one that is another message's (an ID reissued before IDs were kept
/// unique across restarts) is not replaced: this message gets a new ID.
/// Its Maildir copies made so far keep their names.
pub(crate) fn spool_message(
    spool: &Spool,
    content: &[u8],
    env: &Envelope,
    state: DeliveryState,
) -> Result<String, SpoolError> {
    match spool.commit_blocking(content, env, state.clone()) {
        Ok(()) => Ok(env.id.clone()),
        Err(SpoolError::Taken(_)) => {
            let mut renamed = env.clone();
            renamed.id = crate::spool::new_queue_id();
            spool.commit_blocking(content, &renamed, state)?;
            tracing::warn!(
                "{}: queue ID taken by another message; queued as {}",
                env.id,
                renamed.id
            );
            Ok(renamed.id)
        }
        Err(e) => Err(e),
    }
}

/// Whether the server would have delivered `env` straight from the
/// journal: every recipient a local mailbox, and no success report asked
/// for. Otherwise the record came from the spool's front ([`crate::spool::front`]),
/// and recovery queues it for the delivery manager as the session would
/// have.
pub(crate) fn for_local_delivery(router: &Router, env: &Envelope) -> bool {
    env.recipients.iter().all(|r| {
        !r.notify().success
            && matches!(
                router.transport(&r.address),
                Ok(crate::route::Transport::Local { .. })
            )
    })
}

/// Start-up: delivers the messages of journal segments an earlier run left
/// (a crash, or a stop before their copies were synced). A copy that
/// reached its mailbox is recognised by its name and content, not
/// delivered twice; a message already in the spool is left to the spool.
/// Bytes that fail their checks are kept in the spool's `corrupt/`.
///
/// Record by record, never all or nothing: a message that can go neither
/// into its mailboxes nor into the spool is returned as unfinished (its
/// segment stays, adopted by `journal`), and recovery goes on with the
/// next. A segment goes once everything in it is delivered and synced,
/// spooled or kept aside. Blocking.
pub fn recover(
    journal: &Journal,
    left: Leftovers,
    router: &Router,
    hostname: &str,
    spool: &Spool,
    touched: &Touched,
    syncer: &DirSyncer,
) -> Recovered {
    let mut out = Recovered::default();
    if left.segments.is_empty() {
        return out;
    }
    let total = left.records.len();
    if left.delivered > 0 {
        tracing::info!(
            "journal: {} messages left by an earlier run were delivered or queued already",
            left.delivered
        );
    }
    if !left.records.is_empty() {
        tracing::info!(
            "journal: delivering {} messages left by an earlier run",
            left.records.len()
        );
    }
    // Where syncfs cannot report errors, every copy is synced on its own.
    let bulk = !touched.failed();
    let how = if bulk {
        Durability::Journaled {
            touched,
            recovering: true,
        }
    } else {
        Durability::Requeued(syncer)
    };
    // Segments that must stay: something in them is neither safe
    // elsewhere nor kept aside.
    let mut kept = BTreeSet::new();
    let mut keep_aside = |segment: u64, offset: usize, bytes: &[u8], why: &str| {
        let name = format!("journal-{segment:016x}-{offset}");
        match spool.quarantine(&name, bytes) {
            Ok(path) => tracing::warn!(
                "journal segment {segment:016x}: {} bytes at offset {offset} {why}; kept in {}",
                bytes.len(),
                path.display()
            ),
            Err(e) => {
                tracing::error!(
                    "journal segment {segment:016x}: {} bytes at offset {offset} {why}, and cannot be kept aside ({e}); the segment stays for the next start",
                    bytes.len()
                );
                kept.insert(segment);
            }
        }
    };
    for d in &left.damaged {
        let why = if d.at_end {
            "follow the last complete record (a write cut short by a crash, never acknowledged, or damage)"
        } else {
            "failed their checks (damage)"
        };
        keep_aside(d.segment, d.offset, &d.bytes, why);
    }
    let mut unfinished_in: std::collections::BTreeMap<u64, usize> = Default::default();
    for rec in left.records {
        let (env, range) = match format::decode(&rec.file) {
            Ok(x) => x,
            Err(e) => {
                keep_aside(
                    rec.segment,
                    rec.offset,
                    &rec.file,
                    &format!("are a record whose queue file fails its check ({e})"),
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
        let content = &rec.file[range.clone()];
        match deliver(router, &env, content, hostname, spool, touched, how) {
            Ok(Some(id)) => out.spooled.push(id),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(
                    "{}: cannot deliver or queue for retry: {e}; the journal keeps it, tried again while running",
                    env.id
                );
                *unfinished_in.entry(rec.segment).or_default() += 1;
                let mut file = rec.file;
                file.truncate(range.end);
                file.drain(..range.start);
                out.unfinished.push(Unfinished {
                    segment: rec.segment,
                    env,
                    content: file,
                });
            }
        }
    }
    let synced = if bulk { touched.sync() } else { Ok(()) };
    let mut removed = 0;
    match synced {
        Ok(()) => {
            for &seq in &left.segments {
                if kept.contains(&seq) {
                    continue;
                }
                if let Some(&n) = unfinished_in.get(&seq) {
                    journal.adopt(seq, n);
                    continue;
                }
                match journal.forget([seq]) {
                    Ok(()) => removed += 1,
                    Err(e) => tracing::error!("journal: {e}"),
                }
            }
        }
        Err(e) => {
            // The copies made are not known to be on disk: every segment
            // stays, and the next start delivers them again (finding the
            // copies that did get there).
            tracing::error!(
                "journal: cannot sync the mailboxes after recovery ({e}); its segments stay for the next start"
            );
            for (&seq, &n) in unfinished_in.iter().filter(|(s, _)| !kept.contains(s)) {
                journal.adopt(seq, n);
            }
        }
    }
    tracing::info!(
        "journal: recovery done ({total} messages, {} spooled for retry, {} left to retry, {removed} segments removed)",
        out.spooled.len(),
        out.unfinished.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::spool::SyncMode;
    use crate::spool::journal::segment_for_test;
    use arc_swap::ArcSwap;
    use std::fs;
    use std::path::{Path, PathBuf};

    struct Setup {
        dir: PathBuf,
        router: Arc<Router>,
        spool: Arc<Spool>,
        syncer: DirSyncer,
        touched: Arc<Touched>,
        retry: DeliveryConfig,
        config: Config,
    }

    fn setup(name: &str) -> Setup {
        let dir = std::env::temp_dir().join(format!("postern-jd-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let text = format!(
            "[server]\nhostname = \"mx.test\"\n[[listener]]\naddress = \"127.0.0.1:2525\"\n\
             [local]\ndomains = [\"example.test\"]\nusers = [\"alice\", \"bob\"]\n\
             maildir = \"{}/mail/{{user}}/Maildir\"\n[aliases]\npostmaster = \"alice\"\nabuse = \"alice\"\n",
            dir.display()
        );
        let config = Config::from_toml(&text, Path::new("t.toml")).unwrap();
        let router = Arc::new(Router::new(&config));
        let syncer = DirSyncer::new(SyncMode::File);
        let spool = Arc::new(Spool::open(&dir.join("spool"), syncer.clone()).unwrap());
        let touched = Arc::new(Touched::new(syncer.filesystems().clone()));
        let retry = DeliveryConfig {
            hostname: "mx.test".into(),
            concurrency: 1,
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_millis(200),
            max_lifetime: Duration::from_secs(3600),
            delay_warning: None,
        };
        Setup {
            dir,
            router,
            spool,
            syncer,
            touched,
            retry,
            config,
        }
    }

    /// The delivery manager and the journal's threads, as the daemon runs
    /// them (and the manager's stop switch, to keep).
    fn running(s: &Setup, journal: Journal) -> (Journaled, tokio::sync::watch::Sender<bool>) {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let dns = crate::dns::Dns::new(&s.config.dns).unwrap();
        let smtp = crate::deliver::smtp::Client::new(
            &s.config,
            dns.resolver().clone(),
            tokio::runtime::Handle::current(),
            Default::default(),
        )
        .unwrap();
        let (queue, _manager) = crate::deliver::start(
            s.spool.clone(),
            Arc::new(ArcSwap::from(s.router.clone())),
            s.syncer.clone(),
            s.retry.clone(),
            Arc::new(ArcSwap::from_pointee(smtp)),
            Vec::new(),
            stopped,
        );
        let j = Journaled::start(
            journal,
            s.spool.clone(),
            queue,
            s.touched.clone(),
            s.syncer.clone(),
            s.retry.clone(),
        )
        .unwrap();
        (j, stop)
    }

    fn message(id: &str, user: &str) -> Vec<u8> {
        let mut env = format::tests::sample();
        env.id = id.into();
        // Arrived now: a message past max_lifetime is returned to its
        // sender and leaves the queue.
        env.arrival = crate::spool::now_secs() as f64;
        env.recipients[0].address = format!("{user}@example.test");
        env.recipients[0].original = format!("{user}@example.test");
        format::encode(format!("Subject: {id}\r\n\r\nhi\r\n").as_bytes(), &env)
    }

    fn mails(dir: &Path, user: &str) -> usize {
        fs::read_dir(dir.join("mail").join(user).join("Maildir/new"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn wait_until(mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn recovery_goes_on_past_damage_and_a_refused_commit() {
        let s = setup("recover");
        let jdir = s.dir.join("spool/journal");
        fs::create_dir_all(&jdir).unwrap();
        // alice's mailbox is in the way: her message needs the spool, and
        // the spool refuses that one commit (a directory where its state
        // file goes).
        fs::create_dir_all(s.dir.join("mail")).unwrap();
        fs::write(s.dir.join("mail/alice"), b"in the way").unwrap();
        let refused = s.dir.join("spool/queue/00000000000000A1.state");
        fs::create_dir_all(&refused).unwrap();
        let records = [
            message("00000000000000A1", "alice"),
            message("00000000000000B1", "bob"),
            message("00000000000000B2", "bob"),
            message("00000000000000B3", "bob"),
        ];
        let refs: Vec<&[u8]> = records.iter().map(|r| &r[..]).collect();
        let mut seg = segment_for_test(9, &refs);
        // Damage in the middle: a byte of B1's content.
        let at = memchr::memmem::find(&seg, b"Subject: 00000000000000B1").unwrap();
        seg[at] ^= 1;
        fs::write(jdir.join(format!("{:016x}", 3)), &seg).unwrap();

        let (journal, left) =
            Journal::open(&jdir, s.touched.clone(), Duration::from_secs(3600)).unwrap();
        let router = s.router.clone();
        let (j2, sp, t2, sy) = (
            journal.clone(),
            s.spool.clone(),
            s.touched.clone(),
            s.syncer.clone(),
        );
        let out = tokio::task::spawn_blocking(move || {
            recover(&j2, left, &router, "mx.test", &sp, &t2, &sy)
        })
        .await
        .unwrap();
        // Past both: B2 and B3 delivered, B1's bytes kept aside, A1 left
        // to retry with its segment kept.
        assert_eq!(mails(&s.dir, "bob"), 2);
        assert!(out.spooled.is_empty());
        assert_eq!(out.unfinished.len(), 1);
        assert_eq!(out.unfinished[0].env.id, "00000000000000A1");
        let corrupt: Vec<_> = fs::read_dir(s.dir.join("spool/corrupt"))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(corrupt.len(), 1);
        assert!(
            fs::read(corrupt[0].path())
                .unwrap()
                .windows(2)
                .any(|w| w == b"hi")
        );
        assert!(jdir.join(format!("{:016x}", 3)).exists());

        // Running, the refusal gone: retried, spooled, segment reclaimed.
        // (Gone before the retry is scheduled: a retry due 50 ms later
        // that still found it would spool the message under a new ID.)
        fs::remove_dir(&refused).unwrap();
        let (j, _stop) = running(&s, journal);
        j.retry_recovered(out.unfinished, s.router.clone(), "mx.test");
        tokio::task::block_in_place(|| {
            assert!(wait_until(|| s.spool.contains("00000000000000A1")));
            assert!(wait_until(|| !jdir.join(format!("{:016x}", 3)).exists()));
            j.close();
        });
        let _ = fs::remove_dir_all(&s.dir);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_session_waits_for_the_budget_a_bounded_time() {
        let s = setup("budget");
        let (journal, _) = Journal::open(
            &s.dir.join("spool/journal"),
            s.touched.clone(),
            Duration::from_secs(3600),
        )
        .unwrap();
        let (mut j, _stop) = running(&s, journal);
        j.budget_wait = Duration::from_millis(200);
        // Messages that cannot leave (a full disk) hold the whole budget.
        let held = j.budget.clone().try_acquire_many_owned(BUDGET_KIB).unwrap();
        let env = format::decode(&message("00000000000000C1", "bob"))
            .unwrap()
            .0;
        let started = Instant::now();
        let e = j
            .accept(
                b"hi\r\n".to_vec(),
                env.clone(),
                s.router.clone(),
                "mx.test".into(),
                || {},
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // Once they leave, the next one is taken.
        drop(held);
        j.accept(
            b"hi\r\n".to_vec(),
            env,
            s.router.clone(),
            "mx.test".into(),
            || {},
        )
        .await
        .unwrap();
        tokio::task::block_in_place(|| {
            assert!(wait_until(|| mails(&s.dir, "bob") == 1));
            j.close();
        });
        let _ = fs::remove_dir_all(&s.dir);
    }
}
