//! The pieces of policyd-weight's checks that are Perl idioms: its number
//! rounding, its name patterns, and its string comparisons of names.

use regex_lite::Regex;
use std::net::IpAddr;
use std::sync::LazyLock;

/// `%.Ng` of C's printf: `x` to `digits` significant digits.
fn sig(x: f64, digits: usize) -> f64 {
    format!("{:.*e}", digits.max(1) - 1, x).parse().unwrap_or(x)
}

/// A number as Perl prints it (`%.15g`): 6.449999999999999 is 6.45.
pub fn perl(x: f64) -> f64 {
    sig(x, 15)
}

/// `myrnd`: `%.(n+3)g` where n is the position of the dot in Perl's text
/// of the number (one less for a negative one): 3 decimals above 1.
pub fn myrnd(x: f64) -> f64 {
    let x = perl(x);
    let text = x.to_string();
    match text.find('.') {
        Some(n) => sig(x, n - usize::from(text.starts_with('-')) + 3),
        None => x,
    }
}

pub static PRIVATE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"( 127\.| 192\.168\.| 10\.| 172\.(?:1[6-9]|2\d|3[01])\.)").expect("regex")
});
pub static MAILISH: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(mx|smtp|mail|dedicated|(\b|[^n])stat).*?\..*?\.").expect("regex")
});
pub static DIALUP: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(\.dip|cable|ppp|dial|dsl|dyn|client|rev.*?(ip|home)).*?\..*?\.")
        .expect("regex")
});
pub static IPISH: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)[a-z.\-_]+\d{1,3}[-._]\d{1,3}[-._]\d{1,3}[-._]\d{1,3}").expect("regex")
});
pub static NUMERIC: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[\d|\[][\d.]+[\d|\]]$").expect("regex"));
pub static RANDOM: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)([bcdfgjklmnpqrtvwxz]{5,}.*@|[aeiou]{4,}.*@)").expect("regex")
});

/// Address text as policyd-weight compares it (IPv6 fully expanded).
pub fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => v6
            .segments()
            .iter()
            .map(|s| format!("{s:04x}"))
            .collect::<Vec<_>>()
            .join(":"),
    }
}

/// Strips the TLD (and a two-letter SLD such as `.co.uk`) as
/// policyd-weight's FROM/HELO comparison does; `keep_last` keeps only the
/// label before it (the sender side).
pub fn strip_tld(s: &str, keep_last: bool) -> String {
    static CC: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(?i)\.[a-z]{2}\.[a-z]{2}$").expect("regex"));
    static GEN: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(?i)\.(com|org|net)\.[a-z]{2}$").expect("regex"));
    static TLD: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(?i)\.[a-z]{2,5}$").expect("regex"));
    for re in [&*CC, &*GEN, &*TLD] {
        if re.is_match(s) {
            let cut = re.replace(s, "").into_owned();
            return if keep_last {
                cut.rsplit('.').next().unwrap_or("").to_string()
            } else {
                cut
            };
        }
    }
    s.to_string()
}

/// policyd-weight's REV_IP_EQ_HELO_DOMAIN test: the second-level label of
/// one name is a label of the other (compared on reversed strings, as it
/// does).
pub fn helo_domain_matches(rev: &str, helo: &str) -> bool {
    fn second_label_reversed(s: &str) -> Option<String> {
        let r: String = s.chars().rev().collect();
        // Perl's s/.*?\.([^.]+).*/$1/ leaves a name without a dot alone.
        Some(match r.split_once('.') {
            Some((_, rest)) => rest.split('.').next().unwrap_or("").to_string(),
            None => r,
        })
    }
    fn has_label(hay: &str, label: &str) -> bool {
        let hay = hay.to_ascii_lowercase();
        let label = label.to_ascii_lowercase();
        hay.ends_with(&format!(".{label}")) || hay.contains(&format!(".{label}."))
    }
    let rrev: String = rev.chars().rev().collect();
    let rhelo: String = helo.chars().rev().collect();
    if let Some(l) = second_label_reversed(helo)
        && has_label(&rrev, &l)
    {
        return true;
    }
    if let Some(l) = second_label_reversed(rev)
        && has_label(&rhelo, &l)
    {
        return true;
    }
    false
}

/// The addresses and MX names policyd-weight collects as text while it
/// looks the sender domain and HELO name up, and searches with `index`.
#[derive(Debug, Default)]
pub struct Seen {
    /// `$addresses`: the HELO, then every address seen.
    pub addresses: String,
    /// `$from_addresses`: the sender domain's MX and A addresses.
    pub from_addresses: String,
    /// `$mx_names`: the sender domain's MX names, as `.name `.
    pub mx_names: String,
}

impl Seen {
    /// Starts with the HELO name, as policyd-weight does.
    pub fn new(helo: &str) -> Seen {
        Seen {
            addresses: format!(" {helo}"),
            ..Seen::default()
        }
    }

    /// Records the addresses of an MX `exchange` or of the name itself, up
    /// to the first that is the client's `ip` (true then).
    pub fn add(
        &mut self,
        addrs: &[IpAddr],
        from_side: bool,
        exchange: Option<&str>,
        ip: &str,
    ) -> bool {
        for a in addrs {
            let a = ip_text(*a);
            if from_side {
                if let Some(x) = exchange {
                    self.mx_names.push_str(&format!(".{x} "));
                }
                self.from_addresses.push_str(&format!(" {a}"));
            }
            self.addresses.push_str(&format!(" {a}"));
            if a == ip {
                return true;
            }
        }
        false
    }

    /// The sender domain's addresses are none, or private ones.
    pub fn bogus(&self) -> bool {
        !self.from_addresses.bytes().any(|b| b.is_ascii_digit())
            || PRIVATE.is_match(&self.from_addresses)
    }
}
