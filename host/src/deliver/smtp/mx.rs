//! Where a domain's mail goes (RFC 5321 §5.1, Postfix's smtp_addr): its MX
//! hosts by preference (equal ones shuffled), the domain itself when it
//! has none (implicit MX), nowhere for a null MX (RFC 7505), never back
//! to ourselves (MX hosts no better than us are dropped; if we are the
//! best, the mail loops: `5.4.6`).

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::TokioResolver;

use crate::config::SmtpHop;
use crate::deliver::agent::Status;
use crate::deliver::conn::Stop;
use crate::dns::{Absent, absent};

/// One address to try, with the host name it was found under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The MX host (or next hop) name, for log lines and TLS.
    pub host: String,
    /// Where to connect.
    pub addr: SocketAddr,
}

/// Where to send: a domain by its MX records, or a host by its address
/// records only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The name looked up (a domain, a host or an IP address).
    pub name: String,
    /// The port.
    pub port: u16,
    /// Look up MX records (else the name is the host itself).
    pub mx: bool,
}

impl Destination {
    /// The destination of a recipient domain and its transport's next
    /// hop (`[transport]` or `relayhost`), if any.
    pub fn of(domain: &str, next_hop: Option<&SmtpHop>, port: u16) -> Destination {
        match next_hop {
            Some(hop) => Destination {
                name: hop.host.clone(),
                port: hop.port.unwrap_or(port),
                mx: hop.mx,
            },
            None => match domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
                // An address literal: that host, no lookup.
                Some(literal) => Destination {
                    name: literal
                        .strip_prefix("IPv6:")
                        .or_else(|| literal.strip_prefix("ipv6:"))
                        .unwrap_or(literal)
                        .to_string(),
                    port,
                    mx: false,
                },
                None => Destination {
                    name: domain.to_string(),
                    port,
                    mx: true,
                },
            },
        }
    }

    /// Its name in Postfix's `nexthop` sense (`[host]:port` without MX).
    pub fn label(&self) -> String {
        if self.mx {
            self.name.clone()
        } else {
            format!("[{}]:{}", self.name, self.port)
        }
    }
}

/// Decides which addresses are our own listeners (MX loop detection).
pub trait Ours {
    /// True if `addr` reaches this daemon.
    fn is_ours(&self, addr: &SocketAddr) -> bool;
}

/// The addresses to try, best first, at most `limit`.
pub async fn targets(
    resolver: &TokioResolver,
    dest: &Destination,
    ours: &dyn Ours,
    limit: usize,
    shuffle: &mut dyn FnMut(usize) -> usize,
) -> Result<Vec<Target>, Stop> {
    if let Ok(ip) = dest.name.parse::<IpAddr>() {
        let target = Target {
            host: dest.name.clone(),
            addr: SocketAddr::new(ip, dest.port),
        };
        if ours.is_ours(&target.addr) {
            return Err(loops(&dest.label()));
        }
        return Ok(vec![target]);
    }
    let name = fqdn(&dest.name);
    let hosts: Vec<(u16, String)> = if dest.mx {
        match resolver.mx_lookup(name.as_str()).await {
            Ok(found) => {
                let records: Vec<(u16, String)> = found
                    .iter()
                    .map(|mx| {
                        let host = mx.exchange().to_ascii();
                        (
                            mx.preference(),
                            host.trim_end_matches('.').to_ascii_lowercase(),
                        )
                    })
                    .collect();
                let real: Vec<(u16, String)> = records
                    .iter()
                    .filter(|(_, h)| !h.is_empty())
                    .cloned()
                    .collect();
                if real.is_empty() {
                    // RFC 7505: "MX 0 ." says the domain takes no mail.
                    return Err(Stop::bounced(
                        "5.1.10",
                        format!("Domain {} does not accept mail (nullMX)", dest.name),
                    ));
                }
                ordered(real, shuffle)
            }
            Err(e) => match absent(&e) {
                Absent::NxDomain => return Err(not_found(&dest.name, "MX")),
                // No MX records: the domain itself (RFC 5321 §5.1).
                Absent::NoData => vec![(0, dest.name.to_ascii_lowercase())],
                Absent::Failed(why) => return Err(try_again(&dest.name, "MX", &why)),
            },
        }
    } else {
        vec![(0, dest.name.to_ascii_lowercase())]
    };
    let mut out: Vec<(u16, Target)> = Vec::new();
    let mut failed: Option<Stop> = None;
    let mut best_ours: Option<u16> = None;
    for (preference, host) in &hosts {
        if best_ours.is_some_and(|b| *preference >= b) {
            break;
        }
        let addrs = match addresses(resolver, host).await {
            Ok(a) => a,
            Err(stop) => {
                // Postfix goes on to the next MX host, and reports a
                // temporary failure only if none is left to try.
                if failed.as_ref().is_none_or(|f| f.status == Status::Bounced) {
                    failed = Some(stop);
                }
                continue;
            }
        };
        for ip in addrs {
            let addr = SocketAddr::new(ip, dest.port);
            if ours.is_ours(&addr) {
                best_ours = Some(best_ours.map_or(*preference, |b| b.min(*preference)));
                break;
            }
            out.push((
                *preference,
                Target {
                    host: host.clone(),
                    addr,
                },
            ));
        }
    }
    // Only MX hosts better than ours (Postfix's "best MX is local").
    if let Some(b) = best_ours {
        out.retain(|(p, _)| *p < b);
    }
    if out.is_empty() {
        if best_ours.is_some() {
            return Err(loops(&dest.label()));
        }
        return Err(failed.unwrap_or_else(|| not_found(&dest.name, "A")));
    }
    out.truncate(limit);
    Ok(out.into_iter().map(|(_, t)| t).collect())
}

/// MX records by preference, equal ones in random order (load sharing).
fn ordered(
    mut records: Vec<(u16, String)>,
    shuffle: &mut dyn FnMut(usize) -> usize,
) -> Vec<(u16, String)> {
    // Fisher–Yates, then a stable sort keeps the shuffle within equal
    // preferences.
    for i in (1..records.len()).rev() {
        let j = shuffle(i + 1).min(i);
        records.swap(i, j);
    }
    records.sort_by_key(|(p, _)| *p);
    records.dedup();
    records
}

/// A host's IPv4 then IPv6 addresses.
async fn addresses(resolver: &TokioResolver, host: &str) -> Result<Vec<IpAddr>, Stop> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let name = fqdn(host);
    let v4 = resolver.ipv4_lookup(name.as_str()).await;
    let v6 = resolver.ipv6_lookup(name.as_str()).await;
    let mut out: Vec<IpAddr> = Vec::new();
    if let Ok(found) = &v4 {
        out.extend(found.iter().map(|a| IpAddr::V4(a.0)));
    }
    if let Ok(found) = &v6 {
        out.extend(found.iter().map(|a| IpAddr::V6(a.0)));
    }
    if !out.is_empty() {
        return Ok(out);
    }
    let why = [v4.err(), v6.err()]
        .into_iter()
        .flatten()
        .map(|e| absent(&e))
        .find_map(|a| match a {
            Absent::Failed(why) => Some(why),
            _ => None,
        });
    Err(match why {
        Some(why) => try_again(host, "A", &why),
        None => not_found(host, "A"),
    })
}

/// An absolute name: no search domains.
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

fn not_found(name: &str, rtype: &str) -> Stop {
    Stop::bounced(
        "5.4.4",
        format!(
            "Host or domain name not found. Name service error for name={name} type={rtype}: Host not found"
        ),
    )
}

pub(super) fn try_again(name: &str, rtype: &str, why: &str) -> Stop {
    tracing::debug!("lookup of {name} {rtype} failed: {why}");
    Stop::deferred(
        "4.4.3",
        format!(
            "Host or domain name not found. Name service error for name={name} type={rtype}: Host not found, try again"
        ),
    )
}

fn loops(dest: &str) -> Stop {
    Stop::bounced("5.4.6", format!("mail for {dest} loops back to myself"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_preferences_are_shuffled_and_the_order_kept() {
        let records = vec![
            (20, "c".to_string()),
            (10, "a".to_string()),
            (10, "b".to_string()),
            (30, "d".to_string()),
        ];
        let mut seen = std::collections::HashSet::new();
        for seed in 0..20usize {
            let mut n = seed;
            let mut pick = |k: usize| {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (n >> 33) % k
            };
            let got = ordered(records.clone(), &mut pick);
            let prefs: Vec<u16> = got.iter().map(|(p, _)| *p).collect();
            assert_eq!(prefs, [10, 10, 20, 30]);
            assert_eq!((got[2].1.as_str(), got[3].1.as_str()), ("c", "d"));
            seen.insert(got[0].1.clone());
        }
        assert_eq!(seen.len(), 2, "both 10s come first sometimes");
    }

    #[test]
    fn destinations() {
        let d = Destination::of("dest.test", None, 25);
        assert!(d.mx && d.name == "dest.test" && d.port == 25);
        let d = Destination::of("[127.0.0.10]", None, 2525);
        assert!(!d.mx && d.name == "127.0.0.10" && d.port == 2525);
        assert_eq!(d.label(), "[127.0.0.10]:2525");
        let d = Destination::of("[IPv6:::1]", None, 25);
        assert_eq!(d.name, "::1");
        let hop = SmtpHop {
            host: "relay.test".into(),
            port: Some(587),
            mx: false,
        };
        let d = Destination::of("dest.test", Some(&hop), 25);
        assert!(!d.mx && d.name == "relay.test" && d.port == 587);
    }
}
