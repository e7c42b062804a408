//! The file systems that hold Maildir copies the journal has not synced
//! yet.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex};

use super::lock;
use crate::durable::filesystems::{Filesystems, Ticket};

#[derive(Debug, Default)]
struct TouchedState {
    /// The file systems written to.
    devs: std::collections::BTreeSet<u64>,
    /// The first sync error. After it, no sync succeeds until restart: a
    /// lost write-back must not be forgotten by the next syncfs.
    failed: Option<String>,
}

/// The file systems that hold Maildir copies not yet synced.
///
/// Their syncfs goes through the descriptors of [`Filesystems`], shared
/// with the spool's group commit, and an error any syncfs of the daemon
/// collected since this was made counts here: it may have been a copy's.
#[derive(Debug)]
pub struct Touched {
    filesystems: Arc<Filesystems>,
    since: Ticket,
    state: Mutex<TouchedState>,
}

impl Default for Touched {
    fn default() -> Self {
        Touched::new(Arc::new(Filesystems::new()))
    }
}

impl Touched {
    /// Nothing touched yet; syncs go through `filesystems`.
    pub fn new(filesystems: Arc<Filesystems>) -> Touched {
        Touched {
            since: filesystems.ticket(),
            filesystems,
            state: Mutex::default(),
        }
    }

    /// Records that a new file is about to be written into the directory
    /// `dir` (blocking). Call it before the write: the file system's
    /// descriptor must be open before the data it is to report on.
    pub fn add(&self, dir: BorrowedFd<'_>) -> io::Result<()> {
        let dev = self.filesystems.register(dir)?;
        lock(&self.state).devs.insert(dev);
        Ok(())
    }

    /// [`Touched::add`] for a directory whose device the caller knows.
    pub fn add_on(&self, dev: u64, dir: BorrowedFd<'_>) -> io::Result<()> {
        self.filesystems.register_on(dev, dir)?;
        lock(&self.state).devs.insert(dev);
        Ok(())
    }

    /// syncfs(2) on every file system recorded (blocking).
    pub fn sync(&self) -> io::Result<()> {
        let devs: Vec<u64> = {
            let st = lock(&self.state);
            if let Some(why) = &st.failed {
                return Err(io::Error::other(why.clone()));
            }
            st.devs.iter().copied().collect()
        };
        let res = devs
            .iter()
            .try_for_each(|&dev| {
                self.filesystems
                    .syncfs(dev)
                    .map_err(|e| format!("syncfs on file system {dev:#x}: {e}"))
            })
            .and_then(|()| {
                self.filesystems
                    .check(self.since)
                    .map_err(|e| e.to_string())
            });
        res.map_err(|why| {
            lock(&self.state).failed.get_or_insert(why.clone());
            io::Error::other(why)
        })
    }

    /// A sync has failed, or syncfs cannot report errors on this kernel:
    /// nothing may rely on the journal's bulk sync until restart.
    pub fn failed(&self) -> bool {
        !self.filesystems.reports_errors() || lock(&self.state).failed.is_some()
    }

    #[cfg(test)]
    pub(crate) fn fail_for_test(&self) {
        lock(&self.state).failed = Some("injected".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, File};

    #[test]
    fn an_error_the_spool_collected_fails_the_journal_sync() {
        use crate::durable::dirsync::{DirSyncer, SyncMode};
        let fs = Arc::new(Filesystems::new());
        if !fs.reports_errors() {
            return; // Before Linux 5.8 the journal is not used at all.
        }
        let dir = std::env::temp_dir().join(format!("postern-touched-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let touched = Touched::new(fs.clone());
        let syncer = DirSyncer::with_filesystems(SyncMode::Filesystem, fs.clone());
        touched
            .add(std::os::fd::AsFd::as_fd(&File::open(&dir).unwrap()))
            .unwrap();
        touched.sync().unwrap();
        // The spool's batch collects the write-back error of the shared
        // file system; the journal's next syncfs succeeds, and still the
        // journal must not let go of its copies.
        fs.fail_next_syncfs(1);
        assert!(syncer.sync_blocking(&dir).is_err());
        assert!(touched.sync().is_err());
        assert!(touched.failed());
        let _ = fs::remove_dir_all(&dir);
    }
}
