//! The client side's wire pieces that need no socket, shared by the SMTP
//! and LMTP agents: replies (multi-line, with their enhanced status
//! codes), EHLO/LHLO capabilities, and the message as DATA sends it (CRLF
//! line ends, dot-stuffed, ended by `.`).

use std::io::BufRead;

/// Longest reply line read (RFC 5321 §4.5.3.1.5 says 512; servers say
/// more in practice).
const MAX_LINE: u64 = 4096;
/// Most lines one reply may have.
const MAX_LINES: usize = 100;

/// One server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The enhanced status code of the first line (RFC 3463), if given
    /// and of the code's class.
    pub enhanced: Option<String>,
    /// Each line's text after the code (and its separator).
    pub lines: Vec<String>,
}

impl Reply {
    /// 2, 3, 4 or 5.
    pub fn class(&self) -> u16 {
        self.code / 100
    }

    /// The enhanced code, or the class's generic one (`4.0.0`).
    pub fn dsn(&self) -> String {
        self.enhanced
            .clone()
            .unwrap_or_else(|| format!("{}.0.0", self.class()))
    }

    /// The reply on one line, as logs and reports show it (`250 2.0.0
    /// <a@b> Saved`).
    pub fn text(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" "))
    }
}

/// Why a reply could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    /// The connection failed or timed out.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection.
    #[error("lost connection")]
    Closed,
    /// Not a reply.
    #[error("malformed reply: {0:?}")]
    Malformed(String),
}

/// The enhanced status code at the start of `text` (`x.y.z` with 1–3
/// digit parts), if it is of `class`.
pub fn enhanced_code(text: &str, class: u16) -> Option<String> {
    let word = text.split(' ').next()?;
    let mut parts = word.split('.');
    let (Some(c), Some(s), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let digits = |p: &str, max: usize| {
        !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit())
    };
    (c.len() == 1 && c == class.to_string() && digits(s, 3) && digits(d, 3))
        .then(|| word.to_string())
}

/// Reads one reply (every line of a multi-line one).
pub fn read_reply(r: &mut impl BufRead) -> Result<Reply, ReplyError> {
    let mut lines = Vec::new();
    let mut code = None;
    loop {
        let mut raw = Vec::new();
        let n = std::io::Read::take(&mut *r, MAX_LINE).read_until(b'\n', &mut raw)?;
        if n == 0 {
            return Err(ReplyError::Closed);
        }
        let line = String::from_utf8_lossy(&raw);
        let line = line.trim_end_matches(['\r', '\n']);
        let malformed = || ReplyError::Malformed(line.chars().take(200).collect());
        let (head, rest) = line.split_at_checked(3).ok_or_else(malformed)?;
        let this: u16 = head
            .parse()
            .ok()
            .filter(|c| (200..600).contains(c))
            .ok_or_else(malformed)?;
        if code.is_some_and(|c| c != this) {
            return Err(malformed());
        }
        code = Some(this);
        let (more, text) = match rest.split_at_checked(1) {
            Some(("-", t)) => (true, t),
            Some((" ", t)) => (false, t),
            None => (false, ""),
            Some(_) => return Err(malformed()),
        };
        if lines.len() >= MAX_LINES {
            return Err(ReplyError::Malformed("too many reply lines".into()));
        }
        lines.push(text.to_string());
        if !more {
            break;
        }
    }
    let code = code.unwrap_or(0);
    let enhanced = lines.first().and_then(|l| enhanced_code(l, code / 100));
    // The enhanced code is kept apart from each line's text (Postfix shows
    // it once, after the code).
    let lines = match &enhanced {
        Some(e) => lines
            .iter()
            .enumerate()
            .map(|(i, l)| match l.strip_prefix(e.as_str()) {
                Some(rest) if i == 0 => format!("{e}{rest}"),
                Some(rest) => rest.trim_start().to_string(),
                None => l.clone(),
            })
            .collect(),
        None => lines,
    };
    Ok(Reply {
        code,
        enhanced,
        lines,
    })
}

/// What a server said it supports in its EHLO or LHLO reply.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// 8BITMIME (RFC 6152).
    pub eight_bit: bool,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// STARTTLS (RFC 3207).
    pub starttls: bool,
    /// DSN (RFC 3461).
    pub dsn: bool,
    /// SIZE (RFC 1870): `Some(0)` is "no fixed limit".
    pub size: Option<u64>,
    /// AUTH mechanisms (RFC 4954), in upper case.
    pub auth: Vec<String>,
}

impl Capabilities {
    /// From the lines of a 250 reply to EHLO or LHLO (the first is the
    /// greeting).
    pub fn of(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split(' ');
            let word = words.next().unwrap_or("").to_ascii_uppercase();
            match word.as_str() {
                "PIPELINING" => caps.pipelining = true,
                "8BITMIME" => caps.eight_bit = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "STARTTLS" => caps.starttls = true,
                "DSN" => caps.dsn = true,
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "AUTH" => caps.auth.extend(
                    words
                        .filter(|w| !w.is_empty())
                        .map(|w| w.to_ascii_uppercase()),
                ),
                _ => {}
            }
        }
        caps
    }
}

/// True if the message has bytes outside ASCII (it needs `BODY=8BITMIME`
/// where the server offers it).
pub fn has_8bit(parts: &[&[u8]]) -> bool {
    parts.iter().any(|p| !p.is_ascii())
}

/// The message as DATA sends it: `parts` joined, each line ended by
/// CRLF (a bare LF or CR too), a line starting with `.` given another,
/// and the final `.` line.
pub fn dot_stuffed(parts: &[&[u8]]) -> Vec<u8> {
    let size: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(size + size / 50 + 8);
    let mut at_line_start = true;
    let mut after_cr = false;
    for &b in parts.iter().flat_map(|p| p.iter()) {
        if after_cr {
            after_cr = false;
            if b == b'\n' {
                continue;
            }
        }
        match b {
            b'\r' | b'\n' => {
                out.extend_from_slice(b"\r\n");
                at_line_start = true;
                after_cr = b == b'\r';
            }
            _ => {
                if at_line_start && b == b'.' {
                    out.push(b'.');
                }
                out.push(b);
                at_line_start = false;
            }
        }
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Reply, ReplyError> {
        read_reply(&mut text.as_bytes())
    }

    #[test]
    fn replies_single_and_multi_line() {
        let r = read("250 2.0.0 <alice@lmtp.test> abc Saved\r\n").unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(r.enhanced.as_deref(), Some("2.0.0"));
        assert_eq!(r.text(), "250 2.0.0 <alice@lmtp.test> abc Saved");
        let r = read("250-mx.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n").unwrap();
        assert_eq!(r.lines, ["mx.test", "PIPELINING", "8BITMIME", "SMTPUTF8"]);
        assert_eq!(r.enhanced, None);
        assert_eq!(r.dsn(), "2.0.0");
        let caps = Capabilities::of(&r);
        assert!(caps.pipelining && caps.eight_bit && caps.smtputf8);
        assert!(!caps.starttls && !caps.dsn && caps.size.is_none());
        let r =
            read("250-mx\r\n250-SIZE 1000\r\n250-starttls\r\n250-DSN\r\n250 AUTH plain LOGIN\r\n")
                .unwrap();
        let caps = Capabilities::of(&r);
        assert!(caps.starttls && caps.dsn && caps.size == Some(1000));
        assert_eq!(caps.auth, ["PLAIN", "LOGIN"]);
        assert_eq!(
            Capabilities::of(&read("250-mx\r\n250 SIZE\r\n").unwrap()).size,
            Some(0)
        );
        // Each line repeating the enhanced code shows it once.
        let r = read("452-4.2.2 Mailbox full\n452 4.2.2 try later\n").unwrap();
        assert_eq!(r.dsn(), "4.2.2");
        assert_eq!(r.text(), "452 4.2.2 Mailbox full try later");
        // Only a code of the reply's class counts.
        assert_eq!(read("550 4.1.1 odd\r\n").unwrap().dsn(), "5.0.0");
        assert_eq!(read("550 5.1.10 x\r\n").unwrap().dsn(), "5.1.10");
        assert_eq!(read("220\r\n").unwrap().lines, [""]);
        // Several replies in a row are read one by one.
        let mut two = "250 ok\r\n550 5.1.1 no\r\n".as_bytes();
        assert_eq!(read_reply(&mut two).unwrap().code, 250);
        assert_eq!(read_reply(&mut two).unwrap().dsn(), "5.1.1");
        assert!(matches!(read_reply(&mut two), Err(ReplyError::Closed)));
    }

    #[test]
    fn bad_replies_are_errors_not_panics() {
        for bad in [
            "",
            "2",
            "25",
            "abc ok\r\n",
            "250x\r\n",
            "250-a\r\n251 b\r\n",
            "099 x\r\n",
            "250-a\r\n",
            "\u{e9}\u{e9} x\r\n",
            "25\u{e9} x\r\n",
        ] {
            assert!(read(bad).is_err(), "{bad:?}");
        }
        let many = "250-x\r\n".repeat(200) + "250 x\r\n";
        assert!(read(&many).is_err());
    }

    #[test]
    fn dot_stuffing_and_line_ends() {
        assert_eq!(
            dot_stuffed(&[b"a\r\n", b".b\n..c\r\nd"]),
            b"a\r\n..b\r\n...c\r\nd\r\n.\r\n"
        );
        assert_eq!(dot_stuffed(&[b"x\r", b"\n.\r\n"]), b"x\r\n..\r\n.\r\n");
        assert_eq!(dot_stuffed(&[b"a\rb"]), b"a\r\nb\r\n.\r\n");
        assert_eq!(dot_stuffed(&[b""]), b".\r\n");
        assert_eq!(
            dot_stuffed(&[b"H: v\r\n", b"\r\n.\r\n"]),
            b"H: v\r\n\r\n..\r\n.\r\n"
        );
    }
}
