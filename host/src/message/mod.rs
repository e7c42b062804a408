//! The message content: header parsing for plugins, and the header
//! changes plugins ask for, applied when the message is queued.

use std::ops::Range;

/// One header field of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderField {
    /// Field name as written.
    pub name: String,
    /// Value, unfolded, trimmed, without the line ending.
    pub value: String,
    /// The bytes of the whole field, including folding and CRLF.
    pub range: Range<usize>,
}

/// Parses the header section; returns the fields and the offset where the
/// body starts (after the empty line, or the end of the content).
pub fn parse_headers(content: &[u8]) -> (Vec<HeaderField>, usize) {
    let mut fields: Vec<HeaderField> = Vec::new();
    let mut pos = 0;
    while pos < content.len() {
        let end = memchr::memchr(b'\n', &content[pos..])
            .map(|i| pos + i + 1)
            .unwrap_or(content.len());
        let line = &content[pos..end];
        let text = trim_eol(line);
        if text.is_empty() {
            return (fields, end);
        }
        if (text[0] == b' ' || text[0] == b'\t') && !fields.is_empty() {
            if let Some(last) = fields.last_mut() {
                last.value.push(' ');
                last.value.push_str(String::from_utf8_lossy(text).trim());
                last.range.end = end;
            }
        } else if let Some(colon) = text.iter().position(|&b| b == b':') {
            fields.push(HeaderField {
                name: String::from_utf8_lossy(text[..colon].trim_ascii()).into_owned(),
                value: String::from_utf8_lossy(text[colon + 1..].trim_ascii()).into_owned(),
                range: pos..end,
            });
        } else {
            // Not a header line: the body starts here (no empty line).
            return (fields, pos);
        }
        pos = end;
    }
    (fields, content.len())
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// A header change requested by a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// True if `name` is a valid header field name (RFC 5322 ftext).
pub fn valid_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

/// Makes a value safe to put on one header line: line breaks become spaces.
pub fn sanitize_value(value: &str) -> String {
    value
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect()
}

/// Applies header actions: additions go to `prepend` (in order), changes
/// and removals rewrite the header section of `content`.
pub fn apply_actions(content: Vec<u8>, prepend: &mut String, actions: &[HeaderAction]) -> Vec<u8> {
    let mut content = content;
    for action in actions {
        match action {
            HeaderAction::Add { name, value } => {
                prepend.push_str(&format!("{name}: {}\r\n", sanitize_value(value)));
            }
            HeaderAction::Change { name, index, value } => {
                let (fields, _) = parse_headers(&content);
                let hit = fields
                    .iter()
                    .filter(|f| f.name.eq_ignore_ascii_case(name))
                    .nth(*index as usize);
                match hit {
                    // Keep the field's own spelling of its name.
                    Some(f) => {
                        let line = format!("{}: {}\r\n", f.name, sanitize_value(value));
                        content.splice(f.range.clone(), line.into_bytes());
                    }
                    None => prepend.push_str(&format!("{name}: {}\r\n", sanitize_value(value))),
                }
            }
            HeaderAction::Remove { name, index } => {
                let (fields, _) = parse_headers(&content);
                let ranges: Vec<Range<usize>> = fields
                    .iter()
                    .filter(|f| f.name.eq_ignore_ascii_case(name))
                    .enumerate()
                    .filter(|(i, _)| index.is_none_or(|n| *i == n as usize))
                    .map(|(_, f)| f.range.clone())
                    .collect();
                for range in ranges.into_iter().rev() {
                    content.drain(range);
                }
            }
        }
    }
    content
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"Subject: hello\r\n world\r\nX-A: 1\r\nX-A: 2\r\n\r\nbody X-A: 3\r\n";

    #[test]
    fn parses_folded_headers() {
        let (fields, body) = parse_headers(MSG);
        assert_eq!(fields.len(), 3);
        assert_eq!(fields[0].name, "Subject");
        assert_eq!(fields[0].value, "hello world");
        assert_eq!(&MSG[body..], b"body X-A: 3\r\n");
        let (fields, body) = parse_headers(b"no header here\r\n");
        assert!(fields.is_empty());
        assert_eq!(body, 0);
    }

    #[test]
    fn applies_actions() {
        let mut prepend = String::new();
        let out = apply_actions(
            MSG.to_vec(),
            &mut prepend,
            &[
                HeaderAction::Add {
                    name: "X-New".into(),
                    value: "a\r\nb".into(),
                },
                HeaderAction::Change {
                    name: "x-a".into(),
                    index: 1,
                    value: "two".into(),
                },
                HeaderAction::Remove {
                    name: "Subject".into(),
                    index: None,
                },
                HeaderAction::Change {
                    name: "X-Missing".into(),
                    index: 0,
                    value: "v".into(),
                },
            ],
        );
        assert_eq!(prepend, "X-New: a  b\r\nX-Missing: v\r\n");
        assert_eq!(out, b"X-A: 1\r\nX-A: two\r\n\r\nbody X-A: 3\r\n");
        let out = apply_actions(
            MSG.to_vec(),
            &mut prepend,
            &[HeaderAction::Remove {
                name: "X-A".into(),
                index: Some(0),
            }],
        );
        assert_eq!(
            out,
            b"Subject: hello\r\n world\r\nX-A: 2\r\n\r\nbody X-A: 3\r\n"
        );
    }
}
