//! Plugin answers in host terms, with every reply made safe: a plugin
//! cannot send a 2xx as a reject, forge reply lines, or inject headers.

use std::sync::Arc;

use super::bindings::postern::filter::types as wit;
use crate::message::{HeaderAction, sanitize_value, valid_header_name};
use crate::smtp::reply::{Enhanced, Reply};

/// Scores, and header actions, one outcome may carry. More is a plugin
/// failure: everything an outcome carries is handled by the host outside
/// the plugin's time budget, and goes into log lines and headers.
pub const MAX_ITEMS: usize = 64;

/// Longest header value a plugin may set (a DKIM or ARC signature is a
/// few kilobytes). Longer is a plugin failure.
pub const MAX_HEADER_VALUE: usize = 16 << 10;

/// Discard and quarantine reasons and score details are cut to this many
/// characters: they go into log lines.
const MAX_TEXT: usize = 400;

/// A reason or detail for a log line: control characters replaced, cut.
fn text(s: &str) -> String {
    sanitize_value(&s.chars().take(MAX_TEXT).collect::<String>())
}

/// A plugin's verdict.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// No opinion.
    Continue,
    /// Permit; ends the stage.
    Accept,
    /// 5xx.
    Reject(Reply),
    /// 4xx.
    Tempfail(Reply),
    /// Accept and drop, with a reason.
    Discard(String),
    /// Accept and hold, with a reason.
    Quarantine(String),
}

impl Verdict {
    /// True for every verdict that ends a stage's chain.
    pub fn is_definitive(&self) -> bool {
        !matches!(self, Verdict::Continue)
    }

    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Continue => "continue",
            Verdict::Accept => "accept",
            Verdict::Reject(_) => "reject",
            Verdict::Tempfail(_) => "tempfail",
            Verdict::Discard(_) => "discard",
            Verdict::Quarantine(_) => "quarantine",
        }
    }
}

/// A score contribution with the entry that made it.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// Symbol.
    pub symbol: String,
    /// Points.
    pub points: f64,
    /// Optional detail.
    pub detail: Option<String>,
    /// Chain entry label.
    pub entry: Arc<str>,
}

/// A plugin's outcome in host terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The verdict.
    pub verdict: Verdict,
    /// Score contributions.
    pub scores: Vec<Score>,
    /// Header changes.
    pub actions: Vec<HeaderAction>,
}

/// Turns a plugin's reply into one that is valid for the verdict class.
fn fix_reply(r: &wit::Reply, class: u8) -> Reply {
    let (lo, default_code) = if class == 5 { (500, 550) } else { (400, 450) };
    // 421 would tell the client that the service closes the connection,
    // which a verdict does not do.
    let code = if (lo..lo + 100).contains(&r.code) && r.code != 421 {
        r.code
    } else {
        default_code
    };
    let enhanced = r
        .enhanced
        .as_deref()
        .and_then(Enhanced::parse)
        .filter(|e| e.0 == class)
        .unwrap_or(Enhanced(class, 7, 1));
    let text: String = r
        .text
        .chars()
        .take(400)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let text = if text.trim().is_empty() {
        if class == 5 {
            "Rejected by policy".into()
        } else {
            "Try again later".into()
        }
    } else {
        text
    };
    Reply::new(code, enhanced, text)
}

fn symbol(s: &str) -> String {
    let s: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "_-.".contains(*c))
        .take(64)
        .collect();
    if s.is_empty() { "UNNAMED".into() } else { s }
}

impl Outcome {
    /// Converts and sanitises a plugin's outcome; an error says why it is
    /// refused (too many scores or actions, a header value too long).
    pub fn from_wit(o: wit::Outcome, entry: &Arc<str>) -> Result<Outcome, String> {
        if o.scores.len() > MAX_ITEMS {
            return Err(format!(
                "returned {} scores (at most {MAX_ITEMS})",
                o.scores.len()
            ));
        }
        if o.actions.len() > MAX_ITEMS {
            return Err(format!(
                "returned {} header actions (at most {MAX_ITEMS})",
                o.actions.len()
            ));
        }
        let verdict = match &o.verdict {
            wit::Verdict::Continue => Verdict::Continue,
            wit::Verdict::Accept => Verdict::Accept,
            wit::Verdict::Reject(r) => Verdict::Reject(fix_reply(r, 5)),
            wit::Verdict::Tempfail(r) => Verdict::Tempfail(fix_reply(r, 4)),
            wit::Verdict::Discard(why) => Verdict::Discard(text(why)),
            wit::Verdict::Quarantine(why) => Verdict::Quarantine(text(why)),
        };
        let scores = o
            .scores
            .iter()
            .filter(|s| s.points.is_finite())
            .map(|s| Score {
                symbol: symbol(&s.symbol),
                points: s.points.clamp(-1000.0, 1000.0),
                detail: s.detail.as_deref().map(text),
                entry: entry.clone(),
            })
            .collect();
        let mut actions = Vec::new();
        for a in o.actions {
            let action = match a {
                wit::Action::AddHeader(h) => HeaderAction::Add {
                    name: h.name,
                    value: h.value,
                },
                wit::Action::ChangeHeader(h) => HeaderAction::Change {
                    name: h.name,
                    index: h.index,
                    value: h.value,
                },
                wit::Action::RemoveHeader(h) => HeaderAction::Remove {
                    name: h.name,
                    index: h.index,
                },
            };
            match check_action(action, entry) {
                Ok(action) => actions.push(action),
                // An outcome has no way to say which item it refuses: a
                // value too long refuses the outcome, as it always did.
                Err(EditRefused::ValueTooLong(why)) => return Err(why),
                Err(_) => {}
            }
        }
        Ok(Outcome {
            verdict,
            scores,
            actions,
        })
    }
}

/// A plugin asked for more than the host takes from one call or one
/// transaction: a plugin failure like an outcome the host refuses.
#[derive(Debug)]
pub struct OverLimit(pub String);

impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OverLimit {}

/// Why a header edit was not taken (logged where it happens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EditRefused {
    /// Not a field name.
    InvalidName,
    /// A field only the host writes.
    HostOnly,
    /// A value over [`MAX_HEADER_VALUE`], with the reason.
    ValueTooLong(String),
}

/// The checks every header edit passes, whether an `outcome.actions` item
/// (0.2.0) or an `edit` host call (0.2.1): a valid field name, not one
/// only the host writes, a value of at most [`MAX_HEADER_VALUE`]. The
/// first two are logged here.
pub fn check_action(action: HeaderAction, entry: &str) -> Result<HeaderAction, EditRefused> {
    if let HeaderAction::Add { value, .. } | HeaderAction::Change { value, .. } = &action
        && value.len() > MAX_HEADER_VALUE
    {
        return Err(EditRefused::ValueTooLong(format!(
            "header {}: value of {} bytes (at most {MAX_HEADER_VALUE})",
            action.name(),
            value.len()
        )));
    }
    if !valid_header_name(action.name()) {
        tracing::warn!(
            "plugin {entry}: ignoring header action with invalid name {:?}",
            action.name()
        );
        return Err(EditRefused::InvalidName);
    }
    if crate::message::HOST_ONLY_FIELDS
        .iter()
        .any(|n| n.eq_ignore_ascii_case(action.name()))
    {
        tracing::warn!(
            "plugin {entry}: ignoring header action on {}, which only the host writes",
            action.name()
        );
        return Err(EditRefused::HostOnly);
    }
    Ok(action)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, enhanced: Option<&str>, text: &str) -> wit::Reply {
        wit::Reply {
            code,
            enhanced: enhanced.map(str::to_string),
            text: text.to_string(),
        }
    }

    #[test]
    fn replies_are_forced_into_their_class() {
        let r = fix_reply(&reply(250, Some("2.0.0"), "ok"), 5);
        assert_eq!((r.code, r.enhanced), (550, Some(Enhanced(5, 7, 1))));
        let r = fix_reply(&reply(452, Some("4.7.0"), "later"), 4);
        assert_eq!((r.code, r.enhanced), (452, Some(Enhanced(4, 7, 0))));
        // 421 means the connection closes, which a verdict does not do.
        let r = fix_reply(&reply(421, Some("4.7.0"), "later"), 4);
        assert_eq!((r.code, r.enhanced), (450, Some(Enhanced(4, 7, 0))));
        let r = fix_reply(&reply(554, Some("4.7.1"), "x\r\n250 ok"), 5);
        assert_eq!(r.enhanced, Some(Enhanced(5, 7, 1)));
        assert!(!r.lines[0].contains('\n'));
    }

    #[test]
    fn bad_header_names_and_scores_are_dropped() {
        let entry: Arc<str> = Arc::from("t");
        let o = Outcome::from_wit(
            wit::Outcome {
                verdict: wit::Verdict::Continue,
                scores: vec![
                    wit::Score {
                        symbol: "A B".into(),
                        points: f64::NAN,
                        detail: None,
                    },
                    wit::Score {
                        symbol: "OK_SYM".into(),
                        points: 2.0,
                        detail: None,
                    },
                ],
                actions: vec![
                    wit::Action::AddHeader(wit::Header {
                        name: "Bad:Name".into(),
                        value: "v".into(),
                    }),
                    wit::Action::AddHeader(wit::Header {
                        name: "X-Good".into(),
                        value: "v".into(),
                    }),
                    // Only the host writes these.
                    wit::Action::AddHeader(wit::Header {
                        name: "return-path".into(),
                        value: "<x@y>".into(),
                    }),
                    wit::Action::AddHeader(wit::Header {
                        name: "X-Postern-Score".into(),
                        value: "-50".into(),
                    }),
                ],
            },
            &entry,
        )
        .unwrap();
        assert_eq!(o.scores.len(), 1);
        assert_eq!(o.actions.len(), 1);
        assert_eq!(o.actions[0].name(), "X-Good");
    }

    fn add(name: &str, value: String) -> wit::Action {
        wit::Action::AddHeader(wit::Header {
            name: name.into(),
            value,
        })
    }

    #[test]
    fn oversized_outcomes_are_refused_and_texts_cut() {
        let entry: Arc<str> = Arc::from("t");
        let outcome = |scores: usize, actions: Vec<wit::Action>, why: String| wit::Outcome {
            verdict: wit::Verdict::Discard(why),
            scores: (0..scores)
                .map(|i| wit::Score {
                    symbol: format!("S{i}"),
                    points: 1.0,
                    detail: Some("d\x1b[31m".repeat(200)),
                })
                .collect(),
            actions,
        };
        let many = (0..=MAX_ITEMS).map(|i| add(&format!("X-{i}"), "v".into()));
        let e = Outcome::from_wit(outcome(0, many.collect(), "x".into()), &entry).unwrap_err();
        assert!(e.contains("65 header actions"), "{e}");
        let e = Outcome::from_wit(outcome(MAX_ITEMS + 1, vec![], "x".into()), &entry).unwrap_err();
        assert!(e.contains("65 scores"), "{e}");
        let long = add("X-Long", "v".repeat(MAX_HEADER_VALUE + 1));
        let e = Outcome::from_wit(outcome(0, vec![long], "x".into()), &entry).unwrap_err();
        assert!(e.contains("X-Long"), "{e}");
        // At the limits: accepted; reasons and details cut and cleaned.
        let ok = (0..MAX_ITEMS).map(|i| add(&format!("X-{i}"), "v".into()));
        let o = Outcome::from_wit(
            outcome(MAX_ITEMS, ok.collect(), "w\0hy".repeat(500)),
            &entry,
        )
        .unwrap();
        assert_eq!((o.scores.len(), o.actions.len()), (MAX_ITEMS, MAX_ITEMS));
        let Verdict::Discard(why) = &o.verdict else {
            panic!("{:?}", o.verdict)
        };
        assert_eq!(why.chars().count(), MAX_TEXT);
        assert!(!why.contains('\0'));
        let detail = o.scores[0].detail.as_deref().unwrap();
        assert!(detail.chars().count() == MAX_TEXT && !detail.contains('\x1b'));
    }
}
