//! `+tag` folders: the Maildir++ folder `.tag` of a mailbox, found
//! (exact name, then case-insensitive) or made on demand with its
//! `maildirfolder` marker and a `subscriptions` line, as Dovecot's LDA does
//! with `-m`. Every step goes through [`walk`]'s link-refusing handles.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use super::walk::{Dir, Folder, Trust, make_dir, open_dir_at, open_folder};
use super::{MaildirError, err, subscribe};

/// The folder for a tag: `.tag` (exact, then case-insensitive) if it is a
/// folder. One that is a link, or someone else's, refuses the delivery.
pub(super) fn tag_folder(
    maildir: &Dir,
    tag: &str,
    create: bool,
    trust: &Trust,
    with_cur: bool,
) -> Result<Option<Folder>, MaildirError> {
    if tag.is_empty() || tag.contains(['/', '\0']) || tag.starts_with('.') {
        return Ok(None);
    }
    let exact = OsString::from(format!(".{tag}"));
    let open = |name: &OsStr| -> Result<Option<Folder>, MaildirError> {
        let Some(dir) = open_dir_at(maildir, name)? else {
            return Ok(None);
        };
        trust.check(&dir)?;
        open_folder(&dir, trust, false, with_cur)
    };
    if let Some(found) = open(&exact)? {
        return Ok(Some(found));
    }
    let wanted = format!(".{}", tag.to_lowercase());
    let entries = rustix::fs::Dir::read_from(&maildir.file)
        .map_err(|e| err("read", &maildir.path)(e.into()))?;
    for entry in entries.flatten() {
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name != exact
            && name.to_string_lossy().to_lowercase() == wanted
            && let Some(found) = open(name)?
        {
            return Ok(Some(found));
        }
    }
    // Made on demand (Dovecot's LDA with -m, lda_mailbox_autocreate and
    // lda_mailbox_autosubscribe), only for a tag that is a plain folder
    // name: letters, digits, `-` and `_` (a `.` would make a subfolder in
    // Maildir++), at most 64 bytes. The marker comes before `new/`
    // (whose existence says "complete"); a subscription that cannot be
    // written is logged and the mail delivered all the same.
    if create && tag_makes_a_folder(tag) {
        let dir = make_dir(maildir, &exact, trust)?;
        subscribe::mark_folder(&dir)?;
        let folder = open_folder(&dir, trust, true, with_cur)?;
        if let Err(e) = subscribe::subscribe(maildir, tag) {
            tracing::warn!("cannot subscribe folder {tag:?}: {e}");
        }
        return Ok(folder);
    }
    Ok(None)
}

/// True if a folder may be made for `tag`.
pub(super) fn tag_makes_a_folder(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 64
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
