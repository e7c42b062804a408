//! Running as an unprivileged user: Postern starts as root to bind port 25,
//! then gives root up before it talks to any client or delivers any mail
//! (`[server] user`, like Postfix's `mail_owner`).

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
    Ok(Account {
        name: name.to_string(),
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    })
}

/// Gives `path` (and, with `recursive`, everything below it) to the account.
pub fn chown(path: &Path, account: &Account, recursive: bool) -> anyhow::Result<()> {
    std::os::unix::fs::lchown(path, Some(account.uid), Some(account.gid))
        .with_context(|| format!("cannot give {} to {}", path.display(), account.name))?;
    if recursive && path.is_dir() && !path.is_symlink() {
        for entry in
            std::fs::read_dir(path).with_context(|| format!("cannot read {}", path.display()))?
        {
            let entry = entry.with_context(|| format!("cannot read {}", path.display()))?;
            chown(&entry.path(), account, true)?;
        }
    }
    Ok(())
}

/// Drops root for good: supplementary groups, group, then user (glibc
/// applies each to every thread of the process). Verifies that root
/// cannot be regained.
#[allow(unsafe_code)]
pub fn drop_to(account: &Account) -> anyhow::Result<()> {
    // SAFETY: plain system calls on integers; glibc broadcasts the ID
    // changes to all threads.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 {
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
