//! Placeholder until the dovecot backend lands.

use super::{AuthContext, AuthError, Exchange};

/// The dovecot backend.
#[derive(Debug)]
pub struct DovecotBackend;

/// An exchange with the dovecot backend.
#[derive(Debug)]
pub struct DovecotSession;

impl DovecotBackend {
    /// Mechanisms offered.
    pub fn mechanisms(&self) -> Vec<String> {
        Vec::new()
    }

    /// Starts an exchange.
    pub async fn start(
        &self,
        mechanism: &str,
        _ctx: &AuthContext,
    ) -> Result<DovecotSession, AuthError> {
        Err(AuthError::UnsupportedMechanism(mechanism.to_string()))
    }
}

impl DovecotSession {
    /// Feeds a response.
    pub async fn step(&mut self, _response: Option<&[u8]>) -> Result<Exchange, AuthError> {
        Err(AuthError::Temporary("not implemented".into()))
    }
}
