//! Header parsing and editing, against the straightforward algorithms
//! (a drain or splice per field) as the reference.

use proptest::prelude::*;

use super::*;

/// Applies `actions` with [`edit`] the way the host does; additions go to
/// `prepend`.
fn apply_actions(content: Vec<u8>, prepend: &mut String, actions: &[HeaderAction]) -> Vec<u8> {
    let found = inspect(&content);
    let out = edit(content, &found, actions);
    prepend.push_str(&out.added);
    out.content
}

#[test]
fn a_header_section_ends_at_the_first_line_that_is_not_a_field() {
    // A leading continuation line continues nothing: no headers.
    let msg = b"\t(Authenticated sender: ceo@example.test)\r\nDate: x\r\n\r\nbody\r\n";
    assert_eq!(parse_headers(msg), (vec![], 0));
    assert_eq!(inspect(msg).missing_separator, Some(0));
    // A name with blanks or parentheses is not a field name.
    let msg = b"Subject: hi\r\n(odd) name: v\r\nDate: x\r\n";
    let (fields, body) = parse_headers(msg);
    assert_eq!(fields.len(), 1);
    assert_eq!(body, 13);
    assert_eq!(inspect(msg).missing_separator, Some(13));
    // A value that starts on a continuation line has no leading blank.
    let (fields, _) = parse_headers(b"Subject:\r\n  hi\r\n there\r\n\r\nb");
    assert_eq!(fields[0].value, "hi there");
    // The obsolete blank before the colon is still a field.
    let (fields, _) = parse_headers(b"Subject : hi\r\n there\r\n\r\nb");
    assert_eq!(
        (fields[0].name.as_str(), fields[0].value.as_str()),
        ("Subject", "hi there")
    );
    // Well formed, headers only, empty: nothing to insert.
    assert_eq!(
        inspect(b"Subject: hi\r\n\r\nbody\r\n").missing_separator,
        None
    );
    assert_eq!(inspect(b"\r\nbody\r\n").missing_separator, None);
    assert_eq!(inspect(b"Subject: hi\r\n").missing_separator, None);
    assert_eq!(inspect(b"").missing_separator, None);
}

#[test]
fn fields_only_postern_writes_are_removed() {
    let msg =
        b"Return-Path: <x@y>\r\nSubject: s\r\nx-postern-score: -50\r\n more\r\n\r\nReturn-Path: body\r\n"
            .to_vec();
    let found = inspect(&msg);
    assert_eq!(found.host_only, 2);
    let out = edit(msg, &found, &[]);
    assert_eq!(out.host_only_removed, 2);
    assert_eq!(out.content, b"Subject: s\r\n\r\nReturn-Path: body\r\n");
}

#[test]
fn header_parsing_keeps_at_most_the_fields_asked_for() {
    let mut msg = Vec::new();
    for i in 0..10 {
        msg.extend_from_slice(format!("X-{i}: v\r\n continued\r\n").as_bytes());
    }
    msg.extend_from_slice(b"\r\nbody\r\n");
    let (all, body) = parse_headers(&msg);
    let (some, body2) = parse_headers_up_to(&msg, 3);
    assert_eq!((all.len(), some.len()), (10, 3));
    assert_eq!(body, body2);
    assert_eq!(&msg[body..], b"body\r\n");
    assert_eq!(some[2].value, "v continued");
    assert_eq!(some[2].range, all[2].range);
}

#[test]
fn header_fields_are_folded_at_spaces_and_cleaned() {
    assert_eq!(header_field("X-A", "short"), "X-A: short\r\n");
    let words: Vec<String> = (0..40).map(|i| format!("word{i:02}")).collect();
    let f = header_field("X-Many", &words.join(" "));
    assert!(f.ends_with("\r\n"));
    let lines: Vec<&str> = f.trim_end_matches("\r\n").split("\r\n").collect();
    assert!(lines.len() > 3);
    assert!(lines.iter().all(|l| l.len() <= 78), "{lines:?}");
    assert!(lines[1..].iter().all(|l| l.starts_with(' ')));
    // Unfolding gives the value back.
    assert_eq!(
        f.replace("\r\n ", " "),
        format!("X-Many: {}\r\n", words.join(" "))
    );
    // A run without spaces is kept whole; control characters go.
    let run = "x".repeat(200);
    assert_eq!(header_field("X-R", &run), format!("X-R: {run}\r\n"));
    assert_eq!(header_field("X-C", "a\r\nb\0c\td"), "X-C: a  b c\td\r\n");
    // Blanks, trailing or in runs (control characters become blanks),
    // never fold into a line of only blanks.
    let f = header_field("Subject", &format!("{} ", "y".repeat(70)));
    assert!(!f.contains("\r\n \r\n") && f.ends_with("y\r\n"), "{f:?}");
    for v in [
        format!("a{}b", " ".repeat(200)),
        format!("a{}b", "\r\n".repeat(80)),
    ] {
        let f = header_field("X-A", &v);
        assert!(
            f.split("\r\n")
                .all(|l| l.is_empty() || !l.trim().is_empty()),
            "{f:?}"
        );
    }
}

const MSG: &[u8] = b"Subject: hello\r\n world\r\nX-A: 1\r\nX-A: 2\r\n\r\nbody X-A: 3\r\n";

#[test]
fn parses_folded_headers() {
    let (fields, body) = parse_headers(MSG);
    assert_eq!(fields.len(), 3);
    assert_eq!(fields[0].name, "Subject");
    assert_eq!(fields[0].value, "hello world");
    assert_eq!(&MSG[body..], b"body X-A: 3\r\n");
    let (fields, body) = parse_headers(b"no header here\r\n");
    assert!(fields.is_empty());
    assert_eq!(body, 0);
}

#[test]
fn applies_actions() {
    let mut prepend = String::new();
    let out = apply_actions(
        MSG.to_vec(),
        &mut prepend,
        &[
            HeaderAction::Add {
                name: "X-New".into(),
                value: "a\r\nb".into(),
            },
            HeaderAction::Change {
                name: "x-a".into(),
                index: 1,
                value: "two".into(),
            },
            HeaderAction::Remove {
                name: "Subject".into(),
                index: None,
            },
            HeaderAction::Change {
                name: "X-Missing".into(),
                index: 0,
                value: "v".into(),
            },
        ],
    );
    assert_eq!(prepend, "X-New: a  b\r\nX-Missing: v\r\n");
    assert_eq!(out, b"X-A: 1\r\nX-A: two\r\n\r\nbody X-A: 3\r\n");
    let out = apply_actions(
        MSG.to_vec(),
        &mut prepend,
        &[HeaderAction::Remove {
            name: "X-A".into(),
            index: Some(0),
        }],
    );
    assert_eq!(
        out,
        b"Subject: hello\r\n world\r\nX-A: 2\r\n\r\nbody X-A: 3\r\n"
    );
    // Indexes are the plugins' view: removing X-A[0] does not make
    // X-A[1] the first; the later of two actions on one field wins.
    let out = apply_actions(
        MSG.to_vec(),
        &mut prepend,
        &[
            HeaderAction::Remove {
                name: "X-A".into(),
                index: Some(0),
            },
            HeaderAction::Change {
                name: "X-A".into(),
                index: 1,
                value: "second".into(),
            },
            HeaderAction::Change {
                name: "Subject".into(),
                index: 0,
                value: "first".into(),
            },
            HeaderAction::Change {
                name: "Subject".into(),
                index: 0,
                value: "last".into(),
            },
        ],
    );
    assert_eq!(out, b"Subject: last\r\nX-A: second\r\n\r\nbody X-A: 3\r\n");
}

#[test]
fn inspection_counts_hops_and_sees_what_is_there() {
    let msg = b"Received: a\r\nreceived : b\r\n  folded Received: c\r\nMessage-Id: <x@y>\r\n\r\nReceived: body\r\nDate: body\r\n";
    let found = inspect(msg);
    assert_eq!(found.received, 2);
    assert!(found.message_id && !found.date);
    assert_eq!(found.host_only, 0);
    assert_eq!(found.missing_separator, None);
    let found = inspect(b"Return-Path: <a@b>\r\nDATE: now\r\nX-Postern-Score: 9\r\n");
    assert_eq!((found.host_only, found.date, found.received), (2, true, 0));
}

#[test]
fn many_repeated_fields_go_in_one_pass() {
    // The shapes that took seconds per message with a drain or a splice
    // per field: every field of the section is one to remove or change.
    let n = 20_000;
    let body = "Return-Path: in the body\r\n".repeat(10);
    let mut msg = "Return-Path: <x@y>\r\n".repeat(n).into_bytes();
    msg.extend_from_slice(b"Subject: s\r\n\r\n");
    msg.extend_from_slice(body.as_bytes());
    let found = inspect(&msg);
    assert_eq!(found.host_only, n);
    let out = edit(msg, &found, &[]);
    assert_eq!(out.host_only_removed, n);
    assert_eq!(
        out.content,
        format!("Subject: s\r\n\r\n{body}").into_bytes()
    );

    let mut msg = "X-A: v\r\n".repeat(n).into_bytes();
    msg.extend_from_slice(b"\r\nbody\r\n");
    let remove_all = [HeaderAction::Remove {
        name: "x-a".into(),
        index: None,
    }];
    let mut prepend = String::new();
    assert_eq!(
        apply_actions(msg.clone(), &mut prepend, &remove_all),
        b"\r\nbody\r\n"
    );
    let change_last = [HeaderAction::Change {
        name: "X-A".into(),
        index: (n - 1) as u32,
        value: "last".into(),
    }];
    let out = apply_actions(msg, &mut prepend, &change_last);
    assert!(out.ends_with(b"X-A: v\r\nX-A: last\r\n\r\nbody\r\n"));
    assert_eq!(out.len(), n * 8 + 3 + 8);
    assert!(prepend.is_empty());
}

#[test]
fn additions_count_for_message_id_and_date() {
    let msg = b"Date: then\r\nSubject: s\r\n\r\nb".to_vec();
    let found = inspect(&msg);
    let actions = [
        HeaderAction::Remove {
            name: "date".into(),
            index: None,
        },
        HeaderAction::Add {
            name: "Message-ID".into(),
            value: "<p@q>".into(),
        },
    ];
    let out = edit(msg, &found, &actions);
    assert_eq!(out.content, b"Subject: s\r\n\r\nb");
    assert!(out.message_id && !out.date);
}

/// The header edits as they were made before: an empty line spliced in,
/// a drain per host-only field, a splice per field a plugin touched
/// (each moving the rest of the message: quadratic, but plainly right).
fn reference(content: &[u8], actions: &[HeaderAction]) -> (Vec<u8>, String, bool, bool) {
    let mut content = content.to_vec();
    let body = scan_headers(&content, |_, _| {});
    if body < content.len() {
        let head = &content[..body];
        let separated = head == b"\r\n"
            || head == b"\n"
            || head.ends_with(b"\n\r\n")
            || head.ends_with(b"\n\n");
        if !separated {
            content.splice(body..body, *b"\r\n");
        }
    }
    let mut ranges = Vec::new();
    scan_headers(&content, |name, range| {
        if HOST_ONLY_FIELDS
            .iter()
            .any(|n| n.as_bytes().eq_ignore_ascii_case(name))
        {
            ranges.push(range);
        }
    });
    for range in ranges.iter().rev() {
        content.drain(range.clone());
    }
    let mut prepend = String::new();
    let (fields, _) = parse_headers(&content);
    let nth = |name: &str| -> Vec<&HeaderField> {
        fields
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case(name))
            .collect()
    };
    let mut edits = std::collections::BTreeMap::new();
    for action in actions {
        match action {
            HeaderAction::Add { name, value } => prepend.push_str(&header_field(name, value)),
            HeaderAction::Change { name, index, value } => match nth(name).get(*index as usize) {
                Some(f) => {
                    let line = header_field(&f.name, value);
                    edits.insert(f.range.start, (f.range.clone(), Some(line)));
                }
                None => prepend.push_str(&header_field(name, value)),
            },
            HeaderAction::Remove { name, index } => {
                for (i, f) in nth(name).into_iter().enumerate() {
                    if index.is_none_or(|n| i == n as usize) {
                        edits.insert(f.range.start, (f.range.clone(), None));
                    }
                }
            }
        }
    }
    for (range, line) in edits.into_values().rev() {
        content.splice(range, line.map(String::into_bytes).unwrap_or_default());
    }
    let (mut id, mut date) = (false, false);
    for section in [&content[..], prepend.as_bytes()] {
        scan_headers(section, |name, _| {
            id |= name.eq_ignore_ascii_case(b"message-id");
            date |= name.eq_ignore_ascii_case(b"date");
        });
    }
    (content, prepend, id, date)
}

const NAMES: [&str; 7] = [
    "Received",
    "x-a",
    "X-A",
    "Return-Path",
    "Date",
    "Message-ID",
    "X-Postern-Score",
];

fn section() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        (prop::sample::select(NAMES.to_vec()), "[ a-z:]{0,6}")
            .prop_map(|(n, v)| format!("{n}:{v}\r\n")),
        Just(" folded\r\n".to_string()),
        Just("\tfolded\n".to_string()),
        Just("X-A : obsolete\r\n".to_string()),
        Just("(not a field)\r\n".to_string()),
        Just("\r\n".to_string()),
        Just("Date: no line end".to_string()),
        "[a-zA-Z: \r\n-]{0,12}",
    ];
    prop::collection::vec(line, 0..14).prop_map(|l| l.concat().into_bytes())
}

fn actions() -> impl Strategy<Value = Vec<HeaderAction>> {
    let name = prop::sample::select(NAMES.to_vec()).prop_map(str::to_string);
    let action = prop_oneof![
        (name.clone(), "[a-z ]{0,5}").prop_map(|(name, value)| HeaderAction::Add { name, value }),
        (name.clone(), 0u32..4, "[a-z ]{0,5}")
            .prop_map(|(name, index, value)| HeaderAction::Change { name, index, value }),
        (name, prop::option::of(0u32..4))
            .prop_map(|(name, index)| HeaderAction::Remove { name, index }),
    ];
    prop::collection::vec(action, 0..6)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn one_pass_edits_match_the_reference(content in section(), actions in actions()) {
        let (want, want_added, want_id, want_date) = reference(&content, &actions);
        let found = inspect(&content);
        let out = edit(content.clone(), &found, &actions);
        prop_assert_eq!(
            String::from_utf8_lossy(&out.content),
            String::from_utf8_lossy(&want)
        );
        prop_assert_eq!(out.added, want_added);
        prop_assert_eq!((out.message_id, out.date), (want_id, want_date));
        let mut received = 0;
        scan_headers(&content, |name, _| received += usize::from(name.eq_ignore_ascii_case(b"received")));
        prop_assert_eq!(found.received, received);
    }
}
