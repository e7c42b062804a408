//! Test fixture: the `dns` and `kv` capabilities (since 0.2.2, grants
//! `dns` and `kv`) and `session.client-rdns`, driven by the entry's config.
//!
//! Config: `ops`, a list of operations run in order at RCPT (the report
//! is the text of a `550 5.7.1` reply, or with `report = "log"` a log
//! line `caps: REPORT` and the next entry decides) and at DATA (the
//! report is the value of an `X-Caps` header; the message is accepted);
//! `by_rcpt` maps a recipient to its own list of ops. Each op's result is
//! one item of the report, items joined by ` | `:
//!
//! - `a|aaaa|mx|txt|ptr NAME`: one lookup;
//! - `batch TYPE:NAME,TYPE:NAME...`: one `lookup-batch` (results in order);
//! - `rev IP`: `reverse`;
//! - `lists ZONE:SUBJECT,...`: `check-lists`;
//! - `get K`, `set K V [TTL]`, `add K V [TTL]`, `incr K DELTA [TTL]`,
//!   `del K`: the store;
//! - `rdns`: `session.client-rdns`; `ptr-opt`: `session.client-ptr`.
//!
//! Results print as `answers(a=127.0.0.1,mx=10 mx.example.test)`,
//! `nxdomain`, `no-data`, `temporary(WHY)`, `invalid(WHY)`, `listed(CODES;
//! TEXTS)`, `not-listed`, `ok`, `value(V)`, `none`, `true`/`false`, a
//! number, `unavailable(WHY)`, `not-a-number`.

#![allow(missing_docs)]

// `full` includes the `resolver` and `store` worlds: the interfaces the
// SDK does not remap (dns, kv) are generated here.
postern_sdk::bindings!(path: "../../../wit", world: "postern:filter/full");

use exports::postern::filter::{
    configure, connect_hook, data_hook, helo_hook, mail_hook, rcpt_hook,
};
use postern::filter::dns::{self, ListQuery, ListResult, LookupResult, Query, RecordType};
use postern::filter::kv::{self, KvError};
use postern_sdk::types::RdnsStatus;
use postern_sdk::{Envelope, Message, Outcome, Param, Session};

#[derive(serde::Deserialize)]
struct Config {
    #[serde(default)]
    ops: Vec<String>,
    #[serde(default)]
    by_rcpt: std::collections::HashMap<String, Vec<String>>,
    #[serde(default)]
    report: Option<String>,
}

fn record_type(t: &str) -> Option<RecordType> {
    Some(match t {
        "a" => RecordType::A,
        "aaaa" => RecordType::Aaaa,
        "mx" => RecordType::Mx,
        "txt" => RecordType::Txt,
        "ptr" => RecordType::Ptr,
        _ => return None,
    })
}

fn lookup(r: LookupResult) -> String {
    match r {
        LookupResult::Answers(v) => {
            let items: Vec<String> = v
                .into_iter()
                .map(|d| match d {
                    dns::Rdata::A(a) => format!("a={a}"),
                    dns::Rdata::Aaaa(a) => format!("aaaa={a}"),
                    dns::Rdata::Mx(m) => format!("mx={} {}", m.preference, m.exchange),
                    dns::Rdata::Txt(t) => format!("txt={t}"),
                    dns::Rdata::Ptr(p) => format!("ptr={p}"),
                })
                .collect();
            format!("answers({})", items.join(","))
        }
        LookupResult::Nxdomain => "nxdomain".into(),
        LookupResult::NoData => "no-data".into(),
        LookupResult::Temporary(e) => format!("temporary({e})"),
        LookupResult::Invalid(e) => format!("invalid({e})"),
    }
}

fn list(r: ListResult) -> String {
    match r {
        ListResult::Listed(l) => format!("listed({};{})", l.codes.join(","), l.texts.join(",")),
        ListResult::NotListed => "not-listed".into(),
        ListResult::Temporary(e) => format!("temporary({e})"),
        ListResult::Invalid(e) => format!("invalid({e})"),
    }
}

fn kv_error(e: KvError) -> String {
    match e {
        KvError::Unavailable(e) => format!("unavailable({e})"),
        KvError::Invalid(e) => format!("invalid({e})"),
        KvError::NotANumber => "not-a-number".into(),
    }
}

fn rdns(s: &Session) -> String {
    match s.client_rdns() {
        RdnsStatus::Confirmed(n) => format!("confirmed({n})"),
        RdnsStatus::Unconfirmed(n) => format!("unconfirmed({n})"),
        RdnsStatus::None => "none".into(),
        RdnsStatus::Temporary => "temporary".into(),
        RdnsStatus::NotLookedUp => "not-looked-up".into(),
    }
}

fn pairs(arg: &str) -> Vec<(String, String)> {
    arg.split(',')
        .filter_map(|p| p.split_once(':'))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn ttl(arg: Option<&&str>) -> Option<u32> {
    arg.and_then(|t| t.parse().ok())
}

fn run(session: &Session, op: &str) -> String {
    let w: Vec<&str> = op.split_whitespace().collect();
    match (w.first().copied().unwrap_or(""), &w[1.min(w.len())..]) {
        (t, [name]) if record_type(t).is_some() => {
            lookup(dns::lookup(name, record_type(t).unwrap_or(RecordType::A)))
        }
        ("batch", [arg]) => {
            let queries: Vec<Query> = pairs(arg)
                .into_iter()
                .map(|(t, name)| Query {
                    name,
                    type_: record_type(&t).unwrap_or(RecordType::A),
                })
                .collect();
            let out: Vec<String> = dns::lookup_batch(&queries)
                .into_iter()
                .map(lookup)
                .collect();
            format!("[{}]", out.join(" ; "))
        }
        ("rev", [ip]) => lookup(dns::reverse(ip)),
        ("lists", [arg]) => {
            let queries: Vec<ListQuery> = pairs(arg)
                .into_iter()
                .map(|(zone, subject)| ListQuery { zone, subject })
                .collect();
            let out: Vec<String> = dns::check_lists(&queries).into_iter().map(list).collect();
            format!("[{}]", out.join(" ; "))
        }
        ("get", [k]) => match kv::get(k) {
            Ok(Some(v)) => format!("value({})", String::from_utf8_lossy(&v)),
            Ok(None) => "none".into(),
            Err(e) => kv_error(e),
        },
        ("set", [k, v, rest @ ..]) => match kv::set(k, v.as_bytes(), ttl(rest.first())) {
            Ok(()) => "ok".into(),
            Err(e) => kv_error(e),
        },
        ("add", [k, v, rest @ ..]) => match kv::add(k, v.as_bytes(), ttl(rest.first())) {
            Ok(b) => b.to_string(),
            Err(e) => kv_error(e),
        },
        ("incr", [k, d, rest @ ..]) => {
            match kv::increment(k, d.parse().unwrap_or(0), ttl(rest.first())) {
                Ok(n) => n.to_string(),
                Err(e) => kv_error(e),
            }
        }
        ("del", [k]) => match kv::delete(k) {
            Ok(b) => b.to_string(),
            Err(e) => kv_error(e),
        },
        ("rdns", []) => rdns(session),
        ("ptr-opt", []) => session.client_ptr().unwrap_or_else(|| "no-ptr".into()),
        _ => format!("bad op {op:?}"),
    }
}

/// The report of the entry's ops (for `rcpt`, its own if it has some),
/// and whether it goes to the log.
fn report(session: &Session, rcpt: Option<&str>) -> Result<(String, bool), String> {
    let cfg: Config = postern_sdk::config()?;
    let ops = rcpt.and_then(|r| cfg.by_rcpt.get(r)).unwrap_or(&cfg.ops);
    let items: Vec<String> = ops.iter().map(|op| run(session, op)).collect();
    Ok((items.join(" | "), cfg.report.as_deref() == Some("log")))
}

struct Caps;

impl connect_hook::Guest for Caps {
    fn on_connect(_: &Session) -> Outcome {
        Outcome::cont()
    }
}

impl helo_hook::Guest for Caps {
    fn on_helo(_: &Session) -> Outcome {
        Outcome::cont()
    }
}

impl mail_hook::Guest for Caps {
    fn on_mail(_: &Session, _: &Envelope) -> Outcome {
        Outcome::cont()
    }
}

impl rcpt_hook::Guest for Caps {
    fn on_rcpt(s: &Session, _: &Envelope, rcpt: String, _: Vec<Param>) -> Outcome {
        match report(s, Some(&rcpt)) {
            Ok((r, true)) => {
                postern_sdk::log::info(&format!("caps: {r}"));
                Outcome::cont()
            }
            Ok((r, false)) => Outcome::reject(550, "5.7.1", r),
            Err(e) => Outcome::tempfail(451, "4.3.5", e),
        }
    }
}

impl data_hook::Guest for Caps {
    fn on_data(s: &Session, _: &Envelope, _: &Message) -> Outcome {
        match report(s, None) {
            Ok((r, _)) => Outcome::cont().add_header("X-Caps", r),
            Err(e) => Outcome::tempfail(451, "4.3.5", e),
        }
    }
}

impl configure::Guest for Caps {
    fn check_config() -> Result<(), String> {
        postern_sdk::config::<Config>().map(|_| ())
    }
}

export!(Caps);
