//! The greylisting decision, on a [`Store`] (the host's kv, or a fake in
//! tests) and a clock, so that it runs natively under `cargo test`.

use ipnet::IpNet;
use serde::Deserialize;
use std::net::IpAddr;

/// Why a store operation did not happen (the WIT `kv-error`).
#[derive(Debug, Clone, PartialEq)]
pub enum StoreError {
    /// Backend down or failed.
    Unavailable(String),
    /// Key or value over the host's limits.
    Invalid(String),
    /// `increment` of a value that is not an integer.
    NotANumber,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Unavailable(e) => write!(f, "kv unavailable: {e}"),
            StoreError::Invalid(e) => write!(f, "kv invalid: {e}"),
            StoreError::NotANumber => f.write_str("kv: not a number"),
        }
    }
}

/// The operations of the kv capability this plugin uses.
pub trait Store {
    /// The value of `key`, if any.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Sets `key` with a TTL in seconds.
    fn set(&self, key: &str, value: &[u8], ttl: Option<u32>) -> Result<(), StoreError>;
    /// Sets `key` only if it does not exist; true if set.
    fn add(&self, key: &str, value: &[u8], ttl: Option<u32>) -> Result<bool, StoreError>;
    /// Adds `delta` to the integer at `key`, returns the new value.
    fn increment(&self, key: &str, delta: i64, ttl: Option<u32>) -> Result<i64, StoreError>;
}

/// What to do when the store fails.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Let the mail through (postgrey-like fail-open), logged.
    Continue,
    /// Answer 451 4.3.0: the client retries.
    Tempfail,
}

/// One chain entry's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Seconds a new triplet must wait before a retry passes (postgrey `--delay`).
    pub delay: u32,
    /// Seconds an unconfirmed triplet is kept (postgrey `--retry-window`).
    pub retry_window: u32,
    /// Seconds a passed triplet and a client's pass count are kept after
    /// the last use (postgrey `--max-age`).
    pub max_age: u32,
    /// Passes after which a client network skips greylisting (postgrey
    /// `--auto-whitelist-clients`); 0 turns it off.
    pub auto_whitelist: u32,
    /// Prefix length of an IPv4 client's network in the triplet (32: the address).
    pub ipv4_prefix: u8,
    /// Prefix length of an IPv6 client's network in the triplet.
    pub ipv6_prefix: u8,
    /// What a store error means.
    pub on_kv_error: OnError,
    /// Reply text; `%r` is the recipient's domain, `%s` the seconds left.
    pub text: String,
    /// Client networks never greylisted (besides trusted and authenticated clients).
    pub exempt_clients: Vec<String>,
    /// Recipients never greylisted: `user@domain`, `domain` or `user@`.
    pub exempt_recipients: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            delay: 300,
            retry_window: 2 * 86400,
            max_age: 35 * 86400,
            auto_whitelist: 5,
            ipv4_prefix: 24,
            ipv6_prefix: 64,
            on_kv_error: OnError::Continue,
            text: "Greylisted, see https://postgrey.schweikert.ch/help/%r.html".into(),
            exempt_clients: Vec::new(),
            exempt_recipients: vec!["postmaster@".into(), "abuse@".into()],
        }
    }
}

/// A config checked and ready to use.
#[derive(Debug, Clone)]
pub struct Greylist {
    cfg: Config,
    exempt: Vec<IpNet>,
}

impl Greylist {
    /// Parses and checks an entry's config JSON.
    pub fn from_json(json: &str) -> Result<Greylist, String> {
        let json = if json.trim().is_empty() { "{}" } else { json };
        let cfg: Config = postern_sdk::parse_config(json)?;
        Greylist::new(cfg)
    }

    /// Checks a config.
    pub fn new(cfg: Config) -> Result<Greylist, String> {
        if cfg.delay == 0 {
            return Err("greylist: delay must be at least 1 second".into());
        }
        if cfg.retry_window <= cfg.delay {
            return Err(format!(
                "greylist: retry_window ({}) must be longer than delay ({})",
                cfg.retry_window, cfg.delay
            ));
        }
        if cfg.max_age < cfg.retry_window {
            return Err(format!(
                "greylist: max_age ({}) must be at least retry_window ({})",
                cfg.max_age, cfg.retry_window
            ));
        }
        if !(8..=32).contains(&cfg.ipv4_prefix) {
            return Err(format!(
                "greylist: ipv4_prefix {} is not in 8..=32",
                cfg.ipv4_prefix
            ));
        }
        if !(16..=128).contains(&cfg.ipv6_prefix) {
            return Err(format!(
                "greylist: ipv6_prefix {} is not in 16..=128",
                cfg.ipv6_prefix
            ));
        }
        if cfg.text.trim().is_empty() {
            return Err("greylist: text is empty".into());
        }
        let exempt = cfg
            .exempt_clients
            .iter()
            .map(|c| {
                c.parse::<IpNet>()
                    .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!("greylist: exempt_clients: {c:?} is not an address or network")
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for r in &cfg.exempt_recipients {
            if r.is_empty() || r.contains(char::is_whitespace) {
                return Err(format!(
                    "greylist: exempt_recipients: {r:?} is not an address, domain or user@"
                ));
            }
        }
        Ok(Greylist { cfg, exempt })
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
}

/// What the plugin is asked about.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// Client address in text form.
    pub client_ip: &'a str,
    /// Trusted network or authenticated: never greylisted.
    pub exempt: bool,
    /// Envelope sender ("" for `<>`).
    pub sender: &'a str,
    /// The recipient of this RCPT.
    pub recipient: &'a str,
    /// Seconds since the Unix epoch.
    pub now: u64,
}

/// The decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Not greylisted; why, for the log.
    Pass(&'static str),
    /// Try later: the reply text.
    Greylisted(String),
    /// The store failed: log line, and whether to tempfail.
    StoreFailed {
        /// What failed.
        error: String,
        /// True when `on_kv_error = "tempfail"`.
        tempfail: bool,
    },
}

/// The client's network in the triplet: the address cut to the prefix.
fn network(ip: &str, v4: u8, v6: u8) -> String {
    match ip.parse::<IpAddr>() {
        Ok(addr @ IpAddr::V4(_)) => IpNet::new(addr, v4).map(|n| n.trunc().to_string()),
        Ok(addr @ IpAddr::V6(_)) => IpNet::new(addr, v6).map(|n| n.trunc().to_string()),
        Err(_) => return ip.to_ascii_lowercase(),
    }
    .unwrap_or_else(|_| ip.to_string())
}

/// The sender as postgrey keys it: lower case, a BATV `prvs=tag=` tag
/// and a SRS/VERP-style numeric tail do not make a new triplet.
fn sender_key(sender: &str) -> String {
    let s = sender.to_ascii_lowercase();
    if s.is_empty() {
        return "<>".into();
    }
    let (local, domain) = s.rsplit_once('@').unwrap_or((s.as_str(), ""));
    let mut local = local.to_string();
    if let Some(rest) = local.strip_prefix("prvs=")
        && let Some((_, user)) = rest.split_once('=')
    {
        local = user.to_string();
    }
    // postgrey: "foo-123456" and "foo+123456" count as "foo-#".
    if let Some(pos) = local.rfind(['-', '+'])
        && local.len() - pos > 1
        && local[pos + 1..].bytes().all(|b| b.is_ascii_digit())
    {
        local.truncate(pos + 1);
        local.push('#');
    }
    format!("{local}@{domain}")
}

fn recipient_exempt(list: &[String], rcpt: &str) -> bool {
    let rcpt = rcpt.to_ascii_lowercase();
    let (local, domain) = rcpt.rsplit_once('@').unwrap_or((rcpt.as_str(), ""));
    list.iter().any(|e| {
        let e = e.to_ascii_lowercase();
        if let Some(user) = e.strip_suffix('@') {
            user == local
        } else if e.contains('@') {
            e == rcpt
        } else {
            postern_sdk::addr::in_domain(domain, &e)
        }
    })
}

const CONFIRMED: &[u8] = b"pass";

impl Greylist {
    /// Decides one RCPT.
    pub fn check(&self, store: &dyn Store, req: &Request<'_>) -> Decision {
        if req.exempt {
            return Decision::Pass("trusted or authenticated client");
        }
        if let Ok(ip) = req.client_ip.parse::<IpAddr>()
            && self.exempt.iter().any(|n| n.contains(&ip))
        {
            return Decision::Pass("client in exempt_clients");
        }
        if recipient_exempt(&self.cfg.exempt_recipients, req.recipient) {
            return Decision::Pass("recipient in exempt_recipients");
        }
        match self.check_store(store, req) {
            Ok(d) => d,
            Err(e) => Decision::StoreFailed {
                error: e.to_string(),
                tempfail: self.cfg.on_kv_error == OnError::Tempfail,
            },
        }
    }

    fn check_store(&self, store: &dyn Store, req: &Request<'_>) -> Result<Decision, StoreError> {
        let c = &self.cfg;
        let net = network(req.client_ip, c.ipv4_prefix, c.ipv6_prefix);
        let awl_key = format!("awl/{net}");
        if c.auto_whitelist > 0
            && let Some(v) = store.get(&awl_key)?
            && parse_u64(&v).is_some_and(|n| n >= u64::from(c.auto_whitelist))
        {
            return Ok(Decision::Pass("client auto-whitelisted"));
        }
        let key = format!(
            "t/{net}/{}/{}",
            sender_key(req.sender),
            req.recipient.to_ascii_lowercase()
        );
        let first_seen = match store.get(&key)? {
            Some(v) if v == CONFIRMED => {
                // postgrey: max-age counts from the last pass.
                store.set(&key, CONFIRMED, Some(c.max_age))?;
                return Ok(Decision::Pass("triplet passed before"));
            }
            Some(v) => parse_u64(&v),
            None => None,
        };
        let Some(first) = first_seen.filter(|f| *f <= req.now) else {
            // New (or unreadable, or from the future): start the clock.
            // `add`: of two nodes racing on one triplet, the first time wins.
            if !store.add(&key, req.now.to_string().as_bytes(), Some(c.retry_window))? {
                store.set(&key, req.now.to_string().as_bytes(), Some(c.retry_window))?;
            }
            return Ok(Decision::Greylisted(
                self.text(req.recipient, c.delay.into()),
            ));
        };
        let waited = req.now - first;
        if waited < u64::from(c.delay) {
            return Ok(Decision::Greylisted(
                self.text(req.recipient, u64::from(c.delay) - waited),
            ));
        }
        store.set(&key, CONFIRMED, Some(c.max_age))?;
        if c.auto_whitelist > 0 {
            store.increment(&awl_key, 1, Some(c.max_age))?;
        }
        Ok(Decision::Pass("retried after the delay"))
    }

    fn text(&self, recipient: &str, left: u64) -> String {
        let domain = postern_sdk::addr::domain(recipient);
        self.cfg
            .text
            .replace("%r", &domain)
            .replace("%s", &left.to_string())
    }
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

#[cfg(test)]
#[path = "grey_tests.rs"]
mod tests;
