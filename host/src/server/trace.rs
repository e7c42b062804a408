//! Trace and missing headers added at acceptance: `Received:` (RFC 5321
//! §4.4), and `Message-ID:`/`Date:` only where a submission lacks them.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

/// What goes into the `Received:` header.
#[derive(Debug)]
pub struct TraceInfo<'a> {
    /// HELO/EHLO name.
    pub helo: Option<&'a str>,
    /// Verified PTR name.
    pub ptr: Option<&'a str>,
    /// Client IP.
    pub ip: std::net::IpAddr,
    /// Our host name.
    pub hostname: &'a str,
    /// `SMTP`, `ESMTP`, `ESMTPS`, `ESMTPA`, `ESMTPSA`.
    pub protocol: &'a str,
    /// TLS version and cipher, e.g. `TLSv1.3 with cipher TLS_AES_256_GCM_SHA384`.
    pub tls: Option<&'a str>,
    /// Queue ID.
    pub id: &'a str,
    /// The recipient, only when there is exactly one.
    pub single_rcpt: Option<&'a str>,
    /// The message was sent with SMTPUTF8.
    pub utf8: bool,
}

/// The longest HELO name shown: a domain is at most 255 octets.
const MAX_HELO: usize = 255;

/// The client's HELO name as the header may show it: the name is the
/// client's word, so it is cut to the length of a domain, and outside an
/// SMTPUTF8 message anything but printable ASCII becomes `?`.
fn helo_shown(name: &str, utf8: bool) -> String {
    let mut out: String = name
        .chars()
        .map(|c| match c {
            '!'..='~' => c,
            c if utf8 && !c.is_control() && !c.is_whitespace() => c,
            _ => '?',
        })
        .take(MAX_HELO)
        .collect();
    if name.chars().count() > MAX_HELO {
        out.push_str("...");
    }
    out
}

/// RFC 3848 protocol words, and RFC 6531 §3.7.3's for SMTPUTF8 mail.
fn with_protocol(protocol: &str, utf8: bool) -> String {
    match protocol.strip_prefix("ESMTP") {
        Some(rest) if utf8 => format!("UTF8SMTP{rest}"),
        _ => protocol.to_string(),
    }
}

/// The current date in RFC 5322 form.
pub fn rfc5322_now() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc2822)
        .unwrap_or_else(|_| "Thu, 01 Jan 1970 00:00:00 +0000".into())
}

/// Builds the folded `Received:` header, CRLF-terminated.
pub fn received(t: &TraceInfo<'_>) -> String {
    let ip = match t.ip {
        std::net::IpAddr::V6(v6) => format!("IPv6:{v6}"),
        v4 => v4.to_string(),
    };
    let mut h = format!(
        "Received: from {} ({} [{}])\r\n",
        t.helo.map_or("unknown".into(), |h| helo_shown(h, t.utf8)),
        t.ptr.unwrap_or("unknown"),
        ip
    );
    if let Some(tls) = t.tls {
        h.push_str(&format!("\t(using {tls})\r\n"));
    }
    h.push_str(&format!(
        "\tby {} (Postern) with {} id {}",
        t.hostname,
        with_protocol(t.protocol, t.utf8),
        t.id
    ));
    match t.single_rcpt {
        Some(r) => h.push_str(&format!("\r\n\tfor <{r}>; {}\r\n", rfc5322_now())),
        None => h.push_str(&format!(";\r\n\t{}\r\n", rfc5322_now())),
    }
    h
}

/// The headers to add for a message that lacks `Message-ID:` or `Date:`
/// (whether it has them is found in the scan of the header edits,
/// [`crate::message::edit`]).
pub fn missing_headers(has_id: bool, has_date: bool, id: &str, hostname: &str) -> String {
    let mut out = String::new();
    if !has_id {
        let mut rnd = [0u8; 4];
        let _ = getrandom::fill(&mut rnd);
        out.push_str(&format!(
            "Message-ID: <{id}.{:08x}@{hostname}>\r\n",
            u32::from_le_bytes(rnd)
        ));
    }
    if !has_date {
        out.push_str(&format!("Date: {}\r\n", rfc5322_now()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_what_is_missing() {
        let added = missing_headers(false, false, "ABC", "mx.test");
        assert!(added.starts_with("Message-ID: <ABC."));
        assert!(added.contains("@mx.test>\r\nDate: "));
        assert_eq!(missing_headers(true, true, "ABC", "mx.test"), "");
        assert!(missing_headers(true, false, "ABC", "mx.test").starts_with("Date: "));
    }

    #[test]
    fn received_header_shape() {
        let h = received(&TraceInfo {
            helo: Some("client.test"),
            ptr: None,
            ip: "127.0.0.1".parse().unwrap(),
            hostname: "mx.example.test",
            protocol: "ESMTP",
            tls: None,
            id: "0123",
            single_rcpt: Some("alice@example.test"),
            utf8: false,
        });
        assert!(h.starts_with("Received: from client.test (unknown [127.0.0.1])\r\n\tby mx.example.test (Postern) with ESMTP id 0123\r\n\tfor <alice@example.test>; "));
        assert!(h.ends_with("\r\n"));
    }

    #[test]
    fn received_shows_a_helo_name_that_fits_the_message() {
        let long = "x".repeat(2000);
        fn t<'a>(helo: &'a str, protocol: &'a str, utf8: bool) -> TraceInfo<'a> {
            TraceInfo {
                helo: Some(helo),
                ptr: None,
                ip: "127.0.0.1".parse().unwrap(),
                hostname: "mx.example.test",
                protocol,
                tls: None,
                id: "0123",
                single_rcpt: None,
                utf8,
            }
        }
        let h = received(&t(&long, "ESMTP", false));
        assert!(h.lines().all(|l| l.len() <= 998), "{}", h.len());
        assert!(h.contains(&format!("from {}... (", "x".repeat(255))));
        assert!(received(&t("bücher.test", "ESMTP", false)).contains("from b?cher.test ("));
        let u = received(&t("bücher.test", "ESMTPSA", true));
        assert!(
            u.contains("from bücher.test (") && u.contains(" with UTF8SMTPSA id "),
            "{u}"
        );
    }
}
