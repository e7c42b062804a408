//! One long-lived descriptor per file system, shared by every syncfs(2) of
//! the daemon.
//!
//! Linux (since 5.8) reports a write-back error to syncfs(2) once per open
//! file description: a descriptor opened after the error, or one whose
//! error another caller already collected, is told nothing. So every
//! syncfs goes through the one descriptor kept here for its file system,
//! opened before the writes it must cover ([`Filesystems::register`]), and
//! an error any syncfs collects counts against every request in flight,
//! whoever asked: each request takes a [`Ticket`] before it writes and
//! fails if an error was reported since ([`Filesystems::check`]).
//!
//! Before 5.8 syncfs reports nothing; [`Filesystems::reports_errors`] says
//! so, and callers fall back to an fdatasync per file.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The write-back errors reported before a request started writing; see
/// [`Filesystems::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// One file system's descriptor; syncfs calls on it take turns, so that
/// an error one of them collects is counted before the next one returns.
#[derive(Debug)]
struct Fs {
    file: File,
    turn: Mutex<()>,
}

/// The daemon's file systems and the write-back errors seen on them.
#[derive(Debug)]
pub struct Filesystems {
    by_dev: Mutex<HashMap<u64, Arc<Fs>>>,
    /// Errors reported by any syncfs so far.
    errors: AtomicU64,
    reports: bool,
    /// Test seam: this many of the next syncfs calls fail as a lost
    /// write-back would make them fail.
    #[cfg(test)]
    fail_next: std::sync::atomic::AtomicU32,
}

impl Default for Filesystems {
    fn default() -> Self {
        Filesystems::new()
    }
}

impl Filesystems {
    /// No file system yet; whether syncfs can report errors is read from
    /// the running kernel's release.
    pub fn new() -> Filesystems {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        Filesystems {
            by_dev: Mutex::default(),
            errors: AtomicU64::new(0),
            reports: syncfs_reports_errors(&release),
            #[cfg(test)]
            fail_next: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// syncfs(2) reports write-back errors on this kernel (Linux ≥ 5.8).
    pub fn reports_errors(&self) -> bool {
        self.reports
    }

    /// Taken before writing: what [`Filesystems::check`] compares with.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.errors.load(Ordering::SeqCst))
    }

    /// Fails if any syncfs reported an error since `since` was taken: the
    /// error may have been this request's data, collected by someone else.
    pub fn check(&self, since: Ticket) -> io::Result<()> {
        let now = self.errors.load(Ordering::SeqCst);
        if now == since.0 {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "a write-back error was reported while this data was being written ({} since)",
                now - since.0
            )))
        }
    }

    /// Makes sure the file system holding `fd` has its descriptor (a
    /// duplicate of `fd`, which shares its open file description: open it
    /// before writing what a later syncfs must cover). Returns the device.
    pub fn register(&self, fd: BorrowedFd<'_>) -> io::Result<u64> {
        let dev = device_of(fd)?;
        self.register_on(dev, fd)?;
        Ok(dev)
    }

    /// [`Filesystems::register`] for a descriptor whose device the caller
    /// knows already (from its own fstat): no system call once the file
    /// system has its descriptor.
    pub fn register_on(&self, dev: u64, fd: BorrowedFd<'_>) -> io::Result<()> {
        if let std::collections::hash_map::Entry::Vacant(e) = lock(&self.by_dev).entry(dev) {
            e.insert(Arc::new(Fs {
                file: File::from(fd.try_clone_to_owned()?),
                turn: Mutex::new(()),
            }));
        }
        Ok(())
    }

    /// syncfs(2) on the file system `dev` through its descriptor
    /// (blocking). An error is counted for every request in flight.
    pub fn syncfs(&self, dev: u64) -> io::Result<()> {
        let fs = lock(&self.by_dev).get(&dev).cloned().ok_or_else(|| {
            io::Error::other(format!("file system {dev:#x} was never registered"))
        })?;
        let _turn = lock(&fs.turn);
        let res = self.syncfs_once(fs.file.as_fd());
        if res.is_err() {
            self.errors.fetch_add(1, Ordering::SeqCst);
        }
        res
    }

    #[cfg(not(test))]
    fn syncfs_once(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        rustix::fs::syncfs(fd).map_err(io::Error::from)
    }

    #[cfg(test)]
    fn syncfs_once(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let injected = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if injected {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        rustix::fs::syncfs(fd).map_err(io::Error::from)
    }

    /// Test seam: the next `n` syncfs calls fail (and count) like one that
    /// collects a lost write-back.
    #[cfg(test)]
    pub(crate) fn fail_next_syncfs(&self, n: u32) {
        self.fail_next.store(n, Ordering::SeqCst);
    }
}

/// The device of the file system holding `fd`.
#[allow(clippy::unnecessary_cast)] // c_ulong on some targets
pub fn device_of(fd: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(rustix::fs::fstat(fd)?.st_dev as u64)
}

/// True if a kernel of this release (`uname -r`) reports write-back
/// errors to syncfs(2): Linux 5.8 and later.
fn syncfs_reports_errors(release: &str) -> bool {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (5, 8),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases() {
        assert!(syncfs_reports_errors("6.18.44-fc-v1300\n"));
        assert!(syncfs_reports_errors("5.8.0"));
        assert!(syncfs_reports_errors("5.10.0-23-amd64"));
        assert!(!syncfs_reports_errors("5.7.19"));
        assert!(!syncfs_reports_errors("4.19.0-18-amd64"));
        assert!(!syncfs_reports_errors(""));
        assert!(!syncfs_reports_errors("garbage"));
    }

    #[test]
    fn an_error_counts_against_every_ticket_taken_before_it() {
        let fs = Filesystems::new();
        let dir = File::open(std::env::temp_dir()).unwrap();
        let dev = fs.register(dir.as_fd()).unwrap();
        // Registered once, whoever asks again.
        assert_eq!(fs.register(dir.as_fd()).unwrap(), dev);
        assert_eq!(lock(&fs.by_dev).len(), 1);
        let before = fs.ticket();
        fs.syncfs(dev).unwrap();
        fs.check(before).unwrap();
        fs.fail_next_syncfs(1);
        assert!(fs.syncfs(dev).is_err());
        // The error went to that caller; a request that started before it
        // learns of it all the same.
        assert!(fs.check(before).is_err());
        fs.syncfs(dev).unwrap();
        assert!(fs.check(before).is_err());
        // One that starts after it does not.
        let after = fs.ticket();
        fs.syncfs(dev).unwrap();
        fs.check(after).unwrap();
        assert!(fs.syncfs(dev ^ 1).is_err(), "unknown file system");
    }
}
