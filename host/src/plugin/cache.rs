//! The compile cache on disk: precompiled plugin artifacts (machine code),
//! each sealed with a keyed MAC.
//!
//! An artifact is native code that wasmtime maps executable without any
//! further check, so a file in the cache is loaded only if it carries a
//! MAC (HMAC-SHA256) made with a key only the daemon knows: a key file,
//! mode 0600, that the daemon makes beside its spool. A file it did not
//! write (planted in the directory, shipped in a checkout, restored from
//! another machine, damaged) fails the check and is compiled again and
//! rewritten. The MAC also covers the file's name (the component's
//! content hash and the engine's settings), so one genuine artifact cannot
//! stand in for another.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// File extension of compiled artifacts in the cache directory.
pub const ARTIFACT: &str = "cwasm";

/// Bytes of the key and of a MAC.
const KEY_LEN: usize = 32;
const MAC_LEN: usize = 32;

/// What the MAC covers besides the artifact: a version, so that a future
/// format never accepts this one's files, and the file's name.
const MAC_CONTEXT: &[u8] = b"postern plugin artifact v1\0";

/// Largest file read as an artifact (a Python component's is tens of
/// megabytes): a planted file must not make the daemon read gigabytes.
const MAX_ARTIFACT: u64 = 1 << 30;

/// How compiled plugins are cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheSetting {
    /// Not at all: each component is compiled in memory (a tool run
    /// without a cache of its own).
    None,
    /// In `dir`, sealed with the key in `key`.
    Disk {
        /// The cache directory.
        dir: PathBuf,
        /// The key file (mode 0600).
        key: PathBuf,
        /// Make the key when it does not exist (the daemon, and tools
        /// given a cache of their own); `postern check` only uses one.
        create_key: bool,
    },
}

/// Why the key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or making the key failed.
    #[error("{path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not one only this user can read and write.
    #[error(
        "{path}: not trusted as the plugin cache key: it must be a regular file of {KEY_LEN} bytes, owned by this user (uid {uid}), mode 0600, in a directory others cannot write"
    )]
    Untrusted {
        /// The key file.
        path: PathBuf,
        /// This user.
        uid: u32,
    },
    /// No key yet, and this run does not make one.
    #[error("{path} does not exist (the daemon makes it at its first start)")]
    Missing {
        /// The key file.
        path: PathBuf,
    },
}

/// The cache directory and its key.
pub struct Cache {
    dir: PathBuf,
    key: [u8; KEY_LEN],
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("dir", &self.dir).finish()
    }
}

impl Cache {
    /// Opens the cache of `setting`: `None` for [`CacheSetting::None`] or
    /// when its key cannot be used (logged: compiling then happens in
    /// memory, which costs time, never safety).
    pub fn open(setting: &CacheSetting) -> Option<Cache> {
        let CacheSetting::Disk {
            dir,
            key,
            create_key,
        } = setting
        else {
            return None;
        };
        match read_key(key, *create_key) {
            Ok(k) => Some(Cache {
                dir: dir.clone(),
                key: k,
            }),
            Err(KeyError::Missing { .. }) => {
                tracing::info!(
                    "plugin cache: no key at {} yet; compiling plugins in memory",
                    key.display()
                );
                None
            }
            Err(e) => {
                tracing::warn!("plugin cache not used: {e}; compiling plugins in memory");
                None
            }
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the artifact called `name` lives.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.{ARTIFACT}"))
    }

    fn mac(&self, name: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(MAC_CONTEXT);
        mac.update(name.as_bytes());
        mac.update(b"\0");
        mac
    }

    /// The artifact called `name`, if the cache holds one this daemon
    /// sealed: its bytes, MAC checked and removed. Anything else is
    /// logged and ignored (the caller compiles and stores it again).
    pub fn load(&self, name: &str) -> Option<Vec<u8>> {
        let path = self.path(name);
        let meta = std::fs::symlink_metadata(&path).ok()?;
        if !only_ours(&path, &meta) {
            tracing::warn!(
                "not loading plugin cache file {}: others than this user could have written it (compiling instead)",
                path.display()
            );
            return None;
        }
        if meta.len() > MAX_ARTIFACT {
            tracing::warn!(
                "not loading plugin cache file {}: larger than any artifact (compiling instead)",
                path.display()
            );
            return None;
        }
        let mut bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("cannot read plugin cache file {}: {e}", path.display());
                return None;
            }
        };
        let Some(split) = bytes.len().checked_sub(MAC_LEN) else {
            tracing::warn!(
                "ignoring unusable plugin cache file {}: too short (compiling instead)",
                path.display()
            );
            return None;
        };
        let mut mac = self.mac(name);
        mac.update(&bytes[..split]);
        if mac.verify_slice(&bytes[split..]).is_err() {
            tracing::warn!(
                "ignoring unusable plugin cache file {}: its MAC does not match the cache key (not written with it, or damaged); compiling instead",
                path.display()
            );
            return None;
        }
        bytes.truncate(split);
        touch(&path);
        Some(bytes)
    }

    /// Stores an artifact under `name`, sealed with the MAC.
    pub fn store(&self, name: &str, artifact: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        if !dir_ours(&self.dir) {
            return Err(std::io::Error::other(
                "the cache directory belongs to another user (or others can write to it)",
            ));
        }
        let mut mac = self.mac(name);
        mac.update(artifact);
        let tag = mac.finalize().into_bytes();
        let mut sealed = Vec::with_capacity(artifact.len() + MAC_LEN);
        sealed.extend_from_slice(artifact);
        sealed.extend_from_slice(&tag);
        let path = self.path(name);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        crate::privileges::write_through_new(&tmp, &path, 0o644, &sealed)
    }

    /// Marks the artifacts in `keep` as used now (their mtime), and
    /// removes the artifacts no generation has used for `unused_for`, and
    /// temporary files of writes that never finished (a crash). Blocking
    /// (a directory scan). Returns the number of files and bytes removed.
    pub fn evict(&self, keep: &[&Path], unused_for: Duration) -> (usize, u64) {
        let dir = &self.dir;
        if !dir_ours(dir) {
            return (0, 0);
        }
        let now = std::time::SystemTime::now();
        for path in keep {
            touch(path);
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return (0, 0);
        };
        let (mut files, mut bytes) = (0, 0);
        for e in entries.flatten() {
            let path = e.path();
            // Only names this cache makes: `KEY.cwasm`, and `KEY.tmpPID`
            // left by a write that a crash interrupted (KEY: 64 hex digits).
            let name = e.file_name();
            let Some((key, ext)) = name.to_str().and_then(|n| n.split_once('.')) else {
                continue;
            };
            if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            let stale = match ext {
                ARTIFACT => unused_for,
                t if t.len() > 3
                    && t.starts_with("tmp")
                    && t[3..].bytes().all(|b| b.is_ascii_digit()) =>
                {
                    Duration::from_secs(3600)
                }
                _ => continue,
            };
            if keep.contains(&path.as_path()) {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if !meta.is_file() || age < stale {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    files += 1;
                    bytes += meta.len();
                }
                Err(e) => tracing::warn!("plugin cache: cannot remove {}: {e}", path.display()),
            }
        }
        (files, bytes)
    }
}

/// Reads the key at `path`, or makes it (when `create`).
fn read_key(path: &Path, create: bool) -> Result<[u8; KEY_LEN], KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !create {
                return Err(KeyError::Missing {
                    path: path.to_path_buf(),
                });
            }
            make_key(path).map_err(io)?;
        }
        Err(e) => return Err(io(e)),
    }
    let untrusted = || KeyError::Untrusted {
        path: path.to_path_buf(),
        uid: crate::privileges::euid(),
    };
    let meta = std::fs::symlink_metadata(path).map_err(io)?;
    if !key_file_ok(&meta) || !path.parent().is_some_and(dir_ours) {
        return Err(untrusted());
    }
    let bytes = std::fs::read(path).map_err(io)?;
    bytes.try_into().map_err(|_| untrusted())
}

/// A key file only this user can read or write.
fn key_file_ok(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    m.is_file()
        && m.uid() == crate::privileges::euid()
        && m.mode() & 0o077 == 0
        && m.len() == KEY_LEN as u64
}

/// Makes a new random key at `path`, mode 0600 from its first byte. It
/// appears under its name only complete and on disk, and never replaces
/// a key another process made at the same moment (that one is used).
fn make_key(path: &Path) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let mut key = [0u8; KEY_LEN];
    getrandom::fill(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The spool, at a first start: private, as the spool makes itself.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let written = f.write_all(&key).and_then(|()| f.sync_all());
    drop(f);
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                std::fs::File::open(dir)?.sync_all()?;
            }
            tracing::info!("plugin cache: made a new key {}", path.display());
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// True if only this user (or root) can have written `path`: a regular
/// file (not a link) and its directory, owned by us or root, writable by
/// no group or other. Root (`postern check`) must not load an artifact
/// that the mail account could have replaced, MAC or not.
fn only_ours(path: &Path, meta: &std::fs::Metadata) -> bool {
    meta.is_file() && ours(meta) && path.parent().is_some_and(dir_ours)
}

/// Owned by this user or root, writable by no group or other.
fn ours(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    let me = crate::privileges::euid();
    (m.uid() == me || m.uid() == 0) && m.mode() & 0o022 == 0
}

/// A directory only this user (or root) can change.
fn dir_ours(dir: &Path) -> bool {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::metadata(dir).is_ok_and(|m| m.is_dir() && ours(&m))
}

/// Marks an artifact as used now (its mtime), for [`Cache::evict`].
/// Through a read-only descriptor: the owner may set the times, and
/// machine code is never opened for writing.
fn touch(path: &Path) {
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(dir: &Path, create_key: bool) -> CacheSetting {
        CacheSetting::Disk {
            dir: dir.join("cache"),
            key: dir.join("cache.key"),
            create_key,
        }
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("postern-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn only_artifacts_sealed_with_our_key_load() {
        let d = tmpdir("seal");
        assert!(Cache::open(&disk(&d, false)).is_none(), "no key, none made");
        let cache = Cache::open(&disk(&d, true)).unwrap();
        {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(d.join("cache.key")).unwrap();
            assert_eq!((m.mode() & 0o777, m.len()), (0o600, 32));
        }
        let name = "ab".repeat(32);
        cache.store(&name, b"machine code").unwrap();
        assert_eq!(cache.load(&name).unwrap(), b"machine code");
        // The same key, opened again (a restart): still loads.
        let again = Cache::open(&disk(&d, false)).unwrap();
        assert_eq!(again.load(&name).unwrap(), b"machine code");
        // Another name: the MAC covers it, so a genuine artifact cannot
        // stand in for another component's.
        let other = "cd".repeat(32);
        std::fs::copy(cache.path(&name), cache.path(&other)).unwrap();
        assert!(cache.load(&other).is_none());
        // Changed content (a planted file, a bad block): refused.
        let mut bytes = std::fs::read(cache.path(&name)).unwrap();
        bytes[0] ^= 0xCC;
        std::fs::write(cache.path(&name), &bytes).unwrap();
        assert!(cache.load(&name).is_none());
        // Another key (another daemon's cache): refused.
        cache.store(&name, b"machine code").unwrap();
        std::fs::remove_file(d.join("cache.key")).unwrap();
        let fresh = Cache::open(&disk(&d, true)).unwrap();
        assert!(fresh.load(&name).is_none());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_key_others_could_read_is_not_used() {
        use std::os::unix::fs::PermissionsExt;
        let d = tmpdir("mode");
        assert!(Cache::open(&disk(&d, true)).is_some());
        let key = d.join("cache.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            read_key(&key, true),
            Err(KeyError::Untrusted { .. })
        ));
        assert!(Cache::open(&disk(&d, true)).is_none());
        // Not replaced either: the operator decides what to do with it.
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
