//! The end-of-data stage: header limits and hop count, the data chain,
//! the scores; then what becomes of the message (discard, hold), which
//! mailboxes it goes to and the fields the host adds from the policy.

use std::collections::HashSet;
use std::sync::Arc;

use super::{Decision, Disposition, Judge, Refusal, SmtpSession};
use crate::message::{HeaderAction, Inspection, header_field, limits};
use crate::plugin::{Stage, scoring};
use crate::route::Destination;
use crate::server::generation::Generation;
use crate::server::reply;
use crate::smtp::session::Transaction;
use crate::spool::Recipient;

impl Judge {
    /// Judges the message `content` of transaction `id`, given the one
    /// scan of its header section (`found`). Gives the content back
    /// (plugins only borrowed it) with what becomes of it besides
    /// delivery. No plugin runs again in the transaction after this.
    pub async fn data(
        &mut self,
        generation: &Generation,
        session: &SmtpSession,
        id: &str,
        content: Vec<u8>,
        found: &Inspection,
    ) -> Decision<(Vec<u8>, Option<Disposition>)> {
        let smtp = &generation.config.smtp;
        limits::enforce(found, smtp.header_limits(), id, &self.client).map_err(Refusal::host)?;
        let hopcount_limit = smtp.hopcount_limit;
        if found.received > hopcount_limit {
            // Postfix cleanup: "message rejected: hopcount exceeded".
            let reply = reply::too_many_hops();
            tracing::warn!(
                "{id}: reject: END-OF-MESSAGE from {}: {}; hopcount exceeded: {} Received: fields, hopcount_limit {hopcount_limit}; from=<{}>",
                self.client,
                reply.summary(),
                found.received,
                session
                    .transaction()
                    .map(|t| t.from.to_string())
                    .unwrap_or_default()
            );
            return Err(Refusal::host(reply));
        }
        let mut content = content;
        if self.plugins.has(Stage::Data) {
            let envelope = self.plugin_envelope(session);
            let shared = Arc::new(content);
            let result = self
                .run_chain(
                    session,
                    Stage::Data,
                    id,
                    envelope,
                    None,
                    Some(shared.clone()),
                )
                .await;
            // Plugins only borrowed the content; take it back without a copy.
            content = Arc::try_unwrap(shared).unwrap_or_else(|a| (*a).clone());
            if let Some(refusal) = self.absorb(Stage::Data, id, result) {
                return Err(refusal);
            }
        }
        // No plugin runs again in this transaction: its instances go now,
        // not after the fsync wait, so that fewer are alive at once (they
        // stay hot in the CPU caches and pooling slots get reused).
        self.plugins.end_transaction();
        if let Some(refusal) = self.judge_scores(generation, Stage::Data, id) {
            return Err(refusal);
        }
        let disposition = self
            .tx_policy
            .disposition
            .clone()
            .or_else(|| self.helo_policy.disposition.clone())
            .or_else(|| self.session_policy.disposition.clone());
        Ok((content, disposition))
    }

    /// The header changes plugins asked for, of the connection, the
    /// greeting and the transaction, in that order.
    pub fn header_actions(&self) -> Vec<HeaderAction> {
        self.session_policy
            .actions
            .iter()
            .chain(self.helo_policy.actions.iter())
            .chain(self.tx_policy.actions.iter())
            .cloned()
            .collect()
    }

    /// Logs the accepted message's score, and gives the `X-Postern-Score`
    /// field to add (empty without scores or with `scoring.add_header`
    /// off).
    pub fn score_field(&self, generation: &Generation, id: &str) -> String {
        let scores = self.all_scores();
        if scores.is_empty() {
            return String::new();
        }
        tracing::info!(
            "{id}: score {:.2} ({})",
            scoring::total(&scores),
            scoring::breakdown(&scores)
        );
        if !generation.config.scoring.add_header {
            return String::new();
        }
        header_field("X-Postern-Score", &scoring::header_value(&scores))
    }
}

/// The mailboxes the message goes to: every accepted recipient's
/// destinations, each once (duplicate elimination, like Postfix: one copy
/// per mailbox), with the recipient's original address and DSN request.
pub fn recipients(tx: &Transaction<Vec<Destination>>, delimiter: Option<char>) -> Vec<Recipient> {
    let mut recipients = Vec::new();
    let mut seen = HashSet::new();
    for rcpt in &tx.rcpts {
        for dest in &rcpt.route {
            if seen.insert(dest) {
                recipients.push(Recipient {
                    address: dest.address(delimiter),
                    original: rcpt.path.to_string(),
                    orcpt: rcpt.dsn.orcpt.clone(),
                    notify: rcpt.dsn.notify,
                });
            }
        }
    }
    recipients
}
