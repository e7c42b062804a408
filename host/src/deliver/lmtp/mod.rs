//! The LMTP delivery agent (Postfix's lmtp(8), RFC 2033): one transaction
//! per message and server for all its recipients there, with one reply per
//! accepted recipient after the data. Blocking I/O: it runs on delivery
//! threads.

use std::net::ToSocketAddrs;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::agent::{Agent, Message, Outcome, Rcpt};
use super::cache::{Idle, Reusable};
use super::conn::{Conn, Stop, Stream, connect, envelope, outcome_of, relay_name};
use super::wire::{Capabilities, dot_stuffed, has_8bit};
use crate::config::NextHop;
use crate::route::Transport;

/// Time to connect (Postfix's `lmtp_connect_timeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for each command's reply, and to send (Postfix's
/// `lmtp_*_timeout`, 300 s for most).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// Delivers by LMTP to the server of its recipients' transport.
pub struct Lmtp;

/// Idle sessions by server.
static IDLE: Idle<NextHop, Session> = Idle::new();

/// One open session, greeted and past LHLO: the connection, what the
/// server offers, and since when it is open.
struct Session {
    conn: Conn,
    caps: Capabilities,
    born: Instant,
}

impl Session {
    /// An idle session to `next_hop` that still answers RSET, else a new
    /// one.
    fn get(next_hop: &NextHop, hostname: &str) -> Result<Session, (String, Stop)> {
        match IDLE.take(next_hop) {
            Some(s) => Ok(s),
            None => Session::open(next_hop, hostname),
        }
    }

    /// Connects, reads the greeting and says LHLO.
    fn open(next_hop: &NextHop, hostname: &str) -> Result<Session, (String, Stop)> {
        let conn = match next_hop {
            NextHop::Unix(path) => {
                let relay = path.display().to_string();
                let s = UnixStream::connect(path).map_err(|e| {
                    let why = format!("connect to {relay}: {e}");
                    (relay.clone(), Stop::deferred("4.4.1", why))
                })?;
                Conn::new(Stream::Unix(s), relay, COMMAND_TIMEOUT)
            }
            NextHop::Tcp { host, port } => {
                let (s, relay) = connect_tcp(host, *port)?;
                Conn::new(Stream::Tcp(s), relay, COMMAND_TIMEOUT)
            }
        };
        let mut session = Session {
            conn,
            caps: Capabilities::default(),
            born: Instant::now(),
        };
        match session
            .conn
            .greeting("the greeting")
            .and_then(|()| session.lhlo(hostname))
        {
            Ok(()) => Ok(session),
            Err(stop) => Err((session.conn.relay, stop)),
        }
    }

    /// LHLO, and what the server offers.
    fn lhlo(&mut self, hostname: &str) -> Result<(), Stop> {
        self.conn
            .send(format!("LHLO {hostname}\r\n").as_bytes(), "LHLO")?;
        let lhlo = self.conn.read("the LHLO reply")?;
        if lhlo.class() != 2 {
            let stop = Stop::reply(&self.conn.relay, &lhlo, "LHLO");
            self.conn.quit();
            return Err(stop.softened());
        }
        self.caps = Capabilities::of(&lhlo);
        Ok(())
    }
}

impl Reusable for Session {
    fn conn(&mut self) -> &mut Conn {
        &mut self.conn
    }

    fn born(&self) -> Instant {
        self.born
    }
}

/// Connects to the first address of `host` that answers.
fn connect_tcp(host: &str, port: u16) -> Result<(std::net::TcpStream, String), (String, Stop)> {
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
    let mut last = (
        name,
        Stop::deferred("4.4.4", format!("no address for {host}")),
    );
    for addr in &addrs {
        let relay = relay_name(host, addr);
        match connect(addr, &relay, CONNECT_TIMEOUT) {
            Ok(s) => return Ok((s, relay)),
            Err(stop) => last = (relay, stop),
        }
    }
    Err(last)
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
                let relay = session.conn.relay.clone();
                if stop.is_none() {
                    // Kept for the next message to this server.
                    IDLE.put(next_hop, session);
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
                    Some(s) => s.outcome(&relay),
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
    let caps = s.caps.clone();
    if env.smtputf8 && !caps.smtputf8 {
        s.conn.quit();
        return Err(Stop::bounced(
            "5.6.7",
            format!(
                "SMTPUTF8 is required, but was not offered by host {}",
                s.conn.relay
            ),
        ));
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
    let accepted = match envelope(&mut s.conn, &mail, &rcpt_lines, caps.pipelining, out) {
        Ok(accepted) => accepted,
        Err(stop) => {
            s.conn.quit();
            return Err(stop);
        }
    };
    if accepted.is_empty() {
        return Ok(());
    }
    s.conn.send(b"DATA\r\n", "DATA")?;
    let data = s.conn.read("the DATA reply")?;
    if data.class() != 3 {
        let stop = Stop::reply(&s.conn.relay, &data, "DATA");
        s.conn.quit();
        return Err(stop);
    }
    s.conn.send(&dot_stuffed(&parts), "the message")?;
    // RFC 2033 §4.2: one reply per accepted recipient, in RCPT order.
    for i in accepted {
        let reply = s.conn.read("the end of data reply")?;
        if let Some(slot) = out.get_mut(i) {
            *slot = Some(outcome_of(&s.conn.relay, &reply, "end of DATA"));
        }
    }
    Ok(())
}
