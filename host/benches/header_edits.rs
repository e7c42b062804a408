//! What the header work at the end of DATA costs for a message at the size
//! limit, per edit path, each on the message that is its worst case: one
//! field repeated over the whole header section. Prints one line per path
//! (median of several runs). Run with
//! `cargo bench --locked -p postern --bench header_edits` (bench/run.sh
//! does).

use std::time::{Duration, Instant};

use postern::config::Smtp;
use postern::deliver::delivered_before;
use postern::message::{HeaderAction, edit, inspect};
use postern::plugin::input::ParsedMessage;

/// Runs `f` a few times on what `setup` makes (not timed); the median.
fn median<T>(mut setup: impl FnMut() -> T, mut f: impl FnMut(T)) -> Duration {
    let mut times: Vec<Duration> = (0..7)
        .map(|_| {
            let input = setup();
            let t = Instant::now();
            f(input);
            t.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// `field` repeated over half of `size` bytes, then body up to `size`.
fn message(field: &str, size: usize) -> (Vec<u8>, usize) {
    let copies = size / 2 / field.len();
    let mut m = field.repeat(copies).into_bytes();
    m.extend_from_slice(b"\r\n");
    let line = format!("{}\r\n", "x".repeat(76));
    while m.len() + line.len() <= size {
        m.extend_from_slice(line.as_bytes());
    }
    (m, copies)
}

fn report(path: &str, size: usize, fields: usize, d: Duration) {
    println!(
        "header-edits {path:<22} size={size} fields={fields} ms={:.2}",
        d.as_secs_f64() * 1e3
    );
}

fn main() {
    let size = usize::try_from(Smtp::default().max_message_size.0).unwrap_or(usize::MAX);
    // An ordinary message: the checks find nothing to change, no copy.
    let (mut plain_full, n) = message("X-Ordinary: a field of an ordinary length\r\n", size / 50);
    plain_full.resize(size, b'x');
    let d = median(
        || plain_full.clone(),
        |m| {
            let found = inspect(&m);
            std::hint::black_box(edit(m, &found, &[]));
        },
    );
    report("plain", size, n, d);

    let cases: [(&str, &str, Vec<HeaderAction>); 4] = [
        ("return-path", "Return-Path: <r@example.org>\r\n", vec![]),
        (
            "plugin remove-all",
            "X-Repeat: v\r\n",
            vec![HeaderAction::Remove {
                name: "X-Repeat".into(),
                index: None,
            }],
        ),
        (
            "plugin change x64",
            "X-Repeat: v\r\n",
            (0..64)
                .map(|i| HeaderAction::Change {
                    name: "X-Repeat".into(),
                    index: i * 997,
                    value: format!("rewritten {i}"),
                })
                .collect(),
        ),
        ("missing separator", "X-A: v\r\n", vec![]),
    ];
    for (path, field, actions) in cases {
        let (mut m, n) = message(field, size);
        if path == "missing separator" {
            // The empty line replaced by a line that is no field.
            let at = m
                .windows(4)
                .position(|w| w == b"\n\r\nx")
                .map_or(0, |i| i + 1);
            m.splice(at..at + 2, *b"(no field)\r\n");
            m.truncate(size);
        }
        let d = median(
            || m.clone(),
            |m| {
                let found = inspect(&m);
                std::hint::black_box(edit(m, &found, &actions));
            },
        );
        report(path, m.len(), n, d);
    }

    // The scans alone: the hop count (end of DATA) and Delivered-To:
    // (each local delivery), and what a data-stage plugin call parses.
    let (m, n) = message(
        "Received: from a by b; Sat, 28 Nov 2026 12:00:00 +0000\r\n",
        size,
    );
    report(
        "hop count scan",
        m.len(),
        n,
        median(
            || (),
            |()| {
                std::hint::black_box(inspect(&m));
            },
        ),
    );
    let (m, n) = message("Delivered-To: someone@example.org\r\n", size);
    let rcpts = || ["alice@example.test".to_string()].into_iter();
    report(
        "delivered-to scan",
        m.len(),
        n,
        median(
            || (),
            |()| {
                std::hint::black_box(delivered_before(&[b"", &m], rcpts()));
            },
        ),
    );
    let shared = std::sync::Arc::new(m);
    report(
        "plugin view parse",
        shared.len(),
        n,
        median(
            || shared.clone(),
            |m| {
                std::hint::black_box(ParsedMessage::new(m));
            },
        ),
    );
}
