//! Fakes of the host's capabilities for a plugin's native unit tests
//! (`cargo test`): [`FakeResolver`] answers from records held in memory
//! (with [`FakeResolver::test_zones`], the peers kit's test zones), and
//! [`MemoryStore`] is a key-value store with a clock the test moves.
//!
//! ```
//! use postern_sdk::fake::FakeResolver;
//! use postern_sdk::resolve::{mail_domain, MailDomain};
//! let dns = FakeResolver::test_zones().temporary("slow.test");
//! assert_eq!(mail_domain(&dns, "example.test"), MailDomain::Exists);
//! assert_eq!(mail_domain(&dns, "nullmx.test"), MailDomain::NullMx);
//! assert_eq!(mail_domain(&dns, "nowhere.test"), MailDomain::NotFound);
//! assert!(matches!(mail_domain(&dns, "slow.test"), MailDomain::Temporary(_)));
//! ```

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use crate::resolve::{
    ListQuery, ListResult, Listing, LookupResult, MxRecord, Query, Rdata, RecordType, Resolver,
    list_query_name,
};
use crate::store::{KvError, Store};
use crate::{Outcome, Verdict};

/// An outcome in one line, for assertions: `reject: 554 5.7.1 TEXT`,
/// `tempfail: 450 4.1.8 TEXT`, `continue`, `accept`, with any scores
/// after the verdict as ` SYMBOL=POINTS`.
pub fn describe(outcome: &Outcome) -> String {
    let reply = |kind: &str, r: &crate::Reply| {
        format!(
            "{kind}: {} {} {}",
            r.code,
            r.enhanced.as_deref().unwrap_or("-"),
            r.text
        )
    };
    let mut line = match &outcome.verdict {
        Verdict::Continue => "continue".to_string(),
        Verdict::Accept => "accept".to_string(),
        Verdict::Reject(r) => reply("reject", r),
        Verdict::Tempfail(r) => reply("tempfail", r),
        Verdict::Discard(why) => format!("discard: {why}"),
        Verdict::Quarantine(why) => format!("quarantine: {why}"),
    };
    for s in &outcome.scores {
        line.push_str(&format!(" {}={}", s.symbol, s.points));
    }
    line
}

/// A resolver over records held in memory. A name with no record (and
/// no record below it) is NXDOMAIN; a name with records of other types
/// only is no-data; names marked [`FakeResolver::temporary`] fail
/// temporarily (and so do the names below them). Every call is recorded
/// ([`FakeResolver::calls`]), so a test can assert that lookups were
/// batched.
#[derive(Debug, Default, Clone)]
pub struct FakeResolver {
    records: Vec<(String, Rdata)>,
    temporary: Vec<String>,
    calls: RefCell<Vec<String>>,
}

fn norm(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn below(name: &str, parent: &str) -> bool {
    name == parent || name.ends_with(&format!(".{parent}"))
}

impl FakeResolver {
    /// No records: every name is NXDOMAIN.
    pub fn new() -> FakeResolver {
        FakeResolver::default()
    }

    /// The zones of the peers kit's DNS server (`peers/conf/dns`, see its
    /// README "Test zones"): `example.test`, `dest.test`, `nomx.test`,
    /// `nullmx.test`, `spf-*.test`, `spammer.test`, `good.test`, the
    /// `dnsbl.test` and `rhsbl.test` lists and the reverse zones.
    pub fn test_zones() -> FakeResolver {
        FakeResolver::new()
            .a("ns.test", "127.0.0.1")
            .a("mx.test", "127.0.0.1")
            .mx("example.test", 10, "mx.example.test")
            .txt("example.test", "v=spf1 ip4:127.0.0.0/24 -all")
            .a("mx.example.test", "127.0.0.1")
            .a("client.example.test", "127.0.0.2")
            .mx("dest.test", 10, "mx1.dest.test")
            .mx("dest.test", 20, "mx2.dest.test")
            .a("mx1.dest.test", "127.0.0.10")
            .a("mx2.dest.test", "127.0.0.11")
            .txt("dest.test", "v=spf1 mx -all")
            .a("nomx.test", "127.0.0.12")
            .mx("nullmx.test", 0, "")
            .txt("spf-fail.test", "v=spf1 -all")
            .mx("spf-fail.test", 10, "mx.example.test")
            .txt("spf-soft.test", "v=spf1 ~all")
            .mx("spf-soft.test", 10, "mx.example.test")
            .a("spammer.test", "127.0.0.99")
            .mx("spammer.test", 10, "spammer.test")
            .a("dyn-127-0-0-99.pool.test", "127.0.0.99")
            .mx("good.test", 10, "mail.good.test")
            .txt("good.test", "v=spf1 mx -all")
            .a("mail.good.test", "198.18.0.25")
            .a("2.0.0.127.dnsbl.test", "127.0.0.2")
            .txt(
                "2.0.0.127.dnsbl.test",
                "127.0.0.2 is listed (RFC 5782 test point)",
            )
            .a("99.0.0.127.dnsbl.test", "127.0.0.2")
            .txt("99.0.0.127.dnsbl.test", "127.0.0.99 listed in dnsbl.test")
            .a("test.rhsbl.test", "127.0.0.2")
            .a("spammer.test.rhsbl.test", "127.0.0.2")
            .txt(
                "spammer.test.rhsbl.test",
                "spammer.test listed in rhsbl.test",
            )
            .ptr("127.0.0.1", "localhost")
            .ptr("127.0.0.2", "client.example.test")
            .ptr("127.0.0.10", "mx1.dest.test")
            .ptr("127.0.0.11", "mx2.dest.test")
            .ptr("127.0.0.12", "nomx.test")
            .ptr("127.0.0.99", "dyn-127-0-0-99.pool.test")
            .ptr("198.18.0.25", "mail.good.test")
    }

    /// Adds a record.
    pub fn record(mut self, name: &str, data: Rdata) -> FakeResolver {
        self.records.push((norm(name), data));
        self
    }

    /// Adds an A record.
    pub fn a(self, name: &str, addr: &str) -> FakeResolver {
        self.record(name, Rdata::A(addr.to_string()))
    }

    /// Adds an AAAA record.
    pub fn aaaa(self, name: &str, addr: &str) -> FakeResolver {
        self.record(name, Rdata::Aaaa(addr.to_string()))
    }

    /// Adds an MX record (`exchange` "" for a null MX).
    pub fn mx(self, name: &str, preference: u16, exchange: &str) -> FakeResolver {
        self.record(
            name,
            Rdata::Mx(MxRecord {
                preference,
                exchange: norm(exchange),
            }),
        )
    }

    /// Adds a TXT record.
    pub fn txt(self, name: &str, text: &str) -> FakeResolver {
        self.record(name, Rdata::Txt(text.to_string()))
    }

    /// Adds a PTR record for an address (stored under its `in-addr.arpa`
    /// or `ip6.arpa` name).
    pub fn ptr(self, ip: &str, name: &str) -> FakeResolver {
        let arpa = reverse_name(ip).unwrap_or_else(|| ip.to_string());
        self.record(&arpa, Rdata::Ptr(norm(name)))
    }

    /// Makes every lookup of `name` and the names below it fail
    /// temporarily (a timeout, SERVFAIL).
    pub fn temporary(mut self, name: &str) -> FakeResolver {
        self.temporary.push(norm(name));
        self
    }

    /// The calls made so far: `lookup NAME TYPE`, `batch N`, `reverse IP`,
    /// `check-lists N`.
    pub fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }

    fn answer(&self, name: &str, rtype: RecordType) -> LookupResult {
        let name = norm(name);
        if name.is_empty() || name.contains("..") {
            return LookupResult::Invalid(format!("not a domain name: {name:?}"));
        }
        if self.temporary.iter().any(|t| below(&name, t)) {
            return LookupResult::Temporary(format!("{name}: timed out"));
        }
        let answers: Vec<Rdata> = self
            .records
            .iter()
            .filter(|(n, d)| *n == name && type_of(d) == rtype)
            .map(|(_, d)| d.clone())
            .collect();
        if !answers.is_empty() {
            LookupResult::Answers(answers)
        } else if self.records.iter().any(|(n, _)| below(n, &name)) {
            LookupResult::NoData
        } else {
            LookupResult::Nxdomain
        }
    }
}

fn type_of(data: &Rdata) -> RecordType {
    match data {
        Rdata::A(_) => RecordType::A,
        Rdata::Aaaa(_) => RecordType::Aaaa,
        Rdata::Mx(_) => RecordType::Mx,
        Rdata::Txt(_) => RecordType::Txt,
        Rdata::Ptr(_) => RecordType::Ptr,
    }
}

/// `2.0.0.127.in-addr.arpa` for 127.0.0.2 (nibbles under `ip6.arpa` for
/// IPv6); `None` if `ip` is not an address.
fn reverse_name(ip: &str) -> Option<String> {
    use std::net::IpAddr;
    let zone = match ip.parse::<IpAddr>().ok()? {
        IpAddr::V4(_) => "in-addr.arpa",
        IpAddr::V6(_) => "ip6.arpa",
    };
    Some(list_query_name(zone, ip))
}

impl Resolver for FakeResolver {
    fn lookup(&self, name: &str, rtype: RecordType) -> LookupResult {
        self.calls
            .borrow_mut()
            .push(format!("lookup {} {rtype:?}", norm(name)));
        self.answer(name, rtype)
    }

    fn lookup_batch(&self, queries: &[Query]) -> Vec<LookupResult> {
        self.calls
            .borrow_mut()
            .push(format!("batch {}", queries.len()));
        queries
            .iter()
            .map(|q| self.answer(&q.name, q.type_))
            .collect()
    }

    fn reverse(&self, ip: &str) -> LookupResult {
        self.calls.borrow_mut().push(format!("reverse {ip}"));
        match reverse_name(ip) {
            Some(arpa) => self.answer(&arpa, RecordType::Ptr),
            None => LookupResult::Invalid(format!("not an address: {ip:?}")),
        }
    }

    fn check_lists(&self, queries: &[ListQuery]) -> Vec<ListResult> {
        self.calls
            .borrow_mut()
            .push(format!("check-lists {}", queries.len()));
        queries
            .iter()
            .map(|q| {
                let name = list_query_name(&q.zone, &q.subject);
                match self.answer(&name, RecordType::A) {
                    LookupResult::Answers(codes) => {
                        let texts = self.answer(&name, RecordType::Txt);
                        ListResult::Listed(Listing {
                            codes: codes.iter().map(text_of).collect(),
                            texts: texts.records().iter().map(text_of).collect(),
                        })
                    }
                    LookupResult::Nxdomain | LookupResult::NoData => ListResult::NotListed,
                    LookupResult::Temporary(w) => ListResult::Temporary(w),
                    LookupResult::Invalid(w) => ListResult::Invalid(w),
                }
            })
            .collect()
    }
}

fn text_of(data: &Rdata) -> String {
    match data {
        Rdata::A(s) | Rdata::Aaaa(s) | Rdata::Txt(s) | Rdata::Ptr(s) => s.clone(),
        Rdata::Mx(mx) => mx.exchange.clone(),
    }
}

/// A stored value and its expiry in fake seconds.
type Entry = (Vec<u8>, Option<u64>);

/// An in-memory [`Store`] with a fake clock ([`MemoryStore::advance`])
/// for TTLs, and a switch that makes every operation fail
/// ([`MemoryStore::fail`]) to test how a plugin copes with a broken
/// backend.
#[derive(Debug, Default)]
pub struct MemoryStore {
    map: RefCell<HashMap<String, Entry>>,
    now: Cell<u64>,
    failing: RefCell<Option<KvError>>,
}

impl MemoryStore {
    /// An empty store at time 0.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Moves the clock forward; keys whose TTL ran out disappear.
    pub fn advance(&self, secs: u64) {
        self.now.set(self.now.get() + secs);
    }

    /// From now on every operation fails with `error` (`None`: works
    /// again).
    pub fn fail(&self, error: Option<KvError>) {
        *self.failing.borrow_mut() = error;
    }

    /// Number of live keys.
    pub fn len(&self) -> usize {
        self.purge();
        self.map.borrow().len()
    }

    /// True if no key is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn purge(&self) {
        let now = self.now.get();
        self.map
            .borrow_mut()
            .retain(|_, (_, exp)| exp.is_none_or(|e| e > now));
    }

    fn check(&self, key: &str) -> Result<(), KvError> {
        if let Some(e) = self.failing.borrow().clone() {
            return Err(e);
        }
        if key.is_empty() || key.len() > 512 {
            return Err(KvError::Invalid(format!("key of {} octets", key.len())));
        }
        self.purge();
        Ok(())
    }

    fn expiry(&self, ttl: Option<u32>) -> Option<u64> {
        ttl.map(|t| self.now.get() + u64::from(t))
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.check(key)?;
        Ok(self.map.borrow().get(key).map(|(v, _)| v.clone()))
    }

    fn set(&self, key: &str, value: &[u8], ttl: Option<u32>) -> Result<(), KvError> {
        self.check(key)?;
        let exp = self.expiry(ttl);
        self.map
            .borrow_mut()
            .insert(key.to_string(), (value.to_vec(), exp));
        Ok(())
    }

    fn add(&self, key: &str, value: &[u8], ttl: Option<u32>) -> Result<bool, KvError> {
        self.check(key)?;
        if self.map.borrow().contains_key(key) {
            return Ok(false);
        }
        self.set(key, value, ttl)?;
        Ok(true)
    }

    fn increment(&self, key: &str, delta: i64, ttl: Option<u32>) -> Result<i64, KvError> {
        self.check(key)?;
        let mut map = self.map.borrow_mut();
        let (old, exp) = match map.get(key) {
            Some((v, exp)) => {
                let n = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or(KvError::NotANumber)?;
                (n, *exp)
            }
            None => (0, self.expiry(ttl)),
        };
        let new = old.checked_add(delta).ok_or(KvError::NotANumber)?;
        map.insert(key.to_string(), (new.to_string().into_bytes(), exp));
        Ok(new)
    }

    fn delete(&self, key: &str) -> Result<bool, KvError> {
        self.check(key)?;
        Ok(self.map.borrow_mut().remove(key).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::{HostName, host_name, query};

    #[test]
    fn zones_answer_like_the_dns_peer() {
        let dns = FakeResolver::test_zones();
        assert!(dns.lookup("mx.example.test", RecordType::A).found());
        assert_eq!(
            dns.lookup("example.test", RecordType::A),
            LookupResult::NoData
        );
        assert_eq!(dns.lookup("pool.test", RecordType::A), LookupResult::NoData);
        assert_eq!(
            dns.lookup("nowhere.test", RecordType::Mx),
            LookupResult::Nxdomain
        );
        assert_eq!(dns.reverse("127.0.0.2").texts(), ["client.example.test"]);
        assert_eq!(dns.reverse("127.0.0.3"), LookupResult::Nxdomain);
        assert_eq!(host_name(&dns, "nomx.test"), HostName::Exists);
        assert_eq!(host_name(&dns, "nullmx.test"), HostName::Exists);
        let batch = dns.lookup_batch(&[query("dest.test", RecordType::Mx)]);
        assert_eq!(batch[0].mx().len(), 2);
        assert_eq!(dns.calls().last().map(String::as_str), Some("batch 1"));
    }

    #[test]
    fn lists() {
        let dns = FakeResolver::test_zones().temporary("slow.test");
        let q = |zone: &str, subject: &str| ListQuery {
            zone: zone.into(),
            subject: subject.into(),
        };
        let r = dns.check_lists(&[
            q("dnsbl.test", "127.0.0.2"),
            q("dnsbl.test", "127.0.0.3"),
            q("rhsbl.test", "spammer.test"),
            q("slow.test", "127.0.0.2"),
        ]);
        assert_eq!(
            r[0],
            ListResult::Listed(Listing {
                codes: vec!["127.0.0.2".into()],
                texts: vec!["127.0.0.2 is listed (RFC 5782 test point)".into()],
            })
        );
        assert_eq!(r[1], ListResult::NotListed);
        assert!(matches!(r[2], ListResult::Listed(_)));
        assert!(matches!(r[3], ListResult::Temporary(_)));
        assert_eq!(dns.calls(), ["check-lists 4"]);
    }

    #[test]
    fn memory_store() {
        let kv = MemoryStore::new();
        assert_eq!(kv.add("k", b"1", Some(10)), Ok(true));
        assert_eq!(kv.add("k", b"2", None), Ok(false));
        assert_eq!(kv.increment("k", 2, None), Ok(3));
        assert_eq!(kv.get_i64("k"), Ok(Some(3)));
        kv.advance(10);
        assert_eq!(kv.get("k"), Ok(None));
        assert_eq!(kv.increment("n", 1, Some(5)), Ok(1));
        kv.set("s", b"x", None).expect("set");
        assert_eq!(kv.increment("s", 1, None), Err(KvError::NotANumber));
        assert_eq!(kv.delete("s"), Ok(true));
        assert_eq!(kv.delete("s"), Ok(false));
        kv.fail(Some(KvError::Unavailable("down".into())));
        assert!(matches!(kv.get("n"), Err(KvError::Unavailable(_))));
        kv.fail(None);
        assert_eq!(kv.get_string("n"), Ok(Some("1".into())));
    }
}
