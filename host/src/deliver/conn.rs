//! One client connection of the SMTP and LMTP agents (blocking: they run
//! on delivery threads): TCP, a unix socket or TLS after STARTTLS, with
//! the relay's name for log lines, and the reasons a session stops in
//! Postfix's words.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use super::agent::{Handoff, Outcome, Status};
use super::wire::{Reply, ReplyError, read_reply};

/// The socket under a session.
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// A unix-domain socket (LMTP).
    Unix(UnixStream),
    /// TLS over TCP, after STARTTLS.
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// Why a session stopped before every recipient had its outcome: the
/// recipients still open get this one.
#[derive(Debug, Clone)]
pub struct Stop {
    /// Deferred or bounced.
    pub status: Status,
    /// The enhanced status code.
    pub dsn: String,
    /// Postfix's wording of what happened.
    pub detail: String,
}

impl Stop {
    /// A temporary failure.
    pub fn deferred(dsn: &str, detail: String) -> Stop {
        Stop {
            status: Status::Deferred,
            dsn: dsn.into(),
            detail,
        }
    }

    /// A permanent failure.
    pub fn bounced(dsn: &str, detail: String) -> Stop {
        Stop {
            status: Status::Bounced,
            dsn: dsn.into(),
            detail,
        }
    }

    /// A reply that ends the transaction (4xx defers, 5xx bounces).
    pub fn reply(relay: &str, reply: &Reply, command: &str) -> Stop {
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

    /// The same failure, but temporary (a refusal before the transaction,
    /// such as a greeting or EHLO refused: another server, or later, may
    /// take the mail).
    pub fn softened(self) -> Stop {
        Stop {
            status: Status::Deferred,
            dsn: self.dsn.replacen('5', "4", 1),
            ..self
        }
    }

    /// The outcome of a recipient this stop leaves without one.
    pub fn outcome(&self, relay: &str) -> Outcome {
        Outcome {
            status: self.status,
            dsn: self.dsn.clone(),
            relay: relay.into(),
            detail: self.detail.clone(),
            handoff: Handoff::Delivered,
        }
    }
}

/// Postfix's wording of a refusal.
pub fn said(relay: &str, reply: &Reply, command: &str) -> String {
    format!(
        "host {relay} said: {} (in reply to {command} command)",
        reply.text()
    )
}

/// The outcome a per-recipient reply gives.
pub fn outcome_of(relay: &str, reply: &Reply, command: &str) -> Outcome {
    match reply.class() {
        2 => Outcome {
            dsn: reply.dsn(),
            ..Outcome::sent(relay, format!("delivered via {relay}: {}", reply.text()))
        },
        5 => Outcome::bounced(relay, &reply.dsn(), said(relay, reply, command)),
        _ => Outcome::deferred(relay, &reply.dsn(), said(relay, reply, command)),
    }
}

/// A connection with the name of its peer (`host[ip]:port`) for messages.
pub struct Conn {
    /// The buffered stream.
    pub io: BufReader<Stream>,
    /// Who is at the other end, as log lines name it.
    pub relay: String,
}

impl Conn {
    /// Wraps a connected stream; reads and writes time out after
    /// `timeout`.
    pub fn new(stream: Stream, relay: String, timeout: Duration) -> Conn {
        let _ = match &stream {
            Stream::Tcp(s) => s
                .set_read_timeout(Some(timeout))
                .and_then(|()| s.set_write_timeout(Some(timeout))),
            Stream::Unix(s) => s
                .set_read_timeout(Some(timeout))
                .and_then(|()| s.set_write_timeout(Some(timeout))),
            Stream::Tls(s) => s
                .sock
                .set_read_timeout(Some(timeout))
                .and_then(|()| s.sock.set_write_timeout(Some(timeout))),
        };
        Conn {
            io: BufReader::new(stream),
            relay,
        }
    }

    /// Changes the time allowed for each read (the reply after the
    /// message may take longer than a command's).
    pub fn set_read_timeout(&self, timeout: Duration) {
        let _ = match self.io.get_ref() {
            Stream::Tcp(s) => s.set_read_timeout(Some(timeout)),
            Stream::Unix(s) => s.set_read_timeout(Some(timeout)),
            Stream::Tls(s) => s.sock.set_read_timeout(Some(timeout)),
        };
    }

    /// Sends `bytes`; `what` names them in the error.
    pub fn send(&mut self, bytes: &[u8], what: &str) -> Result<(), Stop> {
        let w = self.io.get_mut();
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

    /// Reads one reply; `what` names it in the error.
    pub fn read(&mut self, what: &str) -> Result<Reply, Stop> {
        read_reply(&mut self.io).map_err(|e| {
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

    /// Reads the server's greeting (`what` names it in errors). One other
    /// than 2xx is a temporary failure, `5` made `4` (Postfix's
    /// `smtp_skip_5xx_greeting`: another server, or later, may take the
    /// mail); the connection is closed then.
    pub fn greeting(&mut self, what: &str) -> Result<(), Stop> {
        let reply = self.read(what)?;
        if reply.class() == 2 {
            return Ok(());
        }
        let why = format!(
            "host {} refused to talk to me: {}",
            self.relay,
            reply.text()
        );
        self.quit();
        Err(Stop::deferred(&reply.dsn(), why).softened())
    }

    /// Says goodbye; what the server answers no longer matters.
    pub fn quit(&mut self) {
        if self.send(b"QUIT\r\n", "QUIT").is_ok() {
            let _ = self.read("the QUIT reply");
        }
    }

    /// After `220` to STARTTLS: the TLS handshake, as `server_name`.
    /// Bytes the server sent after its `220` would be taken as said under
    /// TLS (a plain-text injection, CVE-2011-0411's class): refused.
    pub fn start_tls(
        self,
        config: Arc<rustls::ClientConfig>,
        server_name: rustls::pki_types::ServerName<'static>,
    ) -> Result<Conn, Stop> {
        let relay = self.relay;
        if !self.io.buffer().is_empty() {
            return Err(Stop::deferred(
                "4.7.5",
                format!("{relay} sent data after its STARTTLS reply"),
            ));
        }
        let Stream::Tcp(mut sock) = self.io.into_inner() else {
            return Err(Stop::deferred(
                "4.7.5",
                format!("cannot start TLS with {relay}: not a TCP connection"),
            ));
        };
        let fail = |e: &dyn std::fmt::Display| {
            Stop::deferred("4.7.5", format!("TLS handshake with {relay} failed: {e}"))
        };
        let mut tls = rustls::ClientConnection::new(config, server_name).map_err(|e| fail(&e))?;
        while tls.is_handshaking() {
            tls.complete_io(&mut sock).map_err(|e| fail(&e))?;
        }
        let io = BufReader::new(Stream::Tls(Box::new(rustls::StreamOwned::new(tls, sock))));
        Ok(Conn { io, relay })
    }

    /// The TLS protocol version and cipher suite, once TLS is on.
    pub fn tls_info(&self) -> Option<(String, String)> {
        let Stream::Tls(s) = self.io.get_ref() else {
            return None;
        };
        let version = s.conn.protocol_version()?;
        let suite = s.conn.negotiated_cipher_suite()?;
        let version = match version {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
            v => format!("{v:?}"),
        };
        Some((version, format!("{:?}", suite.suite())))
    }
}

/// The envelope of a transaction: MAIL, then each RCPT line (all in one
/// write with PIPELINING, RFC 2920, their replies read in order). Returns
/// the indexes of the recipients accepted; a refused one gets its outcome
/// in `out`. A refused MAIL is the error (the connection stays open).
pub fn envelope(
    conn: &mut Conn,
    mail: &str,
    rcpt_lines: &[String],
    pipelining: bool,
    out: &mut [Option<Outcome>],
) -> Result<Vec<usize>, Stop> {
    if pipelining {
        let mut batch = mail.as_bytes().to_vec();
        rcpt_lines
            .iter()
            .for_each(|l| batch.extend_from_slice(l.as_bytes()));
        conn.send(&batch, "MAIL FROM")?;
    } else {
        conn.send(mail.as_bytes(), "MAIL FROM")?;
    }
    let mail_reply = conn.read("the MAIL FROM reply")?;
    let mut accepted = Vec::new();
    for (i, line) in rcpt_lines.iter().enumerate() {
        if !pipelining {
            if mail_reply.class() != 2 {
                break;
            }
            conn.send(line.as_bytes(), "RCPT TO")?;
        }
        // Pipelined replies are read even after a refused MAIL: the
        // connection stays in step for RSET or QUIT.
        let reply = conn.read("the RCPT TO reply")?;
        if mail_reply.class() != 2 {
            continue;
        }
        if reply.class() == 2 {
            accepted.push(i);
        } else if let Some(slot) = out.get_mut(i) {
            *slot = Some(outcome_of(&conn.relay, &reply, "RCPT TO"));
        }
    }
    if mail_reply.class() != 2 {
        return Err(Stop::reply(&conn.relay, &mail_reply, "MAIL FROM"));
    }
    Ok(accepted)
}

/// True for a read or write that ran out of time.
pub fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

/// Connects to one address; the error is Postfix's `connect to …` line.
pub fn connect(addr: &SocketAddr, relay: &str, timeout: Duration) -> Result<TcpStream, Stop> {
    TcpStream::connect_timeout(addr, timeout).map_err(|e| {
        let dsn = if is_timeout(&e) { "4.4.2" } else { "4.4.1" };
        Stop::deferred(dsn, format!("connect to {relay}: {e}"))
    })
}

/// `host[ip]:port`, the relay's name in log lines.
pub fn relay_name(host: &str, addr: &SocketAddr) -> String {
    format!("{host}[{}]:{}", addr.ip(), addr.port())
}
