//! The policy-service bridge: a chain entry that asks a Postfix SMTPD
//! policy server (policyd-weight, postgrey, ...) in the policy delegation
//! protocol, over pooled connections, and turns its `action=` into what a
//! plugin's outcome would be.
//!
//! A server that cannot be reached, times out or answers nonsense gets
//! the entry's `default_action` (Postfix's
//! `smtpd_policy_service_default_action`), never a hang or a 5xx of ours.

mod conn;
pub mod protocol;
mod request;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{PolicyEndpoint, PolicyServiceEntry, parse_policy_endpoint};
use crate::plugin::outcome::{EditRefused, Outcome, Verdict, check_action};
use crate::smtp::reply::{Enhanced, Reply};
use conn::Idle;
pub use protocol::{Action, parse_action};
pub use request::Query;

/// Idle connections kept per server.
const MAX_IDLE: usize = 64;

/// A configured policy service: where it is, its limits, its pool.
pub struct PolicyService {
    label: Arc<str>,
    endpoint: PolicyEndpoint,
    timeout: Duration,
    max_idle: Duration,
    max_ttl: Duration,
    try_limit: u32,
    default_action: Action,
    policy_context: String,
    /// Listener name -> its address, for `server_address`/`server_port`.
    listeners: HashMap<String, SocketAddr>,
    idle: Mutex<Vec<Idle>>,
}

impl std::fmt::Debug for PolicyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyService")
            .field("label", &self.label)
            .field("endpoint", &self.endpoint.to_string())
            .finish()
    }
}

/// A verdict that depends on how the stage ends (`DEFER_IF_PERMIT`,
/// `DEFER_IF_REJECT`, `HOLD`).
#[derive(Debug, Clone, PartialEq)]
pub enum Conditional {
    /// Tempfail with this reply if the stage would otherwise accept.
    IfPermit(Reply),
    /// Tempfail with this reply if the stage would otherwise reject.
    IfReject(Reply),
    /// Quarantine for this reason if the stage would otherwise accept:
    /// Postfix's `HOLD` marks the message and goes on, so a later
    /// rejection still rejects.
    Hold(String),
}

impl Conditional {
    /// What the stage's verdict becomes (`None`: the stage ended without
    /// one, which accepts); `None` when this does not change it.
    pub fn apply(&self, verdict: Option<&Verdict>) -> Option<Verdict> {
        match (self, verdict) {
            (
                Conditional::IfPermit(r),
                None
                | Some(Verdict::Continue | Verdict::Accept | Verdict::Discard(_))
                | Some(Verdict::Quarantine(_)),
            ) => Some(Verdict::Tempfail(r.clone())),
            (Conditional::IfReject(r), Some(Verdict::Reject(_))) => {
                Some(Verdict::Tempfail(r.clone()))
            }
            (Conditional::Hold(why), None | Some(Verdict::Continue | Verdict::Accept)) => {
                Some(Verdict::Quarantine(why.clone()))
            }
            _ => None,
        }
    }
}

/// What the entry answered: an outcome as a plugin's, and perhaps a
/// verdict that waits for the end of the stage.
#[derive(Debug)]
pub struct Answer {
    /// Verdict and header actions (no scores).
    pub outcome: Outcome,
    /// `DEFER_IF_PERMIT` / `DEFER_IF_REJECT`.
    pub conditional: Option<Conditional>,
}

/// Postfix's `smtpd_policy_service_default_action`, given only if the
/// stage would otherwise accept: a later rejection still rejects.
fn postfix_default_action() -> Action {
    Action::DeferIfPermit(Reply::new(
        451,
        Enhanced(4, 3, 5),
        "Server configuration problem",
    ))
}

impl PolicyService {
    /// The service of a chain entry; `listeners` maps listener names to
    /// their addresses. An error names the key that is wrong.
    pub fn new(
        entry: &PolicyServiceEntry,
        label: &str,
        listeners: HashMap<String, SocketAddr>,
    ) -> Result<PolicyService, String> {
        let endpoint = parse_policy_endpoint(&entry.policy_service)
            .map_err(|e| format!("policy_service: {e}"))?;
        let default_action = match &entry.default_action {
            None => postfix_default_action(),
            Some(s) => parse_action(s).map_err(|e| format!("default_action: {e}"))?,
        };
        Ok(PolicyService {
            label: Arc::from(label),
            endpoint,
            timeout: entry.timeout.0,
            max_idle: entry.max_idle.0,
            max_ttl: entry.max_ttl.0,
            try_limit: entry.try_limit.max(1),
            default_action,
            policy_context: entry.policy_context.clone(),
            listeners,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Label for logs.
    pub fn label(&self) -> &Arc<str> {
        &self.label
    }

    /// Asks the server about one stage of a session and maps its action;
    /// a failure is logged and answered with `default_action`.
    pub async fn check(&self, q: &Query<'_>) -> Answer {
        let request = q.request(self);
        let failure = match self.ask(&request.encode()).await {
            Ok(text) => match parse_action(&text) {
                Ok(action) => {
                    tracing::debug!(
                        "{}: policy service {} at {}: action={text}",
                        q.context,
                        self.label,
                        q.stage.name()
                    );
                    return self.answer(action, q.context);
                }
                Err(e) => format!("bad answer: {e}"),
            },
            Err(e) => e,
        };
        tracing::warn!(
            "{}: policy service {} ({}) failed at {}: {failure}; using default_action",
            q.context,
            self.label,
            self.endpoint,
            q.stage.name()
        );
        self.answer(self.default_action.clone(), q.context)
    }

    /// An action as a plugin outcome.
    fn answer(&self, action: Action, context: &str) -> Answer {
        let mut conditional = None;
        let mut actions = Vec::new();
        let verdict = match action {
            Action::Ok => Verdict::Accept,
            Action::Dunno => Verdict::Continue,
            Action::Reject(r) => Verdict::Reject(r),
            Action::Defer(r) => Verdict::Tempfail(r),
            Action::DeferIfPermit(r) => {
                conditional = Some(Conditional::IfPermit(r));
                Verdict::Continue
            }
            Action::DeferIfReject(r) => {
                conditional = Some(Conditional::IfReject(r));
                Verdict::Continue
            }
            Action::Prepend(h) => {
                // A refused header is logged (by check_action, or here)
                // and the answer stays DUNNO, as for a plugin's edit.
                match check_action(h, &self.label) {
                    Ok(h) => actions.push(h),
                    Err(EditRefused::ValueTooLong(why)) => {
                        tracing::warn!(
                            "{context}: policy service {}: PREPEND refused: {why}",
                            self.label
                        );
                    }
                    Err(_) => {}
                }
                Verdict::Continue
            }
            Action::Discard(why) => Verdict::Discard(why),
            Action::Hold(why) => {
                conditional = Some(Conditional::Hold(why));
                Verdict::Continue
            }
            Action::Log(text) => {
                tracing::info!("{context}: policy service {}: {text}", self.label);
                Verdict::Continue
            }
            Action::Unsupported(text) => {
                tracing::warn!(
                    "{context}: policy service {}: action not supported, ignored (DUNNO): {text}",
                    self.label
                );
                Verdict::Continue
            }
        };
        Answer {
            outcome: Outcome {
                verdict,
                scores: Vec::new(),
                actions,
            },
            conditional,
        }
    }
}

/// A policy-service entry with short limits, for unit tests.
#[cfg(test)]
pub(crate) fn test_entry(address: &str, default_action: Option<&str>) -> PolicyServiceEntry {
    use crate::config::Seconds;
    PolicyServiceEntry {
        policy_service: address.into(),
        name: None,
        timeout: Seconds(Duration::from_secs(1)),
        max_idle: Seconds(Duration::from_secs(300)),
        max_ttl: Seconds(Duration::from_secs(1000)),
        try_limit: 1,
        default_action: default_action.map(str::to_string),
        policy_context: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(default_action: Option<&str>) -> PolicyService {
        let entry = test_entry("inet:127.0.0.1:1", default_action);
        PolicyService::new(&entry, "p", HashMap::new()).unwrap()
    }

    #[test]
    fn actions_become_plugin_outcomes() {
        let s = service(None);
        let a = |t: &str| s.answer(parse_action(t).unwrap(), "Q");
        assert_eq!(a("OK").outcome.verdict, Verdict::Accept);
        assert_eq!(a("DUNNO").outcome.verdict, Verdict::Continue);
        assert!(matches!(a("550 no").outcome.verdict, Verdict::Reject(r) if r.code == 550));
        assert!(matches!(a("DEFER x").outcome.verdict, Verdict::Tempfail(r) if r.code == 450));
        let h = a("HOLD h");
        assert_eq!(h.outcome.verdict, Verdict::Continue);
        assert_eq!(h.conditional, Some(Conditional::Hold("h".into())));
        assert_eq!(a("DISCARD d").outcome.verdict, Verdict::Discard("d".into()));
        let p = a("PREPEND X-Test: yes");
        assert_eq!(p.outcome.verdict, Verdict::Continue);
        assert_eq!(p.outcome.actions.len(), 1);
        // Fields only the host writes are refused, as a plugin's are.
        assert!(a("PREPEND Return-Path: <x@y>").outcome.actions.is_empty());
        assert!(a("PREPEND Bad Name: v").outcome.actions.is_empty());
        let d = a("DEFER_IF_PERMIT wait");
        assert_eq!(d.outcome.verdict, Verdict::Continue);
        assert!(matches!(d.conditional, Some(Conditional::IfPermit(_))));
        assert_eq!(a("REDIRECT x@y").outcome.verdict, Verdict::Continue);
        assert_eq!(a("WARN hm").outcome.verdict, Verdict::Continue);
    }

    #[test]
    fn conditionals_follow_how_the_stage_ends() {
        let r = Reply::new(450, Enhanced(4, 7, 1), "later");
        let reject = Verdict::Reject(Reply::new(554, Enhanced(5, 7, 1), "no"));
        let permit = Conditional::IfPermit(r.clone());
        assert_eq!(permit.apply(None), Some(Verdict::Tempfail(r.clone())));
        assert_eq!(
            permit.apply(Some(&Verdict::Accept)),
            Some(Verdict::Tempfail(r.clone()))
        );
        assert_eq!(permit.apply(Some(&reject)), None);
        let if_reject = Conditional::IfReject(r.clone());
        assert_eq!(if_reject.apply(None), None);
        assert_eq!(if_reject.apply(Some(&reject)), Some(Verdict::Tempfail(r)));
        let hold = Conditional::Hold("look".into());
        assert_eq!(hold.apply(None), Some(Verdict::Quarantine("look".into())));
        assert_eq!(hold.apply(Some(&reject)), None);
        assert_eq!(hold.apply(Some(&Verdict::Discard("d".into()))), None);
    }

    #[test]
    fn the_default_action_is_postfixs_and_can_be_set() {
        let s = service(None);
        let a = s.answer(s.default_action.clone(), "Q");
        let Some(Conditional::IfPermit(r)) = a.conditional else {
            panic!("{a:?}")
        };
        assert_eq!(
            r.to_string().trim_end(),
            "451 4.3.5 Server configuration problem"
        );
        let s = service(Some("DUNNO"));
        assert_eq!(s.default_action, Action::Dunno);
        let entry = test_entry("unix:/nonexistent", Some("MAYBE"));
        let e = PolicyService::new(&entry, "p", HashMap::new()).unwrap_err();
        assert!(e.starts_with("default_action:"), "{e}");
    }
}
