//! `dnsbl`: Postfix's DNSBL and RHSBL restrictions as a Postern plugin
//! (`reject_rbl_client`, `reject_rhsbl_client`,
//! `reject_rhsbl_reverse_client`, `reject_rhsbl_helo`,
//! `reject_rhsbl_sender`, `reject_rhsbl_recipient`), each list refusing
//! with Postfix's reply and the list's TXT, or adding to the score. All
//! lists are asked in one `check-lists` call. See README.md.
//!
//! At each stage it asks what is known there: the client at `connect`,
//! also the HELO name from `helo`, the sender from `mail`, the recipient
//! at `rcpt`. Put the entry where Postfix had the restriction (at `rcpt`
//! for Postfix's default `smtpd_delay_reject = yes`).

#![allow(missing_docs)] // generated bindings

pub mod check;
pub mod config;

postern_sdk::bindings!(path: "../../wit", world: "postern:filter/restriction");

use check::Subjects;
use config::Config;
use exports::postern::filter::{configure, connect_hook, helo_hook, mail_hook, rcpt_hook};
use postern_sdk::resolve::HostResolver;
use postern_sdk::restrict::{Client, cached, config_error};
use postern_sdk::{Envelope, Outcome, Param, Session};

struct Dnsbl;

fn judge(session: &Session, sender: Option<&str>, recipient: Option<&str>) -> Outcome {
    let config = match cached(Config::from_json) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let client = Client::from_session(session);
    if config.exempt().applies(&client) {
        return Outcome::cont();
    }
    let subjects = Subjects {
        client: Some(&client),
        sender,
        recipient,
    };
    check::check_lists(config, &subjects, &HostResolver)
}

impl connect_hook::Guest for Dnsbl {
    fn on_connect(session: &Session) -> Outcome {
        judge(session, None, None)
    }
}

impl helo_hook::Guest for Dnsbl {
    fn on_helo(session: &Session) -> Outcome {
        judge(session, None, None)
    }
}

impl mail_hook::Guest for Dnsbl {
    fn on_mail(session: &Session, envelope: &Envelope) -> Outcome {
        judge(session, Some(&envelope.mail_from()), None)
    }
}

impl rcpt_hook::Guest for Dnsbl {
    fn on_rcpt(session: &Session, envelope: &Envelope, rcpt: String, _p: Vec<Param>) -> Outcome {
        judge(session, Some(&envelope.mail_from()), Some(&rcpt))
    }
}

impl configure::Guest for Dnsbl {
    fn check_config() -> Result<(), String> {
        Config::from_json(&postern_sdk::host::config()).map(|_| ())
    }
}

export!(Dnsbl);
