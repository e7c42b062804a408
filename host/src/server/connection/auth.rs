//! SMTP AUTH (RFC 4954) in the session driver: the SASL exchange with the
//! listener's backend, under deadlines a client cannot stretch, and
//! answered after a delay that does not depend on the outcome.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::time::{Instant, timeout_at};

use super::Connection;
use crate::sasl::{AuthContext, AuthError, Backend, Exchange};
use crate::server::limits::client_key;
use crate::server::reply;
use crate::smtp::receiver::{Event, Receiver};
use crate::smtp::session::Step;

/// Longest AUTH continuation line (RFC 4954 §4: 12288 octets).
const AUTH_LINE: usize = 12288;

/// How an exchange that ran to its end ended.
enum Outcome {
    /// Authenticated as this identity.
    Success(String),
    /// Refused credentials, with the reason for the log.
    Failure(String),
}

/// Why no continuation line came.
enum NoLine {
    /// Not complete by its deadline.
    Timeout,
    /// Longer than [`AUTH_LINE`].
    TooLong,
    /// The connection ended.
    Lost,
}

/// `now + after`, or a year from now when that would overflow.
fn deadline_after(after: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 86_400))
}

impl Connection {
    /// SMTP AUTH: runs the SASL exchange with the listener's backend.
    /// Failures are logged without any credential and end the session
    /// after `max_auth_failures`. A client that failed recently waits
    /// before any answer, a success as long as a failure: neither the
    /// time nor hanging up early tells it whether a guess was right.
    pub(super) async fn auth(&mut self, mechanism: String, initial: Option<String>) -> Step {
        let Some(backend) = self
            .generation
            .listener(self.listener)
            .and_then(|l| l.auth.clone())
        else {
            return self.session.fail(reply::auth_not_enabled());
        };
        let smtp = &self.generation.config.smtp;
        let client = client_key(self.peer.ip(), smtp.ipv6_client_prefix);
        let before = self.shared.auth_recent(client);
        if before >= smtp.max_auth_failures_per_client {
            tracing::warn!(
                "{}: AUTH {mechanism} refused: {before} recent failures from this client",
                self.client
            );
            return self.session.fail(reply::auth_tarpit());
        }
        // Fixed before the exchange, from what the client did before it:
        // the tarpit of its recent failures, and the error delay a failure
        // would get once the session has made many errors.
        let mut delay = smtp.auth_failure_delay.0.saturating_mul(before.min(5));
        if self.session.errors() >= smtp.error_delay_after {
            delay = delay.saturating_add(smtp.error_delay.0);
        }
        // The exchange as a whole takes at most two commands' time (a
        // client answers each challenge at once; a backend that hangs
        // must not hold the session either).
        let deadline = deadline_after(smtp.command_timeout.0.saturating_mul(2));
        let outcome = match self.exchange(&backend, &mechanism, initial, deadline).await {
            Ok(outcome) => outcome,
            Err(step) => return step,
        };
        // The replies already due go out before the wait.
        let _ = self.flush().await;
        match outcome {
            Outcome::Success(user) => {
                tokio::time::sleep(delay).await;
                tracing::info!(
                    "{}: AUTH {mechanism} ok, sasl_username={}",
                    self.client,
                    crate::sasl::mechanism::printable(&user)
                );
                self.judge.authenticated(Some(user.clone()));
                Step::Reply(self.session.authenticated(user))
            }
            Outcome::Failure(reason) => {
                self.auth_failures = self.auth_failures.saturating_add(1);
                let recent = self.shared.auth_failed(client);
                tracing::warn!(
                    "{}: AUTH {mechanism} failed ({reason}); failures: {} this session, {recent} recent from this address",
                    self.client,
                    self.auth_failures
                );
                tokio::time::sleep(delay).await;
                if self.auth_failures >= self.generation.config.smtp.max_auth_failures {
                    return Step::Close(reply::auth_too_many_failures());
                }
                let step = self.session.fail(reply::auth_invalid());
                self.reply_delayed = matches!(step, Step::Reply(_));
                step
            }
        }
    }

    /// The exchange proper, until the backend decides: each challenge in
    /// a `334`, each answer one line due within `command_timeout` of its
    /// challenge (the per-line deadline of a command; not renewed by
    /// every byte), all of it before `deadline`. `Err` is the step that
    /// ends the exchange otherwise.
    async fn exchange(
        &mut self,
        backend: &Backend,
        mechanism: &str,
        initial: Option<String>,
        deadline: Instant,
    ) -> Result<Outcome, Step> {
        let ctx = AuthContext {
            client_ip: self.peer.ip(),
            local_ip: self.local_ip(),
            secured: self.tls.is_some(),
            service: "smtp".into(),
        };
        let mut exchange = match timeout_at(deadline, backend.start(mechanism, &ctx)).await {
            Err(_) => return Err(self.backend_timeout(mechanism)),
            Ok(Ok(x)) => x,
            Ok(Err(AuthError::UnsupportedMechanism(_))) => {
                return Err(self.session.fail(reply::auth_unknown_mechanism()));
            }
            Ok(Err(e)) => return Err(self.backend_failed(mechanism, &e)),
        };
        let mut response: Option<Vec<u8>> = match initial.as_deref() {
            None => None,
            Some("=") => Some(Vec::new()),
            Some(b64) => match BASE64.decode(b64) {
                Ok(v) => Some(v),
                Err(_) => {
                    return Err(self.session.fail(reply::auth_bad_initial()));
                }
            },
        };
        loop {
            let step = match timeout_at(deadline, exchange.step(response.as_deref())).await {
                Err(_) => return Err(self.backend_timeout(mechanism)),
                Ok(Err(e)) => return Err(self.backend_failed(mechanism, &e)),
                Ok(Ok(step)) => step,
            };
            let challenge = match step {
                Exchange::Challenge(challenge) => challenge,
                Exchange::Success(user) => return Ok(Outcome::Success(user)),
                Exchange::Failure(reason) => return Ok(Outcome::Failure(reason)),
            };
            let line = format!("334 {}\r\n", BASE64.encode(&challenge));
            self.wire.push_raw(line.as_bytes());
            if self.flush().await.is_err() {
                return Err(Step::Close(reply::lost_connection()));
            }
            let line_deadline = deadline_after(self.generation.config.smtp.command_timeout.0);
            let answer = match self.read_auth_line(line_deadline.min(deadline)).await {
                Ok(answer) => answer,
                Err(NoLine::Timeout) => {
                    tracing::info!("timeout after AUTH from {}", self.client);
                    return Err(Step::Close(reply::timeout()));
                }
                Err(NoLine::TooLong) => {
                    tracing::info!("{}: AUTH {mechanism}: response line too long", self.client);
                    return Err(Step::Close(reply::auth_line_too_long()));
                }
                Err(NoLine::Lost) => {
                    tracing::info!("lost connection after AUTH from {}", self.client);
                    return Err(Step::Close(reply::lost_connection()));
                }
            };
            if answer == b"*" {
                return Err(self.session.fail(reply::auth_aborted()));
            }
            match BASE64.decode(answer.trim_ascii()) {
                Ok(v) => response = Some(v),
                Err(_) => {
                    return Err(self.session.fail(reply::auth_bad_response()));
                }
            }
        }
    }

    /// Reads one continuation line, complete by `deadline` however the
    /// client spreads its bytes.
    async fn read_auth_line(&mut self, deadline: Instant) -> Result<Vec<u8>, NoLine> {
        let mut rx = Receiver::new(AUTH_LINE);
        loop {
            match rx.next(&mut self.wire.inbuf, &mut self.body) {
                Some(Event::Line(line)) => return Ok(line),
                Some(_) => return Err(NoLine::TooLong),
                None => {}
            }
            match timeout_at(deadline, self.wire.read()).await {
                Err(_) => return Err(NoLine::Timeout),
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return Err(NoLine::Lost),
            }
        }
    }

    /// The backend did not finish within the exchange's deadline.
    fn backend_timeout(&mut self, mechanism: &str) -> Step {
        tracing::error!(
            "{}: AUTH {mechanism}: the authentication backend did not answer in time",
            self.client
        );
        self.session.fail(reply::auth_temporary())
    }

    /// The backend failed (unreachable, broken): not the client's doing.
    fn backend_failed(&mut self, mechanism: &str, e: &AuthError) -> Step {
        tracing::error!("{}: AUTH {mechanism}: {e}", self.client);
        self.session.fail(reply::auth_temporary())
    }
}
