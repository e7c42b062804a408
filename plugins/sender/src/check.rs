//! The sender checks: Postfix's, shared with the recipient plugin, in the SDK
//! (`postern_sdk::restrict::address`), with this plugin's config keys.

use postern_sdk::restrict::address::{AddressConfig, Role};

/// Parses and validates an entry's config JSON (keys in README.md).
pub fn from_json(json: &str) -> Result<AddressConfig, String> {
    AddressConfig::from_json(Role::Sender, json)
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
    fn reject_non_fqdn_sender() {
        let dns = FakeResolver::test_zones();
        let only = r#"{"reject_unknown_sender_domain": false}"#;
        assert_eq!(
            judge(only, "foo@foo", &dns).as_deref(),
            Some(
                "reject: 504 5.5.2 <foo@foo>: Sender address rejected: need fully-qualified address"
            )
        );
        assert!(judge(only, "foo", &dns).is_some());
        assert_eq!(judge(only, "foo@foo.bar.", &dns), None);
        assert_eq!(judge(only, "", &dns), None);
        assert!(dns.calls().is_empty());
    }

    #[test]
    fn reject_unknown_sender_domain() {
        let dns = FakeResolver::test_zones();
        let only = r#"{"reject_non_fqdn_sender": false}"#;
        assert_eq!(
            judge(only, "someone@nowhere.test", &dns).as_deref(),
            Some(
                "tempfail: 450 4.1.8 <someone@nowhere.test>: Sender address rejected: Domain not found"
            )
        );
        // The operator's 5xx turns the enhanced code into 5.1.8.
        assert_eq!(
            judge(
                r#"{"unknown_address_reject_code": 550}"#,
                "someone@nowhere.test",
                &dns
            )
            .as_deref(),
            Some(
                "reject: 550 5.1.8 <someone@nowhere.test>: Sender address rejected: Domain not found"
            )
        );
        // MX, implicit MX (A only), an MX host name: all exist.
        for ok in [
            "a@example.test",
            "a@nomx.test",
            "a@good.test",
            "a@Mail.Good.Test",
        ] {
            assert_eq!(judge(only, ok, &dns), None, "{ok}");
        }
        // The null sender is never looked up.
        assert_eq!(judge(only, "", &dns), None);
        assert!(dns.calls().iter().all(|c| c == "batch 3"));
    }

    #[test]
    fn null_mx_sender_domain() {
        let dns = FakeResolver::test_zones();
        assert_eq!(
            judge("{}", "a@nullmx.test", &dns).as_deref(),
            Some(
                "reject: 550 5.7.27 <a@nullmx.test>: Sender address rejected: Domain nullmx.test does not accept mail (nullMX)"
            )
        );
        assert_eq!(
            judge(r#"{"nullmx_reject_code": 554}"#, "a@nullmx.test", &dns)
                .map(|r| r[..19].to_string())
                .as_deref(),
            Some("reject: 554 5.7.27 ")
        );
    }

    #[test]
    fn temporary_dns_failure() {
        let dns = FakeResolver::test_zones().temporary("slow.test");
        assert_eq!(
            judge(
                r#"{"unknown_address_reject_code": 550}"#,
                "a@slow.test",
                &dns
            )
            .as_deref(),
            Some("tempfail: 450 4.1.8 <a@slow.test>: Sender address rejected: Domain not found")
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
