use super::*;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// Value and expiry time of each key.
type Entries = HashMap<String, (Vec<u8>, Option<u64>)>;

/// An in-memory kv with TTLs on a settable clock, or a broken one.
#[derive(Default)]
struct FakeStore {
    now: Cell<u64>,
    data: RefCell<Entries>,
    down: bool,
}

impl FakeStore {
    fn live(&self, key: &str) -> Option<Vec<u8>> {
        let data = self.data.borrow();
        let (v, exp) = data.get(key)?;
        exp.is_none_or(|e| e > self.now.get()).then(|| v.clone())
    }
    fn up(&self) -> Result<(), StoreError> {
        if self.down {
            Err(StoreError::Unavailable("connection refused".into()))
        } else {
            Ok(())
        }
    }
    fn expiry(&self, ttl: Option<u32>) -> Option<u64> {
        ttl.map(|t| self.now.get() + u64::from(t))
    }
}

impl Store for FakeStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.up()?;
        Ok(self.live(key))
    }
    fn set(&self, key: &str, value: &[u8], ttl: Option<u32>) -> Result<(), StoreError> {
        self.up()?;
        let exp = self.expiry(ttl);
        self.data
            .borrow_mut()
            .insert(key.into(), (value.to_vec(), exp));
        Ok(())
    }
    fn add(&self, key: &str, value: &[u8], ttl: Option<u32>) -> Result<bool, StoreError> {
        self.up()?;
        if self.live(key).is_some() {
            return Ok(false);
        }
        self.set(key, value, ttl)?;
        Ok(true)
    }
    fn increment(&self, key: &str, delta: i64, ttl: Option<u32>) -> Result<i64, StoreError> {
        self.up()?;
        let old = self.live(key);
        let n = match &old {
            Some(v) => parse_u64(v).ok_or(StoreError::NotANumber)? as i64 + delta,
            None => delta,
        };
        let exp = match old {
            Some(_) => self.data.borrow()[key].1,
            None => self.expiry(ttl),
        };
        self.data
            .borrow_mut()
            .insert(key.into(), (n.to_string().into_bytes(), exp));
        Ok(n)
    }
}

fn req<'a>(ip: &'a str, sender: &'a str, rcpt: &'a str, now: u64) -> Request<'a> {
    Request {
        client_ip: ip,
        exempt: false,
        sender,
        recipient: rcpt,
        now,
    }
}

fn grey(json: &str) -> Greylist {
    Greylist::from_json(json).expect("valid config")
}

/// (client address, sender, recipient).
type Triplet<'a> = (&'a str, &'a str, &'a str);

fn at(store: &FakeStore, g: &Greylist, (ip, sender, rcpt): Triplet<'_>, now: u64) -> Decision {
    store.now.set(now);
    g.check(store, &req(ip, sender, rcpt, now))
}

#[test]
fn first_attempt_is_greylisted_and_a_retry_after_the_delay_passes() {
    const T: Triplet = ("192.0.2.7", "a@example.org", "alice@example.test");
    let g = grey(r#"{"delay": 60}"#);
    let s = FakeStore::default();
    let d = at(&s, &g, T, 1000);
    assert_eq!(
        d,
        Decision::Greylisted(
            "Greylisted, see https://postgrey.schweikert.ch/help/example.test.html".into()
        )
    );
    // Too early: still greylisted, the clock was not restarted.
    assert!(matches!(at(&s, &g, T, 1059), Decision::Greylisted(_)));
    assert_eq!(
        at(&s, &g, T, 1060),
        Decision::Pass("retried after the delay")
    );
    assert_eq!(at(&s, &g, T, 5000), Decision::Pass("triplet passed before"));
}

#[test]
fn the_triplet_uses_the_client_network_and_normalised_sender() {
    let g = grey(r#"{"delay": 60}"#);
    let s = FakeStore::default();
    at(
        &s,
        &g,
        (
            "192.0.2.7",
            "prvs=1234abcd=Bob@Example.org",
            "alice@example.test",
        ),
        0,
    );
    // Another host of the same /24, the plain sender, upper-case recipient.
    assert_eq!(
        at(
            &s,
            &g,
            ("192.0.2.200", "bob@example.org", "Alice@Example.test"),
            61
        ),
        Decision::Pass("retried after the delay")
    );
    // Another /24 is a new triplet.
    assert!(matches!(
        at(
            &s,
            &g,
            ("192.0.3.7", "bob@example.org", "alice@example.test"),
            62
        ),
        Decision::Greylisted(_)
    ));
    // IPv6: the /64 counts.
    at(
        &s,
        &g,
        (
            "2001:db8:1:2::1",
            "list-1234@example.org",
            "alice@example.test",
        ),
        100,
    );
    assert_eq!(
        at(
            &s,
            &g,
            (
                "2001:db8:1:2::99",
                "list-5678@example.org",
                "alice@example.test"
            ),
            200
        ),
        Decision::Pass("retried after the delay")
    );
    assert!(
        s.data
            .borrow()
            .contains_key("t/2001:db8:1:2::/64/list-#@example.org/alice@example.test")
    );
}

#[test]
fn unconfirmed_entries_expire_after_the_retry_window() {
    const T: Triplet = ("192.0.2.7", "a@example.org", "alice@example.test");
    let g = grey(r#"{"delay": 60, "retry_window": 3600}"#);
    let s = FakeStore::default();
    at(&s, &g, T, 0);
    // The entry expired: the retry starts again.
    assert!(matches!(at(&s, &g, T, 3601), Decision::Greylisted(_)));
    assert!(matches!(at(&s, &g, T, 3660), Decision::Greylisted(_)));
    assert_eq!(
        at(&s, &g, T, 3661),
        Decision::Pass("retried after the delay")
    );
}

#[test]
fn a_client_is_auto_whitelisted_after_n_passes() {
    let g = grey(r#"{"delay": 10, "auto_whitelist": 2}"#);
    let s = FakeStore::default();
    for (i, rcpt) in ["a@example.test", "b@example.test"].iter().enumerate() {
        let t = 100 * i as u64;
        assert!(matches!(
            at(&s, &g, ("198.51.100.1", "x@example.org", rcpt), t),
            Decision::Greylisted(_)
        ));
        assert_eq!(
            at(&s, &g, ("198.51.100.1", "x@example.org", rcpt), t + 10),
            Decision::Pass("retried after the delay")
        );
    }
    assert_eq!(
        at(
            &s,
            &g,
            ("198.51.100.9", "new@example.net", "c@example.test"),
            300
        ),
        Decision::Pass("client auto-whitelisted")
    );
    // Off with 0.
    let g = grey(r#"{"delay": 10, "auto_whitelist": 0}"#);
    assert!(matches!(
        at(
            &s,
            &g,
            ("198.51.100.9", "new@example.net", "c@example.test"),
            300
        ),
        Decision::Greylisted(_)
    ));
}

#[test]
fn trusted_authenticated_and_listed_exemptions() {
    let g = grey(r#"{"exempt_clients": ["203.0.113.0/24", "2001:db8::1"]}"#);
    let s = FakeStore {
        down: true,
        ..Default::default()
    };
    let mut r = req("192.0.2.1", "a@example.org", "alice@example.test", 0);
    r.exempt = true;
    assert_eq!(
        g.check(&s, &r),
        Decision::Pass("trusted or authenticated client")
    );
    let r = req("203.0.113.9", "a@example.org", "alice@example.test", 0);
    assert_eq!(g.check(&s, &r), Decision::Pass("client in exempt_clients"));
    let r = req("2001:db8::1", "a@example.org", "alice@example.test", 0);
    assert_eq!(g.check(&s, &r), Decision::Pass("client in exempt_clients"));
    // Default: postmaster@ and abuse@ of any domain.
    let r = req("192.0.2.1", "a@example.org", "Postmaster@example.test", 0);
    assert_eq!(
        g.check(&s, &r),
        Decision::Pass("recipient in exempt_recipients")
    );
}

#[test]
fn store_errors_fail_open_by_default_or_tempfail() {
    let s = FakeStore {
        down: true,
        ..Default::default()
    };
    let r = req("192.0.2.1", "a@example.org", "alice@example.test", 0);
    assert_eq!(
        grey("{}").check(&s, &r),
        Decision::StoreFailed {
            error: "kv unavailable: connection refused".into(),
            tempfail: false
        }
    );
    assert!(matches!(
        grey(r#"{"on_kv_error": "tempfail"}"#).check(&s, &r),
        Decision::StoreFailed { tempfail: true, .. }
    ));
}

#[test]
fn reply_text_template() {
    let g = grey(r#"{"delay": 300, "text": "Try again in %s s (%r)"}"#);
    let s = FakeStore::default();
    at(&s, &g, ("192.0.2.1", "", "alice@example.test"), 0);
    assert_eq!(
        at(&s, &g, ("192.0.2.1", "", "alice@example.test"), 100),
        Decision::Greylisted("Try again in 200 s (example.test)".into())
    );
    assert!(
        s.data
            .borrow()
            .contains_key("t/192.0.2.0/24/<>/alice@example.test")
    );
}

#[test]
fn bad_configs_are_refused_with_the_key_named() {
    for (json, needle) in [
        (r#"{"delay": 0}"#, "delay"),
        (r#"{"delay": 600, "retry_window": 600}"#, "retry_window"),
        (r#"{"max_age": 10}"#, "max_age"),
        (r#"{"ipv4_prefix": 33}"#, "ipv4_prefix"),
        (r#"{"ipv6_prefix": 8}"#, "ipv6_prefix"),
        (r#"{"on_kv_error": "reject"}"#, "unknown variant"),
        (r#"{"exempt_clients": ["nonsense"]}"#, "exempt_clients"),
        (r#"{"dealy": 5}"#, "unknown field"),
        (r#"{"text": " "}"#, "text"),
    ] {
        let err = Greylist::from_json(json).expect_err(json);
        assert!(err.contains(needle), "{json}: {err}");
    }
    assert!(Greylist::from_json("").is_ok());
}
