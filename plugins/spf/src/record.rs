//! SPF records (RFC 7208 §4.6, §5, §6) and macros (§7).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A directive's qualifier: the result when its mechanism matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qualifier {
    /// `+` (the default).
    Pass,
    /// `-`.
    Fail,
    /// `~`.
    SoftFail,
    /// `?`.
    Neutral,
}

/// A mechanism with its (unexpanded) domain-spec and CIDR lengths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    /// `all`.
    All,
    /// `include:domain`.
    Include(String),
    /// `a[:domain][/v4][//v6]`.
    A(Option<String>, u8, u8),
    /// `mx[:domain][/v4][//v6]`.
    Mx(Option<String>, u8, u8),
    /// `ptr[:domain]`.
    Ptr(Option<String>),
    /// `ip4:net[/len]`.
    Ip4(Ipv4Addr, u8),
    /// `ip6:net[/len]`.
    Ip6(Ipv6Addr, u8),
    /// `exists:domain`.
    Exists(String),
}

impl Mechanism {
    /// True for the mechanisms that count against the 10-lookup limit.
    pub fn looks_up(&self) -> bool {
        matches!(
            self,
            Mechanism::Include(_)
                | Mechanism::A(..)
                | Mechanism::Mx(..)
                | Mechanism::Ptr(_)
                | Mechanism::Exists(_)
        )
    }
}

/// A parsed SPF record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// The directives in order.
    pub directives: Vec<(Qualifier, Mechanism)>,
    /// `redirect=domain`.
    pub redirect: Option<String>,
    /// `exp=domain`.
    pub exp: Option<String>,
}

/// True if a TXT string is an SPF version 1 record.
pub fn is_spf(txt: &str) -> bool {
    let t = txt.as_bytes();
    t.len() >= 6 && t[..6].eq_ignore_ascii_case(b"v=spf1") && (t.len() == 6 || t[6] == b' ')
}

/// Parses a record; the error says which term is wrong (a permerror).
pub fn parse(txt: &str) -> Result<Record, String> {
    if !is_spf(txt) {
        return Err("not an SPF record".into());
    }
    let mut rec = Record::default();
    for term in txt[6..].split(' ').filter(|t| !t.is_empty()) {
        // A modifier is name=value where name is alpha *(alnum / - / _ / .).
        if let Some((name, value)) = term.split_once('=')
            && !name.is_empty()
            && name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            check_macro_string(value).map_err(|e| format!("{term}: {e}"))?;
            match name.to_ascii_lowercase().as_str() {
                "redirect" if rec.redirect.replace(value.to_string()).is_some() => {
                    return Err("more than one redirect modifier".into());
                }
                "exp" if rec.exp.replace(value.to_string()).is_some() => {
                    return Err("more than one exp modifier".into());
                }
                _ => {} // unknown modifiers are ignored (§6)
            }
            continue;
        }
        let (q, rest) = match term.as_bytes()[0] {
            b'+' => (Qualifier::Pass, &term[1..]),
            b'-' => (Qualifier::Fail, &term[1..]),
            b'~' => (Qualifier::SoftFail, &term[1..]),
            b'?' => (Qualifier::Neutral, &term[1..]),
            _ => (Qualifier::Pass, term),
        };
        let m = mechanism(rest).map_err(|e| format!("{term}: {e}"))?;
        rec.directives.push((q, m));
    }
    Ok(rec)
}

fn mechanism(t: &str) -> Result<Mechanism, String> {
    let end = t.find([':', '/']).unwrap_or(t.len());
    let (name, rest) = t.split_at(end);
    let arg = |rest: &str| -> Result<String, String> {
        let v = rest.strip_prefix(':').ok_or("needs a domain")?;
        check_domain_spec(v)?;
        Ok(v.to_string())
    };
    match name.to_ascii_lowercase().as_str() {
        "all" if rest.is_empty() => Ok(Mechanism::All),
        "include" => Ok(Mechanism::Include(arg(rest)?)),
        "exists" => Ok(Mechanism::Exists(arg(rest)?)),
        "ptr" => Ok(Mechanism::Ptr(if rest.is_empty() {
            None
        } else {
            Some(arg(rest)?)
        })),
        "a" | "mx" => {
            let (domain, cidr) = split_dual_cidr(rest)?;
            let domain = match domain {
                "" => None,
                d => Some(arg(d)?),
            };
            let (v4, v6) = dual_cidr(cidr)?;
            Ok(if name.eq_ignore_ascii_case("a") {
                Mechanism::A(domain, v4, v6)
            } else {
                Mechanism::Mx(domain, v4, v6)
            })
        }
        "ip4" => {
            let v = rest.strip_prefix(':').ok_or("needs an address")?;
            let (ip, len) = v.split_once('/').map_or((v, None), |(a, l)| (a, Some(l)));
            let ip: Ipv4Addr = ip.parse().map_err(|_| "bad IPv4 address")?;
            Ok(Mechanism::Ip4(ip, cidr_len(len, 32)?))
        }
        "ip6" => {
            let v = rest.strip_prefix(':').ok_or("needs an address")?;
            let (ip, len) = v.split_once('/').map_or((v, None), |(a, l)| (a, Some(l)));
            let ip: Ipv6Addr = ip.parse().map_err(|_| "bad IPv6 address")?;
            Ok(Mechanism::Ip6(ip, cidr_len(len, 128)?))
        }
        _ => Err("unknown mechanism".into()),
    }
}

/// Splits `:domain/24//64` into `:domain` and `/24//64`. The domain may
/// itself hold `/` only inside macros, which SPF forbids: the first `/`
/// that starts a CIDR ends it.
fn split_dual_cidr(rest: &str) -> Result<(&str, &str), String> {
    match rest.find('/') {
        Some(i) => Ok(rest.split_at(i)),
        None => Ok((rest, "")),
    }
}

fn dual_cidr(c: &str) -> Result<(u8, u8), String> {
    if c.is_empty() {
        return Ok((32, 128));
    }
    if let Some(v6) = c.strip_prefix("//") {
        return Ok((32, cidr_len(Some(v6), 128)?));
    }
    let c = c.strip_prefix('/').ok_or("bad CIDR length")?;
    match c.split_once("//") {
        Some((v4, v6)) => Ok((cidr_len(Some(v4), 32)?, cidr_len(Some(v6), 128)?)),
        None => Ok((cidr_len(Some(c), 32)?, 128)),
    }
}

fn cidr_len(len: Option<&str>, max: u8) -> Result<u8, String> {
    let Some(l) = len else { return Ok(max) };
    if l.is_empty()
        || l.len() > 3
        || !l.bytes().all(|b| b.is_ascii_digit())
        || (l.len() > 1 && l.starts_with('0'))
    {
        return Err(format!("bad CIDR length {l:?}"));
    }
    let n: u8 = l.parse().map_err(|_| format!("bad CIDR length {l:?}"))?;
    if n > max {
        return Err(format!("CIDR length {n} over {max}"));
    }
    Ok(n)
}

/// A domain-spec: a macro-string that ends in a domain (§7.1).
fn check_domain_spec(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err("empty domain".into());
    }
    check_macro_string(v)?;
    // Without macros it must be a name with at least one dot-less label;
    // a trailing macro expansion is checked after expansion.
    if !v.contains('%') && (v.starts_with('.') || v.contains("..")) {
        return Err(format!("bad domain {v:?}"));
    }
    Ok(())
}

/// Checks the macro syntax without expanding.
fn check_macro_string(v: &str) -> Result<(), String> {
    Expander::default().expand(v, false).map(|_| ())
}

/// What macros expand to (§7.3).
#[derive(Debug, Clone, Default)]
pub struct Expander {
    /// `<sender>`: `local@domain` (postmaster@helo for the null sender).
    pub sender: String,
    /// The current `<domain>`.
    pub domain: String,
    /// The client's address.
    pub ip: Option<IpAddr>,
    /// The HELO/EHLO name.
    pub helo: String,
    /// The receiving host's name (`%{r}`, exp only).
    pub receiver: String,
}

impl Expander {
    /// Expands `spec`; `exp` allows the exp-only letters `c`, `r`, `t`.
    pub fn expand(&self, spec: &str, exp: bool) -> Result<String, String> {
        let mut out = String::new();
        let mut chars = spec.char_indices().peekable();
        while let Some((_, c)) = chars.next() {
            if c != '%' {
                if !(' '..='~').contains(&c) {
                    return Err(format!("bad character {c:?}"));
                }
                out.push(c);
                continue;
            }
            match chars.next().map(|(_, c)| c) {
                Some('%') => out.push('%'),
                Some('_') => out.push(' '),
                Some('-') => out.push_str("%20"),
                Some('{') => {
                    let mut body = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '}')) => break,
                            Some((_, c)) => body.push(c),
                            None => return Err("unterminated macro".into()),
                        }
                    }
                    out.push_str(&self.macro_body(&body, exp)?);
                }
                _ => return Err("bad % escape".into()),
            }
        }
        Ok(out)
    }

    fn macro_body(&self, body: &str, exp: bool) -> Result<String, String> {
        let mut it = body.chars();
        let letter = it.next().ok_or("empty macro")?;
        let rest: String = it.collect();
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let mut tail = &rest[digits.len()..];
        let reverse = tail.starts_with(['r', 'R']);
        if reverse {
            tail = &tail[1..];
        }
        if let Some(bad) = tail.chars().find(|c| !".-+,/_=".contains(*c)) {
            return Err(format!("bad macro delimiter {bad:?}"));
        }
        let keep: Option<usize> = match digits.as_str() {
            "" => None,
            d => match d.parse::<usize>() {
                Ok(0) | Err(_) => return Err("bad macro digit count".into()),
                Ok(n) => Some(n),
            },
        };
        let value = match letter.to_ascii_lowercase() {
            's' => self.sender.clone(),
            'l' => self
                .sender
                .rsplit_once('@')
                .map(|(l, _)| l.to_string())
                .unwrap_or_default(),
            'o' => self
                .sender
                .rsplit_once('@')
                .map(|(_, d)| d.to_string())
                .unwrap_or_default(),
            'd' => self.domain.clone(),
            'i' => match self.ip {
                Some(IpAddr::V4(v4)) => v4.to_string(),
                Some(IpAddr::V6(v6)) => nibbles(&v6),
                None => String::new(),
            },
            // %{p} SHOULD NOT be used (§7.3); "unknown" spares its lookups.
            'p' => "unknown".into(),
            'v' => match self.ip {
                Some(IpAddr::V6(_)) => "ip6".into(),
                _ => "in-addr".into(),
            },
            'h' => self.helo.clone(),
            'c' if exp => self.ip.map(|i| i.to_string()).unwrap_or_default(),
            'r' if exp => self.receiver.clone(),
            't' if exp => "0".into(),
            _ => return Err(format!("bad macro letter {letter:?}")),
        };
        let delims: Vec<char> = if tail.is_empty() {
            vec!['.']
        } else {
            tail.chars().collect()
        };
        let mut parts: Vec<&str> = value.split(|c| delims.contains(&c)).collect();
        if reverse {
            parts.reverse();
        }
        if let Some(n) = keep
            && parts.len() > n
        {
            parts.drain(..parts.len() - n);
        }
        let joined = parts.join(".");
        Ok(if letter.is_ascii_uppercase() {
            url_escape(&joined)
        } else {
            joined
        })
    }
}

fn nibbles(v6: &Ipv6Addr) -> String {
    let mut s = String::with_capacity(63);
    for b in v6.octets() {
        for n in [b >> 4, b & 15] {
            if !s.is_empty() {
                s.push('.');
            }
            s.push(char::from_digit(u32::from(n), 16).unwrap_or('0'));
        }
    }
    s
}

fn url_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Cuts an expanded domain to 253 octets by dropping leftmost labels
/// (§7.3) and the trailing dot.
pub fn fit_domain(d: &str) -> String {
    let mut d = d.trim_end_matches('.');
    while d.len() > 253 {
        match d.split_once('.') {
            Some((_, rest)) => d = rest,
            None => break,
        }
    }
    d.to_ascii_lowercase()
}

#[cfg(test)]
#[path = "record_tests.rs"]
mod tests;
