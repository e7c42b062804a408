//! Maildirs reached before, kept open: a delivery to a Maildir a walk
//! ([`super::walk`]) reached costs two stats instead of a walk (an open, a
//! stat and a close per path component, and the owner looked up).
//!
//! What is kept is what the walk opened and checked: the Maildir and its
//! `tmp/` and `new/`, with whom deliveries act as. Before each use:
//! 1. the Maildir's path is looked up from where the walk starts (links
//!    followed) and must name the very directory kept (device and inode),
//!    with the owner and group the walk accepted;
//! 2. `new` in the kept Maildir, not followed, must be the `new/` kept.
//!
//! Anything else (the Maildir moved away and another made at its path, a
//! link in its place, given to someone else, `new/` replaced), or an
//! operation on a kept directory that finds it gone, and the Maildir is
//! forgotten and walked again, which delivers or refuses exactly as a
//! first delivery does.
//!
//! Why writing through a kept descriptor is safe: a descriptor names an
//! inode, not a path. The file is created (`O_EXCL|O_NOFOLLOW`) in the
//! `tmp/` the walk opened and renamed into the `new/` it opened:
//! directories reached without a link anyone but root made, owned by root,
//! Postern or the mailbox owner. Equality of device and inode at the path
//! means the path still names that very Maildir, so even if a component
//! on the way became a link since, the mail lands in the validated inode,
//! never where a link points. `tmp/` is not looked at again: a file
//! created in a `tmp/` moved away still lands in a directory the walk
//! validated, and is renamed into the `new/` checked in step 2. A user who
//! renames or replaces a directory after the check only moves the
//! directory the mail lands in, which is still the same inode, still
//! theirs; the walk has the same window between its opens and the write.
//! The stats only decide whether to reuse the descriptors, never where a
//! file goes.
//!
//! Bounded: at most [`capacity`] Maildirs (three descriptors each, a tenth
//! of the process's limit at most), the least recently used going first;
//! one without a delivery for [`IDLE`] is let go (so that a file system of
//! mailboxes is not kept busy for long), by a sweeper thread that runs
//! only while something is kept.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, CWD};

use super::MaildirError;
use super::walk::{Dir, Folder, Trust, open_dir_at};

/// How long a Maildir stays open without a delivery (Postfix's
/// `max_idle`, after which its local(8) processes exit).
pub(super) const IDLE: Duration = Duration::from_secs(100);

/// The Maildirs of this process.
pub(super) static KNOWN: LazyLock<Cache> = LazyLock::new(|| Cache::new(capacity(), IDLE));

/// How many Maildirs are kept open: a tenth of the descriptors the process
/// may open (three each), between 4 and 256.
fn capacity() -> usize {
    let limit = open_files_limit().unwrap_or(1024);
    usize::try_from(limit / 30)
        .unwrap_or(usize::MAX)
        .clamp(4, 256)
}

/// The soft limit on open descriptors.
#[allow(unsafe_code)]
fn open_files_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `lim`, valid for the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on most targets
    (rc == 0).then_some(lim.rlim_cur as u64)
}

/// A Maildir a walk reached, and what must still hold to use it.
#[derive(Debug)]
pub(super) struct Known {
    /// Whom deliveries act as.
    pub trust: Trust,
    /// The Maildir.
    pub maildir: Arc<Dir>,
    /// Its `tmp/`.
    pub tmp: Arc<Dir>,
    /// Its `new/`.
    pub new: Arc<Dir>,
    /// The process's identity when the walk was made
    /// ([`crate::privileges::identity_generation`]).
    generation: u64,
}

impl Known {
    /// A Maildir (and the INBOX folder in it) reached by a walk made under
    /// `generation`, if it can be kept: the walk found it (rather than
    /// made it), so that whom it acts as comes from the Maildir itself, as
    /// on every later walk.
    pub fn new(trust: Trust, maildir: Arc<Dir>, inbox: &Folder, generation: u64) -> Option<Known> {
        (trust.owner == maildir.uid && trust.group == maildir.gid).then(|| Known {
            trust,
            maildir,
            tmp: inbox.tmp.clone(),
            new: inbox.new.clone(),
            generation,
        })
    }

    /// The INBOX folder, `cur/` opened if `with_cur` (as a walk does).
    pub fn inbox(&self, with_cur: bool) -> Result<Folder, MaildirError> {
        let cur = match with_cur {
            true => open_dir_at(&self.maildir, "cur".as_ref())?,
            false => None,
        };
        if let Some(cur) = &cur {
            self.trust.check(cur)?;
        }
        Ok(Folder {
            tmp: self.tmp.clone(),
            new: self.new.clone(),
            cur,
        })
    }

    /// True if `path` still names the kept Maildir, with the owner the
    /// walk accepted, and its `new` is still the kept `new/` (see the
    /// module's documentation). Two system calls.
    fn unchanged(&self, path: &Path) -> bool {
        let md = &self.maildir;
        let same_maildir = rustix::fs::statat(CWD, path, AtFlags::empty()).is_ok_and(|st| {
            #[allow(clippy::unnecessary_cast)] // c_ulong on some targets
            let dev = st.st_dev as u64;
            (dev, st.st_ino, st.st_uid, st.st_gid) == (md.dev, md.ino, md.uid, md.gid)
        });
        same_maildir
            && rustix::fs::statat(&md.file, "new", AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| {
                #[allow(clippy::unnecessary_cast)]
                let dev = st.st_dev as u64;
                (dev, st.st_ino) == (self.new.dev, self.new.ino)
            })
    }
}

/// Known Maildirs by path, bounded (see the module's documentation).
#[derive(Debug)]
pub(super) struct Cache {
    capacity: usize,
    idle: Duration,
    state: Mutex<State>,
    /// A sweeper thread runs.
    sweeping: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    by_path: HashMap<PathBuf, Slot>,
}

#[derive(Debug)]
struct Slot {
    known: Arc<Known>,
    used: Instant,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cache {
    /// At most `capacity` Maildirs, none kept `idle` without a delivery.
    pub fn new(capacity: usize, idle: Duration) -> Cache {
        Cache {
            capacity: capacity.max(1),
            idle,
            state: Mutex::new(State::default()),
            sweeping: AtomicBool::new(false),
        }
    }

    /// The Maildir at `path` if it is known, under the process's present
    /// identity, and unchanged (checked outside the lock); one found
    /// changed is forgotten.
    pub fn get(&self, path: &Path) -> Option<Arc<Known>> {
        let known = {
            let mut state = lock(&self.state);
            let slot = state.by_path.get_mut(path)?;
            slot.used = Instant::now();
            slot.known.clone()
        };
        if known.generation == crate::privileges::identity_generation() && known.unchanged(path) {
            Some(known)
        } else {
            self.forget(path, &known);
            None
        }
    }

    /// Keeps `known` as the Maildir at `path`, letting go of the least
    /// recently used one if there are too many.
    pub fn keep(&'static self, path: &Path, known: Known) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        let mut gone = Vec::new();
        if state.by_path.len() >= self.capacity && !state.by_path.contains_key(path) {
            let oldest = state
                .by_path
                .iter()
                .min_by_key(|(_, slot)| slot.used)
                .map(|(p, _)| p.clone());
            gone.extend(oldest.and_then(|p| state.by_path.remove(&p)));
        }
        let slot = Slot {
            known: Arc::new(known),
            used: now,
        };
        gone.extend(state.by_path.insert(path.to_path_buf(), slot));
        drop(state);
        // Closed outside the lock.
        drop(gone);
        if !self.sweeping.swap(true, Ordering::SeqCst) {
            let spawned = std::thread::Builder::new()
                .name("maildir-idle".into())
                .spawn(move || self.sweep_while_kept());
            if let Err(e) = spawned {
                // Kept anyway: the next delivery to a changed Maildir, or
                // the next thread, lets go of it.
                tracing::warn!("cannot start the idle Maildir sweeper: {e}");
                self.sweeping.store(false, Ordering::SeqCst);
            }
        }
    }

    /// Forgets `known` as the Maildir at `path` (unless another replaced
    /// it meanwhile): the next delivery walks the path again.
    pub fn forget(&self, path: &Path, known: &Arc<Known>) {
        let mut state = lock(&self.state);
        let gone = match state.by_path.get(path) {
            Some(slot) if Arc::ptr_eq(&slot.known, known) => state.by_path.remove(path),
            _ => None,
        };
        drop(state);
        drop(gone);
    }

    /// Lets go of idle Maildirs every quarter of [`Cache::idle`] until none
    /// is kept.
    fn sweep_while_kept(&self) {
        loop {
            std::thread::sleep(self.idle / 4);
            let (gone, empty) = {
                let mut state = lock(&self.state);
                let gone = self.sweep(&mut state, Instant::now());
                let empty = state.by_path.is_empty();
                if empty {
                    // Under the lock: a keep after this starts a sweeper.
                    self.sweeping.store(false, Ordering::SeqCst);
                }
                (gone, empty)
            };
            // Closed outside the lock.
            drop(gone);
            if empty {
                return;
            }
        }
    }

    /// Takes out the Maildirs idle for too long.
    fn sweep(&self, state: &mut State, now: Instant) -> Vec<Slot> {
        let idle: Vec<PathBuf> = state
            .by_path
            .iter()
            .filter(|(_, slot)| now.duration_since(slot.used) >= self.idle)
            .map(|(p, _)| p.clone())
            .collect();
        idle.iter()
            .filter_map(|p| state.by_path.remove(p))
            .collect()
    }

    /// How many Maildirs are kept.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        lock(&self.state).by_path.len()
    }

    /// Whether `path` is kept.
    #[cfg(test)]
    pub fn has(&self, path: &Path) -> bool {
        lock(&self.state).by_path.contains_key(path)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{count, is_root, make_maildir};
    use super::super::{Durability, deliver, unique_name, walk};
    use super::*;
    use crate::durable::dirsync::DirSyncer;
    use crate::spool::SyncMode;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, symlink};

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("postern-known-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A link as the mailbox's user would make it (a link of root's in a
    /// directory of root's would be the operator's, and followed).
    fn plant(target: &Path, at: &Path) {
        symlink(target, at).unwrap();
        if is_root() {
            std::os::unix::fs::lchown(at, Some(65534), Some(65534)).unwrap();
        }
    }

    fn send(md: &Path) -> Result<PathBuf, MaildirError> {
        let syncer = DirSyncer::new(SyncMode::File);
        deliver(
            md,
            None,
            false,
            &[b"x"],
            &unique_name("h"),
            Durability::Synced(&syncer),
        )
    }

    #[test]
    fn a_kept_maildir_replaced_by_a_link_is_never_written_through() {
        let base = temp("link");
        let victim = base.join("victim");
        make_maildir(&victim);
        let user = base.join("user");
        let md = user.join("Maildir");
        let refused = |md: &Path| {
            let e = send(md).unwrap_err();
            assert!(e.to_string().contains("symbolic link, not followed"), "{e}");
        };
        // The Maildir itself becomes a link.
        send(&md).unwrap();
        assert!(KNOWN.has(&md), "kept after a first delivery");
        fs::rename(&md, base.join("old")).unwrap();
        plant(&victim, &md);
        refused(&md);
        assert!(!KNOWN.has(&md));
        fs::remove_file(&md).unwrap();
        // Its new/ becomes a link.
        make_maildir(&md);
        send(&md).unwrap();
        assert!(KNOWN.has(&md));
        fs::rename(md.join("new"), base.join("old-new")).unwrap();
        plant(&victim.join("new"), &md.join("new"));
        refused(&md);
        fs::remove_file(md.join("new")).unwrap();
        fs::create_dir(md.join("new")).unwrap();
        // A directory on the way becomes a link to a tree with a Maildir.
        send(&md).unwrap();
        assert!(KNOWN.has(&md));
        fs::rename(&user, base.join("old-user")).unwrap();
        plant(&base, &user);
        make_maildir(&base.join("Maildir"));
        refused(&md);
        // Nothing went where a link pointed.
        for d in ["victim/new", "victim/tmp", "Maildir/new", "Maildir/tmp"] {
            assert_eq!(count(&base.join(d)), 0, "{d}");
        }
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn a_maildir_moved_away_and_made_again_gets_the_next_mail() {
        let base = temp("moved");
        let md = base.join("Maildir");
        send(&md).unwrap();
        assert!(KNOWN.has(&md));
        fs::rename(&md, base.join("archive")).unwrap();
        make_maildir(&md);
        let p = send(&md).unwrap();
        assert!(p.starts_with(md.join("new")), "{p:?}");
        assert_eq!(count(&md.join("new")), 1);
        assert_eq!(count(&base.join("archive/new")), 1);
        // Removed: made again by the walk.
        fs::remove_dir_all(&md).unwrap();
        send(&md).unwrap();
        assert_eq!(count(&md.join("new")), 1);
        // tmp/ (not looked at before use) removed and made again: the
        // delivery finds the kept one gone and walks.
        fs::remove_dir_all(md.join("tmp")).unwrap();
        fs::create_dir(md.join("tmp")).unwrap();
        send(&md).unwrap();
        assert_eq!(count(&md.join("new")), 2);
        assert_eq!(count(&md.join("tmp")), 0);
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn a_kept_maildir_given_to_another_account_is_delivered_as_that_account() {
        if !is_root() {
            return; // Giving a directory away needs root.
        }
        let base = temp("owner");
        let md = base.join("Maildir");
        send(&md).unwrap();
        assert!(KNOWN.has(&md));
        for d in [md.clone(), md.join("tmp"), md.join("new")] {
            std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
        }
        let p = send(&md).unwrap();
        let m = fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534));
        let _ = fs::remove_dir_all(&base);
    }

    /// What a delivery to `md` keeps.
    fn known(md: &Path) -> Known {
        make_maildir(md);
        let walked = walk::walk(md).unwrap();
        let trust = walked.trust().unwrap();
        let dir = Arc::new(walked.make_missing(&trust).unwrap());
        let inbox = walk::open_folder(&dir, &trust, false, false)
            .unwrap()
            .unwrap();
        let generation = crate::privileges::identity_generation();
        Known::new(trust, dir, &inbox, generation).unwrap()
    }

    #[test]
    fn kept_maildirs_are_bounded_in_number_and_time() {
        let base = temp("bounded");
        let md: Vec<PathBuf> = (0..4).map(|i| base.join(format!("m{i}"))).collect();
        // Never idle long enough to go: only the bound on number counts.
        let cache: &'static Cache = Box::leak(Box::new(Cache::new(2, Duration::from_secs(3600))));
        cache.keep(&md[0], known(&md[0]));
        cache.keep(&md[1], known(&md[1]));
        assert!(cache.get(&md[0]).is_some()); // now the more recent
        cache.keep(&md[2], known(&md[2]));
        assert_eq!(cache.len(), 2);
        assert!(cache.has(&md[0]) && !cache.has(&md[1]) && cache.has(&md[2]));
        // Kept again: replaced, not counted twice.
        cache.keep(&md[2], known(&md[2]));
        assert_eq!(cache.len(), 2);
        // Idle ones go, without a delivery to notice.
        let cache: &'static Cache = Box::leak(Box::new(Cache::new(8, Duration::from_millis(40))));
        cache.keep(&md[3], known(&md[3]));
        assert!(cache.has(&md[3]));
        let until = Instant::now() + Duration::from_secs(20);
        while cache.len() > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(cache.len(), 0);
        // ... and the sweeper starts again for the next.
        cache.keep(&md[3], known(&md[3]));
        let until = Instant::now() + Duration::from_secs(20);
        while cache.len() > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(cache.len(), 0);
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn a_change_of_the_process_identity_forgets_what_was_kept() {
        let base = temp("generation");
        let md = base.join("Maildir");
        let cache: &'static Cache = Box::leak(Box::new(Cache::new(8, IDLE)));
        let mut k = known(&md);
        k.generation = crate::privileges::identity_generation().wrapping_sub(1);
        cache.keep(&md, k);
        assert!(cache.get(&md).is_none());
        assert!(!cache.has(&md));
        let _ = fs::remove_dir_all(&base);
    }
}
