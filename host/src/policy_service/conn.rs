//! Connections to a policy server: one request and answer at a time on
//! each, kept for reuse (Postfix's `max_idle`, `max_ttl`), each exchange
//! under the entry's time limit, retried up to `try_limit` times.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::protocol::{MAX_ANSWER, answer_end, parse_answer};
use super::{MAX_IDLE, PolicyService};
use crate::config::PolicyEndpoint;

/// Pause between attempts after a failure (Postfix's
/// `smtpd_policy_service_retry_delay`).
const RETRY_DELAY: Duration = Duration::from_secs(1);

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// A connection between requests.
pub(super) struct Idle {
    stream: Stream,
    born: Instant,
    since: Instant,
}

impl Stream {
    async fn connect(endpoint: &PolicyEndpoint) -> std::io::Result<Stream> {
        Ok(match endpoint {
            PolicyEndpoint::Inet(host, port) => {
                let s = TcpStream::connect((host.as_str(), *port)).await?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
            PolicyEndpoint::Unix(path) => Stream::Unix(UnixStream::connect(path).await?),
        })
    }

    /// True if the server closed the connection (or sent something
    /// unasked) while it was idle: it is not reused then.
    fn gone(&self) -> bool {
        let mut b = [0u8; 1];
        let r = match self {
            Stream::Tcp(s) => s.try_read(&mut b),
            Stream::Unix(s) => s.try_read(&mut b),
        };
        !matches!(r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    async fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(b).await,
            Stream::Unix(s) => s.write_all(b).await,
        }
    }

    async fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(b).await,
            Stream::Unix(s) => s.read(b).await,
        }
    }

    /// Sends a request and reads its answer: the `action=` value. An
    /// error says what went wrong; `Ok((action, clean))` says whether the
    /// connection can serve another request.
    async fn exchange(&mut self, request: &[u8]) -> Result<(String, bool), String> {
        self.write_all(request)
            .await
            .map_err(|e| format!("cannot send the request: {e}"))?;
        let mut buf = Vec::with_capacity(512);
        let mut chunk = [0u8; 4096];
        loop {
            let n = self
                .read(&mut chunk)
                .await
                .map_err(|e| format!("cannot read the answer: {e}"))?;
            if n == 0 {
                return Err(if buf.is_empty() {
                    "the server closed the connection without answering".into()
                } else {
                    "the server closed the connection in the middle of an answer".into()
                });
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = answer_end(&buf) {
                let action = parse_answer(&buf[..end])?;
                return Ok((action, end == buf.len()));
            }
            if buf.len() > MAX_ANSWER {
                return Err(format!("answer longer than {MAX_ANSWER} bytes"));
            }
        }
    }
}

impl PolicyService {
    /// An idle connection that is still good, if any.
    fn take_idle(&self) -> Option<Idle> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(c) = idle.pop() {
            if c.since.elapsed() < self.max_idle
                && c.born.elapsed() < self.max_ttl
                && !c.stream.gone()
            {
                return Some(c);
            }
        }
        None
    }

    fn put_back(&self, c: Idle) {
        if c.born.elapsed() >= self.max_ttl {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(c);
        }
    }

    /// Sends a request and returns the server's `action=` value, on a
    /// pooled connection or a new one; the error is the last attempt's.
    pub(super) async fn ask(&self, request: &[u8]) -> Result<String, String> {
        let mut tries = 0;
        let mut last = String::new();
        while tries < self.try_limit {
            let pooled = self.take_idle();
            let reused = pooled.is_some();
            let attempt = async {
                let mut c = match pooled {
                    Some(c) => c,
                    None => {
                        let stream = Stream::connect(&self.endpoint)
                            .await
                            .map_err(|e| format!("cannot connect: {e}"))?;
                        let now = Instant::now();
                        Idle {
                            stream,
                            born: now,
                            since: now,
                        }
                    }
                };
                let (action, clean) = c.stream.exchange(request).await?;
                Ok::<_, String>((action, clean.then_some(c)))
            };
            match tokio::time::timeout(self.timeout, attempt).await {
                Ok(Ok((action, conn))) => {
                    if let Some(mut c) = conn {
                        c.since = Instant::now();
                        self.put_back(c);
                    }
                    return Ok(action);
                }
                Ok(Err(e)) => last = e,
                Err(_) => {
                    last = format!(
                        "no answer within {}",
                        humantime::format_duration(self.timeout)
                    )
                }
            }
            // A pooled connection the server dropped meanwhile is not a
            // failed try: the next one is made at once.
            if reused && !last.starts_with("no answer") {
                continue;
            }
            tries += 1;
            if tries < self.try_limit {
                tokio::time::sleep(RETRY_DELAY).await;
            }
        }
        Err(last)
    }
}
