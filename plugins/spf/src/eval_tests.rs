use super::*;
use std::collections::HashMap;

/// A zone in memory: (name, type) -> records; names in `temp` fail
/// temporarily. Names without any record are NXDOMAIN.
#[derive(Default)]
pub(crate) struct FakeDns {
    pub records: HashMap<(String, &'static str), Vec<String>>,
    pub temp: Vec<String>,
}

impl FakeDns {
    pub fn with(mut self, name: &str, kind: &'static str, value: &str) -> Self {
        self.records
            .entry((name.into(), kind))
            .or_default()
            .push(value.into());
        self
    }

    /// The Postern test zones (`../shared/peers/conf/dns/test.zone`).
    pub fn test_zones() -> Self {
        FakeDns::default()
            .with("example.test", "MX", "mx.example.test")
            .with("example.test", "TXT", "v=spf1 ip4:127.0.0.0/24 -all")
            .with("mx.example.test", "A", "127.0.0.1")
            .with("client.example.test", "A", "127.0.0.2")
            .with("dest.test", "MX", "mx1.dest.test")
            .with("dest.test", "MX", "mx2.dest.test")
            .with("mx1.dest.test", "A", "127.0.0.10")
            .with("mx2.dest.test", "A", "127.0.0.11")
            .with("dest.test", "TXT", "v=spf1 mx -all")
            .with("spf-fail.test", "TXT", "v=spf1 -all")
            .with("spf-fail.test", "MX", "mx.example.test")
            .with("spf-soft.test", "TXT", "v=spf1 ~all")
            .with("spf-soft.test", "MX", "mx.example.test")
            .with("good.test", "MX", "mail.good.test")
            .with("good.test", "TXT", "v=spf1 mx -all")
            .with("mail.good.test", "A", "198.18.0.25")
            .with("25.0.18.198.in-addr.arpa", "PTR", "mail.good.test")
    }

    fn get(&self, name: &str, kind: &'static str) -> Result<Vec<String>, DnsError> {
        if self.temp.iter().any(|t| t == name) {
            return Err(DnsError::Temporary("SERVFAIL".into()));
        }
        match self.records.get(&(name.to_string(), kind)) {
            Some(v) => Ok(v.clone()),
            None => Err(DnsError::NotFound),
        }
    }
}

impl Resolver for FakeDns {
    fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        self.get(name, "TXT")
    }
    fn a(&self, name: &str) -> Result<Vec<Ipv4Addr>, DnsError> {
        Ok(self
            .get(name, "A")?
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect())
    }
    fn aaaa(&self, name: &str) -> Result<Vec<Ipv6Addr>, DnsError> {
        Ok(self
            .get(name, "AAAA")?
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect())
    }
    fn mx(&self, name: &str) -> Result<Vec<String>, DnsError> {
        self.get(name, "MX")
    }
    fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
        let name = match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
            }
            IpAddr::V6(_) => return Err(DnsError::NotFound),
        };
        self.get(&name, "PTR")
    }
}

fn run(dns: &FakeDns, ip: &str, sender: &str) -> SpfResult {
    let domain = sender.rsplit_once('@').map_or(sender, |(_, d)| d);
    check_host(dns, ip.parse().expect("ip"), domain, sender, "helo.test").result
}

#[test]
fn the_test_zones_give_the_expected_results() {
    let z = FakeDns::test_zones();
    assert_eq!(run(&z, "127.0.0.1", "a@example.test"), SpfResult::Pass);
    assert_eq!(run(&z, "127.0.0.99", "a@example.test"), SpfResult::Pass);
    assert_eq!(run(&z, "198.18.0.25", "a@example.test"), SpfResult::Fail);
    assert_eq!(run(&z, "127.0.0.10", "a@dest.test"), SpfResult::Pass);
    assert_eq!(run(&z, "127.0.0.11", "a@dest.test"), SpfResult::Pass);
    assert_eq!(run(&z, "127.0.0.1", "a@dest.test"), SpfResult::Fail);
    assert_eq!(run(&z, "198.18.0.25", "a@good.test"), SpfResult::Pass);
    assert_eq!(run(&z, "127.0.0.1", "a@good.test"), SpfResult::Fail);
    assert_eq!(run(&z, "198.18.0.25", "a@spf-fail.test"), SpfResult::Fail);
    assert_eq!(
        run(&z, "198.18.0.25", "a@spf-soft.test"),
        SpfResult::SoftFail
    );
    assert_eq!(run(&z, "198.18.0.25", "a@nomx.test"), SpfResult::None);
    assert_eq!(run(&z, "198.18.0.25", "a@localhost"), SpfResult::None);
    assert_eq!(
        run(&z, "::ffff:127.0.0.1", "a@example.test"),
        SpfResult::Pass
    );
    assert_eq!(run(&z, "2001:db8::1", "a@example.test"), SpfResult::Fail);
}

#[test]
fn include_redirect_a_ptr_exists_ip6() {
    let z = FakeDns::test_zones()
        .with(
            "inc.test",
            "TXT",
            "v=spf1 include:good.test include:example.test ?all",
        )
        .with("red.test", "TXT", "v=spf1 redirect=dest.test")
        .with("a.test", "TXT", "v=spf1 a:mail.good.test/24 -all")
        .with("ptr.test", "TXT", "v=spf1 ptr:good.test -all")
        .with("ex.test", "TXT", "v=spf1 exists:%{ir}.%{l}._spf.%{d} -all")
        .with("25.0.18.198.bob._spf.ex.test", "A", "127.0.0.2")
        .with("six.test", "TXT", "v=spf1 ip6:2001:db8::/32 a -all")
        .with("six.test", "AAAA", "2001:db9::5");
    assert_eq!(run(&z, "198.18.0.25", "x@inc.test"), SpfResult::Pass);
    assert_eq!(run(&z, "127.0.0.5", "x@inc.test"), SpfResult::Pass);
    assert_eq!(run(&z, "192.0.2.1", "x@inc.test"), SpfResult::Neutral);
    assert_eq!(run(&z, "127.0.0.10", "x@red.test"), SpfResult::Pass);
    assert_eq!(run(&z, "192.0.2.1", "x@red.test"), SpfResult::Fail);
    assert_eq!(run(&z, "198.18.0.200", "x@a.test"), SpfResult::Pass);
    assert_eq!(run(&z, "198.18.1.1", "x@a.test"), SpfResult::Fail);
    assert_eq!(run(&z, "198.18.0.25", "x@ptr.test"), SpfResult::Pass);
    assert_eq!(run(&z, "198.18.0.26", "x@ptr.test"), SpfResult::Fail);
    assert_eq!(run(&z, "198.18.0.25", "bob@ex.test"), SpfResult::Pass);
    assert_eq!(run(&z, "198.18.0.25", "eve@ex.test"), SpfResult::Fail);
    assert_eq!(run(&z, "2001:db8:5::1", "x@six.test"), SpfResult::Pass);
    assert_eq!(run(&z, "2001:db9::5", "x@six.test"), SpfResult::Pass);
    assert_eq!(run(&z, "2001:dba::5", "x@six.test"), SpfResult::Fail);
}

#[test]
fn errors_and_limits() {
    let mut z = FakeDns::test_zones()
        .with("two.test", "TXT", "v=spf1 -all")
        .with("two.test", "TXT", "v=spf1 +all")
        .with("other.test", "TXT", "some verification text")
        .with("bad.test", "TXT", "v=spf1 ip4:1.2.3.4/40 -all")
        .with("incnone.test", "TXT", "v=spf1 include:nomx.test -all")
        .with("rednone.test", "TXT", "v=spf1 redirect=nomx.test")
        .with("loop.test", "TXT", "v=spf1 include:loop.test -all")
        .with(
            "voids.test",
            "TXT",
            "v=spf1 a:n1.test a:n2.test a:n3.test -all",
        )
        .with("twovoids.test", "TXT", "v=spf1 a:n1.test a:n2.test ~all")
        .with("tmp.test", "TXT", "v=spf1 mx -all")
        .with("tmp.test", "MX", "mx.tmp.test");
    let many: String = (0..11).map(|i| format!(" a:h{i}.test")).collect();
    z = z.with("many.test", "TXT", &format!("v=spf1{many} -all"));
    for i in 0..11 {
        z = z.with(&format!("h{i}.test"), "A", "192.0.2.200");
    }
    z.temp = vec!["down.test".into(), "mx.tmp.test".into()];
    assert_eq!(run(&z, "192.0.2.1", "x@two.test"), SpfResult::PermError);
    assert_eq!(run(&z, "192.0.2.1", "x@other.test"), SpfResult::None);
    assert_eq!(run(&z, "192.0.2.1", "x@bad.test"), SpfResult::PermError);
    assert_eq!(run(&z, "192.0.2.1", "x@incnone.test"), SpfResult::PermError);
    assert_eq!(run(&z, "192.0.2.1", "x@rednone.test"), SpfResult::PermError);
    assert_eq!(run(&z, "192.0.2.1", "x@loop.test"), SpfResult::PermError);
    assert_eq!(run(&z, "192.0.2.1", "x@voids.test"), SpfResult::PermError);
    assert_eq!(run(&z, "192.0.2.1", "x@twovoids.test"), SpfResult::SoftFail);
    assert_eq!(run(&z, "192.0.2.1", "x@many.test"), SpfResult::PermError);
    assert_eq!(run(&z, "192.0.2.1", "x@down.test"), SpfResult::TempError);
    assert_eq!(run(&z, "192.0.2.1", "x@tmp.test"), SpfResult::TempError);
    let v = check_host(
        &z,
        "192.0.2.1".parse().expect("ip"),
        "many.test",
        "x@many.test",
        "h",
    );
    assert_eq!(v.why, "more than 10 DNS lookups");
}
