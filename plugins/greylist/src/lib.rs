//! `greylist`: postgrey's greylisting on the kv capability.
//!
//! At RCPT, a triplet (client network, sender, recipient) seen for the
//! first time gets `450 4.7.1 Greylisted, see ...`; the same triplet
//! retried after `delay` seconds (and within `retry_window`) passes, and
//! passes from then on for `max_age` seconds after its last use. A client
//! network with `auto_whitelist` passes skips greylisting. Trusted and
//! authenticated clients are never greylisted. A kv error lets the mail
//! through (`on_kv_error = "continue"`, logged) or answers `451 4.3.0`
//! (`"tempfail"`). See README.md for the keys.

#![allow(missing_docs)] // generated bindings

pub mod grey;

postern_sdk::bindings!(path: "wit", world: "postern:greylist/greylist");

use exports::postern::filter::{configure, rcpt_hook};
use grey::{Decision, Greylist, Request, Store, StoreError};
use postern::filter::kv;
use postern_sdk::{Envelope, Outcome, Param, Session, log, restrict};

/// The host's kv store.
struct HostStore;

fn err(e: kv::KvError) -> StoreError {
    match e {
        kv::KvError::Unavailable(m) => StoreError::Unavailable(m),
        kv::KvError::Invalid(m) => StoreError::Invalid(m),
        kv::KvError::NotANumber => StoreError::NotANumber,
    }
}

impl Store for HostStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        kv::get(key).map_err(err)
    }
    fn set(&self, key: &str, value: &[u8], ttl: Option<u32>) -> Result<(), StoreError> {
        kv::set(key, value, ttl).map_err(err)
    }
    fn add(&self, key: &str, value: &[u8], ttl: Option<u32>) -> Result<bool, StoreError> {
        kv::add(key, value, ttl).map_err(err)
    }
    fn increment(&self, key: &str, delta: i64, ttl: Option<u32>) -> Result<i64, StoreError> {
        kv::increment(key, delta, ttl).map_err(err)
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct Plugin;

impl rcpt_hook::Guest for Plugin {
    fn on_rcpt(
        session: &Session,
        envelope: &Envelope,
        recipient: String,
        _p: Vec<Param>,
    ) -> Outcome {
        let g = match restrict::cached(Greylist::from_json) {
            Ok(g) => g,
            Err(e) => return restrict::config_error(&e),
        };
        let ip = session.client_ip();
        let sender = envelope.mail_from();
        let req = Request {
            client_ip: &ip,
            exempt: session.trusted() || session.auth_user().is_some(),
            sender: &sender,
            recipient: &recipient,
            now: now(),
        };
        match g.check(&HostStore, &req) {
            Decision::Pass(why) => {
                log::debug(&format!(
                    "pass: client={ip} from=<{sender}> to=<{recipient}>: {why}"
                ));
                Outcome::cont()
            }
            Decision::Greylisted(text) => {
                log::info(&format!(
                    "greylisted: client={ip} from=<{sender}> to=<{recipient}>"
                ));
                Outcome::tempfail(450, "4.7.1", text)
            }
            Decision::StoreFailed { error, tempfail } => {
                log::warn(&format!(
                    "{error}: client={ip} from=<{sender}> to=<{recipient}>: {}",
                    if tempfail {
                        "deferred"
                    } else {
                        "not greylisted"
                    }
                ));
                if tempfail {
                    Outcome::tempfail(
                        451,
                        "4.3.0",
                        "Greylisting temporarily unavailable, try again later",
                    )
                } else {
                    Outcome::cont()
                }
            }
        }
    }
}

impl configure::Guest for Plugin {
    fn check_config() -> Result<(), String> {
        Greylist::from_json(&postern_sdk::host::config()).map(|_| ())
    }
}

export!(Plugin);
