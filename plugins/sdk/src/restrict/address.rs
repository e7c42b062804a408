//! Postfix's checks of an envelope address, shared by the sender and
//! recipient restrictions: `reject_non_fqdn_{sender,recipient}` and
//! `reject_unknown_{sender,recipient}_domain` (with RFC 7505 null MX), in
//! Postfix's words and codes.

use super::{Exempt, TempfailAction, check_code};
use crate::name::{address_domain, is_address_literal, is_fqdn, valid_address_literal};
use crate::resolve::{MailDomain, Resolver, mail_domain};
use crate::{Outcome, log};

/// Which address is judged: it names the reply and picks the codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// MAIL FROM: "Sender address", `x.1.8`, null MX `550 5.7.27`.
    Sender,
    /// RCPT TO: "Recipient address", `x.1.2`, null MX `556 5.1.10`.
    Recipient,
}

impl Role {
    /// Postfix's name of the thing rejected.
    pub fn class(self) -> &'static str {
        match self {
            Role::Sender => "Sender address",
            Role::Recipient => "Recipient address",
        }
    }

    /// The word in this role's config keys.
    fn word(self) -> &'static str {
        match self {
            Role::Sender => "sender",
            Role::Recipient => "recipient",
        }
    }

    /// The enhanced code of "Domain not found".
    fn not_found(self) -> &'static str {
        match self {
            Role::Sender => "4.1.8",
            Role::Recipient => "4.1.2",
        }
    }

    /// The enhanced code of a null MX (RFC 7505 section 4).
    fn null_mx(self) -> &'static str {
        match self {
            Role::Sender => "5.7.27",
            Role::Recipient => "5.1.10",
        }
    }

    /// Postfix's code for a null MX domain: 550 for a sender, 556 for a
    /// recipient (RFC 7504).
    pub fn null_mx_code(self) -> u16 {
        match self {
            Role::Sender => 550,
            Role::Recipient => 556,
        }
    }
}

/// Which checks run, and their codes.
#[derive(Debug, Clone, PartialEq)]
pub struct AddressChecks {
    /// `reject_non_fqdn_*`.
    pub non_fqdn: bool,
    /// `reject_unknown_*_domain`.
    pub unknown_domain: bool,
    /// `non_fqdn_reject_code` (Postfix 504).
    pub non_fqdn_code: u16,
    /// `unknown_address_reject_code` (Postfix 450).
    pub unknown_code: u16,
    /// The code for a null MX domain ([`Role::null_mx_code`]).
    pub null_mx_code: u16,
    /// `unknown_address_tempfail_action`.
    pub tempfail: TempfailAction,
}

/// The config of a `sender` or `recipient` chain entry, with Postfix's
/// names for the role: `reject_non_fqdn_ROLE`,
/// `reject_unknown_ROLE_domain` (both true by default),
/// `non_fqdn_reject_code` (504), `unknown_address_reject_code` (450),
/// `nullmx_reject_code` ([`Role::null_mx_code`]),
/// `unknown_address_tempfail_action` (`defer`), `skip_trusted` and
/// `skip_authenticated` (true). Any other key is an error.
#[derive(Debug, Clone, PartialEq)]
pub struct AddressConfig {
    /// Which address the entry judges.
    pub role: Role,
    /// What is checked, with which codes.
    pub checks: AddressChecks,
    /// The clients left alone.
    pub exempt: Exempt,
}

impl AddressConfig {
    /// Parses and validates a config JSON object for `role`.
    pub fn from_json(role: Role, json: &str) -> Result<AddressConfig, String> {
        use serde_json::Value;
        let map: serde_json::Map<String, Value> = crate::parse_config(json)?;
        let mut c = AddressConfig {
            role,
            checks: AddressChecks {
                non_fqdn: true,
                unknown_domain: true,
                non_fqdn_code: 504,
                unknown_code: 450,
                null_mx_code: role.null_mx_code(),
                tempfail: TempfailAction::Defer,
            },
            exempt: Exempt::default(),
        };
        let non_fqdn = format!("reject_non_fqdn_{}", role.word());
        let unknown = format!("reject_unknown_{}_domain", role.word());
        for (key, value) in map {
            let flag = || {
                value
                    .as_bool()
                    .ok_or_else(|| format!("{key}: expected true or false"))
            };
            let code = || {
                value
                    .as_u64()
                    .and_then(|n| u16::try_from(n).ok())
                    .ok_or_else(|| format!("{key}: expected a reply code"))
            };
            match key.as_str() {
                k if k == non_fqdn => c.checks.non_fqdn = flag()?,
                k if k == unknown => c.checks.unknown_domain = flag()?,
                "non_fqdn_reject_code" => c.checks.non_fqdn_code = code()?,
                "unknown_address_reject_code" => c.checks.unknown_code = code()?,
                "nullmx_reject_code" => c.checks.null_mx_code = code()?,
                "unknown_address_tempfail_action" => {
                    c.checks.tempfail = serde_json::from_value(value.clone())
                        .map_err(|e| format!("{key}: {e} (defer or dunno)"))?
                }
                "skip_trusted" => c.exempt.trusted = flag()?,
                "skip_authenticated" => c.exempt.authenticated = flag()?,
                _ => return Err(format!("unknown config key {key:?}")),
            }
        }
        check_code("non_fqdn_reject_code", c.checks.non_fqdn_code, None)?;
        check_code("unknown_address_reject_code", c.checks.unknown_code, None)?;
        check_code("nullmx_reject_code", c.checks.null_mx_code, Some(5))?;
        Ok(c)
    }

    /// Judges `address`; the null sender always passes.
    pub fn check(&self, address: &str, dns: &impl Resolver) -> Outcome {
        if address.is_empty() {
            return Outcome::cont();
        }
        check_address(self.role, &self.checks, address, dns)
    }
}

fn refuse(code: u16, enhanced: &str, role: Role, address: &str, why: &str) -> Outcome {
    Outcome::refuse(
        code,
        enhanced,
        format!("<{address}>: {} rejected: {why}", role.class()),
    )
}

/// Judges `address` (not the null sender: callers let `<>` pass, as
/// Postfix does). Syntax first, then DNS; an address literal domain is
/// never looked up.
pub fn check_address(
    role: Role,
    checks: &AddressChecks,
    address: &str,
    dns: &impl Resolver,
) -> Outcome {
    let domain = address_domain(address);
    let literal = is_address_literal(domain);
    if checks.non_fqdn
        && !(if literal {
            valid_address_literal(domain)
        } else {
            is_fqdn(domain)
        })
    {
        return refuse(
            checks.non_fqdn_code,
            "5.5.2",
            role,
            address,
            "need fully-qualified address",
        );
    }
    // Postfix does not look up what has no domain or is a literal.
    if !checks.unknown_domain || literal || !address.contains('@') {
        return Outcome::cont();
    }
    match mail_domain(dns, domain) {
        MailDomain::Exists => Outcome::cont(),
        MailDomain::NullMx => refuse(
            checks.null_mx_code,
            role.null_mx(),
            role,
            address,
            &format!(
                "Domain {} does not accept mail (nullMX)",
                domain.trim_end_matches('.')
            ),
        ),
        MailDomain::NotFound => refuse(
            checks.unknown_code,
            role.not_found(),
            role,
            address,
            "Domain not found",
        ),
        MailDomain::Temporary(why) => {
            log::warn(&format!(
                "{} {address}: lookup of {domain} failed: {why}",
                role.class()
            ));
            match checks.tempfail {
                TempfailAction::Defer => {
                    refuse(450, role.not_found(), role, address, "Domain not found")
                }
                TempfailAction::Dunno => Outcome::cont(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeResolver, describe};

    fn checks() -> AddressChecks {
        AddressChecks {
            non_fqdn: true,
            unknown_domain: true,
            non_fqdn_code: 504,
            unknown_code: 450,
            null_mx_code: 550,
            tempfail: TempfailAction::Defer,
        }
    }

    fn text(o: &Outcome) -> Option<String> {
        let d = describe(o);
        (d != "continue").then(|| d.split_once(": ").map_or(d.clone(), |(_, r)| r.to_string()))
    }

    #[test]
    fn literals_and_bare_names() {
        let dns = FakeResolver::test_zones();
        let c = checks();
        assert_eq!(
            text(&check_address(Role::Sender, &c, "a@[127.0.0.1]", &dns)),
            None
        );
        assert_eq!(
            text(&check_address(Role::Sender, &c, "a@[nowhere]", &dns)),
            Some(
                "504 5.5.2 <a@[nowhere]>: Sender address rejected: need fully-qualified address"
                    .into()
            )
        );
        let lax = AddressChecks {
            non_fqdn: false,
            ..checks()
        };
        // No domain: nothing to look up.
        assert_eq!(
            text(&check_address(Role::Recipient, &lax, "postmaster", &dns)),
            None
        );
        assert!(dns.calls().is_empty());
    }

    #[test]
    fn config_keys_follow_the_role() {
        let s = AddressConfig::from_json(Role::Sender, r#"{"reject_non_fqdn_sender": false}"#)
            .expect("sender");
        assert!(!s.checks.non_fqdn && s.checks.unknown_domain);
        assert_eq!(s.checks.null_mx_code, 550);
        assert!(
            AddressConfig::from_json(Role::Sender, r#"{"reject_non_fqdn_recipient": false}"#)
                .is_err()
        );
        let r = AddressConfig::from_json(Role::Recipient, "{}").expect("recipient");
        assert_eq!(r.checks.null_mx_code, 556);
        for bad in [
            r#"{"nullmx_reject_code": 450}"#,
            r#"{"unknown_address_reject_code": 200}"#,
            r#"{"non_fqdn_reject_code": "504"}"#,
            r#"{"skip_trusted": 1}"#,
            r#"{"unknown_address_tempfail_action": "ok"}"#,
            "[]",
        ] {
            assert!(
                AddressConfig::from_json(Role::Recipient, bad).is_err(),
                "{bad}"
            );
        }
        let d = AddressConfig::from_json(
            Role::Sender,
            r#"{"unknown_address_tempfail_action": "defer_if_permit"}"#,
        )
        .expect("alias");
        assert_eq!(d.checks.tempfail, TempfailAction::Defer);
        assert_eq!(d.check("", &FakeResolver::new()), Outcome::cont());
    }
}
