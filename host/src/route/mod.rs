//! Routing: which recipients are ours, what aliases expand to, the `+tag`
//! delimiter, and the relay decision that no plugin can loosen.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::smtp::address::{ForwardPath, Mailbox, local_value};

/// Where one accepted recipient goes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Destination {
    /// A local mailbox.
    Local {
        /// Local user name.
        user: String,
        /// The `+tag` of the address, if any.
        tag: Option<String>,
        /// The domain the mail was addressed to (for `Delivered-To`).
        domain: String,
    },
    /// Another domain: relayed (or forwarded by an alias).
    Remote {
        /// The full address.
        address: String,
    },
}

impl Destination {
    /// The address this destination stands for, as used in logs and
    /// `Delivered-To:`.
    pub fn address(&self, delimiter: Option<char>) -> String {
        match self {
            Destination::Local { user, tag, domain } => match (tag, delimiter) {
                (Some(t), Some(d)) => format!("{user}{d}{t}@{domain}"),
                _ => format!("{user}@{domain}"),
            },
            Destination::Remote { address } => address.clone(),
        }
    }
}

/// Why a recipient cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// A local domain without such a user or alias.
    #[error("user unknown")]
    UnknownUser,
    /// Alias expansion went too deep or looped.
    #[error("alias expansion loop or too deep")]
    AliasLoop,
}

/// The routing tables of one configuration generation.
#[derive(Debug, Clone)]
pub struct Router {
    local_domains: HashSet<String>,
    users: HashMap<String, String>,
    aliases: HashMap<String, Vec<String>>,
    maildir_template: String,
    delimiter: Option<char>,
    origin: String,
    trusted: Vec<IpNet>,
}

const MAX_ALIAS_DEPTH: usize = 10;

/// Splits `user+tag` at the first delimiter of the local part as written
/// (ASCII or Unicode case-insensitively, for a letter delimiter); `None`
/// without a delimiter or with nothing before it. Both parts are cut from
/// `local` itself, never at an offset measured on a case-mapped copy: case
/// mapping changes UTF-8 lengths (U+212A KELVIN SIGN lower-cases from 3
/// bytes to 1, U+0130 from 2 to 3).
pub fn split_tag(local: &str, delimiter: char) -> Option<(&str, &str)> {
    let (at, c) = local
        .char_indices()
        .find(|&(_, c)| c == delimiter || c.to_lowercase().eq(delimiter.to_lowercase()))?;
    let (base, rest) = local.split_at_checked(at)?;
    let tag = rest.get(c.len_utf8()..)?;
    (!base.is_empty()).then_some((base, tag))
}

impl Router {
    /// Builds the tables from a validated config.
    pub fn new(config: &Config) -> Router {
        Router {
            local_domains: config
                .local
                .domains
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            users: config
                .local
                .users
                .iter()
                .map(|u| (u.to_lowercase(), u.clone()))
                .collect(),
            aliases: config
                .aliases
                .iter()
                .map(|(k, v)| (k.to_lowercase(), v.list()))
                .collect(),
            maildir_template: config.local.maildir.clone(),
            delimiter: config.local.recipient_delimiter.chars().next(),
            origin: config.server.origin(),
            trusted: config.server.trusted_networks.clone(),
        }
    }

    /// The recipient delimiter, if enabled.
    pub fn delimiter(&self) -> Option<char> {
        self.delimiter
    }

    /// True if mail for `domain` is delivered here.
    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.local_domains.contains(&domain.to_ascii_lowercase())
    }

    /// True if the client address is in `trusted_networks` (`mynetworks`).
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// The Maildir of a local user.
    pub fn maildir(&self, user: &str) -> PathBuf {
        PathBuf::from(self.maildir_template.replace("{user}", user))
    }

    /// True if the user exists.
    pub fn has_user(&self, user: &str) -> bool {
        self.users.contains_key(&user.to_lowercase())
    }

    /// Expands a recipient into its destinations (aliases, `+tag`).
    /// Remote domains yield one `Remote` destination; whether relaying is
    /// allowed is the caller's decision ([`Router::is_trusted`]).
    pub fn resolve(&self, to: &ForwardPath) -> Result<Vec<Destination>, RouteError> {
        let mailbox = match to {
            ForwardPath::Postmaster => Mailbox {
                local: "postmaster".into(),
                domain: self.origin.clone(),
            },
            ForwardPath::Mailbox(m) => m.clone(),
        };
        let mut out = BTreeSet::new();
        self.expand(&mailbox.local, &mailbox.domain, None, 0, &mut out)?;
        Ok(out.into_iter().collect())
    }

    fn expand(
        &self,
        local: &str,
        domain: &str,
        inherited_tag: Option<&str>,
        depth: usize,
        out: &mut BTreeSet<Destination>,
    ) -> Result<(), RouteError> {
        if depth > MAX_ALIAS_DEPTH {
            return Err(RouteError::AliasLoop);
        }
        let domain_lc = domain.to_ascii_lowercase();
        if !self.local_domains.contains(&domain_lc) {
            let address = match inherited_tag {
                Some(t)
                    if self.delimiter.is_some()
                        && !local.contains(self.delimiter.unwrap_or('+')) =>
                {
                    format!("{local}{}{t}@{domain}", self.delimiter.unwrap_or('+'))
                }
                _ => format!("{local}@{domain}"),
            };
            out.insert(Destination::Remote { address });
            return Ok(());
        }
        // A quoted local part names the same mailbox as its value.
        let value = local_value(local);
        let local = value.as_ref();
        // Try the whole local part first, then without its +tag (Postfix order).
        let mut candidates = vec![(local.to_lowercase(), inherited_tag.map(str::to_string))];
        if let Some((base, tag)) = self.delimiter.and_then(|d| split_tag(local, d)) {
            // The tag as the sender wrote it; only the user is looked up.
            candidates.push((base.to_lowercase(), Some(tag.to_string())));
        }
        for (name, tag) in &candidates {
            let targets = self
                .aliases
                .get(&format!("{name}@{domain_lc}"))
                .or_else(|| self.aliases.get(name));
            if let Some(targets) = targets {
                for t in targets {
                    let (tl, td) = match t.rsplit_once('@') {
                        Some((l, d)) => (l, d),
                        None => (t.as_str(), domain),
                    };
                    // An alias whose target is itself is a mailbox, not a loop.
                    if tl.eq_ignore_ascii_case(name)
                        && td.eq_ignore_ascii_case(domain)
                        && let Some(user) = self.users.get(name)
                    {
                        out.insert(self.local_dest(user, tag.as_deref(), &domain_lc));
                        continue;
                    }
                    self.expand(tl, td, tag.as_deref(), depth + 1, out)?;
                }
                return Ok(());
            }
            if let Some(user) = self.users.get(name) {
                out.insert(self.local_dest(user, tag.as_deref(), &domain_lc));
                return Ok(());
            }
        }
        Err(RouteError::UnknownUser)
    }

    fn local_dest(&self, user: &str, tag: Option<&str>, domain: &str) -> Destination {
        Destination::Local {
            user: user.to_string(),
            tag: tag.filter(|t| !t.is_empty()).map(str::to_string),
            domain: domain.to_string(),
        }
    }
}

pub mod transport;

pub use transport::{Transport, TransportError};

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::parse_forward_path;
    use std::path::Path;

    fn router() -> Router {
        let text = r#"
[server]
hostname = "mx.example.test"
trusted_networks = ["127.0.0.1/32", "10.0.0.0/8"]
[[listener]]
address = "127.0.0.1:2525"
[local]
domains = ["example.test", "other.test"]
users = ["alice", "bob"]
[aliases]
postmaster = "alice"
abuse = "alice"
team = ["alice", "bob"]
"info@other.test" = "bob"
forward = "someone@remote.test"
both = ["alice", "team"]
loop1 = "loop2"
loop2 = "loop1"
"#;
        Router::new(&Config::from_toml(text, Path::new("t.toml")).unwrap())
    }

    fn resolve(r: &Router, addr: &str) -> Result<Vec<String>, RouteError> {
        let to = parse_forward_path(addr, true).unwrap();
        r.resolve(&to)
            .map(|v| v.iter().map(|d| d.address(Some('+'))).collect())
    }

    #[test]
    fn users_aliases_and_tags() {
        let r = router();
        assert_eq!(
            resolve(&r, "alice@example.test").unwrap(),
            ["alice@example.test"]
        );
        assert_eq!(
            resolve(&r, "ALICE@Example.Test").unwrap(),
            ["alice@example.test"]
        );
        assert_eq!(
            resolve(&r, "alice+News@example.test").unwrap(),
            ["alice+News@example.test"]
        );
        assert_eq!(
            resolve(&r, "PostMaster@other.test").unwrap(),
            ["alice@other.test"]
        );
        assert_eq!(resolve(&r, "postmaster").unwrap(), ["alice@example.test"]);
        // A quoted local part is its value (RFC 5322 §3.2.4).
        assert_eq!(
            resolve(&r, "\"alice\"@example.test").unwrap(),
            ["alice@example.test"]
        );
        assert_eq!(
            resolve(&r, "\"ali\\ce+x\"@example.test").unwrap(),
            ["alice+x@example.test"]
        );
        assert_eq!(
            resolve(&r, "\"postmaster\"@example.test").unwrap(),
            ["alice@example.test"]
        );
        assert_eq!(
            resolve(&r, "\"ali ce\"@example.test"),
            Err(RouteError::UnknownUser)
        );
        // Remote addresses keep their quotes.
        assert_eq!(
            resolve(&r, "\"x y\"@remote.test").unwrap(),
            ["\"x y\"@remote.test"]
        );
        assert_eq!(
            resolve(&r, "abuse@example.test").unwrap(),
            ["alice@example.test"]
        );
        assert_eq!(
            resolve(&r, "both@example.test").unwrap(),
            ["alice@example.test", "bob@example.test"]
        );
        assert_eq!(resolve(&r, "info@other.test").unwrap(), ["bob@other.test"]);
        assert_eq!(
            resolve(&r, "info@example.test"),
            Err(RouteError::UnknownUser)
        );
        assert_eq!(
            resolve(&r, "carol@example.test"),
            Err(RouteError::UnknownUser)
        );
        assert_eq!(
            resolve(&r, "forward@example.test").unwrap(),
            ["someone@remote.test"]
        );
        assert_eq!(
            resolve(&r, "loop1@example.test"),
            Err(RouteError::AliasLoop)
        );
        assert_eq!(resolve(&r, "x@remote.test").unwrap(), ["x@remote.test"]);
    }

    #[test]
    fn tags_are_cut_from_the_address_as_written() {
        let r = router();
        // U+212A KELVIN SIGN lower-cases from 3 bytes to 1, U+0130 from 2
        // to 3: the tag is where the delimiter is in what the client
        // wrote, whatever case mapping does to lengths.
        assert_eq!(
            resolve(&r, "alice+\u{212A}@example.test").unwrap(),
            ["alice+\u{212A}@example.test"]
        );
        assert_eq!(
            resolve(&r, "alice+\u{212A}\u{212A}x@example.test").unwrap(),
            ["alice+\u{212A}\u{212A}x@example.test"]
        );
        assert_eq!(
            resolve(&r, "\u{212A}\u{212A}+tag@example.test"),
            Err(RouteError::UnknownUser)
        );
        assert_eq!(
            resolve(&r, "alice+\u{130}\u{130}\u{130}@example.test").unwrap(),
            ["alice+\u{130}\u{130}\u{130}@example.test"]
        );
        assert_eq!(
            resolve(&r, "ALICE+News@example.test").unwrap(),
            ["alice+News@example.test"]
        );
        // The first delimiter ends the user; the rest is the tag.
        assert_eq!(
            resolve(&r, "alice+a+b@example.test").unwrap(),
            ["alice+a+b@example.test"]
        );
    }

    #[test]
    fn trusted_networks() {
        let r = router();
        assert!(r.is_trusted("127.0.0.1".parse().unwrap()));
        assert!(r.is_trusted("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!r.is_trusted("127.0.0.2".parse().unwrap()));
    }
}
