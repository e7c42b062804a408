use super::*;

#[test]
fn parses_the_test_zones_records() {
    let r = parse("v=spf1 ip4:127.0.0.0/24 -all").expect("parses");
    assert_eq!(
        r.directives,
        vec![
            (
                Qualifier::Pass,
                Mechanism::Ip4(Ipv4Addr::new(127, 0, 0, 0), 24)
            ),
            (Qualifier::Fail, Mechanism::All)
        ]
    );
    let r = parse("v=spf1 mx -all").expect("parses");
    assert_eq!(
        r.directives[0],
        (Qualifier::Pass, Mechanism::Mx(None, 32, 128))
    );
    assert_eq!(
        parse("v=spf1 ~all").expect("parses").directives[0].0,
        Qualifier::SoftFail
    );
}

#[test]
fn parses_every_mechanism_and_modifier() {
    let r = parse(
        "V=SPF1 a a:x.test/24 mx:y.test//64 ?ptr ptr:z.test ip6:2001:db8::/32 exists:%{i}.e.test \
         include:i.test redirect=r.test exp=explain.%{d} foo=bar",
    )
    .expect("parses");
    assert_eq!(
        r.directives,
        vec![
            (Qualifier::Pass, Mechanism::A(None, 32, 128)),
            (
                Qualifier::Pass,
                Mechanism::A(Some("x.test".into()), 24, 128)
            ),
            (
                Qualifier::Pass,
                Mechanism::Mx(Some("y.test".into()), 32, 64)
            ),
            (Qualifier::Neutral, Mechanism::Ptr(None)),
            (Qualifier::Pass, Mechanism::Ptr(Some("z.test".into()))),
            (
                Qualifier::Pass,
                Mechanism::Ip6("2001:db8::".parse().expect("ip"), 32)
            ),
            (Qualifier::Pass, Mechanism::Exists("%{i}.e.test".into())),
            (Qualifier::Pass, Mechanism::Include("i.test".into())),
        ]
    );
    assert_eq!(r.redirect.as_deref(), Some("r.test"));
    assert_eq!(r.exp.as_deref(), Some("explain.%{d}"));
}

#[test]
fn bad_records_are_permerrors() {
    for bad in [
        "v=spf1 ip4:300.0.0.1",
        "v=spf1 ip4:1.2.3.4/33",
        "v=spf1 ip4:1.2.3.4/024",
        "v=spf1 include",
        "v=spf1 foo:bar",
        "v=spf1 all/24",
        "v=spf1 redirect=a.test redirect=b.test",
        "v=spf1 exists:%{z}.test",
        "v=spf1 a:%{d",
        "v=spf1 a:x..test",
    ] {
        assert!(parse(bad).is_err(), "{bad}");
    }
    assert!(!is_spf("v=spf10 -all"));
    assert!(is_spf("v=spf1"));
}

#[test]
fn macros_expand_as_rfc7208_section_7_4_shows() {
    let e = Expander {
        sender: "strong-bad@email.example.com".into(),
        domain: "email.example.com".into(),
        ip: Some("192.0.2.3".parse().expect("ip")),
        helo: "mx.example.org".into(),
        receiver: "mx.test".into(),
    };
    for (spec, want) in [
        ("%{s}", "strong-bad@email.example.com"),
        ("%{o}", "email.example.com"),
        ("%{d}", "email.example.com"),
        ("%{d4}", "email.example.com"),
        ("%{d3}", "email.example.com"),
        ("%{d2}", "example.com"),
        ("%{d1}", "com"),
        ("%{dr}", "com.example.email"),
        ("%{d2r}", "example.email"),
        ("%{l}", "strong-bad"),
        ("%{l-}", "strong.bad"),
        ("%{lr}", "strong-bad"),
        ("%{lr-}", "bad.strong"),
        ("%{l1r-}", "strong"),
        (
            "%{ir}.%{v}._spf.%{d2}",
            "3.2.0.192.in-addr._spf.example.com",
        ),
        ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
        (
            "%{d2}.trusted-domains.example.net",
            "example.com.trusted-domains.example.net",
        ),
        ("%{h}%%%_%-", "mx.example.org% %20"),
        ("%{S}", "strong-bad%40email.example.com"),
    ] {
        assert_eq!(e.expand(spec, false).expect(spec), want, "{spec}");
    }
    let e6 = Expander {
        ip: Some("2001:db8::cb01".parse().expect("ip")),
        ..e
    };
    assert_eq!(
        e6.expand("%{ir}.%{v}._spf.%{d2}", false).expect("expands"),
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"
    );
    assert!(e6.expand("%{c}", false).is_err());
    assert_eq!(
        e6.expand("%{c} %{r}", true).expect("exp"),
        "2001:db8::cb01 mx.test"
    );
}

#[test]
fn long_expansions_lose_leftmost_labels() {
    let long = format!("{}.example.test.", "a".repeat(60) + &".b".repeat(100));
    let d = fit_domain(&long);
    assert!(d.len() <= 253 && d.ends_with("example.test"), "{d}");
}
