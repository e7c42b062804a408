//! Renames that never land on an existing name: a queue file, a state
//! file or a delivered mail is never replaced by accident.

use std::io;
use std::os::fd::AsFd;

use rustix::fs::{AtFlags, RenameFlags};
use rustix::io::Errno;

/// rename(2) of `from` in `from_dir` to `to` in `to_dir` that fails with
/// `AlreadyExists` instead of replacing `to` (`renameat2` with
/// `RENAME_NOREPLACE`; on a file system without it, link(2) then unlink(2),
/// which refuses the same way). Use [`rustix::fs::CWD`] for paths.
pub fn rename_noreplace<P, Q>(
    from_dir: impl AsFd,
    from: P,
    to_dir: impl AsFd,
    to: Q,
) -> io::Result<()>
where
    P: rustix::path::Arg + Copy,
    Q: rustix::path::Arg + Copy,
{
    match rustix::fs::renameat_with(&from_dir, from, &to_dir, to, RenameFlags::NOREPLACE) {
        Err(Errno::INVAL) => {
            rustix::fs::linkat(&from_dir, from, &to_dir, to, AtFlags::empty())?;
            rustix::fs::unlinkat(&from_dir, from, AtFlags::empty())?;
            Ok(())
        }
        r => r.map_err(io::Error::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_to_replace() {
        let dir = std::env::temp_dir().join(format!("postern-noreplace-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::write(&a, b"new").unwrap();
        std::fs::write(&b, b"old").unwrap();
        let e = rename_noreplace(rustix::fs::CWD, &a, rustix::fs::CWD, &b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&b).unwrap(), b"old");
        std::fs::remove_file(&b).unwrap();
        rename_noreplace(rustix::fs::CWD, &a, rustix::fs::CWD, &b).unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), b"new");
        assert!(!a.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
