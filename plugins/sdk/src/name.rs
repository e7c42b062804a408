//! Host name and address syntax, as Postfix judges it (`valid_hostname`,
//! `valid_hostaddr`, the FQDN test of `reject_non_fqdn_*`), so that the
//! restriction plugins accept and refuse exactly what Postfix does.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest host name (Postfix `VALID_HOSTNAME_LEN`).
const MAX_NAME: usize = 255;
/// Longest label (Postfix `VALID_LABEL_LEN`).
const MAX_LABEL: usize = 63;

/// True if `name` is a valid host name in Postfix's sense: labels of
/// letters, digits, `_` and inner `-`, at most 63 octets each and 255 in
/// all, separated by single dots, not all-numeric (a dotted quad is an
/// address, not a name). One trailing dot is allowed.
pub fn valid_hostname(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_NAME {
        return false;
    }
    let mut numeric = true;
    for label in name.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL {
            return false;
        }
        if label.starts_with('-') || label.ends_with('-') {
            return false;
        }
        for c in label.bytes() {
            match c {
                b'0'..=b'9' => {}
                b'a'..=b'z' | b'A'..=b'Z' | b'_' | b'-' => numeric = false,
                _ => return false,
            }
        }
    }
    !numeric
}

/// True if `addr` is an IPv4 address in dotted-quad form or an IPv6
/// address (without brackets or `IPv6:` prefix).
pub fn valid_hostaddr(addr: &str) -> bool {
    addr.parse::<Ipv4Addr>().is_ok() || (addr.contains(':') && addr.parse::<Ipv6Addr>().is_ok())
}

/// True if `name` is an address literal: `[...]` (RFC 5321 4.1.3).
pub fn is_address_literal(name: &str) -> bool {
    name.len() >= 2 && name.starts_with('[') && name.ends_with(']')
}

/// True if an address literal holds a valid address: `[192.0.2.1]` or
/// `[IPv6:2001:db8::1]` (the prefix is case-insensitive).
pub fn valid_address_literal(literal: &str) -> bool {
    if !is_address_literal(literal) {
        return false;
    }
    let inner = &literal[1..literal.len() - 1];
    match inner.get(..5) {
        Some(p) if p.eq_ignore_ascii_case("ipv6:") => inner[5..].parse::<Ipv6Addr>().is_ok(),
        _ => inner.parse::<Ipv4Addr>().is_ok(),
    }
}

/// True if `name` is a fully-qualified host name: valid, with at least
/// one dot besides a trailing one (Postfix `reject_non_fqdn_*`).
pub fn is_fqdn(name: &str) -> bool {
    valid_hostname(name) && name.trim_end_matches('.').contains('.')
}

/// The domain of an address as Postfix's FQDN checks see it: after the
/// last `@`, or the whole address when there is none.
pub fn address_domain(address: &str) -> &str {
    address.rsplit_once('@').map_or(address, |(_, d)| d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        for ok in ["mail.good.test", "foo.", "a_b.example", "x-1.test", "foo"] {
            assert!(valid_hostname(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "a..b",
            "-a.test",
            "a-.test",
            "a b.test",
            "1.2.3.4",
            "ex@mple.test",
            &"a".repeat(64),
        ] {
            assert!(!valid_hostname(bad), "{bad}");
        }
    }

    #[test]
    fn addresses_and_literals() {
        assert!(valid_hostaddr("192.0.2.1"));
        assert!(valid_hostaddr("2001:db8::1"));
        assert!(!valid_hostaddr("192.0.2"));
        assert!(valid_address_literal("[192.0.2.1]"));
        assert!(valid_address_literal("[IPv6:::1]"));
        assert!(valid_address_literal("[ipv6:::]"));
        assert!(!valid_address_literal("[::]"));
        assert!(!valid_address_literal("[ipv6::::]"));
        assert!(!valid_address_literal("[example.test]"));
    }

    #[test]
    fn fqdn() {
        assert!(is_fqdn("foo.bar"));
        assert!(is_fqdn("foo.bar."));
        assert!(!is_fqdn("foo"));
        assert!(!is_fqdn("foo."));
        assert!(!is_fqdn("1.2.3.4"));
        assert_eq!(address_domain("a@b.test"), "b.test");
        assert_eq!(address_domain("postmaster"), "postmaster");
    }
}
