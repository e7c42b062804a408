//! Placeholder until the passwd backend lands.

use super::{AuthContext, AuthError, Exchange};

/// The passwd backend.
#[derive(Debug)]
pub struct PasswdBackend;

/// An exchange with the passwd backend.
#[derive(Debug)]
pub struct PasswdSession;

impl PasswdBackend {
    /// Mechanisms offered.
    pub fn mechanisms(&self) -> Vec<String> {
        Vec::new()
    }

    /// Starts an exchange.
    pub fn start(&self, mechanism: &str, _ctx: &AuthContext) -> Result<PasswdSession, AuthError> {
        Err(AuthError::UnsupportedMechanism(mechanism.to_string()))
    }
}

impl PasswdSession {
    /// Feeds a response.
    pub async fn step(&mut self, _response: Option<&[u8]>) -> Result<Exchange, AuthError> {
        Err(AuthError::Temporary("not implemented".into()))
    }
}
