//! The plugin's hooks: the host's DNS behind [`Dns`], the report as an
//! outcome.

use crate::check::{self, Dns, DnsError, Early, Listed, Report, Request};
use crate::config::Config;
use crate::exports::postern::filter::{configure, rcpt_hook};
use crate::postern::filter::dns::{
    self, ListQuery, ListResult, LookupResult, Query, Rdata, RecordType,
};
use postern_sdk::{Envelope, Outcome, Param, Session, log, restrict};
use std::net::IpAddr;

/// The host's resolver.
struct HostDns;

impl Dns for HostDns {
    fn lists(&self, queries: &[(String, String)]) -> Vec<Listed> {
        if queries.is_empty() {
            return Vec::new();
        }
        let q: Vec<ListQuery> = queries
            .iter()
            .map(|(zone, subject)| ListQuery {
                zone: zone.clone(),
                subject: subject.clone(),
            })
            .collect();
        dns::check_lists(&q)
            .into_iter()
            .map(|r| match r {
                ListResult::Listed(_) => Listed::Yes,
                ListResult::NotListed => Listed::No,
                ListResult::Temporary(_) | ListResult::Invalid(_) => Listed::Error,
            })
            .collect()
    }

    fn mx(&self, name: &str) -> Result<Vec<String>, DnsError> {
        match dns::lookup(name, RecordType::Mx) {
            LookupResult::Answers(a) => Ok(a
                .into_iter()
                .filter_map(|r| match r {
                    Rdata::Mx(m) if !m.exchange.is_empty() => Some(m.exchange),
                    _ => None,
                })
                .collect()),
            LookupResult::Nxdomain | LookupResult::NoData | LookupResult::Invalid(_) => {
                Err(DnsError::NotFound)
            }
            LookupResult::Temporary(_) => Err(DnsError::Temporary),
        }
    }

    fn addrs(&self, name: &str) -> (Vec<IpAddr>, u32) {
        let queries = [
            Query {
                name: name.to_string(),
                type_: RecordType::A,
            },
            Query {
                name: name.to_string(),
                type_: RecordType::Aaaa,
            },
        ];
        let mut addrs = Vec::new();
        let mut errors = 0;
        for r in dns::lookup_batch(&queries) {
            match r {
                LookupResult::Answers(a) => addrs.extend(a.into_iter().filter_map(|r| match r {
                    Rdata::A(t) | Rdata::Aaaa(t) => t.parse::<IpAddr>().ok(),
                    _ => None,
                })),
                LookupResult::Temporary(_) => errors += 1,
                _ => {}
            }
        }
        (addrs, errors)
    }

    fn ptr(&self, ip: IpAddr) -> Vec<String> {
        match dns::reverse(&ip.to_string()) {
            LookupResult::Answers(a) => a
                .into_iter()
                .filter_map(|r| match r {
                    Rdata::Ptr(p) => Some(p),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// A policyd-weight token as a score symbol: `PW_` and A-Z, 0-9, `_`.
pub fn symbol(token: &str) -> String {
    let mut s = String::from("PW_");
    for c in token.chars() {
        match c {
            'A'..='Z' | '0'..='9' | '_' => s.push(c),
            'a'..='z' => s.push(c.to_ascii_uppercase()),
            _ if !s.ends_with('_') => s.push('_'),
            _ => {}
        }
    }
    s.trim_end_matches('_').to_string()
}

/// policyd-weight's answer for a report, with `decide`.
pub fn decision(cfg: &Config, r: &Report, helo: &str, client: &str) -> Outcome {
    const REJECT: &str = "Mail appeared to be SPAM or forged. Ask your Mail/DNS-Administrator to correct HELO and DNS MX settings or to get removed from DNSBLs";
    if r.dns_error && r.dnsbl_hits < 2 {
        return Outcome::tempfail(
            450,
            "4.7.1",
            format!(
                "No DNS entries for your MTA, HELO and Domain. Contact YOUR administrator Your HELO: {helo}, IP: {client}"
            ),
        );
    }
    if r.rate < cfg.reject_level {
        return Outcome::cont();
    }
    let mut text = REJECT.to_string();
    if r.helo_mismatch {
        text.push_str(&format!(
            "; MTA helo: {helo}, MTA hostname: {client} (helo/hostname mismatch)"
        ));
    }
    text.push_str(&r.reject_suffix);
    let defer = r.rate < cfg.defer_level
        && r.scores
            .iter()
            .any(|(t, _)| cfg.defer_on.iter().any(|d| d == t));
    if defer {
        Outcome::tempfail(450, "4.7.1", text)
    } else {
        Outcome::reject(550, "5.7.1", text)
    }
}

/// The log line's breakdown, as policyd-weight logs it.
pub fn breakdown(r: &Report) -> String {
    r.scores.iter().map(|(t, p)| format!(" {t}={p}")).collect()
}

pub struct Plugin;

impl rcpt_hook::Guest for Plugin {
    fn on_rcpt(
        session: &Session,
        envelope: &Envelope,
        recipient: String,
        _p: Vec<Param>,
    ) -> Outcome {
        let cfg = match restrict::cached(Config::from_json) {
            Ok(c) => c,
            Err(e) => return restrict::config_error(&e),
        };
        if session.trusted() || session.auth_user().is_some() {
            return Outcome::cont();
        }
        let ip_text = session.client_ip();
        let Ok(ip) = ip_text.parse::<IpAddr>() else {
            log::warn(&format!(
                "client address {ip_text:?} is not an IP address: not weighed"
            ));
            return Outcome::cont();
        };
        let client_name = session.client_ptr().unwrap_or_else(|| "unknown".into());
        let helo = session.helo().unwrap_or_default();
        let sender = envelope.mail_from();
        let req = Request {
            ip,
            client_name: &client_name,
            helo: &helo,
            sender: &sender,
            recipient: &recipient,
        };
        let r = check::check(cfg, &HostDns, &req);
        let who =
            format!("<client={client_name}[{ip}]> <helo={helo}> <from={sender}> <to={recipient}>");
        match &r.early {
            Some(Early::Skip(why)) => {
                log::info(&format!("weighted check skipped: {why}; {who}"));
                return Outcome::cont();
            }
            Some(Early::TooManyDnsbls) => {
                log::info(&format!(
                    "weighted check:{}; {who}; too many DNSBLs",
                    breakdown(&r)
                ));
                return Outcome::reject(550, "5.7.1", "Your MTA is listed in too many DNSBLs");
            }
            None => {}
        }
        log::info(&format!(
            "weighted check:{}; {who}; rate: {}",
            breakdown(&r),
            r.rate
        ));
        let mut out = if cfg.decide {
            decision(cfg, &r, &helo, &format!("{client_name}[{ip}]"))
        } else {
            Outcome::cont()
        };
        for (token, points) in &r.scores {
            out = out.score(&symbol(token), *points, Some(token));
        }
        out
    }
}

impl configure::Guest for Plugin {
    fn check_config() -> Result<(), String> {
        Config::from_json(&postern_sdk::host::config()).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_sdk::Verdict;

    fn report(scores: &[(&str, f64)], suffix: &str) -> Report {
        Report {
            scores: scores.iter().map(|(t, p)| (t.to_string(), *p)).collect(),
            rate: scores.iter().map(|(_, p)| p).sum(),
            reject_suffix: suffix.into(),
            ..Default::default()
        }
    }

    fn reply(o: Outcome) -> (u16, String) {
        match o.verdict {
            Verdict::Reject(r) | Verdict::Tempfail(r) => (r.code, r.text),
            _ => (250, String::new()),
        }
    }

    #[test]
    fn decide_answers_as_policyd_weight() {
        let cfg = Config::default();
        // nomx.test from 198.18.0.25: rate 4.01 with BOGUS_MX: 450.
        let r = report(
            &[
                ("NOT_IN_DNSBL_TEST", -1.5),
                ("BOGUS_MX", 2.1),
                ("CL_IP_EQ_HELO_IP", -2.0),
                ("FROM/MX_MATCHES_NOT_HELO(DOMAIN)", 5.41),
            ],
            "",
        );
        let (code, text) = reply(decision(
            &cfg,
            &r,
            "mail.good.test",
            "mail.good.test[198.18.0.25]",
        ));
        assert_eq!(code, 450);
        assert!(
            text.starts_with("Mail appeared to be SPAM or forged."),
            "{text}"
        );
        // Over defer_level: 550 with the suffixes.
        let r = report(
            &[("IN_DNSBL_TEST", 4.35), ("BOGUS_MX", 6.45)],
            "; please relay via your ISP (good.test); Please use DynDNS",
        );
        let (code, text) = reply(decision(&cfg, &r, "h", "c[1.2.3.4]"));
        assert_eq!(code, 550);
        assert!(
            text.ends_with("DNSBLs; please relay via your ISP (good.test); Please use DynDNS"),
            "{text}"
        );
        // Below reject_level: no verdict.
        let r = report(
            &[("NOT_IN_DNSBL_TEST", -1.5), ("CL_IP_EQ_FROM_MX", -3.1)],
            "",
        );
        assert_eq!(reply(decision(&cfg, &r, "h", "c")).0, 250);
        // No DNS records at all: 450 whatever the rate.
        let mut r = report(&[("NO_DNS_RECORDS", 0.5)], "");
        r.dns_error = true;
        let (code, text) = reply(decision(&cfg, &r, "h.test", "unknown[192.0.2.1]"));
        assert_eq!(code, 450);
        assert!(text.contains("No DNS entries for your MTA"), "{text}");
    }

    #[test]
    fn symbols_are_tokens_in_capitals() {
        assert_eq!(
            symbol("FROM/MX_MATCHES_HELO(DOMAIN)"),
            "PW_FROM_MX_MATCHES_HELO_DOMAIN"
        );
        assert_eq!(
            symbol("CLIENT/24_NOT_MX/A_FROM_DOMAIN"),
            "PW_CLIENT_24_NOT_MX_A_FROM_DOMAIN"
        );
        assert_eq!(symbol("IN_DNSBL_TEST"), "PW_IN_DNSBL_TEST");
    }

    #[test]
    fn decide_gives_policyd_weight_answers_on_the_test_zones() {
        let mut cfg = crate::check::tests::test_config();
        cfg.decide = true;
        let z = crate::check::tests::zones();
        let spam = "Mail appeared to be SPAM or forged. Ask your Mail/DNS-Administrator to correct HELO and DNS MX settings or to get removed from DNSBLs";
        // (scenario, what policyd-weight answered)
        for (i, code, suffix) in [
            (0, 250, ""),
            (1, 550, "; Please use DynDNS"),
            (6, 450, ""),
            (15, 550, ""),
            (
                17,
                550,
                "; please relay via your ISP (good.test); Please use DynDNS",
            ),
        ] {
            let s = &crate::check::tests::SCENARIOS[i];
            let r = check::check(&cfg, &z, &crate::check::tests::request(s));
            let (got, text) = reply(decision(&cfg, &r, s.2, &format!("{}[{}]", s.1, s.0)));
            assert_eq!(got, code, "scenario {i}");
            if code != 250 {
                assert_eq!(text, format!("{spam}{suffix}"), "scenario {i}");
            }
        }
    }
}
