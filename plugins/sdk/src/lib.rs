//! # Writing a Postern plugin in Rust
//!
//! A Postern plugin is a WebAssembly component that exports one or more
//! hook interfaces of the `postern:filter` WIT package (`wit/` in the
//! Postern repository). This crate gives you the shared types, the host
//! imports, and helpers so that a restriction is a few lines.
//!
//! ## 1. A crate
//!
//! ```toml
//! [package]
//! name = "my-plugin"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! postern-sdk = { path = "../sdk" }
//! ```
//!
//! ## 2. Bindings for the hooks you export
//!
//! Pick a world from `wit/worlds.wit`: one per hook (`rcpt-plugin`,
//! `data-plugin`, …), or `restriction` (connect, HELO, MAIL, RCPT) and
//! `content-filter` (end of data). [`bindings!`] generates the Rust traits
//! for exactly those hooks and reuses this crate's types:
//!
//! ```ignore
//! postern_sdk::bindings!(path: "../../wit", world: "postern:filter/rcpt-plugin");
//! ```
//!
//! ## 3. Implement the hooks
//!
//! ```ignore
//! use postern_sdk::{Outcome, Session, Envelope, Param, addr};
//!
//! struct NoTraps;
//!
//! impl exports::postern::filter::rcpt_hook::Guest for NoTraps {
//!     fn on_rcpt(_s: &Session, _e: &Envelope, rcpt: String, _p: Vec<Param>) -> Outcome {
//!         if addr::local_part(&rcpt).starts_with("spamtrap") {
//!             return Outcome::reject(550, "5.7.1", "Recipient address rejected: spam trap");
//!         }
//!         Outcome::cont()
//!     }
//! }
//!
//! export!(NoTraps);
//! ```
//!
//! ## 4. Build and run
//!
//! ```sh
//! rustup target add wasm32-wasip2
//! cargo build --release --target wasm32-wasip2
//! postern plugin test --plugin target/wasm32-wasip2/release/my_plugin.wasm cases.toml
//! ```
//!
//! `cases.toml` holds the transactions to try and what you expect of
//! each (the plugin's config goes in `[config]`):
//!
//! ```toml
//! [[case]]
//! name = "a spam trap is refused"
//! stage = "rcpt"
//! client_ip = "192.0.2.1"
//! mail_from = "someone@example.org"
//! rcpt_to = ["spamtrap@example.test"]
//! [case.expect]
//! verdict = "reject"
//! code = 550
//! enhanced = "5.7.1"
//!
//! [[case]]
//! name = "anyone else passes"
//! stage = "rcpt"
//! mail_from = "someone@example.org"
//! rcpt_to = ["alice@example.test"]
//! [case.expect]
//! verdict = "continue"
//! ```
//!
//! A plugin that traps or runs out of time or memory shows as `verdict
//! failure`, with the reason and anything it logged on stderr.
//!
//! Then name the `.wasm` file in a `[[plugin]]` table and put the plugin
//! into a `[[chain.rcpt]]` (or connect/helo/mail/data) of the host config;
//! `postern reload` swaps it in without a restart.
//!
//! ## Rules of the sandbox
//!
//! - No files, sockets or environment: use host imports. The clocks can
//!   be read, but a verdict must not depend on the time, and waiting
//!   (`sleep`) counts against the time limit.
//! - Each call has a CPU time limit and the instance a memory limit; a
//!   plugin that loops, traps or grows too much costs one 4xx (or is
//!   skipped, with `on_error = "continue"`), never the daemon.
//! - The host may reuse an instance for several calls, or not: keep no
//!   state you rely on between calls.
//! - One instance serves every chain entry of your plugin, and entries
//!   have their own configs: read the config per call ([`config`]), or
//!   parse it once per config with [`config_cached`].
//! - Anything written to stderr reaches the host log, a line per line
//!   (bounded and rate-limited), with the entry's name; a panic's message
//!   goes there before the call fails ([`panic_to_stderr`]).
//! - A capability beyond `host` and `types` (header edits by host call,
//!   [`edit`]; DNS, [`resolve`]; the key-value store, [`store`]) is
//!   imported only if your code calls it, and must then be granted in the
//!   `[[plugin]]` table (`grants = ["edit"]`, `["dns"]`, `["kv"]`).
//!
//! ## Unit tests without a host
//!
//! Host imports cannot be called in a native `cargo test`. Keep the
//! decisions in functions of plain data and of a [`resolve::Resolver`] /
//! [`store::Store`]; the hooks pass [`resolve::HostResolver`] /
//! [`store::HostStore`], the tests [`fake::FakeResolver`] (with
//! [`fake::FakeResolver::test_zones`], the peers kit's zones) and
//! [`fake::MemoryStore`]. [`name`] has Postfix's host name syntax checks.
//! - The message header is complete (the host refuses messages over its
//!   limits) and at most `smtp.max_header_size` (1 MiB at most);
//!   [`each_header`] reads it in bounded batches.

#![allow(missing_docs)] // the generated bindings carry the WIT docs

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

wit_bindgen::generate!({
    path: "../../wit",
    world: "postern:filter/sdk",
    pub_export_macro: false,
    additional_derives: [PartialEq],
});

/// DNS lookups (since 0.2.2), the raw imports; [`resolve`] wraps them in
/// a trait that unit tests fake. Needs `grants = ["dns"]`.
pub use postern::filter::dns;
/// Header edits by host call (since 0.2.1): `edit::add_header(name,
/// value)` and friends. A plugin that calls them imports `edit`, and
/// needs `grants = ["edit"]` in its `[[plugin]]` table; the
/// [`Outcome`] builders (`add_header`, ...) need no grant.
pub use postern::filter::edit;
pub use postern::filter::host;
/// The key-value store (since 0.2.2), the raw imports; [`store`] wraps
/// them in a trait that unit tests fake. Needs `grants = ["kv"]`.
pub use postern::filter::kv;
pub use postern::filter::types;
pub use types::{
    Action, Envelope, Header, HeaderChange, HeaderPart, HeaderRef, Message, Outcome, Param,
    RdnsStatus, Reply, Score, Session, TlsInfo, Verdict,
};

pub mod fake;
pub mod name;
pub mod resolve;
pub mod restrict;
pub mod store;

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

/// The runtime the generated bindings call into: wit-bindgen's, with one
/// addition. Every export of a plugin starts by running its static
/// constructors once; the SDK then also installs its panic hook, so that
/// a panic's message reaches the host log (through stderr) before the
/// trap ends the call.
#[doc(hidden)]
pub mod __rt {
    pub use wit_bindgen::rt::*;

    /// wit-bindgen's `run_ctors_once`, then [`crate::panic_to_stderr`].
    #[cfg(target_arch = "wasm32")]
    pub fn run_ctors_once() {
        wit_bindgen::rt::run_ctors_once();
        crate::panic_to_stderr();
    }
}

/// Installs (once) a panic hook that writes `panicked at FILE:LINE:
/// MESSAGE` to stderr, which the host logs with the plugin entry's name.
/// The bindings made by [`bindings!`] call this before any hook runs.
pub fn panic_to_stderr() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            match info.location() {
                Some(at) => eprintln!("panicked at {at}: {message}"),
                None => eprintln!("panicked: {message}"),
            }
        }));
    });
}

impl Outcome {
    /// No opinion: the next plugin in the chain decides.
    pub fn cont() -> Outcome {
        Outcome::with(Verdict::Continue)
    }

    /// Definitive permit for this stage (`OK` in Postfix terms).
    pub fn accept() -> Outcome {
        Outcome::with(Verdict::Accept)
    }

    /// Refuse with a 5xx reply, e.g. `reject(554, "5.7.1", "Access denied")`.
    pub fn reject(code: u16, enhanced: &str, text: impl Into<String>) -> Outcome {
        Outcome::with(Verdict::Reject(reply(code, enhanced, text)))
    }

    /// Refuse with a 4xx reply: the client retries later.
    pub fn tempfail(code: u16, enhanced: &str, text: impl Into<String>) -> Outcome {
        Outcome::with(Verdict::Tempfail(reply(code, enhanced, text)))
    }

    /// Refuse with `code`: a reject for 5xx, a tempfail for 4xx, with the
    /// class of `enhanced` made to match the code as Postfix does
    /// (`refuse(550, "4.1.8", ..)` says `5.1.8`). For replies whose code
    /// an operator configures.
    pub fn refuse(code: u16, enhanced: &str, text: impl Into<String>) -> Outcome {
        let class = if code / 100 == 4 { '4' } else { '5' };
        let enhanced = match enhanced.split_once('.') {
            Some((_, rest)) => format!("{class}.{rest}"),
            None => enhanced.to_string(),
        };
        if class == '4' {
            Outcome::tempfail(code, &enhanced, text)
        } else {
            Outcome::reject(code, &enhanced, text)
        }
    }

    /// Accept the message and drop it.
    pub fn discard(reason: impl Into<String>) -> Outcome {
        Outcome::with(Verdict::Discard(reason.into()))
    }

    /// Accept the message and hold it for an operator.
    pub fn quarantine(reason: impl Into<String>) -> Outcome {
        Outcome::with(Verdict::Quarantine(reason.into()))
    }

    /// An outcome with this verdict and nothing else.
    pub fn with(verdict: Verdict) -> Outcome {
        Outcome {
            verdict,
            scores: Vec::new(),
            actions: Vec::new(),
        }
    }

    /// Adds a score contribution.
    pub fn score(mut self, symbol: &str, points: f64, detail: Option<&str>) -> Outcome {
        self.scores.push(Score {
            symbol: symbol.to_string(),
            points,
            detail: detail.map(str::to_string),
        });
        self
    }

    /// Asks the host to prepend a header when the message is queued.
    pub fn add_header(mut self, name: &str, value: impl Into<String>) -> Outcome {
        self.actions.push(Action::AddHeader(Header {
            name: name.to_string(),
            value: value.into(),
        }));
        self
    }

    /// Asks the host to remove every header with this name.
    pub fn remove_header(mut self, name: &str) -> Outcome {
        self.actions.push(Action::RemoveHeader(HeaderRef {
            name: name.to_string(),
            index: None,
        }));
        self
    }

    /// Asks the host to replace the first header with this name (or add it).
    pub fn change_header(mut self, name: &str, value: impl Into<String>) -> Outcome {
        self.actions.push(Action::ChangeHeader(HeaderChange {
            name: name.to_string(),
            index: 0,
            value: value.into(),
        }));
        self
    }
}

fn reply(code: u16, enhanced: &str, text: impl Into<String>) -> Reply {
    Reply {
        code,
        enhanced: (!enhanced.is_empty()).then(|| enhanced.to_string()),
        text: text.into(),
    }
}

/// Calls `f(index, name, value)` for every header field in order, with
/// whole values, copying at most `batch` fields and 64 KiB of each value
/// into the plugin's memory per host call (long values are read in
/// chunks). Stops early when `f` returns `false`.
pub fn each_header(message: &Message, batch: u32, mut f: impl FnMut(u32, &str, &str) -> bool) {
    const PART: u32 = 64 << 10;
    let mut start = 0u32;
    loop {
        let parts = message.header_list(start, batch.max(1), PART);
        if parts.is_empty() {
            return;
        }
        for (i, part) in parts.iter().enumerate() {
            let index = start + i as u32;
            let whole;
            let value = if (part.value.len() as u32) < part.size {
                whole = read_header(message, index, part);
                whole.as_str()
            } else {
                part.value.as_str()
            };
            if !f(index, &part.name, value) {
                return;
            }
        }
        start += parts.len() as u32;
    }
}

/// The whole value of a field `header-list` gave cut.
fn read_header(message: &Message, index: u32, part: &HeaderPart) -> String {
    let mut bytes = part.value.clone().into_bytes();
    while (bytes.len() as u32) < part.size {
        let chunk = message.read_header(index, bytes.len() as u32, 64 << 10);
        if chunk.is_empty() {
            break;
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Writing to the host log (prefixed with the plugin entry and queue ID).
///
/// Outside WebAssembly (a plugin's native unit tests) there is no host:
/// the lines go to stderr instead, so that decisions which log can be
/// tested.
pub mod log {
    use super::host::Level;

    #[cfg(target_arch = "wasm32")]
    use super::host::log;

    #[cfg(not(target_arch = "wasm32"))]
    fn log(level: Level, msg: &str) {
        eprintln!("{level:?}: {msg}");
    }

    /// Debug detail.
    pub fn debug(msg: &str) {
        log(Level::Debug, msg)
    }
    /// Normal events.
    pub fn info(msg: &str) {
        log(Level::Info, msg)
    }
    /// Something an operator should look at.
    pub fn warn(msg: &str) {
        log(Level::Warn, msg)
    }
    /// Something is broken.
    pub fn error(msg: &str) {
        log(Level::Error, msg)
    }
}

/// This plugin entry's config table, deserialised.
///
/// ```ignore
/// #[derive(serde::Deserialize)]
/// struct Config { blocked: Vec<String> }
/// let cfg: Config = postern_sdk::config()?;
/// ```
pub fn config<T: serde::de::DeserializeOwned>() -> Result<T, String> {
    parse_config(&host::config())
}

/// The current call's config, built by `build` from the config JSON once
/// per instance and config, then served from a cache keyed on
/// `host::config_id()` and the type `T`. One instance serves every chain
/// entry of the plugin, each with its own config; this is how to parse
/// each only once. The key does not include `build`: two different
/// builders of the same type share entries, so give each its own type
/// (a newtype is enough). Every config's value stays for the instance's
/// life, within the plugin's `memory_limit`.
///
/// ```ignore
/// fn rules() -> &'static Result<Rules, String> {
///     postern_sdk::config_cached(|json| Rules::from_json(json))
/// }
/// ```
pub fn config_cached<T: 'static>(build: impl FnOnce(&str) -> T) -> &'static T {
    use std::any::{Any, TypeId};
    use std::cell::RefCell;
    use std::collections::HashMap;
    thread_local! {
        // Leaked on purpose: one value per config of the generation, alive
        // as long as the instance.
        static CACHE: RefCell<HashMap<(u32, TypeId), &'static dyn Any>> =
            RefCell::new(HashMap::new());
    }
    let key = (host::config_id(), TypeId::of::<T>());
    if let Some(v) = CACHE.with(|c| c.borrow().get(&key).copied())
        && let Some(t) = v.downcast_ref::<T>()
    {
        return t;
    }
    let value: &'static T = Box::leak(Box::new(build(&host::config())));
    CACHE.with(|c| c.borrow_mut().insert(key, value));
    value
}

/// Parses a config JSON text (what [`config`] does, for unit tests).
pub fn parse_config<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, String> {
    serde_json::from_str(json).map_err(|e| format!("bad plugin config: {e}"))
}

/// Helpers for envelope addresses.
pub mod addr {
    /// The domain of `user@domain`, lower-cased ("" for `<>`).
    pub fn domain(address: &str) -> String {
        address
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default()
    }

    /// The local part of `user@domain` (the whole string without `@`).
    pub fn local_part(address: &str) -> &str {
        address.rsplit_once('@').map(|(l, _)| l).unwrap_or(address)
    }

    /// True if `domain` is `parent` or one of its subdomains.
    pub fn in_domain(domain: &str, parent: &str) -> bool {
        let d = domain.trim_end_matches('.').to_ascii_lowercase();
        let p = parent.trim_end_matches('.').to_ascii_lowercase();
        d == p || d.ends_with(&format!(".{p}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_builders() {
        let o = Outcome::reject(554, "5.7.1", "no").score("X", 1.5, None);
        assert!(
            matches!(o.verdict, Verdict::Reject(ref r) if r.code == 554 && r.enhanced.as_deref() == Some("5.7.1"))
        );
        assert_eq!(o.scores.len(), 1);
        let o = Outcome::cont().add_header("X-A", "b");
        assert!(matches!(o.verdict, Verdict::Continue));
        assert_eq!(o.actions.len(), 1);
        let o = Outcome::refuse(550, "4.1.8", "x");
        assert!(
            matches!(o.verdict, Verdict::Reject(ref r) if r.code == 550 && r.enhanced.as_deref() == Some("5.1.8"))
        );
        let o = Outcome::refuse(450, "5.7.25", "x");
        assert!(
            matches!(o.verdict, Verdict::Tempfail(ref r) if r.code == 450 && r.enhanced.as_deref() == Some("4.7.25"))
        );
    }

    #[test]
    fn addresses() {
        assert_eq!(addr::domain("a@Ex.Test"), "ex.test");
        assert_eq!(addr::local_part("a+b@x"), "a+b");
        assert!(addr::in_domain("mx.blocked.test", "blocked.test"));
        assert!(!addr::in_domain("notblocked.test", "blocked.test"));
    }
}
