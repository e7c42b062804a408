//! The client checks, as plain functions of the config and the client's
//! facts (its reverse DNS as the host looked it up at connect).

use postern_sdk::restrict::{Client, Exempt, check_code, yes};
use postern_sdk::{Outcome, RdnsStatus, log};
use serde::Deserialize;

/// One chain entry's config (every key optional).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Postfix `reject_unknown_reverse_client_hostname`: no PTR record.
    #[serde(default = "yes")]
    pub reject_unknown_reverse_client_hostname: bool,
    /// Postfix `reject_unknown_client_hostname`: no forward-confirmed
    /// name (no PTR, or no PTR name resolving back to the address).
    #[serde(default)]
    pub reject_unknown_client_hostname: bool,
    /// Postfix `unknown_client_reject_code` (450); a lookup that failed
    /// temporarily is always answered 450.
    #[serde(default = "unknown_code")]
    pub unknown_client_reject_code: u16,
    /// Leave trusted clients alone (`permit_mynetworks` before).
    #[serde(default = "yes")]
    pub skip_trusted: bool,
    /// Leave authenticated clients alone (`permit_sasl_authenticated`).
    #[serde(default = "yes")]
    pub skip_authenticated: bool,
}

fn unknown_code() -> u16 {
    450
}

impl Config {
    /// Parses and validates an entry's config JSON.
    pub fn from_json(json: &str) -> Result<Config, String> {
        let c: Config = postern_sdk::parse_config(json)?;
        check_code(
            "unknown_client_reject_code",
            c.unknown_client_reject_code,
            None,
        )?;
        Ok(c)
    }
}

/// Judges the client's reverse DNS in Postfix's words and codes.
pub fn check_client(config: &Config, client: &Client) -> Outcome {
    let exempt = Exempt {
        trusted: config.skip_trusted,
        authenticated: config.skip_authenticated,
    };
    if exempt.applies(client) {
        return Outcome::cont();
    }
    let code = match client.rdns {
        RdnsStatus::Temporary => 450,
        _ => config.unknown_client_reject_code,
    };
    if matches!(client.rdns, RdnsStatus::NotLookedUp) {
        if config.reject_unknown_reverse_client_hostname || config.reject_unknown_client_hostname {
            log::error(
                "the host does not look up clients' reverse DNS (dns.reverse_lookup = false): client checks skipped",
            );
        }
        return Outcome::cont();
    }
    if config.reject_unknown_reverse_client_hostname
        && matches!(client.rdns, RdnsStatus::None | RdnsStatus::Temporary)
    {
        return Outcome::refuse(
            code,
            "4.7.1",
            format!(
                "Client host rejected: cannot find your reverse hostname, [{}]",
                client.ip
            ),
        );
    }
    if config.reject_unknown_client_hostname && !matches!(client.rdns, RdnsStatus::Confirmed(_)) {
        return Outcome::refuse(
            code,
            "4.7.25",
            format!(
                "Client host rejected: cannot find your hostname, [{}]",
                client.ip
            ),
        );
    }
    Outcome::cont()
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_sdk::Verdict;
    use postern_sdk::fake::describe;

    /// The outcome as `describe` writes it; None for continue.
    fn judge(json: &str, ip: &str, rdns: RdnsStatus) -> Option<String> {
        let config = Config::from_json(json).expect("config");
        let client = Client {
            rdns,
            ..Client::at(ip)
        };
        let d = describe(&check_client(&config, &client));
        (d != "continue").then_some(d)
    }

    // The test zones: 127.0.0.2 <-> client.example.test (confirmed),
    // 127.0.0.3 no PTR, 198.18.0.25 <-> mail.good.test.

    #[test]
    fn reject_unknown_reverse_client_hostname() {
        assert_eq!(
            judge("{}", "127.0.0.3", RdnsStatus::None).as_deref(),
            Some(
                "tempfail: 450 4.7.1 Client host rejected: cannot find your reverse hostname, [127.0.0.3]"
            )
        );
        assert_eq!(
            judge(
                r#"{"unknown_client_reject_code": 550}"#,
                "127.0.0.3",
                RdnsStatus::None
            )
            .as_deref(),
            Some(
                "reject: 550 5.7.1 Client host rejected: cannot find your reverse hostname, [127.0.0.3]"
            )
        );
        // A PTR that does not resolve back is enough here.
        assert_eq!(
            judge(
                "{}",
                "127.0.0.5",
                RdnsStatus::Unconfirmed("forged.test".into())
            ),
            None
        );
        assert_eq!(
            judge(
                "{}",
                "127.0.0.2",
                RdnsStatus::Confirmed("client.example.test".into())
            ),
            None
        );
    }

    #[test]
    fn reject_unknown_client_hostname() {
        let only = r#"{"reject_unknown_reverse_client_hostname": false, "reject_unknown_client_hostname": true, "unknown_client_reject_code": 550}"#;
        assert_eq!(
            judge(
                only,
                "127.0.0.5",
                RdnsStatus::Unconfirmed("forged.test".into())
            )
            .as_deref(),
            Some("reject: 550 5.7.25 Client host rejected: cannot find your hostname, [127.0.0.5]")
        );
        assert_eq!(
            judge(only, "2001:db8::1", RdnsStatus::None).as_deref(),
            Some(
                "reject: 550 5.7.25 Client host rejected: cannot find your hostname, [2001:db8::1]"
            )
        );
        assert_eq!(
            judge(
                only,
                "198.18.0.25",
                RdnsStatus::Confirmed("mail.good.test".into())
            ),
            None
        );
    }

    #[test]
    fn temporary_failure_is_450_whatever_the_code() {
        let both = r#"{"reject_unknown_client_hostname": true, "unknown_client_reject_code": 550}"#;
        assert_eq!(
            judge(both, "127.0.0.3", RdnsStatus::Temporary).as_deref(),
            Some(
                "tempfail: 450 4.7.1 Client host rejected: cannot find your reverse hostname, [127.0.0.3]"
            )
        );
    }

    #[test]
    fn exempt_and_not_looked_up() {
        let client = Client {
            trusted: true,
            ..Client::at("127.0.0.3")
        };
        let config = Config::from_json("{}").expect("config");
        assert!(matches!(
            check_client(&config, &client).verdict,
            Verdict::Continue
        ));
        let config = Config::from_json(r#"{"skip_trusted": false}"#).expect("config");
        assert!(matches!(
            check_client(&config, &client).verdict,
            Verdict::Tempfail(_)
        ));
        assert_eq!(judge("{}", "127.0.0.3", RdnsStatus::NotLookedUp), None);
        assert!(Config::from_json(r#"{"unknown_client_reject_code": 250}"#).is_err());
        assert!(Config::from_json(r#"{"reject_unknown_client": true}"#).is_err());
    }
}
