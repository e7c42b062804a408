//! Maildir delivery: write into `tmp/`, fsync, rename into `new/`, fsync
//! `new/` (batched by the [`DirSyncer`]). A `+tag` goes into the Maildir++
//! folder `.tag` when that folder exists.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::spool::DirSyncer;
use crate::spool::dirsync::{create_dir_durable, wait_until_durable};
use crate::spool::journal::Touched;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A Maildir delivery failure; all are temporary (the message stays queued).
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct MaildirError {
    /// What was being done.
    pub op: &'static str,
    /// The path involved.
    pub path: PathBuf,
    /// The I/O error.
    pub source: io::Error,
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> MaildirError + 'a {
    move |source| MaildirError {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `tmp/ cur/ new/` under `dir` if `new/` is missing. `new/` comes
/// last: concurrent deliveries treat its existence as "Maildir complete".
fn ensure_maildir(dir: &Path) -> Result<(), MaildirError> {
    if dir.join("new").is_dir() {
        // Another delivery of this process may have just made it.
        wait_until_durable();
        return Ok(());
    }
    // Private, as Maildirs are (the file names say who got mail when);
    // durable before the first message goes in.
    for sub in ["tmp", "cur", "new"] {
        let p = dir.join(sub);
        create_dir_durable(&p, 0o700, 0o700).map_err(err("create", &p))?;
    }
    Ok(())
}

/// The folder for a tag: `.tag` (exact, then case-insensitive) if it exists.
fn folder_for_tag(maildir: &Path, tag: &str) -> Option<PathBuf> {
    if tag.is_empty() || tag.contains(['/', '\0']) || tag.starts_with('.') {
        return None;
    }
    let exact = maildir.join(format!(".{tag}"));
    if exact.join("new").is_dir() {
        return Some(exact);
    }
    let wanted = format!(".{}", tag.to_lowercase());
    fs::read_dir(maildir).ok()?.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().to_lowercase();
        (name == wanted && e.path().join("new").is_dir()).then(|| e.path())
    })
}

/// The host part of a Maildir file name (`/` and `:` escaped).
fn name_host(hostname: &str) -> String {
    hostname
        .chars()
        .map(|c| match c {
            '/' => "\\057".to_string(),
            ':' => "\\072".to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// A unique Maildir file name (`time.MusecPpidQn.host`).
pub fn unique_name(hostname: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}.M{}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        name_host(hostname)
    )
}

/// The Maildir file name of a journaled delivery (`arrival.JqueueID_n.host`):
/// derived from the message, so that delivering it again after a crash
/// finds the copy that got there first. Unique because queue IDs are.
pub fn journal_name(arrival: u64, key: &str, hostname: &str) -> String {
    format!("{arrival}.J{key}.{}", name_host(hostname))
}

/// How a delivery is made durable, and how its file is named.
#[derive(Debug, Clone, Copy)]
pub enum Durability<'a> {
    /// A unique name; fsync the file and `new/` before returning.
    Synced(&'a DirSyncer),
    /// The message is durable in the journal: a name derived from it
    /// ([`journal_name`]) and no fsync here; the file system is recorded
    /// for the journal's bulk sync.
    Journaled {
        /// File systems to sync before the journal forgets the message.
        touched: &'a Touched,
        /// A delivery repeated after a crash: a copy already in `new/` or
        /// `cur/` under the same name and with the same content counts
        /// (one that differs is written again).
        recovering: bool,
    },
    /// A message delivered from the spool: the derived name (so that a
    /// repeated attempt, or the journal replayed after a crash, finds this
    /// copy), an earlier copy counts, and fsync as `Synced`.
    Requeued(&'a DirSyncer),
}

impl Durability<'_> {
    /// File names come from [`journal_name`], not [`unique_name`].
    pub fn derived_names(&self) -> bool {
        !matches!(self, Durability::Synced(_))
    }

    fn look_for_earlier_copy(&self) -> bool {
        matches!(
            self,
            Durability::Journaled {
                recovering: true,
                ..
            } | Durability::Requeued(_)
        )
    }
}

/// A copy named `name` from before a crash, in `new/` or (the user has
/// seen it) in `cur/` with flags; it counts only with the content it must
/// have, since a crash can leave a name whose data never reached the disk.
fn earlier_copy(folder: &Path, name: &str, whole: &[u8]) -> Option<PathBuf> {
    let new = folder.join("new").join(name);
    for path in std::iter::once(new).chain(seen_copies(folder, name)) {
        match fs::read(&path) {
            Ok(bytes) if bytes == whole => return Some(path),
            Ok(bytes) if damaged(&bytes, whole) => tracing::warn!(
                "{}: damaged by a crash, delivering the message again",
                path.display()
            ),
            _ => {}
        }
    }
    None
}

/// The files in `folder/cur/` named `name` or `name:info`.
///
/// Recovery asks this for every recipient it replays. Reading a large
/// `cur/` for each would make a restart after a crash quadratic in the
/// mailbox size, so each `cur/` is read once and its names are kept while
/// the directory's mtime says it is unchanged. A listing taken within
/// [`RACY`] of that mtime is not trusted (file system timestamps are
/// coarse: a change in the same tick would not show), and is read again.
fn seen_copies(folder: &Path, name: &str) -> Vec<PathBuf> {
    let cur = folder.join("cur");
    let Ok(mtime) = fs::metadata(&cur).and_then(|m| m.modified()) else {
        return Vec::new();
    };
    let mut index = CUR_INDEX.lock().unwrap_or_else(|p| p.into_inner());
    let current = index
        .folders
        .get(&cur)
        .is_some_and(|l| l.mtime == mtime && l.taken.duration_since(mtime).is_ok_and(|d| d > RACY));
    if !current {
        let taken = SystemTime::now();
        let mut names: HashMap<String, Vec<OsString>> = HashMap::new();
        let mut files = 0;
        for e in fs::read_dir(&cur).into_iter().flatten().flatten() {
            let file = e.file_name();
            let lossy = file.to_string_lossy();
            let base = lossy
                .split_once(':')
                .map_or(&*lossy, |(b, _)| b)
                .to_string();
            names.entry(base).or_default().push(file);
            files += 1;
        }
        let listing = CurListing {
            mtime,
            taken,
            names,
            files,
        };
        index.insert(cur.clone(), listing);
    }
    index.folders[&cur]
        .names
        .get(name)
        .map(|files| files.iter().map(|f| cur.join(f)).collect())
        .unwrap_or_default()
}

/// How far a `cur/` listing must postdate the directory's mtime to be
/// reused.
const RACY: Duration = Duration::from_secs(2);

/// Names kept in [`CUR_INDEX`] in all; beyond it the index starts over.
const CUR_INDEX_NAMES: usize = 1 << 20;

static CUR_INDEX: LazyLock<Mutex<CurIndex>> = LazyLock::new(Mutex::default);

/// Listings of `cur/` folders, for [`seen_copies`].
#[derive(Default)]
struct CurIndex {
    folders: HashMap<PathBuf, CurListing>,
    /// Files listed in all of `folders`.
    files: usize,
}

impl CurIndex {
    fn insert(&mut self, cur: PathBuf, listing: CurListing) {
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

/// Delivers `parts` (concatenated) into the Maildir under the file name
/// `name` (plus `,S=size`); returns the new file. Blocking: call from a
/// blocking thread.
pub fn deliver(
    maildir: &Path,
    tag: Option<&str>,
    parts: &[&[u8]],
    name: &str,
    how: Durability<'_>,
) -> Result<PathBuf, MaildirError> {
    ensure_maildir(maildir)?;
    let folder = tag
        .and_then(|t| folder_for_tag(maildir, t))
        .unwrap_or_else(|| maildir.to_path_buf());
    let size: usize = parts.iter().map(|p| p.len()).sum();
    let final_name = format!("{name},S={size}");
    // One write for small messages (headers and content together).
    let whole: Vec<u8> = parts.concat();
    if how.look_for_earlier_copy()
        && let Some(path) = earlier_copy(&folder, &final_name, &whole)
    {
        // Found, but perhaps only in the page cache (a kill, not a power
        // loss): it must become as durable as a new copy would.
        let dir = path.parent().unwrap_or(&folder).to_path_buf();
        let f = File::open(&path).map_err(err("open", &path))?;
        secure_file(how, &f, &path, &dir)?;
        secure_dir(how, &dir)?;
        return Ok(path);
    }
    let tmp = folder.join("tmp").join(name);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        // A unique name must be new; a derived one may be left in tmp/ by
        // a crash or an attempt that failed.
        .create_new(!how.derived_names())
        .mode(0o600)
        .open(&tmp)
        .map_err(err("create", &tmp))?;
    let new_dir = folder.join("new");
    let written = f
        .write_all(&whole)
        .map_err(err("write", &tmp))
        .and_then(|()| secure_file(how, &f, &tmp, &new_dir));
    drop(f);
    if let Err(e) = written {
        // A part of a message must not stay in tmp/ (a full disk would
        // stay full); the delivery is retried as a whole.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let mut dest = new_dir.join(&final_name);
    // Never over another mail. A file of this name is either this
    // message's copy damaged by a crash (shorter, or with lost blocks read
    // back as zeros), which is repaired, or another message whose queue
    // ID came again after the clock stepped back, which stays: this one
    // then gets a unique name.
    let renamed = match rename_noreplace(&tmp, &dest) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if damaged_copy(&dest, &whole) {
                fs::rename(&tmp, &dest)
            } else {
                tracing::warn!(
                    "{} exists already (another message); delivering under a unique name",
                    dest.display()
                );
                let host = name.splitn(3, '.').nth(2).unwrap_or_default();
                dest = new_dir.join(format!("{},S={size}", unique_name(host)));
                rename_noreplace(&tmp, &dest)
            }
        }
        r => r,
    };
    if let Err(e) = renamed {
        let _ = fs::remove_file(&tmp);
        return Err(err("rename", &dest)(e));
    }
    secure_dir(how, &new_dir)?;
    Ok(dest)
}

/// Makes a file's data durable as `how` says: its own fsync, or (journal)
/// its file system recorded for the bulk sync, with `dir` (where it ends
/// up) as the handle to sync through.
fn secure_file(how: Durability<'_>, f: &File, path: &Path, dir: &Path) -> Result<(), MaildirError> {
    match how {
        Durability::Synced(syncer) | Durability::Requeued(syncer) => syncer
            .sync_file_blocking(f, syncer.filesystems().ticket())
            .map_err(err("fsync", path)),
        Durability::Journaled { touched, .. } => File::open(dir)
            .and_then(|d| touched.add(std::os::fd::AsFd::as_fd(&d)))
            .map_err(err("open", dir)),
    }
}

/// Makes a directory entry durable as `how` says (the journal's bulk sync
/// covers it otherwise).
fn secure_dir(how: Durability<'_>, dir: &Path) -> Result<(), MaildirError> {
    match how {
        Durability::Synced(syncer) | Durability::Requeued(syncer) => {
            syncer.sync_blocking(dir).map_err(err("fsync", dir))
        }
        Durability::Journaled { .. } => Ok(()),
    }
}

/// rename(2) that fails with `AlreadyExists` instead of replacing `to`
/// (on a file system without RENAME_NOREPLACE: a check, then rename).
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    match rustix::fs::renameat_with(
        rustix::fs::CWD,
        from,
        rustix::fs::CWD,
        to,
        rustix::fs::RenameFlags::NOREPLACE,
    ) {
        Err(rustix::io::Errno::INVAL) => {
            if fs::symlink_metadata(to).is_ok() {
                Err(io::ErrorKind::AlreadyExists.into())
            } else {
                fs::rename(from, to)
            }
        }
        r => r.map_err(io::Error::from),
    }
}

/// True if the file at `path` can be this message's copy cut short or
/// with lost blocks ([`damaged`]).
fn damaged_copy(path: &Path, whole: &[u8]) -> bool {
    fs::read(path).is_ok_and(|bytes| damaged(&bytes, whole))
}

/// True if `bytes` can be `whole` cut short or with lost blocks: no
/// longer, and each byte either ours or zero.
fn damaged(bytes: &[u8], whole: &[u8]) -> bool {
    bytes.len() <= whole.len() && bytes.iter().zip(whole).all(|(a, b)| a == b || *a == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::SyncMode;

    #[test]
    fn delivers_into_inbox_and_tag_folder() {
        let dir = std::env::temp_dir().join(format!("postern-maildir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let syncer = DirSyncer::new(SyncMode::File);
        let synced = Durability::Synced(&syncer);
        let name = || unique_name("mx.test");
        let p = deliver(&dir, None, &[b"A: b\r\n", b"\r\nhi\r\n"], &name(), synced).unwrap();
        assert!(p.starts_with(dir.join("new")));
        use std::os::unix::fs::PermissionsExt;
        for d in [
            dir.clone(),
            dir.join("new"),
            dir.join("tmp"),
            dir.join("cur"),
        ] {
            assert_eq!(
                fs::metadata(&d).unwrap().permissions().mode() & 0o777,
                0o700,
                "{d:?}"
            );
        }
        assert_eq!(fs::read(&p).unwrap(), b"A: b\r\n\r\nhi\r\n");
        assert!(p.to_string_lossy().ends_with(",S=12"));
        // No folder yet: INBOX.
        let p = deliver(&dir, Some("News"), &[b"x"], &name(), synced).unwrap();
        assert!(p.starts_with(dir.join("new")));
        for sub in ["cur", "new", "tmp"] {
            fs::create_dir_all(dir.join(".news").join(sub)).unwrap();
        }
        let p = deliver(&dir, Some("News"), &[b"x"], &name(), synced).unwrap();
        assert!(p.starts_with(dir.join(".news").join("new")));
        assert!(
            deliver(&dir, Some("../x"), &[b"x"], &name(), synced)
                .unwrap()
                .starts_with(dir.join("new"))
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn journaled_redelivery_finds_or_repairs_the_earlier_copy() {
        let dir = std::env::temp_dir().join(format!("postern-maildir-j-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let touched = Touched::default();
        let first = Durability::Journaled {
            touched: &touched,
            recovering: false,
        };
        let again = Durability::Journaled {
            touched: &touched,
            recovering: true,
        };
        let name = journal_name(1700000000, "00000000000000AB_0", "mx.test");
        let p = deliver(&dir, None, &[b"hi\r\n"], &name, first).unwrap();
        assert_eq!(p, dir.join("new").join(format!("{name},S=4")));
        // Delivered again after a crash: the same file, not a second one.
        assert_eq!(deliver(&dir, None, &[b"hi\r\n"], &name, again).unwrap(), p);
        assert_eq!(fs::read_dir(dir.join("new")).unwrap().count(), 1);
        // A copy cut short by the crash is written again.
        fs::write(&p, b"h").unwrap();
        deliver(&dir, None, &[b"hi\r\n"], &name, again).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"hi\r\n");
        // Already seen by the user (moved to cur/ with flags): it counts.
        let seen = dir.join("cur").join(format!("{name},S=4:2,S"));
        fs::rename(&p, &seen).unwrap();
        assert_eq!(
            deliver(&dir, None, &[b"hi\r\n"], &name, again).unwrap(),
            seen
        );
        assert_eq!(fs::read_dir(dir.join("new")).unwrap().count(), 0);
        // ... but only with its content: a name whose data a power loss
        // took is delivered again.
        fs::write(&seen, b"").unwrap();
        assert_eq!(deliver(&dir, None, &[b"hi\r\n"], &name, again).unwrap(), p);
        assert_eq!(fs::read(&p).unwrap(), b"hi\r\n");
        // A first delivery never replaces an existing mail.
        let p2 = deliver(&dir, None, &[b"ho\r\n"], &name, first).unwrap();
        assert_ne!(p2.file_name(), p.file_name());
        assert_eq!(fs::read(&p).unwrap(), b"hi\r\n");
        assert_eq!(fs::read(&p2).unwrap(), b"ho\r\n");
        // Neither does a repeated one (recovery, spool retries): another
        // message under the name stays; a copy with lost blocks (zeros) is
        // ours and repaired.
        let p3 = deliver(&dir, None, &[b"hu\r\n"], &name, again).unwrap();
        assert_ne!(p3.file_name(), p.file_name());
        assert_eq!(fs::read(&p).unwrap(), b"hi\r\n");
        fs::write(&p, b"h\0\0\0").unwrap();
        assert_eq!(deliver(&dir, None, &[b"hi\r\n"], &name, again).unwrap(), p);
        assert_eq!(fs::read(&p).unwrap(), b"hi\r\n");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn recovery_reads_an_unchanged_cur_once() {
        let dir = std::env::temp_dir().join(format!("postern-maildir-cur-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        ensure_maildir(&dir).unwrap();
        let cur = dir.join("cur");
        let set_mtime = |t: SystemTime| {
            File::open(&cur).unwrap().set_modified(t).unwrap();
        };
        let old = SystemTime::now() - Duration::from_secs(3600);
        fs::write(cur.join("1.Ja_0.h,S=2:2,S"), b"a\n").unwrap();
        fs::write(cur.join("1.Ja_1.h,S=2"), b"b\n").unwrap();
        set_mtime(old);
        assert_eq!(
            seen_copies(&dir, "1.Ja_0.h,S=2"),
            [cur.join("1.Ja_0.h,S=2:2,S")]
        );
        assert_eq!(
            seen_copies(&dir, "1.Ja_1.h,S=2"),
            [cur.join("1.Ja_1.h,S=2")]
        );
        assert!(seen_copies(&dir, "1.Ja_2.h,S=2").is_empty());
        // A change shows in the mtime, and the listing is read again.
        fs::write(cur.join("1.Ja_2.h,S=2:2,RS"), b"c\n").unwrap();
        assert_eq!(
            seen_copies(&dir, "1.Ja_2.h,S=2"),
            [cur.join("1.Ja_2.h,S=2:2,RS")]
        );
        // The listing is kept while the mtime stays: a file slipped in
        // under the old mtime is not seen (the proof that the listing is
        // reused, and why a listing within RACY of its mtime is not).
        set_mtime(old);
        assert_eq!(seen_copies(&dir, "1.Ja_2.h,S=2").len(), 1);
        fs::write(cur.join("1.Ja_3.h,S=2"), b"d\n").unwrap();
        set_mtime(old);
        assert!(seen_copies(&dir, "1.Ja_3.h,S=2").is_empty());
        // A listing taken within RACY of the mtime is not trusted.
        set_mtime(SystemTime::now());
        assert_eq!(
            seen_copies(&dir, "1.Ja_3.h,S=2"),
            [cur.join("1.Ja_3.h,S=2")]
        );
        fs::write(cur.join("1.Ja_4.h,S=2"), b"e\n").unwrap();
        assert_eq!(
            seen_copies(&dir, "1.Ja_4.h,S=2"),
            [cur.join("1.Ja_4.h,S=2")]
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
