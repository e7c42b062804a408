//! The DSN parameters of MAIL and RCPT (RFC 3461 §4): what a sender asked
//! to be told, kept with the message from RCPT to the last delivery attempt.

use serde::{Deserialize, Serialize};

/// `RET=` of MAIL FROM: what a failure report carries of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ret {
    /// The whole message.
    Full,
    /// Its header section only.
    Hdrs,
}

/// `NOTIFY=` of RCPT TO: which outcomes the sender wants reported. All
/// three false is `NOTIFY=NEVER`; no NOTIFY at all is `None` where it is
/// kept (the MTA's default: failures and delays, RFC 3461 §4.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    /// Report a successful delivery.
    pub success: bool,
    /// Report a failure.
    pub failure: bool,
    /// Report a delay.
    pub delay: bool,
}

impl Notify {
    /// What the sender gets without a NOTIFY parameter.
    pub const DEFAULT: Notify = Notify {
        success: false,
        failure: true,
        delay: true,
    };

    /// `NOTIFY=NEVER`.
    pub fn is_never(&self) -> bool {
        !self.success && !self.failure && !self.delay
    }

    /// The parameter's value as written on the wire.
    pub fn to_param(&self) -> String {
        if self.is_never() {
            return "NEVER".into();
        }
        let mut on = Vec::new();
        for (set, name) in [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ] {
            if set {
                on.push(name);
            }
        }
        on.join(",")
    }
}

/// The DSN parameters of one RCPT TO, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptDsn {
    /// `NOTIFY=`, if given.
    pub notify: Option<Notify>,
    /// `ORCPT=` as `addr-type;address`, decoded.
    pub orcpt: Option<String>,
}

impl RcptDsn {
    /// Reads NOTIFY and ORCPT from RCPT's `(KEYWORD, value)` parameters
    /// (keywords in upper case, as the command parser gives them).
    pub fn from_params(params: &[(String, Option<String>)]) -> Result<RcptDsn, DsnError> {
        let mut dsn = RcptDsn::default();
        for (key, value) in params {
            match key.as_str() {
                "NOTIFY" => dsn.notify = Some(parse_notify(value.as_deref().unwrap_or(""))?),
                "ORCPT" => dsn.orcpt = Some(parse_orcpt(value.as_deref().unwrap_or(""))?),
                _ => {}
            }
        }
        Ok(dsn)
    }
}

/// Why a DSN parameter's value is refused (`501 5.5.4`, as Postfix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsnError {
    /// NOTIFY is `NEVER`, or a list of SUCCESS, FAILURE and DELAY.
    #[error("NOTIFY=NEVER or a list of SUCCESS, FAILURE, DELAY")]
    Notify,
    /// RET is FULL or HDRS.
    #[error("RET=FULL or RET=HDRS")]
    Ret,
    /// ORCPT is `addr-type;xtext`.
    #[error("ORCPT=addr-type;xtext")]
    Orcpt,
    /// ENVID is xtext of at most 100 characters.
    #[error("ENVID=xtext of at most 100 characters")]
    Envid,
}

/// Parses a NOTIFY value (case-insensitive; NEVER stands alone).
pub fn parse_notify(value: &str) -> Result<Notify, DsnError> {
    if value.eq_ignore_ascii_case("NEVER") {
        return Ok(Notify::default());
    }
    let mut n = Notify::default();
    for word in value.split(',') {
        let slot = if word.eq_ignore_ascii_case("SUCCESS") {
            &mut n.success
        } else if word.eq_ignore_ascii_case("FAILURE") {
            &mut n.failure
        } else if word.eq_ignore_ascii_case("DELAY") {
            &mut n.delay
        } else {
            return Err(DsnError::Notify);
        };
        if *slot {
            return Err(DsnError::Notify);
        }
        *slot = true;
    }
    Ok(n)
}

/// Parses a RET value.
pub fn parse_ret(value: &str) -> Result<Ret, DsnError> {
    if value.eq_ignore_ascii_case("FULL") {
        Ok(Ret::Full)
    } else if value.eq_ignore_ascii_case("HDRS") {
        Ok(Ret::Hdrs)
    } else {
        Err(DsnError::Ret)
    }
}

/// Parses an ORCPT value into `addr-type;address` with the address decoded
/// from xtext (RFC 3461 §4.2; `utf-8-addr-xtext` of RFC 6533 decodes the
/// same way for the `+XX` escapes). The type keeps its case as given.
pub fn parse_orcpt(value: &str) -> Result<String, DsnError> {
    let (kind, addr) = value.split_once(';').ok_or(DsnError::Orcpt)?;
    let atom = |c: char| c.is_ascii_alphanumeric() || c == '-';
    if kind.is_empty() || !kind.chars().all(atom) || addr.is_empty() {
        return Err(DsnError::Orcpt);
    }
    let addr = xtext_decode(addr).ok_or(DsnError::Orcpt)?;
    Ok(format!("{kind};{addr}"))
}

/// Parses an ENVID value (xtext, decoded; RFC 3461 §4.4 allows 100
/// characters).
pub fn parse_envid(value: &str) -> Result<String, DsnError> {
    if value.is_empty() || value.chars().count() > 100 {
        return Err(DsnError::Envid);
    }
    xtext_decode(value).ok_or(DsnError::Envid)
}

/// Decodes xtext (RFC 3461 §4): `+XX` is the byte XX in upper-case hex;
/// other characters stand for themselves, except `+`, `=`, controls and
/// space, which must be escaped. `None` for malformed input or bytes
/// that are not UTF-8 once decoded.
pub fn xtext_decode(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => {
                let hi = hex_digit(bytes.next()?)?;
                let lo = hex_digit(bytes.next()?)?;
                out.push(hi << 4 | lo);
            }
            b'=' | 0..=b' ' | 0x7f => return None,
            // UTF-8 passes as it is (utf-8-addr-xtext, RFC 6533).
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes text as xtext for a next hop.
pub fn xtext_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_values() {
        assert!(parse_notify("never").unwrap().is_never());
        let n = parse_notify("SUCCESS,delay").unwrap();
        assert!(n.success && n.delay && !n.failure);
        assert_eq!(n.to_param(), "SUCCESS,DELAY");
        for bad in [
            "",
            "NEVER,SUCCESS",
            "SUCCESS,SUCCESS",
            "SOMETIMES",
            "SUCCESS,",
        ] {
            assert_eq!(parse_notify(bad), Err(DsnError::Notify), "{bad}");
        }
    }

    #[test]
    fn orcpt_and_envid_decode_xtext() {
        assert_eq!(
            parse_orcpt("rfc822;a+2Bb@example.test").unwrap(),
            "rfc822;a+b@example.test"
        );
        for bad in [
            "rfc822",
            ";a@b",
            "rfc822;",
            "rfc 822;a@b",
            "rfc822;a+2g@b",
            "rfc822;a+2",
        ] {
            assert_eq!(parse_orcpt(bad), Err(DsnError::Orcpt), "{bad}");
        }
        assert_eq!(parse_envid("QQ+3D1").unwrap(), "QQ=1");
        assert_eq!(parse_envid(&"x".repeat(101)), Err(DsnError::Envid));
        assert_eq!(parse_ret("hdrs"), Ok(Ret::Hdrs));
        assert_eq!(parse_ret("some"), Err(DsnError::Ret));
    }

    #[test]
    fn rcpt_params_are_read_by_keyword() {
        let params = vec![
            ("NOTIFY".to_string(), Some("FAILURE".to_string())),
            ("ORCPT".to_string(), Some("rfc822;x+40y@z".to_string())),
        ];
        let dsn = RcptDsn::from_params(&params).unwrap();
        assert_eq!(dsn.orcpt.as_deref(), Some("rfc822;x@y@z"));
        assert!(dsn.notify.is_some_and(|n| n.failure && !n.success));
        assert_eq!(
            RcptDsn::from_params(&[("NOTIFY".into(), None)]),
            Err(DsnError::Notify)
        );
    }

    #[test]
    fn xtext_round_trips() {
        for s in ["a+b=c d@e", "plain@example.test", "\u{e9}t\u{e9}@x"] {
            assert_eq!(xtext_decode(&xtext_encode(s)).as_deref(), Some(s));
        }
        // A decoded byte sequence that is not UTF-8 is refused, never cut.
        assert_eq!(xtext_decode("+FF"), None);
    }
}
