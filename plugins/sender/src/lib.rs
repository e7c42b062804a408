//! `sender`: Postfix's sender address restrictions as a Postern plugin
//! (`reject_non_fqdn_sender`, `reject_unknown_sender_domain` with RFC 7505
//! null MX). See README.md for the config keys and replies.
//!
//! It judges MAIL FROM at whichever stage its chain entry runs: `mail`
//! (Postfix `smtpd_sender_restrictions` with `smtpd_delay_reject = no`)
//! or `rcpt` (Postfix's default). At `connect` and `helo` there is no
//! sender yet: it lets everything pass.

#![allow(missing_docs)] // generated bindings

pub mod check;

postern_sdk::bindings!(path: "../../wit", world: "postern:filter/restriction");

use exports::postern::filter::{configure, connect_hook, helo_hook, mail_hook, rcpt_hook};
use postern_sdk::resolve::HostResolver;
use postern_sdk::restrict::{Client, cached, config_error};
use postern_sdk::{Envelope, Outcome, Param, Session};

struct Sender;

fn judge(session: &Session, envelope: &Envelope) -> Outcome {
    let config = match cached(check::from_json) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    if config.exempt.applies(&Client::from_session(session)) {
        return Outcome::cont();
    }
    config.check(&envelope.mail_from(), &HostResolver)
}

impl connect_hook::Guest for Sender {
    fn on_connect(_session: &Session) -> Outcome {
        Outcome::cont()
    }
}

impl helo_hook::Guest for Sender {
    fn on_helo(_session: &Session) -> Outcome {
        Outcome::cont()
    }
}

impl mail_hook::Guest for Sender {
    fn on_mail(session: &Session, envelope: &Envelope) -> Outcome {
        judge(session, envelope)
    }
}

impl rcpt_hook::Guest for Sender {
    fn on_rcpt(session: &Session, envelope: &Envelope, _rcpt: String, _p: Vec<Param>) -> Outcome {
        judge(session, envelope)
    }
}

impl configure::Guest for Sender {
    fn check_config() -> Result<(), String> {
        check::from_json(&postern_sdk::host::config()).map(|_| ())
    }
}

export!(Sender);
