//! SMTP AUTH (RFC 4954) in the session driver: the SASL exchange with the
//! listener's backend.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::Connection;
use crate::sasl::{AuthContext, AuthError, Exchange};
use crate::server::limits::client_key;
use crate::smtp::receiver::{Event, Receiver};
use crate::smtp::reply::r;
use crate::smtp::session::Step;

impl Connection {
    /// Reads one line during an AUTH exchange (RFC 4954 allows 12288 octets).
    async fn read_auth_line(&mut self) -> Option<Vec<u8>> {
        let timeout = self.generation.config.smtp.command_timeout.0;
        let mut rx = Receiver::new(12288);
        loop {
            match rx.next(&mut self.wire.inbuf, &mut self.body) {
                Some(Event::Line(line)) => return Some(line),
                Some(_) => return None,
                None => {}
            }
            match tokio::time::timeout(timeout, self.wire.read()).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// SMTP AUTH (RFC 4954): runs the SASL exchange with the listener's
    /// backend. Failures are logged without any credential, delayed more
    /// for clients that fail often, and end the session after
    /// `max_auth_failures`.
    pub(super) async fn auth(&mut self, mechanism: String, initial: Option<String>) -> Step {
        let Some(backend) = self
            .generation
            .listener(self.listener)
            .and_then(|l| l.auth.clone())
        else {
            return self
                .session
                .fail(r(502, 5, 5, 1, "Error: authentication not enabled"));
        };
        let smtp = &self.generation.config.smtp;
        let client = client_key(self.peer.ip(), smtp.ipv6_client_prefix);
        let before = self.shared.auth_recent(client);
        if before >= smtp.max_auth_failures_per_client {
            tracing::warn!(
                "{}: AUTH {mechanism} refused: {before} recent failures from this client",
                self.client
            );
            return self.session.fail(r(
                454,
                4,
                7,
                0,
                "Too many authentication failures from your address, try again later",
            ));
        }
        // A client that failed recently waits before any answer, a success
        // included: hanging up early must not tell it the guess was wrong.
        let tarpit = smtp.auth_failure_delay.0 * before.min(5);
        let ctx = AuthContext {
            client_ip: self.peer.ip(),
            local_ip: self.local_ip(),
            secured: self.tls.is_some(),
            service: "smtp".into(),
        };
        let mut exchange = match backend.start(&mechanism, &ctx).await {
            Ok(x) => x,
            Err(AuthError::UnsupportedMechanism(_)) => {
                return self
                    .session
                    .fail(r(504, 5, 5, 4, "Unrecognized authentication type"));
            }
            Err(e) => {
                tracing::error!("{}: AUTH {mechanism}: {e}", self.client);
                return self
                    .session
                    .fail(r(454, 4, 7, 0, "Temporary authentication failure"));
            }
        };
        let mut response: Option<Vec<u8>> = match initial.as_deref() {
            None => None,
            Some("=") => Some(Vec::new()),
            Some(b64) => match BASE64.decode(b64) {
                Ok(v) => Some(v),
                Err(_) => {
                    return self
                        .session
                        .fail(r(501, 5, 5, 2, "Cannot decode AUTH parameter"));
                }
            },
        };
        loop {
            match exchange.step(response.as_deref()).await {
                Ok(Exchange::Challenge(challenge)) => {
                    let line = format!("334 {}\r\n", BASE64.encode(&challenge));
                    self.wire.push_raw(line.as_bytes());
                    if self.flush().await.is_err() {
                        return Step::Close(r(421, 4, 4, 2, "Error: lost connection"));
                    }
                    let Some(answer) = self.read_auth_line().await else {
                        return Step::Close(r(
                            421,
                            4,
                            4,
                            2,
                            "Error: timeout or bad line during AUTH",
                        ));
                    };
                    if answer == b"*" {
                        return self.session.fail(r(501, 5, 0, 0, "Authentication aborted"));
                    }
                    match BASE64.decode(answer.trim_ascii()) {
                        Ok(v) => response = Some(v),
                        Err(_) => {
                            return self.session.fail(r(501, 5, 5, 2, "Cannot decode response"));
                        }
                    }
                }
                Ok(Exchange::Success(user)) => {
                    let _ = self.flush().await;
                    tokio::time::sleep(tarpit).await;
                    tracing::info!(
                        "{}: AUTH {mechanism} ok, sasl_username={}",
                        self.client,
                        crate::sasl::mechanism::printable(&user)
                    );
                    Arc::make_mut(&mut self.info).auth_user = Some(user.clone());
                    return Step::Reply(self.session.authenticated(user));
                }
                Ok(Exchange::Failure(reason)) => {
                    self.auth_failures += 1;
                    let recent = self.shared.auth_failed(client);
                    tracing::warn!(
                        "{}: AUTH {mechanism} failed ({reason}); failures: {} this session, {recent} recent from this address",
                        self.client,
                        self.auth_failures
                    );
                    let smtp = &self.generation.config.smtp;
                    let delay = smtp.auth_failure_delay.0 * recent.min(5);
                    let max = smtp.max_auth_failures;
                    let _ = self.flush().await;
                    tokio::time::sleep(delay).await;
                    if self.auth_failures >= max {
                        return Step::Close(r(
                            421,
                            4,
                            7,
                            0,
                            "Error: too many authentication failures",
                        ));
                    }
                    return self.session.fail(r(
                        535,
                        5,
                        7,
                        8,
                        "Authentication credentials invalid",
                    ));
                }
                Err(e) => {
                    tracing::error!("{}: AUTH {mechanism}: {e}", self.client);
                    return self
                        .session
                        .fail(r(454, 4, 7, 0, "Temporary authentication failure"));
                }
            }
        }
    }
}
