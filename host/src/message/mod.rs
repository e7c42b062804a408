//! The message content: header parsing for plugins, and the header
//! changes plugins ask for, applied when the message is queued.

use std::ops::Range;

pub mod limits;

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
    parse_headers_up_to(content, usize::MAX)
}

/// [`parse_headers`] keeping at most `max` fields (the body still starts
/// after the whole header section): what a client sends must not decide
/// how much memory the host spends on it.
pub fn parse_headers_up_to(content: &[u8], max: usize) -> (Vec<HeaderField>, usize) {
    let mut fields: Vec<HeaderField> = Vec::new();
    let body = scan_headers(content, |name, range| {
        if fields.len() < max {
            fields.push(HeaderField {
                name: String::from_utf8_lossy(name).into_owned(),
                value: unfold(&content[range.start + name.len()..range.end]),
                range,
            });
        }
    });
    (fields, body)
}

/// Walks the header section without copying: calls `each(name, field)`
/// for every field, with its name as written and the byte range of the
/// whole field (continuation lines and line endings included), and
/// returns where the body starts (after the empty line; at the first line
/// that is not a field, when no empty line ends the section; or the end).
pub fn scan_headers(content: &[u8], mut each: impl FnMut(&[u8], Range<usize>)) -> usize {
    // The field being read: its name's length and where it started.
    let mut open: Option<(usize, usize)> = None;
    let mut pos = 0;
    let mut done = |open: &mut Option<(usize, usize)>, end: usize| {
        if let Some((name_len, start)) = open.take() {
            each(&content[start..start + name_len], start..end);
        }
    };
    while pos < content.len() {
        let end = memchr::memchr(b'\n', &content[pos..])
            .map(|i| pos + i + 1)
            .unwrap_or(content.len());
        let text = trim_eol(&content[pos..end]);
        if text.is_empty() {
            done(&mut open, pos);
            return end;
        }
        if text[0] == b' ' || text[0] == b'\t' {
            if open.is_none() {
                // A continuation of nothing: the body starts here.
                return pos;
            }
        } else if let Some(colon) = field_colon(text) {
            done(&mut open, pos);
            open = Some((text[..colon].trim_ascii_end().len(), pos));
        } else {
            // Not a header line: the body starts here (no empty line).
            done(&mut open, pos);
            return pos;
        }
        pos = end;
    }
    done(&mut open, content.len());
    content.len()
}

/// A field's value from the bytes after its name: after the colon,
/// unfolded (each line trimmed, lines joined by one space).
fn unfold(rest: &[u8]) -> String {
    let rest = rest.trim_ascii_start();
    let rest = rest.strip_prefix(b":").unwrap_or(rest);
    let mut value = String::new();
    for (i, line) in rest.split(|&b| b == b'\n').enumerate() {
        let line = trim_eol(line).trim_ascii();
        if i > 0 {
            if line.is_empty() {
                continue;
            }
            if !value.is_empty() {
                value.push(' ');
            }
        }
        value.push_str(&String::from_utf8_lossy(line));
    }
    value
}

/// Fields only the host writes: incoming ones are removed
/// ([`remove_fields`]) and plugins may not add, change or remove them.
/// `Return-Path` is added at delivery; a score field from outside must not
/// pass for Postern's.
pub const HOST_ONLY_FIELDS: [&str; 2] = ["Return-Path", "X-Postern-Score"];

/// Removes every field of the header section named one of `names`
/// (case-insensitively); returns how many went.
pub fn remove_fields(content: &mut Vec<u8>, names: &[&str]) -> usize {
    let mut ranges: Vec<Range<usize>> = Vec::new();
    scan_headers(content, |name, range| {
        if names
            .iter()
            .any(|n| n.as_bytes().eq_ignore_ascii_case(name))
        {
            ranges.push(range);
        }
    });
    for range in ranges.iter().rev() {
        content.drain(range.clone());
    }
    ranges.len()
}

/// The colon of a header field line: after a name of RFC 5322 ftext
/// (printable ASCII but `:`), with optional blanks before the colon (the
/// obsolete syntax). `None` for anything else, which starts the body.
fn field_colon(text: &[u8]) -> Option<usize> {
    let colon = memchr::memchr(b':', text)?;
    let name = text[..colon].trim_ascii_end();
    (!name.is_empty() && name.iter().all(|&b| ftext(b))).then_some(colon)
}

/// A byte of a field name (RFC 5322 ftext): printable ASCII but `:`.
fn ftext(b: u8) -> bool {
    (33..=126).contains(&b) && b != b':'
}

/// Where a body starts that no empty line separates from the header
/// section: the first line is not a header field (or a non-field line
/// interrupts the fields). The stored message gets an empty line there,
/// so that what follows can never continue or become a header field
/// (Postern's own trace fields are prepended to the content). `None`
/// when the message is well formed, or has no body.
pub fn missing_separator(content: &[u8]) -> Option<usize> {
    let body = scan_headers(content, |_, _| {});
    if body >= content.len() {
        return None;
    }
    let head = &content[..body];
    let separated =
        head == b"\r\n" || head == b"\n" || head.ends_with(b"\n\r\n") || head.ends_with(b"\n\n");
    (!separated).then_some(body)
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

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

/// True if `name` is a valid header field name (RFC 5322 ftext), of a
/// length that leaves room for a value on its line.
pub fn valid_header_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 76 && name.bytes().all(ftext)
}

/// Makes a value safe to put in a header field or a log line: control
/// characters (line breaks, NUL, escape sequences) become spaces; a tab
/// stays.
pub fn sanitize_value(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
        .collect()
}

/// `name: value` as a header field with CRLF, folded at spaces so that
/// lines stay within 78 characters where the value allows (RFC 5322
/// §2.2.3); a run without spaces is never broken.
pub fn header_field(name: &str, value: &str) -> String {
    let value = sanitize_value(value);
    // Trailing blanks would fold into a line of only blanks, which some
    // parsers take for the end of the header section.
    let value = value.trim_end_matches([' ', '\t']);
    let mut out = String::with_capacity(name.len() + value.len() + 8);
    out.push_str(name);
    out.push(':');
    let mut line = out.len();
    for (i, word) in value.split(' ').enumerate() {
        // Fold only before a word: a fold at an empty word (a run of
        // blanks) could leave a line of only blanks.
        if i > 0 && !word.is_empty() && line + 1 + word.len() > 78 && line > 1 {
            out.push_str("\r\n");
            line = 0;
        }
        out.push(' ');
        out.push_str(word);
        line += 1 + word.len();
    }
    out.push_str("\r\n");
    out
}

/// Applies header actions: additions go to `prepend` (in order), changes
/// and removals rewrite the header section of `content`. Indexes refer to
/// the message as the plugins saw it, whatever other actions did before:
/// every field is resolved against the one parse, and when two actions
/// touch the same field the later one wins.
pub fn apply_actions(content: Vec<u8>, prepend: &mut String, actions: &[HeaderAction]) -> Vec<u8> {
    let mut content = content;
    let (fields, _) = parse_headers(&content);
    let nth = |name: &str| -> Vec<&HeaderField> {
        fields
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case(name))
            .collect()
    };
    // Edits by the start of the field they replace (None: removed).
    let mut edits: std::collections::BTreeMap<usize, (Range<usize>, Option<String>)> =
        std::collections::BTreeMap::new();
    for action in actions {
        match action {
            HeaderAction::Add { name, value } => {
                prepend.push_str(&header_field(name, value));
            }
            HeaderAction::Change { name, index, value } => match nth(name).get(*index as usize) {
                // Keep the field's own spelling of its name.
                Some(f) => {
                    let line = header_field(&f.name, value);
                    edits.insert(f.range.start, (f.range.clone(), Some(line)));
                }
                None => prepend.push_str(&header_field(name, value)),
            },
            HeaderAction::Remove { name, index } => {
                for (i, f) in nth(name).into_iter().enumerate() {
                    if index.is_none_or(|n| i == n as usize) {
                        edits.insert(f.range.start, (f.range.clone(), None));
                    }
                }
            }
        }
    }
    // Last field first, so that earlier ranges stay valid.
    for (range, line) in edits.into_values().rev() {
        content.splice(range, line.map(String::into_bytes).unwrap_or_default());
    }
    content
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_header_section_ends_at_the_first_line_that_is_not_a_field() {
        // A leading continuation line continues nothing: no headers.
        let msg = b"\t(Authenticated sender: ceo@example.test)\r\nDate: x\r\n\r\nbody\r\n";
        assert_eq!(parse_headers(msg), (vec![], 0));
        assert_eq!(missing_separator(msg), Some(0));
        // A name with blanks or parentheses is not a field name.
        let msg = b"Subject: hi\r\n(odd) name: v\r\nDate: x\r\n";
        let (fields, body) = parse_headers(msg);
        assert_eq!(fields.len(), 1);
        assert_eq!(body, 13);
        assert_eq!(missing_separator(msg), Some(13));
        // A value that starts on a continuation line has no leading blank.
        let (fields, _) = parse_headers(b"Subject:\r\n  hi\r\n there\r\n\r\nb");
        assert_eq!(fields[0].value, "hi there");
        // The obsolete blank before the colon is still a field.
        let (fields, _) = parse_headers(b"Subject : hi\r\n there\r\n\r\nb");
        assert_eq!(
            (fields[0].name.as_str(), fields[0].value.as_str()),
            ("Subject", "hi there")
        );
        // Well formed, headers only, empty: nothing to insert.
        assert_eq!(missing_separator(b"Subject: hi\r\n\r\nbody\r\n"), None);
        assert_eq!(missing_separator(b"\r\nbody\r\n"), None);
        assert_eq!(missing_separator(b"Subject: hi\r\n"), None);
        assert_eq!(missing_separator(b""), None);
    }

    #[test]
    fn fields_only_postern_writes_are_removed() {
        let mut msg =
            b"Return-Path: <x@y>\r\nSubject: s\r\nx-postern-score: -50\r\n more\r\n\r\nReturn-Path: body\r\n"
                .to_vec();
        assert_eq!(
            remove_fields(&mut msg, &["Return-Path", "X-Postern-Score"]),
            2
        );
        assert_eq!(msg, b"Subject: s\r\n\r\nReturn-Path: body\r\n");
    }

    #[test]
    fn header_parsing_keeps_at_most_the_fields_asked_for() {
        let mut msg = Vec::new();
        for i in 0..10 {
            msg.extend_from_slice(format!("X-{i}: v\r\n continued\r\n").as_bytes());
        }
        msg.extend_from_slice(b"\r\nbody\r\n");
        let (all, body) = parse_headers(&msg);
        let (some, body2) = parse_headers_up_to(&msg, 3);
        assert_eq!((all.len(), some.len()), (10, 3));
        assert_eq!(body, body2);
        assert_eq!(&msg[body..], b"body\r\n");
        assert_eq!(some[2].value, "v continued");
        assert_eq!(some[2].range, all[2].range);
    }

    #[test]
    fn header_fields_are_folded_at_spaces_and_cleaned() {
        assert_eq!(header_field("X-A", "short"), "X-A: short\r\n");
        let words: Vec<String> = (0..40).map(|i| format!("word{i:02}")).collect();
        let f = header_field("X-Many", &words.join(" "));
        assert!(f.ends_with("\r\n"));
        let lines: Vec<&str> = f.trim_end_matches("\r\n").split("\r\n").collect();
        assert!(lines.len() > 3);
        assert!(lines.iter().all(|l| l.len() <= 78), "{lines:?}");
        assert!(lines[1..].iter().all(|l| l.starts_with(' ')));
        // Unfolding gives the value back.
        assert_eq!(
            f.replace("\r\n ", " "),
            format!("X-Many: {}\r\n", words.join(" "))
        );
        // A run without spaces is kept whole; control characters go.
        let run = "x".repeat(200);
        assert_eq!(header_field("X-R", &run), format!("X-R: {run}\r\n"));
        assert_eq!(header_field("X-C", "a\r\nb\0c\td"), "X-C: a  b c\td\r\n");
        // Blanks, trailing or in runs (control characters become blanks),
        // never fold into a line of only blanks.
        let f = header_field("Subject", &format!("{} ", "y".repeat(70)));
        assert!(!f.contains("\r\n \r\n") && f.ends_with("y\r\n"), "{f:?}");
        for v in [
            format!("a{}b", " ".repeat(200)),
            format!("a{}b", "\r\n".repeat(80)),
        ] {
            let f = header_field("X-A", &v);
            assert!(
                f.split("\r\n")
                    .all(|l| l.is_empty() || !l.trim().is_empty()),
                "{f:?}"
            );
        }
    }
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
        // Indexes are the plugins' view: removing X-A[0] does not make
        // X-A[1] the first; the later of two actions on one field wins.
        let out = apply_actions(
            MSG.to_vec(),
            &mut prepend,
            &[
                HeaderAction::Remove {
                    name: "X-A".into(),
                    index: Some(0),
                },
                HeaderAction::Change {
                    name: "X-A".into(),
                    index: 1,
                    value: "second".into(),
                },
                HeaderAction::Change {
                    name: "Subject".into(),
                    index: 0,
                    value: "first".into(),
                },
                HeaderAction::Change {
                    name: "Subject".into(),
                    index: 0,
                    value: "last".into(),
                },
            ],
        );
        assert_eq!(out, b"Subject: last\r\nX-A: second\r\n\r\nbody X-A: 3\r\n");
    }
}
