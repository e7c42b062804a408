//! `[smtp_client]`: how mail leaves for other domains (Postfix's smtp(8)
//! settings: `relayhost`, `smtp_tls_security_level`, the SASL client, the
//! time limits and per-destination concurrency).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::units::Seconds;
use super::{Config, Problem, is_hostname};

/// The SMTP port.
pub const SMTP_PORT: u16 = 25;

/// How much TLS a destination gets (Postfix's `smtp_tls_security_level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsLevel {
    /// Never STARTTLS.
    None,
    /// STARTTLS when offered, without checking the certificate; a failed
    /// handshake is retried in plain text (opportunistic TLS, RFC 7435).
    #[default]
    May,
    /// TLS is required, the certificate is not checked.
    Encrypt,
    /// TLS is required and the certificate must be valid for the host
    /// name connected to, from a trusted CA.
    Verify,
}

impl TlsLevel {
    /// The level's name in logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            TlsLevel::None => "none",
            TlsLevel::May => "may",
            TlsLevel::Encrypt => "encrypt",
            TlsLevel::Verify => "verify",
        }
    }
}

/// `[smtp_client]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpClient {
    /// Every remote domain's mail goes to this next hop instead of its MX
    /// hosts (Postfix `relayhost`): `[host]:port` (no MX lookup), `host`
    /// or `host:port` (its MX hosts). `[transport]` entries come first.
    pub relayhost: Option<String>,
    /// The port of MX hosts (and of next hops without one).
    pub port: u16,
    /// The name said in EHLO; default: `server.hostname`.
    pub helo_name: Option<String>,
    /// TLS for every destination not in `tls_policy`.
    pub tls: TlsLevel,
    /// Per-destination TLS (Postfix `smtp_tls_policy_maps`): the key is the
    /// recipient domain or the next hop as written.
    pub tls_policy: BTreeMap<String, TlsLevel>,
    /// PEM file of the CAs trusted by `verify`; default: the system's
    /// bundle.
    pub tls_ca_file: Option<PathBuf>,
    /// SMTP AUTH to the relay host and `[transport]` smtp next hops
    /// (Postfix `smtp_sasl_auth_enable`): the user name.
    pub auth_username: Option<String>,
    /// The file whose first line is the password (kept out of the config).
    pub auth_password_file: Option<PathBuf>,
    /// Time to connect to one address.
    pub connect_timeout: Seconds,
    /// Time for each reply and each write (Postfix's `smtp_*_timeout`).
    pub command_timeout: Seconds,
    /// Time for the reply after the message (Postfix's
    /// `smtp_data_done_timeout`).
    pub data_timeout: Seconds,
    /// Deliveries in flight to one destination (Postfix's
    /// `default_destination_concurrency_limit`).
    pub destination_concurrency: usize,
    /// Addresses tried per delivery at most (Postfix's
    /// `smtp_mx_address_limit`).
    pub mx_address_limit: usize,
}

impl Default for SmtpClient {
    fn default() -> SmtpClient {
        SmtpClient {
            relayhost: None,
            port: SMTP_PORT,
            helo_name: None,
            tls: TlsLevel::May,
            tls_policy: BTreeMap::new(),
            tls_ca_file: None,
            auth_username: None,
            auth_password_file: None,
            connect_timeout: Seconds(Duration::from_secs(30)),
            command_timeout: Seconds(Duration::from_secs(300)),
            data_timeout: Seconds(Duration::from_secs(600)),
            destination_concurrency: 20,
            mx_address_limit: 5,
        }
    }
}

/// An SMTP next hop: a host (or IP address), its port if given, and
/// whether its MX records are looked up (not when written in brackets).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SmtpHop {
    /// Host name (lower case) or IP address, without brackets.
    pub host: String,
    /// The port, if given.
    pub port: Option<u16>,
    /// Look up MX records of `host` (no brackets).
    pub mx: bool,
}

impl std::fmt::Display for SmtpHop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.mx {
            f.write_str(&self.host)?;
        } else {
            write!(f, "[{}]", self.host)?;
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

/// Parses `[host]:port`, `[host]`, `host:port` or `host`.
pub fn parse_smtp_hop(hop: &str) -> Result<SmtpHop, String> {
    let hop = hop.trim();
    let (host, port, bracketed) = super::transport::split_host_port(hop)?;
    let mx = !bracketed;
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    if is_ip && mx {
        return Err(format!(
            "{host:?}: an IP address is written in brackets ([{host}])"
        ));
    }
    if !is_ip && !is_hostname(host) {
        return Err(format!("{host:?} is not a host name or IP address"));
    }
    Ok(SmtpHop {
        host: host.to_ascii_lowercase(),
        port,
        mx,
    })
}

/// What is wrong with `[smtp_client]`, each with its key.
pub(super) fn problems(config: &Config) -> Vec<Problem> {
    let c = &config.smtp_client;
    let mut out = Vec::new();
    let mut bad = |key: &str, message: String| {
        out.push(Problem {
            key: format!("smtp_client.{key}"),
            message,
        })
    };
    if let Some(hop) = &c.relayhost
        && let Err(e) = parse_smtp_hop(hop)
    {
        bad("relayhost", e);
    }
    if c.port == 0 {
        bad("port", "must be a port number (1-65535)".into());
    }
    if let Some(name) = &c.helo_name
        && !is_hostname(name)
    {
        bad("helo_name", format!("{name:?} is not a host name"));
    }
    if c.destination_concurrency < 1 {
        bad("destination_concurrency", "must be at least 1".into());
    }
    if c.mx_address_limit < 1 {
        bad("mx_address_limit", "must be at least 1".into());
    }
    for (name, t) in [
        ("connect_timeout", c.connect_timeout),
        ("command_timeout", c.command_timeout),
        ("data_timeout", c.data_timeout),
    ] {
        if t.0.is_zero() {
            bad(name, "must be more than 0".into());
        }
    }
    match (&c.auth_username, &c.auth_password_file) {
        (Some(_), None) | (None, Some(_)) => bad(
            "auth_username",
            "auth_username and auth_password_file go together".into(),
        ),
        (Some(_), Some(path)) => {
            if let Err(e) = read_password(path) {
                bad("auth_password_file", e);
            }
        }
        (None, None) => {}
    }
    if let Some(path) = &c.tls_ca_file
        && let Err(e) = std::fs::metadata(path)
    {
        bad("tls_ca_file", format!("{}: {e}", path.display()));
    }
    out
}

/// The password: the file's first line.
pub fn read_password(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let first = text.lines().next().unwrap_or("").to_string();
    if first.is_empty() {
        return Err(format!("{}: the first line is empty", path.display()));
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_hops() {
        let hop = |h: &str, p: Option<u16>, mx: bool| SmtpHop {
            host: h.into(),
            port: p,
            mx,
        };
        assert_eq!(
            parse_smtp_hop("[Relay.Test]:587"),
            Ok(hop("relay.test", Some(587), false))
        );
        assert_eq!(
            parse_smtp_hop("relay.test"),
            Ok(hop("relay.test", None, true))
        );
        assert_eq!(
            parse_smtp_hop("relay.test:2525"),
            Ok(hop("relay.test", Some(2525), true))
        );
        assert_eq!(
            parse_smtp_hop("[127.0.0.10]"),
            Ok(hop("127.0.0.10", None, false))
        );
        assert_eq!(parse_smtp_hop("[::1]:25"), Ok(hop("::1", Some(25), false)));
        for bad in [
            "[relay.test",
            "[a]587",
            "relay.test:0",
            "relay.test:x",
            "bad_host!",
            "10.0.0.1",
            "",
        ] {
            assert!(parse_smtp_hop(bad).is_err(), "{bad}");
        }
        assert_eq!(hop("a.test", Some(1), false).to_string(), "[a.test]:1");
        assert_eq!(hop("a.test", None, true).to_string(), "a.test");
    }
}
