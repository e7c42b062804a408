//! transport(5) tables (`local.transport_maps`), read as they are: one
//! `pattern result` per logical line, the same comment and continuation
//! rules as virtual(5). Patterns are `user@domain`, `domain`, `.domain`
//! (its subdomains) and `*`; results are `[transport]` values
//! ([`crate::config::parse_transport`]), the rest of the line after the
//! pattern (an `error:` text may have spaces). Every error names
//! `FILE:LINE`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::table::{TableError, err, fold, logical_lines, text};
use crate::config::{TransportSpec, key_domain, parse_transport};

/// One key's transport, with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportEntry {
    /// The agent and its next hop.
    pub spec: TransportSpec,
    /// Line of the key.
    pub line: usize,
}

/// A transport(5) table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransportTable {
    /// The file.
    pub path: PathBuf,
    /// Lower-cased key → its transport.
    pub entries: HashMap<String, TransportEntry>,
}

/// Parses a transport(5) table; keys and values are checked on their
/// own here, against the configuration by the caller.
pub fn parse_transport_table(path: &Path, bytes: &[u8]) -> Result<TransportTable, TableError> {
    let mut table = TransportTable {
        path: path.to_path_buf(),
        ..TransportTable::default()
    };
    for logical in logical_lines(path, text(path, bytes)?)? {
        let Some(&(line, first)) = logical.first() else {
            continue;
        };
        let (key, rest) = first.split_once(char::is_whitespace).unwrap_or((first, ""));
        if key.starts_with('/') {
            return Err(err(
                path,
                line,
                format!("{key:?}: regular expression tables are not supported"),
            ));
        }
        let value: Vec<&str> = std::iter::once(rest.trim())
            .chain(logical.iter().skip(1).map(|&(_, t)| t))
            .filter(|t| !t.is_empty())
            .collect();
        let value = value.join(" ");
        if value.is_empty() {
            return Err(err(path, line, format!("{key:?} has no transport")));
        }
        key_domain(key).map_err(|m| err(path, line, m))?;
        let spec = parse_transport(&value).map_err(|m| err(path, line, m))?;
        let folded = fold(key);
        if let Some(before) = table.entries.get(&folded) {
            return Err(err(
                path,
                line,
                format!("{key:?} is already defined at line {}", before.line),
            ));
        }
        table.entries.insert(folded, TransportEntry { spec, line });
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Mailbox, NextHop};

    fn parse(text: &str) -> Result<TransportTable, TableError> {
        parse_transport_table(Path::new("transport"), text.as_bytes())
    }

    #[test]
    fn keys_values_comments_and_continuations() {
        let t = parse(
            "# comment\n\
             lmtp.test   lmtp:[127.0.0.1]:24\n\
             Bob@Example.Test mbox\n\
             .sub.test\tlmtp:unix:/run/lmtp\n\
             gone.test error:5.1.2 this domain\n  is gone\n\
             * smtp:[relay.test]:587\n\
             \n\
             quiet.test discard\n",
        )
        .unwrap();
        assert_eq!(t.entries.len(), 6);
        assert_eq!(
            t.entries["lmtp.test"].spec,
            TransportSpec::Lmtp(NextHop::Tcp {
                host: "127.0.0.1".into(),
                port: 24
            })
        );
        assert_eq!(t.entries["lmtp.test"].line, 2);
        assert_eq!(
            t.entries["bob@example.test"].spec,
            TransportSpec::Mailbox(Mailbox::Mbox)
        );
        assert_eq!(
            t.entries["gone.test"].spec,
            TransportSpec::Refuse {
                bounce: true,
                dsn: "5.1.2".into(),
                text: "this domain is gone".into()
            }
        );
        assert_eq!(
            t.entries["quiet.test"].spec,
            TransportSpec::Discard("discarded".into())
        );
        assert!(t.entries.contains_key("*"));
    }

    #[test]
    fn errors_name_the_line() {
        for (text, want) in [
            (
                "a.test smtp\nb.test\n",
                "transport:2: \"b.test\" has no transport",
            ),
            (
                "a.test smtp\nbad_key smtp\n",
                "transport:2: \"bad_key\" is not a domain",
            ),
            (
                "\n\na.test frob:x\n",
                "transport:3: unknown transport \"frob\"",
            ),
            ("a.test mbox:/x\n", "transport:1: mbox takes no next hop"),
            (
                "a.test error:4.1.1 no\n",
                "transport:1: error: the status code 4.1.1 must be 5.X.X",
            ),
            (
                "a.test retry:5.1.1 no\n",
                "transport:1: retry: the status code 5.1.1 must be 4.X.X",
            ),
            (
                "a.test smtp\nA.test lmtp:h:24\n",
                "transport:2: \"A.test\" is already defined at line 1",
            ),
            (
                "@a.test smtp\n",
                "transport:1: \"@a.test\" is not an address",
            ),
            ("/x/ smtp\n", "regular expression tables are not supported"),
            ("a.test :[relay.test]\n", "an empty transport"),
            (
                "a.test lmtp:h:99999\n",
                "transport:1: \"99999\" is not a port number",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        assert_eq!(
            parse("a.test retry\n").unwrap().entries["a.test"].spec,
            TransportSpec::Refuse {
                bounce: false,
                dsn: "4.0.0".into(),
                text: "delivery deferred by the transport table".into()
            }
        );
    }
}
