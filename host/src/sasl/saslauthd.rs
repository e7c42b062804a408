//! Placeholder until the saslauthd backend lands.

use super::{AuthContext, AuthError, Exchange};

/// The saslauthd backend.
#[derive(Debug)]
pub struct SaslauthdBackend;

/// An exchange with the saslauthd backend.
#[derive(Debug)]
pub struct SaslauthdSession;

impl SaslauthdBackend {
    /// Mechanisms offered.
    pub fn mechanisms(&self) -> Vec<String> {
        Vec::new()
    }

    /// Starts an exchange.
    pub fn start(
        &self,
        mechanism: &str,
        _ctx: &AuthContext,
    ) -> Result<SaslauthdSession, AuthError> {
        Err(AuthError::UnsupportedMechanism(mechanism.to_string()))
    }
}

impl SaslauthdSession {
    /// Feeds a response.
    pub async fn step(&mut self, _response: Option<&[u8]>) -> Result<Exchange, AuthError> {
        Err(AuthError::Temporary("not implemented".into()))
    }
}
