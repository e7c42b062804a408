//! The HELO checks, as plain functions of the config, the HELO name and a
//! resolver (tested natively with the SDK's fake resolver).

use postern_sdk::Outcome;
use postern_sdk::log;
use postern_sdk::name::{is_address_literal, is_fqdn, valid_address_literal, valid_hostname};
use postern_sdk::resolve::{HostName, Resolver, host_name};
use postern_sdk::restrict::{Exempt, TempfailAction, check_code, yes};
use serde::Deserialize;

/// One chain entry's config (every key optional).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Postfix `reject_invalid_helo_hostname`.
    #[serde(default = "yes")]
    pub reject_invalid_helo_hostname: bool,
    /// Postfix `reject_non_fqdn_helo_hostname`.
    #[serde(default = "yes")]
    pub reject_non_fqdn_helo_hostname: bool,
    /// Postfix `reject_unknown_helo_hostname`.
    #[serde(default = "yes")]
    pub reject_unknown_helo_hostname: bool,
    /// Postfix `invalid_hostname_reject_code` (501).
    #[serde(default = "invalid_code")]
    pub invalid_hostname_reject_code: u16,
    /// Postfix `non_fqdn_reject_code` (504).
    #[serde(default = "non_fqdn_code")]
    pub non_fqdn_reject_code: u16,
    /// Postfix `unknown_hostname_reject_code` (450).
    #[serde(default = "unknown_code")]
    pub unknown_hostname_reject_code: u16,
    /// Postfix `unknown_helo_hostname_tempfail_action`: what a failed
    /// lookup leads to (`defer`, the default, or `dunno`).
    #[serde(default)]
    pub unknown_helo_hostname_tempfail_action: TempfailAction,
    /// Leave trusted clients alone (`permit_mynetworks` before).
    #[serde(default = "yes")]
    pub skip_trusted: bool,
    /// Leave authenticated clients alone (`permit_sasl_authenticated`).
    #[serde(default = "yes")]
    pub skip_authenticated: bool,
}

fn invalid_code() -> u16 {
    501
}
fn non_fqdn_code() -> u16 {
    504
}
fn unknown_code() -> u16 {
    450
}

impl Config {
    /// Parses and validates an entry's config JSON.
    pub fn from_json(json: &str) -> Result<Config, String> {
        let config: Config = postern_sdk::parse_config(json)?;
        check_code(
            "invalid_hostname_reject_code",
            config.invalid_hostname_reject_code,
            None,
        )?;
        check_code("non_fqdn_reject_code", config.non_fqdn_reject_code, None)?;
        check_code(
            "unknown_hostname_reject_code",
            config.unknown_hostname_reject_code,
            None,
        )?;
        Ok(config)
    }

    /// The clients this entry leaves alone.
    pub fn exempt(&self) -> Exempt {
        Exempt {
            trusted: self.skip_trusted,
            authenticated: self.skip_authenticated,
        }
    }
}

/// `<NAME>: Helo command rejected: WHY` with `code`.
fn refuse(code: u16, enhanced: &str, helo: &str, why: &str) -> Outcome {
    Outcome::refuse(
        code,
        enhanced,
        format!("<{helo}>: Helo command rejected: {why}"),
    )
}

/// Judges a HELO name: syntax first, then (if still in the running) DNS,
/// in Postfix's words and codes.
pub fn check_helo(config: &Config, helo: &str, dns: &impl Resolver) -> Outcome {
    // Postfix checks an address literal's address instead, whichever of
    // the three restrictions is asked for.
    if is_address_literal(helo) {
        let any = config.reject_invalid_helo_hostname
            || config.reject_non_fqdn_helo_hostname
            || config.reject_unknown_helo_hostname;
        if any && !valid_address_literal(helo) {
            return refuse(
                config.invalid_hostname_reject_code,
                "5.5.2",
                helo,
                "invalid ip address",
            );
        }
        return Outcome::cont();
    }
    // A bare address is no host name, but Postfix lets it pass this test
    // (for backwards compatibility); the FQDN and DNS tests refuse it.
    let name = helo.strip_suffix('.').unwrap_or(helo);
    if config.reject_invalid_helo_hostname
        && !valid_hostname(name)
        && !postern_sdk::name::valid_hostaddr(name)
    {
        return refuse(
            config.invalid_hostname_reject_code,
            "5.5.2",
            helo,
            "Invalid name",
        );
    }
    if config.reject_non_fqdn_helo_hostname && !is_fqdn(helo) {
        return refuse(
            config.non_fqdn_reject_code,
            "5.5.2",
            helo,
            "need fully-qualified hostname",
        );
    }
    if config.reject_unknown_helo_hostname {
        match host_name(dns, name) {
            HostName::Exists => {}
            HostName::NotFound => {
                return refuse(
                    config.unknown_hostname_reject_code,
                    "4.7.1",
                    helo,
                    "Host not found",
                );
            }
            HostName::Temporary(why) => {
                log::warn(&format!("HELO {helo}: lookup failed: {why}"));
                if config.unknown_helo_hostname_tempfail_action == TempfailAction::Defer {
                    return refuse(450, "4.7.1", helo, "Host not found");
                }
            }
        }
    }
    Outcome::cont()
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_sdk::Verdict;
    use postern_sdk::fake::FakeResolver;

    fn config(json: &str) -> Config {
        Config::from_json(json).expect("config")
    }

    /// (code, enhanced, text) of a refusal; None for continue.
    fn reply(o: &Outcome) -> Option<(u16, String, String)> {
        match &o.verdict {
            Verdict::Reject(r) | Verdict::Tempfail(r) => Some((
                r.code,
                r.enhanced.clone().unwrap_or_default(),
                r.text.clone(),
            )),
            _ => None,
        }
    }

    fn judge(json: &str, helo: &str, dns: &FakeResolver) -> Option<(u16, String, String)> {
        reply(&check_helo(&config(json), helo, dns))
    }

    #[test]
    fn reject_invalid_helo_hostname() {
        let dns = FakeResolver::test_zones();
        let only =
            r#"{"reject_non_fqdn_helo_hostname": false, "reject_unknown_helo_hostname": false}"#;
        assert_eq!(
            judge(only, "bad_name..test", &dns),
            Some((
                501,
                "5.5.2".into(),
                "<bad_name..test>: Helo command rejected: Invalid name".into()
            ))
        );
        assert_eq!(judge(only, "-x.test", &dns).map(|r| r.0), Some(501));
        assert_eq!(
            judge(only, "[::]", &dns),
            Some((
                501,
                "5.5.2".into(),
                "<[::]>: Helo command rejected: invalid ip address".into()
            ))
        );
        for ok in [
            "localhost",
            "foo.",
            "198.18.0.25",
            "[198.18.0.25]",
            "[IPv6:::1]",
        ] {
            assert_eq!(judge(only, ok, &dns), None, "{ok}");
        }
        // No DNS was asked.
        assert!(dns.calls().is_empty());
    }

    #[test]
    fn reject_non_fqdn_helo_hostname() {
        let dns = FakeResolver::test_zones();
        let only =
            r#"{"reject_invalid_helo_hostname": false, "reject_unknown_helo_hostname": false}"#;
        assert_eq!(
            judge(only, "localhost", &dns),
            Some((
                504,
                "5.5.2".into(),
                "<localhost>: Helo command rejected: need fully-qualified hostname".into()
            ))
        );
        assert_eq!(judge(only, "198.18.0.25", &dns).map(|r| r.0), Some(504));
        assert_eq!(judge(only, "foo.", &dns).map(|r| r.0), Some(504));
        assert_eq!(judge(only, "mail.good.test", &dns), None);
        assert_eq!(judge(only, "[127.0.0.1]", &dns), None);
        // A configured 5xx code keeps the enhanced code's detail.
        let strict = r#"{"non_fqdn_reject_code": 554, "reject_unknown_helo_hostname": false}"#;
        assert_eq!(
            judge(strict, "localhost", &dns).map(|r| (r.0, r.1)),
            Some((554, "5.5.2".into()))
        );
    }

    #[test]
    fn reject_unknown_helo_hostname() {
        let dns = FakeResolver::test_zones().temporary("slow.test");
        assert_eq!(
            judge("{}", "nowhere.test", &dns),
            Some((
                450,
                "4.7.1".into(),
                "<nowhere.test>: Helo command rejected: Host not found".into()
            ))
        );
        // A records, MX only (even a null MX), with a trailing dot: known.
        for ok in [
            "mail.good.test",
            "good.test",
            "nullmx.test",
            "client.example.test.",
        ] {
            assert_eq!(judge("{}", ok, &dns), None, "{ok}");
        }
        // One batch per check.
        assert!(
            dns.calls().iter().all(|c| c == "batch 3"),
            "{:?}",
            dns.calls()
        );
        // Operator's code for "no such host": 550 5.7.1.
        assert_eq!(
            judge(
                r#"{"unknown_hostname_reject_code": 550}"#,
                "nowhere.test",
                &dns
            )
            .map(|r| (r.0, r.1)),
            Some((550, "5.7.1".into()))
        );
    }

    #[test]
    fn temporary_dns_failure_defers_or_passes() {
        let dns = FakeResolver::test_zones().temporary("slow.test");
        // 450 even when the operator made "not found" a 550.
        let r = check_helo(
            &config(r#"{"unknown_hostname_reject_code": 550}"#),
            "mx.slow.test",
            &dns,
        );
        assert!(
            matches!(r.verdict, Verdict::Tempfail(ref r) if r.code == 450
            && r.text == "<mx.slow.test>: Helo command rejected: Host not found")
        );
        let dunno = r#"{"unknown_helo_hostname_tempfail_action": "dunno"}"#;
        assert_eq!(judge(dunno, "mx.slow.test", &dns), None);
    }

    #[test]
    fn config_is_checked() {
        assert!(Config::from_json(r#"{"non_fqdn_reject_code": 421}"#).is_err());
        assert!(Config::from_json(r#"{"reject_unknown_helo": true}"#).is_err());
        assert!(Config::from_json(r#"{"unknown_helo_hostname_tempfail_action": "ok"}"#).is_err());
        let c = config("{}");
        assert!(c.reject_invalid_helo_hostname && c.reject_unknown_helo_hostname);
        assert_eq!(c.exempt(), Exempt::default());
    }
}
