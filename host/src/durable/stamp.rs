//! What identifies one version of a file, for tables that are re-read when
//! their file changes (the password file, routing tables): a rename into
//! place gives a new inode, an edit in place a new size or times.

use std::os::unix::fs::MetadataExt as _;

/// A file's identity and version, from its metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    /// The stamp of the file `m` describes.
    pub fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}
