//! Running as an unprivileged user: Postern starts as root to bind port 25,
//! then gives root up before it talks to any client or delivers any mail
//! (`[server] user`, like Postfix's `mail_owner`).

pub mod thread;

use std::ffi::CString;
use std::path::Path;

use anyhow::Context as _;

/// The account to run as.
#[derive(Debug, Clone)]
pub struct Account {
    /// Its name, for logs.
    pub name: String,
    /// User ID.
    pub uid: u32,
    /// Primary group ID.
    pub gid: u32,
    /// Every group it is in, the primary one included (`/etc/group`).
    pub groups: Vec<u32>,
}

/// Looks the account up in the password database.
#[allow(unsafe_code)]
pub fn lookup(name: &str) -> anyhow::Result<Account> {
    let cname = CString::new(name).context("user name contains a NUL byte")?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0u8; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; getpwnam_r writes the
    // entry into `pwd` and its strings into `buf`, both owned here.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc))
            .with_context(|| format!("cannot look up user {name:?}"));
    }
    if result.is_null() {
        anyhow::bail!("no such user {name:?}");
    }
    let gid = pwd.pw_gid;
    let mut groups: Vec<libc::gid_t> = vec![0; 256];
    let mut n = groups.len() as libc::c_int;
    // SAFETY: `cname` is a valid C string, `groups` holds `n` entries;
    // getgrouplist writes at most `n` and sets `n` to the number found.
    let rc = unsafe { libc::getgrouplist(cname.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
    groups.truncate(if rc < 0 {
        0
    } else {
        usize::try_from(n).unwrap_or(0)
    });
    if !groups.contains(&gid) {
        groups.push(gid);
    }
    Ok(Account {
        name: name.to_string(),
        uid: pwd.pw_uid,
        gid,
        groups,
    })
}

/// Gives `path` (and, with `recursive`, everything below it) to the
/// account, as root, without ever following a link the account could
/// have planted.
///
/// What the account owns already is left alone, contents included: it
/// made them, and root does not go into a directory the account can
/// change. Everything else is given away children first, so each
/// directory is still root's while it is read: the account cannot swap an
/// entry for a symbolic link (to /etc) between the check and the descent.
/// Symbolic links themselves are given (lchown), never followed.
pub fn chown(path: &Path, account: &Account, recursive: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)
        .with_context(|| format!("cannot look at {}", path.display()))?;
    if meta.uid() == account.uid {
        return Ok(());
    }
    if recursive && meta.is_dir() {
        for entry in
            std::fs::read_dir(path).with_context(|| format!("cannot read {}", path.display()))?
        {
            let entry = entry.with_context(|| format!("cannot read {}", path.display()))?;
            chown(&entry.path(), account, true)?;
        }
    }
    std::os::unix::fs::lchown(path, Some(account.uid), Some(account.gid))
        .with_context(|| format!("cannot give {} to {}", path.display(), account.name))
}

/// True if `path` is a directory of the system's own (`/`, `/var`,
/// `/var/spool`, `/etc`, ...), which a typo in `spool_dir` must not give
/// to the mail account.
pub fn system_dir(path: &Path) -> bool {
    const SYSTEM: &[&str] = &[
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/lib",
        "/lib64",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/srv",
        "/sys",
        "/tmp",
        "/usr",
        "/var",
        "/var/cache",
        "/var/lib",
        "/var/log",
        "/var/mail",
        "/var/spool",
        "/var/tmp",
    ];
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    SYSTEM.iter().any(|s| real == Path::new(s))
}

/// Puts `data` at `path` through a new file `tmp` made with `mode`: the
/// file is created new (never opened through a link someone left in its
/// place), has its final mode from its first byte, and replaces `path`
/// only once complete and on disk (a crash never leaves a torn file under
/// the final name: for a plugin artifact that would be machine code).
pub fn write_through_new(tmp: &Path, path: &Path, mode: u32, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(tmp, path)
}

/// True if the account can read the file at `path` (by owner, group
/// (primary or supplementary) or other bits); checked as root, before the
/// drop, for files the daemon reads again later.
pub fn can_read(account: &Account, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let mode = meta.mode();
    if meta.uid() == account.uid {
        return mode & 0o400 != 0;
    }
    if account.groups.contains(&meta.gid()) {
        return mode & 0o040 != 0;
    }
    mode & 0o004 != 0
}

/// Bumped whenever the process changes its identity ([`drop_to`]): what
/// was learnt about "who am I" before (a Maildir's trust) is stale then.
static IDENTITY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Which identity the process has had: equal values, no change between
/// them. One atomic load, where [`euid`] is a system call.
pub fn identity_generation() -> u64 {
    IDENTITY.load(std::sync::atomic::Ordering::SeqCst)
}

/// Drops root for good: supplementary groups (the account's own, as
/// `/etc/group` lists them: so that a key readable by group `ssl-cert`, or
/// saslauthd's socket directory of group `sasl`, stay readable), group,
/// then user (glibc applies each to every thread of the process).
/// Verifies that root cannot be regained.
pub fn drop_to(account: &Account) -> anyhow::Result<()> {
    // Before and after (failed or not): whoever looked in between sees a
    // change either way.
    IDENTITY.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dropped = set_ids(account);
    IDENTITY.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    dropped
}

/// The system calls of [`drop_to`].
#[allow(unsafe_code)]
fn set_ids(account: &Account) -> anyhow::Result<()> {
    let groups: Vec<libc::gid_t> = account.groups.clone();
    // SAFETY: plain system calls on integers and on `groups`, which holds
    // `groups.len()` entries; glibc broadcasts the ID changes to all
    // threads.
    unsafe {
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error()).context("setgroups failed");
        }
        if libc::setgid(account.gid) != 0 {
            return Err(std::io::Error::last_os_error()).context("setgid failed");
        }
        if libc::setuid(account.uid) != 0 {
            return Err(std::io::Error::last_os_error()).context("setuid failed");
        }
        if account.uid != 0 && (libc::setuid(0) == 0 || libc::geteuid() == 0) {
            anyhow::bail!("root privileges could be regained after dropping them");
        }
    }
    Ok(())
}

/// The current effective user ID.
#[allow(unsafe_code)]
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::system_dir;
    use std::path::Path;

    #[test]
    fn system_directories_are_recognised() {
        for p in [
            "/",
            "/var",
            "/var/spool",
            "/etc",
            "/var/spool/",
            "/var/../var/spool",
        ] {
            assert!(system_dir(Path::new(p)), "{p}");
        }
        let own = std::env::temp_dir().join(format!("postern-sysdir-{}", std::process::id()));
        std::fs::create_dir_all(&own).unwrap();
        assert!(!system_dir(&own));
        let _ = std::fs::remove_dir_all(&own);
    }
}
