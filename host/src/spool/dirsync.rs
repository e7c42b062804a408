//! Group commit for new files and their directory entries.
//!
//! A new file is durable only once its data and its directory are synced.
//! Two modes ([`SyncMode`]):
//!
//! - `File` (default, what Postfix does): each writer fdatasyncs its own
//!   file (in parallel: the disk handles concurrent fsyncs far better than
//!   sequential ones), then asks this syncer for the directory; one thread
//!   collects every request that arrived while the previous fsync ran and
//!   serves them all with one fsync per directory.
//! - `Filesystem`: writers do not fsync at all; every request (file data or
//!   directory) joins a batch that one `syncfs(2)` makes durable. One
//!   flush of the whole file system covers dozens of messages, at the price
//!   of also flushing unrelated dirty data on that file system: for a
//!   spool and mailboxes on their own file system.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use tokio::sync::oneshot;

type Waiter = oneshot::Sender<io::Result<()>>;

/// What a request wants synced.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Target {
    /// fsync this directory.
    Dir(PathBuf),
    /// syncfs the file system holding this path.
    Filesystem(PathBuf),
}

type Request = (Target, Waiter);

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

/// Handle to the sync thread; cheap to clone.
#[derive(Debug, Clone)]
pub struct DirSyncer {
    tx: mpsc::Sender<Request>,
    mode: SyncMode,
}

impl DirSyncer {
    /// Starts the syncer thread (per-file mode). It exits when the last
    /// handle is dropped.
    pub fn start() -> io::Result<DirSyncer> {
        DirSyncer::start_with(SyncMode::File)
    }

    /// Starts the syncer thread in the given mode.
    pub fn start_with(mode: SyncMode) -> io::Result<DirSyncer> {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("dirsync".into())
            .spawn(move || run(rx))?;
        Ok(DirSyncer { tx, mode })
    }

    fn target(&self, dir: &Path) -> Target {
        match self.mode {
            SyncMode::File => Target::Dir(dir.to_path_buf()),
            SyncMode::Filesystem => Target::Filesystem(dir.to_path_buf()),
        }
    }

    /// Returns once `dir` has been synced after this call was made.
    pub async fn sync(&self, dir: &Path) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((self.target(dir), tx))
            .map_err(|_| io::Error::other("directory syncer has stopped"))?;
        rx.await
            .map_err(|_| io::Error::other("directory syncer dropped the request"))?
    }

    /// Blocking variant for code already on a blocking thread.
    pub fn sync_blocking(&self, dir: &Path) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((self.target(dir), tx))
            .map_err(|_| io::Error::other("directory syncer has stopped"))?;
        rx.blocking_recv()
            .map_err(|_| io::Error::other("directory syncer dropped the request"))?
    }

    /// Makes a just-written file's data durable (blocking): its own
    /// fdatasync, or a place in the next shared syncfs.
    pub fn sync_file_blocking(&self, file: &File, path: &Path) -> io::Result<()> {
        match self.mode {
            SyncMode::File => file.sync_data(),
            SyncMode::Filesystem => self.sync_blocking(path.parent().unwrap_or(path)),
        }
    }
}

fn sync_target(target: &Target) -> io::Result<()> {
    match target {
        Target::Dir(dir) => fsync_dir(dir),
        Target::Filesystem(path) => rustix::fs::syncfs(File::open(path)?).map_err(io::Error::from),
    }
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn run(rx: mpsc::Receiver<Request>) {
    while let Ok(first) = rx.recv() {
        let mut batch: HashMap<Target, Vec<Waiter>> = HashMap::new();
        let mut filesystems: HashMap<u64, Target> = HashMap::new();
        let mut add = |target: Target, tx: Waiter, batch: &mut HashMap<Target, Vec<Waiter>>| {
            // One syncfs per file system, whichever path asked for it.
            let key = match &target {
                Target::Filesystem(p) => {
                    use std::os::unix::fs::MetadataExt;
                    match std::fs::metadata(p) {
                        Ok(m) => filesystems.entry(m.dev()).or_insert(target.clone()).clone(),
                        Err(_) => target,
                    }
                }
                Target::Dir(_) => target,
            };
            batch.entry(key).or_default().push(tx);
        };
        add(first.0, first.1, &mut batch);
        while let Ok((target, tx)) = rx.try_recv() {
            add(target, tx, &mut batch);
        }
        let results: Vec<(Vec<Waiter>, io::Result<()>)> = if batch.len() == 1 {
            batch
                .into_iter()
                .map(|(target, waiters)| (waiters, sync_target(&target)))
                .collect()
        } else {
            // Several directories (several mailboxes): fsync them in parallel.
            std::thread::scope(|s| {
                let handles: Vec<_> = batch
                    .into_iter()
                    .map(|(target, waiters)| (waiters, s.spawn(move || sync_target(&target))))
                    .collect();
                handles
                    .into_iter()
                    .map(|(w, h)| {
                        let res = h
                            .join()
                            .unwrap_or_else(|_| Err(io::Error::other("fsync thread panicked")));
                        (w, res)
                    })
                    .collect()
            })
        };
        for (waiters, res) in results {
            for w in waiters {
                let r = match &res {
                    Ok(()) => Ok(()),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                };
                let _ = w.send(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn syncs_and_reports_errors() {
        let syncer = DirSyncer::start().unwrap();
        let dir = std::env::temp_dir();
        syncer.sync(&dir).await.unwrap();
        let missing = dir.join("postern-no-such-dir-for-test");
        assert!(syncer.sync(&missing).await.is_err());
        let fs = DirSyncer::start_with(SyncMode::Filesystem).unwrap();
        fs.sync(&dir).await.unwrap();
        let file = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
        let fs2 = fs.clone();
        let path = dir.join("x");
        tokio::task::spawn_blocking(move || fs2.sync_file_blocking(&file, &path))
            .await
            .unwrap()
            .unwrap();
        assert!(fs.sync(&missing).await.is_err());
    }
}
