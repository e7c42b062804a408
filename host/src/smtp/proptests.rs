//! Property tests of the protocol core: the DATA receiver against a
//! reference model written straight from RFC 5321 §4.1.1.4 and §4.5.2
//! (so that no split of the input and no odd mix of CR, LF and dots can
//! end DATA anywhere but at `<CRLF>.<CRLF>`), the command parser on
//! arbitrary bytes, and the session state machine on arbitrary command
//! sequences (no panic; every refusal carries an enhanced status code).

use bytes::BytesMut;
use proptest::prelude::*;

use super::command::{ParseOptions, parse};
use super::receiver::{Body, Event, Receiver};
use super::reply::r;
use super::session::tests::session;
use super::session::{Decision, SessionConfig, Step};

/// What the reference model sees in DATA input.
#[derive(Debug, PartialEq, Eq)]
enum Model {
    /// `.` alone on a line: the content (dot-unstuffed) and where the
    /// input after the end marker starts.
    End(Vec<u8>, usize),
    /// A CR not followed by LF, or an LF not preceded by CR.
    Bare,
    /// Neither yet: more input needed.
    Incomplete,
}

/// RFC 5321 DATA, the plain way: lines end in CRLF, any other CR or LF is
/// an error, a line of one dot ends the content, a leading dot is removed.
fn model(input: &[u8]) -> Model {
    let mut body = Vec::new();
    let mut i = 0;
    loop {
        let rest = &input[i..];
        let Some(p) = rest.iter().position(|&b| b == b'\r' || b == b'\n') else {
            return Model::Incomplete;
        };
        if rest[p] == b'\n' {
            return Model::Bare;
        }
        match rest.get(p + 1) {
            None => return Model::Incomplete,
            Some(b'\n') => {}
            Some(_) => return Model::Bare,
        }
        let line = &rest[..p];
        if line == b"." {
            return Model::End(body, i + p + 2);
        }
        body.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        body.extend_from_slice(b"\r\n");
        i += p + 2;
    }
}

/// Feeds `input` to a receiver in DATA mode in the given chunk sizes and
/// returns the first event, the body, and what was left unconsumed.
fn run_data(input: &[u8], chunks: &[usize]) -> (Option<Event>, Body, Vec<u8>) {
    let mut rx = Receiver::new(1000);
    rx.start_data();
    let mut body = Body::new(1 << 20);
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut sizes = chunks.iter().copied().cycle();
    loop {
        if let Some(ev) = rx.next(&mut buf, &mut body) {
            // Whatever was fed but not consumed stays for the next stage.
            let mut left = buf.to_vec();
            left.extend_from_slice(&input[fed..]);
            return (Some(ev), body, left);
        }
        if fed == input.len() {
            return (None, body, buf.to_vec());
        }
        let n = sizes.next().unwrap_or(1).max(1).min(input.len() - fed);
        buf.extend_from_slice(&input[fed..fed + n]);
        fed += n;
    }
}

fn data_bytes() -> impl Strategy<Value = Vec<u8>> {
    // A small alphabet hits CR/LF/dot corner cases densely.
    prop::collection::vec(
        prop::sample::select(vec![b'\r', b'\n', b'.', b'a', b' ']),
        0..80,
    )
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..9, 1..6)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn data_receiver_matches_the_rfc_model(input in data_bytes(), chunks in chunk_sizes()) {
        let (event, body, left) = run_data(&input, &chunks);
        match model(&input) {
            Model::End(content, rest) => {
                prop_assert_eq!(event, Some(Event::DataEnd));
                prop_assert_eq!(&body.bytes, &content);
                prop_assert_eq!(&left[..], &input[rest..]);
            }
            Model::Bare => prop_assert_eq!(event, Some(Event::BareNewline)),
            Model::Incomplete => prop_assert_eq!(event, None),
        }
    }

    #[test]
    fn well_formed_messages_end_exactly_at_the_marker(
        lines in prop::collection::vec("[.a-z ]{0,12}", 0..8),
        after in "[A-Z .\r\n]{0,20}",
        chunks in chunk_sizes(),
    ) {
        // `lines` is the content; the client dot-stuffs it on the wire.
        let mut input = Vec::new();
        for l in &lines {
            if l.starts_with('.') {
                input.push(b'.');
            }
            input.extend_from_slice(l.as_bytes());
            input.extend_from_slice(b"\r\n");
        }
        input.extend_from_slice(b".\r\n");
        let marker_end = input.len();
        input.extend_from_slice(after.as_bytes());
        let (event, body, left) = run_data(&input, &chunks);
        prop_assert_eq!(event, Some(Event::DataEnd));
        let mut want = Vec::new();
        for l in &lines {
            want.extend_from_slice(l.as_bytes());
            want.extend_from_slice(b"\r\n");
        }
        prop_assert_eq!(body.bytes, want);
        // Pipelined input after the end marker is left for the next command.
        prop_assert_eq!(&left[..], &input[marker_end..]);
    }

    #[test]
    fn command_parser_takes_any_bytes(line in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse(&line, ParseOptions::default());
    }

    #[test]
    fn command_parser_takes_any_near_command(line in "(MAIL FROM:|RCPT TO:|EHLO |BDAT |AUTH |VRFY )[<>@. a-zA-Z0-9=+:\\[\\]\"\\\\-]{0,60}") {
        let _ = parse(line.as_bytes(), ParseOptions::default());
    }

    #[test]
    fn command_parser_takes_any_utf8_near_command(
        line in "(MAIL FROM:|RCPT TO:|EHLO |AUTH |VRFY )(\\PC|[<>@.+ :\"\\\\\\[\\]]){0,40}( SMTPUTF8)?"
    ) {
        let _ = parse(line.as_bytes(), ParseOptions::default());
        let _ = parse(line.as_bytes(), ParseOptions { strict_envelopes: true });
    }

    #[test]
    fn session_survives_any_command_sequence(cmds in prop::collection::vec(command(), 0..40)) {
        let mut s = session(SessionConfig::default());
        for line in cmds {
            let mut step = match parse(line.as_bytes(), ParseOptions::default()) {
                Ok(c) => s.command(c),
                Err(e) => s.bad_command(&e),
            };
            // Answer every question the session asks, as the driver would.
            let closed = loop {
                step = match step {
                    Step::Reply(reply) | Step::StartData(reply) => {
                        check_reply(&reply)?;
                        if reply.code == 354 {
                            s.data_end(&Body::new(1 << 20))
                        } else {
                            break false;
                        }
                    }
                    Step::Close(reply) => {
                        check_reply(&reply)?;
                        break true;
                    }
                    Step::Helo(g) => s.helo_done(g, Decision::Accept(())),
                    Step::Mail(from, params) => {
                        s.mail_done("QID".into(), from, params, Decision::Accept(None))
                    }
                    Step::Rcpt(path, params) => s.rcpt_done(path, &params, Decision::Accept(())),
                    Step::StartBdat(_) => s.chunk_end(&Body::new(1 << 20)),
                    Step::Commit => s.commit_done(Ok(r(250, 2, 0, 0, "Ok: queued as QID"))),
                    Step::Vrfy(_) => s.vrfy_done(r(252, 2, 0, 0, "Cannot VRFY user")),
                    Step::StartTls(reply) => {
                        check_reply(&reply)?;
                        s.tls_started();
                        break false;
                    }
                    Step::Auth { .. } => {
                        let reply = s.authenticated("alice@example.test".into());
                        s.answer(reply)
                    }
                };
            };
            if closed {
                break;
            }
        }
    }
}

/// A reply code is in 2xx–5xx, and every refusal has an enhanced code.
fn check_reply(reply: &super::reply::Reply) -> Result<(), TestCaseError> {
    prop_assert!((200..600).contains(&reply.code), "code {}", reply.code);
    if reply.code >= 400 {
        prop_assert!(
            reply.enhanced.is_some(),
            "{} without enhanced code",
            reply.code
        );
    }
    Ok(())
}

fn command() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("EHLO client.test".to_string()),
        Just("HELO client.test".to_string()),
        Just("EHLO".to_string()),
        Just("MAIL FROM:<a@example.org>".to_string()),
        Just("MAIL FROM:<> SIZE=100 BODY=8BITMIME".to_string()),
        Just("MAIL FROM:<a@example.org> SMTPUTF8".to_string()),
        Just("RCPT TO:<alice@example.test>".to_string()),
        Just("RCPT TO:<postmaster>".to_string()),
        Just("DATA".to_string()),
        Just("BDAT 10".to_string()),
        Just("BDAT 0 LAST".to_string()),
        Just("BDAT 5 LAST".to_string()),
        Just("RSET".to_string()),
        Just("NOOP".to_string()),
        Just("HELP".to_string()),
        Just("VRFY alice".to_string()),
        Just("STARTTLS".to_string()),
        Just("AUTH PLAIN AGFsaWNlAHNlY3JldA==".to_string()),
        Just("AUTH LOGIN".to_string()),
        Just("QUIT".to_string()),
        "[ -~]{0,30}",
    ]
}
