//! The tokio driver of one SMTP session: reads bytes into the receiver,
//! feeds events to the session state machine, makes the decisions the
//! session asks for (routing, relay control, spooling) and writes replies.
//!
//! Replies are buffered while pipelined input is pending and flushed before
//! every read, which is exactly what RFC 2920 asks of a server. Every write
//! has a deadline and unsent replies a bound ([`super::wire`]); the session
//! has a maximum age and command count ([`super::limits`]); a client that is
//! neither trusted nor authenticated may pipeline only what RFC 2920 allows;
//! each new transaction takes the current configuration generation; a panic
//! ends the session alone ([`super::contain`]).

mod auth;
mod guard;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::Shared;
use super::contain::catch_panic;
use super::generation::Generation;
use super::limits::Lifetime;
use super::offload;
use super::trace::{TraceInfo, missing_headers, received};
use super::wire::{Wire, WriteError};
use crate::message::{self, HeaderAction, header_field, limits};
use crate::plugin::{
    Decision as PluginDecision, EnvelopeInfo, Input, PluginSession, Score, SessionInfo, Stage,
    StageResult, Verdict, scoring,
};
use crate::route::{Destination, RouteError};
use crate::smtp::address::{ForwardPath, ReversePath};
use crate::smtp::command::{self, Command, EsmtpParams, MailParams, ParseOptions};
use crate::smtp::receiver::{Body, Event, Receiver};
use crate::smtp::reply::{Reply, r};
use crate::smtp::session::{Decision, Session, Step};
use crate::spool::{self, Client, Envelope, Recipient, new_queue_id};
use crate::tls::{Stream, TlsInfo};

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
    session: Session<Vec<Destination>>,
    receiver: Receiver,
    body: Body,
    /// `name[ip]` for log lines, like Postfix.
    client: String,
    /// The last command verb, for "lost connection after X" lines.
    last_verb: &'static str,
    /// Calls this generation's plugin chains.
    plugins: PluginSession,
    /// What plugins see of the session; shared with a stage's calls, so
    /// a stage costs no copy of it.
    info: Arc<SessionInfo>,
    /// Policy state of the session (connect), of the current greeting
    /// (HELO: replaced by each EHLO, forgotten at STARTTLS) and of the
    /// transaction.
    session_policy: Policy,
    helo_policy: Policy,
    tx_policy: Policy,
    /// Rejects held back until RCPT (delay_reject), by stage.
    connect_reject: Option<Reply>,
    helo_reject: Option<Reply>,
    /// The plugin that refused the current RCPT, for its log line.
    rcpt_plugin: Option<std::sync::Arc<str>>,
    /// The transaction's envelope as plugins see it, extended recipient
    /// by recipient instead of rebuilt at every RCPT.
    plugin_envelope: Option<Arc<EnvelopeInfo>>,
    /// A MAIL FROM was accepted and its transaction not yet ended.
    in_transaction: bool,
    /// The session's age and commands, against its limits.
    lifetime: Lifetime,
    /// The next error reply has had its delay already (an AUTH failure
    /// waits as long as a success would, no more).
    reply_delayed: bool,
}

/// What a message will be, besides delivered.
#[derive(Debug, Clone)]
enum Disposition {
    /// Accepted and dropped.
    Discard(String),
    /// Accepted and held.
    Quarantine(String),
}

/// Scores, header actions and disposition collected from plugins.
#[derive(Debug, Default)]
struct Policy {
    scores: Vec<Score>,
    actions: Vec<HeaderAction>,
    disposition: Option<Disposition>,
    /// Where each (entry, symbol) is in `scores`, and the actions taken:
    /// looked up by hash, not by scan (an RCPT stage runs per recipient).
    score_at: HashMap<(Arc<str>, String), usize>,
    seen: HashSet<HeaderAction>,
}

impl Policy {
    /// Takes in a stage's scores and actions. A chain entry's symbol
    /// counts once (with its largest points), and an action once: the RCPT
    /// stage runs for every recipient, and must not multiply a score (a
    /// DNSBL hit on the client) by the number of recipients.
    fn take(&mut self, scores: Vec<Score>, actions: Vec<HeaderAction>) {
        for s in scores {
            match self.score_at.get(&(s.entry.clone(), s.symbol.clone())) {
                Some(&i) if s.points.abs() > self.scores[i].points.abs() => self.scores[i] = s,
                Some(_) => {}
                None => {
                    let key = (s.entry.clone(), s.symbol.clone());
                    self.score_at.insert(key, self.scores.len());
                    self.scores.push(s);
                }
            }
        }
        for a in actions {
            if self.seen.insert(a.clone()) {
                self.actions.push(a);
            }
        }
    }
}

/// What of a refused command line goes into the log. MAIL, RCPT and
/// HELO/EHLO as they are (cut to 100 bytes); AUTH with its mechanism
/// only; anything else by its verb, when it looks like one: a line that is
/// not a command may be a client sending its password at the wrong moment.
fn loggable(line: &[u8]) -> String {
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
        let info = Arc::new(SessionInfo {
            id: new_queue_id(),
            listener: lgen.name.clone(),
            client_ip: peer.ip().to_string(),
            client_port: peer.port(),
            client_ptr: ptr.clone(),
            client_rdns: rdns,
            trusted: generation.router.is_trusted(peer.ip()),
            ..SessionInfo::default()
        });
        let plugins = PluginSession::new(generation.chains.clone());
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
            plugins,
            info,
            session_policy: Policy::default(),
            helo_policy: Policy::default(),
            tx_policy: Policy::default(),
            connect_reject: None,
            helo_reject: None,
            rcpt_plugin: None,
            in_transaction: false,
            plugin_envelope: None,
            lifetime: Lifetime::since(started),
            reply_delayed: false,
        };
        if conn.tls.is_some() {
            conn.session.tls_started();
            Arc::make_mut(&mut conn.info).tls = conn
                .tls
                .as_ref()
                .map(|t| (t.version.clone(), t.cipher.clone()));
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
        if self.connect_stage().await {
            self.run().await;
        }
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
        self.reply_and_close(r(
            421,
            4,
            3,
            0,
            "Error: internal error, closing transmission channel",
        ))
        .await;
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
                self.reply_and_close(r(
                    421,
                    4,
                    3,
                    2,
                    "Service shutting down, closing transmission channel",
                ))
                .await;
                return;
            }
            let read = tokio::select! {
                res = tokio::time::timeout(timeout, self.wire.read()) => res,
                _ = shutdown.changed(), if !busy => {
                    self.reply_and_close(r(421, 4, 3, 2, "Service shutting down, closing transmission channel")).await;
                    return;
                }
            };
            match read {
                Err(_) => {
                    tracing::info!("timeout after {} from {}", self.last_verb, self.client);
                    self.reply_and_close(r(421, 4, 4, 2, "Error: timeout exceeded"))
                        .await;
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

    /// Turns a receiver event into the session's next step, or into a
    /// reply that ends the session which the driver decided (and logged)
    /// itself.
    fn on_event(&mut self, event: Event) -> Result<Step, Reply> {
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
                    let decision = self.helo_stage(&greeting.name).await;
                    self.session.helo_done(greeting, decision)
                }
                Step::Mail(from, params) => self.mail(from, params).await,
                Step::Rcpt(to, params) => {
                    self.rcpt_plugin = None;
                    let decision = self.rcpt_decision(&to, &params).await;
                    if let Decision::Reject(reply) = &decision {
                        let by = self
                            .rcpt_plugin
                            .as_ref()
                            .map(|p| format!(" plugin={p}"))
                            .unwrap_or_default();
                        tracing::info!(
                            "{}: reject: RCPT from {}: {}; from=<{}> to=<{}> proto={} helo=<{}>{by}",
                            self.qid(),
                            self.client,
                            reply.summary(),
                            self.session
                                .transaction()
                                .map(|t| t.from.to_string())
                                .unwrap_or_default(),
                            to,
                            self.session.protocol(),
                            self.session
                                .greeting
                                .as_ref()
                                .map(|g| g.name.as_str())
                                .unwrap_or("")
                        );
                    }
                    self.session.rcpt_done(to, &params, decision)
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
                    self.end_transaction();
                    self.session.commit_done(result)
                }
                Step::Vrfy(arg) => {
                    let reply = self.vrfy(&arg);
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
        // The greeting is forgotten (RFC 3207), with what plugins said of
        // it; what they said of the connection stands, a delayed reject
        // included.
        self.helo_policy = Policy::default();
        self.helo_reject = None;
        self.session.delayed_reject = self.connect_reject.clone();
        let info = Arc::make_mut(&mut self.info);
        info.tls = self
            .tls
            .as_ref()
            .map(|t| (t.version.clone(), t.cipher.clone()));
        info.helo = None;
        info.auth_user = None;
        self.receiver = Receiver::new(self.generation.config.smtp.max_line_length);
        self.end_transaction();
        true
    }

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

    /// Whether an authenticated identity may use this envelope sender:
    /// its own address and its +tag forms, plus `sender_logins`
    /// ([`crate::sasl::sender_login`]).
    fn owns_sender(&self, identity: &str, sender: &ReversePath) -> bool {
        let ReversePath::Mailbox(m) = sender else {
            return true;
        };
        let config = &self.generation.config;
        crate::sasl::sender_login::owns(
            identity,
            &m.local,
            &m.domain,
            config.local.recipient_delimiter.chars().next(),
            &config.sender_logins,
            |d| self.generation.router.is_mydestination(d),
        )
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

    async fn mail(&mut self, from: ReversePath, params: MailParams) -> Step {
        // A transaction abandoned by RSET or a failed DATA ends here; the
        // instances made at connect/HELO serve the first transaction.
        if self.in_transaction {
            self.end_transaction();
        }
        self.in_transaction = true;
        let id = new_queue_id();
        self.body = self.new_body();
        tracing::debug!("{id}: client={}, from=<{from}>", self.client);
        if let Some(user) = self.session.auth_user.clone()
            && !self.owns_sender(&user, &from)
        {
            tracing::info!(
                "{id}: reject: MAIL from {}: <{from}> not owned by user {user}",
                self.client
            );
            return self.session.mail_done(
                id,
                from.clone(),
                params,
                Decision::Reject(r(
                    553,
                    5,
                    7,
                    1,
                    format!("<{from}>: Sender address rejected: not owned by user {user}"),
                )),
            );
        }
        let mut decision = Decision::Accept(None);
        if self.plugins.has(Stage::Mail) {
            let envelope = EnvelopeInfo {
                queue_id: id.clone(),
                mail_from: from.to_string(),
                mail_params: mail_params(&params),
                rcpt_to: Vec::new(),
            };
            let result = self
                .run_chain(Stage::Mail, &id, Some(Arc::new(envelope)), None, None)
                .await;
            if let Some(reply) = self.absorb(Stage::Mail, &id, result) {
                decision = if self.generation.config.smtp.delay_reject {
                    Decision::Accept(Some(reply))
                } else {
                    Decision::Reject(reply)
                };
            }
        }
        if let Some(reply) = self.judge_scores(Stage::Mail, &id) {
            decision = if self.generation.config.smtp.delay_reject {
                Decision::Accept(Some(reply))
            } else {
                Decision::Reject(reply)
            };
        }
        if matches!(decision, Decision::Reject(_)) {
            self.end_transaction();
        }
        self.session.mail_done(id, from, params, decision)
    }

    /// Runs the connect chain; false if the session must end right away.
    async fn connect_stage(&mut self) -> bool {
        if !self.plugins.has(Stage::Connect) {
            return true;
        }
        let context = self.info.id.clone();
        let result = self
            .run_chain(Stage::Connect, &context, None, None, None)
            .await;
        let reply = self
            .absorb(Stage::Connect, &context, result)
            .or_else(|| self.judge_scores(Stage::Connect, &context));
        let Some(reply) = reply else {
            return true;
        };
        if self.generation.config.smtp.delay_reject {
            self.connect_reject = Some(reply);
            self.session.delayed_reject = self.connect_reject.clone().or(self.helo_reject.clone());
            return true;
        }
        // Refused before the greeting: say why and hang up.
        self.wire.discard_out();
        self.reply_and_close(reply).await;
        false
    }

    /// Runs the HELO chain for a new greeting.
    async fn helo_stage(&mut self, name: &str) -> Decision<()> {
        // A greeting ends any transaction (the session reset it already):
        // its scores must not judge the greeting. (Before any MAIL there is
        // none: the instances made at connect serve the first one.)
        if self.in_transaction {
            self.end_transaction();
        }
        Arc::make_mut(&mut self.info).helo = Some(name.to_string());
        self.helo_reject = None;
        let previous = std::mem::take(&mut self.helo_policy);
        if self.plugins.has(Stage::Helo) {
            let context = self.info.id.clone();
            let result = self
                .run_chain(Stage::Helo, &context, None, None, None)
                .await;
            let reply = self
                .absorb(Stage::Helo, &context, result)
                .or_else(|| self.judge_scores(Stage::Helo, &context));
            if let Some(reply) = reply {
                if !self.generation.config.smtp.delay_reject {
                    self.session.delayed_reject = self.connect_reject.clone();
                    // Refused: the greeting the session keeps, and what
                    // plugins said of it, stand.
                    Arc::make_mut(&mut self.info).helo =
                        self.session.greeting.as_ref().map(|g| g.name.clone());
                    self.helo_policy = previous;
                    return Decision::Reject(reply);
                }
                self.helo_reject = Some(reply);
            }
        }
        self.session.delayed_reject = self.connect_reject.clone().or(self.helo_reject.clone());
        Decision::Accept(())
    }

    /// Calls a stage's chain with the session and, when given, envelope,
    /// recipient (with its RCPT parameters) and message.
    async fn run_chain(
        &mut self,
        stage: Stage,
        context: &str,
        envelope: Option<Arc<EnvelopeInfo>>,
        recipient: Option<(&str, &EsmtpParams)>,
        message: Option<std::sync::Arc<Vec<u8>>>,
    ) -> StageResult {
        if self.info.auth_user != self.session.auth_user {
            Arc::make_mut(&mut self.info).auth_user = self.session.auth_user.clone();
        }
        let input = Input {
            session: Some(self.info.clone()),
            envelope,
            recipient: recipient.map(|(to, _)| to),
            rcpt_params: recipient.map_or(&[], |(_, params)| params),
            message,
        };
        self.plugins.run(stage, &input, context).await
    }

    /// Takes a stage's scores and actions into the session or transaction
    /// policy, logs a decision, and returns the reply of a reject or
    /// tempfail. Discard/quarantine become the disposition.
    fn absorb(&mut self, stage: Stage, context: &str, result: StageResult) -> Option<Reply> {
        // Connect speaks for the session, HELO for the greeting, the rest
        // for the transaction.
        let policy = match stage {
            Stage::Connect => &mut self.session_policy,
            Stage::Helo => &mut self.helo_policy,
            _ => &mut self.tx_policy,
        };
        // A refused recipient leaves nothing in the message it is not
        // part of.
        let refused = stage == Stage::Rcpt
            && matches!(
                &result.decision,
                Some(PluginDecision {
                    verdict: Verdict::Reject(_) | Verdict::Tempfail(_),
                    ..
                })
            );
        if !refused {
            policy.take(result.scores, result.actions);
        }
        let PluginDecision { entry, verdict } = result.decision?;
        match verdict {
            Verdict::Reject(reply) | Verdict::Tempfail(reply) if stage == Stage::Rcpt => {
                // Logged by the RCPT reject line, which names the plugin.
                self.rcpt_plugin = Some(entry);
                Some(reply)
            }
            Verdict::Reject(reply) | Verdict::Tempfail(reply) => {
                tracing::info!(
                    "{context}: reject: {} from {}: {}; plugin={entry}",
                    stage.command(),
                    self.client,
                    reply.summary()
                );
                Some(reply)
            }
            Verdict::Discard(why) => {
                tracing::info!(
                    "{context}: discard: {} from {}: {why}; plugin={entry}",
                    stage.command(),
                    self.client
                );
                policy.disposition = Some(Disposition::Discard(format!("{why} (plugin {entry})")));
                None
            }
            Verdict::Quarantine(why) => {
                tracing::info!(
                    "{context}: hold: {} from {}: {why}; plugin={entry}",
                    stage.command(),
                    self.client
                );
                policy.disposition =
                    Some(Disposition::Quarantine(format!("{why} (plugin {entry})")));
                None
            }
            Verdict::Accept => {
                tracing::debug!(
                    "{context}: accept: {} from {}; plugin={entry}",
                    stage.command(),
                    self.client
                );
                None
            }
            Verdict::Continue => None,
        }
    }

    /// All scores of the session and the transaction.
    fn all_scores(&self) -> Vec<Score> {
        let mut all = self.session_policy.scores.clone();
        all.extend(self.helo_policy.scores.iter().cloned());
        all.extend(self.tx_policy.scores.iter().cloned());
        all
    }

    /// Judges the scores so far; logs and returns the reply if a threshold
    /// is reached.
    fn judge_scores(&self, stage: Stage, context: &str) -> Option<Reply> {
        let scores = self.all_scores();
        let reply = scoring::judge(&scores, &self.generation.config.scoring)?;
        tracing::info!(
            "{context}: score {:.2} ({}) at {}: {}",
            scoring::total(&scores),
            scoring::breakdown(&scores),
            stage.name(),
            reply.summary()
        );
        Some(reply)
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

    /// The current transaction's envelope for plugins: brought up to date
    /// by appending the recipients accepted since the last stage (no copy
    /// while no plugin call holds it), rebuilt only for a new transaction.
    fn plugin_envelope(&mut self) -> Option<Arc<EnvelopeInfo>> {
        let tx = self.session.transaction()?;
        let env = match self.plugin_envelope.take() {
            Some(mut env) if env.queue_id == tx.id && env.rcpt_to.len() <= tx.rcpts.len() => {
                let have = env.rcpt_to.len();
                if have < tx.rcpts.len() {
                    Arc::make_mut(&mut env)
                        .rcpt_to
                        .extend(tx.rcpts[have..].iter().map(|r| r.path.to_string()));
                }
                env
            }
            _ => Arc::new(EnvelopeInfo {
                queue_id: tx.id.clone(),
                mail_from: tx.from.to_string(),
                mail_params: mail_params(&tx.params),
                rcpt_to: tx.rcpts.iter().map(|r| r.path.to_string()).collect(),
            }),
        };
        self.plugin_envelope = Some(env.clone());
        Some(env)
    }

    /// Forgets the transaction's policy state and plugin instances.
    fn end_transaction(&mut self) {
        self.plugins.end_transaction();
        self.plugin_envelope = None;
        self.tx_policy = Policy::default();
        self.in_transaction = false;
    }

    /// Relay control and routing for one recipient. Relay control comes
    /// first and is not configurable away: only trusted networks and
    /// authenticated clients may send to domains that are neither ours nor
    /// in `[transport]`.
    async fn rcpt_decision(
        &mut self,
        to: &ForwardPath,
        params: &EsmtpParams,
    ) -> Decision<Vec<Destination>> {
        let decision = self.route(to);
        let Decision::Accept(dests) = decision else {
            return decision;
        };
        let Some(tx) = self.session.transaction() else {
            return Decision::Accept(dests);
        };
        let id = tx.id.clone();
        if self.plugins.has(Stage::Rcpt) {
            let envelope = self.plugin_envelope();
            let rcpt = to.to_string();
            let result = self
                .run_chain(Stage::Rcpt, &id, envelope, Some((&rcpt, params)), None)
                .await;
            if let Some(reply) = self.absorb(Stage::Rcpt, &id, result) {
                return Decision::Reject(reply);
            }
        }
        match self.judge_scores(Stage::Rcpt, &id) {
            Some(reply) => Decision::Reject(reply),
            None => Decision::Accept(dests),
        }
    }

    /// Relay control, then routing. Not configurable away, and before any
    /// plugin: a plugin can only make Postern stricter.
    fn route(&self, to: &ForwardPath) -> Decision<Vec<Destination>> {
        let router = &self.generation.router;
        if let ForwardPath::Mailbox(m) = to
            && !router.accepts_domain(&m.domain)
            && !router.is_trusted(self.peer.ip())
            && self.session.auth_user.is_none()
        {
            return Decision::Reject(r(554, 5, 7, 1, format!("<{m}>: Relay access denied")));
        }
        match router.resolve(to) {
            Ok(dests) => Decision::Accept(dests),
            Err(RouteError::UnknownUser) => Decision::Reject(r(
                550,
                5,
                1,
                1,
                format!(
                    "<{to}>: Recipient address rejected: User unknown in local recipient table"
                ),
            )),
            Err(RouteError::AliasLoop) => Decision::Reject(r(
                550,
                5,
                4,
                6,
                format!("<{to}>: Recipient address rejected: alias loop"),
            )),
        }
    }

    fn vrfy(&self, arg: &str) -> Reply {
        let addr = arg.trim().trim_start_matches('<').trim_end_matches('>');
        let Ok(path) = crate::smtp::address::parse_forward_path(addr, true) else {
            return r(501, 5, 1, 3, "Bad recipient address syntax");
        };
        let router = &self.generation.router;
        if let ForwardPath::Mailbox(m) = &path
            && !router.is_local_domain(&m.domain)
        {
            return r(
                252,
                2,
                0,
                0,
                "Cannot VRFY user, but will accept message and attempt delivery",
            );
        }
        match router.resolve(&path) {
            Ok(_) => r(250, 2, 0, 0, format!("<{path}>")),
            Err(_) => r(
                550,
                5,
                1,
                1,
                format!("<{path}>: Recipient address rejected: User unknown"),
            ),
        }
    }

    /// Runs the data chain, judges the scores, applies header actions, and
    /// makes the message durable (or discards or holds it).
    async fn commit(&mut self) -> Result<Reply, Reply> {
        let Some(tx) = self.session.transaction() else {
            return Err(r(503, 5, 5, 1, "Error: no transaction"));
        };
        let id = tx.id.clone();
        // The content's share of the in-memory budget is given back when
        // this returns: the message is on disk (or refused) by then.
        let (content, _charge) = self.body.take();
        // The header checks of the end of DATA, in one scan (off the async
        // workers for a large message), before any plugin spends time on
        // the message.
        let (mut content, found) = offload::by_size(content, |c| {
            let found = message::inspect(&c);
            (c, found)
        })
        .await
        .map_err(|e| self.internal_error(&id, "header scan", &e))?;
        limits::enforce(
            &found,
            self.generation.config.smtp.header_limits(),
            &id,
            &self.client,
        )?;
        let hopcount_limit = self.generation.config.smtp.hopcount_limit;
        if found.received > hopcount_limit {
            // Postfix cleanup: "message rejected: hopcount exceeded".
            let reply = r(554, 5, 4, 6, "Error: too many hops");
            tracing::warn!(
                "{id}: reject: END-OF-MESSAGE from {}: {}; hopcount exceeded: {} Received: fields, hopcount_limit {hopcount_limit}; from=<{}>",
                self.client,
                reply.summary(),
                found.received,
                tx.from
            );
            return Err(reply);
        }
        if self.plugins.has(Stage::Data) {
            let envelope = self.plugin_envelope();
            let shared = std::sync::Arc::new(content);
            let result = self
                .run_chain(Stage::Data, &id, envelope, None, Some(shared.clone()))
                .await;
            // Plugins only borrowed the content; take it back without a copy.
            content = std::sync::Arc::try_unwrap(shared).unwrap_or_else(|a| (*a).clone());
            if let Some(reply) = self.absorb(Stage::Data, &id, result) {
                return Err(reply);
            }
        }
        // No plugin runs again in this transaction: its instances go now,
        // not after the fsync wait, so that fewer are alive at once (they
        // stay hot in the CPU caches and pooling slots get reused).
        self.plugins.end_transaction();
        if let Some(reply) = self.judge_scores(Stage::Data, &id) {
            return Err(reply);
        }
        let Some(tx) = self.session.transaction() else {
            return Err(r(503, 5, 5, 1, "Error: no transaction"));
        };
        let disposition = self
            .tx_policy
            .disposition
            .clone()
            .or_else(|| self.helo_policy.disposition.clone())
            .or_else(|| self.session_policy.disposition.clone());
        if let Some(Disposition::Discard(why)) = &disposition {
            tracing::info!(
                "{id}: client={}, from=<{}>, size={}, nrcpt={}: discarded: {why}",
                self.client,
                tx.from,
                content.len(),
                tx.rcpts.len()
            );
            return Ok(r(250, 2, 0, 0, format!("Ok: queued as {id}")));
        }
        let delimiter = self.generation.router.delimiter();
        let mut recipients: Vec<Recipient> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for rcpt in &tx.rcpts {
            for dest in &rcpt.route {
                // Duplicate elimination, like Postfix: one copy per mailbox.
                if seen.insert(dest) {
                    recipients.push(Recipient {
                        address: dest.address(delimiter),
                        original: rcpt.path.to_string(),
                        orcpt: rcpt.dsn.orcpt.clone(),
                        notify: rcpt.dsn.notify,
                    });
                }
            }
        }
        // In one pass over the header section (off the async workers for a
        // large message): fields only Postern may write go (Return-Path is
        // added at delivery, as Postfix drops incoming ones; a score header
        // from outside must not pass for ours with filters that trust it),
        // plugins' changes apply, and content that starts (or whose header
        // section goes on) with a line that is not a header field gets its
        // empty line, or it could continue the trace fields prepended to it.
        let actions: Vec<HeaderAction> = self
            .session_policy
            .actions
            .iter()
            .chain(self.helo_policy.actions.iter())
            .chain(self.tx_policy.actions.iter())
            .cloned()
            .collect();
        let edited = {
            let actions = actions.clone();
            offload::by_size(content, move |c| message::edit(c, &found, &actions))
                .await
                .map_err(|e| self.internal_error(&id, "header edit", &e))?
        };
        let content = edited.content;
        if let Some(at) = found.missing_separator {
            tracing::info!(
                "{id}: no empty line after the header section: inserted one at byte {at}"
            );
        }
        if edited.host_only_removed > 0 {
            tracing::info!(
                "{id}: removed {} Return-Path/X-Postern-Score field(s) sent by the client",
                edited.host_only_removed
            );
        }
        let single = match tx.rcpts.as_slice() {
            [only] => Some(only.path.to_string()),
            _ => None,
        };
        let hostname = &self.generation.config.server.hostname;
        let tls_comment = self.tls.as_ref().map(TlsInfo::received_comment);
        let mut prepend = received(&TraceInfo {
            helo: self.session.greeting.as_ref().map(|g| g.name.as_str()),
            ptr: self.session.client_ptr.as_deref(),
            ip: self.peer.ip(),
            hostname,
            protocol: self.session.protocol(),
            tls: tls_comment.as_deref(),
            id: &id,
            single_rcpt: single.as_deref(),
            utf8: tx.params.smtputf8,
        });
        let scores = self.all_scores();
        if !scores.is_empty() {
            tracing::info!(
                "{id}: score {:.2} ({})",
                scoring::total(&scores),
                scoring::breakdown(&scores)
            );
            if self.generation.config.scoring.add_header {
                prepend.push_str(&header_field(
                    "X-Postern-Score",
                    &scoring::header_value(&scores),
                ));
            }
        }
        prepend.push_str(&edited.added);
        if !actions.is_empty() {
            let what: Vec<String> = actions.iter().map(HeaderAction::describe).collect();
            tracing::info!("{id}: header changes by plugins: {}", what.join(", "));
        }
        prepend.push_str(&missing_headers(
            edited.message_id,
            edited.date,
            &id,
            hostname,
        ));
        let listener = self
            .generation
            .listener(self.listener)
            .map(|l| l.name.clone())
            .unwrap_or_default();
        let env = Envelope {
            version: spool::format::ENVELOPE_VERSION,
            id: id.clone(),
            arrival: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            sender: tx.from.to_string(),
            recipients,
            prepend,
            client: Client {
                ip: self.peer.ip().to_string(),
                ptr: self.session.client_ptr.clone(),
                helo: self.session.greeting.as_ref().map(|g| g.name.clone()),
                auth_user: self.session.auth_user.clone(),
                listener,
            },
            smtputf8: tx.params.smtputf8,
            ret: tx.params.ret,
            envid: tx.params.envid.clone(),
        };
        // A success report is made from the queue, after the delivery.
        let direct = disposition.is_none()
            && self.generation.config.queue.direct_delivery
            && env.recipients.iter().all(|r| !r.notify().success)
            && tx
                .rcpts
                .iter()
                .flat_map(|r| &r.route)
                .all(|d| matches!(d, Destination::Local { .. }));
        if direct {
            if let Some(journaled) = self
                .shared
                .journaled
                .clone()
                .filter(|j| self.generation.config.queue.journal && j.healthy())
            {
                return self.deliver_journaled(&journaled, content, env).await;
            }
            return self.deliver_now(content, env).await;
        }
        let held = match &disposition {
            Some(Disposition::Quarantine(why)) => Some(why.clone()),
            _ => None,
        };
        let status = held
            .as_ref()
            .map_or_else(|| "queued".to_string(), |why| format!("held: {why}"));
        let line = self.arrival(&env, content.len(), &status);
        let result = match held {
            Some(why) => self.shared.spool.commit_held(content, env, why).await,
            None => self.shared.spool.commit(content, env).await,
        };
        match result {
            Ok(()) => {
                tracing::info!("{line}");
                if disposition.is_none() {
                    self.shared.queue.queued(id.clone());
                }
                Ok(r(250, 2, 0, 0, format!("Ok: queued as {id}")))
            }
            Err(e) => Err(self.queue_failed(&id, &e)),
        }
    }

    /// Logs a failure of the host's own work on a message (a bug: a task
    /// that panicked); the client gets a 4xx and retries.
    fn internal_error(&self, id: &str, what: &str, e: &dyn std::fmt::Display) -> Reply {
        tracing::error!(
            "{id}: BUG: {what} failed for a message from {}: {e}",
            self.client
        );
        r(451, 4, 3, 0, "Error: internal error, try again later")
    }

    /// Logs a spool (or journal) failure; the client gets a 4xx and
    /// retries.
    fn queue_failed(&self, id: &str, e: &dyn std::fmt::Display) -> Reply {
        tracing::error!("{id}: cannot queue message from {}: {e}", self.client);
        r(
            451,
            4,
            3,
            0,
            "Error: queue file write error, try again later",
        )
    }

    /// The log line of a message's arrival (Postfix's `qmgr: from=` line).
    fn arrival(&self, env: &Envelope, size: usize, status: &str) -> String {
        format!(
            "{}: client={}, from=<{}>, size={size}, nrcpt={}, proto={} ({status})",
            env.id,
            self.client,
            env.sender,
            env.recipients.len(),
            self.session.protocol()
        )
    }

    /// Journaled direct delivery: every recipient is a local mailbox; the
    /// message is durable in the journal before the 250 and goes into the
    /// Maildirs right after ([`crate::deliver::journaled`]).
    async fn deliver_journaled(
        &mut self,
        journaled: &crate::deliver::journaled::Journaled,
        content: Vec<u8>,
        env: Envelope,
    ) -> Result<Reply, Reply> {
        let id = env.id.clone();
        let line = self.arrival(&env, content.len(), "journaled");
        let router = self.generation.router.clone();
        let hostname = self.generation.config.server.hostname.clone();
        let durable = || tracing::info!("{line}");
        match journaled
            .accept(content, env, router, hostname, durable)
            .await
        {
            Ok(()) => Ok(r(250, 2, 0, 0, format!("Ok: queued as {id}"))),
            Err(e) if spool::is_storage_full(&e) => Err(self.storage_full(&id, &e)),
            Err(e) => Err(self.queue_failed(&id, &e)),
        }
    }

    /// Direct delivery: every recipient is a local mailbox, so the message
    /// goes into the Maildirs (fsynced) before the 250; any recipient that
    /// cannot be delivered now is queued with the others marked done.
    async fn deliver_now(&mut self, content: Vec<u8>, env: Envelope) -> Result<Reply, Reply> {
        let id = env.id.clone();
        tracing::info!("{}", self.arrival(&env, content.len(), "delivering"));
        let router = self.generation.router.clone();
        let syncer = self.shared.syncer.clone();
        let hostname = self.generation.config.server.hostname.clone();
        let delivered = tokio::task::spawn_blocking(move || {
            let mut state = spool::DeliveryState::default();
            let deferred = crate::deliver::deliver_pending(
                &crate::deliver::agent::LocalOnly,
                &router,
                &env,
                &content,
                &mut state,
                &hostname,
                crate::deliver::Durability::Synced(&syncer),
            )
            .left();
            (env, content, state, deferred)
        })
        .await;
        let (env, content, state, deferred) = match delivered {
            Ok(x) => x,
            Err(e) => {
                tracing::error!("{id}: delivery task failed: {e}");
                return Err(r(
                    451,
                    4,
                    3,
                    0,
                    "Error: local delivery failed, try again later",
                ));
            }
        };
        let Some(last_error) = deferred else {
            return Ok(r(250, 2, 0, 0, format!("Ok: queued as {id}")));
        };
        let state = state.first_attempt_failed(last_error);
        match self
            .shared
            .spool
            .commit_with_state(content, env, state)
            .await
        {
            Ok(()) => {
                tracing::info!("{id}: queued for retry");
                self.shared.queue.queued(id.clone());
                Ok(r(250, 2, 0, 0, format!("Ok: queued as {id}")))
            }
            Err(e) if e.is_storage_full() => Err(self.storage_full(&id, &e)),
            Err(e) => Err(self.queue_failed(&id, &e)),
        }
    }

    /// No room on disk for the message (or for the journal's messages in
    /// waiting): the client is told to come back later, as Postfix does
    /// when its queue file system is full.
    fn storage_full(&self, id: &str, e: &dyn std::fmt::Display) -> Reply {
        tracing::warn!("{id}: cannot queue message from {}: {e}", self.client);
        r(452, 4, 3, 1, "Error: insufficient system storage")
    }
}

/// MAIL FROM parameters as plugins see them.
fn mail_params(p: &MailParams) -> Vec<(String, Option<String>)> {
    let mut v = Vec::new();
    if let Some(size) = p.size {
        v.push(("SIZE".to_string(), Some(size.to_string())));
    }
    if p.body == crate::smtp::command::Body::EightBitMime {
        v.push(("BODY".to_string(), Some("8BITMIME".to_string())));
    }
    if p.smtputf8 {
        v.push(("SMTPUTF8".to_string(), None));
    }
    if let Some(auth) = &p.auth {
        v.push(("AUTH".to_string(), Some(auth.clone())));
    }
    v
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
