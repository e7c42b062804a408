//! What a hook is called with, in host terms: the session, the envelope,
//! the recipient and the message content, as the SMTP side hands them to
//! the chain runner (and the host interfaces lend them to plugins).

use std::sync::Arc;

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
    /// Verified PTR.
    pub client_ptr: Option<String>,
    /// What the client's reverse DNS said.
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
