//! Acting as another account on the calling thread only.
//!
//! A delivery into a tree a local user owns is made as that user (Postfix
//! local(8), Dovecot's LDA), so that no link the user planted can make
//! root write where the user could not. glibc's `set*id` wrappers change
//! every thread of the process; the raw system calls change only the
//! calling thread's credentials (Linux keeps them per thread), which is
//! what a delivery thread among session threads needs. The real and saved
//! user IDs stay root's, so the thread can come back, and no other process
//! of the account can signal or trace it meanwhile.

use std::io;
use std::marker::PhantomData;

/// The calling thread acts as another account until this is dropped (on
/// the same thread: it is neither `Send` nor `Sync`). Dropping it, also
/// while a panic unwinds, gives the thread its own identity back; if that
/// fails the process aborts rather than go on with a thread of the wrong
/// identity.
#[derive(Debug)]
#[must_use = "the identity is given back when this is dropped"]
pub struct ActingAs {
    /// What to give back; `None` if nothing was changed.
    saved: Option<Saved>,
    _not_send: PhantomData<*const ()>,
}

#[derive(Debug)]
struct Saved {
    euid: u32,
    egid: u32,
    groups: Vec<u32>,
}

/// Makes the calling thread act as `uid`:`gid` (with `gid` as its only
/// group) if it runs as root now and `uid` is not root; otherwise changes
/// nothing. Blocking-thread code only: a tokio worker must never carry
/// another identity into the next task it runs.
pub fn act_as(uid: u32, gid: u32) -> io::Result<ActingAs> {
    let euid = if uid == 0 { 0 } else { super::euid() };
    act_as_from(euid, uid, gid)
}

/// [`act_as`] for a caller that knows the thread's effective user ID
/// (`euid`: the process's own, learnt under the same
/// [`super::identity_generation`]), sparing the system call that asks.
/// Nothing changes when the thread is not root or already is `uid`.
pub fn act_as_from(euid: u32, uid: u32, gid: u32) -> io::Result<ActingAs> {
    if euid != 0 || uid == 0 {
        return Ok(ActingAs {
            saved: None,
            _not_send: PhantomData,
        });
    }
    let saved = Saved {
        euid,
        egid: sys::egid(),
        groups: sys::groups()?,
    };
    // From here on, a failure gives back what was changed.
    let mut acting = ActingAs {
        saved: Some(saved),
        _not_send: PhantomData,
    };
    let changed = sys::set_groups(&[gid])
        .and_then(|()| sys::set_egid(gid))
        .and_then(|()| sys::set_euid(uid));
    if let Err(e) = changed {
        acting.give_back();
        return Err(e);
    }
    Ok(acting)
}

impl ActingAs {
    fn give_back(&mut self) {
        let Some(saved) = self.saved.take() else {
            return;
        };
        let back = sys::set_euid(saved.euid)
            .and_then(|()| sys::set_egid(saved.egid))
            .and_then(|()| sys::set_groups(&saved.groups));
        if let Err(e) = back {
            tracing::error!(
                "cannot give a delivery thread its identity back ({e}); stopping rather than go on with the wrong one"
            );
            std::process::abort();
        }
    }
}

impl Drop for ActingAs {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// The raw system calls, which (unlike glibc's wrappers) change only the
/// calling thread.
#[allow(unsafe_code)]
mod sys {
    use std::io;

    /// -1: "leave this ID as it is".
    const KEEP: libc::c_long = -1;

    fn check(rc: libc::c_long) -> io::Result<()> {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub(super) fn set_euid(uid: u32) -> io::Result<()> {
        // SAFETY: setresuid takes three integers and touches no memory.
        check(unsafe { libc::syscall(libc::SYS_setresuid, KEEP, libc::c_long::from(uid), KEEP) })
    }

    pub(super) fn set_egid(gid: u32) -> io::Result<()> {
        // SAFETY: setresgid takes three integers and touches no memory.
        check(unsafe { libc::syscall(libc::SYS_setresgid, KEEP, libc::c_long::from(gid), KEEP) })
    }

    pub(super) fn set_groups(groups: &[u32]) -> io::Result<()> {
        // SAFETY: the kernel reads `groups.len()` gid_t (u32) values from
        // the slice's pointer, all of them valid for the call.
        check(unsafe {
            libc::syscall(
                libc::SYS_setgroups,
                groups.len() as libc::c_long,
                groups.as_ptr(),
            )
        })
    }

    pub(super) fn egid() -> u32 {
        // SAFETY: getegid cannot fail and touches no memory; it reads the
        // calling thread's credentials.
        unsafe { libc::getegid() }
    }

    pub(super) fn groups() -> io::Result<Vec<u32>> {
        let mut groups = vec![0u32; 1024];
        // SAFETY: the kernel writes at most `groups.len()` gid_t (u32)
        // values into the slice, which is valid for that many.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getgroups,
                groups.len() as libc::c_long,
                groups.as_mut_ptr(),
            )
        };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        groups.truncate(n);
        Ok(groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn only_the_calling_thread_changes_and_it_comes_back() {
        if super::super::euid() != 0 {
            return; // Needs root.
        }
        let dir = std::env::temp_dir().join(format!("postern-act-as-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        let (inside, back) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        std::thread::scope(|s| {
            let t = s.spawn(|| {
                let acting = act_as(65534, 65534).unwrap();
                assert_eq!(super::super::euid(), 65534);
                std::fs::write(dir.join("made"), b"x").unwrap();
                inside.wait();
                back.wait();
                drop(acting);
                assert_eq!(super::super::euid(), 0);
                // A panic while acting gives the identity back too.
                let r = std::panic::catch_unwind(|| {
                    let _acting = act_as(65534, 65534).unwrap();
                    panic!("in the middle of a delivery");
                });
                assert!(r.is_err());
                assert_eq!(super::super::euid(), 0);
                assert_eq!(sys::egid(), 0);
            });
            inside.wait();
            // Meanwhile this thread is still root.
            assert_eq!(super::super::euid(), 0);
            back.wait();
            t.join().unwrap();
        });
        let meta = std::fs::metadata(dir.join("made")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
        // Root's own tree: nothing changes.
        let same = act_as(0, 0).unwrap();
        assert!(same.saved.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
