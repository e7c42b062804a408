//! Bytes in, events out: command lines, DATA (dot-unstuffing, smuggling-safe)
//! and BDAT chunks. No I/O happens here.
//!
//! The caller appends whatever it reads from the socket to a [`BytesMut`] and
//! calls [`Receiver::next`] until it returns `None`, which means "read more".

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Buf, BytesMut};

/// Message content held in memory by all sessions together, against a
/// limit, so that many large messages arriving at once cannot exhaust
/// memory.
#[derive(Debug, Default)]
pub struct Buffered {
    used: AtomicU64,
}

impl Buffered {
    /// Bytes held right now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn charge(&self, n: u64, limit: u64) -> bool {
        let prev = self.used.fetch_add(n, Ordering::AcqRel);
        if prev.saturating_add(n) > limit {
            self.used.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn release(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// A share of [`Buffered`], given back when dropped.
#[derive(Debug, Default)]
pub struct Charge {
    budget: Option<Arc<Buffered>>,
    bytes: u64,
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.release(self.bytes);
        }
    }
}

/// Message content collected by the DATA and BDAT receivers.
#[derive(Debug, Default)]
pub struct Body {
    /// The content kept so far (at most `limit` bytes).
    pub bytes: Vec<u8>,
    /// Maximum size kept; the rest is counted and dropped.
    pub limit: u64,
    /// Total size received, including what was dropped.
    pub received: u64,
    /// A bare CR or LF was seen (only recorded for BDAT).
    pub bare_newline: bool,
    /// The content so far ends with a CR (BDAT: bare unless the next chunk
    /// starts with LF; checked across chunks).
    pub trailing_cr: bool,
    /// The shared in-memory budget ran out: content was dropped, the
    /// message must be refused with a 4xx.
    pub over_budget: bool,
    /// What this body holds of the shared budget (given back on drop).
    charge: Charge,
    /// The shared budget's limit.
    budget_limit: u64,
}

impl Body {
    /// A new empty body that keeps up to `limit` bytes.
    pub fn new(limit: u64) -> Body {
        Body {
            limit,
            ..Body::default()
        }
    }

    /// A body that also counts against `budget`, which all sessions share
    /// and which may hold at most `total` bytes.
    pub fn with_budget(limit: u64, budget: Arc<Buffered>, total: u64) -> Body {
        Body {
            limit,
            charge: Charge {
                budget: Some(budget),
                bytes: 0,
            },
            budget_limit: total,
            ..Body::default()
        }
    }

    /// True if more than `limit` bytes arrived.
    pub fn overflowed(&self) -> bool {
        self.received > self.limit
    }

    /// Takes the content; its share of the budget stays charged until the
    /// returned [`Charge`] is dropped (when the message is on disk).
    pub fn take(&mut self) -> (Vec<u8>, Charge) {
        let charge = Charge {
            budget: self.charge.budget.clone(),
            bytes: std::mem::take(&mut self.charge.bytes),
        };
        (std::mem::take(&mut self.bytes), charge)
    }

    fn push(&mut self, data: &[u8]) {
        self.received += data.len() as u64;
        if self.received > self.limit {
            // Too big: refused at the end whatever else comes, so nothing
            // is held meanwhile (the shared budget included).
            if !self.bytes.is_empty() {
                if let Some(budget) = &self.charge.budget {
                    budget.release(std::mem::take(&mut self.charge.bytes));
                }
                self.bytes = Vec::new();
            }
            return;
        }
        if self.over_budget {
            return;
        }
        if let Some(budget) = &self.charge.budget {
            let n = data.len() as u64;
            if !budget.charge(n, self.budget_limit) {
                // Keep counting (for the size limit) but hold nothing more.
                self.over_budget = true;
                budget.release(std::mem::take(&mut self.charge.bytes));
                self.bytes = Vec::new();
                return;
            }
            self.charge.bytes += n;
        }
        self.bytes.extend_from_slice(data);
    }
}

/// What the receiver found in the input.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A command line, without its line ending.
    Line(Vec<u8>),
    /// A command line longer than the limit; it was discarded.
    LineTooLong,
    /// The `<CRLF>.<CRLF>` end of DATA was seen; the body is complete.
    DataEnd,
    /// DATA contained a bare CR or LF. Nothing after it can be trusted to be
    /// where the client thinks it is: the caller must reply and close.
    BareNewline,
    /// A BDAT chunk has been received completely.
    ChunkEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataState {
    /// At the start of a line (after CRLF, or right after DATA).
    LineStart,
    /// Inside a line.
    InLine,
    /// After a CR inside a line.
    Cr,
    /// A `.` at the start of a line.
    Dot,
    /// `.` then CR at the start of a line.
    DotCr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Command,
    Data(DataState),
    Bdat { remaining: u64 },
}

/// The sans-IO input side of an SMTP session.
#[derive(Debug)]
pub struct Receiver {
    mode: Mode,
    max_line: usize,
    /// A too-long line is being skipped up to its LF.
    skipping: bool,
}

impl Receiver {
    /// A receiver in command mode with the given command line limit.
    pub fn new(max_line: usize) -> Receiver {
        Receiver {
            mode: Mode::Command,
            max_line,
            skipping: false,
        }
    }

    /// Sets the command line limit (a new configuration generation);
    /// takes effect from the next line.
    pub fn set_max_line(&mut self, max_line: usize) {
        self.max_line = max_line;
    }

    /// Switches to DATA mode (after the 354 reply).
    pub fn start_data(&mut self) {
        self.mode = Mode::Data(DataState::LineStart);
    }

    /// Switches to BDAT mode for a chunk of `size` octets.
    pub fn start_bdat(&mut self, size: u64) {
        self.mode = Mode::Bdat { remaining: size };
    }

    /// True while message content (DATA or BDAT) is being received.
    pub fn in_content(&self) -> bool {
        !matches!(self.mode, Mode::Command)
    }

    /// Consumes input from `buf`, writing message content into `body`.
    /// Returns `None` when more input is needed.
    #[must_use]
    pub fn next(&mut self, buf: &mut BytesMut, body: &mut Body) -> Option<Event> {
        match self.mode {
            Mode::Command => self.next_line(buf),
            Mode::Data(state) => self.data(buf, body, state),
            Mode::Bdat { remaining } => self.bdat(buf, body, remaining),
        }
    }

    fn next_line(&mut self, buf: &mut BytesMut) -> Option<Event> {
        loop {
            match memchr::memchr(b'\n', buf) {
                Some(i) => {
                    if self.skipping {
                        self.skipping = false;
                        buf.advance(i + 1);
                        continue;
                    }
                    let mut line = buf.split_to(i + 1);
                    line.truncate(i);
                    if line.last() == Some(&b'\r') {
                        line.truncate(i - 1);
                    }
                    if line.len() > self.max_line {
                        return Some(Event::LineTooLong);
                    }
                    return Some(Event::Line(line.to_vec()));
                }
                None if self.skipping => {
                    buf.clear();
                    return None;
                }
                None if buf.len() > self.max_line + 1 => {
                    buf.clear();
                    self.skipping = true;
                    return Some(Event::LineTooLong);
                }
                None => return None,
            }
        }
    }

    fn data(&mut self, buf: &mut BytesMut, body: &mut Body, mut state: DataState) -> Option<Event> {
        let mut i = 0;
        let event = loop {
            if i >= buf.len() {
                break None;
            }
            match state {
                DataState::InLine => {
                    // Fast path: copy everything up to the next CR or LF.
                    match memchr::memchr2(b'\r', b'\n', &buf[i..]) {
                        Some(off) => {
                            body.push(&buf[i..i + off]);
                            i += off;
                            if buf[i] == b'\n' {
                                break Some(Event::BareNewline);
                            }
                            state = DataState::Cr;
                            i += 1;
                        }
                        None => {
                            body.push(&buf[i..]);
                            i = buf.len();
                        }
                    }
                }
                DataState::LineStart => match buf[i] {
                    b'.' => {
                        state = DataState::Dot;
                        i += 1;
                    }
                    b'\n' => break Some(Event::BareNewline),
                    _ => state = DataState::InLine,
                },
                DataState::Cr => {
                    if buf[i] != b'\n' {
                        break Some(Event::BareNewline);
                    }
                    body.push(b"\r\n");
                    state = DataState::LineStart;
                    i += 1;
                }
                DataState::Dot => match buf[i] {
                    b'\r' => {
                        state = DataState::DotCr;
                        i += 1;
                    }
                    b'\n' => break Some(Event::BareNewline),
                    // RFC 5321 §4.5.2: drop the leading dot, keep the rest.
                    _ => state = DataState::InLine,
                },
                DataState::DotCr => {
                    if buf[i] != b'\n' {
                        break Some(Event::BareNewline);
                    }
                    i += 1;
                    break Some(Event::DataEnd);
                }
            }
        };
        buf.advance(i);
        match event {
            Some(Event::DataEnd) | Some(Event::BareNewline) => self.mode = Mode::Command,
            _ => self.mode = Mode::Data(state),
        }
        event
    }

    /// A BDAT chunk's bytes. Whether the content so far ends in CR lives
    /// in the body (a new one per transaction), so a CR at a chunk's end
    /// is checked against the next chunk's first byte.
    fn bdat(&mut self, buf: &mut BytesMut, body: &mut Body, remaining: u64) -> Option<Event> {
        if remaining == 0 {
            self.mode = Mode::Command;
            return Some(Event::ChunkEnd);
        }
        if buf.is_empty() {
            return None;
        }
        let take = remaining.min(buf.len() as u64) as usize;
        let chunk = buf.split_to(take);
        let mut prev_cr = body.trailing_cr;
        for &b in chunk.iter() {
            if prev_cr && b != b'\n' || !prev_cr && b == b'\n' {
                body.bare_newline = true;
            }
            prev_cr = b == b'\r';
        }
        body.trailing_cr = prev_cr;
        body.push(&chunk);
        let remaining = remaining - take as u64;
        if remaining == 0 {
            self.mode = Mode::Command;
            Some(Event::ChunkEnd)
        } else {
            self.mode = Mode::Bdat { remaining };
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_share_a_memory_budget() {
        let budget = Arc::new(Buffered::default());
        let mut a = Body::with_budget(1000, budget.clone(), 100);
        let mut b = Body::with_budget(1000, budget.clone(), 100);
        a.push(&[b'a'; 60]);
        assert_eq!(budget.used(), 60);
        b.push(&[b'b'; 30]);
        b.push(&[b'b'; 30]);
        // b is over: it drops what it held and keeps only counting.
        assert!(b.over_budget && !a.over_budget);
        assert!(b.bytes.is_empty() && b.received == 60);
        assert_eq!(budget.used(), 60);
        // Taking a's content keeps the charge until the message is done.
        let (content, charge) = a.take();
        assert_eq!(content.len(), 60);
        drop(a);
        assert_eq!(budget.used(), 60);
        drop(charge);
        assert_eq!(budget.used(), 0);
        let mut c = Body::with_budget(1000, budget.clone(), 100);
        c.push(&[b'c'; 100]);
        assert!(!c.over_budget);
        drop(c);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    fn run_data(input: &[u8]) -> (Option<Event>, Vec<u8>, BytesMut) {
        let mut rx = Receiver::new(512);
        rx.start_data();
        let mut buf = BytesMut::from(input);
        let mut body = Body::new(1 << 20);
        let ev = rx.next(&mut buf, &mut body);
        (ev, body.bytes, buf)
    }

    #[test]
    fn command_lines_and_pipelining() {
        let mut rx = Receiver::new(512);
        let mut body = Body::new(0);
        let mut buf = BytesMut::from(&b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nhello"[..]);
        assert_eq!(
            rx.next(&mut buf, &mut body),
            Some(Event::Line(b"MAIL FROM:<a@b>".to_vec()))
        );
        assert_eq!(
            rx.next(&mut buf, &mut body),
            Some(Event::Line(b"RCPT TO:<c@d>".to_vec()))
        );
        assert_eq!(
            rx.next(&mut buf, &mut body),
            Some(Event::Line(b"DATA".to_vec()))
        );
        assert_eq!(rx.next(&mut buf, &mut body), None);
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn long_line_is_skipped_once() {
        let mut rx = Receiver::new(10);
        let mut body = Body::new(0);
        let mut buf = BytesMut::from(&b"0123456789abcdef"[..]);
        assert_eq!(rx.next(&mut buf, &mut body), Some(Event::LineTooLong));
        buf.extend_from_slice(b"more\r\nNOOP\r\n");
        assert_eq!(
            rx.next(&mut buf, &mut body),
            Some(Event::Line(b"NOOP".to_vec()))
        );
        let mut buf = BytesMut::from(&b"0123456789abc\r\n"[..]);
        assert_eq!(rx.next(&mut buf, &mut body), Some(Event::LineTooLong));
    }

    #[test]
    fn data_end_and_unstuffing() {
        let (ev, body, rest) = run_data(b"a\r\n..b\r\n.c\r\n.\r\nQUIT\r\n");
        assert_eq!(ev, Some(Event::DataEnd));
        assert_eq!(body, b"a\r\n.b\r\nc\r\n");
        assert_eq!(&rest[..], b"QUIT\r\n");
        let (ev, body, _) = run_data(b".\r\n");
        assert_eq!(ev, Some(Event::DataEnd));
        assert!(body.is_empty());
    }

    #[test]
    fn data_split_across_reads() {
        let input = b"Subject: x\r\n\r\nbody\r\n..dot\r\n.\r\n";
        for split in 1..input.len() {
            let mut rx = Receiver::new(512);
            rx.start_data();
            let mut body = Body::new(1 << 20);
            let mut buf = BytesMut::from(&input[..split]);
            let first = rx.next(&mut buf, &mut body);
            assert_eq!(first, None, "split at {split}");
            buf.extend_from_slice(&input[split..]);
            assert_eq!(rx.next(&mut buf, &mut body), Some(Event::DataEnd));
            assert_eq!(body.bytes, b"Subject: x\r\n\r\nbody\r\n.dot\r\n");
        }
    }

    /// SMTP smuggling (CVE-2023-51764/51765/51766 class): every end marker
    /// other than CRLF.CRLF, and every bare CR or LF, is refused.
    #[test]
    fn smuggling_vectors_are_refused() {
        let vectors: &[&[u8]] = &[
            b"x\n.\r\nMAIL FROM:<evil@x>\r\n",
            b"x\r\n.\nMAIL FROM:<evil@x>\r\n",
            b"x\n.\nMAIL FROM:<evil@x>\r\n",
            b"x\r.\r\nMAIL FROM:<evil@x>\r\n",
            b"x\r\n.\rMAIL FROM:<evil@x>\r\n",
            b"x\r.\rMAIL FROM:<evil@x>\r\n",
            b"\n.\r\n",
            b"x\nbare lf in line\r\n.\r\n",
            b"x\rbare cr in line\r\n.\r\n",
        ];
        for v in vectors {
            let (ev, body, _) = run_data(v);
            assert_eq!(
                ev,
                Some(Event::BareNewline),
                "vector {:?}",
                String::from_utf8_lossy(v)
            );
            assert!(!body.windows(4).any(|w| w == b"MAIL"));
        }
    }

    #[test]
    fn oversize_is_counted_not_kept() {
        let mut rx = Receiver::new(512);
        rx.start_data();
        let mut body = Body::new(4);
        let mut buf = BytesMut::from(&b"0123456789\r\n.\r\n"[..]);
        assert_eq!(rx.next(&mut buf, &mut body), Some(Event::DataEnd));
        assert!(body.overflowed());
        assert_eq!(body.received, 12);
    }

    #[test]
    fn bdat_chunks() {
        let mut rx = Receiver::new(512);
        let mut body = Body::new(1 << 20);
        rx.start_bdat(4);
        let mut buf = BytesMut::from(&b"ab\r"[..]);
        assert_eq!(rx.next(&mut buf, &mut body), None);
        buf.extend_from_slice(b"\ncdQUIT\r\n");
        assert_eq!(rx.next(&mut buf, &mut body), Some(Event::ChunkEnd));
        assert_eq!(&buf[..], b"cdQUIT\r\n");
        rx.start_bdat(2);
        assert_eq!(rx.next(&mut buf, &mut body), Some(Event::ChunkEnd));
        assert_eq!(body.bytes, b"ab\r\ncd");
        assert!(!body.bare_newline);
        rx.start_bdat(0);
        assert_eq!(rx.next(&mut buf, &mut body), Some(Event::ChunkEnd));
        assert_eq!(
            rx.next(&mut buf, &mut body),
            Some(Event::Line(b"QUIT".to_vec()))
        );
    }

    #[test]
    fn an_oversized_body_holds_nothing_until_its_end() {
        let budget = Arc::new(Buffered::default());
        let mut rx = Receiver::new(512);
        rx.start_data();
        let mut body = Body::with_budget(8, budget.clone(), 1 << 20);
        let mut buf = BytesMut::from(&b"0123456"[..]);
        assert_eq!(rx.next(&mut buf, &mut body), None);
        assert_eq!(budget.used(), 7);
        buf.extend_from_slice(b"789");
        assert_eq!(rx.next(&mut buf, &mut body), None);
        assert!(body.overflowed() && body.bytes.is_empty());
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn bdat_trailing_cr_is_noted() {
        let mut rx = Receiver::new(512);
        let mut body = Body::new(1 << 20);
        rx.start_bdat(2);
        let mut buf = BytesMut::from(&b"a\r"[..]);
        assert_eq!(rx.next(&mut buf, &mut body), Some(Event::ChunkEnd));
        assert!(body.trailing_cr && !body.bare_newline);
        // The next chunk brings the LF: not bare after all.
        rx.start_bdat(1);
        buf.extend_from_slice(b"\n");
        assert_eq!(rx.next(&mut buf, &mut body), Some(Event::ChunkEnd));
        assert!(!body.trailing_cr && !body.bare_newline);
        // LAST with nothing after a CR: it stays bare.
        rx.start_bdat(1);
        buf.extend_from_slice(b"\r");
        assert_eq!(rx.next(&mut buf, &mut body), Some(Event::ChunkEnd));
        rx.start_bdat(0);
        assert_eq!(rx.next(&mut buf, &mut body), Some(Event::ChunkEnd));
        assert!(body.trailing_cr);
    }

    #[test]
    fn bdat_bare_lf_is_flagged() {
        let mut rx = Receiver::new(512);
        let mut body = Body::new(1 << 20);
        rx.start_bdat(3);
        let mut buf = BytesMut::from(&b"a\nb"[..]);
        assert_eq!(rx.next(&mut buf, &mut body), Some(Event::ChunkEnd));
        assert!(body.bare_newline);
    }
}
