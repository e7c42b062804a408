//! The `dnsbl` plugin's config: the lists, what each checks and does.

use postern_sdk::name::valid_hostname;
use postern_sdk::restrict::{Exempt, TempfailAction, check_code, yes};
use serde::Deserialize;

/// One chain entry's config.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The lists, asked all at once; the first listing with `action =
    /// "reject"` (in this order) refuses.
    pub lists: Vec<List>,
    /// What a list that cannot be asked (timeout, SERVFAIL) leads to:
    /// `dunno` (the default, as Postfix: the list is skipped with a
    /// warning) or `defer` (451 4.7.1).
    #[serde(default = "dunno")]
    pub tempfail_action: TempfailAction,
    /// Leave trusted clients alone (`permit_mynetworks` before).
    #[serde(default = "yes")]
    pub skip_trusted: bool,
    /// Leave authenticated clients alone (`permit_sasl_authenticated`).
    #[serde(default = "yes")]
    pub skip_authenticated: bool,
}

fn dunno() -> TempfailAction {
    TempfailAction::Dunno
}

/// What a list is asked about (Postfix's restriction names without
/// `reject_`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// `reject_rbl_client`: the client's IP address.
    RblClient,
    /// `reject_rhsbl_client`: the client's forward-confirmed name.
    RhsblClient,
    /// `reject_rhsbl_reverse_client`: the client's PTR name, confirmed
    /// or not.
    RhsblReverseClient,
    /// `reject_rhsbl_helo`: the HELO name.
    RhsblHelo,
    /// `reject_rhsbl_sender`: the sender's domain.
    RhsblSender,
    /// `reject_rhsbl_recipient`: the recipient's domain.
    RhsblRecipient,
}

impl Check {
    /// Postfix's `$rbl_class`.
    pub fn class(self) -> &'static str {
        match self {
            Check::RblClient | Check::RhsblClient => "Client host",
            Check::RhsblReverseClient => "Unverified Client host",
            Check::RhsblHelo => "Helo command",
            Check::RhsblSender => "Sender address",
            Check::RhsblRecipient => "Recipient address",
        }
    }
}

/// What a listing does.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Refuse with the list's reply.
    #[default]
    Reject,
    /// Add `points` to the transaction's score and go on.
    Score,
}

/// One DNSBL or RHSBL.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct List {
    /// The zone, optionally with Postfix's reply filter:
    /// `zen.example=127.0.0.[2..11]`, `bl.example=127.0.0.2`,
    /// `bl.example=127.0.0.[2;4;10..12]`. Without a filter any A record
    /// is a listing.
    pub zone: String,
    /// What is looked up (default `rbl_client`).
    #[serde(default = "rbl_client")]
    pub check: Check,
    /// `reject` (default) or `score`.
    #[serde(default)]
    pub action: Action,
    /// Reply code of a reject (Postfix `rbl_reply_maps`/
    /// `maps_rbl_reject_code`: 554).
    #[serde(default = "rbl_code")]
    pub code: u16,
    /// Enhanced status code of a reject (5.7.1).
    #[serde(default = "rbl_enhanced")]
    pub enhanced: String,
    /// Reply text of a reject; `{class}`, `{what}`, `{zone}` and
    /// `{reason}` (the list's TXT, "" if none) are replaced. Default:
    /// Postfix's `default_rbl_reply`.
    #[serde(default)]
    pub text: Option<String>,
    /// Score points of a listing (`action = "score"`).
    #[serde(default)]
    pub points: Option<f64>,
    /// Score points when not listed (policyd-weight's "miss" weight,
    /// usually negative); none by default.
    #[serde(default)]
    pub miss_points: Option<f64>,
    /// Score symbol (default `RBL_` or `RHSBL_` and the zone, upper
    /// case, e.g. `RBL_DNSBL_TEST`).
    #[serde(default)]
    pub symbol: Option<String>,
}

fn rbl_client() -> Check {
    Check::RblClient
}
fn rbl_code() -> u16 {
    554
}
fn rbl_enhanced() -> String {
    "5.7.1".to_string()
}

impl List {
    /// The zone without its filter.
    pub fn domain(&self) -> &str {
        self.zone.split_once('=').map_or(&self.zone, |(d, _)| d)
    }

    /// The reply filter, if any.
    pub fn filter(&self) -> Result<Option<Filter>, String> {
        match self.zone.split_once('=') {
            Some((_, f)) => Filter::parse(f).map(Some),
            None => Ok(None),
        }
    }

    /// The score symbol.
    pub fn symbol(&self) -> String {
        if let Some(s) = &self.symbol {
            return s.clone();
        }
        let prefix = if self.check == Check::RblClient {
            "RBL"
        } else {
            "RHSBL"
        };
        let zone: String = self
            .domain()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("{prefix}_{zone}")
    }

    fn validate(&self) -> Result<(), String> {
        let at = |e: String| format!("list {}: {e}", self.zone);
        if !valid_hostname(self.domain()) {
            return Err(at("not a valid zone name".into()));
        }
        self.filter().map_err(at)?;
        check_code("code", self.code, None).map_err(at)?;
        if !self.enhanced.starts_with(['4', '5']) || self.enhanced.split('.').count() != 3 {
            return Err(at(format!(
                "enhanced = {:?}: not an enhanced status code",
                self.enhanced
            )));
        }
        if self.action == Action::Score && self.points.is_none() {
            return Err(at("action = \"score\" needs points".into()));
        }
        Ok(())
    }
}

impl Config {
    /// Parses and validates an entry's config JSON.
    pub fn from_json(json: &str) -> Result<Config, String> {
        let c: Config = postern_sdk::parse_config(json)?;
        if c.lists.is_empty() {
            return Err("lists: name at least one list".into());
        }
        for list in &c.lists {
            list.validate()?;
        }
        Ok(c)
    }

    /// The clients this entry leaves alone.
    pub fn exempt(&self) -> Exempt {
        Exempt {
            trusted: self.skip_trusted,
            authenticated: self.skip_authenticated,
        }
    }
}

/// Postfix's DNSBL reply filter: four octet patterns, each a number or
/// a bracketed list of numbers and ranges (`[2;4..6]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    octets: Vec<Vec<(u8, u8)>>,
}

impl Filter {
    /// Parses `127.0.0.[2..11]`.
    pub fn parse(text: &str) -> Result<Filter, String> {
        let bad = || format!("bad reply filter {text:?} (like 127.0.0.2 or 127.0.0.[2..11])");
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let (part, tail) = if let Some(inner) = rest.strip_prefix('[') {
                let end = inner.find(']').ok_or_else(bad)?;
                (&inner[..end], &inner[end + 1..])
            } else {
                let end = rest.find('.').unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            };
            let mut ranges = Vec::new();
            for item in part.split(';') {
                let (lo, hi) = item.split_once("..").unwrap_or((item, item));
                let lo: u8 = lo.trim().parse().map_err(|_| bad())?;
                let hi: u8 = hi.trim().parse().map_err(|_| bad())?;
                if lo > hi {
                    return Err(bad());
                }
                ranges.push((lo, hi));
            }
            parts.push(ranges);
            rest = match tail.strip_prefix('.') {
                Some(t) if !t.is_empty() => t,
                None if tail.is_empty() => tail,
                _ => return Err(bad()),
            };
        }
        if parts.len() != 4 {
            return Err(bad());
        }
        Ok(Filter { octets: parts })
    }

    /// True if the A record `code` matches.
    pub fn matches(&self, code: &str) -> bool {
        let Ok(addr) = code.parse::<std::net::Ipv4Addr>() else {
            return false;
        };
        addr.octets()
            .iter()
            .zip(&self.octets)
            .all(|(o, ranges)| ranges.iter().any(|(lo, hi)| (lo..=hi).contains(&o)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        let f = Filter::parse("127.0.0.[2..11]").expect("filter");
        assert!(f.matches("127.0.0.2") && f.matches("127.0.0.11"));
        assert!(!f.matches("127.0.0.1") && !f.matches("127.0.0.12") && !f.matches("x"));
        let f = Filter::parse("127.0.[0;1].[2;4..6]").expect("filter");
        assert!(f.matches("127.0.1.5") && !f.matches("127.0.1.3") && !f.matches("127.0.2.2"));
        assert!(
            Filter::parse("127.0.0.2")
                .expect("exact")
                .matches("127.0.0.2")
        );
        for bad in [
            "127.0.0",
            "127.0.0.[2..",
            "127.0.0.[9..2]",
            "127.0.0.256",
            "127.0.0.2.",
            "a.b.c.d",
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config() {
        let c = Config::from_json(
            r#"{"lists": [{"zone": "dnsbl.test=127.0.0.[2..11]"}, {"zone": "rhsbl.test", "check": "rhsbl_sender", "action": "score", "points": 3.5}]}"#,
        )
        .expect("config");
        assert_eq!(c.lists[0].domain(), "dnsbl.test");
        assert_eq!(c.lists[0].symbol(), "RBL_DNSBL_TEST");
        assert_eq!(c.lists[1].symbol(), "RHSBL_RHSBL_TEST");
        assert_eq!(c.tempfail_action, TempfailAction::Dunno);
        for bad in [
            r#"{"lists": []}"#,
            r#"{"lists": [{"zone": "bad..zone"}]}"#,
            r#"{"lists": [{"zone": "bl.test=127.0"}]}"#,
            r#"{"lists": [{"zone": "bl.test", "action": "score"}]}"#,
            r#"{"lists": [{"zone": "bl.test", "code": 250}]}"#,
            r#"{"lists": [{"zone": "bl.test", "enhanced": "x"}]}"#,
            r#"{"lists": [{"zone": "bl.test", "check": "client"}]}"#,
            r#"{"lists": [{"zone": "bl.test"}], "list": []}"#,
        ] {
            assert!(Config::from_json(bad).is_err(), "{bad}");
        }
    }
}
