//! What the plugins said of a session, a greeting or a transaction besides
//! their verdicts: scores, header actions and what becomes of the message.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::message::HeaderAction;
use crate::plugin::Score;

/// What a message will be, besides delivered.
#[derive(Debug, Clone)]
pub enum Disposition {
    /// Accepted and dropped.
    Discard(String),
    /// Accepted and held.
    Quarantine(String),
}

/// Scores, header actions and disposition collected from plugins.
#[derive(Debug, Default)]
pub(super) struct Policy {
    pub(super) scores: Vec<Score>,
    pub(super) actions: Vec<HeaderAction>,
    pub(super) disposition: Option<Disposition>,
    /// Where each (entry, symbol) is in `scores`, and the actions taken:
    /// looked up by hash, not by scan (an RCPT stage runs per recipient).
    score_at: HashMap<(Arc<str>, String), usize>,
    seen: HashSet<HeaderAction>,
}

impl Policy {
    /// Takes in a stage's scores and actions. A chain entry's symbol
    /// counts once (with its largest points), and an action once: the RCPT
    /// stage runs for every recipient, and must not multiply a score (a
    /// DNSBL hit on the client) by the number of recipients.
    pub(super) fn take(&mut self, scores: Vec<Score>, actions: Vec<HeaderAction>) {
        for s in scores {
            match self.score_at.get(&(s.entry.clone(), s.symbol.clone())) {
                Some(&i) if s.points.abs() > self.scores[i].points.abs() => self.scores[i] = s,
                Some(_) => {}
                None => {
                    let key = (s.entry.clone(), s.symbol.clone());
                    self.score_at.insert(key, self.scores.len());
                    self.scores.push(s);
                }
            }
        }
        for a in actions {
            if self.seen.insert(a.clone()) {
                self.actions.push(a);
            }
        }
    }
}
