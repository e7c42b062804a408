//! What the driver makes of the receiver's events before the session's
//! state machine sees them: the session's limits, pipelining where it
//! must wait, a new generation between transactions, and one log line
//! for each refusal the session makes on its own.

use std::time::Instant;

use super::Connection;
use crate::smtp::command::{self, Command, ParseOptions};
use crate::smtp::receiver::Event;
use crate::smtp::reply::Reply;
use crate::smtp::session::Step;

/// What of a refused command line goes into the log. MAIL, RCPT and
/// HELO/EHLO as they are (cut to 100 bytes); AUTH with its mechanism
/// only; anything else by its verb, when it looks like one: a line that is
/// not a command may be a client sending its password at the wrong moment.
pub(super) fn loggable(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(&line[..line.len().min(100)]);
    let mut words = text.split_ascii_whitespace();
    let verb = words.next().unwrap_or("");
    let word = |w: &str| w.len() <= 20 && w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    match verb.to_ascii_uppercase().as_str() {
        "MAIL" | "RCPT" | "HELO" | "EHLO" => text.into_owned(),
        "AUTH" => match words.next().filter(|m| word(m)) {
            Some(mechanism) => format!("AUTH {mechanism} [...] ({} bytes)", line.len()),
            None => format!("AUTH [...] ({} bytes)", line.len()),
        },
        _ if verb.len() <= 12 && verb.bytes().all(|b| b.is_ascii_alphabetic()) => {
            format!("{verb} [...] ({} bytes)", line.len())
        }
        _ => format!("[...] ({} bytes)", line.len()),
    }
}

impl Connection {
    /// Turns a receiver event into the session's next step, or into a
    /// reply that ends the session which the driver decided (and logged)
    /// itself.
    pub(super) fn on_event(&mut self, event: Event) -> Result<Step, Reply> {
        Ok(match event {
            Event::Line(line) => {
                let smtp = &self.generation.config.smtp;
                if let Some(expired) = self.lifetime.command(
                    Instant::now(),
                    smtp.max_session_age.0,
                    smtp.max_session_commands,
                ) {
                    return Err(self.expire(expired));
                }
                let opts = ParseOptions {
                    strict_envelopes: smtp.strict_envelopes,
                };
                match command::parse(&line, opts) {
                    Ok(cmd) => {
                        self.last_verb = cmd.verb();
                        if matches!(cmd, Command::Mail(..)) && self.session.transaction().is_none()
                        {
                            self.renew_generation();
                        }
                        if self.session.must_wait(&cmd)
                            && let Some(reply) = self.pipelining_violation(cmd.verb())
                        {
                            return Err(reply);
                        }
                        // The session's own refusals (sequence, limits,
                        // TLS or AUTH required); the steps it passes on
                        // log theirs where they are decided.
                        let step = self.session.command(cmd);
                        if let Step::Reply(reply) = &step
                            && reply.code >= 400
                        {
                            tracing::info!(
                                "{}: reject: {} from {}: {}",
                                self.qid(),
                                self.last_verb,
                                self.client,
                                reply.summary()
                            );
                        }
                        step
                    }
                    Err(e) => {
                        let shown = loggable(&line);
                        tracing::info!(
                            "{}: reject: {e} from {}: {:?}",
                            self.qid(),
                            self.client,
                            shown
                        );
                        self.session.bad_command(&e)
                    }
                }
            }
            Event::LineTooLong => {
                tracing::info!("{}: reject: line too long from {}", self.qid(), self.client);
                self.session.line_too_long()
            }
            Event::DataEnd | Event::ChunkEnd => {
                // After the last chunk the client waits for the reply.
                if event == Event::ChunkEnd
                    && self.session.in_last_chunk()
                    && let Some(reply) = self.pipelining_violation("BDAT LAST")
                {
                    return Err(reply);
                }
                // The queue ID is gone once the session resets on refusal.
                let qid = self.qid().to_string();
                let step = if event == Event::DataEnd {
                    self.session.data_end(&self.body)
                } else {
                    self.session.chunk_end(&self.body)
                };
                if let Step::Reply(reply) | Step::Close(reply) = &step
                    && reply.code >= 400
                {
                    tracing::info!(
                        "{qid}: reject: END-OF-MESSAGE from {}: {} (size={}, buffered by all sessions={})",
                        self.client,
                        reply.summary(),
                        self.body.received,
                        self.shared.buffered.used()
                    );
                }
                step
            }
            Event::BareNewline => {
                tracing::warn!(
                    "{}: reject: bare <CR> or <LF> in message data from {} (possible SMTP smuggling); disconnecting",
                    self.qid(),
                    self.client
                );
                self.session.bare_newline()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::loggable;

    #[test]
    fn refused_lines_are_logged_without_secrets() {
        // The whole AUTH PLAIN response, and a password sent as a command.
        let auth = b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABhbGljZS1zZWNyZXQ= =";
        assert_eq!(loggable(auth), "AUTH PLAIN [...] (57 bytes)");
        assert_eq!(loggable(b"YWxpY2Utc2VjcmV0"), "[...] (16 bytes)");
        assert_eq!(loggable(b"FOO bar"), "FOO [...] (7 bytes)");
        assert_eq!(
            loggable(b"MAIL FROM:<a@b.test> BOGUS=1"),
            "MAIL FROM:<a@b.test> BOGUS=1"
        );
    }
}
