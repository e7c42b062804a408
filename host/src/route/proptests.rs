//! Property test of the whole path an address takes, from the RCPT line to
//! the names a delivery makes of it: arbitrary UTF-8 local parts (SMTPUTF8)
//! with the delimiter, characters whose case mapping changes their UTF-8
//! length (U+212A KELVIN SIGN, U+0130), quotes and dots are parsed,
//! routed and delivered into real Maildirs. Nothing panics; the tag is the
//! end of the local part as written, right after its first delimiter; the
//! `user+tag` a delivery names routes back to the same mailbox; the copy
//! lands inside the user's Maildir with a `Delivered-To:` field that reads
//! back as the address; and the copy sent again is a loop, not delivered.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::{Destination, Router, split_tag};
use crate::config::Config;
use crate::deliver::agent::LocalOnly;
use crate::deliver::{Durability, deliver_pending};
use crate::message::{field_value, scan_headers};
use crate::sasl::mechanism::client::TempDir;
use crate::smtp::address::{ForwardPath, local_value, parse_forward_path};
use crate::smtp::command::{Command, ParseOptions, check_rcpt_utf8, parse};
use crate::spool::DeliveryState;
use crate::spool::format::{Client, ENVELOPE_VERSION, Envelope, Recipient};
use crate::spool::journal::Touched;

fn router(base: &Path) -> Router {
    let text = format!(
        r#"
[server]
hostname = "mx.example.test"
[[listener]]
address = "127.0.0.1:2525"
[local]
domains = ["example.test"]
users = ["alice", "bob"]
maildir = "{}/{{user}}/Maildir"
[aliases]
postmaster = "alice"
abuse = "alice"
team = ["alice", "bob"]
forward = "someone@remote.test"
"#,
        base.display()
    );
    Router::new(&Config::from_toml(&text, Path::new("t.toml")).expect("config"))
}

/// Local parts built of the pieces that make case mapping and splitting
/// interesting, after a prefix that names a user, an alias or nobody.
fn local_part() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[a-zA-Z0-9]{1,3}",
        Just("+".to_string()),
        Just(".".to_string()),
        prop::sample::select(vec![
            "\u{212A}", "\u{130}", "ß", "ﬃ", "Σ", "ǅ", "K", "k", "ä", "Ä", "😀", "ı", "/", "..",
        ])
        .prop_map(str::to_string),
        "\\PC",
    ];
    let prefix = prop::sample::select(vec![
        "alice", "ALICE", "Alice", "bob", "team", "forward", "info", "",
    ]);
    (prefix, prop::collection::vec(piece, 0..8)).prop_map(|(p, v)| format!("{p}{}", v.concat()))
}

/// A quoted string holding `value` (RFC 5321 quoted-pair for `"` and `\`).
fn quoted(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The user's Maildir files, with the folders the tests made beforehand.
fn copies(maildir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in std::iter::once(maildir.to_path_buf())
        .chain(FOLDERS.iter().map(|f| maildir.join(format!(".{f}"))))
    {
        if let Ok(entries) = std::fs::read_dir(dir.join("new")) {
            out.extend(entries.flatten().map(|e| e.path()));
        }
    }
    out
}

/// Folders that exist in every Maildir: a tag may pick one of them.
const FOLDERS: [&str; 5] = ["k", "\u{212A}", "news", "i\u{307}", "\u{130}"];

fn envelope(id: &str, dests: &[Destination]) -> Envelope {
    Envelope {
        version: ENVELOPE_VERSION,
        id: id.into(),
        arrival: 1_700_000_000.0,
        sender: String::new(),
        recipients: dests
            .iter()
            .map(|d| Recipient::new(d.address(Some('+')), d.address(Some('+'))))
            .collect(),
        prepend: "Received: from client.test\r\n".into(),
        client: Client::default(),
        smtputf8: true,
        ret: None,
        envid: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn any_address_parses_routes_and_delivers_to_sane_names(
        local in local_part(),
        quote in any::<bool>(),
        domain in prop::sample::select(vec!["example.test", "EXAMPLE.Test", "remote.test"]),
    ) {
        let dir = TempDir::new("route-prop");
        let router = router(dir.path());
        for user in ["alice", "bob"] {
            for f in FOLDERS {
                for sub in ["cur", "new", "tmp"] {
                    std::fs::create_dir_all(router.maildir(user).join(format!(".{f}")).join(sub))
                        .expect("mkdir");
                }
            }
        }
        let local = if quote { quoted(&local) } else { local };
        let line = format!("RCPT TO:<{local}@{domain}>");
        let Ok(Command::Rcpt(path, _)) = parse(line.as_bytes(), ParseOptions::default()) else {
            return Ok(());
        };
        prop_assert!(check_rcpt_utf8(&path, true).is_ok());
        let Ok(dests) = router.resolve(&path) else {
            return Ok(());
        };
        let written = match &path {
            ForwardPath::Mailbox(m) => local_value(&m.local).into_owned(),
            ForwardPath::Postmaster => "postmaster".into(),
        };
        let locals: Vec<Destination> = dests
            .iter()
            .filter(|d| matches!(d, Destination::Local { .. }))
            .cloned()
            .collect();
        for dest in &locals {
            let Destination::Local { user, tag, domain } = dest else { continue };
            prop_assert!(user == "alice" || user == "bob", "{user}");
            prop_assert_eq!(domain, "example.test");
            if let Some(tag) = tag {
                // The tag is what follows the first delimiter of the local
                // part as the client wrote it.
                prop_assert!(!tag.is_empty());
                let (_, want) = split_tag(&written, '+').expect("a tag needs a delimiter");
                prop_assert_eq!(tag.as_str(), want);
                let suffix = format!("+{tag}");
                prop_assert!(written.ends_with(&suffix));
            }
            // The address a delivery names routes back to the same mailbox.
            let address = dest.address(Some('+'));
            let (l, d) = address.rsplit_once('@').expect("@");
            let again = parse_forward_path(&address, true)
                .or_else(|_| parse_forward_path(&format!("{}@{d}", quoted(l)), true));
            prop_assert!(again.is_ok(), "{address:?} does not parse back");
            if let Ok(again) = again {
                prop_assert_eq!(router.resolve(&again), Ok(vec![dest.clone()]));
            }
        }
        if locals.is_empty() {
            return Ok(());
        }
        // Delivered: each copy inside its user's Maildir, in new/ of the
        // Maildir or of one of its folders, with a Delivered-To: field
        // that reads back as the address.
        let touched = Touched::default();
        let how = Durability::Journaled { touched: &touched, recovering: false };
        let content = b"Subject: s\r\n\r\nbody\r\n";
        let mut state = DeliveryState::default();
        let env = envelope("QID1", &locals);
        let deferred = deliver_pending(&LocalOnly, &router, &env, content, &mut state, "mx.test", how).left();
        prop_assert_eq!(deferred, None);
        for dest in &locals {
            let Destination::Local { user, .. } = dest else { continue };
            let maildir = router.maildir(user);
            let files = copies(&maildir);
            prop_assert!(!files.is_empty(), "no copy for {dest:?}");
            let address = dest.address(Some('+'));
            let mut named = false;
            for file in &files {
                prop_assert!(file.starts_with(&maildir));
                let folder = file.parent().and_then(Path::parent).expect("folder");
                prop_assert!(folder == maildir || folder.parent() == Some(maildir.as_path()));
                let text = std::fs::read(file).expect("read");
                scan_headers(&text, |name, range| {
                    if name.eq_ignore_ascii_case(b"delivered-to") {
                        named |= field_value(&text, name, range) == address;
                    }
                });
            }
            prop_assert!(named, "no Delivered-To: {address}");
        }
        // The copy, sent again, has been through these mailboxes: a loop.
        let first = copies(&router.maildir("alice")).len() + copies(&router.maildir("bob")).len();
        let delivered = std::fs::read(copies(&router.maildir(match &locals[0] {
            Destination::Local { user, .. } => user,
            Destination::Remote { .. } => "alice",
        }))[0].clone()).expect("read");
        let mut state = DeliveryState::default();
        let env = envelope("QID2", &locals[..1]);
        let attempted = deliver_pending(&LocalOnly, &router, &env, &delivered, &mut state, "mx.test", how);
        prop_assert_eq!(&attempted.bounced, &vec![0]);
        prop_assert!(
            state.recipients[&0].reply.starts_with("mail forwarding loop for "),
            "{:?}", state.recipients
        );
        prop_assert!(state.done.is_empty());
        let after = copies(&router.maildir("alice")).len() + copies(&router.maildir("bob")).len();
        prop_assert_eq!(first, after);
    }
}

/// A router whose virtual(5) table has a catch-all and one address in a
/// virtual alias domain, in `dir`.
fn virtual_router(dir: &Path) -> Router {
    let table = dir.join("virtual");
    std::fs::write(
        &table,
        "@catchall.test bob@example.test\ninfo@virtual.test alice@example.test, friend@remote.test\n",
    )
    .expect("write");
    let text = format!(
        r#"
[server]
hostname = "mx.example.test"
[[listener]]
address = "127.0.0.1:2525"
[local]
domains = ["example.test"]
users = ["alice", "bob"]
virtual_alias_domains = ["virtual.test", "catchall.test"]
virtual_alias_maps = ["{}"]
[aliases]
postmaster = "alice"
abuse = "alice"
"#,
        table.display()
    );
    Router::load(&Config::from_toml(&text, Path::new("t.toml")).expect("config")).expect("tables")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Through a catch-all and a virtual alias, the tag the client wrote
    /// reaches every result, cut where the first delimiter is; an address
    /// of a virtual alias domain no key matches is unknown. Nothing panics.
    #[test]
    fn virtual_aliases_carry_the_tag_as_written(
        local in local_part(),
        quote in any::<bool>(),
        domain in prop::sample::select(vec!["catchall.test", "Virtual.Test"]),
    ) {
        let dir = TempDir::new("route-prop-virtual");
        let router = virtual_router(dir.path());
        let local = if quote { quoted(&local) } else { local };
        let line = format!("RCPT TO:<{local}@{domain}>");
        let Ok(Command::Rcpt(path, _)) = parse(line.as_bytes(), ParseOptions::default()) else {
            return Ok(());
        };
        let written = match &path {
            ForwardPath::Mailbox(m) => local_value(&m.local).into_owned(),
            ForwardPath::Postmaster => return Ok(()),
        };
        let base = split_tag(&written, '+').map_or(written.as_str(), |(b, _)| b);
        let tag = split_tag(&written, '+').map(|(_, t)| t).filter(|t| !t.is_empty());
        let result = router.resolve(&path);
        let role = ["postmaster", "abuse"].contains(&base.to_lowercase().as_str());
        if domain == "Virtual.Test" && !role && !base.eq_ignore_ascii_case("info") {
            prop_assert_eq!(result, Err(super::RouteError::UnknownUser));
            return Ok(());
        }
        let dests = result.expect("routed");
        prop_assert!(!dests.is_empty());
        for d in &dests {
            match d {
                Destination::Local { tag: got, domain, .. } => {
                    prop_assert_eq!(domain, "example.test");
                    prop_assert_eq!(got.as_deref(), tag);
                }
                Destination::Remote { address } => {
                    let want = match tag {
                        Some(t) => format!("friend+{t}@remote.test"),
                        None => "friend@remote.test".to_string(),
                    };
                    prop_assert_eq!(address, &want);
                }
            }
        }
    }
}
