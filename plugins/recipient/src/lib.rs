//! `recipient`: Postfix's recipient address restrictions as a Postern
//! plugin (`reject_non_fqdn_recipient`, `reject_unknown_recipient_domain`
//! with RFC 7505 null MX). See README.md for the config keys and replies.
//!
//! Only its `rcpt` hook judges (the other hooks let everything pass);
//! the host calls it for recipients its routing accepted.

#![allow(missing_docs)] // generated bindings

pub mod check;

postern_sdk::bindings!(path: "../../wit", world: "postern:filter/restriction");

use exports::postern::filter::{configure, connect_hook, helo_hook, mail_hook, rcpt_hook};
use postern_sdk::resolve::HostResolver;
use postern_sdk::restrict::{Client, cached, config_error};
use postern_sdk::{Envelope, Outcome, Param, Session};

struct Recipient;

impl connect_hook::Guest for Recipient {
    fn on_connect(_session: &Session) -> Outcome {
        Outcome::cont()
    }
}

impl helo_hook::Guest for Recipient {
    fn on_helo(_session: &Session) -> Outcome {
        Outcome::cont()
    }
}

impl mail_hook::Guest for Recipient {
    fn on_mail(_session: &Session, _envelope: &Envelope) -> Outcome {
        Outcome::cont()
    }
}

impl rcpt_hook::Guest for Recipient {
    fn on_rcpt(session: &Session, _e: &Envelope, recipient: String, _p: Vec<Param>) -> Outcome {
        let config = match cached(check::from_json) {
            Ok(c) => c,
            Err(e) => return config_error(&e),
        };
        if config.exempt.applies(&Client::from_session(session)) {
            return Outcome::cont();
        }
        config.check(&recipient, &HostResolver)
    }
}

impl configure::Guest for Recipient {
    fn check_config() -> Result<(), String> {
        check::from_json(&postern_sdk::host::config()).map(|_| ())
    }
}

export!(Recipient);
