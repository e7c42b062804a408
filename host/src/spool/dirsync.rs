//! Group commit for directory entries.
//!
//! A new file is durable only once its directory is fsynced too. Sessions
//! and deliveries fsync their own files in parallel (the disk handles many
//! concurrent fsyncs far better than sequential ones), then ask this syncer
//! for the directory: one thread collects every request that arrived while
//! the previous fsync ran and serves them all with a single fsync per
//! directory. Under load, one directory fsync covers dozens of messages.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use tokio::sync::oneshot;

type Waiter = oneshot::Sender<io::Result<()>>;
type Request = (PathBuf, Waiter);

/// Handle to the directory-sync thread; cheap to clone.
#[derive(Debug, Clone)]
pub struct DirSyncer {
    tx: mpsc::Sender<Request>,
}

impl DirSyncer {
    /// Starts the syncer thread. It exits when the last handle is dropped.
    pub fn start() -> io::Result<DirSyncer> {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("dirsync".into())
            .spawn(move || run(rx))?;
        Ok(DirSyncer { tx })
    }

    /// Returns once `dir` has been fsynced after this call was made.
    pub async fn sync(&self, dir: &Path) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((dir.to_path_buf(), tx))
            .map_err(|_| io::Error::other("directory syncer has stopped"))?;
        rx.await
            .map_err(|_| io::Error::other("directory syncer dropped the request"))?
    }

    /// Blocking variant for code already on a blocking thread.
    pub fn sync_blocking(&self, dir: &Path) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((dir.to_path_buf(), tx))
            .map_err(|_| io::Error::other("directory syncer has stopped"))?;
        rx.blocking_recv()
            .map_err(|_| io::Error::other("directory syncer dropped the request"))?
    }
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn run(rx: mpsc::Receiver<Request>) {
    while let Ok(first) = rx.recv() {
        let mut batch: HashMap<PathBuf, Vec<Waiter>> = HashMap::new();
        batch.entry(first.0).or_default().push(first.1);
        while let Ok((dir, tx)) = rx.try_recv() {
            batch.entry(dir).or_default().push(tx);
        }
        let results: Vec<(Vec<Waiter>, io::Result<()>)> = if batch.len() == 1 {
            batch
                .into_iter()
                .map(|(dir, waiters)| (waiters, fsync_dir(&dir)))
                .collect()
        } else {
            // Several directories (several mailboxes): fsync them in parallel.
            std::thread::scope(|s| {
                let handles: Vec<_> = batch
                    .into_iter()
                    .map(|(dir, waiters)| (waiters, s.spawn(move || fsync_dir(&dir))))
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
    }
}
