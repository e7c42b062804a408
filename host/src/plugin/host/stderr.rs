//! A guest's stderr, in the host log. What a plugin or its language
//! runtime writes there (a Rust panic message, a Python traceback) is
//! held in a small buffer while the call runs, then logged a line per
//! line with the chain entry's name and the queue ID, like `host.log`.
//! Bounded per call and rate-limited per chain entry, so a chatty or
//! crashing plugin under a spam wave cannot flood the log. stdout stays
//! discarded.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes held between two flushes; more is counted and dropped.
const MAX_PENDING: usize = 8 << 10;

/// Lines logged per flush (one call); the rest are counted.
const MAX_LINES: usize = 20;

/// Characters of one logged line.
const MAX_LINE: usize = 1000;

/// Lines a chain entry may log in a burst, over all its instances...
const BURST: f64 = 50.0;

/// ...and per second after that.
const PER_SECOND: f64 = 5.0;

/// What the guest wrote since the last flush.
#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    dropped: usize,
}

/// The guest's stderr: a cheap handle on the instance's buffer (WASI asks
/// for a new stream each time the guest opens stderr).
#[derive(Debug, Clone, Default)]
pub struct Stderr(Arc<Mutex<Pending>>);

impl Stderr {
    fn push(&self, data: &[u8]) {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = MAX_PENDING.saturating_sub(p.bytes.len());
        let take = data.len().min(room);
        p.bytes.extend_from_slice(&data[..take]);
        p.dropped += data.len() - take;
    }

    /// Logs what was written since the last flush: each line once, as
    /// `CTX: plugin ENTRY: stderr: LINE`, within the per-call bound and
    /// the entry's rate.
    pub fn flush(&self, context: &str, entry: &str, rate: &Rate) {
        let Pending { bytes, dropped } =
            std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        let text = String::from_utf8_lossy(&bytes);
        let mut skipped = 0usize;
        for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
            if i >= MAX_LINES {
                skipped += 1;
                continue;
            }
            let Some(missed) = rate.take() else {
                continue;
            };
            if missed > 0 {
                tracing::warn!(
                    "{context}: plugin {entry}: {missed} stderr line(s) not logged (more than {PER_SECOND} per second)"
                );
            }
            let line: String = line
                .chars()
                .take(MAX_LINE)
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            tracing::warn!("{context}: plugin {entry}: stderr: {line}");
        }
        if skipped > 0 || dropped > 0 {
            tracing::warn!(
                "{context}: plugin {entry}: stderr: {skipped} more line(s) and {dropped} byte(s) not logged (at most {MAX_LINES} lines and {MAX_PENDING} bytes per call)"
            );
        }
    }
}

impl IsTerminal for Stderr {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Stderr {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for Stderr {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always writable: what does not fit is dropped, never waited for
        // (a guest must not block on its own log).
        Ok(4096)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Stderr {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Stderr {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A chain entry's stderr rate: a token bucket shared by every instance
/// that serves the entry.
#[derive(Debug)]
pub struct Rate(Mutex<Bucket>);

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Lines refused since the last one logged.
    missed: usize,
}

impl Default for Rate {
    fn default() -> Rate {
        Rate(Mutex::new(Bucket {
            tokens: BURST,
            at: Instant::now(),
            missed: 0,
        }))
    }
}

impl Rate {
    /// A line may be logged: `Some(lines refused before it)`; `None` when
    /// the entry is over its rate.
    fn take(&self) -> Option<usize> {
        let mut b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(b.at).as_secs_f64() * PER_SECOND;
        b.tokens = (b.tokens + refill).min(BURST);
        b.at = now;
        if b.tokens < 1.0 {
            b.missed += 1;
            return None;
        }
        b.tokens -= 1.0;
        Some(std::mem::take(&mut b.missed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_bounded_and_never_block() {
        let mut s = Stderr::default();
        assert_eq!(s.check_write().unwrap(), 4096);
        s.write(Bytes::from(vec![b'x'; MAX_PENDING + 10])).unwrap();
        let p = s.0.lock().unwrap();
        assert_eq!((p.bytes.len(), p.dropped), (MAX_PENDING, 10));
    }

    #[test]
    fn the_rate_refuses_past_the_burst_and_counts_what_it_refused() {
        let r = Rate::default();
        for _ in 0..BURST as usize {
            assert_eq!(r.take(), Some(0));
        }
        assert_eq!(r.take(), None);
        assert_eq!(r.take(), None);
        // A second later five more go through; the first says two were missed.
        r.0.lock().unwrap().at -= std::time::Duration::from_secs(1);
        assert_eq!(r.take(), Some(2));
    }
}
