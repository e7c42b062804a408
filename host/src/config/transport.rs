//! `[transport]` and the `local.transport_maps` files: which delivery
//! agent takes an address's or a domain's mail (Postfix's
//! `transport_maps`). Keys are `user@domain`, `domain`, `.domain` (its
//! subdomains) and `*` (any other address); values are
//! `lmtp:HOST:PORT`, `lmtp:[HOST]:PORT`, `lmtp:unix:/PATH`,
//! `smtp[:NEXTHOP]`, `local` (the `[local] mailbox`), `maildir`, `mbox`,
//! `pipe` (one local mailbox kind, whatever `[local] mailbox` says),
//! `error[:TEXT]` (bounced), `retry[:TEXT]` (deferred) and
//! `discard[:TEXT]` (dropped as delivered), as Postfix's error(8) and
//! discard(8) do.

use std::fmt;
use std::path::PathBuf;

use super::{Config, Mailbox, Problem, is_hostname};

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
    /// One local mailbox kind (`maildir`, `mbox`, `pipe`), whatever
    /// `[local] mailbox` says.
    Mailbox(Mailbox),
    /// `error:TEXT` (bounced) or `retry:TEXT` (deferred): Postfix's
    /// error(8) and retry(8).
    Refuse {
        /// Bounced (`error`) rather than deferred (`retry`).
        bounce: bool,
        /// The enhanced status code: the one TEXT starts with, else
        /// `5.0.0` / `4.0.0`.
        dsn: String,
        /// What the sender is told (the text after the code).
        text: String,
    },
    /// `discard[:TEXT]`: counted as delivered, not stored (discard(8)).
    Discard(String),
}

impl TransportSpec {
    /// True for the agents that deliver into a local user's mailbox.
    pub fn is_local(&self) -> bool {
        matches!(self, TransportSpec::Local | TransportSpec::Mailbox(_))
    }
}

/// `error:`/`retry:` text: an optional enhanced status code of the right
/// class first, then the words.
fn parse_refusal(word: &str, rest: Option<&str>) -> Result<TransportSpec, String> {
    let bounce = word == "error";
    let class = if bounce { '5' } else { '4' };
    let text = rest.unwrap_or("").trim();
    let (first, after) = text.split_once(' ').unwrap_or((text, ""));
    let is_code = |c: &str| {
        let parts: Vec<&str> = c.split('.').collect();
        parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
    };
    let (dsn, text) = if is_code(first) {
        if !first.starts_with(class) {
            return Err(format!(
                "{word}: the status code {first} must be {class}.X.X ({})",
                if bounce {
                    "error bounces; use retry: for a temporary failure"
                } else {
                    "retry defers; use error: to bounce"
                }
            ));
        }
        (first.to_string(), after.trim().to_string())
    } else {
        (format!("{class}.0.0"), text.to_string())
    };
    let text = if text.is_empty() {
        format!(
            "delivery {} by the transport table",
            if bounce { "refused" } else { "deferred" }
        )
    } else {
        text
    };
    if text.contains(['\r', '\n']) {
        return Err(format!("{word}: the text must be one line"));
    }
    Ok(TransportSpec::Refuse { bounce, dsn, text })
}

/// Parses a `[transport]` value; the error says what is wrong.
pub fn parse_transport(value: &str) -> Result<TransportSpec, String> {
    let value = value.trim();
    let (word, rest) = match value.split_once(':') {
        Some((w, r)) => (w, Some(r)),
        None => (value, None),
    };
    let word = word.to_ascii_lowercase();
    let mailbox = match word.as_str() {
        "maildir" => Some(Mailbox::Maildir),
        "mbox" => Some(Mailbox::Mbox),
        "pipe" => Some(Mailbox::Pipe),
        _ => None,
    };
    match (word.as_str(), rest) {
        ("", _) => Err(format!(
            "{value:?}: an empty transport (`:NEXTHOP`) is not supported: name it (smtp:NEXTHOP)"
        )),
        ("local", None | Some("")) => Ok(TransportSpec::Local),
        ("local", Some(_)) => Err("local takes no next hop".into()),
        (_, None | Some("")) if mailbox.is_some() => {
            Ok(TransportSpec::Mailbox(mailbox.unwrap_or_default()))
        }
        (w, Some(_)) if mailbox.is_some() => Err(format!(
            "{w} takes no next hop (its mailbox is local.{})",
            if w == "pipe" { "pipe.command" } else { w }
        )),
        ("smtp", None | Some("")) => Ok(TransportSpec::Smtp(None)),
        ("smtp", Some(hop)) => super::parse_smtp_hop(hop).map(|h| TransportSpec::Smtp(Some(h))),
        ("lmtp", Some(hop)) if !hop.is_empty() => parse_lmtp(hop).map(TransportSpec::Lmtp),
        ("lmtp", _) => Err("lmtp needs a next hop: lmtp:HOST:PORT or lmtp:unix:/PATH".into()),
        ("error" | "retry", rest) => parse_refusal(&word, rest),
        ("discard", rest) => Ok(TransportSpec::Discard(
            rest.map(str::trim)
                .filter(|t| !t.is_empty())
                .unwrap_or("discarded")
                .to_string(),
        )),
        (w, _) => Err(format!(
            "unknown transport {w:?}: known are smtp, lmtp, local, maildir, mbox, pipe, \
             error, retry and discard"
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

/// The domain a transport key names: `Some(domain)` for `user@domain`
/// and `domain`, `Some(".domain")` for subdomains, `None` for `*`; the
/// error says what is wrong with the key.
pub fn key_domain(key: &str) -> Result<Option<&str>, String> {
    if key == "*" {
        return Ok(None);
    }
    // `user@domain` (Postfix's transport_maps: the address first, then
    // its domain) or `domain` or `.domain`.
    match key.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() && !local.contains(char::is_whitespace) => {
            if is_hostname(domain) {
                Ok(Some(domain))
            } else {
                Err(format!("{domain:?} is not a domain"))
            }
        }
        Some(_) => Err(format!("{key:?} is not an address (user@domain)")),
        None if is_hostname(key.strip_prefix('.').unwrap_or(key)) => Ok(Some(key)),
        None => Err(format!(
            "{key:?} is not a domain (or .domain for its subdomains, user@domain, or *)"
        )),
    }
}

/// Checks one transport entry (from `[transport]` or a file): its key,
/// and that a local mailbox agent is only for a local domain's keys.
/// `locals`: `local.domains` in lower case.
pub fn check_entry(key: &str, spec: &TransportSpec, locals: &[String]) -> Result<(), String> {
    let domain = key_domain(key)?;
    if spec.is_local() && !domain.is_some_and(|d| locals.contains(&d.to_ascii_lowercase())) {
        return Err("local delivery is only for domains in local.domains".into());
    }
    Ok(())
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
        let checked = parse_transport(value).and_then(|spec| check_entry(key, &spec, &locals));
        if let Err(message) = checked {
            out.push(Problem {
                key: format!("transport.{key:?}"),
                message,
            });
        }
    }
    for (i, p) in config.local.transport_maps.iter().enumerate() {
        if p.as_os_str().is_empty() {
            out.push(Problem {
                key: format!("local.transport_maps[{i}]"),
                message: "is empty: give the path of a file".into(),
            });
        }
    }
    out
}

/// The mailbox kinds `[transport]` names, for their settings' checks.
pub(super) fn mailbox_kinds(config: &Config) -> Vec<Mailbox> {
    config
        .transport
        .values()
        .filter_map(|v| match parse_transport(v) {
            Ok(TransportSpec::Mailbox(kind)) => Some(kind),
            _ => None,
        })
        .collect()
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
        assert!(with("\"bob@example.test\" = \"mbox\"").is_ok());
        assert!(with("\"*\" = \"error:5.7.1 no\"").is_ok());
        assert!(with("\"gone.test\" = \"discard\"").is_ok());
        for (line, want) in [
            (
                "\"lmtp.test\" = \"frob:x\"",
                "transport.\"lmtp.test\": unknown transport \"frob\"",
            ),
            (
                "\"lmtp.test\" = \"pipe:x\"",
                "transport.\"lmtp.test\": pipe takes no next hop",
            ),
            (
                "\"*\" = \"mbox\"",
                "transport.\"*\": local delivery is only for domains in local.domains",
            ),
            (
                "\"example.test\" = \"pipe\"",
                "local.pipe.command: is empty",
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
