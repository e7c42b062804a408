//! policyd-weight's `weighted_check` (0.1.15.2), step by step, over a
//! [`Dns`] trait: the host's `dns` capability in the plugin, a fake zone in
//! tests. Each step names the policyd-weight log token it reproduces.

use crate::config::{Config, List};
use crate::names::{
    DIALUP, IPISH, MAILISH, NUMERIC, RANDOM, Seen, helo_domain_matches, ip_text, myrnd, perl,
    strip_tld,
};
use regex_lite::Regex;
use std::net::IpAddr;
use std::sync::LazyLock;

/// Why a lookup gave nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum DnsError {
    /// NXDOMAIN or no data: an answer, with no records.
    NotFound,
    /// Timeout, SERVFAIL: policyd-weight's `dns_error`.
    Temporary,
}

/// What a list says of a subject.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Listed {
    /// Listed.
    Yes,
    /// Not listed.
    No,
    /// The list could not be asked.
    Error,
}

/// The lookups the checks make.
pub trait Dns {
    /// Each `(zone, subject)` asked, in order (DNSBL: an address;
    /// RHSBL: a domain).
    fn lists(&self, queries: &[(String, String)]) -> Vec<Listed>;
    /// MX exchanges of `name`.
    fn mx(&self, name: &str) -> Result<Vec<String>, DnsError>;
    /// A records, then AAAA records of `name`; an error for either counts.
    fn addrs(&self, name: &str) -> (Vec<IpAddr>, u32);
    /// PTR names of the client address (not forward-confirmed).
    fn ptr(&self, ip: IpAddr) -> Vec<String>;
}

/// The transaction as policyd-weight sees it.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// `client_address`.
    pub ip: IpAddr,
    /// `client_name`: the verified name, or "unknown".
    pub client_name: &'a str,
    /// `helo_name`.
    pub helo: &'a str,
    /// `sender`.
    pub sender: &'a str,
    /// `recipient`.
    pub recipient: &'a str,
}

/// The result of the checks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    /// The contributions, in policyd-weight's order: (its log token, points).
    pub scores: Vec<(String, f64)>,
    /// The sum, rounded as policyd-weight rounds.
    pub rate: f64,
    /// Set when policyd-weight answers without the score: a 550 (too many
    /// DNSBLs), a 450 (no DNS records), or a pass (`DUNNO ...`, too many
    /// DNS errors), with its text.
    pub early: Option<Early>,
    /// policyd-weight's reject text suffixes (`; in rhsbl.test`, ...).
    pub reject_suffix: String,
    /// The helo was neither verified nor untrusted-ok (the
    /// "helo/hostname mismatch" text of a reject).
    pub helo_mismatch: bool,
    /// DNS lookups that found nothing at all (policyd-weight `$dnserr`).
    pub dns_error: bool,
    /// Number of DNSBLs that list the client.
    pub dnsbl_hits: u32,
}

/// An answer given before (or instead of) the score.
#[derive(Debug, Clone, PartialEq)]
pub enum Early {
    /// Not scored: why (null sender, postmaster/abuse, DNS errors).
    Skip(String),
    /// Rejected at once: `$MAXDNSBLMSG`.
    TooManyDnsbls,
}

/// State shared by the steps (policyd-weight's locals).
struct Run {
    report: Report,
    total_dnsbl: f64,
    dns_errors_left: u32,
}

impl Run {
    fn add(&mut self, token: &str, points: f64) {
        let points = perl(points);
        self.report.scores.push((token.to_string(), points));
        self.report.rate += points;
    }

    /// One more DNS error; true when `$MAXDNSERR` is used up.
    fn dns_error(&mut self) -> bool {
        let left = self.dns_errors_left;
        self.dns_errors_left = left.saturating_sub(1);
        left <= 1
    }

    /// `n` more DNS errors; true when `$MAXDNSERR` is used up.
    fn dns_errors(&mut self, n: u32) -> bool {
        (0..n).any(|_| self.dns_error())
    }

    fn skip(mut self, why: String) -> Report {
        self.report.early = Some(Early::Skip(why));
        self.report
    }
}

/// Asks each list about `subject` (one batch).
fn ask<'c>(dns: &dyn Dns, lists: &'c [List], subject: &str) -> Vec<(&'c List, Listed)> {
    let queries: Vec<(String, String)> = lists
        .iter()
        .map(|l| (l.zone.clone(), subject.to_string()))
        .collect();
    lists.iter().zip(dns.lists(&queries)).collect()
}

/// policyd-weight's text when a list's errors use `$MAXDNSERR` up.
fn list_errors(l: &List) -> String {
    format!("passed - too many local DNS-errors in {} lookups", l.zone)
}

/// Runs the checks.
pub fn check(cfg: &Config, dns: &dyn Dns, req: &Request<'_>) -> Report {
    let w = &cfg.weights;
    // address_stripped: "user+ext@" and "user-ext@" count as "user@".
    static EXT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"[+-].*@").expect("regex"));
    let from = EXT.replace(req.sender, "@").into_owned();
    let mut run = Run {
        report: Report::default(),
        total_dnsbl: 0.0,
        dns_errors_left: cfg.max_dns_errors,
    };
    if from.is_empty() {
        return run.skip("NULL (<>) Sender".into());
    }
    let rcpt = req.recipient.to_ascii_lowercase();
    if rcpt.starts_with("postmaster@") || rcpt.starts_with("abuse@") {
        return run.skip(format!("mail for {}", req.recipient));
    }
    let from_domain = req
        .sender
        .rsplit_once('@')
        .map(|(_, d)| d.to_string())
        .unwrap_or_default();
    let ip = ip_text(req.ip);
    let (subip16, subip) = match req.ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            (
                format!("{}.{}.", o[0], o[1]),
                format!("{}.{}.{}.", o[0], o[1], o[2]),
            )
        }
        IpAddr::V6(_) => (ip[..15].to_string(), ip[..20].to_string()),
    };
    let helo = req.helo;

    // DNSBL check: IN_<name>=hit, NOT_IN_<name>=miss, <name>=ERR(miss).
    let mut client_seems_dialup = false;
    for (l, a) in ask(dns, &cfg.dnsbl, &ip) {
        match a {
            Listed::Error => {
                if run.dns_error() {
                    return run.skip(list_errors(l));
                }
                run.add(&format!("{}_ERR", l.name), l.miss);
            }
            Listed::Yes => {
                run.add(&format!("IN_{}", l.name), l.hit);
                run.total_dnsbl += l.hit;
                if l.name.to_ascii_lowercase().contains("dyn") {
                    client_seems_dialup = true;
                }
                if l.hit > 0.0 {
                    run.report.dnsbl_hits += 1;
                    if run.report.dnsbl_hits > cfg.max_dnsbl_hits
                        || run.total_dnsbl > cfg.max_dnsbl_score
                    {
                        run.report.early = Some(Early::TooManyDnsbls);
                        return run.report;
                    }
                }
            }
            Listed::No => {
                if l.miss != 0.0 {
                    run.add(&format!("NOT_IN_{}", l.name), l.miss);
                }
            }
        }
    }
    let total_dnsbl = run.total_dnsbl;

    // HELO/FROM DNS checks.
    let squared_helo =
        helo.strip_prefix('[').and_then(|h| h.strip_suffix(']')) == Some(ip.as_str());
    let mut helo_ok = u8::from(squared_helo);
    let mut found = false;
    let mut is_mx = false;
    let mut mx_ok = false;
    let mut ip_eq_from = false;
    let mut helo_untrusted_ok = false;
    let mut do_reverse_check = false;
    let mut do_client_from_check = false;
    let mut recs_found = false;
    let mut bad_mx = false;
    let mut bad_mx_scored = false;
    let mut bogus_mx = false;
    let mut bogus_mx_penalty = 0.0;
    let mut seen = Seen::new(helo);
    let sender_domain = from
        .rsplit_once('@')
        .map(|(_, d)| d.to_string())
        .unwrap_or_default();
    'outer: for (from_side, name) in [(true, sender_domain.as_str()), (false, helo)] {
        let kind = if from_side { "FROM" } else { "HELO" };
        let labels: Vec<&str> = name.split('.').collect();
        for start in 0..labels.len().saturating_sub(1) {
            let test = labels[start..].join(".");
            if test.contains(['[', ']']) {
                continue;
            }
            let mx = match dns.mx(&test) {
                Err(DnsError::Temporary) => {
                    if run.dns_error() {
                        return run.skip(format!(
                            "passed - too many local DNS-errors in {kind} MX lookups for {test}"
                        ));
                    }
                    continue;
                }
                Err(DnsError::NotFound) => Vec::new(),
                Ok(v) => v,
            };
            recs_found = true;
            for exchange in mx {
                let (addrs, errors) = dns.addrs(&exchange);
                if run.dns_errors(errors) {
                    return run.skip(format!(
                        "passed - too many local DNS-errors in {kind} MX -> A lookups"
                    ));
                }
                if seen.add(&addrs, from_side, Some(&exchange), &ip) {
                    run.add(
                        &format!("CL_IP_EQ_{kind}_MX"),
                        w.helo_from_mx_eq_ip_score[1],
                    );
                    found = true;
                    is_mx |= from_side;
                    helo_ok = 1;
                    mx_ok = true;
                    break;
                }
            }
            if from_side && !bad_mx && seen.bogus() {
                bad_mx = true;
            }
            if !found {
                let (addrs, errors) = dns.addrs(&test);
                if run.dns_errors(errors) {
                    return run.skip(format!(
                        "passed - too many local DNS-errors in {kind} A lookup for {test}"
                    ));
                }
                if seen.add(&addrs, from_side, None, &ip) {
                    found = true;
                    helo_ok = 1;
                    run.add(&format!("CL_IP_EQ_{kind}_IP"), w.helo_score[1]);
                    bad_mx = false;
                    ip_eq_from |= from_side;
                }
            }
            if bad_mx && !bad_mx_scored {
                let score = w.bogus_mx_score[0] * total_dnsbl;
                if score != 0.0 {
                    run.add("BAD_MX", score);
                    bad_mx_scored = true;
                }
            }
            if from_side && !bogus_mx && seen.bogus() {
                let score = w.bogus_mx_score[0] + total_dnsbl;
                run.add("BOGUS_MX", score);
                bogus_mx = true;
                bogus_mx_penalty = score;
            }
            if found {
                break 'outer;
            }
        }
    }
    if !found && recs_found {
        if seen.addresses.contains(&format!(" {subip}")) {
            run.add("HELO_IP_IN_CL_SUBNET", w.helo_ip_in_client_subnet[1]);
            helo_ok = 1;
            found = true;
        } else if seen.addresses.contains(&format!(" {subip16}")) {
            run.add("HELO_IP_IN_CL16_SUBNET", w.helo_ip_in_cl16_subnet[1]);
            helo_untrusted_ok = true;
            do_reverse_check = true;
            found = true;
        }
        if !found && helo_ok != 1 && !squared_helo {
            run.add("CL_IP_NE_HELO", w.helo_score[0] + total_dnsbl);
            helo_ok = 2;
        }
    } else if !found {
        run.add("NO_MX_A_RECS_FOUND", w.helo_score[0] - 0.1);
        helo_ok = 2;
    }

    // HELO numeric check.
    let mut numeric = 0.0;
    if NUMERIC.is_match(helo) {
        numeric = myrnd(w.helo_numeric_score[0] + w.helo_numeric_score[0] * total_dnsbl);
        run.add("HELO_NUMERIC", numeric);
    }

    // FROM domain vs HELO regex check.
    let client_name = req.client_name;
    if !is_mx {
        let from_cmp = format!(".{}.", strip_tld(&sender_domain, true));
        let helo_cut = strip_tld(helo, false);
        let helo_domain = format!(".{}.", helo_cut.rsplit('.').next().unwrap_or(""));
        let helo_cmp = format!(".{helo_cut}.");
        let related = helo_cmp.contains(&from_cmp) || from_cmp.contains(&helo_cmp);
        if helo_ok == 1 {
            if related || seen.mx_names.contains(&helo_domain) || seen.from_addresses.contains(&ip)
            {
                run.add(
                    "FROM/MX_MATCHES_HELO(DOMAIN)",
                    w.from_match_regex_verified_helo[1],
                );
            } else {
                let score = myrnd(
                    w.from_match_regex_verified_helo[0]
                        + total_dnsbl / 4.0
                        + bogus_mx_penalty * bogus_mx_penalty
                        + numeric,
                );
                run.add("FROM/MX_MATCHES_NOT_HELO(DOMAIN)", score);
                do_client_from_check = true;
            }
        } else if client_name.contains(&from_cmp) && !squared_helo {
            run.add(
                "CL_HOSTNAME_MATCHES_FROM(DOMAIN)",
                w.helo_ip_in_client_subnet[1],
            );
            helo_ok = 1;
            do_reverse_check = false;
            do_client_from_check = false;
            helo_untrusted_ok = false;
        } else if helo_untrusted_ok && !squared_helo {
            if related || seen.mx_names.contains(&helo_domain) || client_name.contains(&from_cmp) {
                run.add(
                    "FROM/MX_MATCHES_UNVR_HELO(DOMAIN)_OR_CL_NAME(DOMAIN)",
                    w.from_match_regex_unverified_helo[1],
                );
            } else {
                let score = w.from_match_regex_unverified_helo[0]
                    + total_dnsbl
                    + bogus_mx_penalty * bogus_mx_penalty;
                run.add(
                    "FROM/MX_MATCHES_NOT_UNVR_HELO(DOMAIN)_NOR_CL_NAME(DOMAIN)",
                    score,
                );
                do_client_from_check = true;
            }
        } else if related {
            run.add("MAIL_SEEMS_FORGED", w.from_match_regex_failed_helo[0]);
        } else {
            run.add(
                "FROM_NOT_FAILED_HELO(DOMAIN)",
                w.from_match_regex_failed_helo[0] + 0.5 + total_dnsbl,
            );
        }
    }

    // Reverse IP == dynhost check.
    let reverse: Vec<String> = dns
        .ptr(req.ip)
        .into_iter()
        .map(|p| p.trim_end_matches('.').to_ascii_lowercase())
        .collect();
    let mut total_dnsbl = total_dnsbl;
    if !client_seems_dialup && !mx_ok {
        for rev in &reverse {
            if MAILISH.is_match(rev) {
                break;
            }
            if DIALUP.is_match(rev) || IPISH.is_match(helo) {
                client_seems_dialup = true;
                total_dnsbl += w.client_seems_dialup_score[0];
                run.add("CL_SEEMS_DIALUP", w.client_seems_dialup_score[0]);
                break;
            }
        }
    }

    // Reverse IP == HELO check.
    if (helo_ok != 1 && !helo_untrusted_ok) || do_reverse_check {
        let mut found = false;
        for rev in &reverse {
            if rev == helo {
                run.add("REV_IP_EQ_HELO", w.client_ip_eq_helo_score[1]);
                found = true;
                break;
            }
            if helo_domain_matches(rev, helo) {
                run.add("REV_IP_EQ_HELO_DOMAIN", w.client_ip_eq_helo_score[1]);
                found = true;
                break;
            }
        }
        if reverse.is_empty() && !recs_found {
            run.add("NO_DNS_RECORDS", 0.5);
            run.report.dns_error = true;
        }
        if !found && !squared_helo {
            run.add("RESOLVED_IP_IS_NOT_HELO", w.client_ip_eq_helo_score[0]);
        } else {
            helo_untrusted_ok = client_name.is_empty() || client_name == "unknown";
        }
    }

    // HELO dialup check.
    let mut helo_dialup = false;
    if (w.enforce_dyndns_score[0] != 0.0 || !client_seems_dialup)
        && !mx_ok
        && !ip_eq_from
        && !MAILISH.is_match(helo)
        && (DIALUP.is_match(helo) || IPISH.is_match(helo))
    {
        helo_dialup = true;
        if helo_ok == 1 {
            run.add(
                "HELO_SEEMS_DIALUP",
                w.helo_seems_dialup[0] + w.enforce_dyndns_score[0],
            );
        } else {
            run.add(
                "NOK_HELO_SEEMS_DIALUP",
                w.failed_helo_seems_dialup[0] + w.enforce_dyndns_score[0],
            );
        }
    }

    // From has nobody/anonymous user.
    if from.contains("nobody@") || from.contains("anonymous@") {
        run.add("FROM_NBDY_ANON", w.from_anon[0] + total_dnsbl + numeric);
    }

    // Client == MX/A of the FROM domain.
    let mut relay_msg = String::new();
    if !mx_ok
        && do_client_from_check
        && run.report.dnsbl_hits > 0
        && !squared_helo
        && !seen.from_addresses.contains(&ip)
    {
        let score = w.helo_from_mx_eq_ip_score[0] + total_dnsbl;
        relay_msg = format!("; please relay via your ISP ({from_domain})");
        run.add("CLIENT_NOT_MX/A_FROM_DOMAIN", score);
        if !seen.from_addresses.contains(&subip) {
            run.add("CLIENT/24_NOT_MX/A_FROM_DOMAIN", score);
        }
    }

    // From domain multiparted check.
    static MULTI: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"@.*?\..*?\.").expect("regex"));
    if helo_ok == 0 && !mx_ok && run.report.rate < cfg.reject_level && MULTI.is_match(&from) {
        run.add("FROM_MULTIPARTED", w.from_multiparted[0] + total_dnsbl);
    }
    // policyd-weight tests `!($helo_ok || $mx_ok)`: helo_ok 2 is true too.

    // Random sender check.
    let mut rhsbl_penalty = 0.0;
    if run.report.rate < cfg.reject_level && RANDOM.is_match(&from) {
        let r = w.random_sender_score[0];
        run.add("RANDOM_SENDER", total_dnsbl + total_dnsbl * r + r);
        rhsbl_penalty = w.rhsbl_penalty_score[0] * r;
    }

    // RHSBL check.
    if run.report.rate < cfg.reject_level {
        if do_client_from_check || helo_untrusted_ok || bogus_mx {
            rhsbl_penalty += w.rhsbl_penalty_score[0];
        }
        for (l, a) in ask(dns, &cfg.rhsbl, &from_domain) {
            match a {
                Listed::Error => {
                    if run.dns_error() {
                        return run.skip(list_errors(l));
                    }
                }
                Listed::Yes => {
                    let score = myrnd(l.hit + rhsbl_penalty + total_dnsbl / 2.0);
                    run.add(&format!("IN_{}", l.name), score);
                    run.report
                        .reject_suffix
                        .push_str(&format!("; in {}", l.zone));
                }
                Listed::No => {}
            }
        }
    }
    // policyd-weight's reject text: the RHSBLs, the relay hint, DynDNS.
    let mut suffix = std::mem::take(&mut run.report.reject_suffix);
    suffix.push_str(&relay_msg);
    if helo_dialup {
        suffix.push_str("; Please use DynDNS");
    }
    run.report.reject_suffix = suffix;
    run.report.rate = myrnd(run.report.rate);
    run.report.helo_mismatch = helo_ok != 1 && !helo_untrusted_ok;
    run.report
}

#[cfg(test)]
#[path = "check_tests.rs"]
pub(crate) mod tests;
