//! The MAIL stage: an authenticated client's right to the sender, the
//! mail chain, the scores.

use std::sync::Arc;

use super::{Decision, Judge, Refusal, SmtpSession, mail_params};
use crate::plugin::{EnvelopeInfo, Stage};
use crate::server::generation::Generation;
use crate::server::reply;
use crate::smtp::address::ReversePath;
use crate::smtp::command::MailParams;
use crate::smtp::reply::Reply;

impl Judge {
    /// Judges MAIL FROM for the new transaction `id`. An authenticated
    /// client may use only the senders it owns (refused at once, whatever
    /// `delay_reject` says); a refusal of the chain or the scores is held
    /// back until RCPT with `delay_reject` (`Ok(Some(reply))`).
    pub async fn mail(
        &mut self,
        generation: &Generation,
        session: &SmtpSession,
        id: &str,
        from: &ReversePath,
        params: &MailParams,
    ) -> Decision<Option<Reply>> {
        // A transaction abandoned by RSET or a failed DATA ends here; the
        // instances made at connect/HELO serve the first transaction.
        if self.in_transaction {
            self.end_transaction();
        }
        self.in_transaction = true;
        if let Some(user) = &session.auth_user
            && !owns_sender(generation, user, from)
        {
            tracing::info!(
                "{id}: reject: MAIL from {}: <{from}> not owned by user {user}",
                self.client
            );
            return Err(Refusal::host(reply::sender_not_owned(from, user)));
        }
        let mut refusal = None;
        if self.plugins.has(Stage::Mail) {
            let envelope = EnvelopeInfo {
                queue_id: id.to_string(),
                mail_from: from.to_string(),
                mail_params: mail_params(params),
                rcpt_to: Vec::new(),
            };
            let result = self
                .run_chain(
                    session,
                    Stage::Mail,
                    id,
                    Some(Arc::new(envelope)),
                    None,
                    None,
                )
                .await;
            refusal = self.absorb(Stage::Mail, id, result);
        }
        if let Some(by_scores) = self.judge_scores(generation, Stage::Mail, id) {
            refusal = Some(by_scores);
        }
        match refusal {
            None => Ok(None),
            Some(refusal) if generation.config.smtp.delay_reject => Ok(Some(refusal.reply)),
            Some(refusal) => {
                self.end_transaction();
                Err(refusal)
            }
        }
    }
}

/// Whether an authenticated identity may use this envelope sender: its
/// own address and its +tag forms, plus `sender_logins`
/// ([`crate::sasl::sender_login`]).
fn owns_sender(generation: &Generation, identity: &str, sender: &ReversePath) -> bool {
    let ReversePath::Mailbox(m) = sender else {
        return true;
    };
    let config = &generation.config;
    crate::sasl::sender_login::owns(
        identity,
        &m.local,
        &m.domain,
        config.local.recipient_delimiter.chars().next(),
        &config.sender_logins,
        |d| generation.router.is_mydestination(d),
    )
}
