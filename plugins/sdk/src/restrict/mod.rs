//! Pieces shared by restriction plugins that replace Postfix
//! `reject_*` restrictions: the facts about a client they judge, taken
//! from the session once ([`Client`]), the exemptions every one of them
//! offers ([`Exempt`]), what to do when DNS fails ([`TempfailAction`]),
//! checks of configured reply codes, and Postfix's envelope address
//! checks ([`address`]).

use serde::Deserialize;

pub mod address;

use crate::{Outcome, RdnsStatus, Session, log};

/// What a restriction knows of the client, read from the session (plain
/// data, so decisions are testable without a host).
#[derive(Debug, Clone, PartialEq)]
pub struct Client {
    /// The client's IP address in text form.
    pub ip: String,
    /// Its reverse DNS, as the host looked it up at connect.
    pub rdns: RdnsStatus,
    /// The HELO/EHLO name, once given.
    pub helo: Option<String>,
    /// In the host's trusted networks (Postfix `mynetworks`).
    pub trusted: bool,
    /// Logged in with SMTP AUTH.
    pub authenticated: bool,
}

impl Client {
    /// Reads the facts from the host's session.
    pub fn from_session(session: &Session) -> Client {
        Client {
            ip: session.client_ip(),
            rdns: session.client_rdns(),
            helo: session.helo(),
            trusted: session.trusted(),
            authenticated: session.auth_user().is_some(),
        }
    }

    /// A client at `ip` with no reverse DNS, no HELO, neither trusted
    /// nor authenticated (for tests; set the fields you need).
    pub fn at(ip: &str) -> Client {
        Client {
            ip: ip.to_string(),
            rdns: RdnsStatus::None,
            helo: None,
            trusted: false,
            authenticated: false,
        }
    }

    /// Postfix's `client_name`: the forward-confirmed name, else "unknown".
    pub fn name(&self) -> &str {
        match &self.rdns {
            RdnsStatus::Confirmed(n) => n,
            _ => "unknown",
        }
    }

    /// Postfix's `reverse_client_name`: the PTR name, confirmed or not.
    pub fn reverse_name(&self) -> Option<&str> {
        match &self.rdns {
            RdnsStatus::Confirmed(n) | RdnsStatus::Unconfirmed(n) => Some(n),
            _ => None,
        }
    }
}

/// Which clients a restriction leaves alone, as `permit_mynetworks` and
/// `permit_sasl_authenticated` before it would in Postfix. Config keys
/// `skip_trusted` and `skip_authenticated`, both true by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exempt {
    /// Leave clients in trusted networks alone.
    pub trusted: bool,
    /// Leave authenticated clients alone.
    pub authenticated: bool,
}

impl Default for Exempt {
    fn default() -> Exempt {
        Exempt {
            trusted: true,
            authenticated: true,
        }
    }
}

impl Exempt {
    /// True if the restriction must not judge this client.
    pub fn applies(&self, client: &Client) -> bool {
        (self.trusted && client.trusted) || (self.authenticated && client.authenticated)
    }
}

/// `true`, for `#[serde(default = "postern_sdk::restrict::yes")]`.
pub fn yes() -> bool {
    true
}

/// What a DNS lookup that failed temporarily leads to (Postfix
/// `unknown_*_tempfail_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TempfailAction {
    /// Answer 4xx at once. Postfix's default `defer_if_permit` is read as
    /// this: a plugin's tempfail ends the stage, so a later reject of
    /// the chain does not get the chance to win.
    #[default]
    #[serde(alias = "defer_if_permit")]
    Defer,
    /// Go on as if the check passed (log a warning).
    Dunno,
}

/// Checks a configured reply code: 4xx or 5xx, not 421 (which announces
/// a closing connection), and of `class` (4 or 5) when given.
pub fn check_code(key: &str, code: u16, class: Option<u16>) -> Result<(), String> {
    if !(400..600).contains(&code) || code == 421 {
        return Err(format!(
            "{key} = {code}: a reply code must be 4xx or 5xx, not 421"
        ));
    }
    if let Some(c) = class
        && code / 100 != c
    {
        return Err(format!("{key} = {code}: must be a {c}xx code"));
    }
    Ok(())
}

/// The outcome for a config that does not parse (the generation should
/// have been refused by `check-config`): logged, and a 451 4.3.5 as
/// Postfix answers for a server configuration error.
pub fn config_error(error: &str) -> Outcome {
    log::error(error);
    Outcome::tempfail(451, "4.3.5", "Server configuration problem")
}

/// Parses a plugin's config JSON once per config (see
/// [`crate::config_cached`]) with `parse`, and returns it or the error.
pub fn cached<T: 'static>(parse: fn(&str) -> Result<T, String>) -> Result<&'static T, String> {
    crate::config_cached(parse).as_ref().map_err(Clone::clone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_exemptions() {
        let mut c = Client::at("192.0.2.1");
        assert_eq!(c.name(), "unknown");
        assert_eq!(c.reverse_name(), None);
        c.rdns = RdnsStatus::Unconfirmed("x.test".into());
        assert_eq!(c.name(), "unknown");
        assert_eq!(c.reverse_name(), Some("x.test"));
        assert!(!Exempt::default().applies(&c));
        c.trusted = true;
        assert!(Exempt::default().applies(&c));
        let e = Exempt {
            trusted: false,
            authenticated: true,
        };
        assert!(!e.applies(&c));
    }

    #[test]
    fn codes() {
        assert!(check_code("x", 450, None).is_ok());
        assert!(check_code("x", 554, Some(5)).is_ok());
        assert!(check_code("x", 421, None).is_err());
        assert!(check_code("x", 250, None).is_err());
        assert!(check_code("x", 450, Some(5)).is_err());
        let t: TempfailAction = serde_json::from_str("\"defer_if_permit\"").expect("alias");
        assert_eq!(t, TempfailAction::Defer);
    }
}
