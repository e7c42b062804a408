//! `client`: Postfix's client hostname restrictions as a Postern plugin
//! (`reject_unknown_reverse_client_hostname`,
//! `reject_unknown_client_hostname`), from the reverse DNS the host looked
//! up when the client connected (`session.client-rdns`): no DNS lookup of
//! its own. See README.md for the config keys and replies.
//!
//! It judges at whichever stage its chain entry runs (Postfix
//! `smtpd_client_restrictions` at connect, or at RCPT with
//! `smtpd_delay_reject = yes`).

#![allow(missing_docs)] // generated bindings

pub mod check;

postern_sdk::bindings!(path: "../../wit", world: "postern:filter/restriction");

use check::Config;
use exports::postern::filter::{configure, connect_hook, helo_hook, mail_hook, rcpt_hook};
use postern_sdk::restrict::{Client, cached, config_error};
use postern_sdk::{Envelope, Outcome, Param, Session};

struct ClientCheck;

fn judge(session: &Session) -> Outcome {
    match cached(Config::from_json) {
        Ok(config) => check::check_client(config, &Client::from_session(session)),
        Err(e) => config_error(&e),
    }
}

impl connect_hook::Guest for ClientCheck {
    fn on_connect(session: &Session) -> Outcome {
        judge(session)
    }
}

impl helo_hook::Guest for ClientCheck {
    fn on_helo(session: &Session) -> Outcome {
        judge(session)
    }
}

impl mail_hook::Guest for ClientCheck {
    fn on_mail(session: &Session, _envelope: &Envelope) -> Outcome {
        judge(session)
    }
}

impl rcpt_hook::Guest for ClientCheck {
    fn on_rcpt(session: &Session, _e: &Envelope, _rcpt: String, _p: Vec<Param>) -> Outcome {
        judge(session)
    }
}

impl configure::Guest for ClientCheck {
    fn check_config() -> Result<(), String> {
        Config::from_json(&postern_sdk::host::config()).map(|_| ())
    }
}

export!(ClientCheck);
