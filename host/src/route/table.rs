//! Plain-text routing tables read as they are, without a `postmap` step:
//! Postfix's virtual(5) format (`virtual_alias_maps`) and aliases(5)
//! format (`alias_maps`). Keys are case-insensitive, values are kept as
//! written, and every error names `FILE:LINE`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Why a table could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// The file could not be read.
    #[error("{}: cannot read: {message}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        message: String,
    },
    /// A line that is not what the format allows.
    #[error("{}:{line}: {message}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// The tables parsed but do not go with the configuration.
    #[error("{0}")]
    Config(String),
}

/// One key's results, with the line that gave them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The results as written, in order.
    pub targets: Vec<String>,
    /// Line of the key.
    pub line: usize,
}

/// A virtual(5) table: `pattern result, result...`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VirtualTable {
    /// The file.
    pub path: PathBuf,
    /// Lower-cased `user@domain`, `@domain` or `user` → results.
    pub entries: HashMap<String, Entry>,
    /// Domains declared by a bare `domain anything` line (Postfix's
    /// "sendmail-style" virtual alias domains), with their line.
    pub domains: BTreeMap<String, usize>,
}

/// An aliases(5) table: `name: value, value...`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AliasTable {
    /// The file.
    pub path: PathBuf,
    /// Lower-cased local name → values.
    pub entries: HashMap<String, Entry>,
}

/// The case-insensitive form of a key.
pub fn fold(key: &str) -> String {
    key.to_lowercase()
}

/// A piece of a logical line: its physical line number and text.
pub(super) type Segment<'a> = (usize, &'a str);

pub(super) fn err(path: &Path, line: usize, message: impl Into<String>) -> TableError {
    TableError::Line {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

/// The file's text, or where it stops being UTF-8.
pub(super) fn text<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a str, TableError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let good = bytes.get(..e.valid_up_to()).unwrap_or_default();
        let line = 1 + good.iter().filter(|&&b| b == b'\n').count();
        err(path, line, "not UTF-8 text")
    })
}

/// Logical lines (Postfix's rules): blank lines and lines whose first
/// non-blank character is `#` are skipped; a line starting with
/// whitespace continues the logical line before it.
pub(super) fn logical_lines<'a>(
    path: &Path,
    text: &'a str,
) -> Result<Vec<Vec<Segment<'a>>>, TableError> {
    let mut out: Vec<Vec<Segment<'a>>> = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let number = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            match out.last_mut() {
                Some(logical) => logical.push((number, trimmed)),
                None => {
                    return Err(err(
                        path,
                        number,
                        "a line starting with whitespace continues the line before it, and there is none",
                    ));
                }
            }
        } else {
            out.push(vec![(number, trimmed)]);
        }
    }
    Ok(out)
}

/// Splits at commas and whitespace outside double quotes; each token
/// with its line.
fn tokens<'a>(segments: &[Segment<'a>]) -> Vec<Segment<'a>> {
    let mut out = Vec::new();
    for &(line, text) in segments {
        let mut start = None;
        let mut quoted = false;
        let mut escaped = false;
        for (i, c) in text.char_indices() {
            if escaped {
                escaped = false;
                continue;
            }
            match c {
                '\\' if quoted => escaped = true,
                '"' => {
                    quoted = !quoted;
                    start.get_or_insert(i);
                }
                c if !quoted && (c == ',' || c.is_whitespace()) => {
                    if let Some(s) = start.take()
                        && let Some(t) = text.get(s..i)
                    {
                        out.push((line, t));
                    }
                }
                _ => {
                    start.get_or_insert(i);
                }
            }
        }
        if let Some(t) = start.and_then(|s| text.get(s..)) {
            out.push((line, t));
        }
    }
    out
}

/// True for a domain as a table may name it: a host name or an address
/// literal.
fn is_domain(d: &str) -> bool {
    (d.starts_with('[') && d.ends_with(']') && d.len() > 2) || crate::config::is_hostname(d)
}

/// Checks one result of either format: an address or a local name.
fn check_result(path: &Path, line: usize, t: &str, aliases: bool) -> Result<(), TableError> {
    let unquoted = t.trim_start_matches('"');
    let later = if aliases { " (yet)" } else { "" };
    if unquoted
        .get(..9)
        .is_some_and(|p| p.eq_ignore_ascii_case(":include:"))
    {
        return Err(err(
            path,
            line,
            format!("{t:?}: `:include:` lists are not supported{later}"),
        ));
    }
    if unquoted.starts_with('|') {
        return Err(err(
            path,
            line,
            format!("{t:?}: delivery to a command (`|command`) is not supported{later}"),
        ));
    }
    if unquoted.starts_with('/') {
        return Err(err(
            path,
            line,
            format!("{t:?}: delivery to a file (`/path`) is not supported{later}"),
        ));
    }
    if let Some((l, d)) = t.rsplit_once('@') {
        if l.is_empty() {
            return Err(err(
                path,
                line,
                format!(
                    "{t:?}: a result needs a local part (`@domain` rewriting is not supported)"
                ),
            ));
        }
        if !is_domain(d) {
            return Err(err(path, line, format!("{t:?}: {d:?} is not a domain")));
        }
    }
    Ok(())
}

fn insert(
    path: &Path,
    entries: &mut HashMap<String, Entry>,
    key: String,
    shown: &str,
    entry: Entry,
) -> Result<(), TableError> {
    if let Some(before) = entries.get(&key) {
        return Err(err(
            path,
            entry.line,
            format!("{shown:?} is already defined at line {}", before.line),
        ));
    }
    entries.insert(key, entry);
    Ok(())
}

/// Parses a virtual(5) table: `pattern result[, result...]`, patterns
/// `user@domain`, `@domain` (catch-all), `user` (our own domains only)
/// and a bare `domain` (declares a virtual alias domain; its result is
/// ignored, as Postfix's).
pub fn parse_virtual(path: &Path, bytes: &[u8]) -> Result<VirtualTable, TableError> {
    let mut table = VirtualTable {
        path: path.to_path_buf(),
        ..VirtualTable::default()
    };
    for logical in logical_lines(path, text(path, bytes)?)? {
        let mut words = tokens(&logical).into_iter();
        let Some((line, pattern)) = words.next() else {
            continue;
        };
        let targets: Vec<Segment> = words.collect();
        if pattern.starts_with('/') {
            return Err(err(
                path,
                line,
                format!("{pattern:?}: regular expression tables are not supported"),
            ));
        }
        if targets.is_empty() {
            return Err(err(path, line, format!("{pattern:?} has no result")));
        }
        for &(l, t) in &targets {
            check_result(path, l, t, false)?;
        }
        let key = match pattern.rsplit_once('@') {
            Some((l, d)) => {
                if !is_domain(d) {
                    return Err(err(
                        path,
                        line,
                        format!("{pattern:?}: {d:?} is not a domain"),
                    ));
                }
                format!("{}@{}", fold(l), fold(d))
            }
            None => {
                if pattern.contains('.') && crate::config::is_hostname(pattern) {
                    // Both a domain declaration and a local-part key, as
                    // in Postfix (which looks the same key up both ways).
                    table.domains.entry(fold(pattern)).or_insert(line);
                }
                fold(pattern)
            }
        };
        let entry = Entry {
            targets: targets.iter().map(|(_, t)| t.to_string()).collect(),
            line,
        };
        insert(path, &mut table.entries, key, pattern, entry)?;
    }
    Ok(table)
}

/// Parses an aliases(5) table: `name: value[, value...]`. `:include:`,
/// `|command` and `/file` values are refused (not supported yet).
pub fn parse_aliases(path: &Path, bytes: &[u8]) -> Result<AliasTable, TableError> {
    let mut table = AliasTable {
        path: path.to_path_buf(),
        ..AliasTable::default()
    };
    for mut logical in logical_lines(path, text(path, bytes)?)? {
        let Some(first) = logical.first_mut() else {
            continue;
        };
        let line = first.0;
        let Some((name, rest)) = first.1.split_once(':') else {
            return Err(err(
                path,
                line,
                format!("expected `name: value[, value...]`, found {:?}", first.1),
            ));
        };
        first.1 = rest;
        let name = name.trim();
        if name.is_empty() {
            return Err(err(path, line, "an alias needs a name before `:`"));
        }
        if name.contains(char::is_whitespace) || name.contains('"') {
            return Err(err(
                path,
                line,
                format!("{name:?}: an alias name is one word"),
            ));
        }
        if name.contains('@') {
            return Err(err(
                path,
                line,
                format!(
                    "{name:?}: alias names are local names without @domain (full addresses go in virtual_alias_maps)"
                ),
            ));
        }
        let values = tokens(&logical);
        if values.is_empty() {
            return Err(err(path, line, format!("{name:?} has no value")));
        }
        for &(l, v) in &values {
            check_result(path, l, v, true)?;
        }
        let entry = Entry {
            targets: values.iter().map(|(_, v)| v.to_string()).collect(),
            line,
        };
        insert(path, &mut table.entries, fold(name), name, entry)?;
    }
    Ok(table)
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
