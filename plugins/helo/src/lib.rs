//! `helo`: Postfix's HELO/EHLO hostname restrictions as a Postern plugin
//! (`reject_invalid_helo_hostname`, `reject_non_fqdn_helo_hostname`,
//! `reject_unknown_helo_hostname`). See README.md for the config keys
//! and replies.
//!
//! It judges the HELO name at whichever stage its chain entry runs: at
//! `helo` (Postfix `smtpd_helo_restrictions` with `smtpd_delay_reject =
//! no`) or at `mail`/`rcpt` (Postfix's default, `smtpd_delay_reject =
//! yes`). A client that sent no HELO is not judged (Postfix does the
//! same; require HELO in the listener).

#![allow(missing_docs)] // generated bindings

pub mod check;

postern_sdk::bindings!(path: "../../wit", world: "postern:filter/restriction");

use check::Config;
use exports::postern::filter::{configure, connect_hook, helo_hook, mail_hook, rcpt_hook};
use postern_sdk::resolve::HostResolver;
use postern_sdk::restrict::{Client, cached, config_error};
use postern_sdk::{Envelope, Outcome, Param, Session};

struct Helo;

fn judge(session: &Session) -> Outcome {
    let config = match cached(Config::from_json) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let client = Client::from_session(session);
    match client.helo {
        Some(ref helo) if !config.exempt().applies(&client) => {
            check::check_helo(config, helo, &HostResolver)
        }
        _ => Outcome::cont(),
    }
}

impl connect_hook::Guest for Helo {
    /// Nothing to judge before HELO.
    fn on_connect(_session: &Session) -> Outcome {
        Outcome::cont()
    }
}

impl helo_hook::Guest for Helo {
    fn on_helo(session: &Session) -> Outcome {
        judge(session)
    }
}

impl mail_hook::Guest for Helo {
    fn on_mail(session: &Session, _envelope: &Envelope) -> Outcome {
        judge(session)
    }
}

impl rcpt_hook::Guest for Helo {
    fn on_rcpt(session: &Session, _e: &Envelope, _rcpt: String, _p: Vec<Param>) -> Outcome {
        judge(session)
    }
}

impl configure::Guest for Helo {
    fn check_config() -> Result<(), String> {
        Config::from_json(&postern_sdk::host::config()).map(|_| ())
    }
}

export!(Helo);
