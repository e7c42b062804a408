//! Envelope addresses: RFC 5321 §4.1.2 `Path`, `Mailbox`, local parts and domains.

use std::fmt;

/// An envelope mailbox `local@domain`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// Local part as sent (quoted strings are kept with their quotes).
    pub local: String,
    /// Domain as sent; compare with [`Mailbox::domain_lc`].
    pub domain: String,
}

impl Mailbox {
    /// The domain in lower case, the form used for routing decisions.
    pub fn domain_lc(&self) -> String {
        self.domain.to_ascii_lowercase()
    }

    /// True if either part contains non-ASCII characters (needs SMTPUTF8).
    pub fn is_utf8(&self) -> bool {
        !self.local.is_ascii() || !self.domain.is_ascii()
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// The reverse path of MAIL FROM: a mailbox or the null path `<>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    /// `<>`: bounces and other notifications.
    Null,
    /// A sender mailbox.
    Mailbox(Mailbox),
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => Ok(()),
            ReversePath::Mailbox(m) => m.fmt(f),
        }
    }
}

/// The forward path of RCPT TO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardPath {
    /// `<postmaster>` without a domain (RFC 5321 §4.1.1.3).
    Postmaster,
    /// A recipient mailbox.
    Mailbox(Mailbox),
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster => f.write_str("postmaster"),
            ForwardPath::Mailbox(m) => m.fmt(f),
        }
    }
}

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Angle brackets missing while `strict_envelopes` is on.
    #[error("address must be enclosed in <>")]
    NeedsBrackets,
    /// Anything else malformed.
    #[error("malformed address: {0}")]
    Syntax(&'static str),
    /// Non-ASCII address without the SMTPUTF8 parameter.
    #[error("non-ASCII address requires SMTPUTF8")]
    NeedsUtf8,
}

/// Splits `"<path> params"` (or, when lax, `"path params"`) into the path
/// text without brackets and the rest of the line.
///
/// Brackets inside quoted local parts do not end the path.
pub fn split_path(arg: &str, strict: bool) -> Result<(&str, &str), AddressError> {
    let arg = arg.trim_start_matches(' ');
    if let Some(inner) = arg.strip_prefix('<') {
        let (path, rest) = closing_bracket(inner)
            .and_then(|i| inner.split_at_checked(i))
            .ok_or(AddressError::Syntax("missing closing >"))?;
        let rest = rest.strip_prefix('>').unwrap_or(rest);
        if !rest.is_empty() && !rest.starts_with(' ') {
            return Err(AddressError::Syntax("garbage after address"));
        }
        Ok((path, rest.trim_start_matches(' ')))
    } else if strict {
        Err(AddressError::NeedsBrackets)
    } else {
        let (path, rest) = arg.split_once(' ').unwrap_or((arg, ""));
        if path.contains(['<', '>']) {
            return Err(AddressError::Syntax("unbalanced <>"));
        }
        Ok((path, rest.trim_start_matches(' ')))
    }
}

/// Where the `>` that closes a path is: not inside a quoted local part.
fn closing_bracket(inner: &str) -> Option<usize> {
    let mut in_quote = false;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '>' if !in_quote => return Some(i),
            _ => {}
        }
    }
    None
}

/// Parses a reverse path (without brackets). Empty means `<>`.
pub fn parse_reverse_path(path: &str, utf8: bool) -> Result<ReversePath, AddressError> {
    if path.is_empty() {
        return Ok(ReversePath::Null);
    }
    parse_mailbox(strip_source_route(path)?, utf8).map(ReversePath::Mailbox)
}

/// Parses a forward path (without brackets).
pub fn parse_forward_path(path: &str, utf8: bool) -> Result<ForwardPath, AddressError> {
    if path.eq_ignore_ascii_case("postmaster") {
        return Ok(ForwardPath::Postmaster);
    }
    if path.is_empty() {
        return Err(AddressError::Syntax("empty recipient"));
    }
    parse_mailbox(strip_source_route(path)?, utf8).map(ForwardPath::Mailbox)
}

/// RFC 5321 §4.1.2: source routes (`@a,@b:user@c`) must be accepted and ignored.
fn strip_source_route(path: &str) -> Result<&str, AddressError> {
    if !path.starts_with('@') {
        return Ok(path);
    }
    let (route, mailbox) = path
        .split_once(':')
        .ok_or(AddressError::Syntax("bad source route"))?;
    for hop in route.split(',') {
        let hop = hop
            .strip_prefix('@')
            .ok_or(AddressError::Syntax("bad source route"))?;
        check_domain(hop, false)?;
    }
    Ok(mailbox)
}

/// Parses `local@domain` with RFC 5321 syntax (RFC 6531 when `utf8`).
pub fn parse_mailbox(s: &str, utf8: bool) -> Result<Mailbox, AddressError> {
    if !utf8 && !s.is_ascii() {
        return Err(AddressError::NeedsUtf8);
    }
    let (local, domain) = s
        .rsplit_once('@')
        .ok_or(AddressError::Syntax("missing @domain"))?;
    if local.len() > 64 {
        return Err(AddressError::Syntax("local part longer than 64 octets"));
    }
    check_local(local)?;
    check_domain(domain, true)?;
    Ok(Mailbox {
        local: local.to_string(),
        domain: domain.to_string(),
    })
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// The value of a local part: a quoted string without its quotes and
/// backslashes (RFC 5322 §3.2.4: `"alice"` and `alice` are the same);
/// a dot-atom as it is.
pub fn local_value(local: &str) -> std::borrow::Cow<'_, str> {
    let Some(inner) = local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) else {
        return local.into();
    };
    let mut out = String::with_capacity(inner.len());
    let mut escaped = false;
    for c in inner.chars() {
        if c == '\\' && !escaped {
            escaped = true;
        } else {
            out.push(c);
            escaped = false;
        }
    }
    out.into()
}

fn check_local(local: &str) -> Result<(), AddressError> {
    if local.is_empty() {
        return Err(AddressError::Syntax("empty local part"));
    }
    if let Some(inner) = local.strip_prefix('"') {
        let inner = inner
            .strip_suffix('"')
            .ok_or(AddressError::Syntax("unterminated quoted string"))?;
        let mut escaped = false;
        for c in inner.chars() {
            if escaped {
                if !(' '..='~').contains(&c) {
                    return Err(AddressError::Syntax("bad quoted pair"));
                }
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' || (c.is_ascii() && !(' '..='~').contains(&c)) {
                return Err(AddressError::Syntax("bad character in quoted string"));
            }
        }
        if escaped {
            return Err(AddressError::Syntax("bad quoted pair"));
        }
        return Ok(());
    }
    for atom in local.split('.') {
        if atom.is_empty() {
            return Err(AddressError::Syntax("empty atom in local part"));
        }
        if !atom.chars().all(is_atext) {
            return Err(AddressError::Syntax("bad character in local part"));
        }
    }
    Ok(())
}

fn check_domain(domain: &str, allow_literal: bool) -> Result<(), AddressError> {
    if domain.is_empty() {
        return Err(AddressError::Syntax("empty domain"));
    }
    if domain.len() > 255 {
        return Err(AddressError::Syntax("domain longer than 255 octets"));
    }
    if let Some(lit) = domain.strip_prefix('[') {
        if !allow_literal {
            return Err(AddressError::Syntax("address literal not allowed here"));
        }
        let lit = lit
            .strip_suffix(']')
            .ok_or(AddressError::Syntax("unterminated address literal"))?;
        let ok = match lit.split_at_checked(5) {
            Some((tag, v6)) if tag.eq_ignore_ascii_case("IPv6:") => {
                v6.parse::<std::net::Ipv6Addr>().is_ok()
            }
            _ => lit.parse::<std::net::Ipv4Addr>().is_ok(),
        };
        return if ok {
            Ok(())
        } else {
            Err(AddressError::Syntax("bad address literal"))
        };
    }
    for label in domain.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(AddressError::Syntax("bad domain label"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(AddressError::Syntax("domain label starts or ends with -"));
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
        {
            return Err(AddressError::Syntax("bad character in domain"));
        }
    }
    Ok(())
}

/// Checks a HELO/EHLO argument: a domain or an address literal.
pub fn check_helo(name: &str) -> Result<(), AddressError> {
    check_domain(name, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_strict_and_lax() {
        assert_eq!(split_path("<a@b> SIZE=10", true), Ok(("a@b", "SIZE=10")));
        assert_eq!(split_path(" <a@b>", true), Ok(("a@b", "")));
        assert_eq!(split_path("a@b", true), Err(AddressError::NeedsBrackets));
        assert_eq!(split_path("a@b SIZE=1", false), Ok(("a@b", "SIZE=1")));
        assert_eq!(split_path("<\"a>b\"@c>", true), Ok(("\"a>b\"@c", "")));
        assert!(split_path("<a@b>x", true).is_err());
        assert!(split_path("<a@b", true).is_err());
    }

    #[test]
    fn mailbox_syntax() {
        assert!(parse_mailbox("alice+tag@example.test", false).is_ok());
        assert!(parse_mailbox("\"a b\"@example.test", false).is_ok());
        assert!(parse_mailbox("a@[127.0.0.1]", false).is_ok());
        assert!(parse_mailbox("a@[IPv6:::1]", false).is_ok());
        assert!(parse_mailbox("a..b@example.test", false).is_err());
        assert!(parse_mailbox(".a@example.test", false).is_err());
        assert!(parse_mailbox("a@-x.test", false).is_err());
        assert!(parse_mailbox("a@x..test", false).is_err());
        assert!(parse_mailbox("a@", false).is_err());
        assert!(parse_mailbox("nodomain", false).is_err());
        assert!(parse_mailbox("a b@x.test", false).is_err());
        assert_eq!(
            parse_mailbox("jörg@bücher.test", false),
            Err(AddressError::NeedsUtf8)
        );
        assert!(parse_mailbox("jörg@bücher.test", true).is_ok());
    }

    #[test]
    fn multibyte_characters_at_every_cut() {
        // Each place where a path is cut, next to a character of 2, 3 and
        // 4 bytes: an error or a value, never a panic.
        for c in ["é", "\u{212A}", "\u{130}", "😀"] {
            for arg in [
                format!("<{c}>"),
                format!("<{c}@b.test>{c}"),
                format!("<a@b.test>{c}"),
                format!("{c}@b.test {c}"),
                c.to_string(),
                format!("<\"{c}>\"@b.test>"),
            ] {
                let _ = split_path(&arg, false);
                let _ = split_path(&arg, true);
            }
            for path in [
                format!("@{c}:{c}@b.test"),
                format!("@{c}"),
                format!("{c}@[IPv{c}:::1]"),
                format!("{c}@[IPv6:{c}]"),
                format!("{c}@[{c}"),
                format!("a@{c}-"),
                format!("a@-{c}"),
                format!("{c}@{c}"),
            ] {
                let _ = parse_forward_path(&path, true);
                let _ = parse_reverse_path(&path, true);
            }
        }
        assert_eq!(
            split_path("<ä@b.test> SMTPUTF8", true),
            Ok(("ä@b.test", "SMTPUTF8"))
        );
        assert!(parse_mailbox("a@-\u{212A}.test", true).is_err());
        assert!(parse_mailbox("a@\u{212A}.test", true).is_ok());
    }

    #[test]
    fn paths() {
        assert_eq!(parse_reverse_path("", false), Ok(ReversePath::Null));
        assert_eq!(
            parse_forward_path("PostMaster", false),
            Ok(ForwardPath::Postmaster)
        );
        let m = parse_forward_path("@relay.test,@r2.test:bob@example.test", false).unwrap();
        assert_eq!(m.to_string(), "bob@example.test");
    }
}
