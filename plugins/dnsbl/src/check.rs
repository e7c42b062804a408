//! Asking the lists and judging the answers, as plain functions of the
//! config, what is known at the stage, and a resolver (tested natively
//! with the SDK's fake resolver over the test zones).

use crate::config::{Action, Check, Config, List};
use postern_sdk::name::{address_domain, is_address_literal, valid_hostname};
use postern_sdk::resolve::{ListQuery, ListResult, Resolver};
use postern_sdk::restrict::{Client, TempfailAction};
use postern_sdk::{Outcome, log};

/// Postfix keeps at most this much of a list's TXT records.
const TXT_LIMIT: usize = 500;

/// What the lists may be asked about at the stage the entry runs.
#[derive(Debug, Clone, Default)]
pub struct Subjects<'a> {
    /// The client (IP address, reverse DNS, HELO).
    pub client: Option<&'a Client>,
    /// MAIL FROM, from the mail stage on ("" for `<>`).
    pub sender: Option<&'a str>,
    /// The recipient, at the rcpt stage.
    pub recipient: Option<&'a str>,
}

/// The domain of an address a RHSBL is asked about: none for `<>`, a
/// bare name or an address literal.
fn rhs_domain(address: &str) -> Option<&str> {
    let domain = address_domain(address);
    (address.contains('@') && !domain.is_empty() && !is_address_literal(domain))
        .then(|| domain.trim_end_matches('.'))
}

impl Subjects<'_> {
    /// What `check` looks up, if it is known here.
    fn of(&self, check: Check) -> Option<&str> {
        let client = self.client;
        match check {
            Check::RblClient => client.map(|c| c.ip.as_str()),
            Check::RhsblClient => client.map(Client::name).filter(|n| *n != "unknown"),
            Check::RhsblReverseClient => client.and_then(Client::reverse_name),
            Check::RhsblHelo => client
                .and_then(|c| c.helo.as_deref())
                .filter(|h| !is_address_literal(h))
                .map(|h| h.trim_end_matches('.')),
            Check::RhsblSender => self.sender.and_then(rhs_domain),
            Check::RhsblRecipient => self.recipient.and_then(rhs_domain),
        }
        // A name that is no host name (garbage in HELO) is not asked
        // about, as Postfix does not look it up.
        .filter(|s| check == Check::RblClient || valid_hostname(s))
    }
}

/// The list's TXT records as Postfix's `$rbl_reason`: joined with " / ",
/// at most 500 octets.
fn reason(texts: &[String]) -> String {
    let mut joined = texts.join(" / ");
    if joined.len() > TXT_LIMIT {
        let mut end = TXT_LIMIT;
        while !joined.is_char_boundary(end) {
            end -= 1;
        }
        joined.truncate(end);
    }
    joined
}

/// The reply of a reject: the list's template or Postfix's
/// `default_rbl_reply` ("Service unavailable; CLASS [WHAT] blocked using
/// ZONE; REASON").
fn reject(list: &List, what: &str, reason: &str) -> Outcome {
    let class = list.check.class();
    let zone = list.domain();
    let text = match &list.text {
        Some(t) => t
            .replace("{class}", class)
            .replace("{what}", what)
            .replace("{zone}", zone)
            .replace("{reason}", reason),
        None if reason.is_empty() => {
            format!("Service unavailable; {class} [{what}] blocked using {zone}")
        }
        None => format!("Service unavailable; {class} [{what}] blocked using {zone}; {reason}"),
    };
    Outcome::refuse(list.code, &list.enhanced, text)
}

/// Asks every list that has something to ask about here in one
/// `check-lists` call, then judges in the order of the config: the first
/// listing of a `reject` list refuses; `score` lists add points (and
/// `miss_points` when not listed). A list that cannot be asked is
/// skipped with a warning, or defers the whole check with
/// `tempfail_action = "defer"` unless a list refuses.
pub fn check_lists(config: &Config, subjects: &Subjects<'_>, dns: &impl Resolver) -> Outcome {
    let asked: Vec<(&List, &str)> = config
        .lists
        .iter()
        .filter_map(|l| subjects.of(l.check).map(|s| (l, s)))
        .collect();
    if asked.is_empty() {
        return Outcome::cont();
    }
    let queries: Vec<ListQuery> = asked
        .iter()
        .map(|(l, s)| ListQuery {
            zone: l.domain().to_string(),
            subject: s.to_string(),
        })
        .collect();
    let results = dns.check_lists(&queries);
    let mut outcome = Outcome::cont();
    let mut deferred = None;
    for ((list, what), result) in asked.iter().zip(results) {
        match result {
            ListResult::Listed(listing) => {
                let filter = list.filter().ok().flatten();
                let hit = match &filter {
                    Some(f) => listing.codes.iter().any(|c| f.matches(c)),
                    None => !listing.codes.is_empty(),
                };
                let reason = reason(&listing.texts);
                if !hit {
                    log::debug(&format!(
                        "{what} in {} with codes {:?}, none matching the filter",
                        list.domain(),
                        listing.codes
                    ));
                    outcome = miss(outcome, list);
                    continue;
                }
                log::info(&format!(
                    "{} [{what}] listed in {} ({}): {reason}",
                    list.check.class(),
                    list.domain(),
                    listing.codes.join(",")
                ));
                match list.action {
                    Action::Reject => return reject(list, what, &reason),
                    Action::Score => {
                        let detail = format!("{what} listed in {}", list.domain());
                        outcome = outcome.score(
                            &list.symbol(),
                            list.points.unwrap_or(0.0),
                            Some(&detail),
                        );
                    }
                }
            }
            ListResult::NotListed => outcome = miss(outcome, list),
            ListResult::Temporary(why) => {
                log::warn(&format!(
                    "{what}.{}: RBL lookup error: {why}",
                    list.domain()
                ));
                if config.tempfail_action == TempfailAction::Defer && deferred.is_none() {
                    deferred = Some(Outcome::tempfail(
                        451,
                        "4.7.1",
                        format!(
                            "Service temporarily unavailable; {} [{what}] could not be checked against {}",
                            list.check.class(),
                            list.domain()
                        ),
                    ));
                }
            }
            ListResult::Invalid(why) => {
                log::warn(&format!("{what}.{}: not asked: {why}", list.domain()));
            }
        }
    }
    deferred.unwrap_or(outcome)
}

/// Adds a list's `miss_points`, if any.
fn miss(outcome: Outcome, list: &List) -> Outcome {
    match list.miss_points {
        Some(p) => {
            let detail = format!("not listed in {}", list.domain());
            outcome.score(&format!("{}_MISS", list.symbol()), p, Some(&detail))
        }
        None => outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_sdk::RdnsStatus;
    use postern_sdk::fake::{FakeResolver, describe};

    fn config(lists: &str) -> Config {
        Config::from_json(&format!(r#"{{"lists": {lists}}}"#)).expect("config")
    }

    fn client(ip: &str) -> Client {
        Client {
            helo: Some("mail.good.test".into()),
            ..Client::at(ip)
        }
    }

    fn judge(cfg: &Config, s: &Subjects<'_>, dns: &FakeResolver) -> String {
        describe(&check_lists(cfg, s, dns))
    }

    #[test]
    fn reject_rbl_client_with_txt_like_postfix() {
        let dns = FakeResolver::test_zones();
        let cfg = config(r#"[{"zone": "dnsbl.test"}]"#);
        let c = client("127.0.0.2");
        let at = Subjects {
            client: Some(&c),
            ..Default::default()
        };
        assert_eq!(
            judge(&cfg, &at, &dns),
            "reject: 554 5.7.1 Service unavailable; Client host [127.0.0.2] blocked using dnsbl.test; 127.0.0.2 is listed (RFC 5782 test point)"
        );
        let c99 = client("127.0.0.99");
        let at = Subjects {
            client: Some(&c99),
            ..Default::default()
        };
        assert!(
            judge(&cfg, &at, &dns)
                .ends_with("blocked using dnsbl.test; 127.0.0.99 listed in dnsbl.test")
        );
        let clean = client("198.18.0.25");
        let at = Subjects {
            client: Some(&clean),
            ..Default::default()
        };
        assert_eq!(judge(&cfg, &at, &dns), "continue");
    }

    #[test]
    fn reply_filter() {
        let dns = FakeResolver::test_zones();
        let c = client("127.0.0.2");
        let at = Subjects {
            client: Some(&c),
            ..Default::default()
        };
        // The list answers 127.0.0.2.
        assert!(
            judge(
                &config(r#"[{"zone": "dnsbl.test=127.0.0.[2..11]"}]"#),
                &at,
                &dns
            )
            .starts_with("reject: 554")
        );
        assert_eq!(
            judge(
                &config(r#"[{"zone": "dnsbl.test=127.0.0.[3;10..11]"}]"#),
                &at,
                &dns
            ),
            "continue"
        );
        // The zone in the reply is without the filter.
        assert!(
            judge(&config(r#"[{"zone": "dnsbl.test=127.0.0.2"}]"#), &at, &dns)
                .contains("blocked using dnsbl.test;")
        );
    }

    #[test]
    fn reject_rhsbl_sender_helo_client_reverse_client() {
        let dns = FakeResolver::test_zones()
            .a("mail.good.test.rhsbl.test", "127.0.0.2")
            .a("dyn-127-0-0-99.pool.test.rhsbl.test", "127.0.0.2");
        let c = client("198.18.0.25");
        let sender = Subjects {
            client: Some(&c),
            sender: Some("bulk@Spammer.test"),
            ..Default::default()
        };
        assert_eq!(
            judge(
                &config(r#"[{"zone": "rhsbl.test", "check": "rhsbl_sender"}]"#),
                &sender,
                &dns
            ),
            "reject: 554 5.7.1 Service unavailable; Sender address [Spammer.test] blocked using rhsbl.test; spammer.test listed in rhsbl.test"
        );
        // No TXT record: no "; reason".
        let helo = Subjects {
            client: Some(&c),
            ..Default::default()
        };
        assert_eq!(
            judge(
                &config(r#"[{"zone": "rhsbl.test", "check": "rhsbl_helo"}]"#),
                &helo,
                &dns
            ),
            "reject: 554 5.7.1 Service unavailable; Helo command [mail.good.test] blocked using rhsbl.test"
        );
        let named = Client {
            rdns: RdnsStatus::Confirmed("mail.good.test".into()),
            ..c.clone()
        };
        let at = Subjects {
            client: Some(&named),
            ..Default::default()
        };
        assert!(
            judge(
                &config(r#"[{"zone": "rhsbl.test", "check": "rhsbl_client"}]"#),
                &at,
                &dns
            )
            .contains("Client host [mail.good.test] blocked")
        );
        let unverified = Client {
            rdns: RdnsStatus::Unconfirmed("dyn-127-0-0-99.pool.test".into()),
            ..c.clone()
        };
        let at = Subjects {
            client: Some(&unverified),
            ..Default::default()
        };
        assert!(
            judge(
                &config(r#"[{"zone": "rhsbl.test", "check": "rhsbl_reverse_client"}]"#),
                &at,
                &dns
            )
            .contains("Unverified Client host [dyn-127-0-0-99.pool.test] blocked")
        );
        // rhsbl_client needs a confirmed name: not asked at all.
        assert_eq!(
            judge(
                &config(r#"[{"zone": "rhsbl.test", "check": "rhsbl_client"}]"#),
                &at,
                &dns
            ),
            "continue"
        );
    }

    #[test]
    fn nothing_to_ask_at_this_stage() {
        let dns = FakeResolver::test_zones();
        let cfg = config(
            r#"[{"zone": "rhsbl.test", "check": "rhsbl_sender"}, {"zone": "rhsbl.test", "check": "rhsbl_recipient"}]"#,
        );
        let c = client("127.0.0.2");
        for s in [
            Subjects {
                client: Some(&c),
                ..Default::default()
            },
            Subjects {
                client: Some(&c),
                sender: Some(""),
                ..Default::default()
            },
            Subjects {
                client: Some(&c),
                sender: Some("a@[127.0.0.1]"),
                ..Default::default()
            },
            Subjects {
                client: Some(&c),
                sender: Some("a@bad..name"),
                ..Default::default()
            },
        ] {
            assert_eq!(judge(&cfg, &s, &dns), "continue");
        }
        assert!(dns.calls().is_empty(), "{:?}", dns.calls());
    }

    #[test]
    fn all_lists_in_one_batch_first_reject_wins_scores_add() {
        let dns = FakeResolver::test_zones();
        let cfg = config(
            r#"[{"zone": "rhsbl.test", "check": "rhsbl_sender", "action": "score", "points": 2.5, "symbol": "SPAMMER"},
                {"zone": "other.test", "action": "score", "points": 1, "miss_points": -0.5},
                {"zone": "dnsbl.test", "action": "score", "points": 4.25, "miss_points": -1.5}]"#,
        );
        let c = client("127.0.0.2");
        let at = Subjects {
            client: Some(&c),
            sender: Some("x@spammer.test"),
            ..Default::default()
        };
        assert_eq!(
            judge(&cfg, &at, &dns),
            "continue SPAMMER=2.5 RBL_OTHER_TEST_MISS=-0.5 RBL_DNSBL_TEST=4.25"
        );
        assert_eq!(dns.calls(), ["check-lists 3"]);
        let two = config(
            r#"[{"zone": "rhsbl.test", "check": "rhsbl_sender", "text": "{what} is on {zone}"}, {"zone": "dnsbl.test", "code": 550}]"#,
        );
        assert_eq!(
            judge(&two, &at, &dns),
            "reject: 554 5.7.1 spammer.test is on rhsbl.test"
        );
    }

    #[test]
    fn temporary_failure_skips_or_defers() {
        let dns = FakeResolver::test_zones().temporary("down.test");
        let c = client("127.0.0.2");
        let at = Subjects {
            client: Some(&c),
            ..Default::default()
        };
        assert_eq!(
            judge(&config(r#"[{"zone": "down.test"}]"#), &at, &dns),
            "continue"
        );
        let defer =
            Config::from_json(r#"{"lists": [{"zone": "down.test"}], "tempfail_action": "defer"}"#)
                .expect("config");
        assert_eq!(
            judge(&defer, &at, &dns),
            "tempfail: 451 4.7.1 Service temporarily unavailable; Client host [127.0.0.2] could not be checked against down.test"
        );
        // A listing elsewhere still refuses.
        let both = Config::from_json(r#"{"lists": [{"zone": "down.test"}, {"zone": "dnsbl.test"}], "tempfail_action": "defer"}"#).expect("config");
        assert!(judge(&both, &at, &dns).starts_with("reject: 554 5.7.1"));
    }

    #[test]
    fn long_txt_is_cut_like_postfix() {
        let texts = vec!["a".repeat(300), "b".repeat(300)];
        let r = reason(&texts);
        assert_eq!(r.len(), 500);
        assert!(r.contains("a / b"));
    }
}
