//! Routing: which recipients are ours, what aliases expand to, the `+tag`
//! delimiter, and the relay decision that no plugin can loosen.

mod expand;
pub mod live;
pub mod table;
pub mod transport_table;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::{Config, Mailbox, SmtpHop, TransportSpec, parse_transport};
use live::{Context, Kind, Live};
pub use table::TableError;

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

/// How local mail is stored, from `[local]`.
#[derive(Debug, Clone)]
pub struct LocalMailbox {
    /// Maildir, mbox or pipe.
    pub kind: crate::config::Mailbox,
    /// `local.mbox`.
    pub mbox_template: String,
    /// `local.mbox_lock_timeout`.
    pub mbox_lock_timeout: std::time::Duration,
    /// `[local.pipe]`.
    pub pipe: crate::config::Pipe,
}

/// The routing tables of one configuration generation.
#[derive(Debug, Clone)]
pub struct Router {
    local_domains: HashSet<String>,
    /// `local.virtual_alias_domains` (the tables may declare more).
    virtual_domains: HashSet<String>,
    /// Our own addresses: `user@[IP]` is local for these.
    literals: HashSet<IpAddr>,
    users: HashMap<String, String>,
    aliases: HashMap<String, Vec<String>>,
    maildir_template: String,
    /// `[local]`'s mailbox settings: where a local user's mail goes.
    mailbox: Arc<LocalMailbox>,
    delimiter: Option<char>,
    origin: String,
    trusted: Vec<IpNet>,
    tables: Arc<Live>,
    /// `[transport]`: key (lower case) → its agent; before the
    /// `transport_maps` files for the same key.
    transports: HashMap<String, TransportSpec>,
    /// `smtp_client.relayhost`: the next hop of every other domain.
    relayhost: Option<SmtpHop>,
    /// `local.create_tag_folders`.
    create_tag_folders: bool,
}

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

/// The domain keys of a transport lookup: the domain itself, then the
/// `.parent` keys, nearest first (`.domain` matches subdomains only).
fn domain_keys(domain: &str) -> impl Iterator<Item = String> {
    let domain = domain.to_ascii_lowercase();
    let parents: Vec<String> = domain
        .match_indices('.')
        .filter_map(|(i, _)| domain.get(i..).map(str::to_string))
        .collect();
    std::iter::once(domain).chain(parents)
}

/// Where a transport entry was found, for `postern route`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `[transport]`, with its key.
    Toml(String),
    /// A `transport_maps` file, with the line of the key.
    File {
        /// The file.
        path: PathBuf,
        /// The line.
        line: usize,
    },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Toml(key) => write!(f, "[transport] {key:?}"),
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
        }
    }
}

/// The IP address of an address literal (`[192.0.2.1]`, `[IPv6:::1]`).
pub fn literal_ip(domain: &str) -> Option<IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    match inner.split_at_checked(5) {
        Some((tag, v6)) if tag.eq_ignore_ascii_case("IPv6:") => v6.parse().ok().map(IpAddr::V6),
        _ => inner.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

/// The addresses our listeners are bound to, with the loopback ones
/// when a listener is bound to a wildcard address.
fn own_addresses(config: &Config) -> HashSet<IpAddr> {
    let mut out = HashSet::new();
    for l in &config.listeners {
        let ip = l.address.ip().to_canonical();
        if ip.is_unspecified() {
            out.insert(IpAddr::from([127, 0, 0, 1]));
            out.insert(IpAddr::from(std::net::Ipv6Addr::LOCALHOST));
        } else {
            out.insert(ip);
        }
    }
    out
}

impl Router {
    /// `user+tag` into a `.tag` folder made on demand.
    pub fn create_tag_folders(&self) -> bool {
        self.create_tag_folders
    }
}

impl Router {
    /// Builds the tables of a validated config, without reading the files
    /// of `virtual_alias_maps` and `alias_maps` (see [`Router::load`]).
    pub fn new(config: &Config) -> Router {
        Router {
            local_domains: config
                .local
                .domains
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            virtual_domains: config
                .local
                .virtual_alias_domains
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            literals: own_addresses(config),
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
            mailbox: Arc::new(LocalMailbox {
                kind: config.local.mailbox,
                mbox_template: config.local.mbox.clone(),
                mbox_lock_timeout: config.local.mbox_lock_timeout.0,
                pipe: config.local.pipe.clone(),
            }),
            delimiter: config.local.recipient_delimiter.chars().next(),
            origin: config.server.origin(),
            trusted: config.server.trusted_networks.clone(),
            tables: Arc::new(Live::empty()),
            transports: config
                .transport
                .iter()
                .filter_map(|(k, v)| Some((k.to_lowercase(), parse_transport(v).ok()?)))
                .collect(),
            create_tag_folders: config.local.create_tag_folders,
            relayhost: config
                .smtp_client
                .relayhost
                .as_deref()
                .and_then(|h| crate::config::parse_smtp_hop(h).ok()),
        }
    }

    /// Builds the tables of a validated config and reads its
    /// `virtual_alias_maps` and `alias_maps`; an error names `FILE:LINE`.
    pub fn load(config: &Config) -> Result<Router, TableError> {
        let mut router = Router::new(config);
        let sources = config
            .local
            .virtual_alias_maps
            .iter()
            .map(|p| (p.clone(), Kind::Virtual))
            .chain(
                config
                    .local
                    .alias_maps
                    .iter()
                    .map(|p| (p.clone(), Kind::Aliases)),
            )
            .chain(
                config
                    .local
                    .transport_maps
                    .iter()
                    .map(|p| (p.clone(), Kind::Transport)),
            )
            .collect();
        let context = Context {
            local_domains: router.local_domains.clone(),
            users: router.users.keys().cloned().collect(),
            toml_aliases: router
                .aliases
                .keys()
                .filter(|k| !k.contains('@'))
                .cloned()
                .collect(),
            toml_targets: config
                .aliases
                .iter()
                .map(|(k, v)| (k.clone(), v.list()))
                .collect(),
            unusable: if config.local.transport_maps.is_empty() {
                Vec::new()
            } else {
                [Mailbox::Maildir, Mailbox::Mbox, Mailbox::Pipe]
                    .into_iter()
                    .filter_map(|k| Some((k, crate::config::kind_problem(config, k)?)))
                    .collect()
            },
        };
        router.tables = Arc::new(Live::load(sources, context)?);
        Ok(router)
    }

    /// Reads the table files again whenever they change, for as long as
    /// this router (or a clone) is in use. Needs a Tokio runtime.
    pub fn watch(&self) {
        live::watch(&self.tables);
    }

    /// Reads the table files again now if they changed.
    pub fn refresh(&self) {
        self.tables.refresh();
    }

    /// Keys in the table files, and virtual alias domains (configured and
    /// declared), for summaries.
    pub fn table_counts(&self) -> (usize, usize) {
        let tables = self.tables.tables();
        let declared: HashSet<&String> = tables
            .virtuals
            .iter()
            .flat_map(|t| t.domains.keys())
            .chain(self.virtual_domains.iter())
            .collect();
        (tables.len(), declared.len())
    }

    /// The recipient delimiter, if enabled.
    pub fn delimiter(&self) -> Option<char> {
        self.delimiter
    }

    /// True if mail for `domain` is ours: a local domain, a virtual alias
    /// domain, or an address literal of ours. Mail for any other domain
    /// is relayed.
    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.is_mydestination(domain) || self.is_virtual_domain(domain)
    }

    /// True if mail for `domain` is accepted from any client: ours
    /// ([`Router::is_local_domain`]) or the key of a transport entry that
    /// delivers, `domain` or `.parent` (Postfix's `relay_domains`: its
    /// next hop decides on the user). Neither `*` nor an `error`, `retry`
    /// or `discard` entry opens a domain to the world. Relay control asks
    /// this; RCPT-time expansion does not (a transport domain's addresses
    /// are not local users).
    pub fn accepts_domain(&self, domain: &str) -> bool {
        self.is_local_domain(domain)
            || domain_keys(domain).any(|key| {
                self.lookup_key(&key).is_some_and(|(spec, _)| {
                    !matches!(
                        spec,
                        TransportSpec::Refuse { .. } | TransportSpec::Discard(_)
                    )
                })
            })
    }

    /// The transport entry of an address, as Postfix's transport_maps
    /// looks it up: the address as written, then without its `+tag`, then
    /// its domain, its parents' `.domain` keys, then `*`. For each key
    /// `[transport]` answers first, then each `transport_maps` file in
    /// order; the first key found wins. With where it was found.
    pub fn address_transport_entry(
        &self,
        local: &str,
        domain: &str,
    ) -> Option<(TransportSpec, Origin)> {
        let domain_lc = domain.to_ascii_lowercase();
        let exact = format!("{}@{domain_lc}", local.to_lowercase());
        let base = self
            .delimiter
            .and_then(|d| split_tag(local, d))
            .map(|(base, _)| format!("{}@{domain_lc}", base.to_lowercase()));
        std::iter::once(exact)
            .chain(base)
            .chain(domain_keys(domain))
            .chain(std::iter::once("*".to_string()))
            .find_map(|key| self.lookup_key(&key))
    }

    /// One key, in `[transport]` then the files.
    fn lookup_key(&self, key: &str) -> Option<(TransportSpec, Origin)> {
        if let Some(spec) = self.transports.get(key) {
            return Some((spec.clone(), Origin::Toml(key.to_string())));
        }
        let tables = self.tables.tables();
        tables.transport(key).map(|(e, path)| {
            (
                e.spec.clone(),
                Origin::File {
                    path: path.to_path_buf(),
                    line: e.line,
                },
            )
        })
    }

    /// True if mail for `domain` is delivered here (Postfix's
    /// `mydestination`, and `inet_interfaces` as address literals).
    pub fn is_mydestination(&self, domain: &str) -> bool {
        self.local_domains.contains(&domain.to_ascii_lowercase())
            || literal_ip(domain).is_some_and(|ip| self.literals.contains(&ip.to_canonical()))
    }

    /// True if `domain` is a virtual alias domain (configured, or
    /// declared by a table): its addresses are only what the tables say.
    pub fn is_virtual_domain(&self, domain: &str) -> bool {
        let domain = domain.to_ascii_lowercase();
        self.virtual_domains.contains(&domain) || self.tables.tables().declares(&domain)
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

    /// Where local users' mail goes (`[local] mailbox`, `mbox`, `pipe`).
    pub fn mailbox(&self) -> &LocalMailbox {
        &self.mailbox
    }

    /// The mbox file of a local user.
    pub fn mbox(&self, user: &str) -> PathBuf {
        PathBuf::from(self.mailbox.mbox_template.replace("{user}", user))
    }

    /// True if the user exists.
    pub fn has_user(&self, user: &str) -> bool {
        self.users.contains_key(&user.to_lowercase())
    }
}

pub mod transport;

pub use transport::{Transport, TransportError};

#[cfg(test)]
mod expand_tests;
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
