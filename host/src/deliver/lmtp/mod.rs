//! The LMTP delivery agent (Postfix's lmtp(8), RFC 2033): one transaction
//! per message and server for all its recipients there, with one reply per
//! accepted recipient after the data. Blocking I/O: it runs on delivery
//! threads.

mod cache;
pub mod proto;

use std::io::{BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::agent::{Agent, Message, Outcome, Rcpt, Status};
use crate::config::NextHop;
use crate::route::Transport;
use proto::{Capabilities, Reply, ReplyError, dot_stuffed, read_reply};

/// Time to connect (Postfix's `lmtp_connect_timeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for each command's reply, and to send (Postfix's
/// `lmtp_*_timeout`, 300 s for most).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// Delivers by LMTP to the server of its recipients' transport.
pub struct Lmtp;

/// A connection to an LMTP server.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// Why a session stopped before every recipient had its outcome: the
/// recipients still open get this one.
struct Stop {
    status: Status,
    dsn: String,
    detail: String,
}

impl Stop {
    fn deferred(dsn: &str, detail: String) -> Stop {
        Stop {
            status: Status::Deferred,
            dsn: dsn.into(),
            detail,
        }
    }

    /// A reply that ends the transaction (4xx defers, 5xx bounces).
    fn reply(relay: &str, reply: &Reply, command: &str) -> Stop {
        Stop {
            status: if reply.class() == 5 {
                Status::Bounced
            } else {
                Status::Deferred
            },
            dsn: reply.dsn(),
            detail: said(relay, reply, command),
        }
    }
}

/// Postfix's wording of a refusal.
fn said(relay: &str, reply: &Reply, command: &str) -> String {
    format!(
        "host {relay} said: {} (in reply to {command} command)",
        reply.text()
    )
}

/// The outcome a per-recipient reply gives.
fn outcome_of(relay: &str, reply: &Reply, command: &str) -> Outcome {
    match reply.class() {
        2 => Outcome {
            dsn: reply.dsn(),
            ..Outcome::sent(relay, format!("delivered via {relay}: {}", reply.text()))
        },
        5 => Outcome::bounced(relay, &reply.dsn(), said(relay, reply, command)),
        _ => Outcome::deferred(relay, &reply.dsn(), said(relay, reply, command)),
    }
}

/// One open session, greeted and past LHLO: the connection, who it is
/// (for messages), what it offers, and since when it is open.
struct Session {
    conn: BufReader<Stream>,
    relay: String,
    caps: Capabilities,
    born: Instant,
}

impl Session {
    /// An idle session to `next_hop` that still answers RSET, else a new
    /// one.
    fn get(next_hop: &NextHop, hostname: &str) -> Result<Session, (String, Stop)> {
        while let Some(mut s) = cache::take(next_hop) {
            // A server that closed an idle connection meanwhile fails
            // here, before anything of the message was sent.
            if s.send(b"RSET\r\n", "RSET").is_ok()
                && s.read("the RSET reply").is_ok_and(|r| r.class() == 2)
            {
                return Ok(s);
            }
        }
        Session::open(next_hop, hostname)
    }

    /// Connects, reads the greeting and says LHLO.
    fn open(next_hop: &NextHop, hostname: &str) -> Result<Session, (String, Stop)> {
        let (stream, relay) = match next_hop {
            NextHop::Unix(path) => {
                let relay = path.display().to_string();
                let s = UnixStream::connect(path).map_err(|e| {
                    let why = format!("connect to {relay}: {e}");
                    (relay.clone(), Stop::deferred("4.4.1", why))
                })?;
                s.set_read_timeout(Some(COMMAND_TIMEOUT)).ok();
                s.set_write_timeout(Some(COMMAND_TIMEOUT)).ok();
                (Stream::Unix(s), relay)
            }
            NextHop::Tcp { host, port } => {
                let (s, relay) = connect_tcp(host, *port)?;
                s.set_read_timeout(Some(COMMAND_TIMEOUT)).ok();
                s.set_write_timeout(Some(COMMAND_TIMEOUT)).ok();
                (Stream::Tcp(s), relay)
            }
        };
        let mut session = Session {
            conn: BufReader::new(stream),
            relay,
            caps: Capabilities::default(),
            born: Instant::now(),
        };
        match session.read("the greeting") {
            Ok(r) if r.class() == 2 => match session.lhlo(hostname) {
                Ok(()) => Ok(session),
                Err(stop) => Err((session.relay, stop)),
            },
            Ok(r) => {
                let why = format!("host {} refused to talk to me: {}", session.relay, r.text());
                session.quit();
                Err((
                    session.relay,
                    Stop::deferred(&r.dsn().replacen('5', "4", 1), why),
                ))
            }
            Err(stop) => Err((session.relay, stop)),
        }
    }

    /// LHLO, and what the server offers.
    fn lhlo(&mut self, hostname: &str) -> Result<(), Stop> {
        self.send(format!("LHLO {hostname}\r\n").as_bytes(), "LHLO")?;
        let lhlo = self.read("the LHLO reply")?;
        if lhlo.class() != 2 {
            let stop = Stop::reply(&self.relay, &lhlo, "LHLO");
            self.quit();
            return Err(Stop {
                status: Status::Deferred,
                dsn: stop.dsn.replacen('5', "4", 1),
                ..stop
            });
        }
        self.caps = Capabilities::of(&lhlo);
        Ok(())
    }

    fn send(&mut self, bytes: &[u8], what: &str) -> Result<(), Stop> {
        let w = self.conn.get_mut();
        w.write_all(bytes).and_then(|()| w.flush()).map_err(|e| {
            Stop::deferred(
                "4.4.2",
                format!(
                    "lost connection with {} while sending {what}: {e}",
                    self.relay
                ),
            )
        })
    }

    fn read(&mut self, what: &str) -> Result<Reply, Stop> {
        read_reply(&mut self.conn).map_err(|e| {
            let why = match e {
                ReplyError::Io(e) if is_timeout(&e) => {
                    format!(
                        "conversation with {} timed out while receiving {what}",
                        self.relay
                    )
                }
                e => format!("{e} with {} while receiving {what}", self.relay),
            };
            Stop::deferred("4.4.2", why)
        })
    }

    /// Says goodbye; what the server answers no longer matters.
    fn quit(&mut self) {
        if self.send(b"QUIT\r\n", "QUIT").is_ok() {
            let _ = self.read("the QUIT reply");
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

/// Connects to the first address of `host` that answers.
fn connect_tcp(host: &str, port: u16) -> Result<(TcpStream, String), (String, Stop)> {
    let name = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let addrs: Vec<_> = match (host, port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => {
            let why = format!("cannot find the address of {host}: {e}");
            return Err((name, Stop::deferred("4.4.4", why)));
        }
    };
    // The relay named in the log is the last address tried.
    let (mut relay, mut last, mut timed_out) = (name, format!("no address for {host}"), false);
    for addr in &addrs {
        relay = format!("{host}[{}]:{port}", addr.ip());
        match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT) {
            Ok(s) => return Ok((s, relay)),
            Err(e) => {
                timed_out = is_timeout(&e);
                last = format!("connect to {relay}: {e}");
            }
        }
    }
    let dsn = if timed_out { "4.4.2" } else { "4.4.1" };
    Err((relay, Stop::deferred(dsn, last)))
}

/// True if the message has bytes outside ASCII.
fn has_8bit(parts: &[&[u8]]) -> bool {
    parts.iter().any(|p| !p.is_ascii())
}

impl Agent for Lmtp {
    fn deliver(&self, msg: Message<'_>, rcpts: &[Rcpt<'_>]) -> Vec<Outcome> {
        let Some(Transport::Lmtp { next_hop }) = rcpts.first().map(|r| r.transport) else {
            return rcpts
                .iter()
                .map(|_| Outcome::deferred("none", "4.3.5", "not an LMTP recipient"))
                .collect();
        };
        let mut out: Vec<Option<Outcome>> = vec![None; rcpts.len()];
        let (relay, stop) = match Session::get(next_hop, msg.hostname) {
            Ok(mut session) => {
                let stop = transaction(&mut session, msg, rcpts, &mut out).err();
                let relay = session.relay.clone();
                if stop.is_none() {
                    // Kept for the next message to this server.
                    cache::put(next_hop, session);
                }
                (relay, stop)
            }
            Err((relay, stop)) => (relay, Some(stop)),
        };
        if let Some(stop) = &stop {
            tracing::debug!("{}: lmtp {relay}: {}", msg.env.id, stop.detail);
        }
        out.into_iter()
            .map(|o| {
                o.unwrap_or_else(|| match &stop {
                    Some(s) => Outcome {
                        status: s.status,
                        dsn: s.dsn.clone(),
                        relay: relay.clone(),
                        detail: s.detail.clone(),
                    },
                    None => Outcome::deferred(&relay, "4.3.0", "no reply for this recipient"),
                })
            })
            .collect()
    }
}

/// MAIL, RCPT for each, DATA and one reply per accepted recipient;
/// `out` gets each recipient's outcome as it is known. An error is the
/// outcome of every recipient still without one.
fn transaction(
    s: &mut Session,
    msg: Message<'_>,
    rcpts: &[Rcpt<'_>],
    out: &mut [Option<Outcome>],
) -> Result<(), Stop> {
    let env = msg.env;
    let caps = s.caps;
    if env.smtputf8 && !caps.smtputf8 {
        s.quit();
        return Err(Stop {
            status: Status::Bounced,
            dsn: "5.6.7".into(),
            detail: format!(
                "SMTPUTF8 is required, but was not offered by host {}",
                s.relay
            ),
        });
    }
    let parts = [env.prepend.as_bytes(), msg.content];
    let mut mail = format!("MAIL FROM:<{}>", env.sender);
    if caps.eight_bit && has_8bit(&parts) {
        mail.push_str(" BODY=8BITMIME");
    }
    if env.smtputf8 {
        mail.push_str(" SMTPUTF8");
    }
    mail.push_str("\r\n");
    let rcpt_lines: Vec<String> = rcpts
        .iter()
        .map(|r| format!("RCPT TO:<{}>\r\n", r.record.address))
        .collect();
    // With PIPELINING, MAIL and every RCPT go in one write; their replies
    // come back in order.
    let mail_reply = if caps.pipelining {
        let mut batch = mail.into_bytes();
        rcpt_lines
            .iter()
            .for_each(|l| batch.extend_from_slice(l.as_bytes()));
        s.send(&batch, "MAIL FROM")?;
        s.read("the MAIL FROM reply")?
    } else {
        s.send(mail.as_bytes(), "MAIL FROM")?;
        s.read("the MAIL FROM reply")?
    };
    let mut accepted = Vec::new();
    for (i, line) in rcpt_lines.iter().enumerate() {
        if !caps.pipelining {
            if mail_reply.class() != 2 {
                break;
            }
            s.send(line.as_bytes(), "RCPT TO")?;
        }
        let reply = s.read("the RCPT TO reply")?;
        if mail_reply.class() != 2 {
            continue;
        }
        if reply.class() == 2 {
            accepted.push(i);
        } else if let Some(slot) = out.get_mut(i) {
            *slot = Some(outcome_of(&s.relay, &reply, "RCPT TO"));
        }
    }
    if mail_reply.class() != 2 {
        let stop = Stop::reply(&s.relay, &mail_reply, "MAIL FROM");
        s.quit();
        return Err(stop);
    }
    if accepted.is_empty() {
        return Ok(());
    }
    s.send(b"DATA\r\n", "DATA")?;
    let data = s.read("the DATA reply")?;
    if data.class() != 3 {
        let stop = Stop::reply(&s.relay, &data, "DATA");
        s.quit();
        return Err(stop);
    }
    s.send(&dot_stuffed(&parts), "the message")?;
    // RFC 2033 §4.2: one reply per accepted recipient, in RCPT order.
    for i in accepted {
        let reply = s.read("the end of data reply")?;
        if let Some(slot) = out.get_mut(i) {
            *slot = Some(outcome_of(&s.relay, &reply, "end of DATA"));
        }
    }
    Ok(())
}
