//! The locks of an mbox delivery: `FILE.lock` made with `O_EXCL`, then an
//! fcntl write lock (open-file-description: it keeps out the other
//! delivery threads of this process too), each retried until a deadline.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::{MboxError, io_err};
use crate::deliver::maildir::walk::Dir;

/// A dotlock older than this was left by a crash (Postfix's
/// `stale_lock_time`, 500 s; mutt and procmail use five minutes).
const STALE_LOCK: Duration = Duration::from_secs(300);

/// How often a held lock is tried again.
const LOCK_RETRY: Duration = Duration::from_millis(250);

/// `FILE.lock`, removed when dropped.
pub(super) struct DotLock {
    dir: std::sync::Arc<File>,
    name: PathBuf,
}

impl DotLock {
    pub(super) fn take(
        dir: &Dir,
        mailbox: &OsStr,
        path: &Path,
        deadline: Instant,
        waited: Duration,
        id: &str,
    ) -> Result<DotLock, MboxError> {
        let mut name = mailbox.to_os_string();
        name.push(".lock");
        let lock_path = dir.path.join(&name);
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        loop {
            match rustix::fs::openat(&dir.file, &name, flags, Mode::from_raw_mode(0o600)) {
                Ok(_) => {
                    return Ok(DotLock {
                        dir: dir.file.clone(),
                        name: name.into(),
                    });
                }
                Err(Errno::EXIST) => {}
                Err(e) => return Err(io_err("create", &lock_path)(e.into())),
            }
            if stale(&dir.file, &name) {
                tracing::warn!("{id}: {}: removing a stale lock", lock_path.display());
                let _ = rustix::fs::unlinkat(&dir.file, &name, AtFlags::empty());
                continue;
            }
            if Instant::now() >= deadline {
                return Err(MboxError::Locked {
                    path: path.to_path_buf(),
                    which: "dotlock",
                    waited,
                });
            }
            std::thread::sleep(LOCK_RETRY);
        }
    }
}

impl Drop for DotLock {
    fn drop(&mut self) {
        let _ = rustix::fs::unlinkat(&*self.dir, &self.name, AtFlags::empty());
    }
}

/// True if the lock `name` in `dir` is older than [`STALE_LOCK`].
fn stale(dir: &File, name: &OsStr) -> bool {
    let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
        return false;
    };
    let modified = SystemTime::UNIX_EPOCH + Duration::from_secs(st.st_mtime.max(0) as u64);
    SystemTime::now()
        .duration_since(modified)
        .is_ok_and(|age| age > STALE_LOCK)
}

/// Takes an fcntl write lock on the whole file, waiting until `deadline`.
pub(super) fn lock_file(
    file: &File,
    path: &Path,
    deadline: Instant,
    waited: Duration,
) -> Result<(), MboxError> {
    loop {
        if try_lock(file).map_err(io_err("lock", path))? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(MboxError::Locked {
                path: path.to_path_buf(),
                which: "fcntl",
                waited,
            });
        }
        std::thread::sleep(LOCK_RETRY);
    }
}

/// One attempt at an open-file-description write lock (`F_OFD_SETLK`):
/// false if someone holds a conflicting one. Released when the file is
/// closed.
#[allow(unsafe_code)]
pub(super) fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: a zeroed `flock` is a valid value (all integers); l_pid
    // must be 0 for OFD locks.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as _;
    lock.l_whence = libc::SEEK_SET as _;
    // SAFETY: F_OFD_SETLK reads the `flock` the pointer points to, which
    // lives across the call; the descriptor is open (borrowed from `file`).
    let rc = unsafe { libc::fcntl(file.as_fd().as_raw_fd(), libc::F_OFD_SETLK, &lock) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN | libc::EACCES) => Ok(false),
        _ => Err(e),
    }
}
