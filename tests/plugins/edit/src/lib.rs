//! Test fixture: header edits by host call (`postern:filter/edit`, since
//! 0.2.1), which needs `grants = ["edit"]`.
//!
//! Config: `mode` =
//! - `edit`: adds `X-Edit: by host call`, changes the first `Subject` to
//!   `edited`, removes every `X-Remove-Me`; at RCPT also adds
//!   `X-Edit-Rcpt: <recipient>`;
//! - `refused`: asks for three edits the host refuses and adds
//!   `X-Edit-Errors` naming the errors (through the outcome);
//! - `both`: the same `X-Both: yes` by host call and in the outcome (the
//!   host keeps one);
//! - `call-flood`: 100 edits in one call (the host takes 64);
//! - `tx-flood`: 20 different edits per recipient (the host takes 256 per
//!   transaction).

#![allow(missing_docs)]

// `full` includes the `editor` world: an interface the SDK does not
// remap is generated here (the SDK's own `edit` is used below).
postern_sdk::bindings!(path: "../../../wit", world: "postern:filter/full");

use exports::postern::filter::{
    configure, connect_hook, data_hook, helo_hook, mail_hook, rcpt_hook,
};
use postern_sdk::edit::{self, EditError};
use postern_sdk::{Envelope, Message, Outcome, Param, Session};

#[derive(serde::Deserialize)]
struct Config {
    mode: String,
}

fn act(rcpt: Option<&str>) -> Outcome {
    let cfg: Config = match postern_sdk::config() {
        Ok(c) => c,
        Err(e) => return Outcome::tempfail(451, "4.3.5", e),
    };
    let must = |r: Result<(), EditError>| {
        if let Err(e) = r {
            postern_sdk::log::error(&format!("edit refused: {e:?}"));
        }
    };
    match cfg.mode.as_str() {
        "edit" => {
            if let Some(r) = rcpt {
                must(edit::add_header("X-Edit-Rcpt", r));
                return Outcome::cont();
            }
            must(edit::add_header("X-Edit", "by host call"));
            must(edit::change_header("Subject", 0, "edited"));
            must(edit::remove_header("X-Remove-Me", None));
            Outcome::cont()
        }
        "refused" => {
            let errors = [
                edit::add_header("Bad:Name", "v"),
                edit::add_header("Return-Path", "<x@y.test>"),
                edit::add_header("X-Long", &"v".repeat(17 << 10)),
            ];
            let names: Vec<&str> = errors
                .iter()
                .map(|e| match e {
                    Ok(()) => "ok",
                    Err(EditError::InvalidName) => "invalid-name",
                    Err(EditError::HostOnly) => "host-only",
                    Err(EditError::ValueTooLong) => "value-too-long",
                })
                .collect();
            Outcome::cont().add_header("X-Edit-Errors", names.join(" "))
        }
        "both" => {
            must(edit::add_header("X-Both", "yes"));
            Outcome::cont().add_header("X-Both", "yes")
        }
        "call-flood" => {
            for i in 0..100 {
                must(edit::add_header(&format!("X-Flood-{i}"), "yes"));
            }
            Outcome::cont()
        }
        "tx-flood" => {
            for i in 0..20 {
                must(edit::add_header(
                    &format!("X-Flood-{i}"),
                    rcpt.unwrap_or("data"),
                ));
            }
            Outcome::cont()
        }
        _ => Outcome::cont(),
    }
}

struct Edit;

impl connect_hook::Guest for Edit {
    fn on_connect(_: &Session) -> Outcome {
        Outcome::cont()
    }
}

impl helo_hook::Guest for Edit {
    fn on_helo(_: &Session) -> Outcome {
        Outcome::cont()
    }
}

impl mail_hook::Guest for Edit {
    fn on_mail(_: &Session, _: &Envelope) -> Outcome {
        Outcome::cont()
    }
}

impl rcpt_hook::Guest for Edit {
    fn on_rcpt(_: &Session, _: &Envelope, rcpt: String, _: Vec<Param>) -> Outcome {
        act(Some(&rcpt))
    }
}

impl data_hook::Guest for Edit {
    fn on_data(_: &Session, _: &Envelope, _: &Message) -> Outcome {
        act(None)
    }
}

impl configure::Guest for Edit {
    fn check_config() -> Result<(), String> {
        postern_sdk::config::<Config>().map(|_| ())
    }
}

export!(Edit);
