//! Delivery status notifications (RFC 3464): the report Postern sends
//! back to a sender, composed with `mail-builder` (MIME structure,
//! boundaries and header encoding from a crate made for it).
//!
//! `multipart/report; report-type=delivery-status` with a human-readable
//! part, a `message/delivery-status` part (per-message fields, then one
//! block per recipient) and the original message's header section
//! (`text/rfc822-headers`), or the whole message (`message/rfc822`) when
//! the sender asked `RET=FULL`.

use mail_builder::MessageBuilder;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::date::Date;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::MimePart;

use super::Ret;

/// What happened to one recipient, as the report states it.
#[derive(Debug, Clone)]
pub struct RecipientReport {
    /// `Final-Recipient`: the address delivery was attempted to.
    pub final_recipient: String,
    /// `Original-Recipient`: ORCPT as given (`rfc822;…`), if any.
    pub original_recipient: Option<String>,
    /// `Action`: `failed`, `delayed`, `delivered`, `relayed`, `expanded`.
    pub action: &'static str,
    /// `Status`: the enhanced status code.
    pub status: String,
    /// `Remote-MTA` (`dns;host`), when a remote server answered.
    pub remote_mta: Option<String>,
    /// `Diagnostic-Code` text (`smtp;…`).
    pub diagnostic: String,
    /// When it was last tried, seconds since the epoch.
    pub last_attempt: u64,
}

/// The message a report is about.
pub struct Original<'a> {
    /// Its queue ID.
    pub id: &'a str,
    /// Its envelope sender (the report goes there).
    pub sender: &'a str,
    /// When it arrived, seconds since the epoch.
    pub arrival: u64,
    /// `ENVID` as given at MAIL.
    pub envid: Option<&'a str>,
    /// `RET` as given at MAIL.
    pub ret: Option<Ret>,
    /// The message as delivered (trace fields, then content).
    pub parts: [&'a [u8]; 2],
}

/// Composes the report from `MAILER-DAEMON@hostname` to the original
/// sender. `report_id` names it (`Message-ID`).
pub fn compose(
    hostname: &str,
    report_id: &str,
    original: &Original<'_>,
    recipients: &[RecipientReport],
) -> Vec<u8> {
    let failed = recipients.iter().any(|r| r.action == "failed");
    let subject = if failed {
        "Undelivered Mail Returned to Sender"
    } else if recipients.iter().all(|r| r.action == "delayed") {
        "Delayed Mail (still being retried)"
    } else {
        "Successful Mail Delivery Report"
    };
    let human = human_part(hostname, original, recipients);
    let status = status_part(hostname, original, recipients);
    let message: Vec<u8> = original.parts.concat();
    let returned = match original.ret {
        Some(Ret::Full) => MimePart::new("message/rfc822", message).transfer_encoding("8bit"),
        _ => {
            let end = header_end(&message);
            let head = message.get(..end).unwrap_or(&message).to_vec();
            MimePart::new("text/rfc822-headers", head).transfer_encoding("8bit")
        }
    };
    let report = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        vec![
            MimePart::new(
                ContentType::new("text/plain").attribute("charset", "utf-8"),
                human,
            ),
            MimePart::new("message/delivery-status", status.into_bytes()).transfer_encoding("8bit"),
            returned,
        ],
    );
    MessageBuilder::new()
        .from((
            "Mail Delivery System".to_string(),
            format!("MAILER-DAEMON@{hostname}"),
        ))
        .to(original.sender.to_string())
        .subject(subject)
        .date(Date::now())
        .message_id(format!("{report_id}@{hostname}"))
        .header("Auto-Submitted", Raw::new("auto-replied"))
        .body(report)
        .write_to_vec()
        .unwrap_or_default()
}

fn human_part(hostname: &str, original: &Original<'_>, recipients: &[RecipientReport]) -> String {
    let mut text = format!(
        "This is the mail system at host {hostname}.\r\n\r\n\
         This is a report on your message {} to the recipients below.\r\n\r\n",
        original.id
    );
    for r in recipients {
        let what = match r.action {
            "failed" => "could not be delivered; it will not be tried again",
            "delayed" => "has not been delivered yet; it is still being tried",
            "delivered" => "was delivered",
            "relayed" => "was handed to a system that sends no report",
            _ => "was expanded",
        };
        text.push_str(&format!(
            "<{}>: {what}: {}\r\n",
            r.final_recipient, r.diagnostic
        ));
    }
    text
}

fn status_part(hostname: &str, original: &Original<'_>, recipients: &[RecipientReport]) -> String {
    let mut text = String::new();
    if let Some(envid) = original.envid {
        text.push_str(&format!("Original-Envelope-Id: {envid}\r\n"));
    }
    text.push_str(&format!(
        "Reporting-MTA: dns; {hostname}\r\nX-Postern-Queue-ID: {}\r\nArrival-Date: {}\r\n",
        original.id,
        Date::new(original.arrival as i64).to_rfc822()
    ));
    for r in recipients {
        text.push_str("\r\n");
        if let Some(orcpt) = &r.original_recipient {
            text.push_str(&format!("Original-Recipient: {}\r\n", typed(orcpt)));
        }
        text.push_str(&format!(
            "Final-Recipient: rfc822; {}\r\nAction: {}\r\nStatus: {}\r\n",
            r.final_recipient, r.action, r.status
        ));
        if let Some(mta) = &r.remote_mta {
            text.push_str(&format!("Remote-MTA: dns; {mta}\r\n"));
        }
        text.push_str(&format!(
            "Diagnostic-Code: smtp; {}\r\nLast-Attempt-Date: {}\r\n",
            one_line(&r.diagnostic),
            Date::new(r.last_attempt as i64).to_rfc822()
        ));
    }
    text
}

/// `addr-type;address` as a field value: `rfc822; address`.
fn typed(orcpt: &str) -> String {
    match orcpt.split_once(';') {
        Some((kind, addr)) => format!("{kind}; {addr}"),
        None => format!("rfc822; {orcpt}"),
    }
}

/// A diagnostic on one line (replies may be multi-line).
fn one_line(text: &str) -> String {
    text.split(['\r', '\n'])
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where the header section ends (after its empty line), or the whole.
fn header_end(message: &[u8]) -> usize {
    memchr::memmem::find(message, b"\r\n\r\n").map_or(message.len(), |at| at + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(ret: Option<Ret>) -> String {
        let original = Original {
            id: "00000000000000B1",
            sender: "sender@example.org",
            arrival: 1_800_000_000,
            envid: Some("E-1"),
            ret,
            parts: [
                b"Received: from x\r\n",
                b"Subject: the original\r\n\r\nsecret body\r\n",
            ],
        };
        let rcpt = RecipientReport {
            final_recipient: "alice@example.test".into(),
            original_recipient: Some("rfc822;info@example.test".into()),
            action: "failed",
            status: "5.4.6".into(),
            remote_mta: None,
            diagnostic: "mail forwarding loop for alice@example.test".into(),
            last_attempt: 1_800_000_060,
        };
        String::from_utf8(compose("mx.example.test", "B1.report", &original, &[rcpt])).unwrap()
    }

    #[test]
    fn a_failure_report_has_the_three_parts_of_rfc_3464() {
        let text = report(None);
        assert!(text.contains("multipart/report"), "{text}");
        assert!(
            text.contains("report-type=\"delivery-status\"")
                || text.contains("report-type=delivery-status")
        );
        assert!(
            text.contains("From: \"Mail Delivery System\" <MAILER-DAEMON@mx.example.test>"),
            "{text}"
        );
        assert!(text.contains("Subject: Undelivered Mail Returned to Sender"));
        assert!(text.contains("Auto-Submitted: auto-replied"));
        for field in [
            "Original-Envelope-Id: E-1",
            "Reporting-MTA: dns; mx.example.test",
            "Arrival-Date: ",
            "Original-Recipient: rfc822; info@example.test",
            "Final-Recipient: rfc822; alice@example.test",
            "Action: failed",
            "Status: 5.4.6",
            "Diagnostic-Code: smtp; mail forwarding loop for alice@example.test",
            "Last-Attempt-Date: ",
        ] {
            assert!(text.contains(field), "{field} missing:\n{text}");
        }
        assert!(text.contains("Content-Type: message/delivery-status"));
        // RET=HDRS (the default): the header section, not the body.
        assert!(text.contains("text/rfc822-headers") && text.contains("Subject: the original"));
        assert!(!text.contains("secret body"));
    }

    #[test]
    fn ret_full_returns_the_whole_message() {
        let text = report(Some(Ret::Full));
        assert!(text.contains("Content-Type: message/rfc822"));
        assert!(text.contains("secret body"));
    }
}
