//! What a result means to the transaction: the configured verdict or
//! score, and the `Received-SPF` / `Authentication-Results` header.

use crate::eval::{self, Resolver, SpfResult, Verdict};
use serde::Deserialize;
use std::net::IpAddr;

/// What one SPF result does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A score contribution (the transaction goes on).
    Score(f64),
    /// `"continue"`, `"reject"` or `"tempfail"`.
    Word(Word),
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Action;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(r#""continue", "reject", "tempfail" or a score"#)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Action, E> {
                match v {
                    "continue" => Ok(Action::Word(Word::Continue)),
                    "reject" => Ok(Action::Word(Word::Reject)),
                    "tempfail" => Ok(Action::Word(Word::Tempfail)),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Action, E> {
                Ok(Action::Score(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Action, E> {
                Ok(Action::Score(v as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Action, E> {
                Ok(Action::Score(v as f64))
            }
        }
        d.deserialize_any(V)
    }
}

/// The verdict words.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Word {
    /// No opinion (a header is still added).
    Continue,
    /// 550 5.7.23 (5.7.24 for permerror).
    Reject,
    /// 451 4.7.24.
    Tempfail,
}

/// Which header accepted mail gets.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeaderKind {
    /// `Received-SPF` (RFC 7208 §9.1).
    ReceivedSpf,
    /// `Authentication-Results` (RFC 8601).
    AuthenticationResults,
    /// Both.
    Both,
    /// None.
    None,
}

/// One chain entry's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Result `pass`.
    pub pass: Action,
    /// Result `fail`.
    pub fail: Action,
    /// Result `softfail`.
    pub softfail: Action,
    /// Result `neutral`.
    pub neutral: Action,
    /// Result `none`.
    pub none: Action,
    /// Result `temperror`.
    pub temperror: Action,
    /// Result `permerror`.
    pub permerror: Action,
    /// The header to add.
    pub header: HeaderKind,
    /// This server's name in headers (`receiver=`, the authserv-id).
    pub authserv_id: String,
    /// Check the HELO name too, when the sender is not null (its `fail`
    /// is acted on like the sender's; policyd-spf's `HELO_reject`).
    pub check_helo: bool,
}

impl Default for Config {
    fn default() -> Self {
        let cont = Action::Word(Word::Continue);
        Config {
            pass: cont.clone(),
            fail: Action::Word(Word::Reject),
            softfail: cont.clone(),
            neutral: cont.clone(),
            none: cont.clone(),
            temperror: Action::Word(Word::Tempfail),
            permerror: cont,
            header: HeaderKind::ReceivedSpf,
            authserv_id: "localhost".into(),
            check_helo: false,
        }
    }
}

impl Config {
    /// Parses and checks an entry's config JSON.
    pub fn from_json(json: &str) -> Result<Config, String> {
        let json = if json.trim().is_empty() { "{}" } else { json };
        let cfg: Config = postern_sdk::parse_config(json)?;
        for (name, a) in cfg.actions() {
            if let Action::Score(s) = a
                && !s.is_finite()
            {
                return Err(format!("spf: {name}: score must be a finite number"));
            }
        }
        if cfg.authserv_id.is_empty()
            || !cfg.authserv_id.bytes().all(|b| b.is_ascii_graphic())
            || cfg.authserv_id.contains(';')
        {
            return Err(format!(
                "spf: authserv_id {:?} is not a host name",
                cfg.authserv_id
            ));
        }
        Ok(cfg)
    }

    fn actions(&self) -> [(&'static str, &Action); 7] {
        [
            ("pass", &self.pass),
            ("fail", &self.fail),
            ("softfail", &self.softfail),
            ("neutral", &self.neutral),
            ("none", &self.none),
            ("temperror", &self.temperror),
            ("permerror", &self.permerror),
        ]
    }

    fn action(&self, r: SpfResult) -> &Action {
        match r {
            SpfResult::Pass => &self.pass,
            SpfResult::Fail => &self.fail,
            SpfResult::SoftFail => &self.softfail,
            SpfResult::Neutral => &self.neutral,
            SpfResult::None => &self.none,
            SpfResult::TempError => &self.temperror,
            SpfResult::PermError => &self.permerror,
        }
    }
}

/// The transaction as SPF sees it.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    /// Client address.
    pub ip: IpAddr,
    /// HELO/EHLO name ("" if none).
    pub helo: &'a str,
    /// MAIL FROM ("" for `<>`).
    pub sender: &'a str,
}

/// A reply for a refusing verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// 550 or 451.
    pub code: u16,
    /// 5.7.23, 5.7.24 or 4.7.24 (RFC 7372).
    pub enhanced: &'static str,
    /// Reply text.
    pub text: String,
}

/// What the plugin returns, before it is an `Outcome`.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The identity checked ("mailfrom" or "helo") and its result.
    pub identity: &'static str,
    /// The result that decided.
    pub verdict: Verdict,
    /// A refusal, if the result's action refuses.
    pub refuse: Option<(bool, Refusal)>,
    /// A score: symbol and points.
    pub score: Option<(String, f64)>,
    /// Headers to add: (name, value).
    pub headers: Vec<(&'static str, String)>,
}

/// Checks the transaction and decides.
pub fn decide(cfg: &Config, dns: &dyn Resolver, input: &Input<'_>) -> Decision {
    let helo = input.helo.trim_end_matches('.').to_ascii_lowercase();
    let helo_sender = format!("postmaster@{helo}");
    // The null sender: the HELO identity (§2.4); a HELO that is no domain
    // (an address literal) gives none.
    let (identity, domain, sender) = if input.sender.is_empty() {
        ("helo", helo.clone(), helo_sender.clone())
    } else {
        let (local, dom) = input
            .sender
            .rsplit_once('@')
            .unwrap_or(("postmaster", input.sender));
        let local = if local.is_empty() {
            "postmaster"
        } else {
            local
        };
        (
            "mailfrom",
            dom.to_ascii_lowercase(),
            format!("{local}@{}", dom.to_ascii_lowercase()),
        )
    };
    let mut identity = identity;
    let mut verdict = eval::check_host(dns, input.ip, &domain, &sender, &helo);
    if cfg.check_helo && identity == "mailfrom" && eval::valid_domain(&helo) {
        let h = eval::check_host(dns, input.ip, &helo, &helo_sender, &helo);
        if h.result == SpfResult::Fail && verdict.result != SpfResult::Fail {
            identity = "helo";
            verdict = h;
        }
    }
    let shown_sender = if identity == "helo" {
        helo_sender.as_str()
    } else {
        sender.as_str()
    };
    let mut d = Decision {
        identity,
        verdict: verdict.clone(),
        refuse: None,
        score: None,
        headers: Vec::new(),
    };
    match cfg.action(verdict.result) {
        Action::Score(points) => {
            d.score = Some((
                format!("SPF_{}", verdict.result.name().to_ascii_uppercase()),
                *points,
            ));
        }
        Action::Word(Word::Continue) => {}
        Action::Word(Word::Reject) => {
            let (enhanced, text) = match verdict.result {
                SpfResult::TempError | SpfResult::PermError => (
                    "5.7.24",
                    format!(
                        "SPF {} for {shown_sender}: {}",
                        verdict.result.name(),
                        verdict.why
                    ),
                ),
                r => (
                    "5.7.23",
                    format!(
                        "Message rejected due to: SPF {} - not authorized. Please see https://www.open-spf.org/Why?s={};id={shown_sender};ip={};r={}",
                        r.name(),
                        if identity == "helo" { "helo" } else { "mfrom" },
                        input.ip,
                        cfg.authserv_id
                    ),
                ),
            };
            d.refuse = Some((
                false,
                Refusal {
                    code: 550,
                    enhanced,
                    text,
                },
            ));
        }
        Action::Word(Word::Tempfail) => {
            d.refuse = Some((
                true,
                Refusal {
                    code: 451,
                    enhanced: "4.7.24",
                    text: format!(
                        "SPF {} for {shown_sender}: {}; try again later",
                        verdict.result.name(),
                        verdict.why
                    ),
                },
            ));
        }
    }
    if d.refuse.is_none() {
        d.headers = headers(cfg, input, identity, shown_sender, &helo, &verdict);
    }
    d
}

fn headers(
    cfg: &Config,
    input: &Input<'_>,
    identity: &str,
    sender: &str,
    helo: &str,
    v: &Verdict,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let r = v.result.name();
    if matches!(cfg.header, HeaderKind::ReceivedSpf | HeaderKind::Both) {
        let comment = match v.result {
            SpfResult::Pass => format!(
                "domain of {sender} designates {} as permitted sender",
                input.ip
            ),
            SpfResult::Fail | SpfResult::SoftFail => {
                format!(
                    "domain of {sender} does not designate {} as permitted sender",
                    input.ip
                )
            }
            SpfResult::Neutral => format!(
                "{} is neither permitted nor denied by domain of {sender}",
                input.ip
            ),
            SpfResult::None => format!("domain of {sender} does not provide an SPF record"),
            SpfResult::TempError | SpfResult::PermError => v.why.clone(),
        };
        let comment = comment.replace(['(', ')'], "");
        let mut value = format!(
            "{r} ({}: {comment}) client-ip={}; envelope-from=\"{}\";",
            cfg.authserv_id, input.ip, input.sender
        );
        if !helo.is_empty() {
            value.push_str(&format!(" helo={helo};"));
        }
        value.push_str(&format!(
            " receiver={}; identity={identity}",
            cfg.authserv_id
        ));
        out.push(("Received-SPF", value));
    }
    if matches!(
        cfg.header,
        HeaderKind::AuthenticationResults | HeaderKind::Both
    ) {
        let prop = if identity == "helo" {
            format!("smtp.helo={helo}")
        } else {
            format!("smtp.mailfrom={sender}")
        };
        out.push((
            "Authentication-Results",
            format!("{}; spf={r} {prop}", cfg.authserv_id),
        ));
    }
    out
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
