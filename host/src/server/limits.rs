//! Limits a client cannot sidestep: sessions in total and per client (an
//! IPv4 address or an IPv6 network, since one IPv6 subscriber has a whole
//! /64 to hop through), and how long and how busy one session may be.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The client a limit counts: IPv4 addresses one by one (an IPv4-mapped
/// IPv6 address is the IPv4 address it maps), IPv6 addresses by their
/// first `v6_prefix` bits (Postfix's `smtpd_client_ipv6_prefix_length`).
pub fn client_key(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u32::from(v6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & mask))
        }
        v4 => v4,
    }
}

/// Counts open sessions.
#[derive(Debug, Default)]
pub struct ConnLimits {
    inner: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
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
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.limits.inner.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_client.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_client.remove(&self.client);
            }
        }
    }
}

impl ConnLimits {
    /// Takes a slot for `client` (a [`client_key`]) unless a limit is
    /// reached.
    pub fn acquire(
        self: &Arc<Self>,
        client: IpAddr,
        max_total: usize,
        max_per_client: usize,
    ) -> Result<Slot, Refused> {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= max_total {
            return Err(Refused::Total);
        }
        let n = c.per_client.entry(client).or_insert(0);
        if *n >= max_per_client {
            return Err(Refused::PerIp);
        }
        *n += 1;
        c.total += 1;
        Ok(Slot {
            limits: self.clone(),
            client,
        })
    }

    /// Sessions open now.
    pub fn total(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

/// Which of a session's own limits it has reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// `smtp.max_session_age`.
    Age,
    /// `smtp.max_session_commands`.
    Commands,
}

impl Expired {
    /// The configuration key, for the log.
    pub fn key(self) -> &'static str {
        match self {
            Expired::Age => "smtp.max_session_age",
            Expired::Commands => "smtp.max_session_commands",
        }
    }
}

/// A session's age and the commands it sent. Postfix's smtpd processes
/// end after `max_use` clients and `max_idle`; one Postern process lives
/// on, so each session has its own bound instead: an unending stream of
/// NOOPs, or one session kept for days, cannot pin a slot (or the
/// settings of its time) for ever.
#[derive(Debug, Clone, Copy)]
pub struct Lifetime {
    started: Instant,
    commands: u64,
}

impl Lifetime {
    /// A session that started at `started`.
    pub fn since(started: Instant) -> Lifetime {
        Lifetime {
            started,
            commands: 0,
        }
    }

    /// Counts one command line, at `now`; says which limit it passes, if
    /// any. The command that passes one is not served.
    pub fn command(
        &mut self,
        now: Instant,
        max_age: Duration,
        max_commands: u32,
    ) -> Option<Expired> {
        self.commands = self.commands.saturating_add(1);
        if now.saturating_duration_since(self.started) > max_age {
            Some(Expired::Age)
        } else if self.commands > u64::from(max_commands) {
            Some(Expired::Commands)
        } else {
            None
        }
    }

    /// Commands counted so far.
    pub fn commands(&self) -> u64 {
        self.commands
    }

    /// How long the session has lasted at `now`.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
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

    #[test]
    fn ipv6_clients_count_per_network() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let l = Arc::new(ConnLimits::default());
        let key = |s: &str| client_key(ip(s), 64);
        // Two addresses of one /64 are one client: the second is refused.
        let _a = l.acquire(key("2001:db8:1:2::1"), 10, 1).unwrap();
        assert_eq!(
            l.acquire(key("2001:db8:1:2:ffff:ffff:ffff:ffff"), 10, 1)
                .unwrap_err(),
            Refused::PerIp
        );
        // The next /64 is another client.
        let _b = l.acquire(key("2001:db8:1:3::1"), 10, 1).unwrap();
        // The prefix is configurable: /48 joins those two, /128 parts all.
        assert_eq!(
            client_key(ip("2001:db8:1:3::1"), 48),
            client_key(ip("2001:db8:1:2::1"), 48)
        );
        assert_eq!(client_key(ip("2001:db8::1"), 128), ip("2001:db8::1"));
        assert_eq!(client_key(ip("2001:db8::1"), 1), ip("::"));
        // IPv4, plain or mapped, is counted per address.
        assert_eq!(client_key(ip("::ffff:192.0.2.7"), 64), ip("192.0.2.7"));
        assert_eq!(client_key(ip("192.0.2.7"), 64), ip("192.0.2.7"));
    }

    #[test]
    fn a_session_expires_by_age_or_commands() {
        let t = Instant::now();
        let hour = Duration::from_secs(3600);
        let mut life = Lifetime::since(t);
        assert_eq!(life.command(t, hour, 2), None);
        assert_eq!(life.command(t, hour, 2), None);
        assert_eq!(life.command(t, hour, 2), Some(Expired::Commands));
        let mut life = Lifetime::since(t);
        assert_eq!(life.command(t + hour, hour, 100), None);
        assert_eq!(
            life.command(t + hour + Duration::from_millis(1), hour, 100),
            Some(Expired::Age)
        );
        assert_eq!(life.commands(), 2);
    }
}
