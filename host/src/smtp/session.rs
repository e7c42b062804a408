//! The SMTP session as a sans-IO state machine.
//!
//! [`Session::command`] takes a parsed command and answers with a [`Step`]:
//! either a reply to send, or a request for the caller to decide something
//! (routing, policy, spooling) and report back through the matching
//! `*_done` method. One file per stage holds those methods (`ehlo.rs`,
//! `mail.rs`, `rcpt.rs`, `data.rs`); this file holds the shared state and
//! the commands that need no decision.

use std::net::IpAddr;
use std::sync::Arc;

use super::address::{ForwardPath, ReversePath};
use super::command::{Command, CommandError, EsmtpParams, MailParams};
use super::reply::{Reply, r};
use crate::dsn::RcptDsn;

/// Protocol settings of one listener; the caller builds it from the config.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our host name for the greeting, EHLO and trace headers.
    pub hostname: String,
    /// SIZE limit in octets.
    pub max_message_size: u64,
    /// Recipients accepted per transaction.
    pub max_recipients: usize,
    /// Refuse MAIL before HELO/EHLO.
    pub helo_required: bool,
    /// Answer VRFY instead of refusing it.
    pub vrfy: bool,
    /// Errors after which the session is closed.
    pub max_errors: u32,
    /// STARTTLS can be offered on this listener.
    pub starttls: bool,
    /// MAIL is refused until TLS is active (`tls = "encrypt"`).
    pub tls_required: bool,
    /// AUTH mechanisms offered (empty: no AUTH).
    pub auth_mechanisms: Vec<String>,
    /// AUTH is only offered and accepted under TLS.
    pub auth_requires_tls: bool,
    /// MAIL is refused until the client has authenticated (submission).
    pub auth_required: bool,
}

impl Default for SessionConfig {
    fn default() -> SessionConfig {
        SessionConfig {
            hostname: "localhost".into(),
            max_message_size: 10 * 1024 * 1024,
            max_recipients: 1000,
            helo_required: false,
            vrfy: false,
            max_errors: 20,
            starttls: false,
            tls_required: false,
            auth_mechanisms: Vec::new(),
            auth_requires_tls: true,
            auth_required: false,
        }
    }
}

/// The client's greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// The name given in HELO/EHLO.
    pub name: String,
    /// True for EHLO.
    pub esmtp: bool,
}

/// An accepted recipient and whatever the caller attached to it (its route).
#[derive(Debug, Clone)]
pub struct AcceptedRcpt<R> {
    /// The address as given in RCPT TO.
    pub path: ForwardPath,
    /// The caller's routing result.
    pub route: R,
    /// Its DSN parameters (NOTIFY, ORCPT).
    pub dsn: RcptDsn,
}

/// One mail transaction (MAIL .. end of data).
#[derive(Debug, Clone)]
pub struct Transaction<R> {
    /// Queue ID assigned at MAIL FROM.
    pub id: String,
    /// The reverse path.
    pub from: ReversePath,
    /// MAIL FROM parameters.
    pub params: MailParams,
    /// Recipients accepted so far.
    pub rcpts: Vec<AcceptedRcpt<R>>,
    /// A MAIL-stage rejection held back until RCPT (delay_reject).
    pub delayed_reject: Option<Reply>,
    /// A BDAT transfer is in progress.
    pub(super) bdat: bool,
}

/// What kind of message content is being received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Content {
    /// Not receiving content.
    None,
    /// DATA until CRLF.CRLF.
    Data,
    /// A BDAT chunk; `last` marks the final one; `discard` means the
    /// transaction already failed and the chunk is only drained.
    Bdat {
        last: bool,
        discard: bool,
        size: u64,
    },
}

/// What the caller must do next.
#[derive(Debug)]
#[must_use]
pub enum Step {
    /// Send this reply and go on.
    Reply(Reply),
    /// Send this reply and close the connection.
    Close(Reply),
    /// Check the HELO/EHLO name, then call [`Session::helo_done`].
    Helo(Greeting),
    /// Check the sender, then call [`Session::mail_done`].
    Mail(ReversePath, MailParams),
    /// Route and check the recipient (with its ESMTP parameters), then
    /// call [`Session::rcpt_done`].
    Rcpt(ForwardPath, EsmtpParams),
    /// Send this 354 reply and switch the receiver to DATA mode.
    StartData(Reply),
    /// Switch the receiver to BDAT mode for `size` octets (no reply yet).
    StartBdat(u64),
    /// The message is complete: run content checks, spool it, then call
    /// [`Session::commit_done`].
    Commit,
    /// Look up the VRFY argument and reply.
    Vrfy(String),
    /// Send this 220 reply, then start the TLS handshake; discard any
    /// input that was pipelined after STARTTLS.
    StartTls(Reply),
    /// Run the SASL exchange for this mechanism.
    Auth {
        /// Mechanism name in upper case.
        mechanism: String,
        /// Initial response, if sent with the command.
        initial: Option<String>,
    },
}

/// A decision the caller reports back for HELO, MAIL or RCPT.
#[derive(Debug, Clone)]
pub enum Decision<T> {
    /// Accept, with the caller's data (e.g. the route of a recipient).
    Accept(T),
    /// Refuse now with this reply.
    Reject(Reply),
}

/// State of one SMTP session; `R` is the caller's per-recipient route.
#[derive(Debug)]
pub struct Session<R> {
    pub(super) cfg: Arc<SessionConfig>,
    /// The client's IP address.
    pub client_ip: IpAddr,
    /// The client's verified reverse DNS name, if any.
    pub client_ptr: Option<String>,
    /// HELO/EHLO, once given.
    pub greeting: Option<Greeting>,
    /// TLS is active on the connection.
    pub tls_active: bool,
    /// The authenticated SASL identity.
    pub auth_user: Option<String>,
    /// A connect/HELO-stage rejection held back until RCPT.
    pub delayed_reject: Option<Reply>,
    pub(super) tx: Option<Transaction<R>>,
    pub(super) content: Content,
    errors: u32,
    /// Messages accepted in this session.
    pub messages: u32,
}

impl<R> Session<R> {
    /// A new session for a client.
    pub fn new(cfg: Arc<SessionConfig>, client_ip: IpAddr, client_ptr: Option<String>) -> Self {
        Session {
            cfg,
            client_ip,
            client_ptr,
            greeting: None,
            tls_active: false,
            auth_user: None,
            delayed_reject: None,
            tx: None,
            content: Content::None,
            errors: 0,
            messages: 0,
        }
    }

    /// The protocol settings.
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// Takes the settings of a new configuration generation (between
    /// transactions: what a transaction was accepted under stays).
    pub fn set_config(&mut self, cfg: Arc<SessionConfig>) {
        self.cfg = cfg;
    }

    /// True when the client must wait for the reply to `cmd` before it
    /// sends anything more (RFC 2920 §3.1): EHLO, HELO, DATA, VRFY, EXPN,
    /// NOOP and QUIT end a pipelined group; and before an EHLO reply has
    /// offered PIPELINING every command does (Postfix's check for
    /// `smtpd_forbid_unauth_pipelining`). Not BDAT, whose chunk follows
    /// it (the end of a LAST chunk is checked instead, see
    /// [`Session::in_last_chunk`]), nor STARTTLS, after which pipelined
    /// input is discarded unread (RFC 3207), nor AUTH, which RFC 4954 §4
    /// lets a one-round mechanism's initial response be followed.
    pub fn must_wait(&self, cmd: &Command) -> bool {
        match cmd {
            Command::Ehlo(_)
            | Command::Helo(_)
            | Command::Data
            | Command::Vrfy(_)
            | Command::Expn
            | Command::Noop
            | Command::Quit => true,
            Command::Bdat { .. } | Command::StartTls | Command::Auth { .. } => false,
            Command::Mail(..) | Command::Rcpt(..) | Command::Rset | Command::Help => {
                !self.greeting.as_ref().is_some_and(|g| g.esmtp)
            }
        }
    }

    /// True while the chunk being received is a `BDAT … LAST` one: after
    /// it the client must wait for the reply (RFC 3030 ends the message
    /// there).
    pub fn in_last_chunk(&self) -> bool {
        matches!(self.content, Content::Bdat { last: true, .. })
    }

    /// The 220 greeting.
    pub fn greeting_reply(&self) -> Reply {
        Reply::plain(
            220,
            vec![format!("{} ESMTP Postern", self.cfg.hostname).into()],
        )
    }

    /// The transaction in progress, if any.
    pub fn transaction(&self) -> Option<&Transaction<R>> {
        self.tx.as_ref()
    }

    /// Number of errors so far.
    pub fn errors(&self) -> u32 {
        self.errors
    }

    /// The protocol name for `Received:` (RFC 3848).
    pub fn protocol(&self) -> &'static str {
        let esmtp = self.greeting.as_ref().is_some_and(|g| g.esmtp);
        match (esmtp, self.tls_active, self.auth_user.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        }
    }

    /// Counts a failed command and turns the reply into a disconnect once
    /// the error limit is reached.
    pub fn fail(&mut self, reply: Reply) -> Step {
        self.errors += 1;
        if self.errors >= self.cfg.max_errors {
            tracing::debug!("error limit reached after: {}", reply.summary());
            return Step::Close(r(
                421,
                4,
                7,
                0,
                format!("{} Error: too many errors", self.cfg.hostname),
            ));
        }
        Step::Reply(reply)
    }

    /// Wraps a reply produced by the caller: failures count as errors.
    pub fn answer(&mut self, reply: Reply) -> Step {
        if reply.is_positive() {
            Step::Reply(reply)
        } else {
            self.fail(reply)
        }
    }

    /// Handles a command line that the parser refused.
    pub fn bad_command(&mut self, err: &CommandError) -> Step {
        let reply = err.reply();
        if matches!(err, CommandError::Forbidden) {
            return Step::Close(reply);
        }
        self.fail(reply)
    }

    /// Handles a command line that exceeded the length limit.
    pub fn line_too_long(&mut self) -> Step {
        self.fail(r(500, 5, 5, 2, "Error: line too long"))
    }

    /// Handles one parsed command.
    pub fn command(&mut self, cmd: Command) -> Step {
        if self.content != Content::None {
            // The caller must not parse commands while content is expected.
            return Step::Close(r(421, 4, 3, 0, "Internal error: command during content"));
        }
        // tls = "encrypt" (Postfix's level encrypt): before STARTTLS only
        // EHLO, HELO, STARTTLS, NOOP, RSET and QUIT. MAIL and AUTH give the
        // same answer themselves; BDAT is left to its own path, which
        // reads and drops its chunk (a 530 here would leave the chunk to be
        // read as commands).
        if self.cfg.tls_required
            && !self.tls_active
            && matches!(
                cmd,
                Command::Rcpt(..)
                    | Command::Data
                    | Command::Vrfy(_)
                    | Command::Expn
                    | Command::Help
            )
        {
            return self.fail(r(530, 5, 7, 0, "Must issue a STARTTLS command first"));
        }
        match cmd {
            Command::Ehlo(name) => self.ehlo(name, true),
            Command::Helo(name) => self.ehlo(name, false),
            Command::Mail(from, params) => self.mail(from, params),
            Command::Rcpt(to, params) => self.rcpt(to, params),
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                self.reset();
                Step::Reply(r(250, 2, 0, 0, "Ok"))
            }
            Command::Noop => Step::Reply(r(250, 2, 0, 0, "Ok")),
            Command::Quit => Step::Close(r(221, 2, 0, 0, "Bye")),
            Command::Help => {
                // Only what this listener offers.
                let mut text =
                    String::from("Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP");
                if self.cfg.vrfy {
                    text.push_str(" VRFY");
                }
                if self.cfg.starttls && !self.tls_active {
                    text.push_str(" STARTTLS");
                }
                if self.auth_offered() {
                    text.push_str(" AUTH");
                }
                Step::Reply(r(214, 2, 0, 0, text))
            }
            Command::Vrfy(arg) if self.cfg.vrfy => Step::Vrfy(arg),
            Command::Vrfy(_) => self.fail(r(502, 5, 5, 1, "VRFY command is disabled")),
            Command::Expn => self.fail(r(502, 5, 5, 1, "EXPN command is disabled")),
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial),
        }
    }

    /// Drops the transaction (RSET, EHLO, after a message).
    pub fn reset(&mut self) {
        self.tx = None;
        self.content = Content::None;
    }

    fn starttls(&mut self) -> Step {
        if self.tls_active {
            return self.fail(r(554, 5, 5, 1, "Error: TLS already active"));
        }
        if !self.cfg.starttls {
            return self.fail(r(502, 5, 5, 1, "Error: command not implemented"));
        }
        if self.tx.is_some() {
            return self.fail(r(503, 5, 5, 1, "Error: STARTTLS during a mail transaction"));
        }
        Step::StartTls(r(220, 2, 0, 0, "Ready to start TLS"))
    }

    /// Records that TLS is up: RFC 3207 §4.2 requires forgetting everything
    /// learned before, including the greeting.
    pub fn tls_started(&mut self) {
        self.tls_active = true;
        self.greeting = None;
        self.auth_user = None;
        self.delayed_reject = None;
        self.reset();
    }

    /// True if AUTH is offered in the current state.
    pub fn auth_offered(&self) -> bool {
        !self.cfg.auth_mechanisms.is_empty() && (self.tls_active || !self.cfg.auth_requires_tls)
    }

    fn auth(&mut self, mechanism: String, initial: Option<String>) -> Step {
        if self.cfg.auth_mechanisms.is_empty() {
            return self.fail(r(502, 5, 5, 1, "Error: authentication not enabled"));
        }
        // tls = "encrypt": as for MAIL (Postfix's reply at level encrypt).
        if self.cfg.tls_required && !self.tls_active {
            return self.fail(r(530, 5, 7, 0, "Must issue a STARTTLS command first"));
        }
        if !self.auth_offered() {
            return self.fail(r(
                538,
                5,
                7,
                11,
                "Encryption required for requested authentication mechanism",
            ));
        }
        if self.greeting.as_ref().is_none_or(|g| !g.esmtp) {
            return self.fail(r(503, 5, 5, 1, "Error: send EHLO first"));
        }
        if self.auth_user.is_some() {
            return self.fail(r(503, 5, 5, 1, "Error: already authenticated"));
        }
        if self.tx.is_some() {
            return self.fail(r(
                503,
                5,
                5,
                1,
                "Error: AUTH not allowed during a mail transaction",
            ));
        }
        if !self.cfg.auth_mechanisms.contains(&mechanism) {
            return self.fail(r(504, 5, 5, 4, "Unrecognized authentication type"));
        }
        Step::Auth { mechanism, initial }
    }

    /// Records a successful AUTH.
    pub fn authenticated(&mut self, user: String) -> Reply {
        self.auth_user = Some(user);
        r(235, 2, 7, 0, "Authentication successful")
    }

    /// The 250 reply to VRFY once the caller knows the answer.
    pub fn vrfy_done(&mut self, reply: Reply) -> Step {
        self.answer(reply)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::smtp::command::{ParseOptions, parse};

    pub(crate) fn session(cfg: SessionConfig) -> Session<()> {
        Session::new(Arc::new(cfg), "127.0.0.1".parse().unwrap(), None)
    }

    pub(crate) fn cmd(s: &mut Session<()>, line: &str) -> Step {
        match parse(line.as_bytes(), ParseOptions::default()) {
            Ok(c) => s.command(c),
            Err(e) => s.bad_command(&e),
        }
    }

    pub(crate) fn code(step: &Step) -> u16 {
        match step {
            Step::Reply(r) | Step::Close(r) | Step::StartData(r) | Step::StartTls(r) => r.code,
            _ => 0,
        }
    }

    #[test]
    fn auth_before_tls() {
        let cfg = |tls_required, auth_requires_tls| SessionConfig {
            starttls: true,
            tls_required,
            auth_requires_tls,
            auth_mechanisms: vec!["PLAIN".into()],
            ..SessionConfig::default()
        };
        // tls = "encrypt": Postfix's reply, whatever auth_only_with_tls says.
        let mut s = session(cfg(true, false));
        let _ = cmd(&mut s, "EHLO client.test");
        let step = cmd(&mut s, "AUTH PLAIN");
        assert!(matches!(&step, Step::Reply(r) if r.code == 530), "{step:?}");
        // Nor anything else but EHLO, HELO, STARTTLS, NOOP, RSET, QUIT.
        for line in [
            "HELP",
            "VRFY alice",
            "EXPN list",
            "RCPT TO:<a@b.test>",
            "DATA",
        ] {
            assert_eq!(code(&cmd(&mut s, line)), 530, "{line}");
        }
        assert_eq!(code(&cmd(&mut s, "NOOP")), 250);
        // tls = "may" with auth_only_with_tls: the RFC 4954 reply.
        let mut s = session(cfg(false, true));
        let _ = cmd(&mut s, "EHLO client.test");
        assert_eq!(code(&cmd(&mut s, "AUTH PLAIN")), 538);
    }

    #[test]
    fn error_limit_disconnects() {
        let mut s = session(SessionConfig {
            max_errors: 3,
            ..SessionConfig::default()
        });
        assert_eq!(code(&cmd(&mut s, "FOO")), 500);
        assert_eq!(code(&cmd(&mut s, "BAR")), 500);
        assert!(matches!(cmd(&mut s, "BAZ"), Step::Close(r) if r.code == 421));
    }

    #[test]
    fn what_must_not_be_pipelined() {
        let parsed = |line: &str| parse(line.as_bytes(), ParseOptions::default()).unwrap();
        let mut s = session(SessionConfig::default());
        // No PIPELINING offered yet: every command waits for its reply.
        for line in ["MAIL FROM:<a@b.test>", "RSET", "HELO c.test", "NOOP"] {
            assert!(s.must_wait(&parsed(line)), "{line}");
        }
        let Step::Helo(g) = cmd(&mut s, "EHLO c.test") else {
            panic!("expected Helo step");
        };
        let _ = s.helo_done(g, Decision::Accept(()));
        for line in ["MAIL FROM:<a@b.test>", "RCPT TO:<a@b.test>", "RSET", "HELP"] {
            assert!(!s.must_wait(&parsed(line)), "{line}");
        }
        for line in [
            "EHLO c.test",
            "HELO c.test",
            "DATA",
            "NOOP",
            "QUIT",
            "VRFY a",
        ] {
            assert!(s.must_wait(&parsed(line)), "{line}");
        }
        for line in ["BDAT 10 LAST", "STARTTLS", "AUTH PLAIN AGEAYg=="] {
            assert!(!s.must_wait(&parsed(line)), "{line}");
        }
        // HELO offers no PIPELINING.
        let Step::Helo(g) = cmd(&mut s, "HELO c.test") else {
            panic!("expected Helo step");
        };
        let _ = s.helo_done(g, Decision::Accept(()));
        assert!(s.must_wait(&parsed("MAIL FROM:<a@b.test>")));
    }

    #[test]
    fn simple_commands() {
        let mut s = session(SessionConfig::default());
        assert_eq!(code(&cmd(&mut s, "NOOP")), 250);
        assert_eq!(code(&cmd(&mut s, "RSET")), 250);
        assert_eq!(code(&cmd(&mut s, "HELP")), 214);
        assert_eq!(code(&cmd(&mut s, "VRFY alice")), 502);
        assert_eq!(code(&cmd(&mut s, "EXPN list")), 502);
        assert_eq!(code(&cmd(&mut s, "STARTTLS")), 502);
        assert!(matches!(cmd(&mut s, "GET / HTTP/1.0"), Step::Close(r) if r.code == 521));
        assert!(matches!(cmd(&mut s, "QUIT"), Step::Close(r) if r.code == 221));
    }
}
