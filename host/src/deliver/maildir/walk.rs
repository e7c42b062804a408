//! Reaching a Maildir without following a link someone else made
//! (Postfix local(8), Dovecot's LDA).
//!
//! The path is walked one component at a time with openat(2) relative to
//! the directory reached so far and `O_NOFOLLOW`, keeping each directory
//! open: what is checked is what is written into, whatever is renamed
//! meanwhile. A symbolic link is followed only where no user can have made
//! it (owned by root, in a directory owned by root: the operator's
//! `/var/mail -> spool/mail`), and then component by component too; any
//! other link refuses the delivery. The mailbox owner is the owner of the
//! deepest directory that exists (the Maildir itself, once made), and the
//! delivery is made as that owner ([`crate::privileges::thread`]). Every
//! directory on the way must belong to root, to Postern's own account or
//! to that owner: anyone else could swap what lies below.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::{MaildirError, err, refuse};
use crate::durable::dirsync::{create_dir_at, wait_until_durable};
use crate::privileges::thread::ActingAs;

/// Symbolic links followed at most on one path (Linux's own limit).
const MAX_LINKS: usize = 40;

/// An open directory and whose it is.
#[derive(Debug)]
pub(in crate::deliver) struct Dir {
    /// The open directory (shared with the syncs of its entries).
    pub file: Arc<File>,
    /// Its owner.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
    /// Its file system.
    pub dev: u64,
    /// Its inode: with `dev`, which directory this is.
    pub ino: u64,
    /// Where it is, for messages.
    pub path: PathBuf,
}

impl Dir {
    fn new(file: File, path: PathBuf) -> Result<Dir, MaildirError> {
        let st = rustix::fs::fstat(&file).map_err(|e| err("stat", &path)(e.into()))?;
        #[allow(clippy::unnecessary_cast)] // c_ulong on some targets
        let dev = st.st_dev as u64;
        Ok(Dir {
            file: Arc::new(file),
            uid: st.st_uid,
            gid: st.st_gid,
            dev,
            ino: st.st_ino,
            path,
        })
    }

    /// Opens a directory by path, following links: only for directories
    /// whose path is the operator's (the start of a walk) and for tests.
    pub(super) fn open(path: &Path) -> Result<Dir, MaildirError> {
        let file = crate::durable::dirsync::open_dir(path).map_err(err("open", path))?;
        Dir::new(file, path.to_path_buf())
    }
}

/// Whose directories a delivery may write below: root's, Postern's own
/// account's, and the mailbox owner's.
#[derive(Debug, Clone, Copy)]
pub(in crate::deliver) struct Trust {
    /// The mailbox owner, whom the delivery acts as.
    pub owner: u32,
    /// The group it acts with.
    pub group: u32,
    /// Postern's own account when the walk was made.
    pub me: u32,
}

impl Trust {
    /// Refuses a directory that belongs to anyone else.
    pub fn check(&self, dir: &Dir) -> Result<(), MaildirError> {
        self.check_owner(dir.uid, &dir.path)
    }

    /// Makes the calling thread act as the mailbox owner (for deliveries
    /// into `path`) until the guard returned is dropped.
    pub fn act(&self, path: &Path) -> Result<ActingAs, MaildirError> {
        crate::privileges::thread::act_as_from(self.me, self.owner, self.group)
            .map_err(err("act as the owner of", path))
    }

    fn check_owner(&self, uid: u32, path: &Path) -> Result<(), MaildirError> {
        if uid == 0 || uid == self.me || uid == self.owner {
            Ok(())
        } else {
            Err(refuse(
                path,
                format!(
                    "owned by uid {uid}, which is neither root nor the mailbox owner (uid {})",
                    self.owner
                ),
            ))
        }
    }
}

/// Opens `name` in `parent` as a directory, never through a link.
/// `None`: no such entry. A link is refused; anything else that is not a
/// directory is an error.
pub(super) fn open_dir_at(parent: &Dir, name: &OsStr) -> Result<Option<Dir>, MaildirError> {
    let path = parent.path.join(name);
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(&parent.file, name, flags, Mode::empty()) {
        Ok(fd) => Dir::new(File::from(fd), path).map(Some),
        Err(Errno::NOENT) => Ok(None),
        Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
            if is_symlink(parent, name) {
                Err(refuse(&path, "a symbolic link, not followed"))
            } else {
                Err(err("open", &path)(e.into()))
            }
        }
        Err(e) => Err(err("open", &path)(e.into())),
    }
}

fn is_symlink(parent: &Dir, name: &OsStr) -> bool {
    rustix::fs::statat(&parent.file, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
}

/// One step of a walk.
#[derive(Debug)]
enum Step {
    /// Back to `/` (an absolute link target).
    Root,
    /// Into this entry (`..` included: the walk is physical).
    Name(OsString),
}

fn steps(path: &Path) -> impl DoubleEndedIterator<Item = Step> + '_ {
    path.components().filter_map(|c| match c {
        Component::RootDir => Some(Step::Root),
        Component::CurDir | Component::Prefix(_) => None,
        Component::ParentDir => Some(Step::Name("..".into())),
        Component::Normal(n) => Some(Step::Name(n.to_os_string())),
    })
}

/// How far a path exists, walked without following a user's link.
#[derive(Debug)]
pub(in crate::deliver) struct Walked {
    /// The deepest directory of the path that exists.
    pub deepest: Dir,
    /// The components below it, to be made.
    pub missing: Vec<OsString>,
    /// Every directory passed on the way (and its owner).
    passed: Vec<(PathBuf, u32)>,
}

/// Walks `path` as far as it exists (see the module's documentation).
pub(in crate::deliver) fn walk(path: &Path) -> Result<Walked, MaildirError> {
    let mut cur = if path.is_absolute() {
        Dir::open(Path::new("/"))?
    } else {
        let mut d = Dir::open(Path::new("."))?;
        d.path = PathBuf::new();
        d
    };
    let mut todo: VecDeque<Step> = steps(path).collect();
    let mut passed = Vec::new();
    let mut links = 0;
    while let Some(step) = todo.pop_front() {
        let name = match step {
            Step::Root => {
                cur = Dir::open(Path::new("/"))?;
                continue;
            }
            Step::Name(name) => name,
        };
        match open_dir_at(&cur, &name) {
            Ok(Some(next)) => {
                passed.push((next.path.clone(), next.uid));
                cur = next;
            }
            Ok(None) => {
                let mut missing = vec![name];
                for step in todo {
                    match step {
                        Step::Name(n) if n != ".." => missing.push(n),
                        _ => {
                            return Err(refuse(
                                path,
                                "goes up or jumps after a component that does not exist",
                            ));
                        }
                    }
                }
                return Ok(Walked {
                    deepest: cur,
                    missing,
                    passed,
                });
            }
            Err(e) if is_symlink(&cur, &name) => {
                // Made by root where only root can write: the operator's.
                let st = rustix::fs::statat(&cur.file, &*name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| err("stat", &cur.path.join(&name))(e.into()))?;
                if st.st_uid != 0 || cur.uid != 0 || links >= MAX_LINKS {
                    return Err(e);
                }
                links += 1;
                let target = rustix::fs::readlinkat(&cur.file, &*name, Vec::new())
                    .map_err(|e| err("read link", &cur.path.join(&name))(e.into()))?;
                let target = PathBuf::from(OsString::from_vec(target.into_bytes()));
                for step in steps(&target).rev() {
                    todo.push_front(step);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Walked {
        deepest: cur,
        missing: Vec::new(),
        passed,
    })
}

impl Walked {
    /// Whom the delivery acts as (the owner of the deepest directory), once
    /// every directory passed is found to be root's, our own or that
    /// owner's.
    pub fn trust(&self) -> Result<Trust, MaildirError> {
        self.trust_for(self.deepest.uid, self.deepest.gid)
    }

    /// Whom a delivery acts as when the mailbox owner is known otherwise
    /// (an mbox file's owner), once every directory passed is found to be
    /// root's, our own or that owner's.
    pub fn trust_for(&self, owner: u32, group: u32) -> Result<Trust, MaildirError> {
        let trust = Trust {
            owner,
            group,
            me: crate::privileges::euid(),
        };
        for (path, uid) in &self.passed {
            trust.check_owner(*uid, path)?;
        }
        Ok(trust)
    }

    /// Makes the missing directories (as whoever the thread acts as now)
    /// and returns the last: the Maildir.
    pub fn make_missing(self, trust: &Trust) -> Result<Dir, MaildirError> {
        let mut cur = self.deepest;
        for name in self.missing {
            cur = make_dir(&cur, &name, trust)?;
        }
        Ok(cur)
    }
}

/// Makes `name` in `parent` (private, durable) unless it exists, and
/// opens it.
pub(super) fn make_dir(parent: &Dir, name: &OsStr, trust: &Trust) -> Result<Dir, MaildirError> {
    if open_dir_at(parent, name)?.is_none() {
        create_dir_at(&parent.file, name, 0o700).map_err(err("create", &parent.path.join(name)))?;
    } else {
        // Perhaps made by another delivery of this process a moment ago.
        wait_until_durable();
    }
    let dir = open_dir_at(parent, name)?
        .ok_or_else(|| err("open", &parent.path.join(name))(io::ErrorKind::NotFound.into()))?;
    trust.check(&dir)?;
    Ok(dir)
}

/// A Maildir folder (the INBOX or a `.tag` one) and its directories.
#[derive(Debug)]
pub(super) struct Folder {
    /// `tmp/` (shared with [`super::known`]'s Maildirs).
    pub tmp: Arc<Dir>,
    /// `new/`.
    pub new: Arc<Dir>,
    /// `cur/`, if there is one.
    pub cur: Option<Dir>,
}

/// Opens `tmp/ new/` of the folder `dir`, and `cur/` if `with_cur`. When
/// `new/` is missing and `create` is set, makes them first (`new/` last:
/// concurrent deliveries take its existence for "complete"); otherwise
/// `None`.
pub(super) fn open_folder(
    dir: &Dir,
    trust: &Trust,
    create: bool,
    with_cur: bool,
) -> Result<Option<Folder>, MaildirError> {
    let new = match open_dir_at(dir, OsStr::new("new"))? {
        Some(new) => {
            wait_until_durable();
            new
        }
        None if create => {
            for sub in ["tmp", "cur", "new"] {
                make_dir(dir, OsStr::new(sub), trust)?;
            }
            open_dir_at(dir, OsStr::new("new"))?
                .ok_or_else(|| err("open", &dir.path.join("new"))(io::ErrorKind::NotFound.into()))?
        }
        None => return Ok(None),
    };
    trust.check(&new)?;
    let tmp = open_dir_at(dir, OsStr::new("tmp"))?
        .ok_or_else(|| err("open", &dir.path.join("tmp"))(io::ErrorKind::NotFound.into()))?;
    trust.check(&tmp)?;
    let cur = match with_cur {
        true => open_dir_at(dir, OsStr::new("cur"))?,
        false => None,
    };
    if let Some(cur) = &cur {
        trust.check(cur)?;
    }
    Ok(Some(Folder {
        tmp: Arc::new(tmp),
        new: Arc::new(new),
        cur,
    }))
}
