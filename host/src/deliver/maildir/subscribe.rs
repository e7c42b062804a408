//! What Dovecot's LDA does for a folder it makes on demand (`-m` with
//! `lda_mailbox_autocreate` and `lda_mailbox_autosubscribe`): the
//! Maildir++ marker file `maildirfolder` in the folder, and the folder's
//! name in the Maildir's `subscriptions` file, so that IMAP clients show
//! it.
//!
//! Both are written as the mailbox owner (the thread acts as the owner
//! while a folder is made), relative to directories already opened
//! without following links ([`super::walk`]), and with `O_NOFOLLOW`.
//! `subscriptions` is changed as Dovecot does it: under the dotlock
//! `subscriptions.lock`, which is written in full and renamed over the
//! file, so a reader sees the old list or the new one, never a part.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::walk::Dir;
use super::{MaildirError, err, refuse};

/// The Maildir++ marker of a folder.
pub const MARKER: &str = "maildirfolder";
/// Dovecot's list of subscribed folders, in the Maildir's root.
pub const SUBSCRIPTIONS: &str = "subscriptions";
const LOCK: &str = "subscriptions.lock";
/// Dovecot's version 2 header (names are then tab-separated by level; a
/// folder made here has one level, so a name is written as it is).
const VERSION2: &[u8] = b"V\t2\n\n";
/// A lock older than this was left by a crash (Dovecot's
/// `SUBSCRIPTION_FILE_CHANGE_TIMEOUT`).
const STALE: Duration = Duration::from_secs(30);
/// How long a delivery waits for another writer's lock.
const WAIT: Duration = Duration::from_secs(2);
/// A `subscriptions` file larger than this is not read.
const MAX_SIZE: u64 = 1 << 20;

/// Makes `maildirfolder` in `folder` unless it is there.
pub(super) fn mark_folder(folder: &Dir) -> Result<(), MaildirError> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(&folder.file, MARKER, flags, Mode::from_raw_mode(0o600)) {
        Ok(_) | Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(err("create", &folder.path.join(MARKER))(e.into())),
    }
}

/// Adds `name` to the `subscriptions` of `maildir` unless it is listed.
/// True if it was added.
pub(super) fn subscribe(maildir: &Dir, name: &str) -> Result<bool, MaildirError> {
    let lock_path = maildir.path.join(LOCK);
    let lock = take_lock(maildir)?;
    let done = update(maildir, lock, name);
    if !matches!(done, Ok(true)) {
        let _ = rustix::fs::unlinkat(&maildir.file, LOCK, AtFlags::empty());
    }
    done.map_err(|e| match e {
        Failure::Io(op, source) => MaildirError {
            op,
            path: lock_path,
            source,
        },
        Failure::Refused(m) => m,
    })
}

enum Failure {
    Io(&'static str, io::Error),
    Refused(MaildirError),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Io("write", e)
    }
}

/// Creates the dotlock, waiting for another writer, and removing one
/// left by a crash.
fn take_lock(maildir: &Dir) -> Result<File, MaildirError> {
    let path = maildir.path.join(LOCK);
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let started = Instant::now();
    loop {
        match rustix::fs::openat(&maildir.file, LOCK, flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => return Ok(File::from(fd)),
            Err(Errno::EXIST) => {}
            Err(e) => return Err(err("create", &path)(e.into())),
        }
        let stale = rustix::fs::statat(&maildir.file, LOCK, AtFlags::SYMLINK_NOFOLLOW)
            .ok()
            .and_then(|st| {
                let mtime = SystemTime::UNIX_EPOCH
                    + Duration::from_secs(u64::try_from(st.st_mtime).unwrap_or(0));
                SystemTime::now().duration_since(mtime).ok()
            })
            .is_some_and(|age| age > STALE);
        if stale {
            let _ = rustix::fs::unlinkat(&maildir.file, LOCK, AtFlags::empty());
            continue;
        }
        if started.elapsed() > WAIT {
            return Err(err("lock", &path)(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("held by another program for more than {WAIT:?}"),
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes the list with `name` into the lock and renames it over the
/// list; false (the lock left for the caller to remove) if `name` is
/// already listed.
fn update(maildir: &Dir, mut lock: File, name: &str) -> Result<bool, Failure> {
    let old = read_list(maildir)?;
    let body = old.strip_prefix(VERSION2).unwrap_or(&old);
    if body.split(|&b| b == b'\n').any(|l| l == name.as_bytes()) {
        return Ok(false);
    }
    let mut new = old.clone();
    if !new.is_empty() && !new.ends_with(b"\n") {
        new.push(b'\n');
    }
    new.extend_from_slice(name.as_bytes());
    new.push(b'\n');
    lock.write_all(&new)?;
    lock.sync_all().map_err(|e| Failure::Io("fsync", e))?;
    drop(lock);
    rustix::fs::renameat(&maildir.file, LOCK, &maildir.file, SUBSCRIPTIONS)
        .map_err(|e| Failure::Io("rename", e.into()))?;
    Ok(true)
}

/// The current list, empty if there is none. A link or anything but a
/// small regular file is refused.
fn read_list(maildir: &Dir) -> Result<Vec<u8>, Failure> {
    let path = maildir.path.join(SUBSCRIPTIONS);
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = match rustix::fs::openat(
        &maildir.file,
        OsStr::new(SUBSCRIPTIONS),
        flags,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(Vec::new()),
        Err(Errno::LOOP) => {
            return Err(Failure::Refused(refuse(
                &path,
                "a symbolic link, not followed",
            )));
        }
        Err(e) => return Err(Failure::Io("open", e.into())),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| Failure::Io("stat", e.into()))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(Failure::Refused(refuse(&path, "not a regular file")));
    }
    if u64::try_from(st.st_size).unwrap_or(u64::MAX) > MAX_SIZE {
        return Err(Failure::Refused(refuse(&path, "larger than 1 MiB")));
    }
    let mut out = Vec::new();
    File::from(fd)
        .take(MAX_SIZE)
        .read_to_end(&mut out)
        .map_err(|e| Failure::Io("read", e))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("postern-subs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn names_are_added_once_and_the_version_2_header_kept() {
        let d = temp("add");
        let dir = Dir::open(&d).unwrap();
        assert!(subscribe(&dir, "news").unwrap());
        assert!(!subscribe(&dir, "news").unwrap());
        assert!(subscribe(&dir, "lists").unwrap());
        assert_eq!(
            std::fs::read(d.join(SUBSCRIPTIONS)).unwrap(),
            b"news\nlists\n"
        );
        assert!(!d.join(LOCK).exists());
        std::fs::write(d.join(SUBSCRIPTIONS), b"V\t2\n\nTrash\nnews").unwrap();
        assert!(!subscribe(&dir, "news").unwrap());
        assert!(subscribe(&dir, "x").unwrap());
        assert_eq!(
            std::fs::read(d.join(SUBSCRIPTIONS)).unwrap(),
            b"V\t2\n\nTrash\nnews\nx\n"
        );
        mark_folder(&dir).unwrap();
        mark_folder(&dir).unwrap();
        assert!(d.join(MARKER).is_file());
    }

    #[test]
    fn links_are_refused_and_stale_locks_removed() {
        let d = temp("link");
        let dir = Dir::open(&d).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join(SUBSCRIPTIONS)).unwrap();
        let e = subscribe(&dir, "news").unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(!d.join(LOCK).exists());
        std::fs::remove_file(d.join(SUBSCRIPTIONS)).unwrap();
        // A lock left by a crash long ago.
        let lock = d.join(LOCK);
        std::fs::write(&lock, b"").unwrap();
        let old =
            std::fs::FileTimes::new().set_modified(SystemTime::now() - Duration::from_secs(60));
        std::fs::File::options()
            .write(true)
            .open(&lock)
            .unwrap()
            .set_times(old)
            .unwrap();
        assert!(subscribe(&dir, "news").unwrap());
        // A marker planted as a link is left alone, never written through.
        let f = temp("marker");
        std::os::unix::fs::symlink("/nonexistent-target", f.join(MARKER)).unwrap();
        mark_folder(&Dir::open(&f).unwrap()).unwrap();
        assert!(!Path::new("/nonexistent-target").exists());
    }
}
