//! What a hook is called with, in host terms: the session, the envelope,
//! the recipient and the message content, as the SMTP side hands them to
//! the chain runner (and the host interfaces lend them to plugins).

use std::sync::Arc;

use crate::message::limits::MAX_HEADER_SIZE_CEILING;
use crate::message::{parse_headers, scan_headers};

/// Host-side view of the session, converted for each call.
#[derive(Debug, Clone, Default)]
pub struct SessionInfo {
    /// Unique session ID.
    pub id: String,
    /// Listener name.
    pub listener: String,
    /// Client IP.
    pub client_ip: String,
    /// Client port.
    pub client_port: u16,
    /// What the client's reverse DNS said (its forward-confirmed name is
    /// [`SessionInfo::client_ptr`]).
    pub client_rdns: crate::dns::Rdns,
    /// In trusted networks.
    pub trusted: bool,
    /// HELO name.
    pub helo: Option<String>,
    /// TLS version and cipher.
    pub tls: Option<(String, String)>,
    /// SASL identity.
    pub auth_user: Option<String>,
}

impl SessionInfo {
    /// The client's forward-confirmed PTR name, if any (Postfix's
    /// `client_name`).
    pub fn client_ptr(&self) -> Option<&str> {
        match &self.client_rdns {
            crate::dns::Rdns::Confirmed(name) => Some(name),
            _ => None,
        }
    }
}

/// Host-side view of the envelope.
#[derive(Debug, Clone, Default)]
pub struct EnvelopeInfo {
    /// Queue ID.
    pub queue_id: String,
    /// Sender (empty for `<>`).
    pub mail_from: String,
    /// MAIL parameters.
    pub mail_params: Vec<(String, Option<String>)>,
    /// Recipients so far.
    pub rcpt_to: Vec<String>,
}

/// What a hook is called with.
#[derive(Debug, Default)]
pub struct Input<'a> {
    /// The session.
    pub session: Option<Arc<SessionInfo>>,
    /// The envelope (mail, rcpt, data), shared with the plugins' calls.
    pub envelope: Option<Arc<EnvelopeInfo>>,
    /// The recipient being checked (rcpt).
    pub recipient: Option<&'a str>,
    /// Its RCPT TO parameters (keyword, value), as the SMTP parser kept
    /// them.
    pub rcpt_params: &'a [(String, Option<String>)],
    /// The message content (data).
    pub message: Option<Arc<Vec<u8>>>,
}

/// The session behind a `session` resource handle (lent to one call).
#[derive(Debug)]
pub struct SessionData(pub Arc<SessionInfo>);

/// The envelope behind an `envelope` resource handle (lent to one call).
#[derive(Debug)]
pub struct EnvelopeData(pub Arc<EnvelopeInfo>);

/// Message content with its header section parsed: once per stage,
/// whatever the number of plugins that read it.
///
/// The view is complete or there is none: the daemon refuses a message
/// over `smtp.max_header_fields`/`max_header_size` before any filter
/// runs (`message::limits`), and a header section over the ceiling that
/// setting may have (1 MiB) is not parsed at all, so that reading it
/// fails the call instead of handing a guest a part of it.
#[derive(Debug)]
pub struct ParsedMessage {
    pub(super) content: Arc<Vec<u8>>,
    headers: Vec<(String, String)>,
    pub(super) body_start: usize,
}

impl ParsedMessage {
    /// Parses message content (header section and body).
    pub fn new(content: Arc<Vec<u8>>) -> ParsedMessage {
        let body_start = scan_headers(&content, |_, _| {});
        let headers = if body_start as u64 > MAX_HEADER_SIZE_CEILING {
            Vec::new()
        } else {
            let (fields, _) = parse_headers(&content);
            fields.into_iter().map(|f| (f.name, f.value)).collect()
        };
        ParsedMessage {
            headers,
            content,
            body_start,
        }
    }

    /// The fields, unless the header section is over the ceiling.
    pub(super) fn fields(&self) -> Result<&[(String, String)], String> {
        if self.body_start as u64 > MAX_HEADER_SIZE_CEILING {
            return Err(format!(
                "the message header of {} bytes is over the {MAX_HEADER_SIZE_CEILING} a plugin may read",
                self.body_start
            ));
        }
        Ok(&self.headers)
    }
}

/// The message behind a `message` resource handle (lent to one call).
#[derive(Debug)]
pub struct MessageData(pub Arc<ParsedMessage>);
