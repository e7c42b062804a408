//! The Postfix SMTPD policy delegation protocol without I/O: a request is
//! `name=value` lines ended by an empty line, and so is the answer, whose
//! `action=` is an access(5) action (Postfix's SMTPD_POLICY_README).

use crate::message::HeaderAction;
use crate::smtp::reply::{Enhanced, Reply};

/// Longest answer taken from a server (Postfix's attribute lines are far
/// shorter); more is a protocol error.
pub const MAX_ANSWER: usize = 16 << 10;

/// Longest reply text kept from an action (it goes into an SMTP reply).
const MAX_TEXT: usize = 400;

/// A request: attributes in the order Postfix sends them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Request {
    attrs: Vec<(&'static str, String)>,
}

impl Request {
    /// Adds an attribute; line breaks in the value (which SMTP never
    /// hands over, but a config might) become spaces, so a value cannot
    /// end the request or add attributes.
    pub fn push(&mut self, name: &'static str, value: impl AsRef<str>) {
        let value = value
            .as_ref()
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        self.attrs.push((name, value));
    }

    /// The value of an attribute, for tests and logs.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The request on the wire, with its final empty line.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024);
        for (name, value) in &self.attrs {
            out.extend_from_slice(name.as_bytes());
            out.push(b'=');
            out.extend_from_slice(value.as_bytes());
            out.push(b'\n');
        }
        out.push(b'\n');
        out
    }
}

/// Where the end of an answer is, once `buf` holds it: the length of the
/// answer with its empty line.
pub fn answer_end(buf: &[u8]) -> Option<usize> {
    if buf.starts_with(b"\n") {
        return Some(1);
    }
    buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2)
}

/// The `action=` of a complete answer; other attributes are ignored (as
/// Postfix does). An error says what is wrong with the answer.
pub fn parse_answer(answer: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(answer).map_err(|_| "answer is not UTF-8".to_string())?;
    let mut action = None;
    for line in text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)) {
        if line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            return Err(format!("answer line without '=': {:?}", cut(line)));
        };
        if name == "action" {
            action = Some(value.to_string());
        }
    }
    action.ok_or_else(|| "answer without action=".to_string())
}

/// An access(5) action as a policy server answers it (or as
/// `default_action` names it).
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `OK`: permit, the stage's chain ends.
    Ok,
    /// `DUNNO` (and an empty action): no opinion.
    Dunno,
    /// `REJECT`, `5NN`: a permanent refusal.
    Reject(Reply),
    /// `DEFER`, `4NN`: a temporary refusal.
    Defer(Reply),
    /// `DEFER_IF_PERMIT`: a temporary refusal if the stage would
    /// otherwise accept.
    DeferIfPermit(Reply),
    /// `DEFER_IF_REJECT`: a later rejection in the stage becomes this
    /// temporary refusal.
    DeferIfReject(Reply),
    /// `PREPEND name: value`: no opinion, and a header added.
    Prepend(HeaderAction),
    /// `DISCARD`: accept and drop the message.
    Discard(String),
    /// `HOLD`: keep the message on hold (quarantine) unless the stage
    /// rejects it.
    Hold(String),
    /// `WARN`, `INFO`: a log line, no opinion.
    Log(String),
    /// An action Postern does not take (`REDIRECT`, `FILTER`, `BCC`, a
    /// restriction name): logged, no opinion.
    Unsupported(String),
}

/// Text for an SMTP reply: control characters replaced, cut.
fn clean(s: &str) -> String {
    s.chars()
        .take(MAX_TEXT)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

fn cut(s: &str) -> String {
    clean(&s.chars().take(80).collect::<String>())
}

/// A reply of class 4 or 5: an enhanced status code at the start of the
/// text of the same class is honoured (access(5)), else `X.7.1`.
fn reply(code: u16, text: &str, default_text: &'static str) -> Reply {
    let class = (code / 100) as u8;
    let text = clean(text);
    let (first, rest) = text.split_once(' ').unwrap_or((&text, ""));
    let (enhanced, rest) = match Enhanced::parse(first).filter(|e| e.0 == class) {
        Some(e) => (e, rest.trim_start()),
        None => (Enhanced(class, 7, 1), text.as_str()),
    };
    if rest.is_empty() {
        Reply::new(code, enhanced, default_text)
    } else {
        Reply::new(code, enhanced, rest.to_string())
    }
}

/// Parses an action (case-insensitive keyword, then optional text); an
/// error names what is not an action.
pub fn parse_action(s: &str) -> Result<Action, String> {
    let s = s.trim();
    let (word, text) = match s.find([' ', '\t']) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    };
    if word.len() == 3 && word.bytes().all(|b| b.is_ascii_digit()) {
        let code: u16 = word.parse().unwrap_or(0);
        return match code {
            // 421 and 521 would close the connection, which an answer
            // about one command does not do.
            400..=499 => Ok(Action::Defer(reply(
                if code == 421 { 450 } else { code },
                text,
                "Try again later",
            ))),
            500..=599 => Ok(Action::Reject(reply(
                if code == 521 { 550 } else { code },
                text,
                "Access denied",
            ))),
            _ => Err(format!("{word}: only 4NN and 5NN codes are actions")),
        };
    }
    let action = match word.to_ascii_uppercase().as_str() {
        "OK" => Action::Ok,
        "" | "DUNNO" => Action::Dunno,
        "REJECT" => Action::Reject(reply(554, text, "Access denied")),
        "DEFER" => Action::Defer(reply(450, text, "Try again later")),
        "DEFER_IF_PERMIT" => Action::DeferIfPermit(reply(450, text, "Try again later")),
        "DEFER_IF_REJECT" => Action::DeferIfReject(reply(450, text, "Try again later")),
        "PREPEND" => {
            let (name, value) = text
                .split_once(':')
                .ok_or_else(|| format!("PREPEND without a header field: {:?}", cut(text)))?;
            Action::Prepend(HeaderAction::Add {
                name: name.trim_end().to_string(),
                value: value.trim_start().to_string(),
            })
        }
        "DISCARD" => Action::Discard(clean(text)),
        "HOLD" => Action::Hold(clean(text)),
        "WARN" | "INFO" => Action::Log(clean(s)),
        "REDIRECT" | "FILTER" | "BCC" | "PERMIT" | "REJECT_UNAUTH_DESTINATION" => {
            Action::Unsupported(cut(s))
        }
        _ => return Err(format!("not an access(5) action: {:?}", cut(s))),
    };
    Ok(action)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(a: &Action) -> (u16, String, String) {
        let r = match a {
            Action::Reject(r)
            | Action::Defer(r)
            | Action::DeferIfPermit(r)
            | Action::DeferIfReject(r) => r,
            other => panic!("{other:?}"),
        };
        (
            r.code,
            r.enhanced.map(|e| e.to_string()).unwrap_or_default(),
            r.lines.join(" "),
        )
    }

    #[test]
    fn requests_are_lines_ended_by_an_empty_line() {
        let mut r = Request::default();
        r.push("request", "smtpd_access_policy");
        r.push("helo_name", "evil\nrecipient=x\n");
        assert_eq!(
            r.encode(),
            b"request=smtpd_access_policy\nhelo_name=evil recipient=x \n\n"
        );
    }

    #[test]
    fn answers_end_at_the_empty_line_and_carry_an_action() {
        assert_eq!(answer_end(b"action=DUNNO\n"), None);
        assert_eq!(answer_end(b"action=DUNNO\n\n"), Some(14));
        assert_eq!(answer_end(b"\n"), Some(1));
        assert_eq!(
            parse_answer(b"action=550 no\nfoo=bar\n\n").unwrap(),
            "550 no"
        );
        assert_eq!(parse_answer(b"action=\n\n").unwrap(), "");
        assert!(parse_answer(b"\n").unwrap_err().contains("without action"));
        assert!(
            parse_answer(b"garbage\n\n")
                .unwrap_err()
                .contains("without '='")
        );
    }

    #[test]
    fn actions_map_as_access5_says() {
        assert_eq!(parse_action("OK").unwrap(), Action::Ok);
        assert_eq!(parse_action("dunno").unwrap(), Action::Dunno);
        assert_eq!(parse_action("").unwrap(), Action::Dunno);
        assert_eq!(
            class(&parse_action("REJECT").unwrap()),
            (554, "5.7.1".into(), "Access denied".into())
        );
        assert_eq!(
            class(&parse_action("reject 5.7.9 go away").unwrap()),
            (554, "5.7.9".into(), "go away".into())
        );
        // An enhanced code of the wrong class is text.
        assert_eq!(
            class(&parse_action("REJECT 4.7.1 no").unwrap()),
            (554, "5.7.1".into(), "4.7.1 no".into())
        );
        assert_eq!(
            class(&parse_action("DEFER greylisted").unwrap()),
            (450, "4.7.1".into(), "greylisted".into())
        );
        assert_eq!(
            class(&parse_action("550 Mail appeared to be SPAM or forged").unwrap()),
            (
                550,
                "5.7.1".into(),
                "Mail appeared to be SPAM or forged".into()
            )
        );
        assert_eq!(
            class(&parse_action("451 4.7.1 Greylisted, see x").unwrap()),
            (451, "4.7.1".into(), "Greylisted, see x".into())
        );
        assert_eq!(class(&parse_action("421 bye").unwrap()).0, 450);
        assert_eq!(class(&parse_action("521 bye").unwrap()).0, 550);
        assert!(matches!(
            parse_action("DEFER_IF_PERMIT 4.3.5 later").unwrap(),
            Action::DeferIfPermit(r) if r.enhanced == Some(Enhanced(4, 3, 5))
        ));
        assert!(matches!(
            parse_action("DEFER_IF_REJECT").unwrap(),
            Action::DeferIfReject(_)
        ));
        assert_eq!(
            parse_action("PREPEND X-policyd-weight:  NOT_IN_X=-1.5; rate: -4.6").unwrap(),
            Action::Prepend(HeaderAction::Add {
                name: "X-policyd-weight".into(),
                value: "NOT_IN_X=-1.5; rate: -4.6".into()
            })
        );
        assert!(parse_action("PREPEND nocolon").is_err());
        assert_eq!(
            parse_action("DISCARD spam\x1b").unwrap(),
            Action::Discard("spam".into())
        );
        assert_eq!(
            parse_action("HOLD look").unwrap(),
            Action::Hold("look".into())
        );
        assert!(matches!(parse_action("WARN hm").unwrap(), Action::Log(_)));
        assert!(matches!(
            parse_action("REDIRECT a@b").unwrap(),
            Action::Unsupported(_)
        ));
        for bad in ["250 ok", "999 x", "MAYBE", "12"] {
            assert!(parse_action(bad).is_err(), "{bad}");
        }
    }
}
