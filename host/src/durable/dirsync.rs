//! Group commit for new files and their directory entries.
//!
//! A new file is durable only once its data and its directory are synced.
//! Two modes ([`SyncMode`]):
//!
//! - `File` (default, what Postfix does): each writer fdatasyncs its own
//!   file (in parallel: the disk handles concurrent fsyncs far better than
//!   sequential ones), then asks this syncer for the directory; every
//!   request that arrived while the previous fsync ran is served by one
//!   fsync per directory.
//! - `Filesystem`: writers do not fsync at all; every request (file data or
//!   directory) joins a batch that one `syncfs(2)` makes durable. One
//!   flush of the whole file system covers dozens of messages, at the price
//!   of also flushing unrelated dirty data on that file system: for a
//!   spool and mailboxes on their own file system. Every syncfs goes
//!   through the one descriptor [`Filesystems`] keeps per file system, and
//!   a write-back error fails every request that was writing when it was
//!   reported, whichever syncfs collected it. On a kernel whose syncfs
//!   cannot report errors (before 5.8) this mode works as `File`.
//!
//! There is no sync thread: the first writer to ask becomes the leader and
//! runs the batch itself; requests that arrive meanwhile queue up, and when
//! the leader is done the first of them leads the next batch. Measured on
//! this project's 2-vCPU VM, a dedicated thread cost two wake-ups (context
//! switches, each a VM exit) per batch and per waiter.
//!
//! Requests carry descriptors their callers opened, never paths: the
//! leader may be a thread acting as a mailbox owner ([`crate::privileges`])
//! and must not need to open anything of another's.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

pub use super::filesystems::{Filesystems, Ticket};

/// What a request wants synced.
#[derive(Debug, Clone)]
enum Target {
    /// fsync this directory.
    Dir(Arc<File>),
    /// syncfs this file system (by device).
    Filesystem(u64),
}

/// What requests served by one sync share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    /// A directory: device and inode.
    Dir(u64, u64),
    /// A file system.
    Filesystem(u64),
}

/// How new files are made durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// fdatasync per file, batched fsync per directory.
    #[default]
    File,
    /// One syncfs per batch of files and directories.
    Filesystem,
}

/// Where one waiting request stands.
#[derive(Debug)]
enum SlotState {
    /// Queued; another thread is syncing.
    Waiting,
    /// The previous leader finished: this request's thread syncs the next
    /// batch.
    Lead,
    /// Served.
    Done(io::Result<()>),
}

/// One waiting request.
#[derive(Debug)]
struct Slot {
    state: Mutex<SlotState>,
    cv: Condvar,
}

impl Slot {
    fn set(&self, state: SlotState) {
        *lock(&self.state) = state;
        self.cv.notify_one();
    }
}

/// One request in a batch.
#[derive(Debug)]
struct Request {
    key: Key,
    target: Target,
    /// Taken before the caller wrote what this request covers.
    since: Ticket,
    slot: Arc<Slot>,
}

#[derive(Debug, Default)]
struct Queue {
    pending: Vec<Request>,
    /// A thread is syncing a batch right now.
    busy: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Group commit without a thread of its own; cheap to clone.
#[derive(Debug, Clone)]
pub struct DirSyncer {
    queue: Arc<Mutex<Queue>>,
    mode: SyncMode,
    filesystems: Arc<Filesystems>,
}

impl DirSyncer {
    /// A syncer in the given mode, with file systems of its own.
    pub fn new(mode: SyncMode) -> DirSyncer {
        DirSyncer::with_filesystems(mode, Arc::new(Filesystems::new()))
    }

    /// A syncer in the given mode that syncs file systems through
    /// `filesystems` (shared with the journal's bulk sync).
    pub fn with_filesystems(mode: SyncMode, filesystems: Arc<Filesystems>) -> DirSyncer {
        let mode = if mode == SyncMode::Filesystem && !filesystems.reports_errors() {
            tracing::warn!(
                "queue.sync = \"filesystem\": this kernel's syncfs cannot report write errors (Linux 5.8 and later can); syncing each file instead"
            );
            SyncMode::File
        } else {
            mode
        };
        DirSyncer {
            queue: Arc::new(Mutex::new(Queue::default())),
            mode,
            filesystems,
        }
    }

    /// The sync mode in effect.
    pub fn mode(&self) -> SyncMode {
        self.mode
    }

    /// The file systems this syncer syncs through.
    pub fn filesystems(&self) -> &Arc<Filesystems> {
        &self.filesystems
    }

    /// Call before writing into the directory `dir`: its file system gets
    /// its descriptor now (before the writes a syncfs must cover), and the
    /// ticket returned fails the syncs of this write if an error is
    /// reported meanwhile.
    pub fn prepare(&self, dir: BorrowedFd<'_>) -> io::Result<Ticket> {
        let ticket = self.filesystems.ticket();
        if self.mode == SyncMode::Filesystem {
            self.filesystems.register(dir)?;
        }
        Ok(ticket)
    }

    /// Returns once a sync of the directory at `dir` that started after
    /// this call has completed. Blocking: call it from a blocking thread.
    /// For directories of Postern's own (the spool); the writes it covers
    /// must not have started before the last [`DirSyncer::prepare`] of
    /// their directory.
    pub fn sync_blocking(&self, dir: &Path) -> io::Result<()> {
        let since = self.filesystems.ticket();
        let f = open_dir(dir)?;
        self.sync_dir_blocking(&f, since)
    }

    /// Returns once a sync of directory `dir` (an open descriptor) that
    /// started after this call has completed, and no write-back error was
    /// reported since `since` (filesystem mode). Blocking.
    pub fn sync_dir_blocking(&self, dir: &File, since: Ticket) -> io::Result<()> {
        if self.mode == SyncMode::Filesystem {
            return self.sync_filesystem_of(dir.as_fd(), since);
        }
        let m = dir.metadata()?;
        let target = Target::Dir(Arc::new(dir.try_clone()?));
        self.request(Key::Dir(m.dev(), m.ino()), target, since)
    }

    /// [`DirSyncer::sync_dir_blocking`] for a directory kept open whose
    /// device and inode are known: neither asked for nor its descriptor
    /// duplicated (a Maildir's `new/` gets a sync per delivery).
    pub fn sync_shared_dir_blocking(
        &self,
        dir: &Arc<File>,
        (dev, ino): (u64, u64),
        since: Ticket,
    ) -> io::Result<()> {
        if self.mode == SyncMode::Filesystem {
            return self.sync_filesystem_of(dir.as_fd(), since);
        }
        self.request(Key::Dir(dev, ino), Target::Dir(dir.clone()), since)
    }

    /// Makes a just-written file's data durable (blocking): its own
    /// fdatasync, or a place in the next shared syncfs.
    pub fn sync_file_blocking(&self, file: &File, since: Ticket) -> io::Result<()> {
        match self.mode {
            SyncMode::File => file.sync_data(),
            SyncMode::Filesystem => self.sync_filesystem_of(file.as_fd(), since),
        }
    }

    /// A place in the next syncfs of the file system `fd` is on.
    fn sync_filesystem_of(&self, fd: BorrowedFd<'_>, since: Ticket) -> io::Result<()> {
        let dev = self.filesystems.register(fd)?;
        self.request(Key::Filesystem(dev), Target::Filesystem(dev), since)
    }

    fn request(&self, key: Key, target: Target, since: Ticket) -> io::Result<()> {
        let slot = Arc::new(Slot {
            state: Mutex::new(SlotState::Waiting),
            cv: Condvar::new(),
        });
        let mut lead = {
            let mut q = lock(&self.queue);
            q.pending.push(Request {
                key,
                target,
                since,
                slot: slot.clone(),
            });
            !std::mem::replace(&mut q.busy, true)
        };
        loop {
            if lead {
                self.lead_one_batch();
            }
            let mut state = lock(&slot.state);
            lead = loop {
                match std::mem::replace(&mut *state, SlotState::Waiting) {
                    SlotState::Done(res) => return res,
                    SlotState::Lead => break true,
                    SlotState::Waiting => {
                        state = slot.cv.wait(state).unwrap_or_else(|p| p.into_inner());
                    }
                }
            };
        }
    }

    /// Syncs everything queued now, then hands the lead to the first
    /// request that arrived meanwhile (or ends the busy period).
    fn lead_one_batch(&self) {
        /// Passes the lead on even if the batch panics, so that the queue
        /// never stays busy with nobody leading.
        struct Handoff<'a>(&'a Mutex<Queue>);
        impl Drop for Handoff<'_> {
            fn drop(&mut self) {
                let mut q = lock(self.0);
                match q.pending.first() {
                    Some(next) => next.slot.set(SlotState::Lead),
                    None => q.busy = false,
                }
            }
        }
        let _handoff = Handoff(&self.queue);
        let batch = std::mem::take(&mut lock(&self.queue).pending);
        run_batch(&self.filesystems, batch);
    }
}

/// Opens a directory for fsync (never a FIFO or device someone put in its
/// place: that open could block).
pub fn open_dir(dir: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)
}

fn sync_target(filesystems: &Filesystems, target: &Target) -> io::Result<()> {
    match target {
        Target::Dir(dir) => dir.sync_all(),
        Target::Filesystem(dev) => filesystems.syncfs(*dev),
    }
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    open_dir(dir)?.sync_all()
}

/// Directory creations of this process between their first mkdir and
/// their last parent fsync, and the lock each holds meanwhile.
static MAKING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static MAKE_LOCK: Mutex<()> = Mutex::new(());

/// Call after finding that a directory exists, before relying on it being
/// durable: if a creation of this process is still syncing (the directory
/// may be its work), waits until it is done. One atomic load otherwise.
pub fn wait_until_durable() {
    if MAKING.load(std::sync::atomic::Ordering::SeqCst) != 0 {
        drop(MAKE_LOCK.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// A directory creation in progress: counted in [`MAKING`] (before any
/// mkdir, so that whoever sees one of ours waits) and holding
/// [`MAKE_LOCK`] (creations are serialised within the process).
struct Making(#[allow(dead_code)] MutexGuard<'static, ()>);

impl Making {
    fn start() -> Making {
        MAKING.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Making(lock(&MAKE_LOCK))
    }
}

impl Drop for Making {
    fn drop(&mut self) {
        MAKING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Creates `dir` with `mode` and its missing ancestors with
/// `parents_mode`, and makes them durable: a new directory's entry lives
/// in its parent, which is synced, so that a file synced into it later
/// cannot vanish with the directory after a crash. Costs nothing when
/// `dir` exists (beyond [`wait_until_durable`]). Creations are serialised
/// within the process, and one that finds a directory made meanwhile
/// (by another process too) syncs its parent all the same.
pub fn create_dir_durable(dir: &Path, mode: u32, parents_mode: u32) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        wait_until_durable();
        return Ok(());
    }
    let _making = Making::start();
    // The directories to make, innermost first.
    let mut missing = Vec::new();
    let mut p = dir;
    while !p.as_os_str().is_empty() && !p.is_dir() {
        missing.push(p);
        match p.parent() {
            Some(q) => p = q,
            None => break,
        }
    }
    // What this call made, outermost first: removed again if it cannot be
    // made durable, so that the next attempt (which would otherwise find
    // it and take it as durable) makes and syncs it again.
    let mut made_here: Vec<&Path> = Vec::new();
    let undo = |made_here: &[&Path], e: io::Error| {
        for d in made_here.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
        e
    };
    for (i, made) in missing.iter().enumerate().rev() {
        let m = if i == 0 { mode } else { parents_mode };
        match std::fs::DirBuilder::new().mode(m).create(made) {
            Ok(()) => made_here.push(made),
            // Made by another process meanwhile: it may not have synced
            // it yet, so sync it here as well.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && made.is_dir() => {}
            Err(e) => return Err(undo(&made_here, e)),
        }
        let parent = match made.parent() {
            Some(q) if !q.as_os_str().is_empty() => q,
            _ => Path::new("."),
        };
        fsync_dir(parent).map_err(|e| undo(&made_here, e))?;
    }
    Ok(())
}

/// Creates `name` in the open directory `parent` with `mode` unless it
/// exists, and makes its entry durable (fsync of `parent`); like
/// [`create_dir_durable`], for a tree walked by descriptor. Another
/// process's directory found there is synced all the same.
pub fn create_dir_at(parent: &File, name: &std::ffi::OsStr, mode: u32) -> io::Result<()> {
    let _making = Making::start();
    let made = match rustix::fs::mkdirat(parent, name, rustix::fs::Mode::from_raw_mode(mode)) {
        Ok(()) => true,
        Err(rustix::io::Errno::EXIST) => false,
        Err(e) => return Err(e.into()),
    };
    rustix::fs::fsync(parent).map_err(|e| {
        // Made but not durable: gone again, so that the next attempt
        // makes (and syncs) it instead of taking it as durable.
        if made {
            let _ = rustix::fs::unlinkat(parent, name, rustix::fs::AtFlags::REMOVEDIR);
        }
        io::Error::from(e)
    })
}

/// One sync per directory (or per file system), several in parallel, and
/// every request told its result.
fn run_batch(filesystems: &Filesystems, batch: Vec<Request>) {
    /// The requests one sync serves, and what each took before writing.
    type Waiters = Vec<(Ticket, Arc<Slot>)>;
    let mut groups: HashMap<Key, (Target, Waiters)> = HashMap::new();
    for req in batch {
        groups
            .entry(req.key)
            .or_insert_with(|| (req.target.clone(), Vec::new()))
            .1
            .push((req.since, req.slot));
    }
    let results: Vec<(Waiters, io::Result<()>)> = if groups.len() == 1 {
        groups
            .into_values()
            .map(|(target, slots)| {
                let res = sync_target(filesystems, &target);
                (slots, res)
            })
            .collect()
    } else {
        // Several directories (several mailboxes): fsync them in parallel
        // (inline if no thread can be started).
        std::thread::scope(|s| {
            let handles: Vec<_> = groups
                .into_values()
                .map(|(target, slots)| {
                    let job = std::thread::Builder::new().spawn_scoped(s, {
                        let target = target.clone();
                        move || sync_target(filesystems, &target)
                    });
                    (slots, target, job)
                })
                .collect();
            handles
                .into_iter()
                .map(|(w, target, job)| {
                    let res = match job {
                        Ok(h) => h
                            .join()
                            .unwrap_or_else(|_| Err(io::Error::other("fsync thread panicked"))),
                        Err(_) => sync_target(filesystems, &target),
                    };
                    (w, res)
                })
                .collect()
        })
    };
    for (slots, res) in results {
        for (since, slot) in slots {
            let r = match &res {
                // A syncfs error collected by another batch (or by the
                // journal's bulk sync) may have been this request's data.
                Ok(()) => filesystems.check(since),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            slot.set(SlotState::Done(r));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_missing_ancestors_durably_and_leaves_existing_alone() {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir().join(format!("postern-mkdir-{}", std::process::id()));
        let deep = base.join("a/b/c");
        let mode = |d: &Path| std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
        create_dir_durable(&deep, 0o700, 0o755).unwrap();
        assert_eq!(mode(&base), 0o755);
        assert_eq!(mode(&base.join("a/b")), 0o755);
        assert_eq!(mode(&deep), 0o700);
        // An existing directory keeps its mode.
        std::fs::set_permissions(&deep, std::fs::Permissions::from_mode(0o750)).unwrap();
        create_dir_durable(&deep, 0o700, 0o700).unwrap();
        assert_eq!(mode(&deep), 0o750);
        // A file in the way is an error, not a silent success.
        std::fs::write(base.join("file"), b"x").unwrap();
        assert!(create_dir_durable(&base.join("file/sub"), 0o700, 0o700).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn syncs_and_reports_errors() {
        let syncer = DirSyncer::new(SyncMode::File);
        let dir = std::env::temp_dir();
        syncer.sync_blocking(&dir).unwrap();
        let missing = dir.join("postern-no-such-dir-for-test");
        assert!(syncer.sync_blocking(&missing).is_err());
        let fs = DirSyncer::new(SyncMode::Filesystem);
        fs.sync_blocking(&dir).unwrap();
        let file = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
        fs.sync_file_blocking(&file, fs.filesystems().ticket())
            .unwrap();
        assert!(fs.sync_blocking(&missing).is_err());
    }

    #[test]
    fn a_syncfs_error_fails_every_request_that_was_writing() {
        let syncer = DirSyncer::new(SyncMode::Filesystem);
        if syncer.mode() != SyncMode::Filesystem {
            return; // A kernel before 5.8: per-file syncs, nothing to test.
        }
        let base = std::env::temp_dir().join(format!("postern-syncfs-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        let dir = open_dir(&base).unwrap();
        // A writer prepares, writes, and has not asked for its sync yet
        // when another batch (or the journal's bulk sync, which shares the
        // descriptor) collects the error its data caused.
        let writing = syncer.prepare(dir.as_fd()).unwrap();
        std::fs::write(base.join("data"), b"x").unwrap();
        let file = File::open(base.join("data")).unwrap();
        syncer.filesystems().fail_next_syncfs(1);
        assert!(
            syncer.sync_blocking(&base).is_err(),
            "the batch that saw it"
        );
        // Its own syncfs succeeds now, and still it is told.
        let err = syncer.sync_file_blocking(&file, writing).unwrap_err();
        assert!(err.to_string().contains("write-back error"), "{err}");
        assert!(syncer.sync_dir_blocking(&dir, writing).is_err());
        // Writes that start after the error are not failed by it.
        let later = syncer.prepare(dir.as_fd()).unwrap();
        syncer.sync_file_blocking(&file, later).unwrap();
        syncer.sync_dir_blocking(&dir, later).unwrap();
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn concurrent_requests_are_all_served_with_their_own_result() {
        for mode in [SyncMode::File, SyncMode::Filesystem] {
            let syncer = DirSyncer::new(mode);
            let base = std::env::temp_dir().join(format!("postern-dirsync-{}", std::process::id()));
            let dirs = [base.join("a"), base.join("b")];
            for d in &dirs {
                std::fs::create_dir_all(d).unwrap();
            }
            let missing = base.join("missing");
            std::thread::scope(|s| {
                for t in 0..16 {
                    let (syncer, dirs, missing) = (&syncer, &dirs, &missing);
                    s.spawn(move || {
                        for i in 0..50 {
                            if (t + i) % 7 == 0 && mode == SyncMode::File {
                                assert!(syncer.sync_blocking(missing).is_err());
                            } else {
                                syncer.sync_blocking(&dirs[(t + i) % 2]).unwrap();
                            }
                        }
                    });
                }
            });
            // Nobody is left leading: a new request is served at once.
            syncer.sync_blocking(&dirs[0]).unwrap();
            std::fs::remove_dir_all(&base).unwrap();
        }
    }
}
