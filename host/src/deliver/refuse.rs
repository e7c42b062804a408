//! The agents of a transport entry's `error:`, `retry:` and `discard:`
//! (Postfix's error(8), retry(8) and discard(8)): nothing is delivered;
//! the recipient is bounced or deferred with the entry's status code and
//! text, or counted as delivered.

use super::agent::{Agent, Message, Outcome, Rcpt};
use crate::route::Transport;

/// Refuses or discards each recipient as its transport says.
pub struct Refuse;

impl Agent for Refuse {
    fn deliver(&self, _msg: Message<'_>, rcpts: &[Rcpt<'_>]) -> Vec<Outcome> {
        rcpts
            .iter()
            .map(|r| match r.transport {
                Transport::Refuse {
                    bounce: true,
                    dsn,
                    text,
                } => Outcome::bounced("none", dsn, text.clone()),
                Transport::Refuse { dsn, text, .. } => Outcome::deferred("none", dsn, text.clone()),
                Transport::Discard { text } => Outcome::sent("none", text.clone()),
                _ => Outcome::deferred("none", "4.3.5", "not a refused recipient"),
            })
            .collect()
    }
}
