//! The Redis backend, for nodes that share state: one multiplexed
//! connection per daemon (the `redis` crate's connection manager, which
//! reconnects by itself), made on first use. Values are plain strings, so
//! a counter reads as a number in `redis-cli`; keys are
//! `postern:<length of namespace>:<namespace>:<key>`.

use std::sync::OnceLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, RedisError, Script, SetExpiry, SetOptions};

use super::KvError;

/// `increment` with a TTL set only when the key is created (INCRBY would
/// keep an existing key's TTL but give a new key none).
const INCREMENT: &str = r"
local existed = redis.call('EXISTS', KEYS[1])
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if existed == 0 and ARGV[2] ~= '' then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return v
";

/// The store: where the server is, and the connection once made.
pub struct Store {
    url: String,
    timeout: Duration,
    manager: OnceLock<Result<ConnectionManager, String>>,
    increment: Script,
}

/// A Redis failure as the plugin sees it.
fn failed(e: &RedisError) -> KvError {
    let text = e.to_string();
    if text.contains("not an integer") {
        KvError::NotANumber
    } else if text.contains("overflow") {
        KvError::Invalid("increment would overflow".into())
    } else {
        KvError::Unavailable(format!("redis: {text}"))
    }
}

impl Store {
    /// The store at `url`; nothing is connected yet.
    pub fn new(url: String, timeout: Duration) -> Store {
        Store {
            url,
            timeout,
            manager: OnceLock::new(),
            increment: Script::new(INCREMENT),
        }
    }

    /// The connection manager (made lazily: it connects on first use, and
    /// again after the server went away).
    fn conn(&self) -> Result<ConnectionManager, KvError> {
        let made = self.manager.get_or_init(|| {
            let client = redis::Client::open(self.url.as_str()).map_err(|e| e.to_string())?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.timeout))
                .set_response_timeout(Some(self.timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            ConnectionManager::new_lazy_with_config(client, config).map_err(|e| e.to_string())
        });
        made.clone()
            .map_err(|e| KvError::Unavailable(format!("redis {}: {e}", self.url)))
    }

    /// The value of `key`.
    pub async fn get(&self, key: String) -> Result<Option<Vec<u8>>, KvError> {
        self.conn()?.get(key).await.map_err(|e| failed(&e))
    }

    /// SET, with NX for `only_new`; true if it was set.
    pub async fn put(
        &self,
        key: String,
        value: Vec<u8>,
        ttl: Option<u32>,
        only_new: bool,
    ) -> Result<bool, KvError> {
        let mut opts = SetOptions::default();
        if only_new {
            opts = opts.conditional_set(redis::ExistenceCheck::NX);
        }
        if let Some(t) = ttl {
            opts = opts.with_expiration(SetExpiry::EX(u64::from(t)));
        }
        let reply: Option<String> = self
            .conn()?
            .set_options(key, value, opts)
            .await
            .map_err(|e| failed(&e))?;
        Ok(reply.is_some())
    }

    /// INCRBY, with the TTL for a new key.
    pub async fn increment(
        &self,
        key: String,
        delta: i64,
        ttl: Option<u32>,
    ) -> Result<i64, KvError> {
        let ttl = ttl.map(|t| t.to_string()).unwrap_or_default();
        self.increment
            .key(key)
            .arg(delta)
            .arg(ttl)
            .invoke_async(&mut self.conn()?)
            .await
            .map_err(|e| failed(&e))
    }

    /// DEL; true if the key existed.
    pub async fn delete(&self, key: String) -> Result<bool, KvError> {
        let n: u64 = self.conn()?.del(key).await.map_err(|e| failed(&e))?;
        Ok(n > 0)
    }
}
