//! Expansion with virtual(5) and aliases(5) tables on disk.

use std::path::Path;

use super::*;
use crate::sasl::mechanism::client::TempDir;
use crate::smtp::address::parse_forward_path;

const VIRTUAL: &str = "\
# the seed's table
info@virtual.test     alice@example.test
team@virtual.test     alice@example.test, bob@example.test
ext@virtual.test      friend@dest.test
@other.test           bob@example.test
# lookup order
order+tag@virtual.test   carol@dest.test
order@virtual.test       dave@dest.test
@virtual2.test           erin@dest.test
known@virtual2.test      frank@dest.test
tagged@virtual.test      alice+fixed@example.test
bare@virtual.test        alice
# local part alone: our own domains only
localonly                bob@example.test
# maps to itself, and more
self@dest.test           self@dest.test, bob@example.test
# loops
a@virtual.test           b@virtual.test
b@virtual.test           a@virtual.test
# a bare domain line declares a virtual alias domain
declared.test            anything
sales@declared.test      staff
remote@example.test      forwarded@dest.test
abuse@virtual2.test      bob@example.test
";

const ALIASES: &str = "\
# aliases(5)
staff: alice, bob
list:  staff,
  carol@dest.test
";

struct Setup {
    _dir: TempDir,
    router: Router,
}

/// A directory of its own (TempDir names by process; tests run at once).
fn temp_dir(name: &str) -> TempDir {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    TempDir::new(&format!("{name}-{n}"))
}

fn setup(virtual_text: &str, aliases_text: &str, extra: &str) -> Setup {
    let dir = temp_dir("route-tables");
    let v = dir.path().join("virtual");
    let a = dir.path().join("aliases");
    std::fs::write(&v, virtual_text).expect("write");
    std::fs::write(&a, aliases_text).expect("write");
    let text = format!(
        r#"
[server]
hostname = "mx.example.test"
[[listener]]
address = "192.0.2.1:25"
[[listener]]
address = "[::]:587"
[local]
domains = ["example.test"]
users = ["alice", "bob"]
virtual_alias_domains = ["virtual.test", "virtual2.test"]
virtual_alias_maps = ["{}"]
alias_maps = ["{}"]
{extra}
[aliases]
postmaster = "alice"
abuse = "alice"
"#,
        v.display(),
        a.display()
    );
    let config = Config::from_toml(&text, Path::new("t.toml")).expect("config");
    let router = Router::load(&config).expect("tables");
    Setup { _dir: dir, router }
}

fn seed() -> Setup {
    setup(VIRTUAL, ALIASES, "")
}

fn resolve(r: &Router, addr: &str) -> Result<Vec<String>, RouteError> {
    let to = parse_forward_path(addr, true).expect("address");
    r.resolve(&to)
        .map(|v| v.iter().map(|d| d.address(Some('+'))).collect())
}

#[test]
fn virtual_aliases_several_targets_and_catch_all() {
    let s = seed();
    let r = &s.router;
    assert_eq!(
        resolve(r, "info@virtual.test").unwrap(),
        ["alice@example.test"]
    );
    assert_eq!(
        resolve(r, "INFO@Virtual.TEST").unwrap(),
        ["alice@example.test"]
    );
    assert_eq!(
        resolve(r, "team@virtual.test").unwrap(),
        ["alice@example.test", "bob@example.test"]
    );
    assert_eq!(
        resolve(r, "ext@virtual.test").unwrap(),
        ["friend@dest.test"]
    );
    assert_eq!(
        resolve(r, "anyone@other.test").unwrap(),
        ["bob@example.test"]
    );
    // A result without a domain is in myorigin.
    assert_eq!(
        resolve(r, "bare@virtual.test").unwrap(),
        ["alice@example.test"]
    );
    // Unknown in a virtual alias domain without catch-all: 550 5.1.1.
    assert_eq!(
        resolve(r, "nobody@virtual.test"),
        Err(RouteError::UnknownUser)
    );
    assert_eq!(resolve(r, "x@virtual2.test").unwrap(), ["erin@dest.test"]);
    assert_eq!(
        resolve(r, "known@virtual2.test").unwrap(),
        ["frank@dest.test"]
    );
    // Virtual alias maps apply to every domain, ours first.
    assert_eq!(
        resolve(r, "remote@example.test").unwrap(),
        ["forwarded@dest.test"]
    );
    // Then aliases(5) through virtual results.
    assert_eq!(
        resolve(r, "sales@declared.test").unwrap(),
        ["alice@example.test", "bob@example.test"]
    );
    assert_eq!(
        resolve(r, "list@example.test").unwrap(),
        ["alice@example.test", "bob@example.test", "carol@dest.test"]
    );
    // Users and [aliases] as before.
    assert_eq!(
        resolve(r, "bob@example.test").unwrap(),
        ["bob@example.test"]
    );
    assert_eq!(
        resolve(r, "carol@example.test"),
        Err(RouteError::UnknownUser)
    );
}

#[test]
fn served_domains() {
    let s = seed();
    let r = &s.router;
    for d in [
        "example.test",
        "virtual.test",
        "VIRTUAL2.test",
        "declared.test",
    ] {
        assert!(r.is_local_domain(d), "{d}");
    }
    assert!(!r.is_local_domain("other.test"));
    assert!(!r.is_local_domain("dest.test"));
    assert!(r.is_mydestination("example.test"));
    assert!(!r.is_mydestination("virtual.test"));
    assert!(r.is_virtual_domain("declared.test"));
    assert_eq!(r.table_counts().1, 3);
}

#[test]
fn lookup_order() {
    let s = seed();
    let r = &s.router;
    // user+tag@domain before user@domain.
    assert_eq!(
        resolve(r, "order+tag@virtual.test").unwrap(),
        ["carol@dest.test"]
    );
    // user@domain, its tag carried.
    assert_eq!(
        resolve(r, "order+x@virtual.test").unwrap(),
        ["dave+x@dest.test"]
    );
    // user@domain before @domain.
    assert_eq!(
        resolve(r, "known+x@virtual2.test").unwrap(),
        ["frank+x@dest.test"]
    );
    // A local part alone matches in our own domains only.
    assert_eq!(
        resolve(r, "localonly@example.test").unwrap(),
        ["bob@example.test"]
    );
    assert_eq!(
        resolve(r, "localonly@virtual.test"),
        Err(RouteError::UnknownUser)
    );
    assert_eq!(
        resolve(r, "localonly@dest.test").unwrap(),
        ["localonly@dest.test"]
    );
}

#[test]
fn unmatched_tags_are_carried_through_expansion() {
    let s = seed();
    let r = &s.router;
    assert_eq!(
        resolve(r, "info+news@virtual.test").unwrap(),
        ["alice+news@example.test"]
    );
    assert_eq!(
        resolve(r, "team+x@virtual.test").unwrap(),
        ["alice+x@example.test", "bob+x@example.test"]
    );
    // Through the catch-all.
    assert_eq!(
        resolve(r, "anyone+x@other.test").unwrap(),
        ["bob+x@example.test"]
    );
    // Through virtual, then aliases(5).
    assert_eq!(
        resolve(r, "sales+q@declared.test").unwrap(),
        ["alice+q@example.test", "bob+q@example.test"]
    );
    // A result with its own tag keeps it.
    assert_eq!(
        resolve(r, "tagged+x@virtual.test").unwrap(),
        ["alice+fixed@example.test"]
    );
    // To remote results too.
    assert_eq!(
        resolve(r, "ext+y@virtual.test").unwrap(),
        ["friend+y@dest.test"]
    );
}

#[test]
fn self_mapping_loops_and_limits() {
    let s = seed();
    let r = &s.router;
    // An address that maps to itself is final.
    assert_eq!(
        resolve(r, "self@dest.test").unwrap(),
        ["bob@example.test", "self@dest.test"]
    );
    assert_eq!(
        resolve(r, "self+t@dest.test").unwrap(),
        ["bob+t@example.test", "self+t@dest.test"]
    );
    // A real cycle.
    assert_eq!(resolve(r, "a@virtual.test"), Err(RouteError::AliasLoop));
    // Depth: a chain of 11 levels is too deep, 10 are fine.
    let chain = |n: usize| {
        (0..n)
            .map(|i| format!("c{i}@virtual.test c{}@virtual.test\n", i + 1))
            .collect::<String>()
            + &format!("c{n}@virtual.test alice@example.test\n")
    };
    let s = setup(&chain(9), ALIASES, "");
    assert_eq!(
        resolve(&s.router, "c0@virtual.test").unwrap(),
        ["alice@example.test"]
    );
    let s = setup(&chain(11), ALIASES, "");
    assert_eq!(
        resolve(&s.router, "c0@virtual.test"),
        Err(RouteError::AliasLoop)
    );
    // Breadth: 8 levels of 3 targets each is 3^8 addresses, over the
    // limit; 5 levels (243) are within it.
    let wide = |levels: usize| {
        let mut text = String::new();
        for level in 0..levels {
            let next = format!("w{}@virtual.test", level + 1);
            text.push_str(&format!("w{level}@virtual.test {next}, {next}, {next}\n"));
        }
        text + &format!("w{levels}@virtual.test alice@example.test\n")
    };
    let s = setup(&wide(8), ALIASES, "");
    assert_eq!(
        resolve(&s.router, "w0@virtual.test"),
        Err(RouteError::AliasLoop)
    );
    let s = setup(&wide(5), ALIASES, "");
    assert_eq!(
        resolve(&s.router, "w0@virtual.test").unwrap(),
        ["alice@example.test"]
    );
}

#[test]
fn postmaster_and_abuse_of_every_domain_served() {
    let s = seed();
    let r = &s.router;
    for d in ["virtual.test", "declared.test", "example.test"] {
        assert_eq!(
            resolve(r, &format!("postmaster@{d}")).unwrap(),
            ["alice@example.test"],
            "{d}"
        );
        assert_eq!(
            resolve(r, &format!("Abuse@{d}")).unwrap(),
            ["alice@example.test"],
            "{d}"
        );
    }
    // A table that names them wins; so does it over a catch-all.
    assert_eq!(
        resolve(r, "abuse@virtual2.test").unwrap(),
        ["bob@example.test"]
    );
    assert_eq!(
        resolve(r, "postmaster@virtual2.test").unwrap(),
        ["alice@example.test"]
    );
    // Not for domains we do not serve.
    assert_eq!(
        resolve(r, "postmaster@other.test").unwrap(),
        ["bob@example.test"]
    );
}

#[test]
fn our_address_literals_are_local() {
    let s = seed();
    let r = &s.router;
    assert_eq!(
        resolve(r, "alice@[192.0.2.1]").unwrap(),
        ["alice@[192.0.2.1]"]
    );
    // Bound to [::]: the loopback addresses are ours.
    assert_eq!(resolve(r, "bob@[127.0.0.1]").unwrap(), ["bob@[127.0.0.1]"]);
    assert_eq!(resolve(r, "bob@[IPv6:::1]").unwrap(), ["bob@[ipv6:::1]"]);
    assert_eq!(
        resolve(r, "carol@[192.0.2.1]"),
        Err(RouteError::UnknownUser)
    );
    // local-part-alone keys apply to them.
    assert_eq!(
        resolve(r, "localonly@[192.0.2.1]").unwrap(),
        ["bob@example.test"]
    );
    assert!(r.is_local_domain("[192.0.2.1]"));
    assert!(!r.is_local_domain("[192.0.2.2]"));
    assert_eq!(resolve(r, "x@[192.0.2.2]").unwrap(), ["x@[192.0.2.2]"]);
}

#[test]
fn tables_that_disagree_with_the_config_are_errors() {
    let dir = temp_dir("route-tables-bad");
    let cases = [
        (
            "ok@virtual.test alice\nexample.test anything\n",
            "staff: alice\n",
            ":2: \"example.test\" is in local.domains",
        ),
        (
            "ok@virtual.test alice\n",
            "staff: alice\nlist: staff, nobody\n",
            ":2: list: \"nobody\" is neither a local user, an alias nor an address",
        ),
    ];
    for (v, a, want) in cases {
        let vp = dir.path().join("v");
        let ap = dir.path().join("a");
        std::fs::write(&vp, v).unwrap();
        std::fs::write(&ap, a).unwrap();
        let text = format!(
            "[server]\nhostname = \"mx.example.test\"\n[[listener]]\naddress = \"127.0.0.1:25\"\n\
             [local]\ndomains = [\"example.test\"]\nusers = [\"alice\"]\n\
             virtual_alias_maps = [\"{}\"]\nalias_maps = [\"{}\"]\n",
            vp.display(),
            ap.display()
        );
        let config = Config::from_toml(&text, Path::new("t.toml")).unwrap();
        let err = Router::load(&config).unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
        // postmaster and abuse are required, from any source.
        if want.contains("local.domains") {
            continue;
        }
        std::fs::write(&ap, "staff: alice\npostmaster: alice\n").unwrap();
        let err = Router::load(&config).unwrap_err().to_string();
        assert!(err.contains("require an address `abuse`"), "{err}");
        std::fs::write(&ap, "staff: alice\npostmaster: alice\nabuse: staff\n").unwrap();
        assert!(Router::load(&config).is_ok());
    }
    // [aliases] targets may be names of the files, and are checked with them.
    let vp = dir.path().join("v");
    let ap = dir.path().join("a");
    std::fs::write(&vp, "ok@virtual.test alice\n").unwrap();
    std::fs::write(&ap, "staff: alice\npostmaster: alice\nabuse: alice\n").unwrap();
    let text = format!(
        "[server]\nhostname = \"mx.example.test\"\n[[listener]]\naddress = \"127.0.0.1:25\"\n\
         [local]\ndomains = [\"example.test\"]\nusers = [\"alice\"]\n\
         virtual_alias_maps = [\"{}\"]\nalias_maps = [\"{}\"]\n[aliases]\nteam = [\"staff\", \"{{}}\"]\n",
        vp.display(),
        ap.display()
    );
    let config = Config::from_toml(&text.replace("{}", "alice"), Path::new("t.toml")).unwrap();
    assert!(Router::load(&config).is_ok());
    let config = Config::from_toml(&text.replace("{}", "nobody"), Path::new("t.toml")).unwrap();
    let err = Router::load(&config).unwrap_err().to_string();
    assert!(
        err.contains("aliases.team: target \"nobody\" is neither"),
        "{err}"
    );
    let text = "[server]\nhostname = \"mx.example.test\"\n[[listener]]\naddress = \"127.0.0.1:25\"\n\
                [local]\nvirtual_alias_maps = [\"/nonexistent/virtual\"]\n";
    let config = Config::from_toml(text, Path::new("t.toml")).unwrap();
    let err = Router::load(&config).unwrap_err().to_string();
    assert!(
        err.starts_with("/nonexistent/virtual: cannot read: "),
        "{err}"
    );
}

#[test]
fn a_changed_file_is_read_again_and_a_broken_one_is_not_used() {
    let s = seed();
    let r = &s.router;
    let path = s._dir.path().join("virtual");
    assert_eq!(resolve(r, "new@virtual.test"), Err(RouteError::UnknownUser));
    let mut text = VIRTUAL.to_string();
    text.push_str("new@virtual.test bob@example.test\n");
    std::fs::write(&path, &text).unwrap();
    r.refresh();
    assert_eq!(
        resolve(r, "new@virtual.test").unwrap(),
        ["bob@example.test"]
    );
    // A broken edit leaves the tables as they were.
    text.push_str("broken@virtual.test\n");
    std::fs::write(&path, &text).unwrap();
    r.refresh();
    assert_eq!(
        resolve(r, "new@virtual.test").unwrap(),
        ["bob@example.test"]
    );
    // A clone shares the tables (the generation and delivery hold clones).
    let clone = r.clone();
    std::fs::write(&path, VIRTUAL).unwrap();
    clone.refresh();
    assert_eq!(resolve(r, "new@virtual.test"), Err(RouteError::UnknownUser));
}
