//! Telling senders (RFC 3461/3464): after an attempt, the recipients that
//! failed for good (or whose `max_lifetime` ran out) and those delivered
//! whose sender asked `NOTIFY=SUCCESS` get one report, queued as a new
//! message from `<>` through the same queue. Never a report to `<>`, and
//! none for `NOTIFY=NEVER`.

use super::Attempted;
use super::agent::Handoff;
use crate::dsn::report::{self, Original, RecipientReport};
use crate::spool::format::ENVELOPE_VERSION;
use crate::spool::{
    Client, DeliveryState, Envelope, Loaded, Recipient, RecipientState, Spool, SpoolError,
    new_queue_id, now_secs,
};

/// Settles what this attempt decided: reports what the sender asked to
/// hear of, queued durably before the failed recipients are marked done
/// in `state`. With `expired`, every recipient still pending fails too
/// (`status=expired`); otherwise, with `delayed`, each recipient still
/// pending whose sender has not been told yet gets a `delayed` line
/// (Postfix's `delay_warning_time`). Returns the report's queue ID if one
/// was queued.
pub fn settle(
    spool: &Spool,
    hostname: &str,
    loaded: &Loaded,
    state: &mut DeliveryState,
    attempted: &Attempted,
    expired: bool,
    delayed: bool,
) -> Result<Option<String>, SpoolError> {
    let env = &loaded.envelope;
    let now = now_secs();
    let mut failed: Vec<usize> = attempted.bounced.clone();
    if expired {
        for (i, rcpt) in env.recipients.iter().enumerate() {
            if state.done.contains(&i) || failed.contains(&i) {
                continue;
            }
            let last = state.recipients.get(&i);
            let why = last.map_or("delivery time expired", |s| s.reply.as_str());
            tracing::warn!(
                "{}: to=<{}>, orig_to=<{}>, relay=none, delay={:.0}, dsn=4.4.7, status=expired, returned to sender ({why})",
                env.id,
                rcpt.address,
                rcpt.original,
                now.saturating_sub(env.arrival as u64)
            );
            let entry = RecipientState {
                status: "bounced".into(),
                dsn: last
                    .map(|s| s.dsn.clone())
                    .filter(|d| d.starts_with('4') || d.starts_with('5'))
                    .unwrap_or_else(|| "4.4.7".into()),
                relay: last.map_or_else(|| "none".into(), |s| s.relay.clone()),
                reply: format!("delivery time expired: {why}"),
                at: now,
            };
            state.recipients.insert(i, entry);
            failed.push(i);
        }
    }
    // Still pending (`done` holds this attempt's deliveries too), not
    // told yet: a delay warning (once).
    let late: Vec<usize> = if delayed && !expired {
        (0..env.recipients.len())
            .filter(|i| !state.done.contains(i) && !failed.contains(i) && !state.warned.contains(i))
            .collect()
    } else {
        Vec::new()
    };
    // What the sender asked to hear of: failures and delays and, on
    // request, success.
    let reports: Vec<RecipientReport> = failed
        .iter()
        .map(|&i| (i, "failed"))
        .chain(late.iter().map(|&i| (i, "delayed")))
        .chain(
            attempted
                .sent
                .iter()
                .filter_map(|&(i, handoff)| match handoff {
                    Handoff::Delivered => Some((i, "delivered")),
                    Handoff::Relayed => Some((i, "relayed")),
                    // The next server has the request: it reports, not we.
                    Handoff::PassedOn => None,
                }),
        )
        .filter_map(|(i, action)| {
            let rcpt = env.recipients.get(i)?;
            let notify = rcpt.notify();
            let asked = match action {
                "failed" => notify.failure,
                "delayed" => notify.delay,
                _ => notify.success,
            };
            asked.then(|| recipient_report(rcpt, state.recipients.get(&i), action, now))
        })
        .collect();
    let queued = if reports.is_empty() {
        None
    } else if env.sender.is_empty() {
        tracing::info!(
            "{}: no report for {} recipient(s): the sender is <>",
            env.id,
            reports.len()
        );
        None
    } else {
        Some(queue_report(spool, hostname, loaded, &reports)?)
    };
    state.done.extend(failed);
    state.warned.extend(late);
    Ok(queued)
}

fn recipient_report(
    rcpt: &Recipient,
    last: Option<&RecipientState>,
    action: &'static str,
    now: u64,
) -> RecipientReport {
    let remote = last
        .map(|s| s.relay.as_str())
        .filter(|r| !matches!(*r, "local" | "none" | ""));
    RecipientReport {
        final_recipient: rcpt.address.clone(),
        original_recipient: rcpt.orcpt.clone(),
        action,
        status: last.map_or_else(|| "5.0.0".into(), |s| s.dsn.clone()),
        remote_mta: remote.map(|r| r.split('[').next().unwrap_or(r).to_string()),
        diagnostic: last.map_or_else(String::new, |s| s.reply.clone()),
        last_attempt: last.map_or(now, |s| s.at),
    }
}

/// Composes the report and commits it to the spool as a message from
/// `<>` to the original sender (durable when this returns).
fn queue_report(
    spool: &Spool,
    hostname: &str,
    loaded: &Loaded,
    reports: &[RecipientReport],
) -> Result<String, SpoolError> {
    let env = &loaded.envelope;
    let id = new_queue_id();
    let original = Original {
        id: &env.id,
        sender: &env.sender,
        arrival: env.arrival as u64,
        envid: env.envid.as_deref(),
        ret: env.ret,
        parts: [env.prepend.as_bytes(), loaded.content()],
    };
    let content = report::compose(hostname, &id, &original, reports);
    let report_env = Envelope {
        version: ENVELOPE_VERSION,
        id: id.clone(),
        arrival: now_secs() as f64,
        sender: String::new(),
        recipients: vec![Recipient::new(env.sender.clone(), env.sender.clone())],
        prepend: String::new(),
        client: Client {
            ip: "127.0.0.1".into(),
            listener: "bounce".into(),
            ..Client::default()
        },
        smtputf8: env.smtputf8,
        ret: None,
        envid: None,
    };
    spool.commit_blocking(&content, &report_env, DeliveryState::default())?;
    tracing::info!(
        "{}: sender delivery status notification: {id} ({} recipient(s))",
        env.id,
        reports.len()
    );
    Ok(id)
}
