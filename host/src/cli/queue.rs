//! `postern queue list`: the `mailq` of Postern.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context;

use crate::config::Config;
use crate::spool::{QueueEntry, Spool, format, journal, now_secs};

/// Prints every queued and held message, Postfix `mailq` style, with age
/// and last error; the messages in the journal as a count, or (`journal`)
/// one by one, marked `*`.
pub fn list(config: &Config, journal: bool) -> anyhow::Result<()> {
    crate::spool::format::set_v1_delimiter(config.local.recipient_delimiter.chars().next());
    let Listing {
        mut entries,
        local,
        segments,
    } = listing(config)?;
    let count = local.len();
    if journal {
        entries.extend(local);
        entries.sort_by(|a, b| a.id.cmp(&b.id));
    }
    let summary = || {
        if count > 0 && !journal {
            println!(
                "-- {count} message{} in the journal ({segments} segment{}): being delivered to local mailboxes, or delivered and waiting for their bulk sync (--journal lists them)",
                if count == 1 { "" } else { "s" },
                if segments == 1 { "" } else { "s" },
            );
        }
    };
    if entries.is_empty() {
        println!("Mail queue is empty");
        summary();
        return Ok(());
    }
    println!("-Queue ID-        --Size--  --Age--  -Sender/Recipient-------");
    let now = now_secs() as f64;
    let mut total = 0u64;
    for e in &entries {
        total += e.size;
        let age = Duration::from_secs((now - e.envelope.arrival).max(0.0) as u64);
        let mark = match e.area {
            "hold" => "!",
            "journal" => "*",
            _ => " ",
        };
        let sender = if e.envelope.sender.is_empty() {
            "MAILER-DAEMON".to_string()
        } else {
            e.envelope.sender.clone()
        };
        println!(
            "{:<16}{mark} {:>9} {:>8}  {}",
            e.id,
            e.size,
            humantime::format_duration(age)
                .to_string()
                .split(' ')
                .next()
                .unwrap_or(""),
            sender
        );
        if let Some(st) = &e.state {
            if let Some(reason) = &st.hold_reason {
                println!("{:38}(held: {reason})", "");
            } else if let Some(err) = &st.last_error {
                println!("{:38}({err}; {} attempt(s))", "", st.attempts);
            }
        }
        for (i, r) in e.envelope.recipients.iter().enumerate() {
            if e.state.as_ref().is_some_and(|s| s.done.contains(&i)) {
                continue;
            }
            let to = &r.address;
            if *to == r.original {
                println!("{:38}{to}", "");
            } else {
                println!("{:38}{to} (for {})", "", r.original);
            }
        }
        println!();
    }
    println!(
        "-- {} Kbytes in {} Request{}.",
        total.div_ceil(1024),
        entries.len(),
        if entries.len() == 1 { "" } else { "s" }
    );
    summary();
    Ok(())
}

/// `postern queue show ID` (Postfix `postcat -q`): the envelope, each
/// recipient with its last outcome, then the message as a delivery writes
/// it (the trace fields the host adds, then the content).
pub fn show(config: &Config, id: &str) -> anyhow::Result<()> {
    crate::spool::format::set_v1_delimiter(config.local.recipient_delimiter.chars().next());
    let spool = Spool::open_readonly(&config.server.spool_dir);
    let (loaded, state, area) = spool
        .read_any(id)
        .with_context(|| format!("no message {id} in the queue"))?;
    let env = &loaded.envelope;
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    writeln!(out, "*** ENVELOPE RECORDS {id} ***")?;
    writeln!(out, "queue: {area}")?;
    writeln!(out, "arrival_time: {}", env.arrival as u64)?;
    writeln!(out, "message_size: {}", loaded.content().len())?;
    writeln!(out, "sender: {}", env.sender)?;
    if let Some(ret) = env.ret {
        writeln!(out, "ret: {ret:?}")?;
    }
    if let Some(envid) = &env.envid {
        writeln!(out, "envid: {envid}")?;
    }
    writeln!(
        out,
        "client: {} helo={} auth={} listener={}",
        env.client.ip,
        env.client.helo.as_deref().unwrap_or(""),
        env.client.auth_user.as_deref().unwrap_or(""),
        env.client.listener
    )?;
    if let Some(st) = &state {
        writeln!(out, "attempts: {}", st.attempts)?;
        if let Some(why) = &st.hold_reason {
            writeln!(out, "hold_reason: {why}")?;
        }
    }
    for (i, r) in env.recipients.iter().enumerate() {
        let outcome = state.as_ref().and_then(|s| s.recipients.get(&i));
        let status = match (outcome, state.as_ref().is_some_and(|s| s.done.contains(&i))) {
            (Some(o), _) => format!("{} dsn={} relay={} ({})", o.status, o.dsn, o.relay, o.reply),
            (None, true) => "done".into(),
            (None, false) => "pending".into(),
        };
        write!(out, "recipient: {} original={}", r.address, r.original)?;
        if let Some(orcpt) = &r.orcpt {
            write!(out, " orcpt={orcpt}")?;
        }
        if let Some(n) = r.notify {
            write!(out, " notify={}", n.to_param())?;
        }
        writeln!(out, " status={status}")?;
    }
    writeln!(out, "*** MESSAGE CONTENTS {id} ***")?;
    out.write_all(env.prepend.as_bytes())?;
    out.write_all(loaded.content())?;
    writeln!(out, "*** END OF MESSAGE {id} ***")?;
    Ok(())
}

/// `postern queue list --json`: one JSON object per message and line, as
/// Postfix's `postqueue -j` prints them. Messages in the journal are being
/// delivered to local mailboxes: they are listed as `active`.
pub fn list_json(config: &Config) -> anyhow::Result<()> {
    crate::spool::format::set_v1_delimiter(config.local.recipient_delimiter.chars().next());
    let Listing {
        mut entries, local, ..
    } = listing(config)?;
    entries.extend(local);
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    let mut out = std::io::stdout().lock();
    for e in &entries {
        serde_json::to_writer(&mut out, &json_entry(e))?;
        std::io::Write::write_all(&mut out, b"\n")?;
    }
    Ok(())
}

/// One message in `postqueue -j`'s shape.
fn json_entry(e: &QueueEntry) -> serde_json::Value {
    let state = e.state.as_ref();
    let tried = state.is_some_and(|s| s.attempts > 0);
    let queue_name = match e.area {
        "hold" => "hold",
        "journal" => "active",
        _ if tried => "deferred",
        _ => "active",
    };
    let recipients: Vec<serde_json::Value> = e
        .envelope
        .recipients
        .iter()
        .enumerate()
        .filter(|(i, _)| !state.is_some_and(|s| s.done.contains(i)))
        .map(|(i, r)| {
            let mut rcpt = serde_json::json!({ "address": r.address });
            let reason = state.and_then(|s| {
                s.recipients
                    .get(&i)
                    .map(|st| st.reply.clone())
                    .or_else(|| s.hold_reason.clone().or_else(|| s.last_error.clone()))
            });
            if let Some(reason) = reason.filter(|_| tried || e.area == "hold") {
                rcpt["delay_reason"] = reason.into();
            }
            rcpt
        })
        .collect();
    serde_json::json!({
        "queue_name": queue_name,
        "queue_id": e.id,
        "arrival_time": e.envelope.arrival as u64,
        "message_size": e.size,
        "sender": e.envelope.sender,
        "recipients": recipients,
    })
}

/// What `queue list` shows.
struct Listing {
    /// The spool's messages, and the journal's for the delivery manager
    /// (relayed mail in its first attempt: `active`, marked `*`).
    entries: Vec<QueueEntry>,
    /// The journal's messages for local mailboxes: being delivered, or
    /// delivered and waiting for their bulk sync.
    local: Vec<QueueEntry>,
    /// The segments those are in.
    segments: usize,
}

/// The spool's messages and the journal's that are not in the spool too
/// (one that a failed delivery moved there is listed from there).
/// Read-only: a running daemon may be writing and removing segments
/// meanwhile. The journal is read first: a message is marked out of it
/// only once its queue file is there, so none falls between the two.
fn listing(config: &Config) -> anyhow::Result<Listing> {
    let dir = config.server.spool_dir.join("journal");
    let left = if dir.is_dir() {
        journal::read(&dir).with_context(|| format!("cannot read {}", dir.display()))?
    } else {
        journal::Leftovers::default()
    };
    let mut entries = Spool::open_readonly(&config.server.spool_dir).list()?;
    let spooled: HashSet<String> = entries.iter().map(|e| e.id.clone()).collect();
    let router = crate::route::Router::new(config);
    let mut segments = HashSet::new();
    let mut local: Vec<QueueEntry> = Vec::new();
    for r in &left.records {
        let Ok((envelope, content)) = format::decode(&r.file) else {
            continue;
        };
        if spooled.contains(envelope.id.as_str()) {
            continue;
        }
        let for_local = crate::deliver::journaled::for_local_delivery(&router, &envelope);
        let entry = QueueEntry {
            id: envelope.id.clone(),
            size: content.len() as u64,
            envelope,
            state: None,
            area: "journal",
        };
        if for_local {
            segments.insert(r.segment);
            local.push(entry);
        } else {
            entries.push(entry);
        }
    }
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Listing {
        entries,
        local,
        segments: segments.len(),
    })
}
