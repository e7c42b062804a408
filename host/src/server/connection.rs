//! The tokio driver of one SMTP session: reads bytes into the receiver,
//! feeds events to the session state machine, asks the stages
//! ([`super::stage`]) for every decision the session needs (greeting,
//! sender, recipients, message), writes replies, and makes accepted
//! messages durable ([`commit`]).
//!
//! Replies are buffered while pipelined input is pending and flushed before
//! every read, which is exactly what RFC 2920 asks of a server. Every write
//! has a deadline and unsent replies a bound ([`super::wire`]); the session
//! has a maximum age and command count ([`super::limits`]); a client that is
//! neither trusted nor authenticated may pipeline only what RFC 2920 allows;
//! each new transaction takes the current configuration generation; a panic
//! ends the session alone ([`super::contain`]).

mod auth;
mod commit;
mod event;
mod guard;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::Shared;
use super::contain::catch_panic;
use super::generation::Generation;
use super::limits::Lifetime;
use super::reply;
use super::stage::{Judge, SmtpSession, vrfy};
use super::wire::{Wire, WriteError};
use crate::plugin::SessionInfo;
use crate::smtp::address::ReversePath;
use crate::smtp::command::MailParams;
use crate::smtp::receiver::{Body, Receiver};
use crate::smtp::reply::Reply;
use crate::smtp::session::{Session, Step};
use crate::spool::new_queue_id;
use crate::tls::{Stream, TlsInfo};
use event::loggable;

/// TLS as plugins see it: version and cipher.
fn tls_pair(t: &TlsInfo) -> (String, String) {
    (t.version.clone(), t.cipher.clone())
}

/// What the driver does after a step.
enum Flow {
    Continue,
    Close,
}

/// One client connection.
pub struct Connection {
    /// The socket, what was read of it and the replies not yet written.
    wire: Wire,
    /// Negotiated TLS, once active.
    tls: Option<TlsInfo>,
    /// Failed AUTH attempts in this session.
    auth_failures: u32,
    peer: SocketAddr,
    /// The configuration generation of the current (or next) transaction.
    generation: Arc<Generation>,
    listener: usize,
    shared: Arc<Shared>,
    session: SmtpSession,
    receiver: Receiver,
    body: Body,
    /// `name[ip]` for log lines, like Postfix.
    client: String,
    /// The last command verb, for "lost connection after X" lines.
    last_verb: &'static str,
    /// Makes the session's decisions, and keeps what they depend on.
    judge: Judge,
    /// The session's age and commands, against its limits.
    lifetime: Lifetime,
    /// The next error reply has had its delay already (an AUTH failure
    /// waits as long as a success would, no more).
    reply_delayed: bool,
}

impl Connection {
    /// Runs the session until QUIT, error, timeout or shutdown. `peer` is
    /// canonical: the accept loop makes an IPv4 client of a dual-stack
    /// socket (`::ffff:192.0.2.1`) the IPv4 client it is, for the limits,
    /// its PTR, logs, Received: and plugins alike.
    pub async fn serve(
        stream: TcpStream,
        peer: SocketAddr,
        listener: usize,
        generation: Arc<Generation>,
        shared: Arc<Shared>,
    ) {
        let Some(lgen) = generation.listener(listener) else {
            return;
        };
        let started = Instant::now();
        let cfg = lgen.session.clone();
        let rdns = shared.dns.client_rdns(peer.ip()).await;
        let ptr = rdns.confirmed();
        let client = format!("{}[{}]", ptr.as_deref().unwrap_or("unknown"), peer.ip());
        tracing::info!("connect from {client} on {}", lgen.name);
        let max_line = generation.config.smtp.max_line_length;
        let mut stream = Stream::Plain(stream);
        let mut tls = None;
        if lgen.implicit_tls {
            match shared.handshake(stream, &client).await {
                Some(s) => {
                    tls = s.tls_info();
                    stream = s;
                }
                None => return,
            }
        }
        let info = SessionInfo {
            id: new_queue_id(),
            listener: lgen.name.clone(),
            client_ip: peer.ip().to_string(),
            client_port: peer.port(),
            client_rdns: rdns,
            trusted: generation.router.is_trusted(peer.ip()),
            ..SessionInfo::default()
        };
        let judge = Judge::new(&generation, info, peer.ip(), client.clone());
        let mut conn = Connection {
            wire: Wire::new(stream),
            tls,
            auth_failures: 0,
            peer,
            listener,
            shared,
            session: Session::new(cfg, peer.ip(), ptr),
            receiver: Receiver::new(max_line),
            body: Body::new(0),
            client,
            last_verb: "CONNECT",
            generation,
            judge,
            lifetime: Lifetime::since(started),
            reply_delayed: false,
        };
        if conn.tls.is_some() {
            conn.session.tls_started();
            let tls = conn.tls.as_ref().map(tls_pair);
            conn.judge.tls(tls);
        }
        if let Err(why) = catch_panic(conn.session()).await {
            conn.contain(&why).await;
        }
        tracing::info!(
            "disconnect from {} messages={} errors={}",
            conn.client,
            conn.session.messages,
            conn.session.errors()
        );
    }

    /// The session proper: the connect stage, then the commands.
    async fn session(&mut self) {
        if let Err(refusal) = self
            .judge
            .connect(&self.generation, &mut self.session)
            .await
        {
            // Refused before the greeting: say why and hang up.
            self.wire.discard_out();
            self.reply_and_close(refusal.reply).await;
            return;
        }
        self.run().await;
    }

    /// After a panic (a bug, whatever the client sent): logs it with the
    /// queue ID, answers `421 4.3.0` after the replies already due, and
    /// lets the session end. The message in progress, if any, got no 250:
    /// the client sends it again.
    async fn contain(&mut self, why: &str) {
        tracing::error!(
            "{}: BUG: session with {} panicked after {}: {why}; answering 421 4.3.0 and disconnecting",
            self.qid(),
            self.client,
            self.last_verb
        );
        self.reply_and_close(reply::panicked()).await;
    }

    async fn run(&mut self) {
        // Talking before the greeting is pipelining too (Postfix's check,
        // which does not apply to implicit TLS).
        if self.tls.is_none()
            && let Some(reply) = self.pipelining_violation("CONNECT")
        {
            self.reply_and_close(reply).await;
            return;
        }
        let greeting = self.session.greeting_reply();
        self.wire.push(&greeting);
        let mut line_started: Option<Instant> = None;
        // When the current content (DATA, or a BDAT chunk) started, and the
        // bytes received before it.
        let mut content_started: Option<(Instant, u64)> = None;
        loop {
            // Handle everything already buffered (pipelining).
            while let Some(event) = self.receiver.next(&mut self.wire.inbuf, &mut self.body) {
                line_started = None;
                let flow = match self.on_event(event) {
                    Ok(step) => self.drive(step).await,
                    Err(hangup) => {
                        self.wire.push(&hangup);
                        Flow::Close
                    }
                };
                if let Flow::Close = flow {
                    let _ = self.flush().await;
                    return;
                }
                // Backpressure: a client that pipelines without reading
                // gets no further command read until it takes its
                // replies (within the write deadline).
                if self.wire.over_bound() && self.flush().await.is_err() {
                    return;
                }
            }
            if self.flush().await.is_err() {
                return;
            }
            let smtp = &self.generation.config.smtp;
            let (idle, command_timeout, data_timeout, min_rate) = (
                smtp.idle_timeout.0,
                smtp.command_timeout.0,
                smtp.data_timeout.0,
                smtp.min_data_rate,
            );
            // Choose the timeout for the next read.
            if !self.receiver.in_content() {
                content_started = None;
            }
            let timeout = if self.receiver.in_content() {
                let (started, before) =
                    *content_started.get_or_insert_with(|| (Instant::now(), self.body.received));
                // The whole content's deadline grows with what arrives.
                match self
                    .body
                    .received
                    .saturating_sub(before)
                    .checked_div(min_rate)
                {
                    None => data_timeout,
                    Some(earned) => {
                        let deadline = data_timeout.saturating_add(Duration::from_secs(earned));
                        data_timeout.min(deadline.saturating_sub(started.elapsed()))
                    }
                }
            } else if self.wire.inbuf.is_empty() {
                idle
            } else {
                let started = *line_started.get_or_insert_with(Instant::now);
                command_timeout.saturating_sub(started.elapsed())
            };
            let mut shutdown = self.shared.shutdown.clone();
            let busy = self.session.transaction().is_some() || self.receiver.in_content();
            if *shutdown.borrow() && !busy {
                self.reply_and_close(reply::shutting_down()).await;
                return;
            }
            let read = tokio::select! {
                res = tokio::time::timeout(timeout, self.wire.read()) => res,
                _ = shutdown.changed(), if !busy => {
                    self.reply_and_close(reply::shutting_down()).await;
                    return;
                }
            };
            match read {
                Err(_) => {
                    tracing::info!("timeout after {} from {}", self.last_verb, self.client);
                    self.reply_and_close(reply::timeout()).await;
                    return;
                }
                Ok(Ok(0)) => {
                    if self.session.transaction().is_some() || !self.wire.inbuf.is_empty() {
                        tracing::info!(
                            "lost connection after {} from {}",
                            self.last_verb,
                            self.client
                        );
                    }
                    return;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::info!(
                        "lost connection after {} from {}: {e}",
                        self.last_verb,
                        self.client
                    );
                    return;
                }
            }
        }
    }

    async fn reply_and_close(&mut self, reply: Reply) {
        self.wire.push(&reply);
        let _ = self.flush().await;
    }

    /// Writes the queued replies, within `command_timeout` (Postfix's
    /// `smtpd_timeout` covers writes as well). A failure is logged here,
    /// once: the session ends, and no later write is tried.
    async fn flush(&mut self) -> Result<(), WriteError> {
        let deadline = self.generation.config.smtp.command_timeout.0;
        let unsent = self.wire.unsent();
        let result = self.wire.flush(deadline).await;
        match &result {
            Err(WriteError::Timeout(t)) => tracing::info!(
                "timeout after {} from {}: {unsent} bytes of replies not taken within {}",
                self.last_verb,
                self.client,
                humantime::format_duration(*t)
            ),
            Err(WriteError::Io(e)) => tracing::info!(
                "lost connection after {} from {}: {e}",
                self.last_verb,
                self.client
            ),
            Ok(()) | Err(WriteError::Broken) => {}
        }
        result
    }

    fn qid(&self) -> &str {
        self.session
            .transaction()
            .map(|t| t.id.as_str())
            .unwrap_or("NOQUEUE")
    }
    /// Carries out steps until one produces a reply.
    async fn drive(&mut self, mut step: Step) -> Flow {
        loop {
            step = match step {
                Step::Reply(reply) => {
                    self.push_reply(reply).await;
                    return Flow::Continue;
                }
                Step::Close(reply) => {
                    if !reply.is_positive() && reply.code != 221 {
                        tracing::info!(
                            "{}: closing session with {} after {}: {}",
                            self.qid(),
                            self.client,
                            self.last_verb,
                            reply.summary()
                        );
                    }
                    self.wire.push(&reply);
                    return Flow::Close;
                }
                Step::Helo(greeting) => {
                    let decision = self
                        .judge
                        .helo(&self.generation, &mut self.session, &greeting.name)
                        .await;
                    self.session.helo_done(greeting, decision.into())
                }
                Step::Mail(from, params) => self.mail(from, params).await,
                Step::Rcpt(to, params) => {
                    let decision = self
                        .judge
                        .rcpt(&self.generation, &self.session, &to, &params)
                        .await;
                    self.session.rcpt_done(to, &params, decision.into())
                }
                Step::StartData(reply) => {
                    self.body = self.new_body();
                    self.receiver.start_data();
                    self.wire.push(&reply);
                    return Flow::Continue;
                }
                Step::StartBdat(size) => {
                    if self
                        .session
                        .transaction()
                        .is_none_or(|t| t.rcpts.is_empty())
                    {
                        // The chunk will be drained and refused: keep nothing.
                        self.body = Body::new(0);
                    }
                    self.receiver.start_bdat(size);
                    return Flow::Continue;
                }
                Step::Commit => {
                    let result = self.commit().await;
                    self.judge.end_transaction();
                    self.session.commit_done(result)
                }
                Step::Vrfy(arg) => {
                    let reply = vrfy(&self.generation.router, &arg);
                    self.session.vrfy_done(reply)
                }
                Step::StartTls(reply) => {
                    return if self.starttls(reply).await {
                        Flow::Continue
                    } else {
                        Flow::Close
                    };
                }
                Step::Auth { mechanism, initial } => self.auth(mechanism, initial).await,
            };
        }
    }

    /// STARTTLS (RFC 3207): reply, drop whatever the client pipelined
    /// after the command (it was sent in plaintext and must not be
    /// executed under TLS), handshake, and forget the session state.
    async fn starttls(&mut self, reply: Reply) -> bool {
        self.wire.push(&reply);
        if self.flush().await.is_err() {
            return false;
        }
        if !self.wire.inbuf.is_empty() {
            tracing::warn!(
                "{}: discarding {} bytes pipelined after STARTTLS (command injection attempt?)",
                self.client,
                self.wire.inbuf.len()
            );
            self.wire.inbuf.clear();
        }
        let plain = std::mem::replace(&mut self.wire.stream, Stream::Upgrading);
        let Some(upgraded) = self.shared.handshake(plain, &self.client).await else {
            return false;
        };
        self.tls = upgraded.tls_info();
        self.wire.stream = upgraded;
        self.session.tls_started();
        let tls = self.tls.as_ref().map(tls_pair);
        self.judge.tls_started(&mut self.session, tls);
        self.receiver = Receiver::new(self.generation.config.smtp.max_line_length);
        true
    }

    /// The address the client connected to (for SASL backends).
    fn local_ip(&self) -> std::net::IpAddr {
        let local = match &self.wire.stream {
            Stream::Plain(s) => s.local_addr().ok(),
            Stream::Tls(s) => s.get_ref().0.local_addr().ok(),
            Stream::Upgrading => None,
        };
        local
            .map(|a| a.ip())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }

    /// Writes a reply, delaying error replies once a client has made many
    /// errors (Postfix `smtpd_error_sleep_time`).
    async fn push_reply(&mut self, reply: Reply) {
        let smtp = &self.generation.config.smtp;
        let delayed = std::mem::take(&mut self.reply_delayed);
        if !reply.is_positive() && !delayed && self.session.errors() > smtp.error_delay_after {
            let delay: Duration = smtp.error_delay.0;
            let _ = self.flush().await;
            tokio::time::sleep(delay).await;
        }
        self.wire.push(&reply);
    }

    /// MAIL FROM: a new transaction, with its queue ID and an empty body,
    /// judged by the MAIL stage.
    async fn mail(&mut self, from: ReversePath, params: MailParams) -> Step {
        let id = new_queue_id();
        self.body = self.new_body();
        tracing::debug!("{id}: client={}, from=<{from}>", self.client);
        let decision = self
            .judge
            .mail(&self.generation, &self.session, &id, &from, &params)
            .await;
        self.session.mail_done(id, from, params, decision.into())
    }

    /// An empty body for the next message, counted against the memory all
    /// sessions share for content in transit.
    fn new_body(&self) -> Body {
        Body::with_budget(
            self.session.config().max_message_size,
            self.shared.buffered.clone(),
            self.generation.config.smtp.max_buffered.0,
        )
    }
}
