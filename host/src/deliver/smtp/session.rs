//! One SMTP session at one address (Postfix's smtp(8) protocol engine):
//! greeting, EHLO (HELO if refused), STARTTLS as the destination's TLS
//! level asks, AUTH to a relay, then one transaction for the message and
//! its recipients there: MAIL with SIZE/BODY/SMTPUTF8/RET/ENVID, RCPT with
//! NOTIFY/ORCPT (pipelined when offered), DATA, and each recipient's
//! outcome.

use std::time::Instant;

use base64::Engine;

use super::mx::Target;
use super::{Client, Credentials};
use crate::config::TlsLevel;
use crate::deliver::agent::{Handoff, Message, Outcome, Rcpt};
use crate::deliver::cache::Reusable;
use crate::deliver::conn::{Conn, Stop, Stream, connect, envelope, outcome_of, relay_name, said};
use crate::deliver::wire::{Capabilities, Reply, dot_stuffed, has_8bit};
use crate::dsn::params::{Ret, xtext_encode};

/// How a session at one address failed.
#[derive(Debug)]
pub enum Failure {
    /// Before the transaction (no connection, greeting, EHLO, TLS): the
    /// next address may do better.
    Next(Stop),
    /// Opportunistic TLS failed in the handshake: the same address again,
    /// in plain text (Postfix's `may` level).
    Plain(Stop),
}

/// What a session needs besides the message.
pub struct Plan<'a> {
    /// The TLS level for this destination.
    pub tls: TlsLevel,
    /// Log in to the server (a relay host or `[transport]` next hop).
    pub auth: Option<&'a Credentials>,
}

/// An open session, past EHLO (and STARTTLS, AUTH).
pub struct Session {
    /// The connection.
    pub conn: Conn,
    caps: Capabilities,
    born: Instant,
}

impl Reusable for Session {
    fn conn(&mut self) -> &mut Conn {
        &mut self.conn
    }

    fn born(&self) -> Instant {
        self.born
    }
}

/// Connects to `target` and readies a session: greeting, EHLO,
/// STARTTLS and AUTH as `plan` says.
pub fn open(
    client: &Client,
    target: &Target,
    plan: &Plan<'_>,
    id: &str,
) -> Result<Session, Failure> {
    let cfg = &client.cfg;
    let relay = relay_name(&target.host, &target.addr);
    let sock = connect(&target.addr, &relay, cfg.connect_timeout.0).map_err(Failure::Next)?;
    let mut conn = Conn::new(Stream::Tcp(sock), relay, cfg.command_timeout.0);
    // A refused greeting: the next MX host may take it.
    conn.greeting("initial server greeting")
        .map_err(Failure::Next)?;
    let caps = ehlo(&mut conn, &client.helo).map_err(Failure::Next)?;
    let born = Instant::now();
    let mut s = Session { conn, caps, born };
    let required = matches!(plan.tls, TlsLevel::Encrypt | TlsLevel::Verify);
    if plan.tls != TlsLevel::None && s.caps.starttls {
        s = start_tls(client, s, target, plan.tls, id)?;
    } else if required {
        let why = format!(
            "TLS is required, but was not offered by host {}",
            s.conn.relay
        );
        s.conn.quit();
        return Err(Failure::Next(Stop::deferred("4.7.4", why)));
    }
    if let Some(creds) = plan.auth {
        login(&mut s, creds).map_err(|stop| {
            s.conn.quit();
            Failure::Next(stop)
        })?;
    }
    Ok(s)
}

/// EHLO, or HELO when EHLO is refused; what the server offers.
fn ehlo(conn: &mut Conn, helo: &str) -> Result<Capabilities, Stop> {
    conn.send(format!("EHLO {helo}\r\n").as_bytes(), "EHLO")?;
    let reply = conn.read("the EHLO reply")?;
    if reply.class() == 2 {
        return Ok(Capabilities::of(&reply));
    }
    conn.send(format!("HELO {helo}\r\n").as_bytes(), "HELO")?;
    let reply = conn.read("the HELO reply")?;
    if reply.class() == 2 {
        return Ok(Capabilities::default());
    }
    let stop = Stop::reply(&conn.relay, &reply, "HELO");
    conn.quit();
    Err(stop.softened())
}

fn start_tls(
    client: &Client,
    mut s: Session,
    target: &Target,
    level: TlsLevel,
    id: &str,
) -> Result<Session, Failure> {
    let may = level == TlsLevel::May;
    s.conn
        .send(b"STARTTLS\r\n", "STARTTLS")
        .map_err(Failure::Next)?;
    let reply = s.conn.read("the STARTTLS reply").map_err(Failure::Next)?;
    if reply.class() != 2 {
        if may {
            // Offered, then refused: go on in plain text, as Postfix does.
            tracing::info!(
                "{id}: host {} refused to start TLS: {}; continuing without TLS",
                s.conn.relay,
                reply.text()
            );
            return Ok(s);
        }
        let why = said(&s.conn.relay, &reply, "STARTTLS");
        s.conn.quit();
        return Err(Failure::Next(Stop::deferred("4.7.5", why)));
    }
    let (config, trust) = match level {
        TlsLevel::Verify => match &client.tls.verified {
            Some(c) => (c.clone(), "Verified"),
            None => {
                s.conn.quit();
                return Err(Failure::Next(Stop::deferred(
                    "4.7.5",
                    "TLS verification is required, but no CA certificates could be read".into(),
                )));
            }
        },
        _ => (client.tls.any.clone(), "Untrusted"),
    };
    let name = rustls::pki_types::ServerName::try_from(target.host.clone())
        .unwrap_or_else(|_| rustls::pki_types::ServerName::from(target.addr.ip()));
    let relay = s.conn.relay.clone();
    let conn = s.conn.start_tls(config, name).map_err(|stop| {
        if may {
            Failure::Plain(stop)
        } else {
            Failure::Next(stop)
        }
    })?;
    if let Some((version, cipher)) = conn.tls_info() {
        tracing::info!(
            "{id}: {trust} TLS connection established to {relay}: {version} with cipher {cipher}"
        );
    }
    let mut conn = conn;
    // RFC 3207 §4.2: what was said before TLS is forgotten.
    let caps = ehlo(&mut conn, &client.helo).map_err(Failure::Next)?;
    Ok(Session {
        conn,
        caps,
        born: s.born,
    })
}

/// AUTH PLAIN (or LOGIN), only under TLS: a password is never sent in
/// the clear.
fn login(s: &mut Session, creds: &Credentials) -> Result<(), Stop> {
    let relay = s.conn.relay.clone();
    if s.conn.tls_info().is_none() {
        return Err(Stop::deferred(
            "4.7.0",
            format!("refusing to send the password to {relay} without TLS"),
        ));
    }
    let b64 = |t: &str| base64::engine::general_purpose::STANDARD.encode(t);
    let reply = if s.caps.auth.iter().any(|m| m == "PLAIN") {
        let token = b64(&format!("\0{}\0{}", creds.username, creds.password));
        s.conn
            .send(format!("AUTH PLAIN {token}\r\n").as_bytes(), "AUTH")?;
        s.conn.read("the AUTH reply")?
    } else if s.caps.auth.iter().any(|m| m == "LOGIN") {
        s.conn.send(b"AUTH LOGIN\r\n", "AUTH")?;
        let mut reply = s.conn.read("the AUTH reply")?;
        for secret in [&creds.username, &creds.password] {
            if reply.code != 334 {
                break;
            }
            s.conn
                .send(format!("{}\r\n", b64(secret)).as_bytes(), "AUTH")?;
            reply = s.conn.read("the AUTH reply")?;
        }
        reply
    } else {
        return Err(Stop::deferred(
            "4.7.0",
            format!(
                "SASL authentication failed: host {relay} offers no mechanism we know (PLAIN, LOGIN)"
            ),
        ));
    };
    if reply.class() == 2 {
        return Ok(());
    }
    // Postfix's smtp_sasl_auth_soft_bounce: a wrong password is fixed by
    // the administrator, and the mail waits for it.
    Err(Stop::deferred(
        "4.7.0",
        format!(
            "SASL authentication failed; server {relay} said: {}",
            reply.text()
        ),
    ))
}

/// MAIL, RCPT for each, DATA: one outcome per recipient, or why the
/// transaction failed as a whole.
pub fn transaction(
    client: &Client,
    s: &mut Session,
    msg: Message<'_>,
    rcpts: &[Rcpt<'_>],
) -> Result<Vec<Outcome>, Stop> {
    let env = msg.env;
    let relay = s.conn.relay.clone();
    let parts = [env.prepend.as_bytes(), msg.content];
    let size: usize = parts.iter().map(|p| p.len()).sum();
    if env.smtputf8 && !s.caps.smtputf8 {
        return Err(Stop::bounced(
            "5.6.7",
            format!("SMTPUTF8 is required, but was not offered by host {relay}"),
        ));
    }
    if let Some(limit) = s.caps.size.filter(|&l| l > 0 && size as u64 > l) {
        return Err(Stop::bounced(
            "5.3.4",
            format!("message size {size} exceeds size limit {limit} of server {relay}"),
        ));
    }
    let mut mail = format!("MAIL FROM:<{}>", env.sender);
    if s.caps.size.is_some() {
        mail.push_str(&format!(" SIZE={size}"));
    }
    if s.caps.eight_bit && has_8bit(&parts) {
        mail.push_str(" BODY=8BITMIME");
    }
    if env.smtputf8 {
        mail.push_str(" SMTPUTF8");
    }
    if s.caps.dsn {
        match env.ret {
            Some(Ret::Full) => mail.push_str(" RET=FULL"),
            Some(Ret::Hdrs) => mail.push_str(" RET=HDRS"),
            None => {}
        }
        if let Some(envid) = &env.envid {
            mail.push_str(&format!(" ENVID={}", xtext_encode(envid)));
        }
    }
    mail.push_str("\r\n");
    let rcpt_lines: Vec<String> = rcpts.iter().map(|r| rcpt_line(r, s.caps.dsn)).collect();
    let mut out: Vec<Option<Outcome>> = vec![None; rcpts.len()];
    let accepted = envelope(&mut s.conn, &mail, &rcpt_lines, s.caps.pipelining, &mut out)?;
    if !accepted.is_empty() {
        s.conn.send(b"DATA\r\n", "DATA")?;
        let data = s.conn.read("the DATA reply")?;
        if data.class() != 3 {
            return Err(Stop::reply(&relay, &data, "DATA"));
        }
        s.conn.send(&dot_stuffed(&parts), "the message")?;
        s.conn.set_read_timeout(client.cfg.data_timeout.0);
        let done = s.conn.read("the end of data reply")?;
        let handoff = if s.caps.dsn {
            Handoff::PassedOn
        } else {
            Handoff::Relayed
        };
        for i in accepted {
            if let Some(slot) = out.get_mut(i) {
                *slot = Some(end_of_data(&relay, &done, handoff));
            }
        }
    }
    Ok(out
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| Outcome::deferred(&relay, "4.3.0", "no reply for this recipient"))
        })
        .collect())
}

/// `RCPT TO:<…>`, with the recipient's DSN request when the server takes
/// it on.
fn rcpt_line(r: &Rcpt<'_>, dsn: bool) -> String {
    let rec = r.record;
    let mut line = format!("RCPT TO:<{}>", rec.address);
    if dsn {
        if let Some(notify) = &rec.notify {
            line.push_str(&format!(" NOTIFY={}", notify.to_param()));
        }
        // The original recipient goes on, as Postfix passes it: the one
        // given, or the address as we received it.
        let (kind, original) = rec
            .orcpt
            .as_deref()
            .and_then(|o| o.split_once(';'))
            .unwrap_or(("rfc822", rec.original.as_str()));
        line.push_str(&format!(" ORCPT={kind};{}", xtext_encode(original)));
    }
    line.push_str("\r\n");
    line
}

/// A recipient's outcome from the reply after the message: Postfix logs
/// the reply itself (`250 2.0.0 Ok: queued as …`).
fn end_of_data(relay: &str, reply: &Reply, handoff: Handoff) -> Outcome {
    match reply.class() {
        2 => Outcome {
            dsn: reply.dsn(),
            handoff,
            ..Outcome::sent(relay, reply.text())
        },
        _ => outcome_of(relay, reply, "end of DATA"),
    }
}
