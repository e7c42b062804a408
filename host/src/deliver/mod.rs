//! The delivery manager: takes queued messages, hands each recipient to its
//! delivery agent, and reschedules temporary failures with exponential
//! backoff. A message leaves the spool only when every recipient is done.

pub mod agent;
pub mod bounce;
pub mod cache;
pub mod conn;
pub mod journaled;
pub mod lmtp;
pub mod local;
pub mod mailbox;
pub mod maildir;
pub mod mbox;
pub mod pipe;
pub mod refuse;
pub mod smtp;
pub mod wire;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::route::{Router, Transport, TransportError};
use crate::spool::front::Front;
use crate::spool::journal::Placed;
use crate::spool::{
    DeliveryState, DirSyncer, Envelope, Loaded, Recipient, RecipientState, Spool, SpoolError,
    now_secs,
};
use agent::{Agent, Handoff, Message, Outcome, Rcpt, Status};
use lmtp::Lmtp;
use local::Local;
pub use maildir::Durability;

/// Delivery settings taken from `[queue]` and `[server]`.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Our host name (Maildir file names).
    pub hostname: String,
    /// Deliveries in flight.
    pub concurrency: usize,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Give up (hold) after this long.
    pub max_lifetime: Duration,
    /// Tell the sender once when a message is still pending after this
    /// long (`None`: never).
    pub delay_warning: Option<Duration>,
}

/// Messages sent to the manager.
#[derive(Debug)]
pub enum Job {
    /// A message was queued (or recovered): deliver it.
    Queued(String),
    /// Retry every deferred message now (`postern queue flush`).
    Flush,
    /// An operator's command on one message; the answer goes back.
    Admin(Admin, String, oneshot::Sender<String>),
}

/// What an operator asks of one queued message (`postern queue …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admin {
    /// Put it on hold (`postsuper -h`): no delivery until released.
    Hold,
    /// Deliver it again now (`postsuper -r`): a held message is released,
    /// a deferred one loses its wait; routing is redone at the attempt.
    Requeue,
}

/// Handle used by sessions to hand over newly queued messages.
#[derive(Debug, Clone)]
pub struct Queue {
    tx: mpsc::UnboundedSender<Job>,
}

impl Queue {
    /// Schedules delivery of a message that is now durable in the spool.
    pub fn queued(&self, id: String) {
        let _ = self.tx.send(Job::Queued(id));
    }

    /// Retries every deferred message now.
    pub fn flush(&self) {
        let _ = self.tx.send(Job::Flush);
    }

    /// Carries out an operator's command on a message, once no delivery
    /// attempt of it is in flight; returns the answer line.
    pub async fn admin(&self, what: Admin, id: String) -> String {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Job::Admin(what, id, tx)).is_err() {
            return "error: the delivery manager has stopped".into();
        }
        rx.await
            .unwrap_or_else(|_| "error: the delivery manager has stopped".into())
    }
}

/// The result of one delivery attempt.
enum Attempt {
    /// Every recipient is done; the message was removed.
    Finished,
    /// Some recipients must be retried at this time.
    Retry(Instant),
    /// The attempt could not even start (spool error); retry later.
    Failed(String),
}

/// Shared, read-mostly inputs of a delivery attempt.
struct Ctx {
    /// The manager's own queue: reports an attempt makes are queued here.
    jobs: mpsc::UnboundedSender<Job>,
    spool: Arc<Spool>,
    router: Arc<ArcSwap<Router>>,
    syncer: DirSyncer,
    cfg: DeliveryConfig,
    /// The SMTP client of the running generation.
    smtp: Arc<ArcSwap<smtp::Client>>,
}

/// Starts the manager; returns the handle and the task to await at shutdown.
pub fn start(
    spool: Arc<Spool>,
    router: Arc<ArcSwap<Router>>,
    syncer: DirSyncer,
    cfg: DeliveryConfig,
    smtp: Arc<ArcSwap<smtp::Client>>,
    recovered: Vec<String>,
    shutdown: watch::Receiver<bool>,
) -> (Queue, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(Ctx {
        jobs: tx.clone(),
        spool,
        router,
        syncer,
        cfg,
        smtp,
    });
    let handle = tokio::spawn(run(ctx, rx, recovered, shutdown));
    (Queue { tx }, handle)
}

async fn run(
    ctx: Arc<Ctx>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    recovered: Vec<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ready: VecDeque<String> = VecDeque::new();
    let mut waiting: BinaryHeap<Reverse<(Instant, String)>> = BinaryHeap::new();
    let mut in_flight: HashSet<String> = HashSet::new();
    // Attempts in a row that failed on the spool itself, by message.
    let mut failures: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    let mut tasks: JoinSet<(String, Attempt)> = JoinSet::new();
    // Operators' commands on messages whose attempt is in flight: carried
    // out when it ends, so a hold never races a delivery.
    let mut after_flight: std::collections::HashMap<String, Vec<(Admin, oneshot::Sender<String>)>> =
        std::collections::HashMap::new();

    // Recovered messages keep their retry schedule.
    let now_wall = now_secs();
    for id in recovered {
        let when = match ctx.spool.load_state(&id) {
            Ok(Some(st)) if st.next_attempt > now_wall => {
                Instant::now() + Duration::from_secs(st.next_attempt - now_wall)
            }
            _ => Instant::now(),
        };
        waiting.push(Reverse((when, id)));
    }

    let mut accepting = true;
    loop {
        // Move due retries to the ready queue.
        let now = Instant::now();
        while let Some(Reverse((when, _))) = waiting.peek() {
            if *when > now {
                break;
            }
            if let Some(Reverse((_, id))) = waiting.pop() {
                ready.push_back(id);
            }
        }
        while accepting && tasks.len() < ctx.cfg.concurrency {
            let Some(id) = ready.pop_front() else { break };
            if !in_flight.insert(id.clone()) {
                continue;
            }
            let c = ctx.clone();
            tasks.spawn_blocking(move || {
                let outcome = attempt(&c, &id);
                (id, outcome)
            });
        }
        if !accepting && tasks.is_empty() {
            break;
        }
        let next_wake = waiting
            .peek()
            .map(|Reverse((w, _))| *w)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            job = rx.recv(), if accepting => match job {
                Some(Job::Queued(id)) => ready.push_back(id),
                Some(Job::Flush) => {
                    while let Some(Reverse((_, id))) = waiting.pop() {
                        ready.push_back(id);
                    }
                    // Also what is in queue/ unknown to the manager (put
                    // there by hand, or left by a commit whose final sync
                    // failed): a flush means every queued message.
                    match ctx.spool.queued_ids() {
                        Ok(ids) => {
                            let known: HashSet<String> =
                                ready.iter().chain(in_flight.iter()).cloned().collect();
                            for id in ids.into_iter().filter(|id| !known.contains(id)) {
                                tracing::info!("{id}: found in the queue by a flush");
                                ready.push_back(id);
                            }
                        }
                        Err(e) => tracing::error!("flush: cannot list the queue: {e}"),
                    }
                }
                Some(Job::Admin(what, id, reply)) => {
                    if in_flight.contains(&id) {
                        after_flight.entry(id).or_default().push((what, reply));
                    } else if let Some(id) = admin(&ctx, what, id, reply).await {
                        ready.push_back(id);
                    }
                }
                None => accepting = false,
            },
            Some(res) = tasks.join_next(), if !tasks.is_empty() => match res {
                Ok((id, outcome)) => {
                    in_flight.remove(&id);
                    for (what, reply) in after_flight.remove(&id).unwrap_or_default() {
                        if let Some(id) = admin(&ctx, what, id.clone(), reply).await {
                            ready.push_back(id);
                        }
                    }
                    match outcome {
                        Attempt::Finished => {
                            failures.remove(&id);
                        }
                        Attempt::Retry(at) => {
                            failures.remove(&id);
                            waiting.push(Reverse((at, id)));
                        }
                        Attempt::Failed(e) => {
                            // The spool itself failing (full, read-only):
                            // retried with the usual backoff, not in a loop.
                            let n = failures.entry(id.clone()).or_insert(0);
                            *n += 1;
                            let wait = backoff(&ctx.cfg, *n);
                            tracing::error!(
                                "{id}: delivery attempt failed: {e}; next attempt in {}",
                                humantime::format_duration(wait)
                            );
                            waiting.push(Reverse((Instant::now() + wait, id)));
                        }
                    }
                }
                Err(e) => tracing::error!("delivery task failed: {e}"),
            },
            _ = tokio::time::sleep_until(next_wake.into()) => {}
            _ = shutdown.changed(), if accepting => {
                if *shutdown.borrow() {
                    tracing::info!(
                        "delivery: stopping, {} in flight, {} left in the queue for the next start",
                        tasks.len(),
                        ready.len() + waiting.len()
                    );
                    accepting = false;
                }
            }
        }
    }
}

/// Carries out an operator's command on a message no attempt is
/// delivering, answers it, and returns the ID if it is to be tried now.
async fn admin(
    ctx: &Arc<Ctx>,
    what: Admin,
    id: String,
    reply: oneshot::Sender<String>,
) -> Option<String> {
    let c = ctx.clone();
    let which = id.clone();
    let done = tokio::task::spawn_blocking(move || admin_blocking(&c.spool, what, &which)).await;
    let (answer, now) = match done {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => (format!("error: {e}"), false),
        Err(e) => (format!("error: {e}"), false),
    };
    if let Some(done) = answer.strip_prefix("ok ") {
        tracing::info!("{id}: {done} by the administrator");
    }
    let _ = reply.send(answer);
    now.then_some(id)
}

fn admin_blocking(spool: &Spool, what: Admin, id: &str) -> Result<(String, bool), SpoolError> {
    match what {
        Admin::Hold if spool.is_queued(id) => {
            let mut state = spool.load_state(id)?.unwrap_or_default();
            state.hold_reason = Some("held by the administrator".into());
            spool.hold(id, &state)?;
            Ok(("ok held".into(), false))
        }
        Admin::Hold if spool.is_held(id) => Ok((format!("error: {id} is already held"), false)),
        Admin::Requeue if spool.is_held(id) => {
            spool.release(id)?;
            Ok(("ok requeued (released from hold)".into(), true))
        }
        Admin::Requeue if spool.is_queued(id) => {
            if let Some(mut state) = spool.load_state(id)? {
                state.next_attempt = 0;
                spool.save_state(id, &state)?;
            }
            Ok(("ok requeued".into(), true))
        }
        _ => Ok((format!("error: no message {id:?} in the queue"), false)),
    }
}

/// Backoff for the n-th attempt: initial × 2^(n-1), capped.
pub(crate) fn backoff(cfg: &DeliveryConfig, attempts: u32) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(16);
    cfg.retry_initial.saturating_mul(factor).min(cfg.retry_max)
}

/// Seconds since a message arrived.
fn delay_since(arrival: f64) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(arrival);
    (now - arrival).max(0.0)
}

/// What one attempt left to do.
#[derive(Debug, Default)]
pub struct Attempted {
    /// The last temporary error, if a recipient must be retried.
    pub deferred: Option<String>,
    /// Recipients that failed for good in this attempt: not yet done, as
    /// their sender must be told first ([`bounce::settle`]).
    pub bounced: Vec<usize>,
    /// Recipients delivered in this attempt, with who reports a success
    /// the sender asked for.
    pub sent: Vec<(usize, Handoff)>,
}

impl Attempted {
    /// Why the message is not finished, if it is not: a recipient to
    /// retry, or one whose sender must be told (from the queue).
    pub fn left(&self) -> Option<String> {
        self.deferred.clone().or_else(|| {
            (!self.bounced.is_empty())
                .then(|| "a recipient failed for good: its sender is told from the queue".into())
        })
    }
}

/// Delivers every recipient of `env` that is not yet done in `state`
/// (blocking): routes each once to its transport, hands each agent its
/// recipients in one call, logs one line per recipient, and records each
/// outcome in `state` (delivered ones in `state.done`; failed ones are
/// done only once their sender has been told). `remote` takes the
/// recipients of other domains (the SMTP client).
pub fn deliver_pending(
    remote: &dyn Agent,
    router: &Router,
    env: &Envelope,
    content: &[u8],
    state: &mut DeliveryState,
    hostname: &str,
    how: Durability<'_>,
) -> Attempted {
    let msg = Message {
        env,
        content,
        hostname,
        how,
    };
    // Route once: each pending recipient to its transport, or to an
    // outcome when routing itself says it cannot go anywhere now.
    let mut routed: Vec<(usize, &Recipient, Result<Transport, TransportError>)> = env
        .recipients
        .iter()
        .enumerate()
        .filter(|(i, _)| !state.done.contains(i))
        .map(|(i, r)| (i, r, router.transport(&r.address)))
        .collect();
    routed.sort_by_key(|a| group_key(&a.2));
    let local = Local { router };
    let mut outcomes: Vec<(usize, &Recipient, Outcome)> = Vec::with_capacity(routed.len());
    // One call per agent and, for LMTP, per server: all of a message's
    // recipients there go in one transaction.
    for group in routed.chunk_by(|a, b| group_key(&a.2) == group_key(&b.2)) {
        let rcpts: Vec<Rcpt<'_>> = group
            .iter()
            .filter_map(|(index, record, t)| {
                t.as_ref().ok().map(|transport| Rcpt {
                    index: *index,
                    record,
                    transport,
                })
            })
            .collect();
        let results = match group.first().map(|g| &g.2) {
            Some(Ok(Transport::Local { .. })) => local.deliver(msg, &rcpts),
            Some(Ok(Transport::Smtp { .. })) => remote.deliver(msg, &rcpts),
            Some(Ok(Transport::Lmtp { .. })) => Lmtp.deliver(msg, &rcpts),
            Some(Ok(Transport::Refuse { .. } | Transport::Discard { .. })) => {
                refuse::Refuse.deliver(msg, &rcpts)
            }
            _ => Vec::new(),
        };
        outcomes.extend(
            rcpts
                .iter()
                .map(|r| (r.index, r.record))
                .zip(results)
                .map(|((i, rec), o)| (i, rec, o)),
        );
        for (index, record, t) in group {
            if let Err(e) = t {
                outcomes.push((*index, record, unroutable(e)));
            }
        }
    }
    let mut attempted = Attempted::default();
    let now = now_secs();
    for (index, rcpt, outcome) in outcomes {
        let line = format!(
            "{}: to=<{}>, orig_to=<{}>, relay={}, delay={:.2}, dsn={}, status={} ({})",
            env.id,
            rcpt.address,
            rcpt.original,
            outcome.relay,
            delay_since(env.arrival),
            outcome.dsn,
            outcome.status.as_str(),
            outcome.detail
        );
        match outcome.status {
            Status::Sent => {
                tracing::info!("{line}");
                state.done.insert(index);
                attempted.sent.push((index, outcome.handoff));
            }
            Status::Bounced => {
                tracing::warn!("{line}");
                attempted.bounced.push(index);
            }
            Status::Deferred => {
                tracing::warn!("{line}");
                attempted.deferred = Some(outcome.detail.clone());
            }
        }
        state.recipients.insert(
            index,
            RecipientState {
                status: outcome.status.as_str().into(),
                dsn: outcome.dsn,
                relay: outcome.relay,
                reply: outcome.detail,
                at: now,
            },
        );
    }
    attempted
}

/// The outcome of a recipient routing finds no transport for now: a
/// local user removed since the message was accepted is unknown, as
/// Postfix's local(8) says (`5.1.1`), and returned to the sender rather
/// than retried until `max_lifetime`.
fn unroutable(e: &TransportError) -> Outcome {
    match e {
        TransportError::NoSuchUser(user) => {
            Outcome::bounced("local", "5.1.1", format!("unknown user: \"{user}\""))
        }
        TransportError::NotAnAddress(_) => Outcome::bounced("none", "5.1.3", e.to_string()),
    }
}

/// Groups recipients by the agent that takes them and, for LMTP, by its
/// server, for SMTP by destination (routing failures last).
fn group_key(t: &Result<Transport, TransportError>) -> (u8, Option<String>) {
    match t {
        Ok(Transport::Local { mailbox, .. }) => (0, Some(mailbox.as_str().to_string())),
        Ok(Transport::Lmtp { next_hop }) => (1, Some(next_hop.to_string())),
        Ok(Transport::Smtp {
            next_hop: Some(hop),
            ..
        }) => (2, Some(hop.to_string())),
        Ok(Transport::Smtp { domain, .. }) => (2, Some(domain.clone())),
        Ok(Transport::Refuse { .. } | Transport::Discard { .. }) => (3, None),
        Err(_) => (4, None),
    }
}

/// Which of `addresses` a `Delivered-To:` field of the message names
/// (ASCII case-insensitively, in lower case), in one scan of the header
/// section (`parts`: the host's prepended fields, then the content). Only
/// the matches are kept: memory is bounded by the recipients, time is
/// linear in the header section, whatever the number of fields.
pub fn delivered_before(
    parts: &[&[u8]],
    addresses: impl Iterator<Item = String>,
) -> HashSet<String> {
    let wanted: HashSet<String> = addresses.map(|a| a.to_lowercase()).collect();
    let mut found = HashSet::new();
    if wanted.is_empty() {
        return found;
    }
    for part in parts {
        crate::message::scan_headers(part, |name, range| {
            if name.eq_ignore_ascii_case(b"delivered-to") {
                let value = crate::message::field_value(part, name, range).to_lowercase();
                if wanted.contains(&value) {
                    found.insert(value);
                }
            }
        });
    }
    found
}

/// Where the message of an attempt lives, and so what ending the attempt
/// does with it.
enum Store<'a> {
    /// A queue file in `queue/`, with its state file.
    File,
    /// A journal record taken from the spool's front for its first
    /// attempt: a queue file is written only if the message is not
    /// finished ([`crate::spool::front`]).
    Journal { front: &'a Front, at: Placed },
}

impl Store<'_> {
    /// Every recipient is done: the message leaves.
    fn finished(&self, spool: &Spool, id: &str) -> Result<(), SpoolError> {
        match self {
            Store::File => spool.remove(id),
            Store::Journal { front, at } => {
                front.delivered(*at);
                Ok(())
            }
        }
    }

    /// Keeps the message with its state: saved beside its queue file, or
    /// a queue file made (in `hold/` with a hold reason). Returns the ID
    /// it is queued under (new only if its own was taken).
    fn keep(
        &self,
        spool: &Spool,
        loaded: &Loaded,
        state: &DeliveryState,
    ) -> Result<String, SpoolError> {
        let id = &loaded.envelope.id;
        match self {
            Store::File if state.hold_reason.is_some() => {
                spool.hold(id, state).map(|()| id.clone())
            }
            Store::File => spool.save_state(id, state).map(|()| id.clone()),
            Store::Journal { front, at } => {
                let id = journaled::spool_message(
                    spool,
                    loaded.content(),
                    &loaded.envelope,
                    state.clone(),
                )?;
                front.spooled(*at);
                Ok(id)
            }
        }
    }
}

/// One delivery attempt of one message (blocking).
fn attempt(ctx: &Ctx, id: &str) -> Attempt {
    if let Some(front) = ctx.spool.front()
        && let Some(m) = front.take(id)
    {
        let store = Store::Journal {
            front,
            at: m.placed,
        };
        let outcome = attempt_on(ctx, id, &m.loaded, DeliveryState::default(), &store);
        if matches!(outcome, Attempt::Failed(_)) {
            // Neither finished nor spooled: still the journal's, and the
            // next attempt takes it from there again.
            front.put_back(m);
        }
        return outcome;
    }
    let loaded = match ctx.spool.read(id) {
        Ok(l) => l,
        // Removed meanwhile (delivered by an attempt whose state could
        // not be cleaned up, or by hand): nothing left to do.
        Err(SpoolError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!("{id}: no longer in the queue");
            return Attempt::Finished;
        }
        Err(e) => return Attempt::Failed(e.to_string()),
    };
    let state = match ctx.spool.load_state(id) {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => return Attempt::Failed(e.to_string()),
    };
    attempt_on(ctx, id, &loaded, state, &Store::File)
}

/// One delivery attempt of `loaded`, stored as `store` says.
fn attempt_on(
    ctx: &Ctx,
    id: &str,
    loaded: &Loaded,
    mut state: DeliveryState,
    store: &Store<'_>,
) -> Attempt {
    let env = &loaded.envelope;
    let router = ctx.router.load();
    let started = now_secs();
    let smtp = ctx.smtp.load();
    let attempted = deliver_pending(
        smtp.as_ref(),
        &router,
        env,
        loaded.content(),
        &mut state,
        &ctx.cfg.hostname,
        // Names derived from the queue ID and recipient index, and a copy
        // already there counts: an attempt repeated after a crash, or after
        // its state could not be saved, never delivers twice.
        Durability::Requeued(&ctx.syncer),
    );
    let age = Duration::from_secs_f64(delay_since(env.arrival));
    let expired = attempted.deferred.is_some() && age >= ctx.cfg.max_lifetime;
    if expired && env.sender.is_empty() {
        // Never a report to <>: an undeliverable report is held for the
        // postmaster to see, not dropped.
        let last_error = attempted.deferred.clone().unwrap_or_default();
        state.attempts += 1;
        state.last_error = Some(last_error.clone());
        state.hold_reason = Some(format!(
            "undeliverable for {}: {last_error}",
            humantime::format_duration(Duration::from_secs(age.as_secs()))
        ));
        tracing::error!(
            "{id}: giving up after {} attempts, message from <> held: {last_error}",
            state.attempts
        );
        return match store.keep(&ctx.spool, loaded, &state) {
            Ok(_) => Attempt::Finished,
            Err(e) => Attempt::Failed(e.to_string()),
        };
    }
    // The sender's report is queued before its recipients count as done:
    // a crash in between repeats the report, never loses it.
    match bounce::settle(
        &ctx.spool,
        &ctx.cfg.hostname,
        loaded,
        &mut state,
        &attempted,
        expired,
        ctx.cfg.delay_warning.is_some_and(|w| age >= w),
    ) {
        Ok(Some(report)) => {
            let _ = ctx.jobs.send(Job::Queued(report));
        }
        Ok(None) => {}
        Err(e) => return Attempt::Failed(e.to_string()),
    }
    if state.done.len() >= env.recipients.len() {
        return match store.finished(&ctx.spool, id) {
            Ok(()) => {
                tracing::info!("{id}: removed");
                Attempt::Finished
            }
            Err(e) => Attempt::Failed(e.to_string()),
        };
    }
    let last_error = attempted.left().unwrap_or_default();
    state.attempts += 1;
    state.last_error = Some(last_error);
    let wait = backoff(&ctx.cfg, state.attempts);
    state.next_attempt = started + wait.as_secs();
    match store.keep(&ctx.spool, loaded, &state) {
        Ok(kept) if kept == id => Attempt::Retry(Instant::now() + wait),
        Ok(kept) => {
            // Queued under a new ID (its own was taken): that one is
            // scheduled, this one is done.
            let _ = ctx.jobs.send(Job::Queued(kept));
            Attempt::Finished
        }
        Err(e) => Attempt::Failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivered_to_fields_name_the_recipients_seen_before() {
        let prepend = b"Received: from x\r\nDelivered-To: carol@example.test\r\n";
        let content = b"delivered-to:\r\n  Alice+Tag@Example.Test\r\nSubject: s\r\n\r\nDelivered-To: bob@example.test\r\n";
        let found = delivered_before(
            &[prepend, content],
            [
                "alice+tag@example.test",
                "bob@example.test",
                "carol@example.test",
                "dave@example.test",
            ]
            .map(String::from)
            .into_iter(),
        );
        let mut found: Vec<String> = found.into_iter().collect();
        found.sort();
        // Not bob: a field in the body is no field.
        assert_eq!(found, ["alice+tag@example.test", "carol@example.test"]);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let cfg = DeliveryConfig {
            hostname: "h".into(),
            concurrency: 1,
            retry_initial: Duration::from_secs(60),
            retry_max: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(86400),
            delay_warning: None,
        };
        assert_eq!(backoff(&cfg, 1), Duration::from_secs(60));
        assert_eq!(backoff(&cfg, 2), Duration::from_secs(120));
        assert_eq!(backoff(&cfg, 4), Duration::from_secs(480));
        assert_eq!(backoff(&cfg, 5), Duration::from_secs(600));
        assert_eq!(backoff(&cfg, 100), Duration::from_secs(600));
    }
}
