//! Queue IDs: 16 upper-case hex digits, microseconds since the epoch,
//! strictly increasing within a process and never reused across restarts,
//! whatever the clock does meanwhile (NTP stepping it back at boot).
//!
//! Like Postfix's long queue IDs they come from the clock; unlike them
//! they need no file to make them unique: the spool keeps a high-water
//! mark (`queue-id-floor`), every ID handed out is below the mark on disk,
//! and a start continues above it. The mark is raised ahead of need by a
//! background write, so an ID costs no disk wait.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// How far above the last ID the mark on disk is set: ten minutes of IDs.
const RESERVE: u64 = 600_000_000;

/// The file of the mark, in the spool's root.
const FLOOR_FILE: &str = "queue-id-floor";

/// Where IDs come from: a clock, and optionally a mark on disk.
pub struct IdSource {
    clock: Box<dyn Fn() -> u64 + Send + Sync>,
    last: AtomicU64,
    /// IDs below this may be handed out: they are below the mark on disk.
    /// `u64::MAX` while no spool keeps a mark (the CLI, tests).
    reserved: AtomicU64,
    /// The spool root the mark is kept in.
    floor: Mutex<Option<PathBuf>>,
    /// A background write of a higher mark is under way.
    raising: AtomicBool,
}

impl std::fmt::Debug for IdSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdSource")
            .field("last", &self.last)
            .field("reserved", &self.reserved)
            .finish()
    }
}

fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

static SOURCE: LazyLock<Arc<IdSource>> =
    LazyLock::new(|| Arc::new(IdSource::with_clock(Box::new(micros_now))));

/// A new queue ID, strictly greater than every earlier one of this process
/// and (once [`keep_floor_in`] was called) of every earlier run.
pub fn new_queue_id() -> String {
    next_id(&SOURCE)
}

/// Keeps the IDs of this process above every ID an earlier run of this
/// spool handed out (its mark in `root`) and above `used` (names found
/// in the spool, in case the mark was lost), and from now on keeps the
/// mark on disk ahead of them (blocking).
pub fn keep_floor_in<'a>(root: &Path, used: impl IntoIterator<Item = &'a str>) -> io::Result<()> {
    SOURCE.keep_floor_in(root, used)
}

/// An ID found in use (a journal record, say): later IDs are above it.
pub fn note_used(id: &str) {
    SOURCE.note_used(id);
}

/// True if `s` looks like a queue ID (used to ignore stray spool files).
pub fn is_queue_id(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

fn parse(id: &str) -> Option<u64> {
    is_queue_id(id)
        .then(|| u64::from_str_radix(id, 16).ok())
        .flatten()
}

/// The next ID of `source`; raises its mark on disk when it nears it.
fn next_id(source: &Arc<IdSource>) -> String {
    let id = source.take();
    let reserved = source.reserved.load(Ordering::SeqCst);
    if id >= reserved {
        // Past the mark (the clock jumped forward): write a higher one
        // before this ID can be used.
        source.raise(id);
    } else if reserved - id < RESERVE / 2 && !source.raising.swap(true, Ordering::SeqCst) {
        let s = source.clone();
        let spawned = std::thread::Builder::new()
            .name("postern-queue-id".into())
            .spawn(move || {
                s.raise(id);
                s.raising.store(false, Ordering::SeqCst);
            });
        if spawned.is_err() {
            source.raise(id);
            source.raising.store(false, Ordering::SeqCst);
        }
    }
    format!("{id:016X}")
}

impl IdSource {
    /// IDs from `clock` (microseconds since the epoch), with no mark yet.
    pub fn with_clock(clock: Box<dyn Fn() -> u64 + Send + Sync>) -> IdSource {
        IdSource {
            clock,
            last: AtomicU64::new(0),
            reserved: AtomicU64::new(u64::MAX),
            floor: Mutex::new(None),
            raising: AtomicBool::new(false),
        }
    }

    /// The next value: the clock, or one more than the last if the clock
    /// is behind it (stepped back, or many IDs in one microsecond).
    fn take(&self) -> u64 {
        let now = (self.clock)();
        let mut prev = self.last.load(Ordering::SeqCst);
        loop {
            let next = now.max(prev.saturating_add(1));
            match self
                .last
                .compare_exchange_weak(prev, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return next,
                Err(p) => prev = p,
            }
        }
    }

    fn note_used(&self, id: &str) {
        if let Some(v) = parse(id) {
            self.last.fetch_max(v, Ordering::SeqCst);
        }
    }

    fn keep_floor_in<'a>(
        &self,
        root: &Path,
        used: impl IntoIterator<Item = &'a str>,
    ) -> io::Result<()> {
        let path = root.join(FLOOR_FILE);
        let mark = match std::fs::read_to_string(&path) {
            Ok(text) => parse(text.trim()).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: not a queue ID: {:?}", path.display(), text.trim()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        // Every earlier ID is below the mark: continue at it.
        self.last
            .fetch_max(mark.saturating_sub(1), Ordering::SeqCst);
        for id in used {
            self.note_used(id);
        }
        *self.floor.lock().unwrap_or_else(|p| p.into_inner()) = Some(root.to_path_buf());
        self.reserved.store(0, Ordering::SeqCst);
        self.write_mark(self.last.load(Ordering::SeqCst).max((self.clock)()))
    }

    /// Writes a mark above `id` unless one is there already; logs a
    /// failure (the IDs go on: the spool never replaces a queue file, so a
    /// reused ID costs a retry, not a message).
    fn raise(&self, id: u64) {
        if let Err(e) = self.write_mark(id) {
            tracing::error!(
                "cannot keep the queue ID high-water mark ({e}): IDs may repeat after a restart with the clock set back"
            );
            // Not again for every ID.
            self.reserved
                .fetch_max(id.saturating_add(RESERVE), Ordering::SeqCst);
        }
    }

    fn write_mark(&self, id: u64) -> io::Result<()> {
        let floor = self.floor.lock().unwrap_or_else(|p| p.into_inner());
        let Some(root) = floor.as_ref() else {
            return Ok(());
        };
        if id
            < self
                .reserved
                .load(Ordering::SeqCst)
                .saturating_sub(RESERVE / 2)
        {
            return Ok(()); // Raised meanwhile.
        }
        let mark = id.saturating_add(RESERVE);
        let tmp = root.join(format!("{FLOOR_FILE}.tmp"));
        let path = root.join(FLOOR_FILE);
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(format!("{mark:016X}\n").as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        crate::durable::dirsync::open_dir(root)?.sync_all()?;
        self.reserved.store(mark, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn unique_and_sorted() {
        let ids: Vec<String> = (0..1000).map(|_| new_queue_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(ids.iter().all(|i| is_queue_id(i)));
    }

    /// A clock the test sets.
    fn clock(at: &Arc<AtomicU64>) -> Box<dyn Fn() -> u64 + Send + Sync> {
        let at = at.clone();
        Box::new(move || at.load(Ordering::SeqCst))
    }

    #[test]
    fn a_clock_stepped_back_across_a_restart_reuses_no_id() {
        let dir = std::env::temp_dir().join(format!("postern-qid-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let now = Arc::new(AtomicU64::new(1_700_000_000_000_000));
        let first = Arc::new(IdSource::with_clock(clock(&now)));
        first.keep_floor_in(&dir, []).unwrap();
        let mut ids = Vec::new();
        for _ in 0..100 {
            ids.push(next_id(&first));
            now.fetch_add(1000, Ordering::SeqCst);
        }
        // Far past the first mark: it is raised (in the background, or
        // at once when an ID reaches it).
        now.fetch_add(2 * RESERVE, Ordering::SeqCst);
        ids.push(next_id(&first));
        let last = ids.last().cloned().unwrap();
        // A restart with the clock an hour behind, then frozen.
        now.store(1_700_000_000_000_000 - 3_600_000_000, Ordering::SeqCst);
        let second = Arc::new(IdSource::with_clock(clock(&now)));
        second.keep_floor_in(&dir, []).unwrap();
        let again: Vec<String> = (0..100).map(|_| next_id(&second)).collect();
        assert!(again[0] > last, "{} after {last}", again[0]);
        assert!(again.windows(2).all(|w| w[0] < w[1]));
        // The names found in the spool count even without a mark.
        std::fs::remove_file(dir.join(FLOOR_FILE)).unwrap();
        let third = Arc::new(IdSource::with_clock(clock(&now)));
        let newest = again.last().unwrap().as_str();
        third.keep_floor_in(&dir, [newest, "junk"]).unwrap();
        assert!(next_id(&third).as_str() > newest);
        // A damaged mark is an error, not a silent restart from the clock.
        std::fs::write(dir.join(FLOOR_FILE), b"xyz\n").unwrap();
        let fourth = IdSource::with_clock(clock(&now));
        assert!(fourth.keep_floor_in(&dir, []).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
