//! `access`: Postfix access(5) tables as a Postern plugin.
//!
//! Config (one TOML table per chain entry; every table is optional):
//!
//! ```toml
//! [[chain.rcpt]]
//! plugin = "access"
//! config.authenticated = "OK"   # permit_sasl_authenticated: checked first
//! config.client = { "192.0.2.0/24" = "REJECT", "trusted.example" = "OK" }
//! config.helo = { "localhost" = "REJECT Bad HELO" }
//! config.sender = { "blocked.test" = "REJECT", "friend@blocked.test" = "OK" }
//! config.recipient = { "spamtrap@example.test" = "DISCARD", "info@example.test" = "PREPEND X-Info: yes" }
//!
//! # Postfix regexp: tables, consulted after the exact table of the same
//! # kind as a second restriction (only OK, REJECT, DEFER or DISCARD there
//! # ends the lookup); first match wins (regex-lite syntax, case-insensitive
//! # for ASCII). Client patterns see the name (`unknown` if not verified),
//! # then the address; sender patterns see `<>` for the null sender.
//! config.client_regexp = [['^(dsl|dyn)[-.0-9]*\.', "REJECT 5.7.1 Dynamic address"]]
//! config.helo_regexp = [['^\[?[0-9.]+\]?$', "REJECT Bare IP address in HELO"]]
//! config.sender_regexp = [['@bulk[0-9]+\.example$', "REJECT"]]
//! config.recipient_regexp = [['^spamtrap[0-9]*@', "DISCARD"]]
//!
//! [[chain.data]]                 # Postfix header_checks, in order (regex-lite
//!                                # syntax, case-insensitive for ASCII)
//! plugin = "access"
//! config.header_checks = [["^Subject:.*viagra", "REJECT spam"], ["^X-Mailer: bulk", "HOLD"]]
//! ```
//!
//! At each hook the tables that have data are consulted in Postfix order —
//! client, HELO, sender, recipient — and the first definitive action wins.
//! Actions: `OK`, `DUNNO`, `REJECT [x.y.z] [text]`, `DEFER [x.y.z] [text]`,
//! `4NN/5NN [x.y.z] text`, `DISCARD [text]`, `HOLD [text]`,
//! `PREPEND Name: value`, `WARN text`. As in Postfix, `HOLD` marks the
//! message and goes on (a later `REJECT` still rejects, a later `OK` still
//! holds). Client keys: names of the verified PTR (and parent domains;
//! `unknown` when there is none), looked up first as in Postfix, then
//! addresses, CIDR networks (the longest prefix wins) and leading octets
//! (`198.51.100`). Address keys:
//! `user@domain`, `domain` and its subdomains, `user@`, `<>`; with
//! `recipient_delimiter` (default `+`) `user+ext@domain` also matches
//! `user@domain` and `user@`.

#![allow(missing_docs)] // generated bindings

pub mod rules;

postern_sdk::bindings!(path: "../../wit", world: "postern:filter/plugin");

use exports::postern::filter::{
    configure, connect_hook, data_hook, helo_hook, mail_hook, rcpt_hook,
};
use postern_sdk::{Envelope, Message, Outcome, Param, Session, log, restrict};
use rules::{Action, Rules};

struct Access;

/// The parsed tables of the current call's entry (one instance serves
/// every entry, each with its own config; each is parsed once).
fn rules() -> Result<&'static Rules, String> {
    restrict::cached(Rules::from_json)
}

/// One lookup result in Postfix wording.
struct Hit<'a> {
    action: &'a Action,
    /// What was looked up, shown in `<...>`.
    key: String,
    /// "Sender address", "Client host", ...
    what: &'static str,
}

/// Applies hits in order; the first definitive one decides.
fn decide(hits: Vec<Hit<'_>>) -> Outcome {
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut decided = None;
    let mut hold = None;
    for hit in hits {
        let text = |t: &Option<String>| {
            format!(
                "<{}>: {} rejected: {}",
                hit.key,
                hit.what,
                t.as_deref().unwrap_or("Access denied")
            )
        };
        let outcome = match hit.action {
            Action::Ok => Outcome::accept(),
            Action::Dunno => continue,
            Action::Reject {
                code,
                enhanced,
                text: t,
            } => Outcome::reject(*code, enhanced.as_deref().unwrap_or("5.7.1"), text(t)),
            Action::Defer {
                code,
                enhanced,
                text: t,
            } => Outcome::tempfail(*code, enhanced.as_deref().unwrap_or("4.7.1"), text(t)),
            Action::Discard(t) => Outcome::discard(
                t.clone()
                    .unwrap_or_else(|| format!("<{}> in the access table", hit.key)),
            ),
            Action::Hold(t) => {
                // Postfix: HOLD marks the message and goes on (DUNNO); a
                // later REJECT still rejects.
                hold.get_or_insert_with(|| {
                    Outcome::quarantine(
                        t.clone()
                            .unwrap_or_else(|| format!("<{}> in the access table", hit.key)),
                    )
                });
                continue;
            }
            Action::Prepend(name, value) => {
                headers.push((name.clone(), value.clone()));
                continue;
            }
            Action::Warn(t) => {
                log::warn(&format!("<{}>: {}: {t}", hit.key, hit.what));
                continue;
            }
        };
        decided = Some(outcome);
        break;
    }
    // A HOLD stands against a later OK (the message is accepted, and
    // held); a REJECT, DEFER or DISCARD wins over it.
    let mut outcome = match (decided, hold) {
        (Some(d), Some(h)) if matches!(d.verdict, postern_sdk::Verdict::Accept) => h,
        (d, h) => d.or(h).unwrap_or_else(Outcome::cont),
    };
    for (name, value) in headers {
        outcome = outcome.add_header(&name, value);
    }
    outcome
}

/// Runs the tables that the data available at this stage allows. Only
/// the fields a configured table needs are fetched from the host.
fn check(session: &Session, envelope: Option<&Envelope>, recipient: Option<&str>) -> Outcome {
    let rules = match rules() {
        Ok(r) => r,
        Err(e) => return restrict::config_error(&e),
    };
    let mut hits = Vec::new();
    if let Some(a) = rules.authenticated()
        && let Some(user) = session.auth_user()
    {
        hits.push(Hit {
            action: a,
            key: user,
            what: "Authenticated user",
        });
    }
    // Each kind's exact table, then its regexp table: every action found
    // goes to `decide` in order.
    let mut found = |f: rules::Found<'static>, key: &str, what: &'static str| {
        for action in f.actions() {
            hits.push(Hit {
                action,
                key: key.to_string(),
                what,
            });
        }
    };
    if rules.has_client() {
        let ip = session.client_ip();
        let ptr = session.client_ptr();
        let f = rules.client(&ip, ptr.as_deref());
        if !f.is_empty() {
            // Built only on a hit: this runs on every call.
            let name = ptr.as_deref().unwrap_or("unknown");
            found(f, &format!("{name}[{ip}]"), "Client host");
        }
    }
    if rules.has_helo()
        && let Some(helo) = session.helo()
    {
        found(rules.helo(&helo), &helo, "Helo command");
    }
    if rules.has_sender()
        && let Some(env) = envelope
    {
        let sender = env.mail_from();
        found(rules.sender(&sender), &sender, "Sender address");
    }
    if rules.has_recipient()
        && let Some(r) = recipient
    {
        found(rules.recipient(r), r, "Recipient address");
    }
    decide(hits)
}

impl connect_hook::Guest for Access {
    fn on_connect(session: &Session) -> Outcome {
        check(session, None, None)
    }
}

impl helo_hook::Guest for Access {
    fn on_helo(session: &Session) -> Outcome {
        check(session, None, None)
    }
}

impl mail_hook::Guest for Access {
    fn on_mail(session: &Session, envelope: &Envelope) -> Outcome {
        check(session, Some(envelope), None)
    }
}

impl rcpt_hook::Guest for Access {
    fn on_rcpt(
        session: &Session,
        envelope: &Envelope,
        recipient: String,
        _params: Vec<Param>,
    ) -> Outcome {
        check(session, Some(envelope), Some(&recipient))
    }
}

impl data_hook::Guest for Access {
    fn on_data(_session: &Session, _envelope: &Envelope, message: &Message) -> Outcome {
        let rules = match rules() {
            Ok(r) => r,
            Err(e) => return restrict::config_error(&e),
        };
        if !rules.has_header_checks() {
            return Outcome::cont();
        }
        let hits: Vec<Hit<'_>> = message
            .headers()
            .into_iter()
            .filter_map(|h| {
                let line = format!("{}: {}", h.name, h.value);
                rules.header(&line).map(|action| Hit {
                    action,
                    key: h.name.clone(),
                    what: "Message header",
                })
            })
            .collect();
        decide(hits)
    }
}

impl configure::Guest for Access {
    fn check_config() -> Result<(), String> {
        Rules::from_json(&postern_sdk::host::config())?.validate()
    }
}

export!(Access);
