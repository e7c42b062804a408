//! `[transport]`: which delivery agent takes a domain's mail (Postfix's
//! `transport_maps`, inline for now). Keys are domains (`.example.com`
//! matches its subdomains); values are `lmtp:HOST:PORT`,
//! `lmtp:[HOST]:PORT`, `lmtp:unix:/PATH`, `local` or `smtp[:NEXTHOP]`.

use std::fmt;
use std::path::PathBuf;

use super::{Config, Problem, is_hostname};

/// The LMTP port (RFC 2033 names none; 24 is what Dovecot and Cyrus use).
pub const LMTP_PORT: u16 = 24;

/// Where an LMTP server listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NextHop {
    /// A TCP server: a host name or IP address (without brackets), and a
    /// port.
    Tcp {
        /// Host name or IP address.
        host: String,
        /// Port.
        port: u16,
    },
    /// A unix-domain socket.
    Unix(PathBuf),
}

impl fmt::Display for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NextHop::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            NextHop::Tcp { host, port } => write!(f, "{host}:{port}"),
            NextHop::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// One `[transport]` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportSpec {
    /// The local agent, as for any local domain.
    Local,
    /// SMTP: to the next hop, if given, else to the domain's MX hosts.
    Smtp(Option<super::SmtpHop>),
    /// LMTP to one server.
    Lmtp(NextHop),
}

/// Parses a `[transport]` value; the error says what is wrong.
pub fn parse_transport(value: &str) -> Result<TransportSpec, String> {
    let value = value.trim();
    let (word, rest) = match value.split_once(':') {
        Some((w, r)) => (w, Some(r)),
        None => (value, None),
    };
    match (word.to_ascii_lowercase().as_str(), rest) {
        ("local", None) => Ok(TransportSpec::Local),
        ("local", Some(_)) => Err("local takes no next hop".into()),
        ("smtp", None) => Ok(TransportSpec::Smtp(None)),
        ("smtp", Some(hop)) if !hop.is_empty() => {
            super::parse_smtp_hop(hop).map(|h| TransportSpec::Smtp(Some(h)))
        }
        ("lmtp", Some(hop)) => parse_lmtp(hop).map(TransportSpec::Lmtp),
        ("lmtp", None) => Err("lmtp needs a next hop: lmtp:HOST:PORT or lmtp:unix:/PATH".into()),
        (w, _) => Err(format!(
            "unknown transport {w:?}: only lmtp, local and smtp are known"
        )),
    }
}

/// `HOST`, `HOST:PORT`, `[HOST]:PORT`, `inet:HOST:PORT`, `unix:/PATH`.
fn parse_lmtp(hop: &str) -> Result<NextHop, String> {
    if let Some(path) = hop.strip_prefix("unix:") {
        if !path.starts_with('/') {
            return Err(format!("{path:?}: the socket path must be absolute"));
        }
        return Ok(NextHop::Unix(PathBuf::from(path)));
    }
    let hop = hop.strip_prefix("inet:").unwrap_or(hop);
    let (host, port, _) = split_host_port(hop)?;
    let port = port.unwrap_or(LMTP_PORT);
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    if !is_ip && !is_hostname(host) {
        return Err(format!("{host:?} is not a host name or IP address"));
    }
    Ok(NextHop::Tcp {
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// `[HOST]:PORT`, `[HOST]`, `HOST:PORT` or `HOST`: the host (without
/// brackets), the port if given, and whether it was in brackets.
pub(super) fn split_host_port(hop: &str) -> Result<(&str, Option<u16>, bool), String> {
    let (host, port, bracketed) = if let Some(inner) = hop.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or_else(|| format!("{hop:?}: unclosed ["))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("{hop:?}: expected :PORT after ]"))?,
            ),
        };
        (host, port, true)
    } else {
        match hop.rsplit_once(':') {
            Some((h, p)) => (h, Some(p), false),
            None => (hop, None, false),
        }
    };
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| format!("{p:?} is not a port number"))?,
        ),
    };
    Ok((host, port, bracketed))
}

/// What is wrong with `[transport]`, each with its key.
pub(super) fn problems(config: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    let locals: Vec<String> = config
        .local
        .domains
        .iter()
        .map(|d| d.to_ascii_lowercase())
        .collect();
    for (key, value) in &config.transport {
        let problem = |message: String| Problem {
            key: format!("transport.{key:?}"),
            message,
        };
        // `user@domain` (Postfix's transport_maps: the address first, then
        // its domain) or `domain` or `.domain`.
        let domain = match key.rsplit_once('@') {
            Some((local, domain)) if !local.is_empty() && !local.contains(char::is_whitespace) => {
                if !is_hostname(domain) {
                    out.push(problem(format!("{domain:?} is not a domain")));
                    continue;
                }
                domain
            }
            Some(_) => {
                out.push(problem(format!("{key:?} is not an address (user@domain)")));
                continue;
            }
            None if is_hostname(key.strip_prefix('.').unwrap_or(key)) => key.as_str(),
            None => {
                out.push(problem(format!(
                    "{key:?} is not a domain (or .domain for its subdomains, or user@domain)"
                )));
                continue;
            }
        };
        match parse_transport(value) {
            Err(e) => out.push(problem(e)),
            Ok(TransportSpec::Local) if !locals.contains(&domain.to_ascii_lowercase()) => out.push(
                problem("local delivery is only for domains in local.domains".into()),
            ),
            Ok(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::MINIMAL;
    use super::super::*;
    use super::*;

    fn tcp(host: &str, port: u16) -> TransportSpec {
        TransportSpec::Lmtp(NextHop::Tcp {
            host: host.into(),
            port,
        })
    }

    #[test]
    fn values_parse() {
        assert_eq!(
            parse_transport("lmtp:127.0.0.1:24"),
            Ok(tcp("127.0.0.1", 24))
        );
        assert_eq!(
            parse_transport("lmtp:[127.0.0.1]:2424"),
            Ok(tcp("127.0.0.1", 2424))
        );
        assert_eq!(parse_transport("lmtp:[::1]:24"), Ok(tcp("::1", 24)));
        assert_eq!(parse_transport("lmtp:[::1]"), Ok(tcp("::1", 24)));
        assert_eq!(parse_transport("LMTP:Mail.Test"), Ok(tcp("mail.test", 24)));
        assert_eq!(
            parse_transport("lmtp:inet:mail.test:24"),
            Ok(tcp("mail.test", 24))
        );
        assert_eq!(
            parse_transport("lmtp:unix:/run/dovecot/lmtp"),
            Ok(TransportSpec::Lmtp(NextHop::Unix(
                "/run/dovecot/lmtp".into()
            )))
        );
        assert_eq!(parse_transport("local"), Ok(TransportSpec::Local));
        assert_eq!(parse_transport("smtp"), Ok(TransportSpec::Smtp(None)));
        assert_eq!(
            parse_transport("smtp:[relay.test]:587"),
            Ok(TransportSpec::Smtp(Some(super::super::SmtpHop {
                host: "relay.test".into(),
                port: Some(587),
                mx: false
            })))
        );
        for bad in [
            "lmtp",
            "lmtp:",
            "lmtp:host:0",
            "lmtp:host:99999",
            "lmtp:[::1",
            "lmtp:[::1]24",
            "lmtp:unix:relative",
            "lmtp:bad host:24",
            "pipe:x",
            "local:x",
            "virtual",
        ] {
            assert!(parse_transport(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn next_hops_display_as_route_prints_them() {
        let show = |v: &str| match parse_transport(v) {
            Ok(TransportSpec::Lmtp(h)) => h.to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(show("lmtp:[127.0.0.1]:24"), "127.0.0.1:24");
        assert_eq!(show("lmtp:[::1]:24"), "[::1]:24");
        assert_eq!(show("lmtp:unix:/s"), "unix:/s");
    }

    #[test]
    fn check_names_the_key() {
        let with = |lines: &str| {
            Config::from_toml(
                &format!("{MINIMAL}\n[transport]\n{lines}\n"),
                Path::new("t.toml"),
            )
        };
        let c = with("\"lmtp.test\" = \"lmtp:127.0.0.1:24\"\n\".sub.test\" = \"smtp\"").unwrap();
        assert_eq!(c.transport.len(), 2);
        assert!(with("\"example.test\" = \"local\"").is_ok());
        assert!(with("\"bob@example.test\" = \"lmtp:127.0.0.1:24\"").is_ok());
        for (line, want) in [
            (
                "\"lmtp.test\" = \"pipe:x\"",
                "transport.\"lmtp.test\": unknown transport \"pipe\"",
            ),
            (
                "\"lmtp.test\" = \"lmtp:h:x\"",
                "transport.\"lmtp.test\": \"x\" is not a port number",
            ),
            (
                "\"bad key\" = \"smtp\"",
                "transport.\"bad key\": \"bad key\" is not a domain",
            ),
            (
                "\"@b.test\" = \"smtp\"",
                "transport.\"@b.test\": \"@b.test\" is not an address",
            ),
            ("\"a@b_c\" = \"smtp\"", "\"b_c\" is not a domain"),
            (
                "\"far.test\" = \"local\"",
                "only for domains in local.domains",
            ),
            (
                "\"a@far.test\" = \"local\"",
                "only for domains in local.domains",
            ),
        ] {
            let err = with(line).unwrap_err().to_string();
            assert!(err.contains(want), "{line}: {err}");
        }
    }
}
