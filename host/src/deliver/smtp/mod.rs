//! The SMTP delivery agent (Postfix's smtp(8)): a message's recipients at
//! one destination (a domain's MX hosts, a `[transport]` next hop or the
//! relay host) go in one transaction at the first address that takes
//! them; each recipient gets its own outcome. Blocking I/O on delivery
//! threads; DNS through the daemon's resolver.

pub mod mx;
mod session;
mod slots;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;

use super::agent::{Agent, Message, Outcome, Rcpt};
use super::cache::Idle;
use super::conn::{Stop, relay_name};
use crate::config::{Config, SmtpClient, SmtpHop, TlsLevel, read_password};
use crate::route::Transport;
use mx::{Destination, Ours, Target};
use session::{Failure, Plan, Session, open, transaction};
pub use slots::Slots;
use tls::ClientTls;

/// What a reused session must match: the client that opened it (a
/// reload may change the EHLO name, TLS policy or credentials), the
/// destination, its TLS level and whether it logged in.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    client: u64,
    dest: String,
    tls: TlsLevel,
    auth: bool,
}

/// Idle sessions by destination (Postfix caches by next hop too, so a
/// message to a busy destination skips the MX lookup and the handshakes).
static IDLE: Idle<Key, Session> = Idle::new();

/// Numbers the clients built, for [`Key`].
static BUILT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The user name and password for a relay host.
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password.
    pub password: String,
}

/// The SMTP client of one configuration generation.
pub struct Client {
    /// `[smtp_client]`.
    pub cfg: SmtpClient,
    /// The name said in EHLO.
    pub helo: String,
    /// The TLS configurations.
    pub tls: ClientTls,
    resolver: TokioResolver,
    /// Where DNS lookups run (delivery threads block on them).
    runtime: tokio::runtime::Handle,
    /// Our listeners: an MX host at one of them is ourselves.
    listeners: Vec<SocketAddr>,
    creds: Option<Credentials>,
    /// Deliveries in flight per destination (kept across reloads).
    slots: Arc<Slots>,
    /// DNS answers in time.
    dns_budget: Duration,
    /// This client's number: sessions it opened are reused by it only.
    serial: u64,
}

impl Client {
    /// Builds the client of a validated config; `slots` is shared with
    /// the previous generation's client.
    pub fn new(
        config: &Config,
        resolver: TokioResolver,
        runtime: tokio::runtime::Handle,
        slots: Arc<Slots>,
    ) -> anyhow::Result<Client> {
        let cfg = config.smtp_client.clone();
        let creds = match (&cfg.auth_username, &cfg.auth_password_file) {
            (Some(username), Some(path)) => Some(Credentials {
                username: username.clone(),
                password: read_password(path).map_err(|e| anyhow::anyhow!("smtp_client: {e}"))?,
            }),
            _ => None,
        };
        Ok(Client {
            helo: cfg
                .helo_name
                .clone()
                .unwrap_or_else(|| config.server.hostname.clone()),
            tls: ClientTls::new(cfg.tls_ca_file.as_deref())?,
            resolver,
            runtime,
            listeners: config.listeners.iter().map(|l| l.address).collect(),
            creds,
            slots,
            dns_budget: config.dns.timeout.0.saturating_mul(8),
            serial: BUILT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            cfg,
        })
    }

    /// The TLS level of a destination: `tls_policy` by recipient domain,
    /// then by next hop as written, else `tls`.
    fn tls_level(&self, domain: &str, hop: Option<&SmtpHop>) -> TlsLevel {
        let policy = &self.cfg.tls_policy;
        policy
            .get(domain)
            .or_else(|| hop.and_then(|h| policy.get(&h.to_string())))
            .copied()
            .unwrap_or(self.cfg.tls)
    }
}

impl Ours for Client {
    fn is_ours(&self, addr: &SocketAddr) -> bool {
        self.listeners.iter().any(|l| {
            l.port() == addr.port()
                && (l.ip() == addr.ip() || (l.ip().is_unspecified() && is_local_address(addr)))
        })
    }
}

/// True if `addr`'s IP address is one of this host's (it can be bound).
fn is_local_address(addr: &SocketAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(addr.ip(), 0)).is_ok()
}

/// A random number below `n` (MX load sharing).
fn random_below(n: usize) -> usize {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() || n == 0 {
        return 0;
    }
    (u64::from_le_bytes(b) % n as u64) as usize
}

impl Agent for Client {
    fn deliver(&self, msg: Message<'_>, rcpts: &[Rcpt<'_>]) -> Vec<Outcome> {
        let Some(Transport::Smtp { domain, next_hop }) = rcpts.first().map(|r| r.transport) else {
            return rcpts
                .iter()
                .map(|_| Outcome::deferred("none", "4.3.5", "not an SMTP recipient"))
                .collect();
        };
        let dest = Destination::of(domain, next_hop.as_ref(), self.cfg.port);
        let label = dest.label();
        let _slot = self.slots.acquire(&label, self.cfg.destination_concurrency);
        let plan = Plan {
            tls: self.tls_level(domain, next_hop.as_ref()),
            // Credentials go to a configured next hop, never to the MX
            // hosts of whatever domain a recipient names.
            auth: self.creds.as_ref().filter(|_| next_hop.is_some()),
        };
        let key = Key {
            client: self.serial,
            dest: label,
            tls: plan.tls,
            auth: plan.auth.is_some(),
        };
        if let Some(s) = IDLE.take(&key) {
            let (relay, result) = self.finish(&key, s, msg, rcpts);
            return result
                .unwrap_or_else(|stop| rcpts.iter().map(|_| stop.outcome(&relay)).collect());
        }
        let mut pick = random_below;
        let found = self.runtime.block_on(async {
            let work = mx::targets(
                &self.resolver,
                &dest,
                self,
                self.cfg.mx_address_limit,
                &mut pick,
            );
            tokio::time::timeout(self.dns_budget, work)
                .await
                .unwrap_or_else(|_| Err(mx::try_again(&dest.name, "MX", "timed out")))
        });
        let targets = match found {
            Ok(t) => t,
            Err(stop) => return rcpts.iter().map(|_| stop.outcome("none")).collect(),
        };
        let (relay, stop) = self.try_targets(&targets, &plan, &key, msg, rcpts);
        match stop {
            Ok(outcomes) => outcomes,
            Err(stop) => rcpts.iter().map(|_| stop.outcome(&relay)).collect(),
        }
    }
}

impl Client {
    /// Each address in turn until one session ends the transaction;
    /// returns the last relay tried and the outcomes or why all failed.
    fn try_targets(
        &self,
        targets: &[Target],
        plan: &Plan<'_>,
        key: &Key,
        msg: Message<'_>,
        rcpts: &[Rcpt<'_>],
    ) -> (String, Result<Vec<Outcome>, Stop>) {
        let mut last = (
            "none".to_string(),
            Stop::deferred("4.4.1", "no address to try".into()),
        );
        for target in targets {
            let relay = relay_name(&target.host, &target.addr);
            let id = &msg.env.id;
            let opened = match open(self, target, plan, id) {
                Err(Failure::Plain(stop)) => {
                    tracing::info!("{}: {}; trying again without TLS", msg.env.id, stop.detail);
                    let plain = Plan {
                        tls: TlsLevel::None,
                        auth: plan.auth,
                    };
                    open(self, target, &plain, id)
                }
                other => other,
            };
            match opened {
                Ok(s) => return self.finish(key, s, msg, rcpts),
                Err(Failure::Next(stop) | Failure::Plain(stop)) => {
                    tracing::info!("{id}: {}", stop.detail);
                    last = (relay, stop);
                }
            }
        }
        (last.0, Err(last.1))
    }

    /// The transaction on an open session (new or reused); a session that
    /// ended it cleanly is kept for the next message to the destination,
    /// any other is closed. Returns its relay and the outcomes or why the
    /// transaction failed as a whole.
    fn finish(
        &self,
        key: &Key,
        mut s: Session,
        msg: Message<'_>,
        rcpts: &[Rcpt<'_>],
    ) -> (String, Result<Vec<Outcome>, Stop>) {
        let relay = s.conn.relay.clone();
        let result = transaction(self, &mut s, msg, rcpts);
        match &result {
            Ok(_) => IDLE.put(key, s),
            Err(_) => s.conn.quit(),
        }
        (relay, result)
    }
}
