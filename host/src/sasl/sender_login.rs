//! Which envelope senders an authenticated identity may use (Postfix's
//! `reject_sender_login_mismatch` with `smtpd_sender_login_maps`): its own
//! address and its `+tag` forms, the same local part in every local domain
//! for an identity without a domain (a system account), and what
//! `[sender_logins]` grants it.
//!
//! An identity is compared as the backend returned it, domain included:
//! `alice@a.test` and `alice@b.test` are two identities, and neither owns
//! the other's addresses. Case is folded on each part on its own; the tag
//! is split off the local part as sent and only then folded, so no offset
//! measured on one string is ever used on another (case mapping changes
//! UTF-8 lengths: U+212A KELVIN SIGN folds from 3 bytes to 1).

use std::collections::BTreeMap;

/// The case-folded form compared everywhere here.
fn fold(s: &str) -> String {
    s.to_lowercase()
}

/// Whether `identity` may send as `local@domain` (`local` as sent, tag
/// and all). `delimiter` is the `+tag` separator (none: tags are not
/// split), `logins` is `[sender_logins]` (identity → addresses or
/// `@domain`), `is_local_domain` tells the domains delivered here.
pub fn owns(
    identity: &str,
    local: &str,
    domain: &str,
    delimiter: Option<char>,
    logins: &BTreeMap<String, Vec<String>>,
    is_local_domain: impl Fn(&str) -> bool,
) -> bool {
    let identity = fold(identity);
    let domain = fold(domain);
    // The address as sent, and without its tag.
    let mut locals = vec![fold(local)];
    if let Some((base, _tag)) = delimiter.and_then(|d| local.split_once(d)) {
        locals.push(fold(base));
    }
    let addresses: Vec<String> = locals.iter().map(|l| format!("{l}@{domain}")).collect();
    let mine = if identity.contains('@') {
        addresses.contains(&identity)
    } else {
        locals.contains(&identity) && is_local_domain(&domain)
    };
    if mine {
        return true;
    }
    let at_domain = format!("@{domain}");
    logins
        .iter()
        .filter(|(id, _)| fold(id) == identity)
        .flat_map(|(_, allowed)| allowed)
        .map(|a| fold(a))
        .any(|a| a == at_domain || addresses.contains(&a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn logins(entries: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    fn local(d: &str) -> bool {
        d == "a.test" || d == "b.test"
    }

    fn may(identity: &str, sender: &str, logins: &BTreeMap<String, Vec<String>>) -> bool {
        let (l, d) = sender.rsplit_once('@').expect("address");
        owns(identity, l, d, Some('+'), logins, local)
    }

    #[test]
    fn an_identity_with_a_domain_owns_that_address_only() {
        let none = BTreeMap::new();
        assert!(may("alice@a.test", "alice@a.test", &none));
        assert!(may("Alice@A.test", "aLICE+lists@a.TEST", &none));
        assert!(!may("alice@a.test", "alice@b.test", &none));
        assert!(!may("alice@b.test", "alice@a.test", &none));
        assert!(!may("alice@a.test", "alicia@a.test", &none));
        assert!(!may("alice@a.test", "bob+alice@a.test", &none));
    }

    #[test]
    fn a_bare_identity_owns_its_name_in_local_domains_only() {
        let none = BTreeMap::new();
        assert!(may("alice", "alice@a.test", &none));
        assert!(may("alice", "alice+x@b.test", &none));
        assert!(!may("alice", "alice@elsewhere.test", &none));
    }

    #[test]
    fn sender_logins_are_keyed_by_the_whole_identity() {
        let map = logins(&[
            ("alice@a.test", &["@shared.test", "team@b.test"]),
            ("carol", &["@a.test"]),
        ]);
        assert!(may("alice@a.test", "anyone@shared.test", &map));
        assert!(may("ALICE@a.test", "team+x@b.test", &map));
        // The same login name in another domain is another customer.
        assert!(!may("alice@b.test", "anyone@shared.test", &map));
        assert!(!may("alice", "anyone@shared.test", &map));
        assert!(may("carol", "bob@a.test", &map));
        assert!(!may("carol@b.test", "bob@a.test", &map));
    }

    #[test]
    fn tags_that_change_length_when_folded_split_where_they_were_sent() {
        let none = BTreeMap::new();
        // KELVIN SIGN (3 bytes) folds to 'k' (1 byte); U+0130 grows.
        assert!(may("alice@a.test", "alice+\u{212A}@a.test", &none));
        assert!(may("alice@a.test", "alice+\u{130}\u{130}x@a.test", &none));
        assert!(may("\u{212A}im@a.test", "\u{212A}IM+tag@a.test", &none));
        assert!(!may("alice@a.test", "\u{212A}\u{212A}+alice@a.test", &none));
        assert!(may(
            "\u{130}\u{130}@a.test",
            "\u{130}\u{130}+\u{212A}@a.test",
            &none
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any text, folded or not: no panic, and the tag never decides.
        #[test]
        fn any_address_is_judged_without_panic(
            base in "[a-z\u{212A}\u{130}\u{3A3}\u{1E9E}.+]{0,6}",
            tag in "[A-Za-z\u{212A}\u{130}\u{3A3}\u{DF}+]{0,6}",
            domain in "[a-z\u{212A}\u{130}.]{0,8}",
            identity in "[a-z\u{212A}\u{130}@.+]{0,10}",
        ) {
            let map = logins(&[(identity.as_str(), &["@b.test"])]);
            let tagged = format!("{base}+{tag}");
            let with_tag = owns(&identity, &tagged, &domain, Some('+'), &map, local);
            let plain = owns(&identity, &base, &domain, Some('+'), &map, local);
            if !base.contains('+') {
                // The tagged form is owned whenever the base is.
                prop_assert!(!plain || with_tag);
            }
        }
    }
}
