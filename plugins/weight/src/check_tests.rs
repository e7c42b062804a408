use super::*;
use std::collections::HashMap;

/// The test zones (`../shared/peers/conf/dns`), as policyd-weight sees them.
pub(crate) struct Zones {
    mx: HashMap<&'static str, Vec<&'static str>>,
    a: HashMap<&'static str, Vec<&'static str>>,
    ptr: HashMap<&'static str, &'static str>,
    listed: Vec<(&'static str, &'static str)>,
}

pub(crate) fn zones() -> Zones {
    let mx = HashMap::from([
        ("example.test", vec!["mx.example.test"]),
        ("dest.test", vec!["mx1.dest.test", "mx2.dest.test"]),
        ("spf-fail.test", vec!["mx.example.test"]),
        ("spf-soft.test", vec!["mx.example.test"]),
        ("spammer.test", vec!["spammer.test"]),
        ("good.test", vec!["mail.good.test"]),
        ("nullmx.test", vec![]), // the null MX "." is dropped
    ]);
    let a = HashMap::from([
        ("ns.test", vec!["127.0.0.1"]),
        ("mx.test", vec!["127.0.0.1"]),
        ("mx.example.test", vec!["127.0.0.1"]),
        ("client.example.test", vec!["127.0.0.2"]),
        ("mx1.dest.test", vec!["127.0.0.10"]),
        ("mx2.dest.test", vec!["127.0.0.11"]),
        ("nomx.test", vec!["127.0.0.12"]),
        ("spammer.test", vec!["127.0.0.99"]),
        ("dyn-127-0-0-99.pool.test", vec!["127.0.0.99"]),
        ("mail.good.test", vec!["198.18.0.25"]),
        ("localhost", vec!["127.0.0.1"]),
    ]);
    let ptr = HashMap::from([
        ("127.0.0.1", "localhost"),
        ("127.0.0.2", "client.example.test"),
        ("127.0.0.10", "mx1.dest.test"),
        ("127.0.0.11", "mx2.dest.test"),
        ("127.0.0.12", "nomx.test"),
        ("127.0.0.99", "dyn-127-0-0-99.pool.test"),
        ("198.18.0.25", "mail.good.test"),
    ]);
    let listed = vec![
        ("dnsbl.test", "127.0.0.2"),
        ("dnsbl.test", "127.0.0.99"),
        ("rhsbl.test", "test"),
        ("rhsbl.test", "spammer.test"),
    ];
    Zones { mx, a, ptr, listed }
}

impl Dns for Zones {
    fn lists(&self, queries: &[(String, String)]) -> Vec<Listed> {
        queries
            .iter()
            .map(|(z, s)| {
                if self.listed.contains(&(z.as_str(), s.as_str())) {
                    Listed::Yes
                } else {
                    Listed::No
                }
            })
            .collect()
    }
    fn mx(&self, name: &str) -> Result<Vec<String>, DnsError> {
        self.mx
            .get(name)
            .map(|v| v.iter().map(|s| s.to_string()).collect())
            .ok_or(DnsError::NotFound)
    }
    fn addrs(&self, name: &str) -> (Vec<IpAddr>, u32) {
        let v = self
            .a
            .get(name)
            .map(|v| v.iter().filter_map(|a| a.parse().ok()).collect())
            .unwrap_or_default();
        (v, 0)
    }
    fn ptr(&self, ip: IpAddr) -> Vec<String> {
        self.ptr
            .get(ip.to_string().as_str())
            .map(|p| vec![p.to_string()])
            .unwrap_or_default()
    }
}

pub(crate) fn test_config() -> Config {
    Config::from_json(
        r#"{"dnsbl": [{"zone": "dnsbl.test", "hit": 4.35, "miss": -1.5, "name": "DNSBL_TEST"}],
            "rhsbl": [{"zone": "rhsbl.test", "hit": 4, "miss": 0, "name": "RHSBL_TEST"}]}"#,
    )
    .expect("config")
}

fn line(r: &Report) -> String {
    let scores: String = r.scores.iter().map(|(t, p)| format!(" {t}={p}")).collect();
    format!("{scores}; rate: {}", r.rate)
}

/// Client address, client name, HELO, sender, what policyd-weight logged.
pub(crate) type Scenario = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

/// The request of a scenario, to alice@example.test.
pub(crate) fn request(s: &Scenario) -> Request<'static> {
    Request {
        ip: s.0.parse().expect("ip"),
        client_name: s.1,
        helo: s.2,
        sender: s.3,
        recipient: "alice@example.test",
    }
}

/// Each scenario with what policyd-weight 0.1.15.2 logged for it (peers
/// kit config, the same zones), `(check from: ...)` cut out.
pub(crate) const SCENARIOS: &[Scenario] = &[
    (
        "198.18.0.25",
        "mail.good.test",
        "mail.good.test",
        "bob@good.test",
        " NOT_IN_DNSBL_TEST=-1.5 CL_IP_EQ_FROM_MX=-3.1; rate: -4.6",
    ),
    (
        "127.0.0.2",
        "client.example.test",
        "client.example.test",
        "a@example.test",
        " IN_DNSBL_TEST=4.35 BAD_MX=9.135 BOGUS_MX=6.45 CL_IP_EQ_HELO_IP=-2 FROM/MX_MATCHES_HELO(DOMAIN)=-2 CL_SEEMS_DIALUP=3.75 HELO_SEEMS_DIALUP=4.5; rate: 24.185",
    ),
    (
        "127.0.0.99",
        "unknown",
        "dyn-127-0-0-99.pool.test",
        "x@spammer.test",
        " IN_DNSBL_TEST=4.35 CL_IP_EQ_FROM_MX=-3.1 BAD_MX=9.135 BOGUS_MX=6.45; rate: 16.835",
    ),
    (
        "127.0.0.99",
        "unknown",
        "spammer.test",
        "x@spammer.test",
        " IN_DNSBL_TEST=4.35 CL_IP_EQ_FROM_MX=-3.1 BAD_MX=9.135 BOGUS_MX=6.45; rate: 16.835",
    ),
    (
        "198.18.0.25",
        "mail.good.test",
        "[198.18.0.25]",
        "bob@good.test",
        " NOT_IN_DNSBL_TEST=-1.5 CL_IP_EQ_FROM_MX=-3.1 HELO_NUMERIC=2.5; rate: -2.1",
    ),
    (
        "198.18.0.25",
        "mail.good.test",
        "198.18.0.25",
        "bob@good.test",
        " NOT_IN_DNSBL_TEST=-1.5 CL_IP_EQ_FROM_MX=-3.1 HELO_NUMERIC=2.5; rate: -2.1",
    ),
    (
        "198.18.0.25",
        "mail.good.test",
        "mail.good.test",
        "x@nomx.test",
        " NOT_IN_DNSBL_TEST=-1.5 BOGUS_MX=2.1 CL_IP_EQ_HELO_IP=-2 FROM/MX_MATCHES_NOT_HELO(DOMAIN)=5.41; rate: 4.01",
    ),
    (
        "198.18.0.25",
        "mail.good.test",
        "mail.good.test",
        "x@nullmx.test",
        " NOT_IN_DNSBL_TEST=-1.5 BOGUS_MX=2.1 CL_IP_EQ_HELO_IP=-2 FROM/MX_MATCHES_NOT_HELO(DOMAIN)=5.41; rate: 4.01",
    ),
    (
        "198.18.0.25",
        "mail.good.test",
        "mail.good.test",
        "x@doesnotexist.test",
        " NOT_IN_DNSBL_TEST=-1.5 BOGUS_MX=2.1 CL_IP_EQ_HELO_IP=-2 FROM/MX_MATCHES_NOT_HELO(DOMAIN)=5.41; rate: 4.01",
    ),
    (
        "198.18.0.25",
        "mail.good.test",
        "dsl-1-2-3-4.dyn.example.test",
        "bob@good.test",
        " NOT_IN_DNSBL_TEST=-1.5 CL_IP_EQ_FROM_MX=-3.1; rate: -4.6",
    ),
    (
        "127.0.0.10",
        "mx1.dest.test",
        "mx1.dest.test",
        "a@dest.test",
        " NOT_IN_DNSBL_TEST=-1.5 CL_IP_EQ_FROM_MX=-3.1 BOGUS_MX=2.1; rate: -2.5",
    ),
    (
        "127.0.0.2",
        "client.example.test",
        "client.example.test",
        "nobody@example.test",
        " IN_DNSBL_TEST=4.35 BAD_MX=9.135 BOGUS_MX=6.45 CL_IP_EQ_HELO_IP=-2 FROM/MX_MATCHES_HELO(DOMAIN)=-2 CL_SEEMS_DIALUP=3.75 HELO_SEEMS_DIALUP=4.5 FROM_NBDY_ANON=9.27; rate: 33.455",
    ),
    (
        "198.18.0.25",
        "mail.good.test",
        "mail.good.test",
        "xkcdqwrtz@good.test",
        " NOT_IN_DNSBL_TEST=-1.5 CL_IP_EQ_FROM_MX=-3.1 RANDOM_SENDER=0.25; rate: -4.35",
    ),
    (
        "127.0.0.1",
        "localhost",
        "localhost",
        "a@example.test",
        " NOT_IN_DNSBL_TEST=-1.5 CL_IP_EQ_FROM_MX=-3.1 BOGUS_MX=2.1; rate: -2.5",
    ),
    (
        "198.18.0.25",
        "mail.good.test",
        "mail.good.test",
        "a@sub.mail.good.test",
        " NOT_IN_DNSBL_TEST=-1.5 BOGUS_MX=2.1 CL_IP_EQ_FROM_IP=-2 FROM/MX_MATCHES_HELO(DOMAIN)=-2; rate: -3.4",
    ),
    (
        "127.0.0.2",
        "client.example.test",
        "foo.example.org",
        "a@example.test",
        " IN_DNSBL_TEST=4.35 BAD_MX=9.135 BOGUS_MX=6.45 HELO_IP_IN_CL_SUBNET=-1.2 FROM/MX_MATCHES_HELO(DOMAIN)=-2 CL_SEEMS_DIALUP=3.75; rate: 20.485",
    ),
    (
        "127.0.0.11",
        "mx2.dest.test",
        "mx2.dest.test",
        "a@good.test",
        " NOT_IN_DNSBL_TEST=-1.5 CL_IP_EQ_HELO_IP=-2 FROM/MX_MATCHES_NOT_HELO(DOMAIN)=1; rate: -2.5",
    ),
    (
        "127.0.0.2",
        "unknown",
        "client.example.test",
        "bob+tag@good.test",
        " IN_DNSBL_TEST=4.35 CL_IP_EQ_HELO_IP=-2 FROM/MX_MATCHES_NOT_HELO(DOMAIN)=2.087 CL_SEEMS_DIALUP=3.75 HELO_SEEMS_DIALUP=4.5 CLIENT_NOT_MX/A_FROM_DOMAIN=9.6 CLIENT/24_NOT_MX/A_FROM_DOMAIN=9.6; rate: 31.887",
    ),
    (
        "198.18.0.25",
        "mail.good.test",
        "nonexistent.invalid",
        "bob@good.test",
        " NOT_IN_DNSBL_TEST=-1.5 CL_IP_EQ_FROM_MX=-3.1; rate: -4.6",
    ),
    (
        "127.0.0.2",
        "client.example.test",
        "client.example.test",
        "a@spammer.test",
        " IN_DNSBL_TEST=4.35 BAD_MX=9.135 BOGUS_MX=6.45 CL_IP_EQ_HELO_IP=-2 FROM/MX_MATCHES_NOT_HELO(DOMAIN)=43.69 CL_SEEMS_DIALUP=3.75 HELO_SEEMS_DIALUP=4.5 CLIENT_NOT_MX/A_FROM_DOMAIN=9.6; rate: 79.475",
    ),
];

#[test]
fn every_scenario_scores_as_policyd_weight_logged_it() {
    let cfg = test_config();
    let z = zones();
    let mut wrong = Vec::new();
    for s in SCENARIOS {
        let (ip, _, helo, sender, want) = s;
        let got = line(&check(&cfg, &z, &request(s)));
        if got != *want {
            wrong.push(format!("{ip} {helo} {sender}\n  want {want}\n  got  {got}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn null_sender_and_postmaster_are_not_scored() {
    let cfg = test_config();
    let z = zones();
    let mut req = Request {
        ip: "127.0.0.2".parse().expect("ip"),
        client_name: "client.example.test",
        helo: "client.example.test",
        sender: "",
        recipient: "alice@example.test",
    };
    assert_eq!(
        check(&cfg, &z, &req).early,
        Some(Early::Skip("NULL (<>) Sender".into()))
    );
    req.sender = "a@example.test";
    req.recipient = "postmaster@example.test";
    assert_eq!(
        check(&cfg, &z, &req).early,
        Some(Early::Skip("mail for postmaster@example.test".into()))
    );
    assert!(check(&cfg, &z, &req).scores.is_empty());
}

#[test]
fn too_many_dnsbl_hits_reject_at_once() {
    let cfg = Config::from_json(
        r#"{"max_dnsbl_hits": 1, "dnsbl": [
            {"zone": "dnsbl.test", "hit": 4.35, "miss": -1.5, "name": "A"},
            {"zone": "dnsbl.test", "hit": 1, "miss": 0, "name": "B"}]}"#,
    )
    .expect("config");
    let req = Request {
        ip: "127.0.0.99".parse().expect("ip"),
        client_name: "unknown",
        helo: "spammer.test",
        sender: "x@spammer.test",
        recipient: "alice@example.test",
    };
    assert_eq!(
        check(&cfg, &zones(), &req).early,
        Some(Early::TooManyDnsbls)
    );
}

#[test]
fn myrnd_keeps_three_decimals() {
    assert_eq!(myrnd(-4.6 + 4.3), -0.3);
    assert_eq!(myrnd(2.1 * 4.35), 9.135);
    assert_eq!(myrnd(1.0 + 4.35 / 4.0), 2.087); // as Perl's sprintf rounds it
    assert_eq!(myrnd(-12.34567), -12.346);
    assert_eq!(myrnd(0.123456), 0.1235);
    assert_eq!(myrnd(7.0), 7.0);
}
