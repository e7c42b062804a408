//! Typed lookups for plugins (the `dns` capability) and the connect-time
//! reverse check: every outcome says whether the name does not exist, has
//! no record of the type, or could not be asked, so that a caller tells
//! "reject" from "try again later". DNSBL/RHSBL query names are built
//! here too.

use std::net::IpAddr;

use hickory_resolver::Name;
use hickory_resolver::proto::op::{Query, ResponseCode};
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use hickory_resolver::proto::xfer::{DnsHandle, DnsRequestOptions, FirstAnswer};

use super::{Absent, Dns, absent};

/// Record types a plugin may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// IPv4 address.
    A,
    /// IPv6 address.
    Aaaa,
    /// Mail exchanger.
    Mx,
    /// Text.
    Txt,
    /// Pointer (reverse DNS).
    Ptr,
}

impl Kind {
    fn record_type(self) -> RecordType {
        match self {
            Kind::A => RecordType::A,
            Kind::Aaaa => RecordType::AAAA,
            Kind::Mx => RecordType::MX,
            Kind::Txt => RecordType::TXT,
            Kind::Ptr => RecordType::PTR,
        }
    }
}

/// One answer record, in text form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rdata {
    /// Dotted IPv4.
    A(String),
    /// IPv6 (RFC 5952).
    Aaaa(String),
    /// Preference and exchange (lower case, no trailing dot; "" for a
    /// null MX).
    Mx(u16, String),
    /// The character-strings of one record, joined.
    Txt(String),
    /// A name, lower case, no trailing dot.
    Ptr(String),
}

/// The outcome of one lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Records of the type asked (at least one).
    Records(Vec<Rdata>),
    /// The name does not exist.
    NxDomain,
    /// The name exists without records of the type.
    NoData,
    /// Could not be answered now.
    Temporary(String),
    /// Not looked up: the name or address is not valid.
    Invalid(String),
}

/// What a DNSBL or RHSBL says of a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    /// Listed: the A records (return codes) and TXT records (reasons).
    Listed {
        /// A records of the query name.
        codes: Vec<String>,
        /// TXT records of the query name.
        texts: Vec<String>,
    },
    /// Not listed.
    NotListed,
    /// Could not be asked now.
    Temporary(String),
    /// Not a valid zone or subject.
    Invalid(String),
}

/// Lower case, no trailing dot.
fn plain(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

/// A name a plugin asks about, as an absolute DNS name: ASCII or
/// internationalised (made punycode), at most 253 octets.
pub fn parse_name(name: &str) -> Result<Name, String> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.len() > 253 {
        return Err(format!("not a domain name: {name:?}"));
    }
    let mut n =
        Name::from_utf8(trimmed).map_err(|e| format!("not a domain name: {name:?}: {e}"))?;
    n.set_fqdn(true);
    Ok(n)
}

/// The query name of a list lookup: an address's octets (IPv4) or
/// nibbles (IPv6) reversed, or a domain as it is, under `zone`.
pub fn list_name(zone: &str, subject: &str) -> Result<Name, String> {
    let zone = parse_name(zone).map_err(|e| format!("zone: {e}"))?;
    let labels = match subject.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}", o[3], o[2], o[1], o[0])
        }
        Ok(IpAddr::V6(v6)) => {
            let mut nibbles = Vec::with_capacity(32);
            for b in v6.octets().iter().rev() {
                nibbles.push(format!("{:x}", b & 0xf));
                nibbles.push(format!("{:x}", b >> 4));
            }
            nibbles.join(".")
        }
        Err(_) => {
            let d = parse_name(subject).map_err(|e| format!("subject: {e}"))?;
            d.to_ascii().trim_end_matches('.').to_string()
        }
    };
    let name = parse_name(&labels)
        .and_then(|l| l.append_domain(&zone).map_err(|e| e.to_string()))
        .map_err(|e| format!("{subject} under {zone}: {e}"))?;
    if name.len() > 254 {
        return Err(format!("{subject} under {zone}: name too long"));
    }
    Ok(name)
}

/// True for the names hickory answers itself (RFC 6761 loopback): the
/// reverse zones of 127.0.0.0/8 and ::1, which go to the nameservers here.
fn loopback_reverse(name: &Name) -> bool {
    let arpa127 = Name::from_ascii("127.in-addr.arpa.").expect("a valid name");
    let v6 = Name::from(IpAddr::from(std::net::Ipv6Addr::LOCALHOST));
    arpa127.zone_of(name) || *name == v6
}

/// The records of `kind` among `records` (a CNAME chain is followed by
/// the resolver; its CNAMEs are not answers).
fn collect<'a>(records: impl Iterator<Item = &'a Record>, kind: Kind) -> Vec<Rdata> {
    records
        .filter_map(|r| match (kind, r.data()) {
            (Kind::A, RData::A(a)) => Some(Rdata::A(a.0.to_string())),
            (Kind::Aaaa, RData::AAAA(a)) => Some(Rdata::Aaaa(a.0.to_string())),
            (Kind::Mx, RData::MX(mx)) => Some(Rdata::Mx(mx.preference(), plain(mx.exchange()))),
            (Kind::Txt, RData::TXT(t)) => Some(Rdata::Txt(
                t.txt_data()
                    .iter()
                    .map(|s| String::from_utf8_lossy(s))
                    .collect(),
            )),
            (Kind::Ptr, RData::PTR(p)) => Some(Rdata::Ptr(plain(&p.0))),
            _ => None,
        })
        .collect()
}

fn from_error(e: &hickory_resolver::ResolveError) -> Answer {
    match absent(e) {
        Absent::NxDomain => Answer::NxDomain,
        Absent::NoData => Answer::NoData,
        Absent::Failed(why) => Answer::Temporary(why),
    }
}

impl Dns {
    /// Looks `name` up for records of `kind`.
    pub async fn query(&self, name: &str, kind: Kind) -> Answer {
        match parse_name(name) {
            Ok(n) => self.query_name(n, kind).await,
            Err(e) => Answer::Invalid(e),
        }
    }

    /// [`Dns::query`] of a parsed name.
    pub async fn query_name(&self, name: Name, kind: Kind) -> Answer {
        if loopback_reverse(&name) {
            return self.ask_nameservers(name, kind).await;
        }
        match self.resolver.lookup(name, kind.record_type()).await {
            Ok(l) => match collect(l.record_iter(), kind) {
                v if v.is_empty() => Answer::NoData,
                v => Answer::Records(v),
            },
            Err(e) => from_error(&e),
        }
    }

    /// One query straight to the nameservers, past hickory's special
    /// handling of loopback names (and its cache).
    async fn ask_nameservers(&self, name: Name, kind: Kind) -> Answer {
        let query = Query::query(name, kind.record_type());
        let mut options = DnsRequestOptions::default();
        options.recursion_desired = true;
        let asked = self.pool.lookup(query, options).first_answer();
        match tokio::time::timeout(self.timeout * 2, asked).await {
            Err(_) => Answer::Temporary("timed out".into()),
            Ok(Err(e)) => from_error(&e.into()),
            Ok(Ok(response)) => match response.response_code() {
                ResponseCode::NXDomain => Answer::NxDomain,
                ResponseCode::NoError => match collect(response.answers().iter(), kind) {
                    v if v.is_empty() => Answer::NoData,
                    v => Answer::Records(v),
                },
                code => Answer::Temporary(format!("the nameserver answered {code}")),
            },
        }
    }

    /// The PTR records of an address in text form.
    pub async fn reverse(&self, ip: &str) -> Answer {
        match ip.parse::<IpAddr>() {
            Ok(ip) => {
                self.query_name(Name::from(ip.to_canonical()), Kind::Ptr)
                    .await
            }
            Err(_) => Answer::Invalid(format!("not an IP address: {ip:?}")),
        }
    }

    /// What the list `zone` says of `subject`: its A records, and if there
    /// are any its TXT records (asked at the same time).
    pub async fn check_list(&self, zone: &str, subject: &str) -> Listing {
        let name = match list_name(zone, subject) {
            Ok(n) => n,
            Err(e) => return Listing::Invalid(e),
        };
        let (a, txt) = tokio::join!(
            self.query_name(name.clone(), Kind::A),
            self.query_name(name, Kind::Txt)
        );
        match a {
            Answer::Records(codes) => Listing::Listed {
                codes: codes
                    .into_iter()
                    .filter_map(|r| match r {
                        Rdata::A(a) => Some(a),
                        _ => None,
                    })
                    .collect(),
                // A listing without its reason is still a listing.
                texts: match txt {
                    Answer::Records(t) => t
                        .into_iter()
                        .filter_map(|r| match r {
                            Rdata::Txt(t) => Some(t),
                            _ => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                },
            },
            Answer::NxDomain | Answer::NoData => Listing::NotListed,
            Answer::Temporary(e) => Listing::Temporary(e),
            Answer::Invalid(e) => Listing::Invalid(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_names_reverse_addresses_and_keep_domains() {
        let n = |z, s| list_name(z, s).map(|n| n.to_ascii());
        assert_eq!(
            n("dnsbl.test", "127.0.0.2").unwrap(),
            "2.0.0.127.dnsbl.test."
        );
        assert_eq!(
            n("zen.example", "2001:db8::1").unwrap(),
            format!("1.{}8.b.d.0.1.0.0.2.zen.example.", "0.".repeat(23))
        );
        assert_eq!(
            n("rhsbl.test", "Spammer.Test").unwrap(),
            "spammer.test.rhsbl.test."
        );
        assert_eq!(
            n("rhsbl.test.", "bücher.test").unwrap(),
            "xn--bcher-kva.test.rhsbl.test."
        );
        assert!(n("", "127.0.0.2").is_err());
        assert!(n("dnsbl.test", "").is_err());
        assert!(n("dnsbl.test", "a..b").is_err());
        assert!(n(&"a.".repeat(120), &"b.".repeat(70)).is_err());
    }

    #[test]
    fn loopback_reverse_names_are_ours() {
        let ptr = |ip: &str| Name::from(ip.parse::<IpAddr>().unwrap());
        assert!(loopback_reverse(&ptr("127.0.0.2")));
        assert!(loopback_reverse(&ptr("127.1.2.3")));
        assert!(loopback_reverse(&ptr("::1")));
        assert!(!loopback_reverse(&ptr("128.0.0.1")));
        assert!(!loopback_reverse(
            &parse_name("2.0.0.127.dnsbl.test").unwrap()
        ));
    }

    #[test]
    fn names_are_checked() {
        assert!(parse_name("example.test").unwrap().is_fqdn());
        assert!(parse_name("example.test.").is_ok());
        assert!(parse_name("").is_err());
        assert!(parse_name(".").is_err());
        assert!(parse_name(&"a".repeat(254)).is_err());
    }
}
