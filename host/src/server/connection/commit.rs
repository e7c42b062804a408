//! The end of a transaction in the driver: the message's header scan and
//! edit (off the async workers for a large one), the data stage's
//! verdict, then the message made durable: queued, held, discarded, or
//! delivered into local mailboxes before the 250.

use super::Connection;
use crate::message::{self, HeaderAction};
use crate::route::Destination;
use crate::server::offload;
use crate::server::reply;
use crate::server::stage::{self, Disposition};
use crate::server::trace::{TraceInfo, missing_headers, received};
use crate::smtp::reply::Reply;
use crate::spool::{self, Client, Envelope};
use crate::tls::TlsInfo;

impl Connection {
    /// Judges the message (data stage), applies header actions, and makes
    /// the message durable (or discards or holds it).
    pub(super) async fn commit(&mut self) -> Result<Reply, Reply> {
        let Some(tx) = self.session.transaction() else {
            return Err(reply::no_transaction());
        };
        let id = tx.id.clone();
        // The content's share of the in-memory budget is given back when
        // this returns: the message is on disk (or refused) by then.
        let (content, _charge) = self.body.take();
        // The header checks of the end of DATA, in one scan (off the async
        // workers for a large message), before any plugin spends time on
        // the message.
        let (content, found) = offload::by_size(content, |c| {
            let found = message::inspect(&c);
            (c, found)
        })
        .await
        .map_err(|e| self.internal_error(&id, "header scan", &e))?;
        let (content, disposition) = self
            .judge
            .data(&self.generation, &self.session, &id, content, &found)
            .await
            .map_err(|refusal| refusal.reply)?;
        let Some(tx) = self.session.transaction() else {
            return Err(reply::no_transaction());
        };
        if let Some(Disposition::Discard(why)) = &disposition {
            tracing::info!(
                "{id}: client={}, from=<{}>, size={}, nrcpt={}: discarded: {why}",
                self.client,
                tx.from,
                content.len(),
                tx.rcpts.len()
            );
            return Ok(reply::queued(&id));
        }
        let recipients = stage::recipients(tx, self.generation.router.delimiter());
        // In one pass over the header section (off the async workers for a
        // large message): fields only Postern may write go (Return-Path is
        // added at delivery, as Postfix drops incoming ones; a score header
        // from outside must not pass for ours with filters that trust it),
        // plugins' changes apply, and content that starts (or whose header
        // section goes on) with a line that is not a header field gets its
        // empty line, or it could continue the trace fields prepended to it.
        let actions = self.judge.header_actions();
        let edited = {
            let actions = actions.clone();
            offload::by_size(content, move |c| message::edit(c, &found, &actions))
                .await
                .map_err(|e| self.internal_error(&id, "header edit", &e))?
        };
        let content = edited.content;
        if let Some(at) = found.missing_separator {
            tracing::info!(
                "{id}: no empty line after the header section: inserted one at byte {at}"
            );
        }
        if edited.host_only_removed > 0 {
            tracing::info!(
                "{id}: removed {} Return-Path/X-Postern-Score field(s) sent by the client",
                edited.host_only_removed
            );
        }
        let single = match tx.rcpts.as_slice() {
            [only] => Some(only.path.to_string()),
            _ => None,
        };
        let hostname = &self.generation.config.server.hostname;
        let tls_comment = self.tls.as_ref().map(TlsInfo::received_comment);
        let mut prepend = received(&TraceInfo {
            helo: self.session.greeting.as_ref().map(|g| g.name.as_str()),
            ptr: self.session.client_ptr.as_deref(),
            ip: self.peer.ip(),
            hostname,
            protocol: self.session.protocol(),
            tls: tls_comment.as_deref(),
            id: &id,
            single_rcpt: single.as_deref(),
            utf8: tx.params.smtputf8,
        });
        prepend.push_str(&self.judge.score_field(&self.generation, &id));
        prepend.push_str(&edited.added);
        if !actions.is_empty() {
            let what: Vec<String> = actions.iter().map(HeaderAction::describe).collect();
            tracing::info!("{id}: header changes by plugins: {}", what.join(", "));
        }
        prepend.push_str(&missing_headers(
            edited.message_id,
            edited.date,
            &id,
            hostname,
        ));
        let listener = self
            .generation
            .listener(self.listener)
            .map(|l| l.name.clone())
            .unwrap_or_default();
        let env = Envelope {
            version: spool::format::ENVELOPE_VERSION,
            id: id.clone(),
            arrival: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            sender: tx.from.to_string(),
            recipients,
            prepend,
            client: Client {
                ip: self.peer.ip().to_string(),
                ptr: self.session.client_ptr.clone(),
                helo: self.session.greeting.as_ref().map(|g| g.name.clone()),
                auth_user: self.session.auth_user.clone(),
                listener,
            },
            smtputf8: tx.params.smtputf8,
            ret: tx.params.ret,
            envid: tx.params.envid.clone(),
        };
        // A success report is made from the queue, after the delivery.
        let direct = disposition.is_none()
            && self.generation.config.queue.direct_delivery
            && env.recipients.iter().all(|r| !r.notify().success)
            && tx
                .rcpts
                .iter()
                .flat_map(|r| &r.route)
                .all(|d| matches!(d, Destination::Local { .. }));
        if direct {
            if let Some(journaled) = self
                .shared
                .journaled
                .clone()
                .filter(|j| self.generation.config.queue.journal && j.healthy())
            {
                return self.deliver_journaled(&journaled, content, env).await;
            }
            return self.deliver_now(content, env).await;
        }
        let held = match &disposition {
            Some(Disposition::Quarantine(why)) => Some(why.clone()),
            _ => None,
        };
        let status = held
            .as_ref()
            .map_or_else(|| "queued".to_string(), |why| format!("held: {why}"));
        let line = self.arrival(&env, content.len(), &status);
        let result = match held {
            Some(why) => self.shared.spool.commit_held(content, env, why).await,
            None => self.shared.spool.commit(content, env).await,
        };
        match result {
            Ok(()) => {
                tracing::info!("{line}");
                if disposition.is_none() {
                    self.shared.queue.queued(id.clone());
                }
                Ok(reply::queued(&id))
            }
            Err(e) => Err(self.queue_failed(&id, &e)),
        }
    }

    /// Logs a failure of the host's own work on a message (a bug: a task
    /// that panicked); the client gets a 4xx and retries.
    fn internal_error(&self, id: &str, what: &str, e: &dyn std::fmt::Display) -> Reply {
        tracing::error!(
            "{id}: BUG: {what} failed for a message from {}: {e}",
            self.client
        );
        reply::internal_error()
    }

    /// Logs a spool (or journal) failure; the client gets a 4xx and
    /// retries.
    fn queue_failed(&self, id: &str, e: &dyn std::fmt::Display) -> Reply {
        tracing::error!("{id}: cannot queue message from {}: {e}", self.client);
        reply::queue_write_error()
    }

    /// The log line of a message's arrival (Postfix's `qmgr: from=` line).
    fn arrival(&self, env: &Envelope, size: usize, status: &str) -> String {
        format!(
            "{}: client={}, from=<{}>, size={size}, nrcpt={}, proto={} ({status})",
            env.id,
            self.client,
            env.sender,
            env.recipients.len(),
            self.session.protocol()
        )
    }

    /// Journaled direct delivery: every recipient is a local mailbox; the
    /// message is durable in the journal before the 250 and goes into the
    /// Maildirs right after ([`crate::deliver::journaled`]).
    async fn deliver_journaled(
        &mut self,
        journaled: &crate::deliver::journaled::Journaled,
        content: Vec<u8>,
        env: Envelope,
    ) -> Result<Reply, Reply> {
        let id = env.id.clone();
        let line = self.arrival(&env, content.len(), "journaled");
        let router = self.generation.router.clone();
        let hostname = self.generation.config.server.hostname.clone();
        let durable = || tracing::info!("{line}");
        match journaled
            .accept(content, env, router, hostname, durable)
            .await
        {
            Ok(()) => Ok(reply::queued(&id)),
            Err(e) if spool::is_storage_full(&e) => Err(self.storage_full(&id, &e)),
            Err(e) => Err(self.queue_failed(&id, &e)),
        }
    }

    /// Direct delivery: every recipient is a local mailbox, so the message
    /// goes into the Maildirs (fsynced) before the 250; any recipient that
    /// cannot be delivered now is queued with the others marked done.
    async fn deliver_now(&mut self, content: Vec<u8>, env: Envelope) -> Result<Reply, Reply> {
        let id = env.id.clone();
        tracing::info!("{}", self.arrival(&env, content.len(), "delivering"));
        let router = self.generation.router.clone();
        let syncer = self.shared.syncer.clone();
        let hostname = self.generation.config.server.hostname.clone();
        let delivered = tokio::task::spawn_blocking(move || {
            let mut state = spool::DeliveryState::default();
            let deferred = crate::deliver::deliver_pending(
                &crate::deliver::agent::LocalOnly,
                &router,
                &env,
                &content,
                &mut state,
                &hostname,
                crate::deliver::Durability::Synced(&syncer),
            )
            .left();
            (env, content, state, deferred)
        })
        .await;
        let (env, content, state, deferred) = match delivered {
            Ok(x) => x,
            Err(e) => {
                tracing::error!("{id}: delivery task failed: {e}");
                return Err(reply::local_delivery_failed());
            }
        };
        let Some(last_error) = deferred else {
            return Ok(reply::queued(&id));
        };
        let state = state.first_attempt_failed(last_error);
        match self
            .shared
            .spool
            .commit_with_state(content, env, state)
            .await
        {
            Ok(()) => {
                tracing::info!("{id}: queued for retry");
                self.shared.queue.queued(id.clone());
                Ok(reply::queued(&id))
            }
            Err(e) if e.is_storage_full() => Err(self.storage_full(&id, &e)),
            Err(e) => Err(self.queue_failed(&id, &e)),
        }
    }

    /// No room on disk for the message (or for the journal's messages in
    /// waiting): the client is told to come back later, as Postfix does
    /// when its queue file system is full.
    fn storage_full(&self, id: &str, e: &dyn std::fmt::Display) -> Reply {
        tracing::warn!("{id}: cannot queue message from {}: {e}", self.client);
        reply::storage_full()
    }
}
