use super::*;
use crate::eval::tests::FakeDns;

fn run(json: &str, ip: &str, helo: &str, sender: &str) -> Decision {
    let cfg = Config::from_json(json).expect("config");
    let input = Input {
        ip: ip.parse().expect("ip"),
        helo,
        sender,
    };
    decide(&cfg, &FakeDns::test_zones(), &input)
}

#[test]
fn fail_is_refused_with_5_7_23_by_default() {
    let d = run("{}", "198.18.0.25", "mail.good.test", "x@spf-fail.test");
    let (tempfail, r) = d.refuse.expect("refused");
    assert!(!tempfail);
    assert_eq!((r.code, r.enhanced), (550, "5.7.23"));
    assert_eq!(
        r.text,
        "Message rejected due to: SPF fail - not authorized. Please see https://www.open-spf.org/Why?s=mfrom;id=x@spf-fail.test;ip=198.18.0.25;r=localhost"
    );
    assert!(d.headers.is_empty());
}

#[test]
fn pass_adds_received_spf() {
    let d = run(
        r#"{"authserv_id": "mx.example.test"}"#,
        "198.18.0.25",
        "mail.good.test",
        "Bob@Good.test",
    );
    assert_eq!(d.refuse, None);
    assert_eq!(d.score, None);
    assert_eq!(
        d.headers,
        vec![(
            "Received-SPF",
            "pass (mx.example.test: domain of Bob@good.test designates 198.18.0.25 as permitted sender) \
             client-ip=198.18.0.25; envelope-from=\"Bob@Good.test\"; helo=mail.good.test; \
             receiver=mx.example.test; identity=mailfrom"
                .to_string()
        )]
    );
}

#[test]
fn softfail_none_and_neutral_continue_and_can_score() {
    let d = run(
        r#"{"header": "authentication-results"}"#,
        "198.18.0.25",
        "h.test",
        "x@spf-soft.test",
    );
    assert_eq!(d.refuse, None);
    assert_eq!(
        d.headers,
        vec![(
            "Authentication-Results",
            "localhost; spf=softfail smtp.mailfrom=x@spf-soft.test".into()
        )]
    );
    let d = run(
        r#"{"softfail": 2.5, "none": 0.5, "header": "both"}"#,
        "198.18.0.25",
        "h.test",
        "x@spf-soft.test",
    );
    assert_eq!(d.score, Some(("SPF_SOFTFAIL".into(), 2.5)));
    assert_eq!(d.headers.len(), 2);
    let d = run(
        r#"{"softfail": 2.5, "none": 0.5, "header": "none"}"#,
        "198.18.0.25",
        "h.test",
        "x@nomx.test",
    );
    assert_eq!(d.score, Some(("SPF_NONE".into(), 0.5)));
    assert!(d.headers.is_empty());
}

#[test]
fn temperror_tempfails_with_4_7_24() {
    let cfg = Config::default();
    let mut dns = FakeDns::test_zones();
    dns.temp.push("good.test".into());
    let input = Input {
        ip: "198.18.0.25".parse().expect("ip"),
        helo: "h.test",
        sender: "a@good.test",
    };
    let d = decide(&cfg, &dns, &input);
    let (tempfail, r) = d.refuse.expect("deferred");
    assert!(tempfail);
    assert_eq!((r.code, r.enhanced), (451, "4.7.24"));
    assert_eq!(
        r.text,
        "SPF temperror for a@good.test: TXT good.test: SERVFAIL; try again later"
    );
}

#[test]
fn permerror_can_be_rejected_with_5_7_24() {
    let cfg = Config::from_json(r#"{"permerror": "reject"}"#).expect("config");
    let dns = FakeDns::test_zones().with("bad.test", "TXT", "v=spf1 ip4:1.2.3.4/99 -all");
    let input = Input {
        ip: "192.0.2.1".parse().expect("ip"),
        helo: "h.test",
        sender: "a@bad.test",
    };
    let (_, r) = decide(&cfg, &dns, &input).refuse.expect("rejected");
    assert_eq!((r.code, r.enhanced), (550, "5.7.24"));
    assert!(
        r.text
            .starts_with("SPF permerror for a@bad.test: SPF record of bad.test: ip4:1.2.3.4/99"),
        "{}",
        r.text
    );
}

#[test]
fn the_null_sender_is_checked_by_its_helo() {
    // mail.good.test has no SPF record of its own: none, and a header.
    let d = run("{}", "198.18.0.25", "mail.good.test", "");
    assert_eq!((d.identity, d.verdict.result), ("helo", SpfResult::None));
    assert!(d.headers[0].1.contains("identity=helo"), "{:?}", d.headers);
    // A HELO naming a -all domain fails.
    let d = run("{}", "198.18.0.25", "spf-fail.test", "");
    let (_, r) = d.refuse.expect("rejected");
    assert!(
        r.text.contains("s=helo;id=postmaster@spf-fail.test"),
        "{}",
        r.text
    );
    // An address literal has no SPF.
    assert_eq!(
        run("{}", "198.18.0.25", "[198.18.0.25]", "").verdict.result,
        SpfResult::None
    );
}

#[test]
fn check_helo_rejects_a_failing_helo_of_a_passing_sender() {
    let d = run(
        r#"{"check_helo": true}"#,
        "198.18.0.25",
        "spf-fail.test",
        "a@good.test",
    );
    assert_eq!(d.identity, "helo");
    assert!(d.refuse.is_some());
    assert!(
        run("{}", "198.18.0.25", "spf-fail.test", "a@good.test")
            .refuse
            .is_none()
    );
}

#[test]
fn bad_configs_are_refused() {
    for (json, needle) in [
        (r#"{"fail": "bounce"}"#, "invalid value: string \"bounce\""),
        (r#"{"header": "x-spf"}"#, "unknown variant `x-spf`"),
        (r#"{"authserv_id": "a b"}"#, "authserv_id"),
        (r#"{"softfial": 1}"#, "unknown field"),
    ] {
        let e = Config::from_json(json).expect_err(json);
        assert!(e.contains(needle), "{json}: {e}");
    }
    assert!(Config::from_json("").is_ok());
}
