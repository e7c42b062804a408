//! Reading a header section without copying it (fields, values, where the
//! body starts), and writing one field, folded and cleaned.

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
                value: field_value(content, name, range.clone()),
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
/// One pass, linear in the size of the header section.
pub fn scan_headers(content: &[u8], mut each: impl FnMut(&[u8], Range<usize>)) -> usize {
    // The field being read: its name and where it started.
    let mut open: Option<(&[u8], usize)> = None;
    let mut done = |open: &mut Option<(&[u8], usize)>, end: usize| {
        if let Some((name, start)) = open.take() {
            each(name, start..end);
        }
    };
    let mut pos = 0;
    while let Some(rest) = content.get(pos..).filter(|r| !r.is_empty()) {
        let len = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
        let line = rest.get(..len).unwrap_or(rest);
        let end = pos + line.len();
        match trim_eol(line).first() {
            None => {
                done(&mut open, pos);
                return end;
            }
            Some(b' ' | b'\t') => {
                if open.is_none() {
                    // A continuation of nothing: the body starts here.
                    return pos;
                }
            }
            Some(_) => match field_name(trim_eol(line)) {
                Some(name) => {
                    done(&mut open, pos);
                    open = Some((name, pos));
                }
                None => {
                    // Not a header line: the body starts here (no empty line).
                    done(&mut open, pos);
                    return pos;
                }
            },
        }
        pos = end;
    }
    done(&mut open, content.len());
    content.len()
}

/// The value of the field `name` that spans `range` of `content` (as
/// [`scan_headers`] reports them): unfolded and trimmed.
pub fn field_value(content: &[u8], name: &[u8], range: Range<usize>) -> String {
    content
        .get(range)
        .and_then(|field| field.get(name.len()..))
        .map(unfold)
        .unwrap_or_default()
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

/// The name of a header field line: RFC 5322 ftext (printable ASCII but
/// `:`) before the colon, with optional blanks before the colon (the
/// obsolete syntax). `None` for anything else, which starts the body.
fn field_name(text: &[u8]) -> Option<&[u8]> {
    let colon = memchr::memchr(b':', text)?;
    let name = text.get(..colon)?.trim_ascii_end();
    (!name.is_empty() && name.iter().all(|&b| ftext(b))).then_some(name)
}

/// A byte of a field name (RFC 5322 ftext): printable ASCII but `:`.
fn ftext(b: u8) -> bool {
    (33..=126).contains(&b) && b != b':'
}

/// A line without its LF or CRLF.
pub(super) fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
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
