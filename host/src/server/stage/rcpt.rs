//! The RCPT stage: where a recipient is judged, in this order.
//!
//! 1. The protocol checks of the SMTP session ([`crate::smtp`]'s
//!    `rcpt.rs`): a transaction, no BDAT in progress, SMTPUTF8 for a
//!    UTF-8 address, the recipient limit, and the rejects of connect, HELO
//!    and MAIL held back until here (`delay_reject`).
//! 2. Relay control: only trusted networks and authenticated clients may
//!    send to domains that are neither ours nor in `[transport]`. Not
//!    configurable away, and before any plugin: a plugin can only make
//!    Postern stricter.
//! 3. Routing: an unknown local user, an alias loop.
//! 4. The rcpt chain.
//! 5. The scores of the session and the transaction so far.
//!
//! Every refusal of 2-5 is logged here, in one line naming the plugin
//! that refused, if one did.

use super::{Decision, Judge, Refusal, SmtpSession};
use crate::plugin::Stage;
use crate::route::{Destination, RouteError, Router};
use crate::server::generation::Generation;
use crate::server::reply;
use crate::smtp::address::ForwardPath;
use crate::smtp::command::EsmtpParams;
use crate::smtp::reply::Reply;

impl Judge {
    /// Judges one recipient of the current transaction; its route if
    /// accepted.
    pub async fn rcpt(
        &mut self,
        generation: &Generation,
        session: &SmtpSession,
        to: &ForwardPath,
        params: &EsmtpParams,
    ) -> Decision<Vec<Destination>> {
        let dests = match self.route(generation, session, to) {
            Ok(dests) => dests,
            Err(refusal) => return Err(self.refused(session, to, refusal)),
        };
        let Some(tx) = session.transaction() else {
            return Ok(dests);
        };
        let id = tx.id.clone();
        if self.plugins.has(Stage::Rcpt) {
            let envelope = self.plugin_envelope(session);
            let rcpt = to.to_string();
            let result = self
                .run_chain(
                    session,
                    Stage::Rcpt,
                    &id,
                    envelope,
                    Some((&rcpt, params)),
                    None,
                )
                .await;
            if let Some(refusal) = self.absorb(Stage::Rcpt, &id, result) {
                return Err(self.refused(session, to, refusal));
            }
        }
        match self.judge_scores(generation, Stage::Rcpt, &id) {
            Some(refusal) => Err(self.refused(session, to, refusal)),
            None => Ok(dests),
        }
    }

    /// Logs a refused recipient, in Postfix's shape, naming the plugin
    /// that refused, if one did.
    fn refused(&self, session: &SmtpSession, to: &ForwardPath, refusal: Refusal) -> Refusal {
        let tx = session.transaction();
        tracing::info!(
            "{}: reject: RCPT from {}: {}; from=<{}> to=<{}> proto={} helo=<{}>{}",
            tx.map_or("NOQUEUE", |t| t.id.as_str()),
            self.client,
            refusal.reply.summary(),
            tx.map(|t| t.from.to_string()).unwrap_or_default(),
            to,
            session.protocol(),
            session.greeting.as_ref().map_or("", |g| g.name.as_str()),
            refusal.by_plugin()
        );
        refusal
    }

    /// Relay control, then routing.
    fn route(
        &self,
        generation: &Generation,
        session: &SmtpSession,
        to: &ForwardPath,
    ) -> Decision<Vec<Destination>> {
        let router = &generation.router;
        if let ForwardPath::Mailbox(m) = to
            && !router.accepts_domain(&m.domain)
            && !router.is_trusted(self.peer)
            && session.auth_user.is_none()
        {
            return Err(Refusal::host(reply::relay_denied(m)));
        }
        router.resolve(to).map_err(|e| {
            Refusal::host(match e {
                RouteError::UnknownUser => reply::unknown_user(to),
                RouteError::AliasLoop => reply::alias_loop(to),
            })
        })
    }
}

/// VRFY (RFC 5321 §3.5.1): a local address
/// is looked up, any other is neither confirmed nor denied.
pub fn vrfy(router: &Router, arg: &str) -> Reply {
    let addr = arg.trim().trim_start_matches('<').trim_end_matches('>');
    let Ok(path) = crate::smtp::address::parse_forward_path(addr, true) else {
        return reply::vrfy_bad_syntax();
    };
    if let ForwardPath::Mailbox(m) = &path
        && !router.is_local_domain(&m.domain)
    {
        return reply::vrfy_cannot();
    }
    match router.resolve(&path) {
        Ok(_) => reply::vrfy_known(&path),
        Err(_) => reply::vrfy_unknown(&path),
    }
}
