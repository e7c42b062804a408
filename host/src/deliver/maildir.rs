//! Maildir delivery: write into `tmp/`, fsync, rename into `new/`, fsync
//! `new/` (batched by the [`DirSyncer`]). A `+tag` goes into the Maildir++
//! folder `.tag` when that folder exists.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::spool::DirSyncer;

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
        return Ok(());
    }
    for sub in ["tmp", "cur", "new"] {
        let p = dir.join(sub);
        fs::create_dir_all(&p).map_err(err("create", &p))?;
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

/// A unique Maildir file name (`time.MusecPpidQn.host`).
fn unique_name(hostname: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let host: String = hostname
        .chars()
        .map(|c| match c {
            '/' => "\\057".to_string(),
            ':' => "\\072".to_string(),
            c => c.to_string(),
        })
        .collect();
    format!(
        "{}.M{}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        host
    )
}

/// Delivers `parts` (concatenated) into the Maildir; returns the new file.
/// Blocking: call from a blocking thread.
pub fn deliver(
    maildir: &Path,
    tag: Option<&str>,
    parts: &[&[u8]],
    hostname: &str,
    syncer: &DirSyncer,
) -> Result<PathBuf, MaildirError> {
    ensure_maildir(maildir)?;
    let folder = tag
        .and_then(|t| folder_for_tag(maildir, t))
        .unwrap_or_else(|| maildir.to_path_buf());
    let name = unique_name(hostname);
    let tmp = folder.join("tmp").join(&name);
    let size: usize = parts.iter().map(|p| p.len()).sum();
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err("create", &tmp))?;
    // One write for small messages (headers and content together).
    let whole: Vec<u8> = parts.concat();
    f.write_all(&whole).map_err(err("write", &tmp))?;
    syncer
        .sync_file_blocking(&f, &tmp)
        .map_err(err("fsync", &tmp))?;
    drop(f);
    let new_dir = folder.join("new");
    let dest = new_dir.join(format!("{name},S={size}"));
    if let Err(e) = fs::rename(&tmp, &dest) {
        let _ = fs::remove_file(&tmp);
        return Err(err("rename", &dest)(e));
    }
    syncer
        .sync_blocking(&new_dir)
        .map_err(err("fsync", &new_dir))?;
    Ok(dest)
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
        let p = deliver(
            &dir,
            None,
            &[b"A: b\r\n", b"\r\nhi\r\n"],
            "mx.test",
            &syncer,
        )
        .unwrap();
        assert!(p.starts_with(dir.join("new")));
        assert_eq!(fs::read(&p).unwrap(), b"A: b\r\n\r\nhi\r\n");
        assert!(p.to_string_lossy().ends_with(",S=12"));
        // No folder yet: INBOX.
        let p = deliver(&dir, Some("News"), &[b"x"], "mx.test", &syncer).unwrap();
        assert!(p.starts_with(dir.join("new")));
        for sub in ["cur", "new", "tmp"] {
            fs::create_dir_all(dir.join(".news").join(sub)).unwrap();
        }
        let p = deliver(&dir, Some("News"), &[b"x"], "mx.test", &syncer).unwrap();
        assert!(p.starts_with(dir.join(".news").join("new")));
        assert!(
            deliver(&dir, Some("../x"), &[b"x"], "mx.test", &syncer)
                .unwrap()
                .starts_with(dir.join("new"))
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
