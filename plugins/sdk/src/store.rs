//! The key-value store for plugins: the [`Store`] trait over the host's
//! `kv` interface, so that a plugin's logic runs in native unit tests on
//! [`crate::fake::MemoryStore`].
//!
//! A plugin that calls any of this imports `postern:filter/kv` and needs
//! `grants = ["kv"]` in its `[[plugin]]` table. Every operation can fail
//! ([`KvError`]); the plugin decides what that means (a greylisting
//! plugin lets mail through).

pub use crate::kv::KvError;

/// What a plugin asks of a key-value store. Keys are namespaced per chain
/// entry by the host; TTLs are in seconds.
pub trait Store {
    /// The value of `key`, or `None` if it does not exist or has expired.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError>;

    /// Sets `key` to `value`, replacing any value.
    fn set(&self, key: &str, value: &[u8], ttl: Option<u32>) -> Result<(), KvError>;

    /// Sets `key` only if it does not exist; true if it was set.
    fn add(&self, key: &str, value: &[u8], ttl: Option<u32>) -> Result<bool, KvError>;

    /// Adds `delta` to the decimal integer at `key` (missing: 0) and
    /// returns the new value; `ttl` applies only when the key is created.
    fn increment(&self, key: &str, delta: i64, ttl: Option<u32>) -> Result<i64, KvError>;

    /// Removes `key`; true if it existed.
    fn delete(&self, key: &str) -> Result<bool, KvError>;

    /// [`Store::get`] as UTF-8 text (invalid UTF-8 is replaced).
    fn get_string(&self, key: &str) -> Result<Option<String>, KvError> {
        Ok(self
            .get(key)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// [`Store::get`] as a decimal integer (`None` if missing or not a
    /// number).
    fn get_i64(&self, key: &str) -> Result<Option<i64>, KvError> {
        Ok(self.get_string(key)?.and_then(|s| s.trim().parse().ok()))
    }
}

/// The host's store (the `postern:filter/kv` imports).
#[derive(Debug, Clone, Copy, Default)]
pub struct HostStore;

impl Store for HostStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        crate::kv::get(key)
    }
    fn set(&self, key: &str, value: &[u8], ttl: Option<u32>) -> Result<(), KvError> {
        crate::kv::set(key, value, ttl)
    }
    fn add(&self, key: &str, value: &[u8], ttl: Option<u32>) -> Result<bool, KvError> {
        crate::kv::add(key, value, ttl)
    }
    fn increment(&self, key: &str, delta: i64, ttl: Option<u32>) -> Result<i64, KvError> {
        crate::kv::increment(key, delta, ttl)
    }
    fn delete(&self, key: &str) -> Result<bool, KvError> {
        crate::kv::delete(key)
    }
}
