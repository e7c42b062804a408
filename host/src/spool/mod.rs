//! The durable spool: where a message becomes durable before `250`.
//!
//! Layout under `spool_dir`:
//! - `incoming/` files being written; anything here at start-up was never
//!   acknowledged and is removed.
//! - `queue/ID` complete messages awaiting delivery ([`format`]), with an
//!   optional `queue/ID.state` recording deliveries done and retry timing.
//! - `hold/` messages an operator must look at (given up, quarantined).
//! - `corrupt/` files that failed their checksum.
//!
//! A message is acknowledged only after its file is fsynced, renamed into
//! `queue/`, and `queue/` itself is fsynced ([`dirsync`] batches that last
//! step across concurrent sessions).

pub mod format;
pub mod front;
pub mod journal;
mod queue_id;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::durable::dirsync;
pub use crate::durable::dirsync::{DirSyncer, SyncMode};

use crate::durable::noreplace::rename_noreplace;
pub use format::{Client, Envelope, Recipient};
pub use queue_id::{is_queue_id, new_queue_id, note_used};
use rustix::fs::CWD;

/// Spool failures, with the path involved.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// An I/O operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A queue file is damaged.
    #[error("{path}: {source}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: format::FormatError,
    },
    /// Another process holds the spool lock.
    #[error("spool {0} is locked by another postern process")]
    Locked(PathBuf),
    /// A different message holds this queue ID already: nothing was
    /// replaced, and this one was not queued.
    #[error("{0}: a different message is queued under this ID already")]
    Taken(PathBuf),
}

impl SpoolError {
    /// The file system is full (or the quota spent): nothing to write the
    /// message to, rather than a fault (`452 4.3.1`).
    pub fn is_storage_full(&self) -> bool {
        matches!(self, SpoolError::Io { source, .. } if is_storage_full(source))
    }
}

/// True for ENOSPC and EDQUOT.
pub fn is_storage_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Mutable delivery progress of a queued message (`queue/ID.state`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryState {
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Earliest next attempt, seconds since the epoch.
    pub next_attempt: u64,
    /// The last temporary error.
    pub last_error: Option<String>,
    /// Indexes of recipients that are finished (delivered or failed for good).
    pub done: BTreeSet<usize>,
    /// The last outcome of each recipient attempted so far, by index: what
    /// `queue list` shows a deferred recipient with, and what a delivery
    /// status notification reports.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub recipients: BTreeMap<usize, RecipientState>,
    /// Why the message was put on hold, if it was.
    #[serde(default)]
    pub hold_reason: Option<String>,
    /// Recipients whose sender was already told of a delay
    /// (`queue.delay_warning`): once each.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub warned: BTreeSet<usize>,
    /// Written by versions that gave derived Maildir names only to mail
    /// that came through the journal; now every spooled message gets them.
    /// Read (state files are checked for unknown fields) and ignored.
    #[serde(default, skip_serializing)]
    pub journaled: bool,
}

/// The last outcome of one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientState {
    /// `sent`, `deferred` or `bounced`.
    pub status: String,
    /// Enhanced status code (RFC 3463).
    pub dsn: String,
    /// Who answered (`local`, a remote host).
    pub relay: String,
    /// The reply or the reason.
    pub reply: String,
    /// When, seconds since the epoch.
    pub at: u64,
}

impl DeliveryState {
    /// After a first attempt, made before the message was spooled, whose
    /// outcomes are in `self` and which must retry the others.
    pub fn first_attempt_failed(mut self, last_error: String) -> Self {
        self.attempts = 1;
        self.next_attempt = now_secs();
        self.last_error = Some(last_error);
        self
    }
}

/// One line of `postern queue list`.
#[derive(Debug, Clone)]
pub struct QueueEntry {
    /// Queue ID.
    pub id: String,
    /// Size of the content in bytes.
    pub size: u64,
    /// The envelope.
    pub envelope: Envelope,
    /// Delivery progress, if any was recorded.
    pub state: Option<DeliveryState>,
    /// `queue` or `hold`.
    pub area: &'static str,
}

/// A queue file read back from disk.
#[derive(Debug)]
pub struct Loaded {
    /// The envelope.
    pub envelope: Envelope,
    /// The whole file.
    pub file: Vec<u8>,
    /// Where the content is inside `file`.
    pub content: std::ops::Range<usize>,
}

impl Loaded {
    /// The message content.
    pub fn content(&self) -> &[u8] {
        &self.file[self.content.clone()]
    }
}

/// The spool of one daemon.
#[derive(Debug)]
pub struct Spool {
    incoming: PathBuf,
    queue: PathBuf,
    hold: PathBuf,
    corrupt: PathBuf,
    syncer: Option<DirSyncer>,
    /// The journal, once it takes spooled mail ([`front`]).
    front: std::sync::OnceLock<front::Front>,
    _lock: Option<File>,
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Spool {
    /// Opens the spool for the daemon: creates the directories and takes
    /// an exclusive lock so that two daemons never share a spool.
    pub fn open(root: &Path, syncer: DirSyncer) -> Result<Spool, SpoolError> {
        let mut spool = Spool::paths(root);
        for d in [&spool.incoming, &spool.queue, &spool.hold, &spool.corrupt] {
            dirsync::create_dir_durable(d, 0o700, 0o755).map_err(io_err("create", d))?;
        }
        // In filesystem mode, each file system's syncfs descriptor is
        // opened now, before anything is written that it must cover.
        for d in [&spool.incoming, &spool.queue, &spool.hold, &spool.corrupt] {
            dirsync::open_dir(d)
                .and_then(|f| syncer.prepare(std::os::fd::AsFd::as_fd(&f)))
                .map_err(io_err("open", d))?;
        }
        let lock_path = root.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        if !try_lock(&lock) {
            return Err(SpoolError::Locked(root.to_path_buf()));
        }
        spool._lock = Some(lock);
        spool.syncer = Some(syncer);
        // Queue IDs go on above every ID an earlier run handed out, even
        // if the clock was set back meanwhile: the mark in the spool, and
        // the names in it in case the mark was lost.
        let mut used = Vec::new();
        for d in [&spool.queue, &spool.hold] {
            used.extend(list_names(d)?);
        }
        if let Err(e) = queue_id::keep_floor_in(root, used.iter().map(String::as_str)) {
            tracing::error!(
                "queue IDs: cannot keep their high-water mark in {} ({e}); IDs may repeat after a restart with the clock set back",
                root.display()
            );
        }
        Ok(spool)
    }

    /// Opens the spool read-only for the CLI (no lock, nothing created).
    pub fn open_readonly(root: &Path) -> Spool {
        Spool::paths(root)
    }

    fn paths(root: &Path) -> Spool {
        Spool {
            incoming: root.join("incoming"),
            queue: root.join("queue"),
            hold: root.join("hold"),
            corrupt: root.join("corrupt"),
            syncer: None,
            front: std::sync::OnceLock::new(),
            _lock: None,
        }
    }

    fn syncer(&self) -> io::Result<&DirSyncer> {
        self.syncer
            .as_ref()
            .ok_or_else(|| io::Error::other("spool opened read-only"))
    }

    /// Makes a spool directory's entries durable (blocking; group commit).
    fn sync_dir(&self, dir: &Path) -> Result<(), SpoolError> {
        self.syncer()
            .and_then(|s| s.sync_blocking(dir))
            .map_err(io_err("fsync", dir))
    }

    /// From now on, [`Spool::commit`] makes messages durable in `journal`
    /// and keeps them for their first attempt ([`front`]). Once only.
    pub fn attach_journal(&self, journal: journal::Journal) {
        let _ = self.front.set(front::Front::new(journal));
    }

    /// The journal in front of the spool, if one is attached.
    pub fn front(&self) -> Option<&front::Front> {
        self.front.get()
    }

    /// Writes a message durably into `queue/` (or, with a journal
    /// attached, into the journal: [`front`]). Returns only once it is on
    /// disk: the caller may then send 250.
    pub async fn commit(&self, content: Vec<u8>, env: Envelope) -> Result<(), SpoolError> {
        let (content, env) = match self.front.get() {
            Some(front) => match front.commit(content, env).await {
                Ok(()) => return Ok(()),
                Err(back) => back,
            },
            None => (content, env),
        };
        self.commit_to(content, env, None).await
    }

    /// Like [`Spool::commit`], but into `hold/` with a reason (quarantine).
    pub async fn commit_held(
        &self,
        content: Vec<u8>,
        env: Envelope,
        reason: String,
    ) -> Result<(), SpoolError> {
        let state = DeliveryState {
            hold_reason: Some(reason),
            ..DeliveryState::default()
        };
        self.commit_to(content, env, Some(state)).await
    }

    /// Like [`Spool::commit`], with delivery progress already made (some
    /// recipients were delivered before the message was queued).
    pub async fn commit_with_state(
        &self,
        content: Vec<u8>,
        env: Envelope,
        state: DeliveryState,
    ) -> Result<(), SpoolError> {
        self.commit_to(content, env, Some(state)).await
    }

    async fn commit_to(
        &self,
        content: Vec<u8>,
        env: Envelope,
        state: Option<DeliveryState>,
    ) -> Result<(), SpoolError> {
        let (paths, syncer) = self.commit_paths(&env, state.as_ref())?;
        let dir = paths.dir.clone();
        tokio::task::spawn_blocking(move || {
            write_queue_file(&paths, &syncer, &content, &env, state)
        })
        .await
        .map_err(|e| SpoolError::Io {
            op: "commit",
            path: dir,
            source: io::Error::other(e),
        })?
    }

    /// [`Spool::commit_with_state`] on a blocking thread.
    pub fn commit_blocking(
        &self,
        content: &[u8],
        env: &Envelope,
        state: DeliveryState,
    ) -> Result<(), SpoolError> {
        let (paths, syncer) = self.commit_paths(env, Some(&state))?;
        write_queue_file(&paths, &syncer, content, env, Some(state))
    }

    fn commit_paths(
        &self,
        env: &Envelope,
        state: Option<&DeliveryState>,
    ) -> Result<(CommitPaths, DirSyncer), SpoolError> {
        let held = state.is_some_and(|s| s.hold_reason.is_some());
        let dir = if held { &self.hold } else { &self.queue };
        let syncer = self.syncer().map_err(io_err("fsync", dir))?.clone();
        let paths = CommitPaths {
            incoming: self.incoming.join(&env.id),
            incoming_state: self.incoming.join(format!("{}.state", env.id)),
            target: dir.join(&env.id),
            state: dir.join(format!("{}.state", env.id)),
            dir: dir.clone(),
        };
        Ok((paths, syncer))
    }

    /// Keeps bytes that failed their checksum in `corrupt/` for the
    /// operator (blocking); returns where. Never over an earlier file of
    /// the same name: that one gets a suffix.
    pub fn quarantine(&self, name: &str, bytes: &[u8]) -> Result<PathBuf, SpoolError> {
        let tmp = self.incoming.join(format!("corrupt-{name}"));
        let mut f = create_new(&tmp, true)?;
        let written = f
            .write_all(bytes)
            .map_err(io_err("write", &tmp))
            .and_then(|()| f.sync_data().map_err(io_err("fsync", &tmp)));
        drop(f);
        let placed = written.and_then(|()| self.aside(&tmp, name));
        if placed.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        let path = placed?;
        self.sync_dir(&self.corrupt)?;
        Ok(path)
    }

    /// Moves `from` into `corrupt/` as `name`, or `name.1`, `name.2`, ...
    /// if that is taken.
    fn aside(&self, from: &Path, name: &str) -> Result<PathBuf, SpoolError> {
        for n in 0..1000 {
            let to = match n {
                0 => self.corrupt.join(name),
                n => self.corrupt.join(format!("{name}.{n}")),
            };
            match rename_noreplace(CWD, from, CWD, &to) {
                Ok(()) => return Ok(to),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("rename", &to)(e)),
            }
        }
        Err(SpoolError::Taken(self.corrupt.join(name)))
    }

    /// The message is in `queue/` (not held).
    pub fn is_queued(&self, id: &str) -> bool {
        is_queue_id(id) && self.queue.join(id).is_file()
    }

    /// The message is in `hold/`.
    pub fn is_held(&self, id: &str) -> bool {
        is_queue_id(id) && self.hold.join(id).is_file()
    }

    /// Reads a queued or held message with its delivery state and where it
    /// is (`queue` or `hold`), for `postern queue show` (blocking).
    pub fn read_any(
        &self,
        id: &str,
    ) -> Result<(Loaded, Option<DeliveryState>, &'static str), SpoolError> {
        let (dir, area) = if self.is_held(id) {
            (&self.hold, "hold")
        } else {
            (&self.queue, "queue")
        };
        let path = dir.join(id);
        let file = fs::read(&path).map_err(io_err("read", &path))?;
        let (envelope, content) = format::decode(&file).map_err(|source| SpoolError::Format {
            path: path.clone(),
            source,
        })?;
        let state = read_state(&dir.join(format!("{id}.state")))?;
        Ok((
            Loaded {
                envelope,
                file,
                content,
            },
            state,
            area,
        ))
    }

    /// The message is in `queue/` or `hold/`.
    pub fn contains(&self, id: &str) -> bool {
        self.queue.join(id).exists() || self.hold.join(id).exists()
    }

    /// Whether the queue file bytes `file` are queued or held under
    /// `id`: `None` if nothing is, `Some(false)` if a different message
    /// is (an ID reissued, say after the clock was set back).
    pub fn holds(&self, id: &str, file: &[u8]) -> Option<bool> {
        let mut found = None;
        for dir in [&self.queue, &self.hold] {
            match fs::read(dir.join(id)) {
                Ok(bytes) if bytes == file => return Some(true),
                Ok(_) => found = Some(false),
                Err(_) => {}
            }
        }
        found
    }

    /// Reads a queued message (blocking).
    pub fn read(&self, id: &str) -> Result<Loaded, SpoolError> {
        let path = self.queue.join(id);
        let file = fs::read(&path).map_err(io_err("read", &path))?;
        let (envelope, content) = format::decode(&file).map_err(|source| SpoolError::Format {
            path: path.clone(),
            source,
        })?;
        Ok(Loaded {
            envelope,
            file,
            content,
        })
    }

    fn state_path(&self, id: &str) -> PathBuf {
        self.queue.join(format!("{id}.state"))
    }

    /// The delivery state of a queued message, if one was saved.
    pub fn load_state(&self, id: &str) -> Result<Option<DeliveryState>, SpoolError> {
        read_state(&self.state_path(id))
    }

    /// Saves delivery progress durably (blocking; write, fsync, rename).
    pub fn save_state(&self, id: &str, state: &DeliveryState) -> Result<(), SpoolError> {
        let path = self.state_path(id);
        let tmp = self.queue.join(format!("{id}.state.tmp"));
        write_state(&tmp, state)?;
        // Replaces the message's own earlier state, as it should.
        fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
        self.sync_dir(&self.queue)
    }

    /// Removes a message whose delivery is finished (blocking).
    pub fn remove(&self, id: &str) -> Result<(), SpoolError> {
        // The message file goes first: a leftover state file is harmless,
        // a message without its state would be delivered again.
        let path = self.queue.join(id);
        fs::remove_file(&path).map_err(io_err("remove", &path))?;
        let state = self.state_path(id);
        match fs::remove_file(&state) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", &state)(e)),
            _ => Ok(()),
        }
    }

    /// Moves a message to `hold/` with a reason (blocking).
    pub fn hold(&self, id: &str, state: &DeliveryState) -> Result<(), SpoolError> {
        let from = self.queue.join(id);
        let to = self.hold.join(id);
        // Never over a held message: neither its state nor itself.
        if fs::symlink_metadata(&to).is_ok() {
            return Err(SpoolError::Taken(to));
        }
        write_state(&self.hold.join(format!("{id}.state")), state)?;
        place(&from, &to)?;
        let _ = fs::remove_file(self.state_path(id));
        self.sync_dir(&self.hold)?;
        self.sync_dir(&self.queue)
    }

    /// Releases a held message (`postsuper -H`): back into `queue/` for an
    /// attempt now, with its record of delivered recipients and without
    /// its hold reason. Blocking; `false` if no such message is held.
    pub fn release(&self, id: &str) -> Result<bool, SpoolError> {
        if !is_queue_id(id) || !self.hold.join(id).is_file() {
            return Ok(false);
        }
        let held = self.hold.join(format!("{id}.state"));
        let mut state = read_state(&held)?.unwrap_or_default();
        state.hold_reason = None;
        state.next_attempt = 0;
        let to = self.queue.join(id);
        if fs::symlink_metadata(&to).is_ok() {
            return Err(SpoolError::Taken(to));
        }
        // The new state first: a crash before the move leaves an orphan
        // state in queue/ (removed at start), never a message without one.
        write_state(&self.state_path(id), &state)?;
        place(&self.hold.join(id), &to)?;
        self.sync_dir(&self.queue)?;
        let _ = fs::remove_file(&held);
        self.sync_dir(&self.hold)?;
        Ok(true)
    }

    /// Deletes a queued or held message for good (`postsuper -d`).
    /// Blocking; `false` if there is no such message.
    pub fn delete(&self, id: &str) -> Result<bool, SpoolError> {
        if !is_queue_id(id) {
            return Ok(false);
        }
        for dir in [&self.queue, &self.hold] {
            let path = dir.join(id);
            match fs::remove_file(&path) {
                Ok(()) => {
                    let _ = fs::remove_file(dir.join(format!("{id}.state")));
                    self.sync_dir(dir)?;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &path)(e)),
            }
        }
        Ok(false)
    }

    /// Start-up recovery: removes half-received messages, moves corrupt
    /// files aside and returns the IDs of every complete queued message.
    pub fn recover(&self) -> Result<Vec<String>, SpoolError> {
        for entry in fs::read_dir(&self.incoming).map_err(io_err("read", &self.incoming))? {
            let entry = entry.map_err(io_err("read", &self.incoming))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            tracing::warn!(
                "{name}: removing an unfinished queue file left by a crash (a message never acknowledged, or one still held by the journal)"
            );
            let p = entry.path();
            fs::remove_file(&p).map_err(io_err("remove", &p))?;
        }
        let mut ids = Vec::new();
        for name in list_names(&self.queue)? {
            if let Some(id) = name.strip_suffix(".state.tmp") {
                tracing::debug!("{id}: removing unfinished state file");
                let _ = fs::remove_file(self.queue.join(&name));
                continue;
            }
            if let Some(id) = name.strip_suffix(".state") {
                if !self.queue.join(id).exists() {
                    let _ = fs::remove_file(self.queue.join(&name));
                }
                continue;
            }
            if !is_queue_id(&name) {
                tracing::warn!(
                    "ignoring unexpected file {} in the queue",
                    self.queue.join(&name).display()
                );
                continue;
            }
            match self.read(&name) {
                Ok(_) => ids.push(name),
                Err(SpoolError::Format { source, .. }) => {
                    let to = self.aside(&self.queue.join(&name), &name)?;
                    tracing::error!("{name}: {source}; moved to {}", to.display());
                    // With the record of whom it reached already.
                    let state = format!("{name}.state");
                    let _ = self.aside(&self.queue.join(&state), &state);
                }
                // One unreadable file must not keep the MTA down: it is
                // tried (and logged) with the others, with backoff.
                Err(e) => {
                    tracing::error!("{name}: {e}; will be retried");
                    ids.push(name);
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// The IDs of the messages in `queue/`.
    pub fn queued_ids(&self) -> Result<Vec<String>, SpoolError> {
        Ok(list_names(&self.queue)?
            .into_iter()
            .filter(|n| is_queue_id(n))
            .collect())
    }

    /// Everything in `queue/` and `hold/`, for `postern queue list`.
    pub fn list(&self) -> Result<Vec<QueueEntry>, SpoolError> {
        let mut out = Vec::new();
        for (area, dir) in [("queue", &self.queue), ("hold", &self.hold)] {
            if !dir.exists() {
                continue;
            }
            for name in list_names(dir)? {
                if !is_queue_id(&name) {
                    continue;
                }
                let path = dir.join(&name);
                let mut file = match fs::File::open(&path) {
                    Ok(f) => f,
                    // Delivered and removed while we were listing.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err("read", &path)(e)),
                };
                // The envelope only: a listing never reads the messages.
                let Ok((envelope, size)) = format::read_envelope(&mut file) else {
                    continue;
                };
                // One damaged state file must not hide the whole queue.
                let state = read_state(&dir.join(format!("{name}.state"))).unwrap_or_else(|e| {
                    Some(DeliveryState {
                        last_error: Some(format!("unreadable state file: {e}")),
                        ..DeliveryState::default()
                    })
                });
                out.push(QueueEntry {
                    id: name,
                    size,
                    envelope,
                    state,
                    area,
                });
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

/// Where a commit writes.
struct CommitPaths {
    incoming: PathBuf,
    incoming_state: PathBuf,
    target: PathBuf,
    state: PathBuf,
    dir: PathBuf,
}

/// Writes a queue file durably (blocking): into `incoming/`, fdatasync,
/// state file, rename into place, group commit of the directory. Nothing
/// in `queue/` is ever replaced: a queue file already there under this ID
/// is this message's own from an earlier attempt (the journal's hand-off
/// retried: then it stands), or another message's ([`SpoolError::Taken`]).
fn write_queue_file(
    paths: &CommitPaths,
    syncer: &DirSyncer,
    content: &[u8],
    env: &Envelope,
    state: Option<DeliveryState>,
) -> Result<(), SpoolError> {
    let incoming = &paths.incoming;
    let tail = format::encode_tail(content, env);
    let since = syncer.filesystems().ticket();
    let mut f = create_new(incoming, false)?;
    let mut placed_state = false;
    let written = (|| {
        f.write_all(content).map_err(io_err("write", incoming))?;
        f.write_all(&tail).map_err(io_err("write", incoming))?;
        syncer
            .sync_file_blocking(&f, since)
            .map_err(io_err("fsync", incoming))?;
        if let Some(state) = state {
            write_state(&paths.incoming_state, &state)?;
            placed_state = place_state(paths)?;
        }
        match rename_noreplace(CWD, incoming, CWD, &paths.target) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if is_file_of(&paths.target, content, &tail) {
                    let _ = fs::remove_file(incoming);
                    Ok(())
                } else {
                    Err(SpoolError::Taken(paths.target.clone()))
                }
            }
            r => r.map_err(io_err("rename", &paths.target)),
        }
    })();
    drop(f);
    let _ = fs::remove_file(&paths.incoming_state);
    if let Err(e) = written {
        // Nothing half-written stays: a retry of the same queue ID (the
        // journal's hand-off) must find the way clear, and a full disk
        // must not stay full of partial files. A state file goes only if
        // this commit put it there.
        let _ = fs::remove_file(incoming);
        if placed_state {
            let _ = fs::remove_file(&paths.state);
        }
        return Err(e);
    }
    dirsync::open_dir(&paths.dir)
        .and_then(|d| syncer.sync_dir_blocking(&d, since))
        .map_err(io_err("fsync", &paths.dir))
}

/// Moves a commit's state file from `incoming/` into place, never over
/// another: one there without its queue file is a leftover (removed, and
/// the move made again); one with its queue file is that message's (not
/// ours to touch: the queue file's rename decides). True if placed.
fn place_state(paths: &CommitPaths) -> Result<bool, SpoolError> {
    for _ in 0..2 {
        match rename_noreplace(CWD, &paths.incoming_state, CWD, &paths.state) {
            Ok(()) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if fs::symlink_metadata(&paths.target).is_ok() {
                    return Ok(false);
                }
                tracing::warn!(
                    "{}: removing a state file left without its message",
                    paths.state.display()
                );
                fs::remove_file(&paths.state).map_err(io_err("remove", &paths.state))?;
            }
            Err(e) => return Err(io_err("rename", &paths.state)(e)),
        }
    }
    Err(SpoolError::Taken(paths.state.clone()))
}

/// True if the file at `path` holds exactly `content` then `tail`.
fn is_file_of(path: &Path, content: &[u8], tail: &[u8]) -> bool {
    fs::read(path).is_ok_and(|b| {
        b.len() == content.len() + tail.len() && b.starts_with(content) && b.ends_with(tail)
    })
}

/// Moves a queue file from one area to another, never over a message.
fn place(from: &Path, to: &Path) -> Result<(), SpoolError> {
    rename_noreplace(CWD, from, CWD, to).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            SpoolError::Taken(to.to_path_buf())
        } else {
            io_err("rename", to)(e)
        }
    })
}

/// Creates a new file (mode 600), never opening one that is there: with
/// `leftover`, one of the same name is removed first; without, it is an
/// error (a queue file in `incoming/` is this commit's alone).
fn create_new(path: &Path, leftover: bool) -> Result<File, SpoolError> {
    if leftover {
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("remove", path)(e));
            }
            _ => {}
        }
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("create", path))
}

/// Writes a state file as a new file and fdatasyncs it (its directory is
/// the caller's).
fn write_state(path: &Path, state: &DeliveryState) -> Result<(), SpoolError> {
    let json = serde_json::to_vec(state).unwrap_or_default();
    let mut f = create_new(path, true)?;
    f.write_all(&json).map_err(io_err("write", path))?;
    f.sync_data().map_err(io_err("fsync", path))
}

fn read_state(path: &Path) -> Result<Option<DeliveryState>, SpoolError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| SpoolError::Format {
                path: path.to_path_buf(),
                source: format::FormatError::Corrupt(e.to_string()),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

fn list_names(dir: &Path) -> Result<Vec<String>, SpoolError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("read", dir))? {
        let entry = entry.map_err(io_err("read", dir))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

/// Non-blocking exclusive flock; false if another process holds it.
fn try_lock(f: &File) -> bool {
    f.try_lock().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_spool(name: &str) -> (PathBuf, Spool) {
        let dir = std::env::temp_dir().join(format!("postern-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let spool = Spool::open(&dir, DirSyncer::new(SyncMode::File)).unwrap();
        (dir, spool)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn commit_recover_remove() {
        let (dir, spool) = temp_spool("crr");
        let mut env = format::tests::sample();
        env.id = new_queue_id();
        spool
            .commit(b"Subject: x\r\n\r\nhi\r\n".to_vec(), env.clone())
            .await
            .unwrap();
        fs::write(dir.join("incoming").join(new_queue_id()), b"half").unwrap();
        let ids = spool.recover().unwrap();
        assert_eq!(ids, vec![env.id.clone()]);
        assert_eq!(fs::read_dir(dir.join("incoming")).unwrap().count(), 0);
        let loaded = spool.read(&env.id).unwrap();
        assert_eq!(loaded.content(), b"Subject: x\r\n\r\nhi\r\n");
        let state = DeliveryState {
            attempts: 1,
            last_error: Some("x".into()),
            ..DeliveryState::default()
        };
        tokio::task::block_in_place(|| spool.save_state(&env.id, &state)).unwrap();
        assert_eq!(spool.load_state(&env.id).unwrap(), Some(state));
        assert_eq!(spool.list().unwrap().len(), 1);
        tokio::task::block_in_place(|| spool.remove(&env.id)).unwrap();
        assert!(spool.list().unwrap().is_empty());
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn nothing_queued_is_ever_replaced() {
        let (dir, spool) = temp_spool("noreplace");
        let mut env = format::tests::sample();
        env.id = new_queue_id();
        let state = DeliveryState {
            done: BTreeSet::from([0]),
            ..Default::default()
        }
        .first_attempt_failed("x".into());
        spool
            .commit_with_state(b"first\r\n".to_vec(), env.clone(), state.clone())
            .await
            .unwrap();
        let first = fs::read(dir.join("queue").join(&env.id)).unwrap();
        // The same message again (the journal's hand-off retried): fine.
        tokio::task::block_in_place(|| spool.commit_blocking(b"first\r\n", &env, state.clone()))
            .unwrap();
        assert_eq!(spool.holds(&env.id, &first), Some(true));
        // Another message under the same ID: refused, nothing replaced,
        // the first one's state untouched.
        let other = DeliveryState::default();
        let e = spool
            .commit_with_state(b"second\r\n".to_vec(), env.clone(), other)
            .await
            .unwrap_err();
        assert!(matches!(e, SpoolError::Taken(_)), "{e}");
        assert!(
            spool
                .commit(b"second\r\n".to_vec(), env.clone())
                .await
                .is_err()
        );
        assert_eq!(fs::read(dir.join("queue").join(&env.id)).unwrap(), first);
        assert_eq!(spool.load_state(&env.id).unwrap(), Some(state));
        assert_eq!(spool.holds(&env.id, b"other"), Some(false));
        assert_eq!(fs::read_dir(dir.join("incoming")).unwrap().count(), 0);
        // A state file left without its message does not apply to a new
        // message of that ID.
        let mut env2 = env.clone();
        env2.id = new_queue_id();
        fs::write(dir.join("queue").join(format!("{}.state", env2.id)), b"{}").unwrap();
        let fresh = DeliveryState::default().first_attempt_failed("y".into());
        tokio::task::block_in_place(|| spool.commit_blocking(b"third\r\n", &env2, fresh.clone()))
            .unwrap();
        assert_eq!(spool.load_state(&env2.id).unwrap(), Some(fresh));
        // Holding never replaces a held message, nor its state.
        let held = DeliveryState {
            hold_reason: Some("held".into()),
            ..DeliveryState::default()
        };
        tokio::task::block_in_place(|| spool.hold(&env.id, &held)).unwrap();
        fs::copy(
            dir.join("hold").join(&env.id),
            dir.join("queue").join(&env.id),
        )
        .unwrap();
        let e = tokio::task::block_in_place(|| spool.hold(&env.id, &DeliveryState::default()));
        assert!(matches!(e, Err(SpoolError::Taken(_))));
        let kept: DeliveryState = serde_json::from_slice(
            &fs::read(dir.join("hold").join(format!("{}.state", env.id))).unwrap(),
        )
        .unwrap();
        assert_eq!(kept.hold_reason.as_deref(), Some("held"));
        assert!(matches!(
            tokio::task::block_in_place(|| spool.release(&env.id)),
            Err(SpoolError::Taken(_))
        ));
        // Bytes kept aside never replace bytes kept before.
        let a = spool.quarantine("journal-1-0", b"a").unwrap();
        let b = spool.quarantine("journal-1-0", b"b").unwrap();
        assert_ne!(a, b);
        assert_eq!(
            (fs::read(&a).unwrap(), fs::read(&b).unwrap()),
            (b"a".to_vec(), b"b".to_vec())
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn second_daemon_is_refused() {
        let (dir, _spool) = temp_spool("lock");
        assert!(matches!(
            Spool::open(&dir, DirSyncer::new(SyncMode::File)),
            Err(SpoolError::Locked(_))
        ));
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn corrupt_files_are_moved_aside() {
        let (dir, spool) = temp_spool("corrupt");
        let mut env = format::tests::sample();
        env.id = new_queue_id();
        spool
            .commit(b"hello\r\n".to_vec(), env.clone())
            .await
            .unwrap();
        let path = dir.join("queue").join(&env.id);
        let mut bytes = fs::read(&path).unwrap();
        bytes[0] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        assert!(spool.recover().unwrap().is_empty());
        assert!(dir.join("corrupt").join(&env.id).exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
