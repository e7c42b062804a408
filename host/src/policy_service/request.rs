//! The request: every attribute Postfix's SMTP server sends
//! (SMTPD_POLICY_README, "Protocol description"), from what the chain
//! runner knows of the session, the envelope and the stage. What Postern
//! does not know is sent empty, as Postfix sends what it does not have.

use super::PolicyService;
use super::protocol::Request;
use crate::plugin::Stage;
use crate::plugin::input::{EnvelopeInfo, SessionInfo};

/// What one policy request is about.
#[derive(Debug)]
pub struct Query<'a> {
    /// The stage being judged.
    pub stage: Stage,
    /// Queue ID or session ID, for log lines.
    pub context: &'a str,
    /// The session.
    pub session: &'a SessionInfo,
    /// The envelope so far (empty before MAIL).
    pub envelope: &'a EnvelopeInfo,
    /// The recipient being checked (RCPT).
    pub recipient: Option<&'a str>,
    /// Size of the message content (end of message).
    pub message_size: Option<usize>,
}

/// Postfix's `protocol_state` for a stage.
fn protocol_state(stage: Stage) -> &'static str {
    match stage {
        Stage::Connect => "CONNECT",
        Stage::Helo => "EHLO",
        Stage::Mail => "MAIL",
        Stage::Rcpt => "RCPT",
        Stage::Data => "END-OF-MESSAGE",
    }
}

/// Key size of a TLS cipher suite, from its name (rustls names them
/// `TLS13_AES_256_GCM_SHA384`, `TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256`).
fn keysize(cipher: &str) -> &'static str {
    if cipher.contains("AES_128") {
        "128"
    } else if cipher.contains("AES_256") || cipher.contains("CHACHA20") {
        "256"
    } else {
        ""
    }
}

impl Query<'_> {
    /// The request for `service`.
    pub(super) fn request(&self, service: &PolicyService) -> Request {
        let s = self.session;
        let e = self.envelope;
        let before_mail = matches!(self.stage, Stage::Connect | Stage::Helo);
        let mut r = Request::default();
        r.push("request", "smtpd_access_policy");
        r.push("protocol_state", protocol_state(self.stage));
        r.push("protocol_name", "ESMTP");
        r.push("client_address", &s.client_ip);
        r.push("client_name", s.client_ptr().unwrap_or("unknown"));
        // Postfix's reverse_client_name: the PTR name even when it does
        // not resolve back to the client.
        let reverse = match &s.client_rdns {
            crate::dns::Rdns::Confirmed(n) | crate::dns::Rdns::Unconfirmed(n) => n.as_str(),
            _ => "unknown",
        };
        r.push("reverse_client_name", reverse);
        r.push("client_port", s.client_port.to_string());
        r.push("helo_name", s.helo.as_deref().unwrap_or(""));
        r.push("sender", if before_mail { "" } else { &e.mail_from });
        // At RCPT the recipient being judged; at the end of the message
        // the only recipient, if there is one (as Postfix).
        let recipient = match (self.recipient, self.stage) {
            (Some(rcpt), _) => rcpt,
            (None, Stage::Data) if e.rcpt_to.len() == 1 => &e.rcpt_to[0],
            _ => "",
        };
        r.push("recipient", recipient);
        let count = if self.stage == Stage::Data {
            e.rcpt_to.len()
        } else {
            0
        };
        r.push("recipient_count", count.to_string());
        r.push("queue_id", if before_mail { "" } else { &e.queue_id });
        // One instance per transaction: policyd-weight and others keep
        // per-message state by it.
        let instance = if e.queue_id.is_empty() || before_mail {
            s.id.clone()
        } else {
            format!("{}.{}", s.id, e.queue_id)
        };
        r.push("instance", instance);
        let declared = e
            .mail_params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("SIZE"))
            .and_then(|(_, v)| v.as_deref())
            .and_then(|v| v.parse::<u64>().ok());
        let size = self
            .message_size
            .map(|n| n as u64)
            .or(declared)
            .unwrap_or(0);
        r.push("size", size.to_string());
        r.push("etrn_domain", "");
        r.push("stress", "");
        r.push("sasl_method", "");
        r.push("sasl_username", s.auth_user.as_deref().unwrap_or(""));
        r.push("sasl_sender", "");
        for name in [
            "ccert_subject",
            "ccert_issuer",
            "ccert_fingerprint",
            "ccert_pubkey_fingerprint",
        ] {
            r.push(name, "");
        }
        let (protocol, cipher) = s.tls.clone().unwrap_or_default();
        r.push("encryption_protocol", &protocol);
        r.push("encryption_cipher", &cipher);
        r.push("encryption_keysize", keysize(&cipher));
        let server = service.listeners.get(&s.listener);
        r.push(
            "server_address",
            server.map(|a| a.ip().to_string()).unwrap_or_default(),
        );
        r.push(
            "server_port",
            server.map(|a| a.port().to_string()).unwrap_or_default(),
        );
        r.push("policy_context", &service.policy_context);
        r.push("compatibility_level", "3.6");
        r.push("mail_version", env!("CARGO_PKG_VERSION"));
        r
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::PolicyServiceEntry;

    fn service() -> PolicyService {
        let entry = PolicyServiceEntry {
            policy_context: "mx".into(),
            ..crate::policy_service::test_entry("inet:127.0.0.1:12525", None)
        };
        let listeners = HashMap::from([("mx".to_string(), "127.0.0.1:2525".parse().unwrap())]);
        PolicyService::new(&entry, "p", listeners).unwrap()
    }

    #[test]
    fn a_rcpt_request_carries_every_attribute_postfix_sends() {
        let session = SessionInfo {
            id: "S1".into(),
            listener: "mx".into(),
            client_ip: "198.18.0.25".into(),
            client_port: 40000,
            trusted: false,
            helo: Some("mail.good.test".into()),
            tls: Some(("TLSv1_3".into(), "TLS13_AES_256_GCM_SHA384".into())),
            auth_user: None,
            client_rdns: crate::dns::Rdns::Confirmed("mail.good.test".into()),
        };
        let envelope = EnvelopeInfo {
            queue_id: "Q1".into(),
            mail_from: "alice@good.test".into(),
            mail_params: vec![("SIZE".into(), Some("1234".into()))],
            rcpt_to: vec!["a@example.test".into()],
        };
        let q = Query {
            stage: Stage::Rcpt,
            context: "Q1",
            session: &session,
            envelope: &envelope,
            recipient: Some("bob@example.test"),
            message_size: None,
        };
        let r = q.request(&service());
        for (name, value) in [
            ("request", "smtpd_access_policy"),
            ("protocol_state", "RCPT"),
            ("protocol_name", "ESMTP"),
            ("client_address", "198.18.0.25"),
            ("client_name", "mail.good.test"),
            ("reverse_client_name", "mail.good.test"),
            ("helo_name", "mail.good.test"),
            ("sender", "alice@good.test"),
            ("recipient", "bob@example.test"),
            ("recipient_count", "0"),
            ("queue_id", "Q1"),
            ("instance", "S1.Q1"),
            ("size", "1234"),
            ("sasl_username", ""),
            ("encryption_protocol", "TLSv1_3"),
            ("encryption_keysize", "256"),
            ("server_address", "127.0.0.1"),
            ("server_port", "2525"),
            ("policy_context", "mx"),
        ] {
            assert_eq!(r.get(name), Some(value), "{name}");
        }
        for name in [
            "sasl_method",
            "sasl_sender",
            "ccert_subject",
            "ccert_issuer",
            "ccert_fingerprint",
            "ccert_pubkey_fingerprint",
            "etrn_domain",
            "stress",
            "client_port",
            "encryption_cipher",
            "compatibility_level",
            "mail_version",
        ] {
            assert!(r.get(name).is_some(), "{name}");
        }
        // At the end of the message: the count, the only recipient, the size.
        let q = Query {
            stage: Stage::Data,
            recipient: None,
            message_size: Some(99),
            ..q
        };
        let r = q.request(&service());
        assert_eq!(r.get("protocol_state"), Some("END-OF-MESSAGE"));
        assert_eq!(r.get("recipient"), Some("a@example.test"));
        assert_eq!(r.get("recipient_count"), Some("1"));
        assert_eq!(r.get("size"), Some("99"));
        // Before MAIL: no envelope, no PTR.
        let bare = SessionInfo {
            client_rdns: crate::dns::Rdns::None,
            ..session.clone()
        };
        let q = Query {
            stage: Stage::Connect,
            session: &bare,
            ..q
        };
        let r = q.request(&service());
        assert_eq!(r.get("client_name"), Some("unknown"));
        assert_eq!(r.get("reverse_client_name"), Some("unknown"));
        assert_eq!(r.get("instance"), Some("S1"));
        assert_eq!(r.get("sender"), Some(""));
        assert_eq!(r.get("encryption_keysize"), Some("256"));
    }
}
