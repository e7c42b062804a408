//! Maildir delivery: write into `tmp/`, fsync, rename into `new/`, fsync
//! `new/` (batched by the [`DirSyncer`]). A `+tag` goes into the Maildir++
//! folder `.tag` when that folder exists.
//!
//! Mailboxes belong to their users, who can change them at any time: the
//! path is walked by descriptor without following their links
//! ([`walk`]), the delivery is made as the mailbox owner, files are created
//! new (never opened through a link left in their place) and renamed
//! without replacing anything. A path that cannot be walked safely defers
//! the delivery; the reason is in the error, and so in the log line.

mod earlier;
mod known;
mod names;
mod subscribe;
mod tag;
pub(super) mod walk;

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

pub use names::{journal_name, unique_name};

use crate::durable::dirsync::{DirSyncer, Ticket};
use crate::durable::noreplace::rename_noreplace;
use crate::privileges::thread::ActingAs;
use crate::spool::journal::Touched;
use known::{KNOWN, Known};
use walk::{Dir, Folder, Trust};

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

impl MaildirError {
    /// A kept directory was found gone (removed after its check): nothing
    /// was delivered, and a walk of the path may find where to.
    fn gone(&self) -> bool {
        matches!(self.op, "create" | "rename") && self.source.kind() == io::ErrorKind::NotFound
    }
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> MaildirError + 'a {
    move |source| MaildirError {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A path the delivery will not write below, and why.
fn refuse(path: &Path, why: impl Into<String>) -> MaildirError {
    MaildirError {
        op: "refusing to deliver through",
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::PermissionDenied, why.into()),
    }
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

    /// Readies the syncs of a delivery into `folder`, before anything is
    /// written (the file system's syncfs descriptor must predate the data
    /// it reports on).
    fn prepare<'s>(&'s self, folder: &Folder) -> Result<Securing<'s>, MaildirError> {
        match *self {
            Durability::Synced(syncer) | Durability::Requeued(syncer) => syncer
                .prepare(folder.tmp.file.as_fd())
                .map(|since| Securing::Sync(syncer, since))
                .map_err(err("open the file system of", &folder.tmp.path)),
            Durability::Journaled { touched, .. } => {
                for dir in [&folder.tmp, &folder.new] {
                    touched
                        .add_on(dir.dev, dir.file.as_fd())
                        .map_err(err("open the file system of", &dir.path))?;
                }
                Ok(Securing::Bulk)
            }
        }
    }
}

/// How the files of one delivery are made durable.
enum Securing<'a> {
    /// Synced here, failing if a write-back error was reported since the
    /// ticket was taken.
    Sync(&'a DirSyncer, Ticket),
    /// By the journal's bulk sync.
    Bulk,
}

impl Securing<'_> {
    fn file(&self, f: &File, path: &Path) -> Result<(), MaildirError> {
        match self {
            Securing::Sync(syncer, since) => syncer
                .sync_file_blocking(f, *since)
                .map_err(err("fsync", path)),
            Securing::Bulk => Ok(()),
        }
    }

    fn dir(&self, dir: &Dir) -> Result<(), MaildirError> {
        match self {
            Securing::Sync(syncer, since) => syncer
                .sync_shared_dir_blocking(&dir.file, (dir.dev, dir.ino), *since)
                .map_err(err("fsync", &dir.path)),
            Securing::Bulk => Ok(()),
        }
    }
}

/// Delivers `parts` (concatenated) into the Maildir under the file name
/// `name` (plus `,S=size`); returns the new file. Blocking: call from a
/// blocking thread (the thread acts as the mailbox owner meanwhile).
///
/// A Maildir delivered to before is reused while its path still names it
/// ([`known`]); otherwise, or if its directories turn out gone, the path
/// is walked as for a first delivery.
pub fn deliver(
    maildir: &Path,
    tag: Option<&str>,
    create_tag: bool,
    parts: &[&[u8]],
    name: &str,
    how: Durability<'_>,
) -> Result<PathBuf, MaildirError> {
    // cur/ only where an earlier copy is looked for.
    let with_cur = how.look_for_earlier_copy();
    if let Some(known) = KNOWN.get(maildir) {
        let done = known_folder(&known, tag, create_tag, with_cur)
            .and_then(|(_acting, folder)| deliver_into(&folder, parts, name, how));
        match done {
            Err(e) if e.gone() => KNOWN.forget(maildir, &known),
            done => return done,
        }
    }
    let (acting, folder, reached) = walk_to_folder(maildir, tag, create_tag, with_cur)?;
    let done = deliver_into(&folder, parts, name, how);
    // Kept once the thread is itself again: a sweeper thread it starts
    // would inherit the owner's credentials.
    drop(acting);
    if let Some(known) = reached {
        KNOWN.keep(maildir, known);
    }
    done
}

/// The folder to deliver into in a Maildir found unchanged since a walk
/// reached it, and the thread acting as its owner.
fn known_folder(
    known: &Known,
    tag: Option<&str>,
    create_tag: bool,
    with_cur: bool,
) -> Result<(ActingAs, Folder), MaildirError> {
    let acting = known.trust.act(&known.maildir.path)?;
    let folder = folder_for(
        &known.maildir,
        tag,
        create_tag,
        &known.trust,
        with_cur,
        || known.inbox(with_cur),
    )?;
    Ok((acting, folder))
}

/// The folder to deliver into, reached by walking the path (see [`walk`]),
/// the thread acting as its owner, and the Maildir reached if it can be
/// kept for the next delivery.
fn walk_to_folder(
    maildir: &Path,
    tag: Option<&str>,
    create_tag: bool,
    with_cur: bool,
) -> Result<(ActingAs, Folder, Option<Known>), MaildirError> {
    // Before the walk asks who the process is.
    let generation = crate::privileges::identity_generation();
    let walked = walk::walk(maildir)?;
    let trust = walked.trust()?;
    // As the owner from here on: never root in a user's tree. Given back
    // when the delivery returns, or unwinds.
    let acting = trust.act(maildir)?;
    let dir = Arc::new(walked.make_missing(&trust)?);
    let mut reached = None;
    let folder = folder_for(&dir, tag, create_tag, &trust, with_cur, || {
        let inbox = walk::open_folder(&dir, &trust, true, with_cur)?
            .ok_or_else(|| err("open", &maildir.join("new"))(io::ErrorKind::NotFound.into()))?;
        reached = Known::new(trust, dir.clone(), &inbox, generation);
        Ok(inbox)
    })?;
    Ok((acting, folder, reached))
}

/// The folder of `tag` in the Maildir `dir` if it has one (made first
/// with `create_tag`), else the INBOX, from `inbox`.
fn folder_for(
    dir: &Dir,
    tag: Option<&str>,
    create_tag: bool,
    trust: &Trust,
    with_cur: bool,
    inbox: impl FnOnce() -> Result<Folder, MaildirError>,
) -> Result<Folder, MaildirError> {
    let tagged = match tag {
        Some(t) => tag::tag_folder(dir, t, create_tag, trust, with_cur)?,
        None => None,
    };
    match tagged {
        Some(folder) => Ok(folder),
        None => inbox(),
    }
}

/// Writes the message into `folder`.
fn deliver_into(
    folder: &Folder,
    parts: &[&[u8]],
    name: &str,
    how: Durability<'_>,
) -> Result<PathBuf, MaildirError> {
    let size: usize = parts.iter().map(|p| p.len()).sum();
    let final_name = format!("{name},S={size}");
    // One write for small messages (headers and content together).
    let whole: Vec<u8> = parts.concat();
    let securing = how.prepare(folder)?;
    if how.look_for_earlier_copy()
        && let Some((found, f, dir)) = earlier::earlier_copy(folder, &final_name, &whole)
    {
        // Found, but perhaps only in the page cache (a kill, not a power
        // loss): it must become as durable as a new copy would.
        securing.file(&f, &found)?;
        securing.dir(dir)?;
        return Ok(found);
    }
    let tmp = &folder.tmp;
    let tmp_path = tmp.path.join(name);
    let create = || {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        rustix::fs::openat(&tmp.file, name, flags, Mode::from_raw_mode(0o600))
    };
    let fd = match create() {
        // A derived name may find something left by a crash or a failed
        // attempt, or planted: removed, never written through.
        Err(Errno::EXIST) if how.derived_names() => {
            clear_stale(tmp, name)?;
            create()
        }
        r => r,
    }
    .map_err(|e| err("create", &tmp_path)(e.into()))?;
    let mut f = File::from(fd);
    let written = f
        .write_all(&whole)
        .map_err(err("write", &tmp_path))
        .and_then(|()| securing.file(&f, &tmp_path));
    drop(f);
    let remove_tmp = || {
        let _ = rustix::fs::unlinkat(&tmp.file, name, AtFlags::empty());
    };
    if let Err(e) = written {
        // A part of a message must not stay in tmp/ (a full disk would
        // stay full); the delivery is retried as a whole.
        remove_tmp();
        return Err(e);
    }
    let new = &folder.new;
    let mut dest = OsStr::new(&final_name).to_os_string();
    // Never over another mail. A file of this name is either this
    // message's copy damaged by a crash (shorter, or with lost blocks read
    // back as zeros), which is repaired, or another message, which stays:
    // this one then gets a unique name.
    let renamed = match rename_noreplace(&tmp.file, name, &new.file, &*dest) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if earlier::damaged_copy(new, &dest, &whole) {
                rustix::fs::renameat(&tmp.file, name, &new.file, &*dest).map_err(io::Error::from)
            } else {
                tracing::warn!(
                    "{} exists already (another message); delivering under a unique name",
                    new.path.join(&dest).display()
                );
                dest = format!("{},S={size}", unique_name(names::host_of(name))).into();
                rename_noreplace(&tmp.file, name, &new.file, &*dest)
            }
        }
        r => r,
    };
    if let Err(e) = renamed {
        remove_tmp();
        return Err(err("rename", &new.path.join(&dest))(e));
    }
    securing.dir(new)?;
    Ok(new.path.join(dest))
}

/// Removes what a derived name finds in `tmp/`: left by a crash or by an
/// attempt that failed, or planted. Never written through: the new file
/// is created in its place.
fn clear_stale(tmp: &Dir, name: &str) -> Result<(), MaildirError> {
    let path = tmp.path.join(name);
    let kind = match rustix::fs::statat(&tmp.file, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => FileType::from_raw_mode(st.st_mode),
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(err("stat", &path)(e.into())),
    };
    if kind != FileType::RegularFile {
        tracing::warn!(
            "{}: removing a {kind:?} found in place of a delivery's temporary file (not followed)",
            path.display()
        );
    }
    match rustix::fs::unlinkat(&tmp.file, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(err("remove", &path)(e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::SyncMode;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, symlink};

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("postern-md-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    pub(super) fn make_maildir(dir: &Path) {
        for sub in ["tmp", "cur", "new"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
    }

    pub(super) fn count(dir: &Path) -> usize {
        fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
    }

    pub(super) fn is_root() -> bool {
        crate::privileges::euid() == 0
    }

    #[test]
    fn delivers_into_inbox_and_tag_folder() {
        let dir = std::env::temp_dir().join(format!("postern-maildir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let syncer = DirSyncer::new(SyncMode::File);
        let synced = Durability::Synced(&syncer);
        let name = || unique_name("mx.test");
        let p = deliver(
            &dir,
            None,
            false,
            &[b"A: b\r\n", b"\r\nhi\r\n"],
            &name(),
            synced,
        )
        .unwrap();
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
        let p = deliver(&dir, Some("News"), false, &[b"x"], &name(), synced).unwrap();
        assert!(p.starts_with(dir.join("new")));
        for sub in ["cur", "new", "tmp"] {
            fs::create_dir_all(dir.join(".news").join(sub)).unwrap();
        }
        let p = deliver(&dir, Some("News"), false, &[b"x"], &name(), synced).unwrap();
        assert!(p.starts_with(dir.join(".news").join("new")));
        assert!(
            deliver(&dir, Some("../x"), false, &[b"x"], &name(), synced)
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
        let p = deliver(&dir, None, false, &[b"hi\r\n"], &name, first).unwrap();
        assert_eq!(p, dir.join("new").join(format!("{name},S=4")));
        // Delivered again after a crash: the same file, not a second one.
        assert_eq!(
            deliver(&dir, None, false, &[b"hi\r\n"], &name, again).unwrap(),
            p
        );
        assert_eq!(fs::read_dir(dir.join("new")).unwrap().count(), 1);
        // A copy cut short by the crash is written again.
        fs::write(&p, b"h").unwrap();
        deliver(&dir, None, false, &[b"hi\r\n"], &name, again).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"hi\r\n");
        // Already seen by the user (moved to cur/ with flags): it counts.
        let seen = dir.join("cur").join(format!("{name},S=4:2,S"));
        fs::rename(&p, &seen).unwrap();
        assert_eq!(
            deliver(&dir, None, false, &[b"hi\r\n"], &name, again).unwrap(),
            seen
        );
        assert_eq!(fs::read_dir(dir.join("new")).unwrap().count(), 0);
        // ... but only with its content: a name whose data a power loss
        // took is delivered again.
        fs::write(&seen, b"").unwrap();
        assert_eq!(
            deliver(&dir, None, false, &[b"hi\r\n"], &name, again).unwrap(),
            p
        );
        assert_eq!(fs::read(&p).unwrap(), b"hi\r\n");
        // A first delivery never replaces an existing mail.
        let p2 = deliver(&dir, None, false, &[b"ho\r\n"], &name, first).unwrap();
        assert_ne!(p2.file_name(), p.file_name());
        assert_eq!(fs::read(&p).unwrap(), b"hi\r\n");
        assert_eq!(fs::read(&p2).unwrap(), b"ho\r\n");
        // Neither does a repeated one (recovery, spool retries): another
        // message under the name stays; a copy with lost blocks (zeros) is
        // ours and repaired.
        let p3 = deliver(&dir, None, false, &[b"hu\r\n"], &name, again).unwrap();
        assert_ne!(p3.file_name(), p.file_name());
        assert_eq!(fs::read(&p).unwrap(), b"hi\r\n");
        fs::write(&p, b"h\0\0\0").unwrap();
        assert_eq!(
            deliver(&dir, None, false, &[b"hi\r\n"], &name, again).unwrap(),
            p
        );
        assert_eq!(fs::read(&p).unwrap(), b"hi\r\n");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn links_in_the_path_are_never_followed() {
        let base = temp("links");
        // What a link would lead to: a complete Maildir with a folder.
        let victim = base.join("victim");
        make_maildir(&victim);
        make_maildir(&victim.join(".news"));
        let user = base.join("user");
        fs::create_dir_all(&user).unwrap();
        let md = user.join("Maildir");
        // A link the mailbox's user made (as root here, the test gives it
        // away: a link of root's in root's directory would be followed).
        let plant = |target: &Path, at: &Path| {
            symlink(target, at).unwrap();
            if is_root() {
                std::os::unix::fs::lchown(at, Some(65534), Some(65534)).unwrap();
            }
        };
        let syncer = DirSyncer::new(SyncMode::File);
        let synced = Durability::Synced(&syncer);
        let refused = |tag: Option<&str>| {
            let e = deliver(&md, tag, false, &[b"x"], &unique_name("mx.test"), synced).unwrap_err();
            assert!(e.to_string().contains("symbolic link, not followed"), "{e}");
        };
        plant(&victim, &md);
        refused(None);
        fs::remove_file(&md).unwrap();
        make_maildir(&md);
        for sub in ["tmp", "new"] {
            fs::remove_dir(md.join(sub)).unwrap();
            plant(&victim.join(sub), &md.join(sub));
            refused(None);
            fs::remove_file(md.join(sub)).unwrap();
            fs::create_dir(md.join(sub)).unwrap();
        }
        plant(&victim.join(".news"), &md.join(".news"));
        refused(Some("news"));
        refused(Some("NEWS"));
        for d in [
            victim.join("new"),
            victim.join("tmp"),
            victim.join(".news/new"),
        ] {
            assert_eq!(count(&d), 0, "{d:?}");
        }
        // Nothing refused without the links.
        fs::remove_file(md.join(".news")).unwrap();
        deliver(
            &md,
            Some("news"),
            false,
            &[b"x"],
            &unique_name("mx.test"),
            synced,
        )
        .unwrap();
        assert_eq!(count(&md.join("new")), 1);
        if is_root() {
            // The operator's link (root's, in a directory of root's) is.
            let real = base.join("real");
            symlink(&real, base.join("by-root")).unwrap();
            let p = deliver(
                &base.join("by-root"),
                None,
                false,
                &[b"y"],
                &unique_name("h"),
                synced,
            )
            .unwrap();
            assert_eq!(count(&real.join("new")), 1, "{p:?}");
        }
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn a_link_at_the_temporary_name_is_removed_not_written_through() {
        let base = temp("tmpname");
        let md = base.join("Maildir");
        make_maildir(&md);
        let victim = base.join("victim");
        fs::write(&victim, b"precious").unwrap();
        // A derived name is known in advance: an attempt failed, and the
        // user planted the link for the retry.
        let name = journal_name(1700000000, "00000000000000AB_0", "mx.test");
        symlink(&victim, md.join("tmp").join(&name)).unwrap();
        let syncer = DirSyncer::new(SyncMode::File);
        let p = deliver(
            &md,
            None,
            false,
            &[b"mail"],
            &name,
            Durability::Requeued(&syncer),
        )
        .unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read(&p).unwrap(), b"mail");
        assert!(fs::symlink_metadata(md.join("tmp").join(&name)).is_err());
        // A FIFO at the name of an earlier copy neither blocks nor counts.
        let name2 = journal_name(1700000000, "00000000000000AB_1", "mx.test");
        let fifo = md.join("new").join(format!("{name2},S=4"));
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            c.as_c_str(),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let p = deliver(
            &md,
            None,
            false,
            &[b"mail"],
            &name2,
            Durability::Requeued(&syncer),
        )
        .unwrap();
        assert_ne!(p, fifo);
        assert_eq!(fs::read(&p).unwrap(), b"mail");
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn delivered_as_the_mailbox_owner_and_never_through_someone_elses_tree() {
        if !is_root() {
            return; // Acting as another account needs root.
        }
        let base = temp("owner");
        let user = base.join("alice");
        fs::create_dir_all(&user).unwrap();
        std::os::unix::fs::chown(&user, Some(65534), Some(65534)).unwrap();
        let md = user.join("Maildir");
        let syncer = DirSyncer::new(SyncMode::File);
        let synced = Durability::Synced(&syncer);
        let p = deliver(&md, None, false, &[b"x"], &unique_name("h"), synced).unwrap();
        for made in [p.clone(), md.clone(), md.join("new"), md.join("tmp")] {
            let m = fs::metadata(&made).unwrap();
            assert_eq!((m.uid(), m.gid()), (65534, 65534), "{made:?}");
        }
        // The thread is itself again.
        assert_eq!(crate::privileges::euid(), 0);
        // Through a directory of a third account: refused.
        let other = base.join("bob");
        fs::create_dir_all(other.join("alice")).unwrap();
        std::os::unix::fs::chown(&other, Some(1), Some(1)).unwrap();
        std::os::unix::fs::chown(other.join("alice"), Some(65534), Some(65534)).unwrap();
        let e = deliver(
            &other.join("alice/Maildir"),
            None,
            false,
            &[b"x"],
            &unique_name("h"),
            synced,
        )
        .unwrap_err();
        assert!(e.to_string().contains("owned by uid 1"), "{e}");
        assert!(!other.join("alice/Maildir").exists());
        let _ = fs::remove_dir_all(&base);
    }
}
