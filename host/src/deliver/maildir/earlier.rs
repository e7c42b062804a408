//! Copies a delivery made before: a message delivered again (after a
//! crash, or by a retry) under its derived name finds the copy that got
//! there first instead of making a second one.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{FileType, Mode, OFlags};

use super::walk::{Dir, Folder};

/// A copy named `name` from before, in `new/` or (the user has seen it)
/// in `cur/` with flags, open, with the directory it is in; it counts only
/// with the content it must have, since a crash can leave a name whose data
/// never reached the disk.
pub(super) fn earlier_copy<'f>(
    folder: &'f Folder,
    name: &str,
    whole: &[u8],
) -> Option<(PathBuf, File, &'f Dir)> {
    let in_new = std::iter::once((&*folder.new, OsString::from(name)));
    let in_cur = folder
        .cur
        .iter()
        .flat_map(|cur| seen_copies(cur, name).into_iter().map(move |n| (cur, n)));
    for (dir, file_name) in in_new.chain(in_cur) {
        let path = dir.path.join(&file_name);
        match read_regular(dir, &file_name, whole.len()) {
            Some((f, bytes)) if bytes == whole => return Some((path, f, dir)),
            Some((_, bytes)) if damaged(&bytes, whole) => tracing::warn!(
                "{}: damaged by a crash, delivering the message again",
                path.display()
            ),
            _ => {}
        }
    }
    None
}

/// True if the entry `name` in `dir` can be this message's copy cut short
/// or with lost blocks ([`damaged`]).
pub(super) fn damaged_copy(dir: &Dir, name: &OsStr, whole: &[u8]) -> bool {
    read_regular(dir, name, whole.len()).is_some_and(|(_, bytes)| damaged(&bytes, whole))
}

/// Opens and reads the entry `name` of `dir` if it is a regular file of at
/// most `max` bytes: never through a link, never a FIFO (whose open or
/// read could block), never more than a copy of this message can be.
fn read_regular(dir: &Dir, name: &OsStr, max: usize) -> Option<(File, Vec<u8>)> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(&dir.file, name, flags, Mode::empty()).ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    let size = usize::try_from(st.st_size).ok()?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || size > max {
        return None;
    }
    let mut f = File::from(fd);
    let mut bytes = Vec::with_capacity(size);
    f.by_ref()
        .take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    Some((f, bytes))
}

/// True if `bytes` can be `whole` cut short or with lost blocks: no
/// longer, and each byte either ours or zero.
pub(super) fn damaged(bytes: &[u8], whole: &[u8]) -> bool {
    bytes.len() <= whole.len() && bytes.iter().zip(whole).all(|(a, b)| a == b || *a == 0)
}

/// The files in `cur` named `name` or `name:info`.
///
/// Recovery asks this for every recipient it replays. Reading a large
/// `cur/` for each would make a restart after a crash quadratic in the
/// mailbox size, so each `cur/` is read once and its names are kept while
/// the directory's mtime says it is unchanged. A listing taken within
/// [`RACY`] of that mtime is not trusted (file system timestamps are
/// coarse: a change in the same tick would not show), and is read again.
pub(super) fn seen_copies(cur: &Dir, name: &str) -> Vec<OsString> {
    let Ok(st) = rustix::fs::fstat(&cur.file) else {
        return Vec::new();
    };
    let key = (st.st_dev, st.st_ino);
    let mtime = UNIX_EPOCH
        + Duration::new(
            u64::try_from(st.st_mtime).unwrap_or(0),
            u32::try_from(st.st_mtime_nsec).unwrap_or(0),
        );
    let mut index = CUR_INDEX.lock().unwrap_or_else(|p| p.into_inner());
    let current = index
        .folders
        .get(&key)
        .is_some_and(|l| l.mtime == mtime && l.taken.duration_since(mtime).is_ok_and(|d| d > RACY));
    if !current {
        let taken = SystemTime::now();
        let mut names: HashMap<String, Vec<OsString>> = HashMap::new();
        let mut files = 0;
        let entries = rustix::fs::Dir::read_from(&cur.file).into_iter().flatten();
        for e in entries.flatten() {
            let file = OsStr::from_bytes(e.file_name().to_bytes());
            if file == "." || file == ".." {
                continue;
            }
            let lossy = file.to_string_lossy();
            let base = lossy
                .split_once(':')
                .map_or(&*lossy, |(b, _)| b)
                .to_string();
            names.entry(base).or_default().push(file.to_os_string());
            files += 1;
        }
        let listing = CurListing {
            mtime,
            taken,
            names,
            files,
        };
        index.insert(key, listing);
    }
    index
        .folders
        .get(&key)
        .and_then(|l| l.names.get(name))
        .cloned()
        .unwrap_or_default()
}

/// How far a `cur/` listing must postdate the directory's mtime to be
/// reused.
const RACY: Duration = Duration::from_secs(2);

/// Names kept in [`CUR_INDEX`] in all; beyond it the index starts over.
const CUR_INDEX_NAMES: usize = 1 << 20;

static CUR_INDEX: LazyLock<Mutex<CurIndex>> = LazyLock::new(Mutex::default);

/// A `cur/` directory: device and inode.
type CurKey = (u64, u64);

/// Listings of `cur/` folders, for [`seen_copies`].
#[derive(Default)]
struct CurIndex {
    folders: HashMap<CurKey, CurListing>,
    /// Files listed in all of `folders`.
    files: usize,
}

impl CurIndex {
    fn insert(&mut self, cur: CurKey, listing: CurListing) {
        if let Some(old) = self.folders.remove(&cur) {
            self.files -= old.files;
        }
        if self.files + listing.files > CUR_INDEX_NAMES {
            self.folders.clear();
            self.files = 0;
        }
        self.files += listing.files;
        self.folders.insert(cur, listing);
    }
}

struct CurListing {
    mtime: SystemTime,
    taken: SystemTime,
    /// File names by the part before `:`.
    names: HashMap<String, Vec<OsString>>,
    files: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn recovery_reads_an_unchanged_cur_once() {
        let dir = std::env::temp_dir().join(format!("postern-maildir-cur-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("cur")).unwrap();
        let cur = dir.join("cur");
        let listed = |name: &str| -> Vec<PathBuf> {
            let d = Dir::open(&cur).unwrap();
            seen_copies(&d, name)
                .into_iter()
                .map(|n| cur.join(n))
                .collect()
        };
        let set_mtime = |t: SystemTime| {
            File::open(&cur).unwrap().set_modified(t).unwrap();
        };
        let old = SystemTime::now() - Duration::from_secs(3600);
        fs::write(cur.join("1.Ja_0.h,S=2:2,S"), b"a\n").unwrap();
        fs::write(cur.join("1.Ja_1.h,S=2"), b"b\n").unwrap();
        set_mtime(old);
        assert_eq!(listed("1.Ja_0.h,S=2"), [cur.join("1.Ja_0.h,S=2:2,S")]);
        assert_eq!(listed("1.Ja_1.h,S=2"), [cur.join("1.Ja_1.h,S=2")]);
        assert!(listed("1.Ja_2.h,S=2").is_empty());
        // A change shows in the mtime, and the listing is read again.
        fs::write(cur.join("1.Ja_2.h,S=2:2,RS"), b"c\n").unwrap();
        assert_eq!(listed("1.Ja_2.h,S=2"), [cur.join("1.Ja_2.h,S=2:2,RS")]);
        // The listing is kept while the mtime stays: a file slipped in
        // under the old mtime is not seen (the proof that the listing is
        // reused, and why a listing within RACY of its mtime is not).
        set_mtime(old);
        assert_eq!(listed("1.Ja_2.h,S=2").len(), 1);
        fs::write(cur.join("1.Ja_3.h,S=2"), b"d\n").unwrap();
        set_mtime(old);
        assert!(listed("1.Ja_3.h,S=2").is_empty());
        // A listing taken within RACY of the mtime is not trusted.
        set_mtime(SystemTime::now());
        assert_eq!(listed("1.Ja_3.h,S=2"), [cur.join("1.Ja_3.h,S=2")]);
        fs::write(cur.join("1.Ja_4.h,S=2"), b"e\n").unwrap();
        assert_eq!(listed("1.Ja_4.h,S=2"), [cur.join("1.Ja_4.h,S=2")]);
        let _ = fs::remove_dir_all(&dir);
    }
}
