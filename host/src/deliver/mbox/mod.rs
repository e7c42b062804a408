//! mbox delivery (Postfix local(8) with `mail_spool_directory` or
//! `home_mailbox = mbox`): the message is appended to the user's mbox file
//! after a `From sender date` line, body lines that start with `>*From `
//! get one more `>` (mboxrd), and a blank line ends it.
//!
//! The file is locked as Postfix's `mailbox_delivery_lock = fcntl,
//! dotlock` does, so mail readers (Dovecot, mutt) and other deliveries
//! wait: first `FILE.lock`, made with `O_EXCL` (removed if older than five
//! minutes: left by a crash), then an fcntl write lock on the file (an
//! open-file-description lock: it also keeps out another delivery thread
//! of this process, and conflicts with the POSIX locks of other
//! programs). Both are retried until `local.mbox_lock_timeout`, then the
//! delivery is deferred. The copy is fsynced before it counts; a write
//! that fails truncates the file back to its length before, so a mailbox
//! never holds half a message.
//!
//! The path is trusted as a Maildir's is ([`super::maildir::walk`]): its
//! directories are walked without following a user's link, the delivery
//! acts as the owner of the directory the file is in, and the file itself
//! is opened with `O_NOFOLLOW`, must be a regular file with one link, and
//! must belong to root, to Postern's account, to that directory's owner or
//! to the system account named as the local user.

mod lock;

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;
use time::OffsetDateTime;

use super::agent::{Agent, Message, Outcome, Rcpt};
use super::mailbox::each_local;
use super::maildir::MaildirError;
use super::maildir::walk::{self, Dir};
use crate::route::Router;
use lock::{DotLock, lock_file};

/// An mbox delivery failure; all are temporary (the message stays queued).
#[derive(Debug, thiserror::Error)]
pub enum MboxError {
    /// The path could not be walked safely, or a directory made.
    #[error(transparent)]
    Path(#[from] MaildirError),
    /// A system call on the mailbox failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file is not one the delivery may append to.
    #[error("refusing to deliver to {path}: {why}")]
    Refused {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Another program held a lock for the whole wait.
    #[error("{path}: the mailbox is locked ({which}) by another program; waited {waited:?}")]
    Locked {
        /// The file.
        path: PathBuf,
        /// `dotlock` or `fcntl`.
        which: &'static str,
        /// How long.
        waited: Duration,
    },
}

pub(super) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> MboxError + 'a {
    move |source| MboxError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Local users' mbox files (`local.mbox`).
pub struct Mbox<'r> {
    /// The routing tables (the mbox template, the lock timeout).
    pub router: &'r Router,
}

impl Agent for Mbox<'_> {
    fn deliver(&self, msg: Message<'_>, rcpts: &[Rcpt<'_>]) -> Vec<Outcome> {
        let timeout = self.router.mailbox().mbox_lock_timeout;
        each_local(msg, rcpts, |local| {
            let path = self.router.mbox(local.user);
            let copy = render(&msg.env.sender, OffsetDateTime::now_utc(), &local.parts);
            match deliver(&path, local.user, &copy, timeout, &msg.env.id) {
                Ok(()) => {
                    Outcome::sent("local", format!("delivered to mailbox {}", path.display()))
                }
                Err(e) => Outcome::deferred("local", "4.2.0", e.to_string()),
            }
        })
    }
}

/// The `From ` line that starts a message in an mbox: the envelope sender
/// (`MAILER-DAEMON` for `<>`) and the delivery time in asctime(3) form,
/// as Postfix writes it.
pub fn from_line(sender: &str, at: OffsetDateTime) -> String {
    let who = if sender.is_empty() {
        "MAILER-DAEMON".to_string()
    } else {
        // A separator line must stay one line of one word.
        sender
            .chars()
            .map(|c| {
                if c.is_whitespace() || c.is_control() {
                    '_'
                } else {
                    c
                }
            })
            .collect()
    };
    let (weekday, month) = (at.weekday().to_string(), at.month().to_string());
    let when = format!(
        "{} {} {:>2} {:02}:{:02}:{:02} {}",
        &weekday[..3],
        &month[..3],
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.year()
    );
    format!("From {who}  {when}\n")
}

/// The bytes appended for one message: the `From ` line, the message
/// (`parts` concatenated) with LF line ends and `>*From ` lines quoted
/// with one more `>` (mboxrd), a line end if the message lacks a final
/// one, and the blank line that ends a message in an mbox.
pub fn render(sender: &str, at: OffsetDateTime, parts: &[&[u8]]) -> Vec<u8> {
    let size: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(size + size / 50 + 64);
    out.extend_from_slice(from_line(sender, at).as_bytes());
    let whole = parts.concat();
    for line in whole.split_inclusive(|&b| b == b'\n') {
        let text = line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .unwrap_or(line);
        let unquoted = text.iter().position(|&b| b != b'>').unwrap_or(text.len());
        if text[unquoted..].starts_with(b"From ") {
            out.push(b'>');
        }
        out.extend_from_slice(text);
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// Appends `copy` to the mbox file at `path` (see the module's
/// documentation). Blocking: call from a blocking thread (it acts as the
/// mailbox owner meanwhile, and may wait for the locks). `id`, the queue
/// ID, is for the log.
pub fn deliver(
    path: &Path,
    user: &str,
    copy: &[u8],
    lock_timeout: Duration,
    id: &str,
) -> Result<(), MboxError> {
    let refused = |why: &str| MboxError::Refused {
        path: path.to_path_buf(),
        why: why.into(),
    };
    let name = match path.file_name() {
        Some(n) if n != ".." => n,
        _ => return Err(refused("the path does not name a file")),
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let walked = walk::walk(parent)?;
    let trust = walked.trust()?;
    // As the directory's owner from here on: the lock and a new file are
    // made as it; never root in a user's directory.
    let _acting = trust.act(parent)?;
    let dir = walked.make_missing(&trust)?;
    trust.check(&dir)?;
    let deadline = Instant::now() + lock_timeout;
    let _dotlock = DotLock::take(&dir, name, path, deadline, lock_timeout, id)?;
    let (file, created) = open_mailbox(&dir, name, path)?;
    let st = rustix::fs::fstat(&file).map_err(|e| io_err("stat", path)(e.into()))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(refused("not a regular file"));
    }
    if st.st_nlink != 1 {
        return Err(refused(&format!("it has {} hard links", st.st_nlink)));
    }
    // The system account of the local user's name, if there is one: its
    // mailbox may be its own (/var/mail/alice, owned by alice).
    let account = crate::privileges::lookup(user).ok();
    let owners = [0, trust.me, dir.uid, account.as_ref().map_or(0, |a| a.uid)];
    if !owners.contains(&st.st_uid) {
        return Err(refused(&format!(
            "owned by uid {}, which is neither root, the owner of {} nor user {user}",
            st.st_uid,
            dir.path.display()
        )));
    }
    if created {
        // Postfix gives a new spool mailbox to its user (possible only
        // as root, which a root-owned mail spool directory means here).
        if let Some(a) = &account
            && crate::privileges::euid() == 0
        {
            std::os::unix::fs::fchown(&file, Some(a.uid), Some(a.gid))
                .map_err(io_err("give to its user", path))?;
        }
        dir.file.sync_all().map_err(io_err("fsync", &dir.path))?;
    }
    lock_file(&file, path, deadline, lock_timeout)?;
    append(file, path, copy, id)
}

/// Opens (or makes) the mailbox, never through a link; true if made.
fn open_mailbox(dir: &Dir, name: &OsStr, path: &Path) -> Result<(File, bool), MboxError> {
    // O_NONBLOCK: a FIFO planted in its place fails instead of blocking.
    let flags = OFlags::WRONLY
        | OFlags::APPEND
        | OFlags::NOFOLLOW
        | OFlags::NOCTTY
        | OFlags::NONBLOCK
        | OFlags::CLOEXEC;
    let mode = Mode::from_raw_mode(0o600);
    let open = |extra: OFlags| rustix::fs::openat(&dir.file, name, flags | extra, mode);
    let opened = match open(OFlags::CREATE | OFlags::EXCL) {
        Ok(fd) => Ok((fd, true)),
        Err(Errno::EXIST) => open(OFlags::empty()).map(|fd| (fd, false)),
        Err(e) => Err(e),
    };
    let (fd, created) = opened.map_err(|e| match e {
        Errno::LOOP => MboxError::Refused {
            path: path.to_path_buf(),
            why: "a symbolic link, not followed".into(),
        },
        e => io_err("open", path)(e.into()),
    })?;
    Ok((File::from(fd), created))
}

/// Appends `copy`, fsyncs it; on any failure, cuts the file back to its
/// length before, so no half message stays.
fn append(mut file: File, path: &Path, copy: &[u8], id: &str) -> Result<(), MboxError> {
    // Read under the lock: what was there before this delivery.
    let before = file.metadata().map_err(io_err("stat", path))?.len();
    let written = file
        .write_all(copy)
        .map_err(io_err("write", path))
        .and_then(|()| file.sync_all().map_err(io_err("fsync", path)));
    if written.is_err() {
        let undone = file.set_len(before).and_then(|()| file.sync_all());
        if let Err(e) = undone {
            tracing::error!(
                "{id}: {}: cannot truncate back to {before} bytes after a failed delivery: {e}",
                path.display()
            );
        }
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use lock::try_lock;
    use std::fs;
    use std::time::SystemTime;

    fn at() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_796_650_496).unwrap()
    }

    #[test]
    fn separator_line_is_postfix_shaped() {
        assert_eq!(
            from_line("a@b.test", at()),
            "From a@b.test  Mon Dec  7 13:34:56 2026\n"
        );
        assert!(from_line("", at()).starts_with("From MAILER-DAEMON  "));
        assert!(from_line("a b@c", at()).starts_with("From a_b@c  "));
    }

    #[test]
    fn from_lines_are_quoted_mboxrd_style_and_lf_ends_the_lines() {
        let out = render(
            "s@x.test",
            at(),
            &[
                b"Return-Path: <s@x.test>\r\n",
                b"Subject: s\r\n\r\nFrom here\r\n>From there\r\n>>From far\r\nFrom:x\r\n From y\r\nlast",
            ],
        );
        let text = String::from_utf8(out).unwrap();
        let body = text.split_once('\n').unwrap().1;
        assert_eq!(
            body,
            "Return-Path: <s@x.test>\nSubject: s\n\n>From here\n>>From there\n>>>From far\nFrom:x\n From y\nlast\n\n"
        );
        // An empty message still ends with the blank line.
        let out = render("", at(), &[]);
        assert!(out.ends_with(b"2026\n\n"));
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("postern-mbox-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn appends_and_makes_the_directories() {
        let base = temp("append");
        let path = base.join("mail/alice");
        let t = Duration::from_secs(2);
        deliver(&path, "no-such-user-x", b"From a  x\nA\n\n", t, "Q").unwrap();
        deliver(&path, "no-such-user-x", b"From b  x\nB\n\n", t, "Q").unwrap();
        assert_eq!(
            fs::read(&path).unwrap(),
            b"From a  x\nA\n\nFrom b  x\nB\n\n"
        );
        assert!(!base.join("mail/alice.lock").exists());
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn links_and_odd_files_are_refused() {
        let base = temp("links");
        fs::create_dir_all(&base).unwrap();
        let target = base.join("target");
        fs::write(&target, b"").unwrap();
        std::os::unix::fs::symlink(&target, base.join("alice")).unwrap();
        let t = Duration::from_secs(1);
        let e = deliver(&base.join("alice"), "x", b"m", t, "Q").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(fs::read(&target).unwrap(), b"");
        fs::hard_link(&target, base.join("bob")).unwrap();
        let e = deliver(&base.join("bob"), "x", b"m", t, "Q").unwrap_err();
        assert!(e.to_string().contains("2 hard links"), "{e}");
        fs::create_dir(base.join("carol")).unwrap();
        assert!(deliver(&base.join("carol"), "x", b"m", t, "Q").is_err());
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn a_held_lock_defers_and_a_stale_dotlock_is_removed() {
        let base = temp("locks");
        fs::create_dir_all(&base).unwrap();
        let path = base.join("alice");
        fs::write(&path, b"old\n").unwrap();
        let holder = fs::OpenOptions::new().write(true).open(&path).unwrap();
        assert!(try_lock(&holder).unwrap());
        let t = Duration::from_millis(300);
        let e = deliver(&path, "x", b"new\n", t, "Q").unwrap_err();
        assert!(matches!(e, MboxError::Locked { which: "fcntl", .. }), "{e}");
        assert!(!base.join("alice.lock").exists());
        drop(holder);
        fs::write(base.join("alice.lock"), b"").unwrap();
        let e = deliver(&path, "x", b"new\n", t, "Q").unwrap_err();
        assert!(
            matches!(
                e,
                MboxError::Locked {
                    which: "dotlock",
                    ..
                }
            ),
            "{e}"
        );
        let old = fs::File::options()
            .write(true)
            .open(base.join("alice.lock"))
            .unwrap();
        old.set_modified(SystemTime::now() - Duration::from_secs(600))
            .unwrap();
        deliver(&path, "x", b"new\n", t, "Q").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"old\nnew\n");
        let _ = fs::remove_dir_all(&base);
    }
}
