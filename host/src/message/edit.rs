//! The header edits made when a message is queued: fields only the host
//! writes go, plugins' changes apply, an empty line is put where the header
//! section ends without one. One scan finds what there is to do
//! ([`inspect`]), and at most one more builds the new content ([`edit`]):
//! linear in the size of the message whatever the number of fields a
//! client repeats or a plugin touches (a drain or splice per field moved
//! the rest of the message each time).

use std::collections::HashMap;
use std::ops::Range;

use super::header::{header_field, scan_headers};

/// Fields only the host writes: incoming ones are removed ([`edit`]) and
/// plugins may not add, change or remove them. `Return-Path` is added at
/// delivery; a score field from outside must not pass for Postern's.
pub const HOST_ONLY_FIELDS: [&str; 2] = ["Return-Path", "X-Postern-Score"];

/// A header change requested by a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HeaderAction {
    /// Prepend `name: value`.
    Add {
        /// Field name.
        name: String,
        /// Field value.
        value: String,
    },
    /// Replace the n-th field with this name (or add it).
    Change {
        /// Field name.
        name: String,
        /// 0-based occurrence.
        index: u32,
        /// New value.
        value: String,
    },
    /// Remove the n-th field with this name, or all of them.
    Remove {
        /// Field name.
        name: String,
        /// 0-based occurrence; `None` for all.
        index: Option<u32>,
    },
}

impl HeaderAction {
    /// The field name the action is about.
    pub fn name(&self) -> &str {
        match self {
            HeaderAction::Add { name, .. }
            | HeaderAction::Change { name, .. }
            | HeaderAction::Remove { name, .. } => name,
        }
    }

    /// Bytes of its name and value (what the host holds for it).
    pub fn size(&self) -> usize {
        match self {
            HeaderAction::Add { name, value } | HeaderAction::Change { name, value, .. } => {
                name.len() + value.len()
            }
            HeaderAction::Remove { name, .. } => name.len(),
        }
    }

    /// A short description for logs.
    pub fn describe(&self) -> String {
        match self {
            HeaderAction::Add { name, .. } => format!("add {name}"),
            HeaderAction::Change { name, index, .. } => format!("change {name}[{index}]"),
            HeaderAction::Remove {
                name,
                index: Some(i),
            } => format!("remove {name}[{i}]"),
            HeaderAction::Remove { name, index: None } => format!("remove all {name}"),
        }
    }
}

/// What one scan of a message's header section found: the checks made at
/// the end of DATA, before any plugin sees the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inspection {
    /// Header fields in all (`smtp.max_header_fields`).
    pub fields: usize,
    /// Octets of the header section, up to and including the empty line
    /// (`smtp.max_header_size`).
    pub header_size: usize,
    /// `Received:` fields (the hop count, Postfix `hopcount_limit`).
    pub received: usize,
    /// Fields only the host writes ([`HOST_ONLY_FIELDS`]).
    pub host_only: usize,
    /// The section has a `Message-ID:` field.
    pub message_id: bool,
    /// The section has a `Date:` field.
    pub date: bool,
    /// Where a body starts that no empty line separates from the header
    /// section (its first line is not a header field, or a non-field line
    /// interrupts the fields). The stored message gets an empty line
    /// there, so that what follows can never continue or become a header
    /// field (Postern's own trace fields are prepended to the content).
    /// `None` when the message is well formed, or has no body.
    pub missing_separator: Option<usize>,
}

/// Scans the header section once (no copy): see [`Inspection`].
pub fn inspect(content: &[u8]) -> Inspection {
    let mut found = Inspection::default();
    let body = scan_headers(content, |name, _| {
        found.fields += 1;
        if name.eq_ignore_ascii_case(b"received") {
            found.received += 1;
        } else if name.eq_ignore_ascii_case(b"message-id") {
            found.message_id = true;
        } else if name.eq_ignore_ascii_case(b"date") {
            found.date = true;
        } else if HOST_ONLY_FIELDS
            .iter()
            .any(|n| n.as_bytes().eq_ignore_ascii_case(name))
        {
            found.host_only += 1;
        }
    });
    let separated = content.get(..body).is_none_or(|head| {
        body >= content.len()
            || head == b"\r\n"
            || head == b"\n"
            || head.ends_with(b"\n\r\n")
            || head.ends_with(b"\n\n")
    });
    found.missing_separator = (!separated).then_some(body);
    found.header_size = body;
    found
}

/// A message after [`edit`].
#[derive(Debug, Default)]
pub struct Edited {
    /// The new content.
    pub content: Vec<u8>,
    /// Fields to prepend (plugins' additions, and changes of a field the
    /// message does not have), in the order asked.
    pub added: String,
    /// Fields only the host writes that were removed.
    pub host_only_removed: usize,
    /// The edited header section (with `added`) has a `Message-ID:` field.
    pub message_id: bool,
    /// The edited header section (with `added`) has a `Date:` field.
    pub date: bool,
}

/// What happens to the fields of one name.
#[derive(Debug, Default)]
struct NameEdits<'a> {
    /// Fields of this name seen so far in the scan.
    seen: u32,
    /// Host-only: every field goes, whatever a plugin asks.
    host_only: bool,
    /// The latest action removing every field of this name (its order).
    remove_all: Option<usize>,
    /// By occurrence: the latest action on it (its order) and the new
    /// value (`None`: removed).
    at: HashMap<u32, (usize, Option<&'a str>)>,
}

/// Removes host-only fields, applies the plugins' actions and puts in a
/// missing empty line, in at most one scan and one copy (none when there
/// is nothing to change). Indexes refer to the message as the plugins saw
/// it, whatever other actions did before: when two actions touch the same
/// field the later one wins. `found` is [`inspect`] of the same content.
pub fn edit(content: Vec<u8>, found: &Inspection, actions: &[HeaderAction]) -> Edited {
    let mut plan: HashMap<Vec<u8>, NameEdits<'_>> = HashMap::new();
    if found.host_only > 0 {
        for name in HOST_ONLY_FIELDS {
            plan.entry(name.to_ascii_lowercase().into_bytes())
                .or_default()
                .host_only = true;
        }
    }
    for (order, action) in actions.iter().enumerate() {
        let key = || action.name().to_ascii_lowercase().into_bytes();
        match action {
            HeaderAction::Add { .. } => {}
            HeaderAction::Change { index, value, .. } => {
                plan.entry(key())
                    .or_default()
                    .at
                    .insert(*index, (order, Some(value.as_str())));
            }
            HeaderAction::Remove {
                index: Some(index), ..
            } => {
                plan.entry(key())
                    .or_default()
                    .at
                    .insert(*index, (order, None));
            }
            HeaderAction::Remove { index: None, .. } => {
                plan.entry(key()).or_default().remove_all = Some(order);
            }
        }
    }
    let mut out = Edited {
        message_id: found.message_id,
        date: found.date,
        ..Edited::default()
    };
    if !plan.is_empty() || found.missing_separator.is_some() {
        // Edits in the order of the fields: (range, replacement).
        let mut edits: Vec<(Range<usize>, Option<String>)> = Vec::new();
        let (mut message_id, mut date) = (false, false);
        let mut key = Vec::new();
        let body = scan_headers(&content, |name, range| {
            key.clear();
            key.extend(name.iter().map(u8::to_ascii_lowercase));
            let edit = plan.get_mut(key.as_slice()).and_then(|n| {
                let i = n.seen;
                n.seen = n.seen.saturating_add(1);
                if n.host_only {
                    out.host_only_removed += 1;
                    return Some(None);
                }
                let by_index = n.at.get(&i).copied();
                let value = match (by_index, n.remove_all) {
                    (Some((o, v)), Some(all)) if o > all => v,
                    (_, Some(_)) => None,
                    (Some((_, v)), None) => v,
                    (None, None) => return None,
                };
                // Keep the field's own spelling of its name.
                let name = std::str::from_utf8(name).unwrap_or_default();
                Some(value.map(|v| header_field(name, v)))
            });
            let kept = !matches!(edit, Some(None));
            message_id |= kept && name.eq_ignore_ascii_case(b"message-id");
            date |= kept && name.eq_ignore_ascii_case(b"date");
            if let Some(replacement) = edit {
                edits.push((range, replacement));
            }
        });
        (out.message_id, out.date) = (message_id, date);
        out.content = rebuild(&content, &edits, found.missing_separator.map(|_| body));
    } else {
        out.content = content;
    }
    // A change of a field the message does not have (or only the host may
    // have: those went first) adds it.
    let exists = |name: &str, index: u32| {
        plan.get(name.to_ascii_lowercase().as_bytes())
            .is_some_and(|n| !n.host_only && n.seen > index)
    };
    for action in actions {
        match action {
            HeaderAction::Add { name, value } => out.added.push_str(&header_field(name, value)),
            HeaderAction::Change { name, index, value } if !exists(name, *index) => {
                out.added.push_str(&header_field(name, value));
            }
            _ => continue,
        }
        out.message_id |= action.name().eq_ignore_ascii_case("message-id");
        out.date |= action.name().eq_ignore_ascii_case("date");
    }
    out
}

/// The content with each range in `edits` (in order, not overlapping)
/// replaced, and an empty line inserted at `separator`: one copy.
fn rebuild(
    content: &[u8],
    edits: &[(Range<usize>, Option<String>)],
    separator: Option<usize>,
) -> Vec<u8> {
    let grow: usize = edits
        .iter()
        .filter_map(|(_, r)| r.as_ref().map(String::len))
        .sum();
    let mut out = Vec::with_capacity(content.len().saturating_add(grow).saturating_add(2));
    let mut copied = 0;
    for (range, replacement) in edits {
        out.extend_from_slice(content.get(copied..range.start).unwrap_or_default());
        if let Some(r) = replacement {
            out.extend_from_slice(r.as_bytes());
        }
        copied = copied.max(range.end);
    }
    if let Some(at) = separator {
        out.extend_from_slice(content.get(copied..at).unwrap_or_default());
        out.extend_from_slice(b"\r\n");
        copied = copied.max(at);
    }
    out.extend_from_slice(content.get(copied..).unwrap_or_default());
    out
}
