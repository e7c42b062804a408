//! The delivery journal: where a message for local mailboxes becomes
//! durable before `250` when it is delivered right after.
//!
//! Sessions append records (a whole queue file each, [`super::format`]) to
//! the active segment file, `journal/SEQ`. One writer thread writes every
//! record that arrived while it was busy with a single `write(2)` and makes
//! them durable with a single `fdatasync(2)`: one disk flush for a whole
//! batch of concurrent sessions, and no new file or directory entry per
//! message. Only then is each session told its record's segment.
//!
//! The message is then written into its Maildirs without an fsync of its
//! own, and the delivery [`Journal::release`]s its record. A segment is
//! sealed when it is full, when no append came for a while (`seal_idle`),
//! when it is old, or at shutdown. A sealed segment with no record left
//! outstanding goes to the reclaimer thread, which syncs the file systems
//! the Maildir copies went to ([`Touched`], one `syncfs(2)` for thousands
//! of messages) and only then removes the segment. So at every moment each
//! acknowledged message is durable in the journal, in its mailbox, or in
//! the spool.
//!
//! After a crash, [`Journal::open`] returns the records of every segment
//! left; they are delivered again under the same deterministic Maildir
//! names, so a copy that did reach the mailbox is recognised (and repaired
//! if it is not intact) instead of duplicated. Each record has checksums
//! of its own ([`segment`]): damage costs the records it hits, and their
//! bytes are returned to be kept for the operator.

mod segment;
mod touched;

#[cfg(test)]
pub(crate) use segment::tests::segment as segment_for_test;
pub use segment::{Parsed, Record, parse};
pub use touched::Touched;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// A segment is sealed once it holds this much.
const SEGMENT_BYTES: u64 = 16 << 20;
/// A segment is sealed at this age (or `seal_idle`, if longer) even if
/// appends never pause, so that delivered messages do not stay in the
/// journal for long.
const MAX_AGE: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ctx<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> io::Error + 'a {
    move |e| io::Error::new(e.kind(), format!("{op} {}: {e}", path.display()))
}

/// What earlier runs left in the journal.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Every segment found (some may hold no record).
    pub segments: Vec<u64>,
    /// Their complete records, in order.
    pub records: Vec<Leftover>,
    /// Bytes of the segments that are no record: damage, or (at the end
    /// of a segment) a batch whose write was cut short.
    pub damaged: Vec<Damaged>,
    /// Records marked delivered (handed on for good): not in `records`.
    pub delivered: usize,
}

/// One record found in a segment left by an earlier run.
#[derive(Debug)]
pub struct Leftover {
    /// The segment it was found in.
    pub segment: u64,
    /// Its offset there.
    pub offset: usize,
    /// The queue file bytes ([`super::format::decode`]).
    pub file: Vec<u8>,
}

/// Bytes of a segment left by an earlier run that are no record.
#[derive(Debug)]
pub struct Damaged {
    /// The segment.
    pub segment: u64,
    /// Where the bytes start.
    pub offset: usize,
    /// The bytes.
    pub bytes: Vec<u8>,
    /// They end the segment (a write cut short, never acknowledged, or
    /// damage at the end); otherwise a record follows them.
    pub at_end: bool,
}

/// An append waiting for the writer.
struct Pending {
    record: Record,
    done: oneshot::Sender<io::Result<Placed>>,
}

/// Where an appended record is: its segment, and its offset there (for
/// [`Journal::mark_delivered`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// The segment, to [`Journal::release`] the record from.
    pub segment: u64,
    /// The record's offset in the segment file.
    pub offset: u64,
}

#[derive(Debug, Default)]
struct Segment {
    /// Records acknowledged and not yet released.
    outstanding: usize,
    /// No more appends go here.
    sealed: bool,
}

#[derive(Default)]
struct State {
    pending: Vec<Pending>,
    segments: BTreeMap<u64, Segment>,
    stopping: bool,
}

#[derive(Default)]
struct ReclaimQueue {
    segments: Vec<u64>,
    stopping: bool,
}

struct Inner {
    dir: PathBuf,
    seal_idle: Duration,
    state: Mutex<State>,
    /// Wakes the writer.
    work: Condvar,
    reclaim: Mutex<ReclaimQueue>,
    /// Wakes the reclaimer.
    reclaim_ready: Condvar,
    touched: Arc<Touched>,
    /// The segment [`Journal::mark_delivered`] wrote to last, kept open.
    marking: Mutex<Option<(u64, File)>>,
}

/// Reads the segments under `dir` and their complete records (what a
/// start would replay), without opening the journal: for `postern queue
/// list`, and for [`Journal::open`].
pub fn read(dir: &Path) -> io::Result<Leftovers> {
    let mut left = Leftovers::default();
    for entry in fs::read_dir(dir).map_err(ctx("read", dir))? {
        let entry = entry.map_err(ctx("read", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        match segment_seq(&name) {
            Some(seq) => left.segments.push(seq),
            None => tracing::warn!(
                "ignoring unexpected file {} in the journal",
                entry.path().display()
            ),
        }
    }
    left.segments.sort_unstable();
    for &seq in &left.segments {
        let path = segment_path(dir, seq);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            // Reclaimed by a running daemon while `queue list` looked.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ctx("read", &path)(e)),
        };
        let parsed = parse(&bytes);
        left.delivered += parsed.delivered;
        left.records
            .extend(parsed.records.iter().map(|&(offset, r)| Leftover {
                segment: seq,
                offset,
                file: r.to_vec(),
            }));
        let ends = parsed.torn.iter().map(|r| (r, true));
        for (range, at_end) in parsed.damaged.iter().map(|r| (r, false)).chain(ends) {
            left.damaged.push(Damaged {
                segment: seq,
                offset: range.start,
                bytes: bytes[range.clone()].to_vec(),
                at_end,
            });
        }
    }
    Ok(left)
}

/// The journal of one daemon; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
    threads: Arc<Mutex<Threads>>,
}

#[derive(Default)]
struct Threads {
    writer: Option<std::thread::JoinHandle<()>>,
    reclaimer: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

/// Segment file names: 16 hex digits.
fn segment_seq(name: &str) -> Option<u64> {
    (name.len() == 16)
        .then(|| u64::from_str_radix(name, 16).ok())
        .flatten()
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}"))
}

impl Journal {
    /// Opens (creating) the journal under `dir`, reads what earlier runs
    /// left, and starts the writer and reclaimer threads. Segments left
    /// over stay on disk until [`Journal::forget`] says their messages are
    /// safe elsewhere. New segments are numbered after them and made when
    /// the first record needs one.
    pub fn open(
        dir: &Path,
        touched: Arc<Touched>,
        seal_idle: Duration,
    ) -> io::Result<(Journal, Leftovers)> {
        crate::durable::dirsync::create_dir_durable(dir, 0o700, 0o755)
            .map_err(ctx("create", dir))?;
        let left = read(dir)?;
        let first = left.segments.last().map_or(1, |s| s + 1);
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            seal_idle,
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            reclaim: Mutex::new(ReclaimQueue::default()),
            reclaim_ready: Condvar::new(),
            touched,
            marking: Mutex::new(None),
        });
        let writer = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("postern-journal".into())
                .spawn(move || {
                    let run = std::panic::AssertUnwindSafe(|| write_loop(&inner, first));
                    if std::panic::catch_unwind(run).is_err() {
                        tracing::error!("journal: writer thread failed; journaling stops");
                    }
                    // Whatever is still waiting is refused (451), never
                    // left hanging.
                    let mut st = lock(&inner.state);
                    st.stopping = true;
                    for p in st.pending.drain(..) {
                        let _ = p.done.send(Err(io::Error::other("journal stopped")));
                    }
                })?
        };
        let reclaimer = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("postern-reclaim".into())
                .spawn(move || reclaim_loop(&inner))?
        };
        Ok((
            Journal {
                inner,
                threads: Arc::new(Mutex::new(Threads {
                    writer: Some(writer),
                    reclaimer: Some(reclaimer),
                })),
            },
            left,
        ))
    }

    /// Removes segments left by an earlier run once their messages are
    /// delivered (and synced) or spooled.
    pub fn forget(&self, segments: impl IntoIterator<Item = u64>) -> io::Result<()> {
        for seq in segments {
            let path = segment_path(&self.inner.dir, seq);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(ctx("remove", &path)(e));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Appends a record and returns once it is durable, with its segment,
    /// to be [`Journal::release`]d once the message is safe elsewhere.
    pub async fn append(&self, record: Record) -> io::Result<u64> {
        self.append_placed(record).await.map(|p| p.segment)
    }

    /// [`Journal::append`], returning where the record went.
    pub async fn append_placed(&self, record: Record) -> io::Result<Placed> {
        let (done, rx) = oneshot::channel();
        {
            let mut st = lock(&self.inner.state);
            if st.stopping {
                return Err(io::Error::other("journal closed"));
            }
            st.pending.push(Pending { record, done });
        }
        self.inner.work.notify_one();
        rx.await
            .unwrap_or_else(|_| Err(io::Error::other("journal writer gone")))
    }

    /// Takes charge of a segment an earlier run left, with `outstanding`
    /// of its records still to be delivered (each then
    /// [`Journal::release`]d): once none is, the segment is reclaimed like
    /// one of this run's.
    pub fn adopt(&self, segment: u64, outstanding: usize) {
        lock(&self.inner.state).segments.insert(
            segment,
            Segment {
                outstanding: outstanding + 1,
                sealed: true,
            },
        );
        // The extra count taken above, so that a segment with nothing
        // outstanding goes to the reclaimer through the one path.
        self.release(segment);
    }

    /// The message of one record of `segment` is in its mailboxes (not
    /// yet synced) or in the spool. The last release of a sealed segment
    /// hands it to the reclaimer.
    pub fn release(&self, segment: u64) {
        update(&self.inner, segment, |s| {
            s.outstanding = s.outstanding.saturating_sub(1);
        });
    }

    /// Stops the writer after it has written everything appended so far
    /// and sealed the last segment (blocking). Releases still work.
    pub fn close(&self) {
        lock(&self.inner.state).stopping = true;
        self.inner.work.notify_one();
        let writer = lock(&self.threads).writer.take();
        if let Some(h) = writer {
            let _ = h.join();
        }
    }

    /// After [`Journal::close`] and the last release: reclaims what can
    /// be, then stops the reclaimer (blocking). What is left is delivered
    /// again on the next start.
    pub fn finish(&self) {
        lock(&self.inner.reclaim).stopping = true;
        self.inner.reclaim_ready.notify_one();
        let reclaimer = lock(&self.threads).reclaimer.take();
        if let Some(h) = reclaimer {
            let _ = h.join();
        }
    }

    /// Marks the record at `at` delivered for good (a remote server took
    /// it), before it is released: a restart before its segment is
    /// reclaimed leaves it alone instead of sending it again. In place,
    /// without a sync (blocking): a mark lost in a crash costs a
    /// duplicate, never a message. A failure is logged, never fatal.
    pub fn mark_delivered(&self, at: Placed) {
        let mut cached = lock(&self.inner.marking);
        if cached.as_ref().is_none_or(|(seq, _)| *seq != at.segment) {
            let path = segment_path(&self.inner.dir, at.segment);
            // Not the writer's descriptor: that one appends wherever it
            // is told to write.
            match OpenOptions::new().write(true).open(&path) {
                Ok(f) => *cached = Some((at.segment, f)),
                Err(e) => {
                    *cached = None;
                    tracing::warn!(
                        "journal: cannot mark a record of {} delivered ({e}); a restart before its segment goes would send it again",
                        path.display()
                    );
                    return;
                }
            }
        }
        if let Some((_, f)) = cached.as_ref()
            && let Err(e) =
                std::os::unix::fs::FileExt::write_all_at(f, segment::DELIVERED_MAGIC, at.offset)
        {
            tracing::warn!(
                "journal: cannot mark the record at {} of segment {:016x} delivered ({e}); a restart before the segment goes would send it again",
                at.offset,
                at.segment
            );
        }
    }

    /// False once a bulk sync of the mailboxes failed (or where syncfs
    /// cannot report errors): segments are no longer reclaimed, so new
    /// mail should go elsewhere.
    pub fn healthy(&self) -> bool {
        !self.inner.touched.failed()
    }

    /// Records not yet released, for the log at shutdown.
    pub fn outstanding(&self) -> usize {
        lock(&self.inner.state)
            .segments
            .values()
            .map(|s| s.outstanding)
            .sum()
    }
}

/// Creates a segment with its header (a new random salt, which is
/// returned) and makes it and its directory entry durable before any
/// record is acknowledged in it.
fn new_segment(dir: &Path, seq: u64) -> io::Result<(File, u64)> {
    let path = segment_path(dir, seq);
    let mut salt = [0u8; 8];
    getrandom::fill(&mut salt).map_err(|e| io::Error::other(format!("random salt: {e}")))?;
    let salt = u64::from_le_bytes(salt);
    let mut f = OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(ctx("create", &path))?;
    f.write_all(&segment::segment_header(salt))
        .and_then(|()| f.sync_data())
        .map_err(ctx("write", &path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ctx("fsync", dir))?;
    Ok((f, salt))
}

/// Queues a sealed segment with nothing outstanding for the reclaimer.
fn reclaim(inner: &Inner, seq: u64) {
    lock(&inner.reclaim).segments.push(seq);
    inner.reclaim_ready.notify_one();
}

/// Syncs the mailboxes' file systems once for every segment that is ready,
/// then removes those segments. A sync error keeps them (and every later
/// one) for the next start, which delivers their messages again.
fn reclaim_loop(inner: &Inner) {
    loop {
        let batch = {
            let mut q = lock(&inner.reclaim);
            while q.segments.is_empty() && !q.stopping {
                q = inner
                    .reclaim_ready
                    .wait(q)
                    .unwrap_or_else(|p| p.into_inner());
            }
            if q.segments.is_empty() {
                return;
            }
            std::mem::take(&mut q.segments)
        };
        if let Err(e) = inner.touched.sync() {
            tracing::error!(
                "journal: cannot sync the mailboxes ({e}); keeping {} segment(s) for the next start",
                batch.len()
            );
            continue;
        }
        for seq in batch {
            let path = segment_path(&inner.dir, seq);
            if let Err(e) = fs::remove_file(&path) {
                tracing::error!("journal: cannot remove {}: {e}", path.display());
            }
        }
    }
}

fn max_age(inner: &Inner) -> Duration {
    MAX_AGE.max(inner.seal_idle)
}

/// The segment being appended to.
struct Active {
    seq: u64,
    salt: u64,
    file: File,
    size: u64,
    opened: Instant,
}

/// Seals `seq`; a segment with nothing outstanding goes to the reclaimer.
fn seal(inner: &Inner, seq: u64) {
    update(inner, seq, |s| s.sealed = true);
}

/// Changes segment `seq`'s bookkeeping; once it is sealed with nothing
/// outstanding it leaves the map (exactly once) for the reclaimer.
fn update(inner: &Inner, seq: u64, change: impl FnOnce(&mut Segment)) {
    let done = {
        let mut st = lock(&inner.state);
        let Some(seg) = st.segments.get_mut(&seq) else {
            return;
        };
        change(seg);
        let done = seg.sealed && seg.outstanding == 0;
        if done {
            st.segments.remove(&seq);
        }
        done
    };
    if done {
        reclaim(inner, seq);
    }
}

fn write_loop(inner: &Inner, first: u64) {
    let mut next_seq = first;
    let mut active: Option<Active> = None;
    let mut last_append = Instant::now();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let (batch, stopping) = {
            let mut st = lock(&inner.state);
            loop {
                if !st.pending.is_empty() || st.stopping {
                    break;
                }
                let Some(a) = &active else {
                    st = inner.work.wait(st).unwrap_or_else(|p| p.into_inner());
                    continue;
                };
                let idle_left = inner.seal_idle.saturating_sub(last_append.elapsed());
                let age_left = max_age(inner).saturating_sub(a.opened.elapsed());
                let wait = idle_left.min(age_left);
                if wait.is_zero() {
                    break;
                }
                st = inner
                    .work
                    .wait_timeout(st, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            (std::mem::take(&mut st.pending), st.stopping)
        };
        if batch.is_empty() {
            // Idle, old, or stopping: seal.
            if let Some(a) = active.take() {
                seal(inner, a.seq);
            }
            if stopping {
                return;
            }
            continue;
        }
        if active.is_none() {
            match new_segment(&inner.dir, next_seq) {
                Ok((file, salt)) => {
                    lock(&inner.state)
                        .segments
                        .insert(next_seq, Segment::default());
                    active = Some(Active {
                        seq: next_seq,
                        salt,
                        file,
                        size: segment::SEGMENT_HEADER as u64,
                        opened: Instant::now(),
                    });
                    next_seq += 1;
                }
                Err(e) => {
                    tracing::error!("journal: cannot start a new segment: {e}");
                    // Never the same number again (the file may exist).
                    let _ = fs::remove_file(segment_path(&inner.dir, next_seq));
                    next_seq += 1;
                    for p in batch {
                        let _ = p.done.send(Err(io::Error::new(e.kind(), e.to_string())));
                    }
                    // Not a busy loop while the disk is in trouble.
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
        }
        let Some(a) = active.as_mut() else { continue };
        buf.clear();
        buf.reserve(batch.iter().map(|p| p.record.framed_len()).sum());
        let mut offsets = Vec::with_capacity(batch.len());
        for p in &batch {
            offsets.push(a.size + buf.len() as u64);
            segment::frame(a.salt, &p.record, &mut buf);
        }
        match a.file.write_all(&buf).and_then(|()| a.file.sync_data()) {
            Ok(()) => {
                a.size += buf.len() as u64;
                last_append = Instant::now();
                lock(&inner.state)
                    .segments
                    .entry(a.seq)
                    .or_default()
                    .outstanding += batch.len();
                for (p, offset) in batch.into_iter().zip(offsets) {
                    let _ = p.done.send(Ok(Placed {
                        segment: a.seq,
                        offset,
                    }));
                }
                if a.size >= SEGMENT_BYTES || a.opened.elapsed() >= max_age(inner) {
                    let seq = a.seq;
                    active = None;
                    seal(inner, seq);
                }
            }
            Err(e) => {
                let path = segment_path(&inner.dir, a.seq);
                tracing::error!("journal: write to {} failed: {e}", path.display());
                // The clients get 451 and will send again: their records
                // must not be delivered after a crash. Best effort; what
                // follows a failed write goes to a new segment anyway.
                let _ = a.file.set_len(a.size).and_then(|()| a.file.sync_data());
                for p in batch {
                    let _ = p
                        .done
                        .send(Err(io::Error::new(e.kind(), format!("journal: {e}"))));
                }
                let seq = a.seq;
                active = None;
                seal(inner, seq);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payload: &[u8]) -> Record {
        Record::from_payload(payload.to_vec())
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("postern-journal-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn files(dir: &Path) -> usize {
        fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
    }

    fn wait_until(mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn append_release_reclaim_and_leftovers() {
        let dir = temp_dir("cycle");
        let touched = Arc::new(Touched::default());
        let long = Duration::from_secs(3600);
        let (j, left) = Journal::open(&dir, touched.clone(), long).unwrap();
        assert!(left.segments.is_empty() && left.records.is_empty());
        assert_eq!(files(&dir), 0, "segments are made when needed");
        let a = j.append(framed(b"a")).await.unwrap();
        let b = j.append(framed(b"b")).await.unwrap();
        assert_eq!(a, b);
        tokio::task::block_in_place(|| j.release(a));
        // One still outstanding: what a crash now would leave.
        let names: Vec<_> = fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
        let bytes = fs::read(names[0].path()).unwrap();
        let recs: Vec<&[u8]> = parse(&bytes).records.into_iter().map(|r| r.1).collect();
        assert_eq!(recs, vec![&b"a"[..], &b"b"[..]]);
        tokio::task::block_in_place(|| {
            j.release(b);
            // Not sealed yet: the segment stays.
            assert_eq!(files(&dir), 1);
            j.close();
            j.finish();
        });
        assert_eq!(files(&dir), 0, "sealed at close, reclaimed");
        assert!(j.append(framed(b"c")).await.is_err(), "closed");

        // A segment left by a crash is returned by the next open.
        let mut seven = segment::tests::segment(5, &[b"left", b"lost"]);
        // The second record damaged: its bytes come back as such.
        let n = seven.len();
        seven[n - 1] ^= 1;
        fs::write(segment_path(&dir, 7), seven).unwrap();
        fs::write(segment_path(&dir, 8), b"").unwrap();
        let (j2, left) = Journal::open(&dir, touched, long).unwrap();
        assert_eq!(left.segments, vec![7, 8]);
        assert_eq!(left.damaged.len(), 1);
        assert!(left.damaged[0].at_end && left.damaged[0].bytes.ends_with(b"losu"));
        assert_eq!(left.records.len(), 1);
        assert_eq!(
            (left.records[0].segment, &left.records[0].file[..]),
            (7, &b"left"[..])
        );
        let seq = j2.append(framed(b"d")).await.unwrap();
        assert_eq!(seq, 9, "new segments come after the leftovers");
        j2.forget([8]).unwrap();
        assert!(!segment_path(&dir, 8).exists());
        // A leftover adopted with a record still to deliver stays until
        // that one is released.
        tokio::task::block_in_place(|| {
            j2.adopt(7, 1);
            std::thread::sleep(Duration::from_millis(100));
            assert!(segment_path(&dir, 7).exists());
            j2.release(7);
            assert!(wait_until(|| !segment_path(&dir, 7).exists()));
            j2.release(seq);
            j2.close();
            j2.finish();
        });
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn idle_seal_and_sync_failure_keeps_segments() {
        let dir = temp_dir("idle");
        let touched = Arc::new(Touched::default());
        let mailbox = dir.join("mbox");
        fs::create_dir_all(&mailbox).unwrap();
        let jdir = dir.join("j");
        let (j, _) = Journal::open(&jdir, touched.clone(), Duration::from_millis(20)).unwrap();
        touched
            .add(std::os::fd::AsFd::as_fd(&File::open(&mailbox).unwrap()))
            .unwrap();
        // Sealed when idle, reclaimed once released.
        let s = j.append(framed(b"a")).await.unwrap();
        tokio::task::block_in_place(|| j.release(s));
        assert!(wait_until(|| files(&jdir) == 0), "idle segment reclaimed");
        // The mailbox directory may go away: its file system is still synced.
        fs::remove_dir(&mailbox).unwrap();
        let s = j.append(framed(b"b")).await.unwrap();
        tokio::task::block_in_place(|| j.release(s));
        assert!(wait_until(|| files(&jdir) == 0), "reclaimed after rmdir");
        // After a failed sync nothing is removed any more.
        touched.fail_for_test();
        let s = j.append(framed(b"c")).await.unwrap();
        tokio::task::block_in_place(|| j.release(s));
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(files(&jdir), 1, "kept for the next start");
        tokio::task::block_in_place(|| {
            j.close();
            j.finish();
        });
        assert_eq!(files(&jdir), 1);
        let _ = fs::remove_dir_all(&dir);
    }
}
