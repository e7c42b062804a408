//! DNS for plugins: the [`Resolver`] trait over the host's `dns`
//! interface, so that a plugin's decisions are plain functions of a
//! resolver that its native unit tests replace with
//! [`crate::fake::FakeResolver`].
//!
//! ```ignore
//! use postern_sdk::resolve::{HostResolver, Resolver, MailDomain};
//! match postern_sdk::resolve::mail_domain(&HostResolver, "example.test") {
//!     MailDomain::Exists => {}
//!     MailDomain::NullMx => { /* RFC 7505: refuses mail */ }
//!     MailDomain::NotFound => { /* reject */ }
//!     MailDomain::Temporary(why) => { /* defer */ }
//! }
//! ```
//!
//! A plugin that calls any of this imports `postern:filter/dns` and
//! needs `grants = ["dns"]` in its `[[plugin]]` table.

pub use crate::dns::{
    ListQuery, ListResult, Listing, LookupResult, MxRecord, Query, Rdata, RecordType,
};

/// What a plugin asks of DNS. [`HostResolver`] asks the host;
/// [`crate::fake::FakeResolver`] answers from records held in memory.
pub trait Resolver {
    /// Records of one type for `name`.
    fn lookup(&self, name: &str, rtype: RecordType) -> LookupResult;

    /// Several lookups at once, answered in the order asked (the host
    /// resolves them concurrently).
    fn lookup_batch(&self, queries: &[Query]) -> Vec<LookupResult>;

    /// PTR names of an IPv4 or IPv6 address.
    fn reverse(&self, ip: &str) -> LookupResult;

    /// DNSBL/RHSBL queries, all at once, answered in the order asked.
    fn check_lists(&self, queries: &[ListQuery]) -> Vec<ListResult>;
}

/// The host's resolver (the `postern:filter/dns` imports).
#[derive(Debug, Clone, Copy, Default)]
pub struct HostResolver;

impl Resolver for HostResolver {
    fn lookup(&self, name: &str, rtype: RecordType) -> LookupResult {
        crate::dns::lookup(name, rtype)
    }
    fn lookup_batch(&self, queries: &[Query]) -> Vec<LookupResult> {
        crate::dns::lookup_batch(queries)
    }
    fn reverse(&self, ip: &str) -> LookupResult {
        crate::dns::reverse(ip)
    }
    fn check_lists(&self, queries: &[ListQuery]) -> Vec<ListResult> {
        crate::dns::check_lists(queries)
    }
}

/// A [`Query`] for `name` and `rtype`.
pub fn query(name: &str, rtype: RecordType) -> Query {
    Query {
        name: name.to_string(),
        type_: rtype,
    }
}

impl LookupResult {
    /// The answer records (empty unless `answers`).
    pub fn records(&self) -> &[Rdata] {
        match self {
            LookupResult::Answers(r) => r,
            _ => &[],
        }
    }

    /// True for `answers`.
    pub fn found(&self) -> bool {
        matches!(self, LookupResult::Answers(r) if !r.is_empty())
    }

    /// True for `temporary`: the lookup failed, try again later.
    pub fn is_temporary(&self) -> bool {
        matches!(self, LookupResult::Temporary(_))
    }

    /// The reason of a `temporary` or `invalid` result, else "".
    pub fn reason(&self) -> &str {
        match self {
            LookupResult::Temporary(w) | LookupResult::Invalid(w) => w,
            _ => "",
        }
    }

    /// A, AAAA addresses and PTR, TXT and MX-exchange names, as text.
    pub fn texts(&self) -> Vec<&str> {
        self.records()
            .iter()
            .map(|r| match r {
                Rdata::A(s) | Rdata::Aaaa(s) | Rdata::Txt(s) | Rdata::Ptr(s) => s.as_str(),
                Rdata::Mx(mx) => mx.exchange.as_str(),
            })
            .collect()
    }

    /// The MX records of an MX answer.
    pub fn mx(&self) -> Vec<&MxRecord> {
        self.records()
            .iter()
            .filter_map(|r| match r {
                Rdata::Mx(mx) => Some(mx),
                _ => None,
            })
            .collect()
    }

    /// True for an RFC 7505 null MX: one MX record whose exchange is "".
    pub fn is_null_mx(&self) -> bool {
        matches!(self.mx().as_slice(), [only] if only.exchange.is_empty())
    }
}

/// Whether a domain can receive mail, as Postfix's
/// `reject_unknown_sender_domain` / `reject_unknown_recipient_domain`
/// judge it: an MX record, else an A or AAAA record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailDomain {
    /// It has an MX (not null) or an address.
    Exists,
    /// RFC 7505 null MX: the domain declares it accepts no mail.
    NullMx,
    /// No MX and no address (NXDOMAIN, no data, or not a valid name).
    NotFound,
    /// A lookup failed temporarily and nothing was found: defer.
    Temporary(String),
}

/// Looks `domain` up for MX, A and AAAA in one batch (see [`MailDomain`]).
pub fn mail_domain(dns: &impl Resolver, domain: &str) -> MailDomain {
    let domain = domain.trim_end_matches('.');
    let results = dns.lookup_batch(&[
        query(domain, RecordType::Mx),
        query(domain, RecordType::A),
        query(domain, RecordType::Aaaa),
    ]);
    let mx = results.first();
    if mx.is_some_and(LookupResult::is_null_mx) {
        return MailDomain::NullMx;
    }
    if results.iter().any(LookupResult::found) {
        return MailDomain::Exists;
    }
    match results.iter().find(|r| r.is_temporary()) {
        Some(t) => MailDomain::Temporary(t.reason().to_string()),
        None => MailDomain::NotFound,
    }
}

/// Whether a host name has an A, AAAA or MX record (Postfix
/// `reject_unknown_helo_hostname`; a null MX counts as a record there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostName {
    /// Some A, AAAA or MX record.
    Exists,
    /// None of them (NXDOMAIN, no data, or not a valid name).
    NotFound,
    /// A lookup failed temporarily and nothing was found.
    Temporary(String),
}

/// Looks `name` up for A, AAAA and MX in one batch (see [`HostName`]).
pub fn host_name(dns: &impl Resolver, name: &str) -> HostName {
    let name = name.trim_end_matches('.');
    let results = dns.lookup_batch(&[
        query(name, RecordType::A),
        query(name, RecordType::Aaaa),
        query(name, RecordType::Mx),
    ]);
    if results.iter().any(LookupResult::found) {
        return HostName::Exists;
    }
    match results.iter().find(|r| r.is_temporary()) {
        Some(t) => HostName::Temporary(t.reason().to_string()),
        None => HostName::NotFound,
    }
}

/// The name a DNSBL/RHSBL query asks for: an IPv4 address's octets or an
/// IPv6 address's nibbles reversed, or a domain as it is, then the zone
/// (`2.0.0.127.dnsbl.test`). What the host builds for `check-lists`;
/// fakes use it to answer from zone data.
pub fn list_query_name(zone: &str, subject: &str) -> String {
    use std::net::IpAddr;
    let zone = zone.trim_end_matches('.');
    match subject.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.{zone}", o[3], o[2], o[1], o[0])
        }
        Ok(IpAddr::V6(v6)) => {
            let mut name = String::with_capacity(64 + zone.len());
            for byte in v6.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            name.push_str(zone);
            name
        }
        Err(_) => format!(
            "{}.{zone}",
            subject.trim_end_matches('.').to_ascii_lowercase()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_names() {
        assert_eq!(
            list_query_name("dnsbl.test", "127.0.0.2"),
            "2.0.0.127.dnsbl.test"
        );
        assert_eq!(
            list_query_name("rhsbl.test.", "Spammer.test"),
            "spammer.test.rhsbl.test"
        );
        let v6 = list_query_name("bl.test", "2001:db8::1");
        assert!(v6.starts_with("1.0.0.0.0.0.0.0."), "{v6}");
        assert!(v6.ends_with("8.b.d.0.1.0.0.2.bl.test"), "{v6}");
    }

    #[test]
    fn null_mx() {
        let mx = |e: &str| {
            Rdata::Mx(MxRecord {
                preference: 0,
                exchange: e.to_string(),
            })
        };
        assert!(LookupResult::Answers(vec![mx("")]).is_null_mx());
        assert!(!LookupResult::Answers(vec![mx("mx.test")]).is_null_mx());
        assert!(!LookupResult::Nxdomain.is_null_mx());
    }
}
