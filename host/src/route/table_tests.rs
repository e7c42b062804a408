use super::*;

fn virt(text: &str) -> Result<VirtualTable, TableError> {
    parse_virtual(Path::new("virtual"), text.as_bytes())
}

fn aliases(text: &str) -> Result<AliasTable, TableError> {
    parse_aliases(Path::new("aliases"), text.as_bytes())
}

fn targets<'a>(entries: &'a HashMap<String, Entry>, key: &str) -> Vec<&'a str> {
    entries
        .get(key)
        .map(|e| e.targets.iter().map(String::as_str).collect())
        .unwrap_or_default()
}

/// The error's text, which must start with `FILE:LINE: `.
fn error_at(result: Result<impl std::fmt::Debug, TableError>, file: &str, line: usize) -> String {
    let e = result.expect_err("an error").to_string();
    let prefix = format!("{file}:{line}: ");
    assert!(
        e.starts_with(&prefix),
        "{e:?} does not start with {prefix:?}"
    );
    e
}

#[test]
fn virtual_patterns_results_comments_and_continuations() {
    let t = virt(
        "# a comment\n\
         \n\
         Info@Virtual.Test   alice@example.test\n\
         team@virtual.test alice@example.test,bob@example.test\n\
         \x20  # a comment inside\n\
         \tcarol@example.test , dave\n\
         @other.test bob@example.test\r\n\
         virtual.test anything\n\
         john.smith john\n\
         postmaster alice\n",
    )
    .unwrap();
    assert_eq!(
        targets(&t.entries, "info@virtual.test"),
        ["alice@example.test"]
    );
    assert_eq!(
        targets(&t.entries, "team@virtual.test"),
        [
            "alice@example.test",
            "bob@example.test",
            "carol@example.test",
            "dave"
        ]
    );
    assert_eq!(targets(&t.entries, "@other.test"), ["bob@example.test"]);
    assert_eq!(targets(&t.entries, "postmaster"), ["alice"]);
    assert_eq!(t.entries["team@virtual.test"].line, 4);
    // A bare name with a dot is a domain declaration and a key, as in Postfix.
    assert_eq!(t.domains.get("virtual.test"), Some(&8));
    assert_eq!(t.domains.get("john.smith"), Some(&9));
    assert!(!t.domains.contains_key("postmaster"));
}

#[test]
fn virtual_errors_name_their_line() {
    let e = error_at(
        virt("a@b.test x@y.test\n  c@d.test\n\nlonely@x.test\n"),
        "virtual",
        4,
    );
    assert!(e.contains("\"lonely@x.test\" has no result"), "{e}");
    let e = error_at(virt("\n  x@y.test\n"), "virtual", 2);
    assert!(e.contains("continues the line before it"), "{e}");
    let e = error_at(virt("a@b.test x@y.test\nA@B.test z@y.test\n"), "virtual", 2);
    assert!(e.contains("already defined at line 1"), "{e}");
    let e = error_at(virt("a@ x@y.test\n"), "virtual", 1);
    assert!(e.contains("is not a domain"), "{e}");
    let e = error_at(virt("a@b.test x@-bad-\n"), "virtual", 1);
    assert!(e.contains("is not a domain"), "{e}");
    let e = error_at(virt("a@b.test\n  ok@y.test, @y.test\n"), "virtual", 2);
    assert!(e.contains("needs a local part"), "{e}");
    let e = error_at(virt("/^a/ x@y.test\n"), "virtual", 1);
    assert!(e.contains("regular expression"), "{e}");
    let e = error_at(virt("x@y.test ok\nz@y.test |cmd\n"), "virtual", 2);
    assert!(e.contains("command"), "{e}");
    let e = error_at(
        parse_virtual(Path::new("v"), b"a@b.test x\nb@b.test \xff\n"),
        "v",
        2,
    );
    assert!(e.contains("not UTF-8"), "{e}");
}

#[test]
fn aliases_format() {
    let t = aliases(
        "# comment\n\
         PostMaster: alice\n\
         team: alice, bob,\n\
         \x20 carol@example.test\n\
         quoted: \"odd, name\"@example.test bob\n",
    )
    .unwrap();
    assert_eq!(targets(&t.entries, "postmaster"), ["alice"]);
    assert_eq!(
        targets(&t.entries, "team"),
        ["alice", "bob", "carol@example.test"]
    );
    assert_eq!(
        targets(&t.entries, "quoted"),
        ["\"odd, name\"@example.test", "bob"]
    );
}

#[test]
fn aliases_errors_name_their_line() {
    let e = error_at(aliases("a: b\nno colon here\n"), "aliases", 2);
    assert!(e.contains("expected `name: value"), "{e}");
    let e = error_at(aliases("a: b\n: b\n"), "aliases", 2);
    assert!(e.contains("needs a name"), "{e}");
    let e = error_at(aliases("a b: c\n"), "aliases", 1);
    assert!(e.contains("one word"), "{e}");
    let e = error_at(aliases("a@example.test: c\n"), "aliases", 1);
    assert!(e.contains("virtual_alias_maps"), "{e}");
    let e = error_at(aliases("a:\n"), "aliases", 1);
    assert!(e.contains("has no value"), "{e}");
    let e = error_at(aliases("a: b\nA: c\n"), "aliases", 2);
    assert!(e.contains("already defined at line 1"), "{e}");
    let e = error_at(aliases("a: b,\n  :include:/etc/list\n"), "aliases", 2);
    assert!(
        e.contains("`:include:` lists are not supported (yet)"),
        "{e}"
    );
    let e = error_at(
        aliases("x: y\na: \"|/usr/bin/vacation alice\"\n"),
        "aliases",
        2,
    );
    assert!(e.contains("`|command`) is not supported (yet)"), "{e}");
    let e = error_at(aliases("x: y\n\n\na: /var/log/mail\n"), "aliases", 4);
    assert!(e.contains("`/path`) is not supported (yet)"), "{e}");
    let e = error_at(aliases("  a: b\n"), "aliases", 1);
    assert!(e.contains("continues"), "{e}");
}

#[test]
fn no_input_panics() {
    for text in [
        "\"",
        "\"\n",
        "@",
        "@ @",
        "a@b.test \"",
        ":",
        "a:\"",
        "\\",
        "a@[ x",
        "a@[] x",
        "\r",
        "\u{212A}@\u{130} x",
    ] {
        let _ = virt(text);
        let _ = aliases(text);
    }
}
