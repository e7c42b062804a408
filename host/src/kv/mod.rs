//! The key-value store behind the plugins' `kv` capability: an embedded
//! file of this node ([`embedded`], redb) or a Redis server shared by
//! several nodes ([`redis`]), chosen by `[kv]`. Keys live in namespaces
//! (a chain entry's own, or a shared one); every operation is bounded by
//! `kv.timeout` and fails with a typed [`KvError`], never a panic.

mod embedded;
mod redis;

use std::path::Path;
use std::time::Duration;

use crate::config::{Kv as KvConfig, KvBackend};

/// Octets of a key, at most.
pub const MAX_KEY: usize = 512;

/// Octets of a value, at most.
pub const MAX_VALUE: usize = 64 << 10;

/// Why an operation did not happen (the WIT's `kv-error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The backend is unreachable or failed.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The key, value or TTL is not acceptable.
    #[error("invalid: {0}")]
    Invalid(String),
    /// `increment` of a value that is not a decimal 64-bit integer.
    #[error("not a number")]
    NotANumber,
}

/// The store: its backend, opened or connected on first use (a daemon
/// whose plugins never use it has no file and no connection).
pub struct Kv {
    backend: Backend,
    timeout: Duration,
}

enum Backend {
    Embedded(embedded::Store),
    Redis(redis::Store),
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.backend {
            Backend::Embedded(_) => "embedded",
            Backend::Redis(_) => "redis",
        };
        f.debug_struct("Kv").field("backend", &kind).finish()
    }
}

/// The default namespace of a chain entry: its stage and label. (A shared
/// namespace is a plain name without `/`, so the two never meet.)
pub fn entry_namespace(stage: &str, label: &str) -> String {
    format!("{stage}/{label}")
}

/// The stored key of `key` in namespace `ns`: length-prefixed, so that no
/// namespace and key make another's (`postern:5:rcpt/g:KEY`).
fn stored_key(ns: &str, key: &str) -> String {
    format!("postern:{}:{ns}:{key}", ns.len())
}

/// Checks a key and, if any, a value and TTL against the limits.
fn check(key: &str, value: Option<&[u8]>, ttl: Option<u32>) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::Invalid("empty key".into()));
    }
    if key.len() > MAX_KEY {
        return Err(KvError::Invalid(format!(
            "key of {} octets (at most {MAX_KEY})",
            key.len()
        )));
    }
    if let Some(v) = value
        && v.len() > MAX_VALUE
    {
        return Err(KvError::Invalid(format!(
            "value of {} octets (at most {MAX_VALUE})",
            v.len()
        )));
    }
    if ttl == Some(0) {
        return Err(KvError::Invalid("a TTL must be at least 1 second".into()));
    }
    Ok(())
}

/// A stored integer: decimal ASCII, as Redis keeps counters.
fn parse_number(value: &[u8]) -> Result<i64, KvError> {
    std::str::from_utf8(value)
        .ok()
        .filter(|s| !s.starts_with('+'))
        .and_then(|s| s.parse().ok())
        .ok_or(KvError::NotANumber)
}

/// Runs the same call on whichever backend the store has.
macro_rules! dispatch {
    ($self:ident, |$s:ident| $call:expr) => {
        match &$self.backend {
            Backend::Embedded($s) => $call,
            Backend::Redis($s) => $call,
        }
    };
}

impl Kv {
    /// The store `[kv]` describes, for a daemon whose spool is `spool`.
    /// Nothing is opened or connected yet.
    pub fn new(cfg: &KvConfig, spool: &Path) -> Kv {
        let backend = match cfg.backend {
            KvBackend::Embedded => Backend::Embedded(embedded::Store::new(cfg.path_in(spool))),
            KvBackend::Redis => Backend::Redis(redis::Store::new(
                cfg.url.clone().unwrap_or_default(),
                cfg.timeout.0,
            )),
        };
        Kv {
            backend,
            timeout: cfg.timeout.0,
        }
    }

    /// Runs one operation within the store's timeout.
    async fn bounded<T>(&self, op: impl Future<Output = Result<T, KvError>>) -> Result<T, KvError> {
        tokio::time::timeout(self.timeout, op)
            .await
            .unwrap_or_else(|_| {
                Err(KvError::Unavailable(format!(
                    "no answer within {}",
                    humantime::format_duration(self.timeout)
                )))
            })
    }

    /// The value of `key`, if it exists and has not expired.
    pub async fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        check(key, None, None)?;
        let k = stored_key(ns, key);
        self.bounded(async { dispatch!(self, |s| s.get(k).await) })
            .await
    }

    /// Sets `key`, replacing any value.
    pub async fn set(
        &self,
        ns: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<u32>,
    ) -> Result<(), KvError> {
        check(key, Some(&value), ttl)?;
        let k = stored_key(ns, key);
        self.bounded(async { dispatch!(self, |s| s.put(k, value, ttl, false).await.map(|_| ())) })
            .await
    }

    /// Sets `key` if it does not exist; true if it was set.
    pub async fn add(
        &self,
        ns: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<u32>,
    ) -> Result<bool, KvError> {
        check(key, Some(&value), ttl)?;
        let k = stored_key(ns, key);
        self.bounded(async { dispatch!(self, |s| s.put(k, value, ttl, true).await) })
            .await
    }

    /// Adds `delta` to the integer at `key` (missing: 0); `ttl` applies
    /// when the key is created.
    pub async fn increment(
        &self,
        ns: &str,
        key: &str,
        delta: i64,
        ttl: Option<u32>,
    ) -> Result<i64, KvError> {
        check(key, None, ttl)?;
        let k = stored_key(ns, key);
        self.bounded(async { dispatch!(self, |s| s.increment(k, delta, ttl).await) })
            .await
    }

    /// Removes `key`; true if it existed.
    pub async fn delete(&self, ns: &str, key: &str) -> Result<bool, KvError> {
        check(key, None, None)?;
        let k = stored_key(ns, key);
        self.bounded(async { dispatch!(self, |s| s.delete(k).await) })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_cannot_forge_each_others_keys() {
        assert_eq!(stored_key("rcpt/g", "k"), "postern:6:rcpt/g:k");
        assert_ne!(stored_key("a:b", "c"), stored_key("a", "b:c"));
        assert_ne!(
            stored_key(&entry_namespace("rcpt", "x"), "k"),
            stored_key("rcpt.x", "k")
        );
    }

    #[test]
    fn limits_and_numbers() {
        assert!(check("k", Some(&[0; MAX_VALUE]), Some(1)).is_ok());
        assert!(matches!(check("", None, None), Err(KvError::Invalid(_))));
        assert!(matches!(
            check(&"k".repeat(MAX_KEY + 1), None, None),
            Err(KvError::Invalid(_))
        ));
        assert!(matches!(
            check("k", Some(&[0; MAX_VALUE + 1]), None),
            Err(KvError::Invalid(_))
        ));
        assert!(matches!(
            check("k", None, Some(0)),
            Err(KvError::Invalid(_))
        ));
        assert_eq!(parse_number(b"-42"), Ok(-42));
        assert_eq!(parse_number(b"+1"), Err(KvError::NotANumber));
        assert_eq!(parse_number(b"1.5"), Err(KvError::NotANumber));
        assert_eq!(
            parse_number(b"99999999999999999999"),
            Err(KvError::NotANumber)
        );
    }

    #[tokio::test]
    async fn the_embedded_store_keeps_keys_across_opens_and_expires_them() {
        let dir = std::env::temp_dir().join(format!("postern-kv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = KvConfig::default();
        {
            let kv = Kv::new(&cfg, &dir);
            assert_eq!(kv.get("a", "k").await, Ok(None));
            kv.set("a", "k", b"v".to_vec(), None).await.unwrap();
            assert_eq!(kv.get("b", "k").await, Ok(None));
            assert!(!kv.add("a", "k", b"w".to_vec(), None).await.unwrap());
            assert!(kv.add("a", "n", b"5".to_vec(), None).await.unwrap());
            assert_eq!(kv.increment("a", "n", 2, Some(100)).await, Ok(7));
            assert_eq!(kv.increment("a", "fresh", -3, None).await, Ok(-3));
            assert_eq!(
                kv.increment("a", "k", 1, None).await,
                Err(KvError::NotANumber)
            );
            kv.set("a", "n2", i64::MAX.to_string().into(), None)
                .await
                .unwrap();
            assert!(matches!(
                kv.increment("a", "n2", 1, None).await,
                Err(KvError::Invalid(_))
            ));
            kv.set("a", "gone", b"x".to_vec(), Some(1)).await.unwrap();
        }
        let kv = Kv::new(&cfg, &dir);
        assert_eq!(kv.get("a", "k").await, Ok(Some(b"v".to_vec())));
        assert_eq!(kv.get("a", "n").await, Ok(Some(b"7".to_vec())));
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(kv.get("a", "gone").await, Ok(None));
        assert!(kv.add("a", "gone", b"y".to_vec(), None).await.unwrap());
        assert!(kv.delete("a", "k").await.unwrap());
        assert!(!kv.delete("a", "k").await.unwrap());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
