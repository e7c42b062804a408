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
    /// `client_name`: `None` when there is no PTR, it does not point back,
    /// or the lookup failed (a failure is not remembered, so the next
    /// connection asks again).
    pub async fn verified_ptr(&self, ip: IpAddr) -> Option<String> {
        if !self.reverse_lookup {
            return None;
        }
        let ip = ip.to_canonical();
        {
            let cache = self.ptr_cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((name, at)) = cache.get(&ip)
                && at.elapsed() < PTR_TTL
            {
                return name.clone();
            }
        }
        let Ok(name) = self.lookup_ptr(ip).await else {
            return None;
        };
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

    /// `Ok(Some(name))` verified, `Ok(None)` no PTR or none pointing back,
    /// `Err` a temporary failure (timeout, SERVFAIL). Names are taken in
    /// their ASCII (punycode) form, and only if they are valid host names.
    async fn lookup_ptr(&self, ip: IpAddr) -> Result<Option<String>, TempFail> {
        let budget = self.timeout * 2;
        let work = async {
            let names = match self.resolver.reverse_lookup(ip).await {
                Ok(names) => names,
                Err(e) if answered_none(&e) => return Ok(None),
                Err(_) => return Err(TempFail),
            };
            let mut failed = false;
            for name in names.iter() {
                let host = name.0.to_ascii();
                let host = host.trim_end_matches('.');
                if !valid_hostname(host) {
                    continue;
                }
                let fqdn = format!("{host}.");
                // Only the address family of the client: a name with both
                // A and AAAA records must verify an IPv6 client too.
                let back = match ip {
                    IpAddr::V4(v4) => self
                        .resolver
                        .ipv4_lookup(fqdn)
                        .await
                        .map(|l| l.iter().any(|a| a.0 == v4)),
                    IpAddr::V6(v6) => self
                        .resolver
                        .ipv6_lookup(fqdn)
                        .await
                        .map(|l| l.iter().any(|a| a.0 == v6)),
                };
                match back {
                    Ok(true) => return Ok(Some(host.to_string())),
                    Ok(false) => {}
                    Err(e) if answered_none(&e) => {}
                    Err(_) => failed = true,
                }
            }
            if failed { Err(TempFail) } else { Ok(None) }
        };
        tokio::time::timeout(budget, work)
            .await
            .unwrap_or(Err(TempFail))
    }
}

/// True if the server answered that there is no such record (NXDOMAIN,
/// or NOERROR without one). hickory reports SERVFAIL, REFUSED and the like
/// as "no records found" too, with their response code: those are
/// failures, to be asked again, not answers.
fn answered_none(e: &hickory_resolver::ResolveError) -> bool {
    matches!(absent(e), Absent::NxDomain | Absent::NoData)
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

/// A DNS lookup that failed for now (not "no such record").
#[derive(Debug)]
struct TempFail;

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
    use super::{answered_none, valid_hostname};
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
