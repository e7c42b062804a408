//! Test fixture: misbehaves on command, to prove that a bad plugin costs
//! one 4xx (or is skipped) and never the daemon.
//!
//! Config: `mode` = ok | loop | burn | sleep | hog | resources | trap |
//! flood | chatty | reject | score | header | strip | rewrite | quarantine |
//! discard | refuse-config | sleep-config | header-flood (64 different
//! header edits per recipient: the transaction's bound stops it) | huge (a
//! 32 MiB value in its outcome: more than a guest may hand the host at
//! once) | stderr (writes lines to stderr); `when_rcpt` = only act when a
//! recipient starts with this prefix; `field` (default `X-Repeat`) = the
//! field `strip` removes every copy of and `rewrite` changes 64 copies of
//! (the most one call may ask for).

#![allow(missing_docs)]

postern_sdk::bindings!(path: "../../../wit", world: "postern:filter/plugin");

use exports::postern::filter::{
    configure, connect_hook, data_hook, helo_hook, mail_hook, rcpt_hook,
};
use postern_sdk::{Envelope, Message, Outcome, Param, Session};

#[allow(unsafe_code)]
mod raw {
    // The guest's WASI clock, imported directly: the SDK does not expose
    // pollables, and the "resources" mode must be able to leak them.
    #[link(wasm_import_module = "wasi:clocks/monotonic-clock@0.2.6")]
    unsafe extern "C" {
        #[link_name = "subscribe-duration"]
        pub safe fn subscribe_duration(when: u64) -> i32;
    }
}
use raw::subscribe_duration;

/// Rounds of the "burn" mode's busy work.
const BURN_ROUNDS: u64 = 100_000_000;

#[derive(serde::Deserialize)]
struct Config {
    mode: String,
    #[serde(default)]
    when_rcpt: Option<String>,
    #[serde(default)]
    field: Option<String>,
}

fn act(rcpts: &[&str]) -> Outcome {
    let cfg: Config = match postern_sdk::config() {
        Ok(c) => c,
        Err(e) => return Outcome::tempfail(451, "4.3.5", e),
    };
    if let Some(prefix) = &cfg.when_rcpt
        && !rcpts.iter().any(|r| r.starts_with(prefix.as_str()))
    {
        return Outcome::cont();
    }
    match cfg.mode.as_str() {
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        // Waits in a WASI clock pollable: no guest code runs, so only the
        // host's wall-clock backstop can end it.
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_secs(3600));
            Outcome::cont()
        }
        "hog" => {
            let mut keep: Vec<Vec<u8>> = Vec::new();
            loop {
                keep.push(vec![0xAB; 1 << 20]);
                std::hint::black_box(&keep);
            }
        }
        // About 0.18 s of CPU on the machine the tests were written on:
        // well within a 500 ms limit, however busy the machine is.
        "burn" => {
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            for _ in 0..BURN_ROUNDS {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x = std::hint::black_box(x);
            }
            Outcome::cont().score("BURNED", (x & 1) as f64, None)
        }
        // Pollables it never drops: each is an entry in the host's
        // resource table. Logs how many it holds as it goes.
        "resources" => {
            let mut held: u64 = 0;
            loop {
                std::hint::black_box(subscribe_duration(3_600_000_000_000));
                held += 1;
                if held.is_power_of_two() && held >= 256 {
                    postern_sdk::log::info(&format!("resources: {held} pollables held"));
                }
            }
        }
        "trap" => panic!("misbehave: trap on purpose"),
        "reject" => Outcome::reject(550, "5.7.1", "misbehave says no"),
        "score" => Outcome::cont().score("MISBEHAVE", 3.0, Some("test score")),
        "header" => Outcome::cont().add_header("X-Misbehave", "yes"),
        "strip" => Outcome::cont().remove_header(cfg.field.as_deref().unwrap_or("X-Repeat")),
        "rewrite" => {
            let name = cfg.field.as_deref().unwrap_or("X-Repeat");
            let mut o = Outcome::cont();
            // Spread over the copies, so that each change moves much of
            // the message if changes are made one splice at a time.
            for i in 0..64 {
                o.actions.push(postern_sdk::Action::ChangeHeader(
                    postern_sdk::HeaderChange {
                        name: name.to_string(),
                        index: i * 997,
                        value: format!("rewritten {i}"),
                    },
                ));
            }
            o
        }
        "chatty" => {
            for i in 0..1000 {
                postern_sdk::log::info(&format!("chatty line {i}"));
            }
            Outcome::cont()
        }
        "flood" => (0..100_000).fold(Outcome::cont(), |o, i| {
            o.add_header(&format!("X-Flood-{i}"), "yes")
        }),
        "header-flood" => header_flood(rcpts),
        "huge" => huge(),
        "stderr" => {
            eprintln!("misbehave: first line\nmisbehave: second line");
            Outcome::cont()
        }
        "quarantine" => Outcome::quarantine("misbehave holds it"),
        "discard" => Outcome::discard("misbehave drops it"),
        _ => Outcome::cont(),
    }
}

/// 64 header edits named after the recipient: each call is within the
/// per-outcome bound, a transaction of several recipients is not.
fn header_flood(rcpts: &[&str]) -> Outcome {
    let who = rcpts.last().copied().unwrap_or("data");
    (0..64).fold(Outcome::cont(), |o, i| {
        o.add_header(&format!("X-Flood-{who}-{i}"), "yes")
    })
}

/// An outcome carrying 32 MiB: lifting it would cost the host as much.
fn huge() -> Outcome {
    Outcome::cont().score("HUGE", 1.0, Some(&"x".repeat(32 << 20)))
}

struct Misbehave;

impl connect_hook::Guest for Misbehave {
    fn on_connect(_: &Session) -> Outcome {
        act(&[])
    }
}

impl helo_hook::Guest for Misbehave {
    fn on_helo(_: &Session) -> Outcome {
        act(&[])
    }
}

impl mail_hook::Guest for Misbehave {
    fn on_mail(_: &Session, _: &Envelope) -> Outcome {
        act(&[])
    }
}

impl rcpt_hook::Guest for Misbehave {
    fn on_rcpt(_: &Session, _: &Envelope, rcpt: String, _: Vec<Param>) -> Outcome {
        act(&[&rcpt])
    }
}

impl data_hook::Guest for Misbehave {
    fn on_data(_: &Session, env: &Envelope, _: &Message) -> Outcome {
        let all = env.rcpt_to();
        let rcpts: Vec<&str> = all.iter().map(String::as_str).collect();
        act(&rcpts)
    }
}

impl configure::Guest for Misbehave {
    fn check_config() -> Result<(), String> {
        let cfg: Config = postern_sdk::config()?;
        if cfg.mode == "refuse-config" {
            return Err("mode refuse-config is refused, as asked".into());
        }
        if cfg.mode == "sleep-config" {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
        Ok(())
    }
}

export!(Misbehave);
