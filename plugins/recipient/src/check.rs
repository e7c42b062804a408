//! The recipient checks: Postfix's, shared with the sender plugin, in the SDK
//! (`postern_sdk::restrict::address`), with this plugin's config keys.

use postern_sdk::restrict::address::{AddressConfig, Role};

/// Parses and validates an entry's config JSON (keys in README.md).
pub fn from_json(json: &str) -> Result<AddressConfig, String> {
    AddressConfig::from_json(Role::Recipient, json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_sdk::fake::{FakeResolver, describe};

    /// The outcome as `describe` writes it; None for continue.
    fn judge(json: &str, address: &str, dns: &FakeResolver) -> Option<String> {
        let d = describe(&from_json(json).expect("config").check(address, dns));
        (d != "continue").then_some(d)
    }

    #[test]
    fn reject_non_fqdn_recipient() {
        let dns = FakeResolver::test_zones();
        let only = r#"{"reject_unknown_recipient_domain": false}"#;
        assert_eq!(
            judge(only, "foo@foo", &dns).as_deref(),
            Some(
                "reject: 504 5.5.2 <foo@foo>: Recipient address rejected: need fully-qualified address"
            )
        );
        assert!(judge(only, "foo", &dns).is_some());
        assert_eq!(judge(only, "alice@example.test", &dns), None);
        assert_eq!(judge(only, "alice@[127.0.0.1]", &dns), None);
    }

    #[test]
    fn reject_unknown_recipient_domain() {
        let dns = FakeResolver::test_zones();
        let only = r#"{"reject_non_fqdn_recipient": false}"#;
        assert_eq!(
            judge(only, "a@nowhere.test", &dns).as_deref(),
            Some(
                "tempfail: 450 4.1.2 <a@nowhere.test>: Recipient address rejected: Domain not found"
            )
        );
        assert_eq!(
            judge(
                r#"{"unknown_address_reject_code": 550}"#,
                "a@nowhere.test",
                &dns
            )
            .as_deref(),
            Some(
                "reject: 550 5.1.2 <a@nowhere.test>: Recipient address rejected: Domain not found"
            )
        );
        for ok in ["a@dest.test", "a@nomx.test", "alice@example.test"] {
            assert_eq!(judge(only, ok, &dns), None, "{ok}");
        }
    }

    #[test]
    fn null_mx_recipient_domain() {
        let dns = FakeResolver::test_zones();
        assert_eq!(
            judge("{}", "a@nullmx.test", &dns).as_deref(),
            Some(
                "reject: 556 5.1.10 <a@nullmx.test>: Recipient address rejected: Domain nullmx.test does not accept mail (nullMX)"
            )
        );
    }

    #[test]
    fn temporary_dns_failure() {
        let dns = FakeResolver::test_zones().temporary("slow.test");
        assert_eq!(
            judge("{}", "a@slow.test", &dns).as_deref(),
            Some("tempfail: 450 4.1.2 <a@slow.test>: Recipient address rejected: Domain not found")
        );
        assert_eq!(
            judge(
                r#"{"unknown_address_tempfail_action": "dunno"}"#,
                "a@slow.test",
                &dns
            ),
            None
        );
    }
}
