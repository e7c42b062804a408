//! The client's socket as the session driver uses it: input read and not
//! yet consumed, replies not yet sent, and a deadline on every write.
//!
//! Postfix's `smtpd_timeout` covers writes as well as reads, and so does
//! this: a client that pipelines commands and never reads the replies is
//! cut like one that never writes, instead of holding its session (and a
//! few megabytes of kernel memory) until a restart. Unsent replies are
//! bounded too: past [`OUT_BOUND`] the driver writes before it takes the
//! next command, so such a client fills its own socket, not our memory.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::smtp::reply::Reply;
use crate::tls::Stream;

/// Size of one socket read.
pub const READ_CHUNK: usize = 16 * 1024;

/// Replies held unsent before the driver must write them out (and wait
/// for the client to take them) before reading another command.
pub const OUT_BOUND: usize = 16 * 1024;

/// Why replies could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The client did not take them within the deadline.
    #[error("client did not read its replies within {0:?}")]
    Timeout(Duration),
    /// The connection failed.
    #[error("write failed: {0}")]
    Io(#[from] std::io::Error),
    /// An earlier write failed: nothing more is sent.
    #[error("connection already broken")]
    Broken,
}

/// The socket with its buffers.
pub struct Wire {
    /// The connection (plain or TLS).
    pub stream: Stream,
    /// Bytes read and not yet consumed by the receiver.
    pub inbuf: BytesMut,
    /// Replies not yet written.
    out: Vec<u8>,
    /// A write failed or timed out: later writes are not attempted, so a
    /// client that does not read costs one deadline, not one per reply.
    broken: bool,
}

impl Wire {
    /// Buffers for a new connection.
    pub fn new(stream: Stream) -> Wire {
        Wire {
            stream,
            inbuf: BytesMut::with_capacity(READ_CHUNK),
            out: Vec::with_capacity(1024),
            broken: false,
        }
    }

    /// Queues a reply.
    pub fn push(&mut self, reply: &Reply) {
        reply.write_to(&mut self.out);
    }

    /// Queues raw reply bytes (the AUTH `334` challenges).
    pub fn push_raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Drops queued replies (a refusal before the greeting replaces it).
    pub fn discard_out(&mut self) {
        self.out.clear();
    }

    /// More replies wait than may before the next command is read.
    pub fn over_bound(&self) -> bool {
        self.out.len() >= OUT_BOUND
    }

    /// Bytes of replies waiting.
    pub fn unsent(&self) -> usize {
        self.out.len()
    }

    /// Writes every queued reply, all of it within `deadline`: through
    /// TLS too (a TLS stream may keep written bytes until flushed).
    pub async fn flush(&mut self, deadline: Duration) -> Result<(), WriteError> {
        if self.broken {
            self.out.clear();
            return Err(WriteError::Broken);
        }
        if self.out.is_empty() {
            return Ok(());
        }
        let (stream, out) = (&mut self.stream, &self.out);
        let written = tokio::time::timeout(deadline, async {
            stream.write_all(out).await?;
            stream.flush().await
        })
        .await;
        self.out.clear();
        let result = match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(WriteError::Io(e)),
            Err(_) => Err(WriteError::Timeout(deadline)),
        };
        self.broken = result.is_err();
        result
    }

    /// Reads what the client sent next into the input buffer (cancel
    /// safe: it may be raced against shutdown). `Ok(0)` at end of input.
    pub async fn read(&mut self) -> std::io::Result<usize> {
        self.inbuf.reserve(READ_CHUNK);
        self.stream.read_buf(&mut self.inbuf).await
    }

    /// True if the client has sent anything that is not consumed yet:
    /// in the buffer, or waiting in the socket. The socket is asked once
    /// without waiting (Postfix's `peekfd()`); what it had is buffered.
    pub fn input_pending(&mut self) -> bool {
        if !self.inbuf.is_empty() {
            return true;
        }
        if self.broken {
            return false;
        }
        self.inbuf.reserve(READ_CHUNK);
        let read = pin!(self.stream.read_buf(&mut self.inbuf));
        // One poll with a waker that does nothing: the read either has
        // bytes now or is dropped (it is cancel safe, and the next real
        // read registers its own waker).
        let mut cx = Context::from_waker(Waker::noop());
        matches!(read.poll(&mut cx), Poll::Ready(Ok(n)) if n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (Wire, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // A small receive window: a client that does not read is
        // noticed after kilobytes, not megabytes.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let client = socket.connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Wire::new(Stream::Plain(server)), client)
    }

    #[tokio::test]
    async fn pending_input_is_seen_without_waiting() {
        let (mut wire, mut client) = pair().await;
        assert!(!wire.input_pending());
        client.write_all(b"MAIL FROM:<>\r\n").await.unwrap();
        // Loopback delivers at once, but give the kernel a moment.
        let mut seen = false;
        for _ in 0..100 {
            if wire.input_pending() {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(seen);
        assert_eq!(&wire.inbuf[..], b"MAIL FROM:<>\r\n");
        // A real read after the probe still works and sees new input.
        wire.inbuf.clear();
        client.write_all(b"QUIT\r\n").await.unwrap();
        assert_eq!(wire.read().await.unwrap(), 6);
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_is_cut_after_the_deadline() {
        let (mut wire, client) = pair().await;
        let deadline = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let err = loop {
            for _ in 0..1000 {
                wire.push_raw(b"250 2.0.0 Ok\r\n");
            }
            if let Err(e) = wire.flush(deadline).await {
                break e;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "never blocked");
        };
        assert!(matches!(err, WriteError::Timeout(_)), "{err}");
        // Nothing more is tried: the next flush fails at once.
        wire.push_raw(b"421 4.4.2 timeout\r\n");
        let again = std::time::Instant::now();
        assert!(matches!(
            wire.flush(deadline).await,
            Err(WriteError::Broken)
        ));
        assert!(again.elapsed() < deadline);
        drop(client);
    }

    #[tokio::test]
    async fn replies_reach_a_reading_client() {
        let (mut wire, mut client) = pair().await;
        wire.push_raw(b"220 hello\r\n");
        assert!(!wire.over_bound());
        wire.flush(Duration::from_secs(5)).await.unwrap();
        let mut buf = [0u8; 11];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"220 hello\r\n");
    }
}
