//! Maildir file names.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The host part of a Maildir file name (`/` and `:` escaped).
fn name_host(hostname: &str) -> String {
    hostname
        .chars()
        .map(|c| match c {
            '/' => "\\057".to_string(),
            ':' => "\\072".to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// A unique Maildir file name (`time.MusecPpidQn.host`).
pub fn unique_name(hostname: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}.M{}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        name_host(hostname)
    )
}

/// The Maildir file name of a journaled delivery (`arrival.JqueueID_n.host`):
/// derived from the message, so that delivering it again after a crash
/// finds the copy that got there first. Unique because queue IDs are.
pub fn journal_name(arrival: u64, key: &str, hostname: &str) -> String {
    format!("{arrival}.J{key}.{}", name_host(hostname))
}

/// The host part of a name made by [`unique_name`] or [`journal_name`].
pub(super) fn host_of(name: &str) -> &str {
    name.splitn(3, '.').nth(2).unwrap_or_default()
}
