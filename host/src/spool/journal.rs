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
//! own, and the session [`Journal::release`]s its record. A segment that is
//! sealed (full, idle, or at shutdown) and has no record left outstanding
//! is reclaimed: the file systems the Maildir copies went to are synced
//! with `syncfs(2)` — one flush for thousands of messages — and only then is
//! the segment removed. So at every moment each acknowledged message is
//! durable in the journal, in its mailbox, or in the spool.
//!
//! After a crash, [`Journal::open`] returns the records of every segment
//! left; they are delivered again under the same deterministic Maildir
//! names, so a copy that did reach the mailbox is recognised (and repaired
//! if it is not intact) instead of duplicated.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

const MAGIC: &[u8; 8] = b"PSTRNJ01";
const HEADER: usize = 16;

/// A segment is sealed once it holds this much.
const SEGMENT_BYTES: u64 = 16 << 20;
/// A segment with records is sealed after this long without an append, so
/// that a quiet daemon does not keep delivered messages in the journal.
const IDLE_SEAL: Duration = Duration::from_millis(50);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ctx<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> io::Error + 'a {
    move |e| io::Error::new(e.kind(), format!("{op} {}: {e}", path.display()))
}

/// File systems that hold Maildir copies not yet synced, one path each.
#[derive(Debug, Default)]
pub struct Touched {
    devices: Mutex<HashMap<u64, PathBuf>>,
}

impl Touched {
    /// Records that a new file was written below `dir` (whose file system
    /// is `dev`).
    pub fn add(&self, dev: u64, dir: &Path) {
        lock(&self.devices)
            .entry(dev)
            .or_insert_with(|| dir.to_path_buf());
    }

    /// syncfs(2) on every file system recorded so far (blocking).
    pub fn sync(&self) -> io::Result<()> {
        let dirs: Vec<PathBuf> = lock(&self.devices).values().cloned().collect();
        for dir in dirs {
            let f = File::open(&dir).map_err(ctx("open", &dir))?;
            rustix::fs::syncfs(&f)
                .map_err(io::Error::from)
                .map_err(ctx("syncfs", &dir))?;
        }
        Ok(())
    }
}

/// One record found in a segment left by an earlier run.
#[derive(Debug)]
pub struct Leftover {
    /// The segment it was found in.
    pub segment: u64,
    /// The queue file bytes ([`super::format::decode`]).
    pub file: Vec<u8>,
}

/// An append waiting for the writer.
struct Pending {
    record: Vec<u8>,
    done: oneshot::Sender<io::Result<u64>>,
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

struct Inner {
    dir: PathBuf,
    state: Mutex<State>,
    /// Wakes the writer.
    work: Condvar,
    touched: Arc<Touched>,
}

/// The journal of one daemon; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
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

/// Frames a queue file as a journal record.
pub fn record(file_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + file_len);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(file_len as u64).to_le_bytes());
    out
}

/// Splits a segment into its records; stops at the first incomplete one
/// (a batch whose write was cut short: never acknowledged).
fn parse(bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= HEADER && &bytes[at..at + 8] == MAGIC {
        let len = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap_or([0xff; 8]));
        let Some(end) = usize::try_from(len)
            .ok()
            .and_then(|l| (at + HEADER).checked_add(l))
            .filter(|&e| e <= bytes.len())
        else {
            break;
        };
        out.push(&bytes[at + HEADER..end]);
        at = end;
    }
    (out, at)
}

impl Journal {
    /// Opens (creating) the journal under `dir`, reads what earlier runs
    /// left, and starts the writer thread on a new segment. Segments left
    /// over stay on disk until [`Journal::forget`] says their messages are
    /// safe elsewhere.
    pub fn open(dir: &Path, touched: Arc<Touched>) -> io::Result<(Journal, Vec<Leftover>)> {
        fs::create_dir_all(dir).map_err(ctx("create", dir))?;
        let mut seqs = Vec::new();
        for entry in fs::read_dir(dir).map_err(ctx("read", dir))? {
            let entry = entry.map_err(ctx("read", dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            match segment_seq(&name) {
                Some(seq) => seqs.push(seq),
                None => tracing::warn!(
                    "ignoring unexpected file {} in the journal",
                    entry.path().display()
                ),
            }
        }
        seqs.sort_unstable();
        let mut leftovers = Vec::new();
        for &seq in &seqs {
            let path = segment_path(dir, seq);
            let bytes = fs::read(&path).map_err(ctx("read", &path))?;
            let (records, used) = parse(&bytes);
            if used < bytes.len() {
                tracing::warn!(
                    "journal segment {}: ignoring {} bytes after the last complete record (never acknowledged)",
                    path.display(),
                    bytes.len() - used
                );
            }
            leftovers.extend(records.into_iter().map(|r| Leftover {
                segment: seq,
                file: r.to_vec(),
            }));
        }
        let first = seqs.last().map_or(1, |s| s + 1);
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            touched,
        });
        let file = new_segment(dir, first)?;
        lock(&inner.state)
            .segments
            .insert(first, Segment::default());
        let writer = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("postern-journal".into())
                .spawn(move || write_loop(&inner, first, file))?
        };
        Ok((
            Journal {
                inner,
                writer: Arc::new(Mutex::new(Some(writer))),
            },
            leftovers,
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

    /// Appends a record (from [`record`] plus the queue file) and returns
    /// once it is durable, with its segment, to be [`Journal::release`]d
    /// once the message is safe elsewhere.
    pub async fn append(&self, record: Vec<u8>) -> io::Result<u64> {
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

    /// The message of one record of `segment` is in its mailboxes (not
    /// yet synced) or in the spool. Blocking: the last release of a sealed
    /// segment syncs and removes it.
    pub fn release(&self, segment: u64) {
        let reclaim = {
            let mut st = lock(&self.inner.state);
            let Some(seg) = st.segments.get_mut(&segment) else {
                return;
            };
            seg.outstanding = seg.outstanding.saturating_sub(1);
            if seg.sealed && seg.outstanding == 0 {
                st.segments.remove(&segment);
                true
            } else {
                false
            }
        };
        if reclaim {
            reclaim_segment(&self.inner, segment);
        }
    }

    /// Stops the writer after it has written everything appended so far
    /// and seals the last segment (blocking). Segments whose records are
    /// all released are reclaimed; the others stay for the next start.
    pub fn close(&self) {
        lock(&self.inner.state).stopping = true;
        self.inner.work.notify_one();
        if let Some(h) = lock(&self.writer).take() {
            let _ = h.join();
        }
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

/// Creates an empty segment and makes its directory entry durable before
/// any record is acknowledged in it.
fn new_segment(dir: &Path, seq: u64) -> io::Result<File> {
    let path = segment_path(dir, seq);
    let f = OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(ctx("create", &path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ctx("fsync", dir))?;
    Ok(f)
}

/// Syncs the mailboxes' file systems, then removes the segment.
fn reclaim_segment(inner: &Inner, seq: u64) {
    let path = segment_path(&inner.dir, seq);
    if let Err(e) = inner.touched.sync() {
        // The segment stays: its messages are delivered again (and
        // recognised) on the next start.
        tracing::error!(
            "journal: cannot sync the mailboxes, keeping {}: {e}",
            path.display()
        );
        return;
    }
    if let Err(e) = fs::remove_file(&path) {
        tracing::error!("journal: cannot remove {}: {e}", path.display());
    }
}

/// Seals `seq`; returns true if it has nothing outstanding (the caller
/// reclaims it).
fn seal(inner: &Inner, seq: u64) -> bool {
    let mut st = lock(&inner.state);
    let empty = st
        .segments
        .get_mut(&seq)
        .map(|s| {
            s.sealed = true;
            s.outstanding == 0
        })
        .unwrap_or(false);
    if empty {
        st.segments.remove(&seq);
    }
    empty
}

/// Reclaims off the writer thread: a syncfs can take a while and must not
/// hold up the next batch.
fn reclaim_later(inner: &Arc<Inner>, seq: u64) {
    let i = inner.clone();
    let spawned = std::thread::Builder::new()
        .name("postern-reclaim".into())
        .spawn(move || reclaim_segment(&i, seq));
    if spawned.is_err() {
        reclaim_segment(inner, seq);
    }
}

fn write_loop(inner: &Arc<Inner>, first: u64, file: File) {
    let mut seq = first;
    let mut file = Some(file);
    let mut size: u64 = 0;
    let mut last_append = Instant::now();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let (batch, stopping) = {
            let mut st = lock(&inner.state);
            loop {
                if !st.pending.is_empty() || st.stopping {
                    break;
                }
                let idle = last_append.elapsed();
                if size > 0 && idle >= IDLE_SEAL {
                    break;
                }
                let wait = if size > 0 {
                    IDLE_SEAL - idle
                } else {
                    Duration::from_secs(3600)
                };
                st = inner
                    .work
                    .wait_timeout(st, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            (std::mem::take(&mut st.pending), st.stopping)
        };
        let mut rotate = stopping && batch.is_empty();
        if !batch.is_empty() {
            buf.clear();
            for p in &batch {
                buf.extend_from_slice(&p.record);
            }
            let result = match file.as_mut() {
                Some(f) => f.write_all(&buf).and_then(|()| f.sync_data()),
                None => Err(io::Error::other("no journal segment open")),
            };
            match result {
                Ok(()) => {
                    size += buf.len() as u64;
                    last_append = Instant::now();
                    lock(&inner.state)
                        .segments
                        .entry(seq)
                        .or_default()
                        .outstanding += batch.len();
                    for p in batch {
                        let _ = p.done.send(Ok(seq));
                    }
                    rotate = size >= SEGMENT_BYTES;
                }
                Err(e) => {
                    let path = segment_path(&inner.dir, seq);
                    tracing::error!("journal: write to {} failed: {e}", path.display());
                    for p in batch {
                        let _ = p
                            .done
                            .send(Err(io::Error::new(e.kind(), format!("journal: {e}"))));
                    }
                    // What follows a failed write may be garbage: later
                    // records go to a new segment.
                    rotate = true;
                }
            }
        } else if !stopping {
            // Idle with records in the segment.
            rotate = true;
        }
        if rotate {
            if seal(inner, seq) {
                if stopping {
                    reclaim_segment(inner, seq);
                } else {
                    reclaim_later(inner, seq);
                }
            }
            if stopping && lock(&inner.state).pending.is_empty() {
                return;
            }
            seq += 1;
            size = 0;
            file = None;
            match new_segment(&inner.dir, seq) {
                Ok(f) => {
                    lock(&inner.state).segments.insert(seq, Segment::default());
                    file = Some(f);
                }
                Err(e) => tracing::error!("journal: cannot start a new segment: {e}"),
            }
            if file.is_none() {
                // Appends fail (4xx) until a segment can be made.
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// The device of a file (for [`Touched`]).
pub fn device_of(f: &File) -> io::Result<u64> {
    f.metadata().map(|m| m.dev())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut r = record(payload.len());
        r.extend_from_slice(payload);
        r
    }

    #[test]
    fn parse_stops_at_a_torn_record() {
        let mut bytes = framed(b"one");
        bytes.extend(framed(b"two"));
        let whole = bytes.len();
        bytes.extend(&framed(b"three")[..10]);
        let (recs, used) = parse(&bytes);
        assert_eq!(recs, vec![&b"one"[..], &b"two"[..]]);
        assert_eq!(used, whole);
        // A length that runs past the end is not a record.
        let mut bad = framed(b"x");
        bad[8] = 0xff;
        assert!(parse(&bad).0.is_empty());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn append_release_reclaim_and_leftovers() {
        let dir = std::env::temp_dir().join(format!("postern-journal-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let touched = Arc::new(Touched::default());
        let (j, left) = Journal::open(&dir, touched.clone()).unwrap();
        assert!(left.is_empty());
        let a = j.append(framed(b"a")).await.unwrap();
        let b = j.append(framed(b"b")).await.unwrap();
        assert_eq!(a, b);
        tokio::task::block_in_place(|| j.release(a));
        // Still one outstanding: a crash now leaves "b" to deliver again.
        drop(j.clone());
        let reopened = {
            // Simulate a crash: read the directory as a new start would.
            let names: Vec<_> = fs::read_dir(&dir).unwrap().flatten().collect();
            assert_eq!(names.len(), 1);
            fs::read(names[0].path()).unwrap()
        };
        assert_eq!(parse(&reopened).0, vec![&b"a"[..], &b"b"[..]]);
        tokio::task::block_in_place(|| {
            j.release(b);
            j.close();
        });
        // Sealed at close with nothing outstanding: reclaimed.
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::read_dir(&dir).unwrap().count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        assert!(j.append(framed(b"c")).await.is_err(), "closed");

        // A segment left by a crash is returned by the next open.
        fs::write(segment_path(&dir, 7), framed(b"left")).unwrap();
        let (j2, left) = Journal::open(&dir, touched).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!((left[0].segment, &left[0].file[..]), (7, &b"left"[..]));
        let seq = j2.append(framed(b"d")).await.unwrap();
        assert!(seq > 7, "new segments come after the leftovers");
        j2.forget([7]).unwrap();
        assert!(!segment_path(&dir, 7).exists());
        tokio::task::block_in_place(|| j2.close());
        let _ = fs::remove_dir_all(&dir);
    }
}
