//! The resolver: built from `[dns]` (explicit nameservers, never the system
//! resolver when they are given), the connect-time reverse check, and the
//! typed lookups of the plugins' `dns` capability ([`lookup`]).

pub mod lookup;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    NameServerConfig, NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::{NameServerPool, TokioConnectionProvider};
use hickory_resolver::proto::xfer::Protocol;

use crate::config::Dns as DnsConfig;
pub use lookup::{Answer, Kind, Listing, Rdata};

/// How long a client's reverse DNS is remembered.
const PTR_TTL: Duration = Duration::from_secs(60);
/// Clients remembered at most.
const PTR_CACHE: usize = 4096;

/// The daemon's DNS client.
#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
    /// The same nameservers, asked directly: for the reverse zones of
    /// loopback addresses, which the resolver answers itself (RFC 6761)
    /// with no option to ask instead.
    pool: NameServerPool<TokioConnectionProvider>,
    timeout: Duration,
    reverse_lookup: bool,
    /// Reverse DNS results by client address: a busy client reconnects
    /// many times a second, and two lookups per connection add up.
    ptr_cache: std::sync::Arc<std::sync::Mutex<PtrCache>>,
}

/// Reverse DNS by client address, with when it was looked up.
type PtrCache = HashMap<IpAddr, (Rdns, Instant)>;

/// What a client's reverse DNS said (the WIT's `rdns-status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Rdns {
    /// A PTR name whose addresses include the client's (Postfix's
    /// `client_name`).
    Confirmed(String),
    /// A PTR name that does not resolve back to the client.
    Unconfirmed(String),
    /// No PTR record.
    None,
    /// A lookup failed for now.
    Temporary,
    /// Not looked up (`dns.reverse_lookup = false`).
    #[default]
    NotLookedUp,
}

impl Rdns {
    /// The forward-confirmed name, if any.
    pub fn confirmed(&self) -> Option<String> {
        match self {
            Rdns::Confirmed(n) => Some(n.clone()),
            _ => None,
        }
    }
}

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
        let rc = if cfg.nameservers.is_empty() {
            hickory_resolver::system_conf::read_system_conf()?.0
        } else {
            let mut rc = ResolverConfig::new();
            for addr in &cfg.nameservers {
                rc.add_name_server(NameServerConfig::new(*addr, Protocol::Udp));
                rc.add_name_server(NameServerConfig::new(*addr, Protocol::Tcp));
            }
            rc
        };
        let pool = NameServerPool::from_config(
            NameServerConfigGroup::from(rc.name_servers().to_vec()),
            opts.clone(),
            TokioConnectionProvider::default(),
        );
        let resolver = TokioResolver::builder_with_config(rc, TokioConnectionProvider::default())
            .with_options(opts)
            .build();
        Ok(Dns {
            resolver,
            pool,
            timeout: cfg.timeout.0,
            reverse_lookup: cfg.reverse_lookup,
            ptr_cache: Default::default(),
        })
    }

    /// The underlying resolver (for delivery's MX lookups).
    pub fn resolver(&self) -> &TokioResolver {
        &self.resolver
    }

    /// The client's forward-confirmed PTR name (FCrDNS), like Postfix's
    /// `client_name`, or `None` (see [`Dns::client_rdns`] for why).
    pub async fn verified_ptr(&self, ip: IpAddr) -> Option<String> {
        self.client_rdns(ip).await.confirmed()
    }

    /// The client's reverse DNS, typed. Answers are remembered for a
    /// minute; a temporary failure is not (the next connection asks
    /// again).
    pub async fn client_rdns(&self, ip: IpAddr) -> Rdns {
        if !self.reverse_lookup {
            return Rdns::NotLookedUp;
        }
        let ip = ip.to_canonical();
        {
            let cache = self.ptr_cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((rdns, at)) = cache.get(&ip)
                && at.elapsed() < PTR_TTL
            {
                return rdns.clone();
            }
        }
        let rdns = self.lookup_ptr(ip).await;
        if rdns == Rdns::Temporary {
            return rdns;
        }
        let mut cache = self.ptr_cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= PTR_CACHE {
            cache.retain(|_, (_, at)| at.elapsed() < PTR_TTL);
            if cache.len() >= PTR_CACHE {
                cache.clear();
            }
        }
        cache.insert(ip, (rdns.clone(), Instant::now()));
        rdns
    }

    /// The PTR names of `ip`, each checked for pointing back. Names are
    /// taken in their ASCII (punycode) form, and only if they are valid
    /// host names.
    async fn lookup_ptr(&self, ip: IpAddr) -> Rdns {
        let budget = self.timeout * 2;
        let work = async {
            let names = match self.reverse(&ip.to_string()).await {
                Answer::Records(r) => r,
                Answer::NxDomain | Answer::NoData => return Rdns::None,
                Answer::Temporary(_) | Answer::Invalid(_) => return Rdns::Temporary,
            };
            let names: Vec<String> = names
                .into_iter()
                .filter_map(|r| match r {
                    Rdata::Ptr(n) if valid_hostname(&n) => Some(n),
                    _ => None,
                })
                .collect();
            let Some(first) = names.first().cloned() else {
                return Rdns::None;
            };
            let mut failed = false;
            for host in names {
                // Only the address family of the client: a name with both
                // A and AAAA records must verify an IPv6 client too.
                let kind = if ip.is_ipv4() { Kind::A } else { Kind::Aaaa };
                match self.query(&host, kind).await {
                    Answer::Records(addrs) => {
                        let back = addrs.iter().any(|a| match a {
                            Rdata::A(a) | Rdata::Aaaa(a) => a.parse::<IpAddr>() == Ok(ip),
                            _ => false,
                        });
                        if back {
                            return Rdns::Confirmed(host);
                        }
                    }
                    Answer::NxDomain | Answer::NoData | Answer::Invalid(_) => {}
                    Answer::Temporary(_) => failed = true,
                }
            }
            if failed {
                Rdns::Temporary
            } else {
                Rdns::Unconfirmed(first)
            }
        };
        tokio::time::timeout(budget, work)
            .await
            .unwrap_or(Rdns::Temporary)
    }
}

/// Why a lookup gave no records: the name does not exist, it exists
/// without records of the type asked, or the lookup failed for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Absent {
    /// NXDOMAIN.
    NxDomain,
    /// NOERROR without an answer of the type.
    NoData,
    /// Timeout, SERVFAIL, REFUSED and the like: ask again later.
    Failed(String),
}

/// Classifies a failed lookup.
pub fn absent(e: &hickory_resolver::ResolveError) -> Absent {
    use hickory_resolver::proto::ProtoErrorKind;
    use hickory_resolver::proto::op::ResponseCode;
    match e.proto().map(|p| p.kind()) {
        Some(ProtoErrorKind::NoRecordsFound {
            response_code: ResponseCode::NXDomain,
            ..
        }) => Absent::NxDomain,
        Some(ProtoErrorKind::NoRecordsFound {
            response_code: ResponseCode::NoError,
            ..
        }) => Absent::NoData,
        _ => Absent::Failed(e.to_string()),
    }
}

/// A host name as Postfix's `valid_hostname` accepts it: labels of ASCII
/// letters, digits, `-` and `_`, not starting or ending with `-`, at most
/// 63 bytes each and 253 in all, and not all digits (an address in
/// disguise). Anything else from a PTR record is no name.
pub fn valid_hostname(name: &str) -> bool {
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let mut all_numeric = true;
    for label in name.split('.') {
        if label.is_empty()
            || label.len() > 63
            || label.starts_with('-')
            || label.ends_with('-')
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return false;
        }
        all_numeric &= label.bytes().all(|b| b.is_ascii_digit());
    }
    !all_numeric
}

#[cfg(test)]
mod tests {
    use super::{Absent, absent, valid_hostname};
    use hickory_resolver::ResolveError;
    use hickory_resolver::proto::op::{Query, ResponseCode};
    use hickory_resolver::proto::{ProtoError, ProtoErrorKind};

    fn no_records(response_code: ResponseCode) -> ResolveError {
        ResolveError::from(ProtoError::from(ProtoErrorKind::NoRecordsFound {
            query: Box::new(Query::new()),
            soa: None,
            ns: None,
            negative_ttl: None,
            response_code,
            trusted: true,
            authorities: None,
        }))
    }

    /// True if the server answered that there is no such record. hickory
    /// reports SERVFAIL, REFUSED and the like as "no records found" too,
    /// with their response code: those are failures, not answers.
    fn answered_none(e: &ResolveError) -> bool {
        matches!(absent(e), Absent::NxDomain | Absent::NoData)
    }

    #[test]
    fn only_answers_are_absence_failures_are_not() {
        assert!(answered_none(&no_records(ResponseCode::NXDomain)));
        assert!(answered_none(&no_records(ResponseCode::NoError)));
        assert!(!answered_none(&no_records(ResponseCode::ServFail)));
        assert!(!answered_none(&no_records(ResponseCode::Refused)));
        assert!(!answered_none(&ResolveError::from(ProtoError::from(
            ProtoErrorKind::Timeout
        ))));
    }

    #[test]
    fn host_names_as_postfix_accepts_them() {
        for ok in [
            "mx.example.test",
            "a",
            "xn--bcher-kva.rev.test",
            "dsl-1_2.isp.test",
            "1a.test",
        ] {
            assert!(valid_hostname(ok), "{ok}");
        }
        for bad in [
            "",
            "192.0.2.1",
            "a..b",
            "-a.test",
            "a-.test",
            "bücher.test",
            "a b.test",
            "a\r\n.test",
        ] {
            assert!(!valid_hostname(bad), "{bad:?}");
        }
        assert!(!valid_hostname(&format!("{}.test", "a".repeat(64))));
    }
}
