//! Queue IDs: 16 upper-case hex digits, microseconds since the epoch plus
//! a per-process counter, so that IDs sort by arrival and never repeat
//! while the spool lock guarantees a single writer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static LAST: AtomicU64 = AtomicU64::new(0);

/// A new queue ID, strictly greater than every earlier one of this process.
pub fn new_queue_id() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    // Monotonic even if the clock steps back or many IDs share a microsecond.
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return format!("{next:016X}"),
            Err(p) => prev = p,
        }
    }
}

/// True if `s` looks like a queue ID (used to ignore stray spool files).
pub fn is_queue_id(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_and_sorted() {
        let ids: Vec<String> = (0..1000).map(|_| new_queue_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(ids.iter().all(|i| is_queue_id(i)));
    }
}
