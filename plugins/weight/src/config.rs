//! The config: lists, weights and limits, named and defaulted as in
//! policyd-weight 0.1.15.

use serde::Deserialize;

/// A DNSBL or RHSBL with its weights (policyd-weight `@dnsbl_score`,
/// `@rhsbl_score`: HOST, HIT SCORE, MISS SCORE, LOG NAME).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct List {
    /// The list's zone.
    pub zone: String,
    /// Points when listed.
    pub hit: f64,
    /// Points when not listed (or on a lookup error).
    pub miss: f64,
    /// The log name: the symbol is `IN_<name>` / `NOT_IN_<name>`.
    pub name: String,
}

fn list(zone: &str, hit: f64, miss: f64, name: &str) -> List {
    List {
        zone: zone.into(),
        hit,
        miss,
        name: name.into(),
    }
}

/// A (bad, good) weight pair, policyd-weight's `@..._score = (BAD, GOOD)`.
pub type Pair = [f64; 2];

/// policyd-weight's weight pairs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)] // each field is the policyd-weight variable of that name
pub struct Weights {
    pub client_ip_eq_helo_score: Pair,
    pub helo_score: Pair,
    pub helo_from_mx_eq_ip_score: Pair,
    pub helo_numeric_score: Pair,
    pub from_match_regex_verified_helo: Pair,
    pub from_match_regex_unverified_helo: Pair,
    pub from_match_regex_failed_helo: Pair,
    pub helo_seems_dialup: Pair,
    pub failed_helo_seems_dialup: Pair,
    pub helo_ip_in_client_subnet: Pair,
    pub helo_ip_in_cl16_subnet: Pair,
    pub client_seems_dialup_score: Pair,
    pub from_multiparted: Pair,
    pub from_anon: Pair,
    pub bogus_mx_score: Pair,
    pub random_sender_score: Pair,
    pub rhsbl_penalty_score: Pair,
    pub enforce_dyndns_score: Pair,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            client_ip_eq_helo_score: [1.5, -1.25],
            helo_score: [1.5, -2.0],
            helo_from_mx_eq_ip_score: [1.5, -3.1],
            helo_numeric_score: [2.5, 0.0],
            from_match_regex_verified_helo: [1.0, -2.0],
            from_match_regex_unverified_helo: [1.6, -1.5],
            from_match_regex_failed_helo: [2.5, 0.0],
            helo_seems_dialup: [1.5, 0.0],
            failed_helo_seems_dialup: [2.0, 0.0],
            helo_ip_in_client_subnet: [0.0, -1.2],
            helo_ip_in_cl16_subnet: [0.0, -0.41],
            client_seems_dialup_score: [3.75, 0.0],
            from_multiparted: [1.09, 0.0],
            from_anon: [1.17, 0.0],
            bogus_mx_score: [2.1, 0.0],
            random_sender_score: [0.25, 0.0],
            rhsbl_penalty_score: [3.1, 0.0],
            enforce_dyndns_score: [3.0, 0.0],
        }
    }
}

/// One chain entry's config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `@dnsbl_score`.
    pub dnsbl: Vec<List>,
    /// `@rhsbl_score`.
    pub rhsbl: Vec<List>,
    /// `$MAXDNSBLHITS`: listed in more DNSBLs than this: rejected at once.
    pub max_dnsbl_hits: u32,
    /// `$MAXDNSBLSCORE`: DNSBL points above this: rejected at once.
    pub max_dnsbl_score: f64,
    /// `$REJECTLEVEL`: some checks run only below it (set it to the
    /// host's reject threshold), and the level `decide` rejects at.
    pub reject_level: f64,
    /// `$DEFER_LEVEL`: with `decide`, a reject below it whose checks
    /// include a `defer_on` symbol is a 450.
    pub defer_level: f64,
    /// `$DEFER_STRING`: the symbols that turn a low reject into a 450.
    pub defer_on: Vec<String>,
    /// `$MAXDNSERR`: after this many DNS errors the mail passes unscored.
    pub max_dns_errors: u32,
    /// Answer like policyd-weight (550 / 450 with its texts) instead of
    /// leaving the verdict to the host's thresholds.
    pub decide: bool,
    /// The weight pairs.
    pub weights: Weights,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            dnsbl: vec![
                list("pbl.spamhaus.org", 3.25, 0.0, "DYN_PBL_SPAMHAUS"),
                list("sbl-xbl.spamhaus.org", 4.35, -1.5, "SBL_XBL_SPAMHAUS"),
                list("bl.spamcop.net", 3.75, -1.5, "SPAMCOP"),
                list("ix.dnsbl.manitu.net", 4.35, 0.0, "IX_MANITU"),
            ],
            rhsbl: vec![list("multi.surbl.org", 4.0, 0.0, "SURBL")],
            max_dnsbl_hits: 2,
            max_dnsbl_score: 8.0,
            reject_level: 1.0,
            defer_level: 5.0,
            defer_on: vec!["IN_SPAMCOP".into(), "BOGUS_MX".into()],
            max_dns_errors: 3,
            decide: false,
            weights: Weights::default(),
        }
    }
}

impl Config {
    /// Parses and checks an entry's config JSON.
    pub fn from_json(json: &str) -> Result<Config, String> {
        let json = if json.trim().is_empty() { "{}" } else { json };
        let cfg: Config = postern_sdk::parse_config(json)?;
        for l in cfg.dnsbl.iter().chain(&cfg.rhsbl) {
            if !l.zone.contains('.')
                || l.zone.starts_with('.')
                || l.zone.contains(char::is_whitespace)
            {
                return Err(format!("weight: list zone {:?} is not a domain", l.zone));
            }
            if l.name.is_empty()
                || !l
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(format!(
                    "weight: list name {:?}: use A-Z, 0-9 and _",
                    l.name
                ));
            }
            if !l.hit.is_finite() || !l.miss.is_finite() {
                return Err(format!("weight: list {}: weights must be finite", l.zone));
            }
        }
        if !(cfg.reject_level.is_finite()
            && cfg.defer_level.is_finite()
            && cfg.max_dnsbl_score.is_finite())
        {
            return Err(
                "weight: reject_level, defer_level and max_dnsbl_score must be finite".into(),
            );
        }
        if cfg.max_dns_errors == 0 {
            return Err("weight: max_dns_errors must be at least 1".into());
        }
        Ok(cfg)
    }
}
