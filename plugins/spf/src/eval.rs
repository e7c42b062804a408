//! `check_host()` (RFC 7208 §4) over a [`Resolver`]: the host's `dns`
//! capability in the plugin, a fake zone in tests.

use crate::record::{self, Expander, Mechanism, Qualifier, Record};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a lookup gave no records.
#[derive(Debug, Clone, PartialEq)]
pub enum DnsError {
    /// NXDOMAIN or no record of the type: a "void lookup" (§4.6.4).
    NotFound,
    /// Timeout, SERVFAIL, the call's DNS time limit: a temperror.
    Temporary(String),
    /// The host refused the name (malformed, or too many lookups).
    Invalid(String),
}

/// The lookups SPF needs. Names are lower case, without the trailing dot.
pub trait Resolver {
    /// TXT strings of `name` (each record's strings joined).
    fn txt(&self, name: &str) -> Result<Vec<String>, DnsError>;
    /// A records.
    fn a(&self, name: &str) -> Result<Vec<Ipv4Addr>, DnsError>;
    /// AAAA records.
    fn aaaa(&self, name: &str) -> Result<Vec<Ipv6Addr>, DnsError>;
    /// MX exchanges, in any order ("" for a null MX).
    fn mx(&self, name: &str) -> Result<Vec<String>, DnsError>;
    /// PTR names of an address.
    fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError>;
}

/// An SPF result (§2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpfResult {
    /// Authorised.
    Pass,
    /// Explicitly not authorised.
    Fail,
    /// Probably not authorised.
    SoftFail,
    /// No assertion.
    Neutral,
    /// No SPF record (or no valid domain).
    None,
    /// A transient DNS error.
    TempError,
    /// The domain's record is wrong (syntax, too many lookups).
    PermError,
}

impl SpfResult {
    /// The name used in headers and config keys.
    pub fn name(self) -> &'static str {
        match self {
            SpfResult::Pass => "pass",
            SpfResult::Fail => "fail",
            SpfResult::SoftFail => "softfail",
            SpfResult::Neutral => "neutral",
            SpfResult::None => "none",
            SpfResult::TempError => "temperror",
            SpfResult::PermError => "permerror",
        }
    }
}

impl From<Qualifier> for SpfResult {
    fn from(q: Qualifier) -> Self {
        match q {
            Qualifier::Pass => SpfResult::Pass,
            Qualifier::Fail => SpfResult::Fail,
            Qualifier::SoftFail => SpfResult::SoftFail,
            Qualifier::Neutral => SpfResult::Neutral,
        }
    }
}

/// A result with what led to it, for logs and headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The result.
    pub result: SpfResult,
    /// The matching mechanism, or why there was none / what failed.
    pub why: String,
}

/// The §4.6.4 limits.
const MAX_LOOKUPS: u32 = 10;
const MAX_VOID: u32 = 2;
const MAX_MX_PTR: usize = 10;

/// One evaluation's state: the inputs and the counters shared by every
/// nested `include` and `redirect`.
pub struct Eval<'a> {
    dns: &'a dyn Resolver,
    ip: IpAddr,
    sender: String,
    helo: String,
    lookups: u32,
    voids: u32,
}

type Step<T> = Result<T, Verdict>;

fn stop(result: SpfResult, why: impl Into<String>) -> Verdict {
    Verdict {
        result,
        why: why.into(),
    }
}

/// True if `d` can be an SPF domain: two labels at least, each 1..=63 octets.
pub fn valid_domain(d: &str) -> bool {
    let d = d.trim_end_matches('.');
    d.len() <= 253
        && d.contains('.')
        && d.split('.').all(|l| !l.is_empty() && l.len() <= 63)
        && d.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Evaluates SPF for `ip` and the identity `sender` (`local@domain`;
/// `postmaster@helo` for the null sender) at `domain`.
pub fn check_host(
    dns: &dyn Resolver,
    ip: IpAddr,
    domain: &str,
    sender: &str,
    helo: &str,
) -> Verdict {
    // An IPv4-mapped IPv6 client is an IPv4 client (§5).
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let mut e = Eval {
        dns,
        ip,
        sender: sender.to_string(),
        helo: helo.to_string(),
        lookups: 0,
        voids: 0,
    };
    e.check(&domain.to_ascii_lowercase(), 0)
}

impl Eval<'_> {
    fn check(&mut self, domain: &str, depth: u32) -> Verdict {
        if !valid_domain(domain) {
            return stop(SpfResult::None, format!("{domain:?} is not a domain name"));
        }
        let rec = match self.record(domain) {
            Ok(r) => r,
            Err(v) => return v,
        };
        match self.directives(domain, &rec, depth) {
            Ok(Some(v)) => v,
            Ok(None) => match &rec.redirect {
                Some(spec) => match self.redirect(domain, spec, depth) {
                    Ok(v) | Err(v) => v,
                },
                None => stop(
                    SpfResult::Neutral,
                    format!("no mechanism of {domain} matched"),
                ),
            },
            Err(v) => v,
        }
    }

    /// The domain's one SPF record.
    fn record(&mut self, domain: &str) -> Step<Record> {
        let txts = match self.dns.txt(domain) {
            Ok(t) => t,
            Err(DnsError::NotFound) | Err(DnsError::Invalid(_)) => {
                return Err(stop(SpfResult::None, format!("{domain} has no SPF record")));
            }
            Err(DnsError::Temporary(e)) => {
                return Err(stop(SpfResult::TempError, format!("TXT {domain}: {e}")));
            }
        };
        let mut spf = txts.iter().filter(|t| record::is_spf(t));
        let (Some(one), None) = (spf.next(), spf.next()) else {
            return Err(match txts.iter().filter(|t| record::is_spf(t)).count() {
                0 => stop(SpfResult::None, format!("{domain} has no SPF record")),
                _ => stop(
                    SpfResult::PermError,
                    format!("{domain} has more than one SPF record"),
                ),
            });
        };
        record::parse(one)
            .map_err(|e| stop(SpfResult::PermError, format!("SPF record of {domain}: {e}")))
    }

    fn directives(&mut self, domain: &str, rec: &Record, depth: u32) -> Step<Option<Verdict>> {
        for (q, m) in &rec.directives {
            if m.looks_up() {
                self.count_lookup()?;
            }
            if self.matches(domain, m, depth)? {
                return Ok(Some(stop(
                    (*q).into(),
                    format!("{domain}: {}", describe(m)),
                )));
            }
        }
        Ok(None)
    }

    fn redirect(&mut self, domain: &str, spec: &str, depth: u32) -> Step<Verdict> {
        self.count_lookup()?;
        let target = self.target(domain, spec)?;
        let v = self.nested(&target, depth)?;
        // A redirect to a domain without a record is a permerror (§6.1).
        Ok(if v.result == SpfResult::None {
            stop(
                SpfResult::PermError,
                format!("redirect to {target}: {}", v.why),
            )
        } else {
            v
        })
    }

    fn nested(&mut self, target: &str, depth: u32) -> Step<Verdict> {
        if depth >= MAX_LOOKUPS {
            return Err(stop(SpfResult::PermError, "include/redirect loop"));
        }
        Ok(self.check(target, depth + 1))
    }

    fn count_lookup(&mut self) -> Step<()> {
        self.lookups += 1;
        if self.lookups > MAX_LOOKUPS {
            return Err(stop(SpfResult::PermError, "more than 10 DNS lookups"));
        }
        Ok(())
    }

    /// Turns an empty answer into a counted void lookup.
    fn void<T>(&mut self, r: Result<Vec<T>, DnsError>, what: &str) -> Step<Vec<T>> {
        match r {
            Ok(v) if !v.is_empty() => Ok(v),
            Ok(_) | Err(DnsError::NotFound) | Err(DnsError::Invalid(_)) => {
                self.voids += 1;
                if self.voids > MAX_VOID {
                    return Err(stop(SpfResult::PermError, "more than 2 void lookups"));
                }
                Ok(Vec::new())
            }
            Err(DnsError::Temporary(e)) => Err(stop(SpfResult::TempError, format!("{what}: {e}"))),
        }
    }

    fn expander(&self, domain: &str) -> Expander {
        Expander {
            sender: self.sender.clone(),
            domain: domain.to_string(),
            ip: Some(self.ip),
            helo: self.helo.clone(),
            receiver: String::new(),
        }
    }

    fn target(&self, domain: &str, spec: &str) -> Step<String> {
        let d = self
            .expander(domain)
            .expand(spec, false)
            .map_err(|e| stop(SpfResult::PermError, format!("{spec}: {e}")))?;
        Ok(record::fit_domain(&d))
    }

    fn matches(&mut self, domain: &str, m: &Mechanism, depth: u32) -> Step<bool> {
        match m {
            Mechanism::All => Ok(true),
            Mechanism::Ip4(net, len) => Ok(match self.ip {
                IpAddr::V4(ip) => in_net4(ip, *net, *len),
                IpAddr::V6(_) => false,
            }),
            Mechanism::Ip6(net, len) => Ok(match self.ip {
                IpAddr::V6(ip) => in_net6(ip, *net, *len),
                IpAddr::V4(_) => false,
            }),
            Mechanism::Include(spec) => {
                let target = self.target(domain, spec)?;
                let v = self.nested(&target, depth)?;
                match v.result {
                    SpfResult::Pass => Ok(true),
                    SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral => Ok(false),
                    SpfResult::TempError => Err(v),
                    SpfResult::PermError | SpfResult::None => Err(stop(
                        SpfResult::PermError,
                        format!("include:{target}: {}", v.why),
                    )),
                }
            }
            Mechanism::A(spec, v4, v6) => {
                let target = match spec {
                    Some(s) => self.target(domain, s)?,
                    None => domain.to_string(),
                };
                self.host_matches(&target, *v4, *v6)
            }
            Mechanism::Mx(spec, v4, v6) => {
                let target = match spec {
                    Some(s) => self.target(domain, s)?,
                    None => domain.to_string(),
                };
                let r = self.dns.mx(&target);
                let mut hosts = self.void(r, &format!("MX {target}"))?;
                hosts.retain(|h| !h.is_empty());
                if hosts.len() > MAX_MX_PTR {
                    return Err(stop(
                        SpfResult::PermError,
                        format!("{target} has more than 10 MX records"),
                    ));
                }
                for h in hosts {
                    if self.host_matches(&h, *v4, *v6)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Mechanism::Ptr(spec) => {
                let target = match spec {
                    Some(s) => self.target(domain, s)?,
                    None => domain.to_string(),
                };
                // A PTR lookup failure is no match, not an error (§5.5).
                let names = self.dns.ptr(self.ip).unwrap_or_default();
                for name in names.into_iter().take(MAX_MX_PTR) {
                    let name = name.trim_end_matches('.').to_ascii_lowercase();
                    if !postern_sdk::addr::in_domain(&name, &target) {
                        continue;
                    }
                    if self.host_matches(&name, 32, 128).unwrap_or(false) {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Mechanism::Exists(spec) => {
                let target = self.target(domain, spec)?;
                let r = self.dns.a(&target);
                Ok(!self.void(r, &format!("A {target}"))?.is_empty())
            }
        }
    }

    /// True if one of `name`'s addresses of the client's family is in the
    /// client's network of the given prefix lengths.
    fn host_matches(&mut self, name: &str, v4: u8, v6: u8) -> Step<bool> {
        match self.ip {
            IpAddr::V4(ip) => {
                let r = self.dns.a(name);
                let addrs = self.void(r, &format!("A {name}"))?;
                Ok(addrs.iter().any(|a| in_net4(ip, *a, v4)))
            }
            IpAddr::V6(ip) => {
                let r = self.dns.aaaa(name);
                let addrs = self.void(r, &format!("AAAA {name}"))?;
                Ok(addrs.iter().any(|a| in_net6(ip, *a, v6)))
            }
        }
    }
}

fn in_net4(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    u32::from(ip) & mask == u32::from(net) & mask
}

fn in_net6(ip: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    };
    u128::from(ip) & mask == u128::from(net) & mask
}

fn describe(m: &Mechanism) -> String {
    match m {
        Mechanism::All => "all".into(),
        Mechanism::Include(d) => format!("include:{d}"),
        Mechanism::A(d, ..) => d.as_ref().map_or("a".into(), |d| format!("a:{d}")),
        Mechanism::Mx(d, ..) => d.as_ref().map_or("mx".into(), |d| format!("mx:{d}")),
        Mechanism::Ptr(d) => d.as_ref().map_or("ptr".into(), |d| format!("ptr:{d}")),
        Mechanism::Ip4(n, l) => format!("ip4:{n}/{l}"),
        Mechanism::Ip6(n, l) => format!("ip6:{n}/{l}"),
        Mechanism::Exists(d) => format!("exists:{d}"),
    }
}

#[cfg(test)]
#[path = "eval_tests.rs"]
pub(crate) mod tests;
