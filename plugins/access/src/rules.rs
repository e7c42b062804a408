//! Postfix access(5) semantics without any WASM: tables, lookup order and
//! actions. Pure code, unit-tested natively.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

/// What a table entry says to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `OK`: permit; ends the stage.
    Ok,
    /// `DUNNO`: stop looking in this table, no opinion.
    Dunno,
    /// `REJECT [text]` or `5NN [x.y.z] text`.
    Reject {
        code: u16,
        enhanced: Option<String>,
        text: Option<String>,
    },
    /// `DEFER [text]` or `4NN [x.y.z] text`.
    Defer {
        code: u16,
        enhanced: Option<String>,
        text: Option<String>,
    },
    /// `DISCARD [text]`: accept and drop.
    Discard(Option<String>),
    /// `HOLD [text]`: accept and quarantine.
    Hold(Option<String>),
    /// `PREPEND name: value`: add a header, no opinion otherwise.
    Prepend(String, String),
    /// `WARN text`: log, no opinion otherwise.
    Warn(String),
}

/// Parses the right-hand side of a table entry.
pub fn parse_action(s: &str) -> Result<Action, String> {
    let s = s.trim();
    let (word, rest) = match s.split_once(char::is_whitespace) {
        Some((w, r)) => (w, Some(r.trim()).filter(|r| !r.is_empty())),
        None => (s, None),
    };
    let text = rest.map(str::to_string);
    // `REJECT 5.7.9 text`: a leading enhanced code of the right class is
    // the reply's, as in Postfix.
    let with_code = |class: char| match rest.map(split_enhanced) {
        Some((Some(e), t)) if e.starts_with(class) => (Some(e), t),
        _ => (None, text.clone()),
    };
    match word.to_ascii_uppercase().as_str() {
        "OK" | "PERMIT" => Ok(Action::Ok),
        "DUNNO" => Ok(Action::Dunno),
        "REJECT" => {
            let (enhanced, text) = with_code('5');
            Ok(Action::Reject {
                code: 554,
                enhanced,
                text,
            })
        }
        "DEFER" => {
            let (enhanced, text) = with_code('4');
            Ok(Action::Defer {
                code: 450,
                enhanced,
                text,
            })
        }
        "DISCARD" => Ok(Action::Discard(text)),
        "HOLD" => Ok(Action::Hold(text)),
        "WARN" => Ok(Action::Warn(text.unwrap_or_default())),
        "PREPEND" => {
            let r = rest.ok_or("PREPEND needs 'Name: value'")?;
            let (name, value) = r.split_once(':').ok_or("PREPEND needs 'Name: value'")?;
            let name = name.trim();
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                return Err(format!("PREPEND: bad header name {name:?}"));
            }
            Ok(Action::Prepend(name.to_string(), value.trim().to_string()))
        }
        w if w.len() == 3 && w.bytes().all(|b| b.is_ascii_digit()) => {
            let code: u16 = w.parse().map_err(|_| format!("bad code {w}"))?;
            let (enhanced, text) = rest.map_or((None, None), split_enhanced);
            match code {
                400..=499 => Ok(Action::Defer {
                    code,
                    enhanced,
                    text,
                }),
                500..=599 => Ok(Action::Reject {
                    code,
                    enhanced,
                    text,
                }),
                _ => Err(format!("code {code} must be 4xx or 5xx")),
            }
        }
        _ => Err(format!(
            "unknown action {word:?} (OK, DUNNO, REJECT, DEFER, 4NN/5NN text, DISCARD, HOLD, PREPEND, WARN)"
        )),
    }
}

/// `x.y.z text` into the enhanced code and the text, when it starts
/// with one.
fn split_enhanced(r: &str) -> (Option<String>, Option<String>) {
    match r.split_once(char::is_whitespace) {
        Some((e, t)) if is_enhanced(e) => (Some(e.to_string()), Some(t.trim().to_string())),
        None if is_enhanced(r) => (Some(r.to_string()), None),
        _ => (None, Some(r.to_string())),
    }
}

fn is_enhanced(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The plugin's config, as the host passes it (JSON of the TOML table).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Client IP, CIDR network, or host/domain name (of the verified PTR).
    #[serde(default)]
    pub client: HashMap<String, String>,
    /// HELO/EHLO name or parent domain.
    #[serde(default)]
    pub helo: HashMap<String, String>,
    /// Envelope sender: `user@domain`, `domain` (and subdomains), `user@`, `<>`.
    #[serde(default)]
    pub sender: HashMap<String, String>,
    /// Envelope recipient, same key forms as `sender`.
    #[serde(default)]
    pub recipient: HashMap<String, String>,
    /// Action for SASL-authenticated sessions, checked before every table
    /// (`"OK"` is Postfix `permit_sasl_authenticated`).
    #[serde(default)]
    pub authenticated: Option<String>,
    /// Postfix `header_checks`: ordered `[regex, action]` pairs matched
    /// (case-insensitively) against each `Name: value` header line.
    #[serde(default)]
    pub header_checks: Vec<(String, String)>,
    /// Ordered `[regex, action]` pairs (a Postfix `regexp:` table),
    /// consulted after `client` as a second restriction would be (only a
    /// definitive action there ends the lookup): matched against the
    /// client name (`unknown` when not verified), then the address.
    #[serde(default)]
    pub client_regexp: Vec<(String, String)>,
    /// Like `client_regexp`, against the HELO name.
    #[serde(default)]
    pub helo_regexp: Vec<(String, String)>,
    /// Like `client_regexp`, against the sender address (`<>` for the
    /// null sender).
    #[serde(default)]
    pub sender_regexp: Vec<(String, String)>,
    /// Like `client_regexp`, against the recipient address.
    #[serde(default)]
    pub recipient_regexp: Vec<(String, String)>,
    /// Postfix `recipient_delimiter`: `user+ext@domain` is also looked up
    /// as `user@domain` and `user@` (default `+`; `""` for none).
    #[serde(default = "plus")]
    pub recipient_delimiter: String,
}

fn plus() -> String {
    "+".into()
}

/// A Postfix access-table network key: one to three leading octets of an
/// IPv4 address (`198.51.100` is 198.51.100.0/24).
fn ipv4_prefix(key: &str) -> Option<IpNet> {
    let octets: Vec<u8> = key
        .split('.')
        .map(|o| o.parse::<u8>().ok())
        .collect::<Option<_>>()?;
    if octets.is_empty() || octets.len() > 3 {
        return None;
    }
    let mut full = [0u8; 4];
    full[..octets.len()].copy_from_slice(&octets);
    let len = u8::try_from(octets.len() * 8).ok()?;
    IpNet::new(IpAddr::from(full), len).ok()
}

/// An address or name table with Postfix lookup order.
#[derive(Debug, Default)]
struct Table(HashMap<String, Action>);

/// An ordered `[regex, action]` list: the first match wins. Compiled on
/// first use: a fresh instance per transaction would otherwise compile
/// every pattern of every stage at connect.
#[derive(Debug, Default)]
struct Patterns {
    /// Config key, for errors.
    what: &'static str,
    source: Vec<(String, Action)>,
    compiled: std::sync::OnceLock<Result<Vec<(regex_lite::Regex, Action)>, String>>,
}

impl Patterns {
    fn new(what: &'static str, list: &[(String, String)]) -> Result<Patterns, String> {
        let mut source = Vec::new();
        for (i, (pattern, action)) in list.iter().enumerate() {
            let action = parse_action(action).map_err(|e| format!("{what}[{i}]: {e}"))?;
            source.push((pattern.clone(), action));
        }
        Ok(Patterns {
            what,
            source,
            compiled: std::sync::OnceLock::new(),
        })
    }

    fn is_empty(&self) -> bool {
        self.source.is_empty()
    }

    /// Patterns are regex-lite: case-insensitive for ASCII, classes like
    /// `\w` ASCII-only, much as Postfix's POSIX regexp tables. The full
    /// `regex` crate with Unicode case folding made every compile (once
    /// per fresh instance) cost ~450 µs; regex-lite costs ~15 µs and
    /// halves the component.
    fn compiled(&self) -> &Result<Vec<(regex_lite::Regex, Action)>, String> {
        self.compiled.get_or_init(|| {
            let mut out = Vec::new();
            for (i, (pattern, action)) in self.source.iter().enumerate() {
                let re = regex_lite::RegexBuilder::new(pattern)
                    .case_insensitive(true)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| format!("{}[{i}]: bad regex: {e}", self.what))?;
                out.push((re, action.clone()));
            }
            Ok(out)
        })
    }

    /// The action of the first pattern matching `text`.
    fn first_match(&self, text: &str) -> Option<&Action> {
        if self.is_empty() {
            return None;
        }
        self.compiled()
            .as_ref()
            .ok()?
            .iter()
            .find(|(re, _)| re.is_match(text))
            .map(|(_, a)| a)
    }
}

/// What one kind of lookup (client, HELO, sender, recipient) found: the
/// exact table's entry and the regexp table's. Both apply, in that order,
/// as two Postfix restrictions would: a DUNNO, HOLD, PREPEND or WARN in
/// the exact table does not hide the regexp table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Found<'a> {
    /// The exact (hash/cidr-like) table's entry.
    pub exact: Option<&'a Action>,
    /// The first matching pattern's action.
    pub regexp: Option<&'a Action>,
}

impl<'a> Found<'a> {
    /// True if neither table had an entry.
    pub fn is_empty(self) -> bool {
        self.exact.is_none() && self.regexp.is_none()
    }

    /// The actions found, exact table first.
    pub fn actions(self) -> impl Iterator<Item = &'a Action> {
        self.exact.into_iter().chain(self.regexp)
    }
}

/// Parsed tables.
#[derive(Debug, Default)]
pub struct Rules {
    client_ips: Vec<(IpNet, Action)>,
    client_names: Table,
    helo: Table,
    sender: Table,
    recipient: Table,
    client_regexp: Patterns,
    helo_regexp: Patterns,
    sender_regexp: Patterns,
    recipient_regexp: Patterns,
    header_checks: Patterns,
    authenticated: Option<Action>,
    delimiter: Option<char>,
}

fn table(map: &HashMap<String, String>, what: &str) -> Result<Table, String> {
    let mut t = HashMap::new();
    for (k, v) in map {
        let action = parse_action(v).map_err(|e| format!("{what}.{k:?}: {e}"))?;
        t.insert(k.to_lowercase(), action);
    }
    Ok(Table(t))
}

/// The key in lower case, copied only when it has upper-case letters
/// (lookups run on every call; most names arrive in lower case).
fn lowercase(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(char::is_uppercase) {
        std::borrow::Cow::Owned(s.to_lowercase())
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

impl Table {
    /// Domain name and its parents: `a.b.c`, `b.c`, `c`.
    fn lookup_name(&self, name: &str) -> Option<&Action> {
        if self.0.is_empty() {
            return None;
        }
        let name = lowercase(name.trim_end_matches('.'));
        let mut rest: &str = &name;
        loop {
            if let Some(a) = self.0.get(rest) {
                return Some(a);
            }
            match rest.split_once('.') {
                Some((_, parent)) => rest = parent,
                None => return None,
            }
        }
    }

    /// Postfix order for addresses: `user+ext@domain`, `user@domain`,
    /// `domain` and parents, `user+ext@`, `user@` (the forms without the
    /// extension when `delimiter` splits one off). The null sender is
    /// looked up as `<>`.
    fn lookup_address(&self, addr: &str, delimiter: Option<char>) -> Option<&Action> {
        if self.0.is_empty() {
            return None;
        }
        if addr.is_empty() {
            return self.0.get("<>");
        }
        let addr = lowercase(addr);
        if let Some(a) = self.0.get(addr.as_ref()) {
            return Some(a);
        }
        let (local, domain) = addr.rsplit_once('@')?;
        let base = delimiter
            .and_then(|d| local.split_once(d))
            .map(|(b, _)| b)
            .filter(|b| !b.is_empty());
        if let Some(b) = base
            && let Some(a) = self.0.get(&format!("{b}@{domain}"))
        {
            return Some(a);
        }
        self.lookup_name(domain)
            .or_else(|| self.0.get(&format!("{local}@")))
            .or_else(|| base.and_then(|b| self.0.get(&format!("{b}@"))))
    }
}

impl Rules {
    /// Parses the JSON config.
    pub fn from_json(json: &str) -> Result<Rules, String> {
        let cfg: Config = serde_json::from_str(json).map_err(|e| format!("access config: {e}"))?;
        let mut client_ips = Vec::new();
        let mut names = HashMap::new();
        for (k, v) in &cfg.client {
            let action = parse_action(v).map_err(|e| format!("client.{k:?}: {e}"))?;
            if let Ok(net) = k.parse::<IpNet>() {
                client_ips.push((net, action));
            } else if let Ok(ip) = k.parse::<IpAddr>() {
                client_ips.push((IpNet::from(ip), action));
            } else if let Some(net) = ipv4_prefix(k) {
                client_ips.push((net, action));
            } else {
                names.insert(k.to_lowercase(), action);
            }
        }
        // Most specific network first, like a cidr table ordered by hand.
        client_ips.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        let authenticated = cfg
            .authenticated
            .as_deref()
            .map(|a| parse_action(a).map_err(|e| format!("authenticated: {e}")))
            .transpose()?;
        let mut delimiter = cfg.recipient_delimiter.chars();
        let delimiter = match (delimiter.next(), delimiter.next()) {
            (d, None) => d,
            _ => return Err("recipient_delimiter: one character, or \"\"".into()),
        };
        Ok(Rules {
            delimiter,
            authenticated,
            header_checks: Patterns::new("header_checks", &cfg.header_checks)?,
            client_regexp: Patterns::new("client_regexp", &cfg.client_regexp)?,
            helo_regexp: Patterns::new("helo_regexp", &cfg.helo_regexp)?,
            sender_regexp: Patterns::new("sender_regexp", &cfg.sender_regexp)?,
            recipient_regexp: Patterns::new("recipient_regexp", &cfg.recipient_regexp)?,
            client_ips,
            client_names: Table(names),
            helo: table(&cfg.helo, "helo")?,
            sender: table(&cfg.sender, "sender")?,
            recipient: table(&cfg.recipient, "recipient")?,
        })
    }

    /// Looks up the client as Postfix's check_client_access does: by
    /// name (and parent domains) first, then by address; in
    /// `client_regexp` likewise. The name is the verified PTR name, or
    /// `unknown` as in Postfix.
    pub fn client(&self, ip: &str, ptr: Option<&str>) -> Found<'_> {
        let name = ptr.unwrap_or("unknown");
        let exact = self.client_names.lookup_name(name).or_else(|| {
            let ip = ip.parse::<IpAddr>().ok()?;
            let (_, a) = self.client_ips.iter().find(|(n, _)| n.contains(&ip))?;
            Some(a)
        });
        let regexp = self
            .client_regexp
            .first_match(name)
            .or_else(|| self.client_regexp.first_match(ip));
        Found { exact, regexp }
    }

    /// True if any client table has entries (the client address and
    /// name are needed).
    pub fn has_client(&self) -> bool {
        !self.client_ips.is_empty()
            || !self.client_names.0.is_empty()
            || !self.client_regexp.is_empty()
    }

    /// True if a HELO table has entries.
    pub fn has_helo(&self) -> bool {
        !self.helo.0.is_empty() || !self.helo_regexp.is_empty()
    }

    /// True if a sender table has entries.
    pub fn has_sender(&self) -> bool {
        !self.sender.0.is_empty() || !self.sender_regexp.is_empty()
    }

    /// True if a recipient table has entries.
    pub fn has_recipient(&self) -> bool {
        !self.recipient.0.is_empty() || !self.recipient_regexp.is_empty()
    }

    /// Looks up the HELO name.
    pub fn helo(&self, helo: &str) -> Found<'_> {
        Found {
            exact: self.helo.lookup_name(helo),
            regexp: self.helo_regexp.first_match(helo),
        }
    }

    /// Looks up the envelope sender.
    pub fn sender(&self, addr: &str) -> Found<'_> {
        Found {
            exact: self.sender.lookup_address(addr, self.delimiter),
            regexp: self.sender_regexp.first_match(null_as_brackets(addr)),
        }
    }

    /// Looks up a recipient.
    pub fn recipient(&self, addr: &str) -> Found<'_> {
        Found {
            exact: self.recipient.lookup_address(addr, self.delimiter),
            regexp: self.recipient_regexp.first_match(addr),
        }
    }

    /// The action for authenticated sessions, if configured.
    pub fn authenticated(&self) -> Option<&Action> {
        self.authenticated.as_ref()
    }

    /// True if there are header checks (the data hook has work to do).
    pub fn has_header_checks(&self) -> bool {
        !self.header_checks.is_empty()
    }

    /// Compiles everything that is compiled lazily, to report errors at
    /// config check time.
    pub fn validate(&self) -> Result<(), String> {
        for p in [
            &self.client_regexp,
            &self.helo_regexp,
            &self.sender_regexp,
            &self.recipient_regexp,
            &self.header_checks,
        ] {
            p.compiled().as_ref().map_err(Clone::clone)?;
        }
        Ok(())
    }

    /// The first header check matching a `Name: value` line.
    pub fn header(&self, line: &str) -> Option<&Action> {
        self.header_checks.first_match(line)
    }
}

/// The null sender as Postfix looks it up (`smtpd_null_access_lookup_key`).
fn null_as_brackets(addr: &str) -> &str {
    if addr.is_empty() { "<>" } else { addr }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions() {
        assert_eq!(parse_action("OK"), Ok(Action::Ok));
        assert_eq!(
            parse_action("REJECT no thanks"),
            Ok(Action::Reject {
                code: 554,
                enhanced: None,
                text: Some("no thanks".into())
            })
        );
        assert_eq!(
            parse_action("550 5.7.1 go away"),
            Ok(Action::Reject {
                code: 550,
                enhanced: Some("5.7.1".into()),
                text: Some("go away".into())
            })
        );
        assert_eq!(
            parse_action("451 try later"),
            Ok(Action::Defer {
                code: 451,
                enhanced: None,
                text: Some("try later".into())
            })
        );
        assert_eq!(
            parse_action("PREPEND X-Tag: yes"),
            Ok(Action::Prepend("X-Tag".into(), "yes".into()))
        );
        assert!(parse_action("FROB").is_err());
        assert!(parse_action("250 fine").is_err());
        assert!(parse_action("PREPEND nocolon").is_err());
    }

    #[test]
    fn regexp_tables_apply_after_the_exact_ones_and_the_first_match_wins() {
        let rules = Rules::from_json(
            r#"{
              "client": {"192.0.2.7": "OK"},
              "client_regexp": [["^(dsl|dyn)[-.0-9]*\\.", "REJECT 5.7.1 dynamic address"], ["^192\\.0\\.2\\.", "DEFER"]],
              "helo_regexp": [["^[0-9.]+$", "REJECT bare IP address in HELO"]],
              "sender": {"friend@example.test": "OK"},
              "sender_regexp": [["^<>$", "DUNNO"], ["@example\\.test$", "REJECT"], [".", "OK"]],
              "recipient_regexp": [["^spamtrap[0-9]*@", "DISCARD"]]
            }"#,
        )
        .unwrap();
        rules.validate().unwrap();
        assert!(
            rules.has_client() && rules.has_helo() && rules.has_sender() && rules.has_recipient()
        );
        let found = |f: Found<'_>| f.actions().cloned().collect::<Vec<_>>();
        let is_reject = |a: Option<&Action>| matches!(a, Some(Action::Reject { .. }));
        // Both tables apply, exact first; the name before the address.
        let f = rules.client("192.0.2.7", Some("dsl-1.isp.test"));
        assert_eq!(f.exact, Some(&Action::Ok));
        assert!(is_reject(f.regexp));
        let f = rules.client("192.0.2.8", Some("DSL-1-2.isp.test"));
        assert_eq!(f.exact, None);
        assert!(matches!(f.regexp, Some(Action::Reject { enhanced: Some(e), .. }) if e == "5.7.1"));
        assert!(matches!(
            rules.client("192.0.2.8", Some("mx.isp.test")).regexp,
            Some(Action::Defer { .. })
        ));
        assert!(found(rules.client("198.51.100.1", None)).is_empty());
        assert!(is_reject(rules.helo("192.0.2.1").regexp));
        assert!(found(rules.helo("mx.client.test")).is_empty());
        let f = rules.sender("friend@example.test");
        assert_eq!(f.exact, Some(&Action::Ok));
        assert!(is_reject(f.regexp));
        assert_eq!(rules.sender("").regexp, Some(&Action::Dunno));
        assert_eq!(rules.sender("x@elsewhere.test").regexp, Some(&Action::Ok));
        assert_eq!(
            found(rules.recipient("spamtrap7@example.test")),
            vec![Action::Discard(None)]
        );
        assert!(found(rules.recipient("alice@example.test")).is_empty());

        // An unverified client is looked up by the name `unknown`.
        let unknown = Rules::from_json(
            r#"{"client": {"unknown": "REJECT"}, "client_regexp": [["^unknown$", "DEFER"]]}"#,
        )
        .unwrap();
        let f = unknown.client("192.0.2.9", None);
        assert!(is_reject(f.exact));
        assert!(matches!(f.regexp, Some(Action::Defer { .. })));
        assert!(found(unknown.client("192.0.2.9", Some("mx.example.test"))).is_empty());

        let bad = Rules::from_json(r#"{"helo_regexp": [["(", "REJECT"]]}"#).unwrap();
        assert!(
            bad.validate()
                .unwrap_err()
                .starts_with("helo_regexp[0]: bad regex")
        );
        let bad = Rules::from_json(r#"{"sender_regexp": [[".", "FROB"]]}"#);
        assert!(
            bad.unwrap_err()
                .starts_with("sender_regexp[0]: unknown action")
        );
    }

    #[test]
    fn lookup_order() {
        let rules = Rules::from_json(
            r#"{
              "client": {"192.0.2.0/24": "REJECT", "192.0.2.7": "OK", "bad.example": "REJECT"},
              "helo": {"localhost": "REJECT"},
              "sender": {"blocked.test": "REJECT", "friend@blocked.test": "OK", "postmaster@": "DUNNO", "<>": "DEFER"},
              "recipient": {"spamtrap@example.test": "DISCARD"}
            }"#,
        )
        .unwrap();
        assert_eq!(rules.client("192.0.2.7", None).exact, Some(&Action::Ok));
        assert!(matches!(
            rules.client("192.0.2.8", None).exact,
            Some(Action::Reject { .. })
        ));
        assert!(matches!(
            rules.client("10.0.0.1", Some("mx.bad.example")).exact,
            Some(Action::Reject { .. })
        ));
        // The name comes first, as in Postfix (check_namadr_access).
        let named =
            Rules::from_json(r#"{"client": {"192.0.2.0/24": "REJECT", "good.example": "OK"}}"#)
                .unwrap();
        assert_eq!(
            named.client("192.0.2.5", Some("mx.good.example")).exact,
            Some(&Action::Ok)
        );
        assert!(matches!(
            named.client("192.0.2.5", Some("mx.other.example")).exact,
            Some(Action::Reject { .. })
        ));
        assert_eq!(rules.client("10.0.0.1", None).exact, None);
        assert!(rules.helo("LOCALHOST").exact.is_some());
        assert!(matches!(
            rules.sender("x@Blocked.Test").exact,
            Some(Action::Reject { .. })
        ));
        assert!(matches!(
            rules.sender("x@sub.blocked.test").exact,
            Some(Action::Reject { .. })
        ));
        assert_eq!(rules.sender("friend@blocked.test").exact, Some(&Action::Ok));
        assert_eq!(
            rules.sender("postmaster@elsewhere.test").exact,
            Some(&Action::Dunno)
        );
        assert!(matches!(rules.sender("").exact, Some(Action::Defer { .. })));
        assert_eq!(rules.sender("a@fine.test").exact, None);
        assert_eq!(
            rules.recipient("spamtrap@example.test").exact,
            Some(&Action::Discard(None))
        );
        assert!(Rules::from_json(r#"{"sender": {"x": "BOGUS"}}"#).is_err());
        let rules = Rules::from_json(r#"{"header_checks": [["^subject:.*viagra", "REJECT spam"], ["^X-Mailer: bulk", "HOLD"]]}"#).unwrap();
        assert!(matches!(
            rules.header("Subject: Cheap VIAGRA"),
            Some(Action::Reject { .. })
        ));
        assert!(matches!(
            rules.header("x-mailer: Bulk 1.0"),
            Some(Action::Hold(None))
        ));
        assert_eq!(rules.header("Subject: lunch"), None);
        let bad = Rules::from_json(r#"{"header_checks": [["(", "REJECT"]]}"#).unwrap();
        assert!(bad.validate().is_err());
        assert!(Rules::from_json(r#"{"senders": {}}"#).is_err());
    }
}
