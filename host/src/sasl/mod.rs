//! SASL for SMTP AUTH (RFC 4954): mechanisms as sans-IO state machines
//! ([`mechanism`]) and the backends that check credentials: Postern's own
//! password file ([`passwd`]), saslauthd ([`saslauthd`]) and Dovecot's auth
//! service ([`dovecot`]).
//!
//! The SMTP driver only sees [`Backend`] and [`Exchange`]: it starts an
//! exchange for the mechanism the client named, feeds it the client's
//! (base64-decoded) responses, sends each challenge in a `334` reply, and
//! ends with `235` on [`Exchange::Success`] or `535 5.7.8` on
//! [`Exchange::Failure`]. Passwords never appear in logs or errors.

pub mod dovecot;
pub mod mechanism;
pub mod passwd;
pub mod saslauthd;
pub mod sender_login;

use std::net::IpAddr;

/// One step of an authentication exchange, as the SMTP driver sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    /// Send this challenge (raw bytes; the driver base64-encodes it) in a
    /// `334` reply and feed the client's answer to the next step.
    Challenge(Vec<u8>),
    /// Authenticated. The identity is the authorization identity when the
    /// client gave one and is allowed to use it, else the authentication
    /// identity (`user@domain` for the password file).
    Success(String),
    /// Wrong credentials, unknown user or a malformed response; the
    /// reason is for the log and never contains a password.
    Failure(String),
}

/// Errors that are not the client's fault.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The backend is unreachable or broken: `454 4.7.0`.
    #[error("temporary authentication failure: {0}")]
    Temporary(String),
    /// The mechanism is not supported by this backend: `504 5.5.4`.
    #[error("mechanism {0} is not available")]
    UnsupportedMechanism(String),
}

/// What an exchange knows about the client.
#[derive(Debug, Clone)]
pub struct AuthContext {
    /// Client IP address.
    pub client_ip: IpAddr,
    /// Our IP address on the connection.
    pub local_ip: IpAddr,
    /// TLS is active on the connection.
    pub secured: bool,
    /// Service name for backends that want one ("smtp").
    pub service: String,
}

/// A backend's settings make no sense (unknown mechanism, bad address).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Builds the backend an `[[auth]]` table describes. The password file
/// must exist and parse; a Dovecot that cannot be reached is only a
/// warning (its mechanisms are learned on the first exchange), so that
/// Postern starts while Dovecot restarts. Blocks for up to 3 s on the
/// Dovecot handshake and for one argon2 hash (the password file's dummy).
pub fn build_backend(cfg: &crate::config::Auth) -> anyhow::Result<Backend> {
    use crate::config::AuthBackendKind;
    use anyhow::Context as _;
    Ok(match cfg.backend {
        AuthBackendKind::Passwd => {
            let path = cfg
                .path
                .as_ref()
                .context("`path` (the password file) is required for the passwd backend")?;
            Backend::Passwd(passwd::PasswdBackend::open(
                path.clone(),
                cfg.mechanisms.clone(),
            )?)
        }
        AuthBackendKind::Saslauthd => Backend::Saslauthd(saslauthd::SaslauthdBackend::new(
            cfg.socket.as_deref().unwrap_or(saslauthd::DEFAULT_SOCKET),
            &cfg.service,
            cfg.realm.clone(),
            cfg.mechanisms.clone(),
        )?),
        AuthBackendKind::Dovecot => {
            let socket = cfg.socket.as_deref().context(
                "`socket` (unix:/path or host:port) is required for the dovecot backend",
            )?;
            let backend =
                dovecot::DovecotBackend::new(socket, &cfg.service, cfg.mechanisms.clone())?;
            if let Err(e) = backend.probe() {
                tracing::warn!(
                    "auth {:?}: {e}; offering {:?} until it answers",
                    cfg.name,
                    backend.mechanisms()
                );
            }
            Backend::Dovecot(backend)
        }
    })
}

/// A credential backend chosen per listener.
#[derive(Debug)]
pub enum Backend {
    /// Postern's password file.
    Passwd(passwd::PasswdBackend),
    /// A running saslauthd (PLAIN and LOGIN only).
    Saslauthd(saslauthd::SaslauthdBackend),
    /// Dovecot's auth service (the mechanisms Dovecot offers).
    Dovecot(dovecot::DovecotBackend),
}

/// An exchange in progress.
pub enum Session {
    /// Local mechanism against the password file.
    Passwd(passwd::PasswdSession),
    /// PLAIN/LOGIN whose password saslauthd checks.
    Saslauthd(saslauthd::SaslauthdSession),
    /// Proxied to Dovecot.
    Dovecot(dovecot::DovecotSession),
}

impl Backend {
    /// Sets the host name that CRAM-MD5 challenges of the password file
    /// carry (`server.hostname`); other backends ignore it.
    pub fn with_hostname(self, hostname: &str) -> Backend {
        match self {
            Backend::Passwd(b) => Backend::Passwd(b.with_hostname(hostname)),
            other => other,
        }
    }

    /// The mechanisms this backend can offer, in the order to advertise
    /// them (strongest first).
    pub fn mechanisms(&self) -> Vec<String> {
        match self {
            Backend::Passwd(b) => b.mechanisms(),
            Backend::Saslauthd(b) => b.mechanisms(),
            Backend::Dovecot(b) => b.mechanisms(),
        }
    }

    /// Whether an identity this backend authenticated still exists:
    /// `None` when the backend cannot tell (saslauthd and Dovecot answer
    /// only to credentials) or cannot be read just now.
    pub fn knows(&self, identity: &str) -> Option<bool> {
        match self {
            Backend::Passwd(b) => b.knows(identity),
            Backend::Saslauthd(_) | Backend::Dovecot(_) => None,
        }
    }

    /// Starts an exchange for `mechanism` (upper case).
    pub async fn start(&self, mechanism: &str, ctx: &AuthContext) -> Result<Session, AuthError> {
        match self {
            Backend::Passwd(b) => b.start(mechanism, ctx).map(Session::Passwd),
            Backend::Saslauthd(b) => b.start(mechanism, ctx).map(Session::Saslauthd),
            Backend::Dovecot(b) => b.start(mechanism, ctx).await.map(Session::Dovecot),
        }
    }
}

impl Session {
    /// Feeds the client's response (`None` before the first response when
    /// the client sent no initial response; `Some(b"")` for an empty one).
    pub async fn step(&mut self, response: Option<&[u8]>) -> Result<Exchange, AuthError> {
        match self {
            Session::Passwd(s) => s.step(response).await,
            Session::Saslauthd(s) => s.step(response).await,
            Session::Dovecot(s) => s.step(response).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(toml_text: &str) -> crate::config::Auth {
        toml::from_str(toml_text).expect("auth table")
    }

    #[test]
    fn backends_from_config() {
        let dir = mechanism::client::TempDir::new("sasl-build");
        let path = dir.path().join("passwd");
        let record = passwd::file::Record::new("a@x.test", b"pw", false).expect("record");
        passwd::file::edit(&path, passwd::file::Edit::Add(record)).expect("add");

        let b = build_backend(&auth(&format!(
            "name = 'local'\nbackend = 'passwd'\npath = '{}'\nmechanisms = ['PLAIN', 'SCRAM-SHA-256']",
            path.display()
        )))
        .expect("passwd")
        .with_hostname("mx.test");
        assert_eq!(b.mechanisms(), ["PLAIN", "SCRAM-SHA-256"]);
        assert!(build_backend(&auth("name = 'x'\nbackend = 'passwd'")).is_err());
        assert!(
            build_backend(&auth(&format!(
                "name = 'x'\nbackend = 'passwd'\npath = '{}'",
                dir.path().join("missing").display()
            )))
            .is_err()
        );

        let b = build_backend(&auth("name = 's'\nbackend = 'saslauthd'")).expect("saslauthd");
        assert_eq!(b.mechanisms(), ["PLAIN", "LOGIN"]);
        assert!(
            build_backend(&auth(
                "name = 's'\nbackend = 'saslauthd'\nmechanisms = ['CRAM-MD5']"
            ))
            .is_err()
        );

        // Unreachable Dovecot: builds, with a guess.
        let b = build_backend(&auth(&format!(
            "name = 'd'\nbackend = 'dovecot'\nsocket = 'unix:{}'",
            dir.path().join("no-socket").display()
        )))
        .expect("dovecot");
        assert_eq!(b.mechanisms(), ["PLAIN", "LOGIN"]);
        assert!(build_backend(&auth("name = 'd'\nbackend = 'dovecot'")).is_err());
    }
}
