//! The `kv` interface (since 0.2.2): the daemon's key-value store
//! ([`crate::kv`]), in the current chain entry's namespace (its own, or
//! the shared one its `kv_namespace` names).

use crate::kv::KvError as Error;
use crate::plugin::bindings::postern::filter::kv::{self, KvError};
use crate::plugin::state::HostState;

fn typed(e: Error) -> KvError {
    match e {
        Error::Unavailable(s) => KvError::Unavailable(s),
        Error::Invalid(s) => KvError::Invalid(s),
        Error::NotANumber => KvError::NotANumber,
    }
}

impl HostState {
    /// The store and the current entry's namespace.
    fn store(&self) -> Result<(std::sync::Arc<crate::kv::Kv>, std::sync::Arc<str>), KvError> {
        let kv = self
            .caps
            .kv
            .clone()
            .ok_or_else(|| KvError::Unavailable("no store in this run".into()))?;
        let ns = self
            .conf()
            .map(|c| c.kv_namespace.clone())
            .ok_or_else(|| KvError::Unavailable("no chain entry".into()))?;
        Ok((kv, ns))
    }

    /// Logs a failed operation (the plugin gets it typed and decides).
    fn kv_failed(&self, op: &str, e: &Error) {
        if let Error::Unavailable(why) = e {
            tracing::warn!(
                "{}: plugin {}: kv {op}: {why}",
                self.context.as_deref().unwrap_or("-"),
                self.conf().map_or("?", |c| &c.label)
            );
        }
    }

    fn kv_result<T>(&self, op: &str, r: Result<T, Error>) -> Result<T, KvError> {
        r.map_err(|e| {
            self.kv_failed(op, &e);
            typed(e)
        })
    }
}

/// One operation in the current entry's namespace: `$call` (a future
/// using `$kv` and `$ns`), its failure logged and typed.
macro_rules! op {
    ($self:ident, $name:literal, |$kv:ident, $ns:ident| $call:expr) => {{
        let ($kv, $ns) = match $self.store() {
            Ok(s) => s,
            Err(e) => return Ok(Err(e)),
        };
        let r = $call.await;
        Ok($self.kv_result($name, r))
    }};
}

impl kv::Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, KvError>> {
        op!(self, "get", |kv, ns| kv.get(&ns, &key))
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl: Option<u32>,
    ) -> wasmtime::Result<Result<(), KvError>> {
        op!(self, "set", |kv, ns| kv.set(&ns, &key, value, ttl))
    }

    async fn add(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl: Option<u32>,
    ) -> wasmtime::Result<Result<bool, KvError>> {
        op!(self, "add", |kv, ns| kv.add(&ns, &key, value, ttl))
    }

    async fn increment(
        &mut self,
        key: String,
        delta: i64,
        ttl: Option<u32>,
    ) -> wasmtime::Result<Result<i64, KvError>> {
        op!(self, "increment", |kv, ns| kv
            .increment(&ns, &key, delta, ttl))
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, KvError>> {
        op!(self, "delete", |kv, ns| kv.delete(&ns, &key))
    }
}
