//! The resolver: built from `[dns]` (explicit nameservers, never the system
//! resolver when they are given) and the connect-time PTR check.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;

use crate::config::Dns as DnsConfig;

/// How long a client's verified PTR is remembered.
const PTR_TTL: Duration = Duration::from_secs(60);
/// Clients remembered at most.
const PTR_CACHE: usize = 4096;

/// The daemon's DNS client.
#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
    timeout: Duration,
    reverse_lookup: bool,
    /// FCrDNS results by client address: a busy client reconnects many
    /// times a second, and two lookups per connection add up.
    ptr_cache: std::sync::Arc<std::sync::Mutex<PtrCache>>,
}

/// Verified PTR (or none) by client address, with when it was looked up.
type PtrCache = HashMap<IpAddr, (Option<String>, Instant)>;

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Dns {
    /// Builds the resolver from the config.
    pub fn new(cfg: &DnsConfig) -> anyhow::Result<Dns> {
        let mut opts = ResolverOpts::default();
        opts.timeout = cfg.timeout.0;
        opts.attempts = 2;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.ndots = 0;
        let resolver = if cfg.nameservers.is_empty() {
            TokioResolver::builder_tokio()?.with_options(opts).build()
        } else {
            let mut rc = ResolverConfig::new();
            for addr in &cfg.nameservers {
                rc.add_name_server(NameServerConfig::new(*addr, Protocol::Udp));
                rc.add_name_server(NameServerConfig::new(*addr, Protocol::Tcp));
            }
            TokioResolver::builder_with_config(rc, TokioConnectionProvider::default())
                .with_options(opts)
                .build()
        };
        Ok(Dns {
            resolver,
            timeout: cfg.timeout.0,
            reverse_lookup: cfg.reverse_lookup,
            ptr_cache: Default::default(),
        })
    }

    /// The underlying resolver (for plugins' DNS capability).
    pub fn resolver(&self) -> &TokioResolver {
        &self.resolver
    }

    /// The client's forward-confirmed PTR name (FCrDNS), like Postfix's
    /// `client_name`: `None` when there is no PTR or it does not point back.
    pub async fn verified_ptr(&self, ip: IpAddr) -> Option<String> {
        if !self.reverse_lookup {
            return None;
        }
        {
            let cache = self.ptr_cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((name, at)) = cache.get(&ip)
                && at.elapsed() < PTR_TTL
            {
                return name.clone();
            }
        }
        let name = self.lookup_ptr(ip).await;
        let mut cache = self.ptr_cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= PTR_CACHE {
            cache.retain(|_, (_, at)| at.elapsed() < PTR_TTL);
            if cache.len() >= PTR_CACHE {
                cache.clear();
            }
        }
        cache.insert(ip, (name.clone(), Instant::now()));
        name
    }

    async fn lookup_ptr(&self, ip: IpAddr) -> Option<String> {
        let budget = self.timeout * 2;
        let work = async {
            let names = self.resolver.reverse_lookup(ip).await.ok()?;
            for name in names.iter() {
                let host = name.0.to_utf8();
                let host = host.trim_end_matches('.').to_string();
                if let Ok(ips) = self.resolver.lookup_ip(format!("{host}.")).await
                    && ips.iter().any(|a| a == ip)
                {
                    return Some(host);
                }
            }
            None
        };
        tokio::time::timeout(budget, work).await.ok().flatten()
    }
}
