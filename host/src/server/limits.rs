//! Connection limits: total sessions and sessions per client IP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Counts open sessions.
#[derive(Debug, Default)]
pub struct ConnLimits {
    inner: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `smtp.max_connections`.
    Total,
    /// `smtp.max_connections_per_ip`.
    PerIp,
}

/// Releases a session's slot when dropped.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.limits.inner.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

impl ConnLimits {
    /// Takes a slot for `ip` unless a limit is reached.
    pub fn acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<Slot, Refused> {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= max_total {
            return Err(Refused::Total);
        }
        let n = c.per_ip.entry(ip).or_insert(0);
        if *n >= max_per_ip {
            return Err(Refused::PerIp);
        }
        *n += 1;
        c.total += 1;
        Ok(Slot {
            limits: self.clone(),
            ip,
        })
    }

    /// Sessions open now.
    pub fn total(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_release() {
        let l = Arc::new(ConnLimits::default());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let s1 = l.acquire(a, 3, 2).unwrap();
        let _s2 = l.acquire(a, 3, 2).unwrap();
        assert_eq!(l.acquire(a, 3, 2).unwrap_err(), Refused::PerIp);
        let _s3 = l.acquire(b, 3, 2).unwrap();
        assert_eq!(l.acquire(b, 3, 2).unwrap_err(), Refused::Total);
        drop(s1);
        let _s4 = l.acquire(a, 3, 2).unwrap();
        assert_eq!(l.total(), 3);
    }
}
