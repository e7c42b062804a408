//! Chain entries: a WebAssembly plugin with its config, or a Postfix SMTPD
//! policy service (`check_policy_service`) reached over TCP or a unix
//! socket.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Seconds;

/// One chain entry (`[[chain.rcpt]]` ...): `plugin = "NAME"` for a
/// WebAssembly plugin, `policy_service = "inet:HOST:PORT"` or
/// `"unix:/PATH"` for a Postfix policy server.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "toml::Table")]
pub enum ChainEntry {
    /// A `[[plugin]]` with this entry's config.
    Wasm(WasmEntry),
    /// A policy server spoken to in the Postfix policy delegation protocol.
    PolicyService(PolicyServiceEntry),
}

impl TryFrom<toml::Table> for ChainEntry {
    type Error = String;

    fn try_from(t: toml::Table) -> Result<ChainEntry, String> {
        let policy = t.contains_key("policy_service");
        if policy && t.contains_key("plugin") {
            return Err("a chain entry has either `plugin` or `policy_service`, not both".into());
        }
        let value = toml::Value::Table(t);
        if policy {
            value
                .try_into()
                .map(ChainEntry::PolicyService)
                .map_err(|e| e.message().to_string())
        } else {
            value
                .try_into()
                .map(ChainEntry::Wasm)
                .map_err(|e| e.message().to_string())
        }
    }
}

impl ChainEntry {
    /// The entry's label in logs: its `name`, else the plugin name or the
    /// policy service's address.
    pub fn label(&self) -> &str {
        match self {
            ChainEntry::Wasm(w) => w.name.as_deref().unwrap_or(&w.plugin),
            ChainEntry::PolicyService(p) => p.name.as_deref().unwrap_or(&p.policy_service),
        }
    }

    /// The `[[plugin]]` this entry runs, if it is a WebAssembly entry.
    pub fn plugin(&self) -> Option<&str> {
        match self {
            ChainEntry::Wasm(w) => Some(&w.plugin),
            ChainEntry::PolicyService(_) => None,
        }
    }
}

/// A WebAssembly chain entry: a plugin with its own config table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmEntry {
    /// The `[[plugin]]` name.
    pub plugin: String,
    /// Label in logs (default: the plugin name).
    pub name: Option<String>,
    /// This entry's config, handed to the plugin as JSON.
    #[serde(default)]
    pub config: toml::Table,
    /// The `kv` namespace of the entry: by default its own (the stage and
    /// its label), or a shared one of this name, which every entry (and
    /// every node on the same Redis) naming it sees.
    #[serde(default)]
    pub kv_namespace: Option<String>,
}

/// A policy-service chain entry (Postfix `check_policy_service` with the
/// `smtpd_policy_service_*` settings, per entry).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyServiceEntry {
    /// `inet:HOST:PORT` (`inet:[::1]:PORT`) or `unix:/PATH`.
    pub policy_service: String,
    /// Label in logs (default: the address).
    pub name: Option<String>,
    /// Time limit for connecting, sending the request and reading the
    /// answer (`smtpd_policy_service_timeout`, 100 s).
    #[serde(default = "default_timeout")]
    pub timeout: Seconds,
    /// An idle connection is closed after this long
    /// (`smtpd_policy_service_max_idle`, 300 s).
    #[serde(default = "default_max_idle")]
    pub max_idle: Seconds,
    /// A connection is not reused once this old
    /// (`smtpd_policy_service_max_ttl`, 1000 s).
    #[serde(default = "default_max_ttl")]
    pub max_ttl: Seconds,
    /// Attempts per request before `default_action`
    /// (`smtpd_policy_service_try_limit`, 2).
    #[serde(default = "default_try_limit")]
    pub try_limit: u32,
    /// What the entry answers when the server cannot be asked or answers
    /// nonsense, an access(5) action (`smtpd_policy_service_default_action`).
    /// Default: `451 4.3.5 Server configuration problem`, given only if the
    /// stage would otherwise accept (as `DEFER_IF_PERMIT`).
    pub default_action: Option<String>,
    /// Sent as `policy_context` (`smtpd_policy_service_policy_context`).
    #[serde(default)]
    pub policy_context: String,
}

impl PolicyServiceEntry {
    /// What is wrong with the entry, each with its key under the entry
    /// (`default_action` is checked where the chains are built).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Err(e) = parse_policy_endpoint(&self.policy_service) {
            out.push(("policy_service", e));
        }
        let day = Duration::from_secs(86_400);
        for (key, value) in [
            ("timeout", self.timeout),
            ("max_idle", self.max_idle),
            ("max_ttl", self.max_ttl),
        ] {
            if value.0 < Duration::from_secs(1) || value.0 > day {
                out.push((key, "must be between 1s and 1d".into()));
            }
        }
        if !(1..=10).contains(&self.try_limit) {
            out.push(("try_limit", "must be between 1 and 10".into()));
        }
        if self.policy_context.contains(['\n', '\r']) || self.policy_context.len() > 256 {
            out.push((
                "policy_context",
                "must be one line of at most 256 bytes".into(),
            ));
        }
        out
    }
}

fn default_timeout() -> Seconds {
    Seconds(Duration::from_secs(100))
}

fn default_max_idle() -> Seconds {
    Seconds(Duration::from_secs(300))
}

fn default_max_ttl() -> Seconds {
    Seconds(Duration::from_secs(1000))
}

fn default_try_limit() -> u32 {
    2
}

/// Where a policy server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyEndpoint {
    /// TCP: host (name or address) and port.
    Inet(String, u16),
    /// A unix-domain stream socket.
    Unix(PathBuf),
}

impl std::fmt::Display for PolicyEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyEndpoint::Inet(h, p) if h.contains(':') => write!(f, "inet:[{h}]:{p}"),
            PolicyEndpoint::Inet(h, p) => write!(f, "inet:{h}:{p}"),
            PolicyEndpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Parses `inet:HOST:PORT`, `inet:[IPV6]:PORT` or `unix:/PATH` (Postfix's
/// `check_policy_service` forms); the error says what is wrong.
pub fn parse_policy_endpoint(s: &str) -> Result<PolicyEndpoint, String> {
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("unix: needs a socket path".into());
        }
        return Ok(PolicyEndpoint::Unix(PathBuf::from(path)));
    }
    let Some(rest) = s.strip_prefix("inet:") else {
        return Err(format!(
            "{s:?}: expected inet:HOST:PORT or unix:/PATH (like check_policy_service)"
        ));
    };
    let (host, port) = match rest.strip_prefix('[') {
        Some(r) => {
            let (h, p) = r
                .split_once("]:")
                .ok_or_else(|| format!("{s:?}: expected inet:[ADDRESS]:PORT"))?;
            (h, p)
        }
        None => rest
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: expected inet:HOST:PORT"))?,
    };
    if host.is_empty()
        || host.contains(['[', ']'])
        || (host.contains(':') && !rest.starts_with('['))
    {
        return Err(format!(
            "{s:?}: bad host (write an IPv6 address as [ADDRESS])"
        ));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{s:?}: bad port {port:?}"))?;
    Ok(PolicyEndpoint::Inet(host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_postfix_shaped() {
        assert_eq!(
            parse_policy_endpoint("inet:127.0.0.1:12525"),
            Ok(PolicyEndpoint::Inet("127.0.0.1".into(), 12525))
        );
        assert_eq!(
            parse_policy_endpoint("inet:[::1]:10023")
                .unwrap()
                .to_string(),
            "inet:[::1]:10023"
        );
        assert_eq!(
            parse_policy_endpoint("unix:/run/postgrey.sock"),
            Ok(PolicyEndpoint::Unix("/run/postgrey.sock".into()))
        );
        for bad in [
            "127.0.0.1:12525",
            "inet:127.0.0.1",
            "inet::1:25",
            "inet:host:0",
            "inet:host:x",
            "unix:",
            "inet:[::1]25",
        ] {
            assert!(parse_policy_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn entries_are_told_apart_by_their_keys() {
        let t: toml::Table =
            toml::from_str("policy_service = \"inet:127.0.0.1:1\"\ntimeout = \"2s\"").unwrap();
        let ChainEntry::PolicyService(p) = ChainEntry::try_from(t).unwrap() else {
            panic!()
        };
        assert_eq!((p.timeout.0, p.try_limit), (Duration::from_secs(2), 2));
        let t: toml::Table = toml::from_str("plugin = \"p\"\ntimeout = \"2s\"").unwrap();
        let e = ChainEntry::try_from(t).unwrap_err();
        assert!(e.contains("timeout"), "{e}");
        let t: toml::Table = toml::from_str("plugin = \"p\"\npolicy_service = \"x\"").unwrap();
        assert!(ChainEntry::try_from(t).unwrap_err().contains("not both"));
    }
}
