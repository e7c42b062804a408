//! Deliveries in flight per destination (Postfix's
//! `default_destination_concurrency_limit`): a delivery thread waits for
//! a slot rather than open one more connection to a busy destination.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

/// Counts of deliveries in flight, by destination.
#[derive(Default)]
pub struct Slots {
    busy: Mutex<HashMap<String, usize>>,
    freed: Condvar,
}

/// A slot held until dropped.
pub struct Slot<'a> {
    slots: &'a Slots,
    key: String,
}

impl Slots {
    /// Waits until `key` has fewer than `limit` deliveries in flight, and
    /// takes one.
    pub fn acquire(&self, key: &str, limit: usize) -> Slot<'_> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let n = busy.get(key).copied().unwrap_or(0);
            if n < limit.max(1) {
                busy.insert(key.to_string(), n + 1);
                return Slot {
                    slots: self,
                    key: key.to_string(),
                };
            }
            busy = self.freed.wait(busy).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Deliveries in flight to `key` now.
    pub fn in_flight(&self, key: &str) -> usize {
        let busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.get(key).copied().unwrap_or(0)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut busy = self.slots.busy.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = busy.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                busy.remove(&self.key);
            }
        }
        drop(busy);
        self.slots.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn never_more_than_the_limit_in_flight() {
        let slots = Arc::new(Slots::default());
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (slots, peak) = (slots.clone(), peak.clone());
                std::thread::spawn(move || {
                    let _slot = slots.acquire("dest.test", 2);
                    peak.fetch_max(slots.in_flight("dest.test"), Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        assert_eq!(slots.in_flight("dest.test"), 0);
    }
}
