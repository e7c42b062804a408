//! `postern queue list`: the `mailq` of Postern.

use std::time::Duration;

use crate::config::Config;
use crate::spool::{Spool, now_secs};

/// Prints every queued and held message, Postfix `mailq` style, with age
/// and last error.
pub fn list(config: &Config) -> anyhow::Result<()> {
    let spool = Spool::open_readonly(&config.server.spool_dir);
    let entries = spool.list()?;
    if entries.is_empty() {
        println!("Mail queue is empty");
        return Ok(());
    }
    let delimiter = config.local.recipient_delimiter.chars().next();
    println!("-Queue ID-        --Size--  --Age--  -Sender/Recipient-------");
    let now = now_secs() as f64;
    let mut total = 0u64;
    for e in &entries {
        total += e.size;
        let age = Duration::from_secs((now - e.envelope.arrival).max(0.0) as u64);
        let mark = if e.area == "hold" { "!" } else { " " };
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
            let to = r.destination.address(delimiter);
            if to == r.original {
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
    Ok(())
}
