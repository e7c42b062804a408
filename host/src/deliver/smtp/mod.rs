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
use super::conn::{Stop, relay_name};
use crate::config::{Config, SmtpClient, SmtpHop, TlsLevel, read_password};
use crate::route::Transport;
use mx::{Destination, Ours, Target};
use session::{Failure, Plan, deliver_at};
pub use slots::Slots;
use tls::ClientTls;

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
        let _slot = self
            .slots
            .acquire(&dest.label(), self.cfg.destination_concurrency);
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
                .unwrap_or_else(|_| {
                    Err(Stop::deferred(
                        "4.4.3",
                        format!("Host or domain name not found. Name service error for name={} type=MX: Host not found, try again", dest.name),
                    ))
                })
        });
        let targets = match found {
            Ok(t) => t,
            Err(stop) => return rcpts.iter().map(|_| stop.outcome("none")).collect(),
        };
        let plan = Plan {
            tls: self.tls_level(domain, next_hop.as_ref()),
            // Credentials go to a configured next hop, never to the MX
            // hosts of whatever domain a recipient names.
            auth: self.creds.as_ref().filter(|_| next_hop.is_some()),
        };
        let (relay, stop) = self.try_targets(&targets, &plan, msg, rcpts);
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
        msg: Message<'_>,
        rcpts: &[Rcpt<'_>],
    ) -> (String, Result<Vec<Outcome>, Stop>) {
        let mut last = (
            "none".to_string(),
            Stop::deferred("4.4.1", "no address to try".into()),
        );
        for target in targets {
            let relay = relay_name(&target.host, &target.addr);
            let result = match deliver_at(self, target, plan, msg, rcpts) {
                Err(Failure::Plain(stop)) => {
                    tracing::info!("{}: {}; trying again without TLS", msg.env.id, stop.detail);
                    let plain = Plan {
                        tls: TlsLevel::None,
                        auth: plan.auth,
                    };
                    deliver_at(self, target, &plain, msg, rcpts)
                }
                other => other,
            };
            match result {
                Ok(outcomes) => return (relay, Ok(outcomes)),
                Err(Failure::Final(stop)) => return (relay, Err(stop)),
                Err(Failure::Next(stop) | Failure::Plain(stop)) => {
                    tracing::info!("{}: {}", msg.env.id, stop.detail);
                    last = (relay, stop);
                }
            }
        }
        (last.0, Err(last.1))
    }
}
