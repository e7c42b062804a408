//! `spf`: SPF (RFC 7208) of MAIL FROM (the HELO name for the null sender)
//! as a Postern plugin, with lookups through the host's `dns` capability.
//!
//! Each result (`pass`, `fail`, `softfail`, `neutral`, `none`,
//! `temperror`, `permerror`) is configured as `"continue"`, `"reject"`,
//! `"tempfail"` or a score; accepted mail gets a `Received-SPF` and/or
//! `Authentication-Results` header. See README.md.
//!
//! The evaluator is our own (`record`, `eval`): mail-auth 0.13 needs a DNS
//! backend (hickory over tokio sockets, or reqwest DNS-over-HTTPS) and a
//! crypto backend to build at all, none of which a wasm32-wasip2 guest
//! without sockets can use, and its verifier is async around them.

#![allow(missing_docs)] // generated bindings

pub mod eval;
pub mod policy;
pub mod record;

postern_sdk::bindings!(path: "wit", world: "postern:spf/spf");

use eval::{DnsError, Resolver};
use exports::postern::filter::{configure, mail_hook, rcpt_hook};
use policy::{Config, Input};
use postern::filter::dns::{self, LookupResult, Rdata, RecordType};
use postern_sdk::{Envelope, Outcome, Param, Session, log, restrict};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The host's resolver.
struct HostDns;

fn answers(r: LookupResult) -> Result<Vec<Rdata>, DnsError> {
    match r {
        LookupResult::Answers(a) => Ok(a),
        LookupResult::Nxdomain | LookupResult::NoData => Err(DnsError::NotFound),
        LookupResult::Temporary(e) => Err(DnsError::Temporary(e)),
        LookupResult::Invalid(e) => Err(DnsError::Invalid(e)),
    }
}

/// The records of one type that `pick` keeps.
fn records<T>(r: LookupResult, pick: impl Fn(Rdata) -> Option<T>) -> Result<Vec<T>, DnsError> {
    Ok(answers(r)?.into_iter().filter_map(pick).collect())
}

impl Resolver for HostDns {
    fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        records(dns::lookup(name, RecordType::Txt), |r| match r {
            Rdata::Txt(t) => Some(t),
            _ => None,
        })
    }
    fn a(&self, name: &str) -> Result<Vec<Ipv4Addr>, DnsError> {
        records(dns::lookup(name, RecordType::A), |r| match r {
            Rdata::A(a) => a.parse().ok(),
            _ => None,
        })
    }
    fn aaaa(&self, name: &str) -> Result<Vec<Ipv6Addr>, DnsError> {
        records(dns::lookup(name, RecordType::Aaaa), |r| match r {
            Rdata::Aaaa(a) => a.parse().ok(),
            _ => None,
        })
    }
    fn mx(&self, name: &str) -> Result<Vec<String>, DnsError> {
        records(dns::lookup(name, RecordType::Mx), |r| match r {
            Rdata::Mx(m) => Some(m.exchange),
            _ => None,
        })
    }
    fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
        records(dns::reverse(&ip.to_string()), |r| match r {
            Rdata::Ptr(p) => Some(p),
            _ => None,
        })
    }
}

/// Checks and builds the outcome; `header` false leaves headers out (a
/// second recipient of the same transaction).
fn check(session: &Session, envelope: &Envelope, header: bool) -> Outcome {
    let cfg = match restrict::cached(Config::from_json) {
        Ok(c) => c,
        Err(e) => return restrict::config_error(&e),
    };
    // Trusted and authenticated clients are not checked (policyd-spf's
    // skip_addresses, and Postfix's order: permit_* first).
    if session.trusted() || session.auth_user().is_some() {
        return Outcome::cont();
    }
    let ip_text = session.client_ip();
    let Ok(ip) = ip_text.parse::<IpAddr>() else {
        log::warn(&format!(
            "client address {ip_text:?} is not an IP address: not checked"
        ));
        return Outcome::cont();
    };
    let helo = session.helo().unwrap_or_default();
    let sender = envelope.mail_from();
    let d = policy::decide(
        cfg,
        &HostDns,
        &Input {
            ip,
            helo: &helo,
            sender: &sender,
        },
    );
    let r = d.verdict.result.name();
    log::info(&format!(
        "spf={r} identity={} client={ip} helo={helo} from=<{sender}>: {}",
        d.identity, d.verdict.why
    ));
    let mut out = match d.refuse {
        Some((true, r)) => Outcome::tempfail(r.code, r.enhanced, r.text),
        Some((false, r)) => Outcome::reject(r.code, r.enhanced, r.text),
        None => Outcome::cont(),
    };
    if let Some((symbol, points)) = d.score {
        out = out.score(&symbol, points, Some(&d.verdict.why));
    }
    if header {
        for (name, value) in d.headers {
            out = out.add_header(name, value);
        }
    }
    out
}

struct Plugin;

impl mail_hook::Guest for Plugin {
    fn on_mail(session: &Session, envelope: &Envelope) -> Outcome {
        check(session, envelope, true)
    }
}

impl rcpt_hook::Guest for Plugin {
    fn on_rcpt(session: &Session, envelope: &Envelope, _r: String, _p: Vec<Param>) -> Outcome {
        // One header per message: with the first accepted recipient.
        check(session, envelope, envelope.rcpt_count() == 0)
    }
}

impl configure::Guest for Plugin {
    fn check_config() -> Result<(), String> {
        Config::from_json(&postern_sdk::host::config()).map(|_| ())
    }
}

export!(Plugin);
