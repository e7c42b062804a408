//! The TOML configuration: one file, unknown keys are errors, every value
//! has a sane default, and [`Config::validate`] names the offending key.

mod bounds;
mod client;
mod kv;
mod mailbox;
mod policy_service;
mod route;
mod transport;
mod units;
mod wasm;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

pub use client::{SMTP_PORT, SmtpClient, SmtpHop, TlsLevel, parse_smtp_hop, read_password};
pub use kv::{Kv, KvBackend};
pub use mailbox::{Mailbox, PLACEHOLDERS, Pipe, expand, kind_problem};
pub use policy_service::{
    ChainEntry, PolicyEndpoint, PolicyServiceEntry, WasmEntry, parse_policy_endpoint,
};
pub use transport::{LMTP_PORT, NextHop, TransportSpec, check_entry, key_domain, parse_transport};
pub use units::{Bytes, Seconds};
pub use wasm::Wasm;

/// A configuration problem, with the dotted key it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct Problem {
    /// Dotted path of the offending key, e.g. `listener[0].address`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

/// Why a config file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax error, wrong type or unknown key (toml names line and key).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, including line, column and key.
        message: String,
    },
    /// The file parsed but its values do not make sense together.
    #[error("{path}: {}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n  "))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Everything found wrong.
        problems: Vec<Problem>,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identity, spool and trusted networks.
    pub server: Server,
    /// SMTP protocol settings and limits.
    #[serde(default)]
    pub smtp: Smtp,
    /// Where Postern listens (`[[listener]]`).
    #[serde(default, rename = "listener")]
    pub listeners: Vec<Listener>,
    /// The resolver.
    #[serde(default)]
    pub dns: Dns,
    /// Local domains, users and mailboxes.
    #[serde(default)]
    pub local: Local,
    /// Aliases: local part (any local domain) or full address → targets.
    #[serde(default)]
    pub aliases: BTreeMap<String, Targets>,
    /// Queue and delivery behaviour.
    #[serde(default)]
    pub queue: Queue,
    /// How mail leaves for other domains (`[smtp_client]`).
    #[serde(default)]
    pub smtp_client: SmtpClient,
    /// The WebAssembly runtime (`[wasm]`).
    #[serde(default)]
    pub wasm: Wasm,
    /// Plugin components (`[[plugin]]`).
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<PluginDef>,
    /// Per-stage plugin chains (`[[chain.rcpt]]` ...).
    #[serde(default)]
    pub chain: Chains,
    /// Thresholds for the scores plugins contribute.
    #[serde(default)]
    pub scoring: Scoring,
    /// The store behind plugins' `kv` capability (`[kv]`).
    #[serde(default)]
    pub kv: Kv,
    /// Certificates.
    #[serde(default)]
    pub tls: Tls,
    /// SMTP AUTH credential backends (`[[auth]]`).
    #[serde(default)]
    pub auth: Vec<Auth>,
    /// Envelope senders an authenticated identity may use, besides its own
    /// address and its +tag forms: identity → addresses or `@domain`.
    #[serde(default)]
    pub sender_logins: BTreeMap<String, Vec<String>>,
    /// Delivery agents by domain (`transport_maps`): domain or `.domain`
    /// → `lmtp:HOST:PORT`, `lmtp:unix:/PATH`, `local` or `smtp`.
    #[serde(default)]
    pub transport: BTreeMap<String, String>,
}

/// What a plugin failure (trap, time or memory limit) costs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// `451 4.3.0`: the client retries, the mail is not lost (default).
    #[default]
    Tempfail,
    /// Skip the plugin (fail open).
    Continue,
}

/// `[[plugin]]`: one WebAssembly component.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginDef {
    /// Name used by chain entries and in logs.
    pub name: String,
    /// The component (`.wasm`), relative to the working directory.
    pub path: PathBuf,
    /// What a failure costs.
    #[serde(default)]
    pub on_error: OnError,
    /// Keep a pool of warm instances that serve any call of any session
    /// (for Python/JS guests whose instantiation costs milliseconds, or
    /// for long chains). Default: a fresh instance per transaction.
    #[serde(default)]
    pub reuse_instances: bool,
    /// Linear memory limit per instance (all its memories together). One instance serves every chain
    /// entry of the plugin, so this must hold the parsed config of all
    /// its entries at once (plus one call's work).
    #[serde(default = "default_plugin_memory")]
    pub memory_limit: Bytes,
    /// CPU time allowed per call (checked every 10 ms); waits in host
    /// calls end at a wall-clock backstop of 4x (at least 2 s more).
    #[serde(default = "default_plugin_time")]
    pub time_limit: Seconds,
    /// Wall-clock time one call's DNS lookups (`dns` capability) may take
    /// together; it does not count against `time_limit`, and extends the
    /// call's wall-clock backstop. Past it, further lookups of the call
    /// answer `temporary("time limit")`.
    #[serde(default = "default_dns_time")]
    pub dns_time_limit: Seconds,
    /// Capabilities beyond the base interfaces (`host`, `types`, WASI)
    /// that the plugin may import; one it imports without a grant is
    /// refused at load.
    #[serde(default)]
    pub grants: Vec<Grant>,
}

/// A capability a `[[plugin]]` may be granted (`grants = ["edit"]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grant {
    /// `postern:filter/edit`: header edits by host call.
    Edit,
    /// `postern:filter/dns`: DNS lookups through the host's resolver.
    Dns,
    /// `postern:filter/kv`: the key-value store (`[kv]`).
    Kv,
}

impl Grant {
    /// Its name in config.
    pub fn name(self) -> &'static str {
        match self {
            Grant::Edit => "edit",
            Grant::Dns => "dns",
            Grant::Kv => "kv",
        }
    }
}

fn default_plugin_memory() -> Bytes {
    Bytes(64 << 20)
}

fn default_plugin_time() -> Seconds {
    Seconds(std::time::Duration::from_millis(500))
}

fn default_dns_time() -> Seconds {
    Seconds(std::time::Duration::from_secs(5))
}

/// `[chain]`: an ordered list of plugin entries per stage.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Chains {
    /// On connect, before the greeting.
    pub connect: Vec<ChainEntry>,
    /// On HELO/EHLO.
    pub helo: Vec<ChainEntry>,
    /// On MAIL FROM.
    pub mail: Vec<ChainEntry>,
    /// On each RCPT TO (after relay control and routing).
    pub rcpt: Vec<ChainEntry>,
    /// At the end of DATA/BDAT, before the reply.
    pub data: Vec<ChainEntry>,
}

impl Chains {
    /// `(stage name, entries)` for every stage, in SMTP order.
    pub fn stages(&self) -> [(&'static str, &Vec<ChainEntry>); 5] {
        [
            ("connect", &self.connect),
            ("helo", &self.helo),
            ("mail", &self.mail),
            ("rcpt", &self.rcpt),
            ("data", &self.data),
        ]
    }
}

/// `[scoring]`: what the sum of plugin scores leads to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scoring {
    /// Reject (`554 5.7.1`) at or above this total.
    pub reject: Option<f64>,
    /// Tempfail (`451 4.7.1`) at or above this total.
    pub tempfail: Option<f64>,
    /// Add an `X-Postern-Score` header with the breakdown when there are scores.
    pub add_header: bool,
}

impl Default for Scoring {
    fn default() -> Scoring {
        Scoring {
            reject: None,
            tempfail: None,
            add_header: true,
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Our fully qualified host name (`myhostname`).
    pub hostname: String,
    /// Our domain (`mydomain`); default: the host name minus its first label.
    pub domain: Option<String>,
    /// Domain for unqualified addresses (`myorigin`); default: `domain`.
    pub origin: Option<String>,
    /// Spool directory (queue files); relative to the working directory.
    #[serde(default = "default_spool")]
    pub spool_dir: PathBuf,
    /// Networks allowed to relay (`mynetworks`). Default: none.
    #[serde(default)]
    pub trusted_networks: Vec<IpNet>,
    /// How long SIGTERM waits for sessions and deliveries to finish.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: Seconds,
    /// Account to run as once the listeners are bound (Postfix
    /// `mail_owner`); the spool and the Maildir base are given to it.
    /// Only honoured when started as root.
    #[serde(default)]
    pub user: Option<String>,
    /// Serve as root when started as root without `user` (or with a
    /// `user` whose ID is 0). Off, such a start is refused: parsing
    /// clients' input, TLS, SASL, plugin compilation and delivery into
    /// users' Maildirs would all run as root (Postfix refuses a
    /// privileged `mail_owner` outright).
    #[serde(default)]
    pub run_as_root: bool,
}

fn default_spool() -> PathBuf {
    PathBuf::from("var/spool")
}

fn default_shutdown_grace() -> Seconds {
    Seconds(std::time::Duration::from_secs(30))
}

impl Server {
    /// `mydomain` with Postfix's defaulting rule.
    pub fn domain(&self) -> String {
        if let Some(d) = &self.domain {
            return d.to_ascii_lowercase();
        }
        match self.hostname.split_once('.') {
            Some((_, rest)) if rest.contains('.') => rest.to_ascii_lowercase(),
            _ => self.hostname.to_ascii_lowercase(),
        }
    }

    /// `myorigin` with Postfix's defaulting rule.
    pub fn origin(&self) -> String {
        self.origin
            .as_ref()
            .map(|o| o.to_ascii_lowercase())
            .unwrap_or_else(|| self.domain())
    }
}

/// `[smtp]`: protocol settings (Postfix `smtpd_*` names in brackets).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Smtp {
    /// Refuse MAIL before HELO/EHLO (`smtpd_helo_required`).
    pub helo_required: bool,
    /// Require `<>` around envelope addresses (`strict_rfc821_envelopes`).
    pub strict_envelopes: bool,
    /// Answer VRFY (`disable_vrfy_command = no`).
    pub vrfy: bool,
    /// Report connect/HELO/MAIL rejects at RCPT (`smtpd_delay_reject`).
    pub delay_reject: bool,
    /// Longest command line accepted (`line_length_limit`).
    pub max_line_length: usize,
    /// Recipients per message (`smtpd_recipient_limit`).
    pub max_recipients: usize,
    /// Largest message (`message_size_limit`).
    pub max_message_size: Bytes,
    /// Message content held in memory by all sessions together while it
    /// arrives; beyond it a message gets `452 4.3.1` and the client
    /// retries. At least `max_message_size`.
    pub max_buffered: Bytes,
    /// Time allowed to finish a command line once it has started.
    pub command_timeout: Seconds,
    /// Time to wait for the next command (`smtpd_timeout`).
    pub idle_timeout: Seconds,
    /// Time allowed between reads while message content arrives.
    pub data_timeout: Seconds,
    /// Slowest content a client may send, in bytes per second
    /// (`smtpd_min_data_rate`): DATA or a BDAT chunk must be complete
    /// within `data_timeout` plus one second per this many bytes received,
    /// so a client trickling a byte now and then cannot hold a session
    /// for ever. 0 turns it off.
    pub min_data_rate: u64,
    /// Errors before the session is closed (`smtpd_hard_error_limit`).
    pub max_errors: u32,
    /// Errors after which every error reply is delayed (`smtpd_soft_error_limit`).
    pub error_delay_after: u32,
    /// The delay applied after `error_delay_after` (`smtpd_error_sleep_time`).
    pub error_delay: Seconds,
    /// Delay before answering a failed AUTH, multiplied by the client's
    /// recent failures (up to 5×).
    pub auth_failure_delay: Seconds,
    /// Failed AUTH attempts after which the session is closed.
    pub max_auth_failures: u32,
    /// Failed AUTH attempts from one client (an IPv4 address or an IPv6
    /// /64) within ten minutes after which its AUTH is refused at once
    /// (454) until it has been quiet for ten minutes: with one attempt per
    /// connection, the session limit alone stops no one.
    pub max_auth_failures_per_client: u32,
    /// Concurrent sessions over all listeners (`smtpd process limit`).
    pub max_connections: usize,
    /// Concurrent sessions per client IP (`smtpd_client_connection_count_limit`).
    pub max_connections_per_ip: usize,
    /// Most `Received:` fields a message may arrive with (Postfix
    /// `hopcount_limit`): more means a mail loop, refused with `554 5.4.6`.
    pub hopcount_limit: usize,
    /// Header fields a message may have; more is refused at the end of
    /// data (`552 5.3.4`), so that content filters see every field.
    pub max_header_fields: usize,
    /// Octets a message's header section may have (Postfix
    /// `header_size_limit`, which cuts instead of refusing); more is
    /// `552 5.3.4`. At most 1 MiB: plugins copy the header whole.
    pub max_header_size: Bytes,
    /// IPv6 clients are one client per network of this prefix length, for
    /// `max_connections_per_ip` and the AUTH failure limits: a subscriber
    /// has a /64 or more to hop through (Postfix's
    /// `smtpd_client_ipv6_prefix_length`, as its anvil counts).
    pub ipv6_client_prefix: u8,
    /// A session this old ends with `421 4.7.0` at its next command (the
    /// client reconnects), so none stays on old settings indefinitely.
    pub max_session_age: Seconds,
    /// A session that sent this many commands ends likewise.
    pub max_session_commands: u32,
}

impl Smtp {
    /// What a header section may hold (`max_header_fields`, `max_header_size`).
    pub fn header_limits(&self) -> crate::message::limits::HeaderLimits {
        crate::message::limits::HeaderLimits {
            fields: self.max_header_fields,
            bytes: usize::try_from(self.max_header_size.0).unwrap_or(usize::MAX),
        }
    }
}

impl Default for Smtp {
    fn default() -> Smtp {
        use std::time::Duration;
        Smtp {
            helo_required: false,
            strict_envelopes: false,
            vrfy: false,
            delay_reject: true,
            max_line_length: 2048,
            max_recipients: 1000,
            max_message_size: Bytes(10_240_000),
            max_buffered: Bytes(512 << 20),
            command_timeout: Seconds(Duration::from_secs(60)),
            idle_timeout: Seconds(Duration::from_secs(300)),
            data_timeout: Seconds(Duration::from_secs(180)),
            min_data_rate: 500,
            max_errors: 20,
            error_delay_after: 10,
            error_delay: Seconds(Duration::from_secs(1)),
            auth_failure_delay: Seconds(Duration::from_secs(1)),
            max_auth_failures: 3,
            max_auth_failures_per_client: 30,
            max_connections: 1000,
            max_connections_per_ip: 50,
            hopcount_limit: 50,
            // Real mail has tens of fields and a few kilobytes of header
            // (long ARC and Received chains reach ~100 fields, ~50 KiB);
            // 1000 is also what plugins saw before these limits existed.
            max_header_fields: 1000,
            max_header_size: Bytes(256 << 10),
            ipv6_client_prefix: 64,
            max_session_age: Seconds(Duration::from_secs(3600)),
            max_session_commands: 10_000,
        }
    }
}

/// TLS on a listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// No STARTTLS offered.
    None,
    /// STARTTLS offered, not required (Postfix `smtpd_tls_security_level = may`).
    #[default]
    May,
    /// STARTTLS required before MAIL (`encrypt`).
    Encrypt,
    /// TLS from the first byte (RFC 8314 implicit TLS, port 465).
    Implicit,
}

/// `[[listener]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Name for logs and plugins (default: the address).
    pub name: Option<String>,
    /// Socket address to bind.
    pub address: SocketAddr,
    /// TLS: `none`, `may` (default), `encrypt` or `implicit`.
    #[serde(default)]
    pub tls: TlsMode,
    /// The `[[auth]]` backend offering SMTP AUTH here, if any.
    pub auth: Option<String>,
    /// MAIL requires a successful AUTH (submission).
    #[serde(default)]
    pub auth_required: bool,
    /// AUTH is offered and accepted only under TLS (`smtpd_tls_auth_only`;
    /// always so with `tls = "encrypt"`).
    #[serde(default = "yes")]
    pub auth_only_with_tls: bool,
    /// A client neither trusted nor authenticated that sends what RFC 2920
    /// says must wait for a reply (after EHLO/HELO, DATA, BDAT LAST, NOOP,
    /// QUIT; anything before the greeting or before EHLO offered
    /// PIPELINING) gets `554 5.5.0` and is disconnected (Postfix ≥ 3.9
    /// `smtpd_forbid_unauth_pipelining`: SMTP smuggling through other
    /// servers, and bots, do that).
    #[serde(default = "yes")]
    pub forbid_unauth_pipelining: bool,
}

fn yes() -> bool {
    true
}

/// `[tls]`: certificates for every TLS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// Default certificate chain (PEM). Without one, a self-signed
    /// certificate for `server.hostname` is generated on first start.
    pub certificate: Option<PathBuf>,
    /// Private key of the default certificate (PEM).
    pub key: Option<PathBuf>,
    /// More certificates, chosen by SNI.
    pub sni: Vec<SniCertificate>,
    /// How often certificate files are checked for changes.
    pub reload_interval: Seconds,
    /// Time allowed for a TLS handshake.
    pub handshake_timeout: Seconds,
}

impl Default for Tls {
    fn default() -> Tls {
        Tls {
            certificate: None,
            key: None,
            sni: Vec::new(),
            reload_interval: Seconds(std::time::Duration::from_secs(30)),
            handshake_timeout: Seconds(std::time::Duration::from_secs(30)),
        }
    }
}

impl Tls {
    /// The default certificate and its key, when configured (both or
    /// neither: a config with one alone is refused). Without them a start
    /// makes a self-signed certificate.
    pub fn default_pair(&self) -> Option<(&PathBuf, &PathBuf)> {
        self.certificate.as_ref().zip(self.key.as_ref())
    }
}

/// `[[tls.sni]]`: a certificate for some server names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniCertificate {
    /// Names (exact, or `*.domain`) this certificate serves.
    pub names: Vec<String>,
    /// Certificate chain (PEM).
    pub certificate: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// Credential backends for SMTP AUTH.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthBackendKind {
    /// Postern's own password file (`postern user ...`).
    Passwd,
    /// A running saslauthd (PLAIN/LOGIN).
    Saslauthd,
    /// Dovecot's auth service.
    Dovecot,
}

/// `[[auth]]`: a named credential backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// Name used by listeners.
    pub name: String,
    /// `passwd`, `saslauthd` or `dovecot`.
    pub backend: AuthBackendKind,
    /// Password file (`passwd`).
    pub path: Option<PathBuf>,
    /// saslauthd's mux socket, or Dovecot's auth socket (`unix:/path` or `host:port`).
    pub socket: Option<String>,
    /// Service name given to saslauthd/Dovecot.
    #[serde(default = "smtp_service")]
    pub service: String,
    /// saslauthd realm for login names without `@realm` (optional); the
    /// identity (for `[sender_logins]`) is then `name@realm`. A login
    /// with a domain always keeps it: `alice@a.test` and `alice@b.test`
    /// are two identities even where saslauthd ignores realms.
    pub realm: Option<String>,
    /// Mechanisms to offer (default: all the backend supports).
    pub mechanisms: Option<Vec<String>>,
}

fn smtp_service() -> String {
    "smtp".into()
}

impl Listener {
    /// The listener's name for logs.
    pub fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.address.to_string())
    }
}

/// `[dns]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dns {
    /// Nameservers (UDP and TCP); empty means the system's resolv.conf.
    pub nameservers: Vec<SocketAddr>,
    /// Timeout per query.
    pub timeout: Seconds,
    /// Look up the client's PTR at connect (for `Received:` and plugins).
    pub reverse_lookup: bool,
}

impl Default for Dns {
    fn default() -> Dns {
        Dns {
            nameservers: Vec::new(),
            timeout: Seconds(std::time::Duration::from_secs(3)),
            reverse_lookup: true,
        }
    }
}

/// `[local]`: domains delivered here, their users and mailboxes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Local {
    /// Domains whose mail is delivered locally (`mydestination`).
    pub domains: Vec<String>,
    /// Local users; each has the same mailbox in every local domain.
    pub users: Vec<String>,
    /// Maildir path template; `{user}` is replaced by the user name.
    pub maildir: String,
    /// Where local mail goes: `maildir` (default), `mbox` or `pipe`.
    pub mailbox: Mailbox,
    /// mbox file template (`mailbox = "mbox"`); `{user}` as for `maildir`.
    pub mbox: String,
    /// How long an mbox delivery waits for the mailbox's locks before it
    /// is deferred (Postfix: `deliver_lock_attempts` × `deliver_lock_delay`).
    pub mbox_lock_timeout: Seconds,
    /// `[local.pipe]`: the command of `mailbox = "pipe"`.
    pub pipe: Pipe,
    /// Separator between user and tag (`recipient_delimiter`); empty disables.
    pub recipient_delimiter: String,
    /// `user+tag` goes into the Maildir++ folder `.tag`, made on demand
    /// (Dovecot's LDA with `-m`, `lda_mailbox_autocreate` and
    /// `lda_mailbox_autosubscribe`: with its `maildirfolder` marker, and
    /// added to the Maildir's `subscriptions`) when the tag is a plain
    /// folder name (letters, digits, `-`, `_`). Off: only into a `.tag`
    /// folder that exists.
    pub create_tag_folders: bool,
    /// Domains whose addresses exist only as keys of `virtual_alias_maps`
    /// (Postfix `virtual_alias_domains`): any other address is unknown.
    pub virtual_alias_domains: Vec<String>,
    /// virtual(5) tables, read as they are; relative to the working
    /// directory, like every path of the config.
    pub virtual_alias_maps: Vec<PathBuf>,
    /// aliases(5) tables for the local domains, after `[aliases]`.
    pub alias_maps: Vec<PathBuf>,
    /// transport(5) tables (Postfix `transport_maps`), read as they are;
    /// for the same key `[transport]` comes first, then the files in order.
    pub transport_maps: Vec<PathBuf>,
}

impl Default for Local {
    fn default() -> Local {
        Local {
            domains: Vec::new(),
            users: Vec::new(),
            maildir: "var/mail/{user}/Maildir".into(),
            mailbox: Mailbox::default(),
            mbox: "var/mail/{user}".into(),
            mbox_lock_timeout: Seconds(std::time::Duration::from_secs(20)),
            pipe: Pipe::default(),
            recipient_delimiter: "+".into(),
            create_tag_folders: false,
            virtual_alias_domains: Vec::new(),
            virtual_alias_maps: Vec::new(),
            alias_maps: Vec::new(),
            transport_maps: Vec::new(),
        }
    }
}

/// Alias targets: one address or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Targets {
    /// A single target.
    One(String),
    /// Several targets.
    Many(Vec<String>),
}

impl Targets {
    /// The targets as a slice-like list.
    pub fn list(&self) -> Vec<String> {
        match self {
            Targets::One(t) => vec![t.clone()],
            Targets::Many(v) => v.clone(),
        }
    }
}

/// `[queue]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Queue {
    /// Deliveries in flight at once.
    pub delivery_concurrency: usize,
    /// First retry delay after a temporary failure.
    pub retry_initial: Seconds,
    /// Longest retry delay (the backoff doubles up to this).
    pub retry_max: Seconds,
    /// After this long in the queue a message is given up: what is still
    /// pending is returned to its sender (a message from `<>` is held).
    pub max_lifetime: Seconds,
    /// After this long in the queue the sender is told, once, that a
    /// message is still being tried (Postfix's `delay_warning_time`; off
    /// when not set, as Postfix's default).
    pub delay_warning: Option<Seconds>,
    /// How new spool and Maildir files are made durable: `file` (fdatasync
    /// per file, batched directory fsyncs, like Postfix) or `filesystem`
    /// (one syncfs per batch; for a spool and mailboxes on their own file
    /// system).
    pub sync: crate::durable::dirsync::SyncMode,
    /// Deliver mail for local mailboxes into Maildir before answering 250
    /// (the message is durable in the mailbox instead of the spool); any
    /// recipient that cannot be delivered at once is queued as usual.
    pub direct_delivery: bool,
    /// With direct delivery, make the message durable in the journal (one
    /// fdatasync shared by every session's messages of the moment) and
    /// answer 250 before the Maildir copies are written; they are synced in
    /// bulk before the journal lets go of the message. Off: each copy is
    /// fsynced into its Maildir before the 250. With direct delivery, mail
    /// for the delivery manager is journaled too, and gets a queue file
    /// only if its first attempt leaves it unfinished.
    pub journal: bool,
    /// A journal segment is sealed after this long without a new message
    /// (then its mailboxes are synced and it is removed): shorter means
    /// Maildir copies are synced sooner, longer means fewer syncs when
    /// mail trickles in.
    pub journal_seal_idle: Seconds,
}

impl Default for Queue {
    fn default() -> Queue {
        use std::time::Duration;
        Queue {
            delivery_concurrency: 32,
            retry_initial: Seconds(Duration::from_secs(300)),
            retry_max: Seconds(Duration::from_secs(4000)),
            max_lifetime: Seconds(Duration::from_secs(5 * 86400)),
            delay_warning: None,
            direct_delivery: true,
            journal: true,
            journal_seal_idle: Seconds(Duration::from_millis(100)),
            sync: crate::durable::dirsync::SyncMode::File,
        }
    }
}

impl Config {
    /// True if any listener speaks TLS (STARTTLS or implicit).
    pub fn uses_tls(&self) -> bool {
        self.listeners.iter().any(|l| l.tls != TlsMode::None)
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Parses and validates config text; `path` is only used in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            })
        }
    }

    /// Settings that work but invite trouble, each with its key: printed
    /// by `postern check`, logged at start and reload.
    pub fn warnings(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        // A fresh instance is held from connect or MAIL to the end of the
        // transaction, so a client that stalls holds its slots: with fewer
        // slots than connections can hold, idle clients can starve the
        // others' plugin calls (each then gets a 451).
        let used: std::collections::HashSet<&str> = self
            .chain
            .stages()
            .iter()
            .flat_map(|(_, entries)| entries.iter().filter_map(ChainEntry::plugin))
            .collect();
        let (mut fresh, mut warm) = (0u64, 0u64);
        for p in self
            .plugins
            .iter()
            .filter(|p| used.contains(p.name.as_str()))
        {
            if p.reuse_instances {
                warm += 1;
            } else {
                fresh += 1;
            }
        }
        let needed = (self.smtp.max_connections as u64)
            .saturating_mul(fresh)
            .saturating_add(16 * warm);
        if u64::from(self.wasm.max_instances) < needed {
            out.push(Problem {
                key: "wasm.max_instances".into(),
                message: format!(
                    "{} instance slots, but {} connections with {fresh} fresh-instance plugin(s) (and {warm} warm pool(s) of 16) can hold {needed}: stalled clients could leave other sessions without slots (451); raise it or lower smtp.max_connections",
                    self.wasm.max_instances, self.smtp.max_connections
                ),
            });
        }
        // Postfix's smtpd_tls_auth_only = no: allowed, but PLAIN and LOGIN
        // then carry passwords in clear to anyone on the path.
        for (i, l) in self.listeners.iter().enumerate() {
            if l.auth.is_some()
                && !l.auth_only_with_tls
                && matches!(l.tls, TlsMode::None | TlsMode::May)
                && !l.address.ip().is_loopback()
            {
                out.push(Problem {
                    key: format!("listener[{i}].auth_only_with_tls"),
                    message: format!(
                        "{} offers AUTH without TLS: passwords of PLAIN and LOGIN can cross the network in clear",
                        l.address
                    ),
                });
            }
        }
        out
    }

    /// Everything that is wrong with the values, each with its key.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |key: &str, message: String| {
            out.push(Problem {
                key: key.to_string(),
                message,
            })
        };
        self.wasm.validate(&mut bad);
        self.kv.validate(&mut bad);
        if !is_hostname(&self.server.hostname) || !self.server.hostname.contains('.') {
            bad(
                "server.hostname",
                format!(
                    "{:?} is not a fully qualified host name",
                    self.server.hostname
                ),
            );
        }
        if self.listeners.is_empty() {
            bad("listener", "at least one [[listener]] is required".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if !seen.insert(l.address) {
                bad(
                    &format!("listener[{i}].address"),
                    format!("{} is used twice", l.address),
                );
            }
        }
        let s = &self.smtp;
        if let Some(user) = &self.server.user
            && let Err(e) = crate::privileges::lookup(user)
        {
            bad("server.user", format!("{e:#}"));
        }
        // One without the other would silently mean the self-signed one.
        if self.tls.certificate.is_some() != self.tls.key.is_some() {
            bad(
                "tls",
                "certificate and key go together: set both, or neither (a self-signed certificate is then made)"
                    .into(),
            );
        }
        // The spool and the plugin cache are given to server.user
        // recursively: their paths must say plainly which directory that is.
        for (key, path) in [
            ("server.spool_dir", Some(&self.server.spool_dir)),
            ("wasm.cache_dir", self.wasm.cache_dir.as_ref()),
        ] {
            if let Some(path) = path
                && path
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
            {
                bad(
                    key,
                    "must not contain `..` (write the directory it means)".into(),
                );
            }
        }
        if s.max_line_length < 512 {
            bad(
                "smtp.max_line_length",
                "must be at least 512 (RFC 5321 §4.5.3.1.4)".into(),
            );
        }
        if s.max_recipients < 1 {
            bad("smtp.max_recipients", "must be at least 1".into());
        }
        if s.max_message_size.0 < 1024 {
            bad(
                "smtp.max_message_size",
                "must be at least 1024 bytes".into(),
            );
        }
        if s.max_buffered.0 < s.max_message_size.0 {
            bad(
                "smtp.max_buffered",
                format!(
                    "must be at least smtp.max_message_size ({} bytes)",
                    s.max_message_size.0
                ),
            );
        }
        if s.max_errors < 1 {
            bad("smtp.max_errors", "must be at least 1".into());
        }
        // Every message carries at least the Received: field of the MTA
        // that relays it: 0 would refuse all relayed mail.
        if s.hopcount_limit < 1 {
            bad("smtp.hopcount_limit", "must be at least 1".into());
        }
        if s.max_header_fields < 1 {
            bad("smtp.max_header_fields", "must be at least 1".into());
        }
        let ceiling = crate::message::limits::MAX_HEADER_SIZE_CEILING;
        if s.max_header_size.0 < 1024 || s.max_header_size.0 > ceiling {
            bad(
                "smtp.max_header_size",
                format!("must be between 1024 and {ceiling} bytes (plugins copy the header whole)"),
            );
        }
        if s.max_connections < 1 || s.max_connections_per_ip < 1 {
            bad(
                "smtp.max_connections",
                "connection limits must be at least 1".into(),
            );
        }
        if !(1..=128).contains(&s.ipv6_client_prefix) {
            bad(
                "smtp.ipv6_client_prefix",
                "must be between 1 and 128 (bits of an IPv6 address)".into(),
            );
        }
        if s.max_session_age.0.is_zero() {
            bad("smtp.max_session_age", "must be more than 0".into());
        }
        if s.max_session_commands < 1 {
            bad("smtp.max_session_commands", "must be at least 1".into());
        }
        for (i, d) in self.local.domains.iter().enumerate() {
            if !is_hostname(d) {
                bad(
                    &format!("local.domains[{i}]"),
                    format!("{d:?} is not a domain name"),
                );
            }
        }
        for (i, u) in self.local.users.iter().enumerate() {
            if u.is_empty() || u.contains(['@', '/', ' ']) || u.starts_with('.') {
                bad(
                    &format!("local.users[{i}]"),
                    format!("{u:?} is not a valid user name"),
                );
            }
        }
        if !self.local.maildir.contains("{user}") && self.local.users.len() > 1 {
            bad(
                "local.maildir",
                "must contain {user} when there are several users".into(),
            );
        }
        if self.local.recipient_delimiter.chars().count() > 1 {
            bad(
                "local.recipient_delimiter",
                "must be one character or empty".into(),
            );
        }
        let users: std::collections::HashSet<String> =
            self.local.users.iter().map(|u| u.to_lowercase()).collect();
        let domains: Vec<String> = self
            .local
            .domains
            .iter()
            .map(|d| d.to_lowercase())
            .collect();
        for (name, targets) in &self.aliases {
            let key = format!("aliases.{name}");
            if let Some((_, d)) = name.rsplit_once('@')
                && !domains.contains(&d.to_lowercase())
            {
                bad(&key, format!("domain {d:?} is not in local.domains"));
            }
            let list = targets.list();
            if list.is_empty() {
                bad(&key, "has no targets".into());
            }
            for t in list {
                // Names an alias_maps file may define are checked when
                // the files are read.
                if !t.contains('@')
                    && self.local.alias_maps.is_empty()
                    && !users.contains(&t.to_lowercase())
                    && !self.aliases.contains_key(&t)
                {
                    bad(
                        &key,
                        format!("target {t:?} is neither a local user, an alias nor an address"),
                    );
                }
            }
        }
        if !self.local.domains.is_empty() && self.local.alias_maps.is_empty() {
            for required in ["postmaster", "abuse"] {
                let covered = users.contains(required)
                    || self
                        .aliases
                        .keys()
                        .any(|k| k.eq_ignore_ascii_case(required));
                if !covered {
                    bad(
                        &format!("aliases.{required}"),
                        format!(
                            "RFC 5321/2142 require an address `{required}`: add `{required} = \"<user>\"`"
                        ),
                    );
                }
            }
        }
        let mut auths = std::collections::HashSet::new();
        for (i, a) in self.auth.iter().enumerate() {
            if !auths.insert(a.name.as_str()) {
                bad(
                    &format!("auth[{i}].name"),
                    format!("{:?} is defined twice", a.name),
                );
            }
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if let Some(name) = &l.auth
                && !auths.contains(name.as_str())
            {
                bad(
                    &format!("listener[{i}].auth"),
                    format!("no [[auth]] named {name:?}"),
                );
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.plugins.iter().enumerate() {
            if !names.insert(p.name.as_str()) {
                bad(
                    &format!("plugin[{i}].name"),
                    format!("{:?} is defined twice", p.name),
                );
            }
            if p.memory_limit.0 > self.wasm.max_memory.0 {
                bad(
                    &format!("plugin[{i}].memory_limit"),
                    format!("exceeds wasm.max_memory ({} bytes)", self.wasm.max_memory.0),
                );
            }
            if p.time_limit.0 < std::time::Duration::from_millis(10) {
                bad(
                    &format!("plugin[{i}].time_limit"),
                    "must be at least 10ms".into(),
                );
            }
            if p.dns_time_limit.0 < std::time::Duration::from_millis(10) {
                bad(
                    &format!("plugin[{i}].dns_time_limit"),
                    "must be at least 10ms".into(),
                );
            }
        }
        for (stage, entries) in self.chain.stages() {
            for (i, e) in entries.iter().enumerate() {
                match e {
                    ChainEntry::Wasm(w) if !names.contains(w.plugin.as_str()) => bad(
                        &format!("chain.{stage}[{i}].plugin"),
                        format!("no [[plugin]] named {:?}", w.plugin),
                    ),
                    ChainEntry::Wasm(_) => {}
                    ChainEntry::PolicyService(p) => {
                        for (key, problem) in p.problems() {
                            bad(&format!("chain.{stage}[{i}].{key}"), problem);
                        }
                    }
                }
                if let ChainEntry::Wasm(w) = e
                    && let Some(ns) = &w.kv_namespace
                    && let Err(m) = kv::check_namespace(ns)
                {
                    bad(&format!("chain.{stage}[{i}].kv_namespace"), m);
                }
            }
        }
        if let (Some(t), Some(r)) = (self.scoring.tempfail, self.scoring.reject)
            && t > r
        {
            bad(
                "scoring.tempfail",
                "must not be above scoring.reject".into(),
            );
        }
        if self.queue.delivery_concurrency < 1 {
            bad("queue.delivery_concurrency", "must be at least 1".into());
        }
        if self.queue.retry_initial.0.is_zero()
            || self.queue.retry_max.0 < self.queue.retry_initial.0
        {
            bad(
                "queue.retry_max",
                "must be at least queue.retry_initial, which must be > 0".into(),
            );
        }
        out.extend(bounds::problems(self));
        out.extend(route::problems(self));
        out.extend(transport::problems(self));
        out.extend(client::problems(self));
        out.extend(mailbox::problems(self));
        out
    }
}

/// A plausible DNS host name (letters, digits, hyphens, dots).
pub fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The smallest valid config (the bounds' and routing tests share it).
    pub(crate) const MINIMAL: &str = r#"
[server]
hostname = "mx.example.test"
[[listener]]
address = "127.0.0.1:2525"
[local]
domains = ["example.test"]
users = ["alice"]
[aliases]
postmaster = "alice"
abuse = "alice"
"#;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("test.toml"))
    }

    #[test]
    fn minimal_config_and_defaults() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.server.domain(), "example.test");
        assert_eq!(c.server.origin(), "example.test");
        assert_eq!(c.smtp.max_message_size, Bytes(10_240_000));
        assert!(c.smtp.delay_reject);
    }

    #[test]
    fn too_few_instance_slots_for_the_connections_is_a_warning() {
        let plugin =
            "\n[[plugin]]\nname = \"p\"\npath = \"p.wasm\"\n[[chain.rcpt]]\nplugin = \"p\"\n";
        let c = load(&format!("{MINIMAL}{plugin}")).unwrap();
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        let two = format!("{MINIMAL}{plugin}{}", plugin.replace("\"p\"", "\"q\""));
        let c = load(&two).unwrap();
        let w = c.warnings();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].key, "wasm.max_instances");
        assert!(w[0].message.contains("can hold 2000"), "{}", w[0].message);
        let c = load(&format!("{two}[wasm]\nmax_instances = 2000\n")).unwrap();
        assert!(c.warnings().is_empty());
    }

    #[test]
    fn certificate_and_key_go_together() {
        let text = format!("{MINIMAL}\n[tls]\ncertificate = \"/etc/ssl/x.pem\"\n");
        let err = format!("{:#}", load(&text).unwrap_err());
        assert!(
            err.contains("tls: certificate and key go together"),
            "{err}"
        );
    }

    #[test]
    fn spool_dir_must_not_climb() {
        let text = MINIMAL.replace("[server]", "[server]\nspool_dir = \"/var/spool/x/..\"");
        let err = format!("{:#}", load(&text).unwrap_err());
        assert!(
            err.contains("server.spool_dir: must not contain `..`"),
            "{err}"
        );
    }

    #[test]
    fn auth_without_tls_on_the_network_is_a_warning() {
        let auth = "\n[[auth]]\nname = \"local\"\nbackend = \"passwd\"\npath = \"p\"\n";
        let listener = |addr: &str, only_tls: bool| {
            let text = MINIMAL.replace(
                "address = \"127.0.0.1:2525\"",
                &format!("address = \"{addr}\"\nauth = \"local\"\nauth_only_with_tls = {only_tls}"),
            );
            load(&format!("{text}{auth}")).unwrap().warnings()
        };
        assert!(listener("127.0.0.1:2525", false).is_empty());
        assert!(listener("192.0.2.1:587", true).is_empty());
        let w = listener("192.0.2.1:587", false);
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].key, "listener[0].auth_only_with_tls");
    }

    #[test]
    fn auth_references_are_checked() {
        let auth = "\n[[auth]]\nname = \"local\"\nbackend = \"passwd\"\npath = \"p\"\n";
        let text = MINIMAL.replace(
            "address = \"127.0.0.1:2525\"",
            "address = \"127.0.0.1:2525\"\nauth = \"lcoal\"",
        );
        let err = load(&format!("{text}{auth}")).unwrap_err().to_string();
        assert!(
            err.contains("listener[0].auth: no [[auth]] named \"lcoal\""),
            "{err}"
        );
        let err = load(&format!("{MINIMAL}{auth}{auth}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("auth[1].name: \"local\" is defined twice"),
            "{err}"
        );
    }

    #[test]
    fn hopcount_limit_defaults_to_postfix_and_refuses_zero() {
        assert_eq!(load(MINIMAL).unwrap().smtp.hopcount_limit, 50);
        let with = |v: &str| format!("{MINIMAL}\n[smtp]\nhopcount_limit = {v}\n");
        assert_eq!(load(&with("100")).unwrap().smtp.hopcount_limit, 100);
        let err = load(&with("0")).unwrap_err().to_string();
        assert!(
            err.contains("smtp.hopcount_limit: must be at least 1"),
            "{err}"
        );
        assert!(load(&with("-1")).is_err());
    }

    #[test]
    fn session_limits_are_validated() {
        let smtp = |line: &str| load(&format!("{MINIMAL}\n[smtp]\n{line}\n"));
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.smtp.ipv6_client_prefix, 64);
        assert!(c.listeners[0].forbid_unauth_pipelining);
        for (line, key) in [
            ("ipv6_client_prefix = 0", "smtp.ipv6_client_prefix"),
            ("ipv6_client_prefix = 129", "smtp.ipv6_client_prefix"),
            ("max_session_age = \"0s\"", "smtp.max_session_age"),
            ("max_session_commands = 0", "smtp.max_session_commands"),
        ] {
            let err = smtp(line).unwrap_err().to_string();
            assert!(err.contains(key), "{line}: {err}");
        }
        assert!(smtp("ipv6_client_prefix = 128").is_ok());
        let off = MINIMAL.replace(
            "address = \"127.0.0.1:2525\"",
            "address = \"127.0.0.1:2525\"\nforbid_unauth_pipelining = false",
        );
        assert!(!load(&off).unwrap().listeners[0].forbid_unauth_pipelining);
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let text = MINIMAL.replace("[local]", "[local]\nmaildirs = \"x\"");
        let err = load(&text).unwrap_err().to_string();
        assert!(err.contains("unknown field `maildirs`"), "{err}");
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let text = MINIMAL.replace("postmaster = \"alice\"", "postmaster = \"nobody\"");
        let err = load(&text).unwrap_err().to_string();
        assert!(
            err.contains("aliases.postmaster: target \"nobody\""),
            "{err}"
        );
        let text = MINIMAL.replace("abuse = \"alice\"", "");
        let err = load(&text).unwrap_err().to_string();
        assert!(err.contains("aliases.abuse"), "{err}");
        let text = MINIMAL.replace("127.0.0.1:2525", "127.0.0.1:99999");
        assert!(load(&text).is_err());
    }
}
