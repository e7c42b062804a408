//! SMTP replies: a basic code, an enhanced status code (RFC 3463) and text.

use std::borrow::Cow;
use std::fmt;

/// An enhanced status code (RFC 3463), e.g. `5.1.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Enhanced(pub u8, pub u16, pub u16);

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl Enhanced {
    /// Parses `X.Y.Z` as used in configuration and plugin verdicts.
    pub fn parse(s: &str) -> Option<Enhanced> {
        let mut it = s.split('.');
        let class: u8 = it.next()?.parse().ok()?;
        let subject: u16 = it.next()?.parse().ok()?;
        let detail: u16 = it.next()?.parse().ok()?;
        if it.next().is_some() || !matches!(class, 2 | 4 | 5) || subject > 999 || detail > 999 {
            return None;
        }
        Some(Enhanced(class, subject, detail))
    }
}

/// One SMTP reply, possibly multi-line.
///
/// The enhanced code is `None` only for the greeting and the EHLO/HELO answer,
/// which RFC 2034 §3 exempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit reply code.
    pub code: u16,
    /// Enhanced status code, shown on every line.
    pub enhanced: Option<Enhanced>,
    /// Lines of text (at least one; may be empty strings).
    pub lines: Vec<Cow<'static, str>>,
}

impl Reply {
    /// A one-line reply with an enhanced status code.
    pub fn new(code: u16, enhanced: Enhanced, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced),
            lines: vec![text.into()],
        }
    }

    /// A reply without enhanced code (greeting, EHLO/HELO).
    pub fn plain(code: u16, lines: Vec<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            enhanced: None,
            lines,
        }
    }

    /// True for 2xx and 3xx replies.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// True for 4xx replies.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// True for 5xx replies.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The reply as one log-friendly line (`550 5.1.1 text`).
    pub fn summary(&self) -> String {
        let text = self.lines.join(" ");
        match self.enhanced {
            Some(e) => format!("{} {} {}", self.code, e, text),
            None => format!("{} {}", self.code, text),
        }
    }

    /// Appends the wire form (CRLF-terminated lines) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let n = self.lines.len().max(1);
        for i in 0..n {
            let text = self.lines.get(i).map(|s| s.as_ref()).unwrap_or("");
            let sep = if i + 1 == n { ' ' } else { '-' };
            let line = match self.enhanced {
                Some(e) if text.is_empty() => format!("{}{}{}", self.code, sep, e),
                Some(e) => format!("{}{}{} {}", self.code, sep, e, text),
                None => format!("{}{}{}", self.code, sep, text),
            };
            // Reply text must never contain line breaks: they would let a
            // plugin or a quoted address forge extra reply lines.
            out.extend(
                line.bytes()
                    .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
            );
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as a byte vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v);
        v
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

/// Shorthand used throughout the protocol code.
pub(crate) fn r(
    code: u16,
    class: u8,
    subject: u16,
    detail: u16,
    text: impl Into<Cow<'static, str>>,
) -> Reply {
    Reply::new(code, Enhanced(class, subject, detail), text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiline_wire_form() {
        let reply = Reply {
            code: 250,
            enhanced: Some(Enhanced(2, 0, 0)),
            lines: vec!["first".into(), "second".into()],
        };
        assert_eq!(reply.to_bytes(), b"250-2.0.0 first\r\n250 2.0.0 second\r\n");
    }

    #[test]
    fn line_breaks_in_text_cannot_forge_lines() {
        let reply = r(550, 5, 1, 1, "evil\r\n250 ok");
        assert_eq!(reply.to_bytes(), b"550 5.1.1 evil  250 ok\r\n");
    }

    #[test]
    fn parse_enhanced() {
        assert_eq!(Enhanced::parse("5.7.1"), Some(Enhanced(5, 7, 1)));
        assert_eq!(Enhanced::parse("3.1.1"), None);
        assert_eq!(Enhanced::parse("5.7"), None);
        assert_eq!(Enhanced::parse("5.7.1.1"), None);
    }
}
