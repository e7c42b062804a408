//! The embedded backend: one redb file of this node, kept across
//! restarts. A value is stored with its expiry (Unix seconds, 0 for
//! none) in front; an index by expiry lets every write transaction purge
//! a bounded batch of expired keys, so expired keys do not pile up and
//! no purge task is needed. Operations run on blocking threads; each write
//! is durable when it returns.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::{KvError, parse_number};

/// Key → expiry (8 octets, big-endian) and value.
const DATA: TableDefinition<&str, &[u8]> = TableDefinition::new("data");

/// (expiry, key) → (): the keys that expire, oldest first.
const EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("expiry");

/// Expired keys removed by one write transaction, at most.
const PURGE_BATCH: usize = 64;

/// The store: its file, opened on first use.
pub struct Store {
    path: PathBuf,
    db: Arc<Mutex<Option<Arc<Database>>>>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn failed(what: &str, e: impl std::fmt::Display) -> KvError {
    KvError::Unavailable(format!("{what}: {e}"))
}

/// `(expiry, value)` of a stored record.
fn split(record: &[u8]) -> (u64, &[u8]) {
    let (head, value) = record.split_at(record.len().min(8));
    let mut e = [0u8; 8];
    e[..head.len()].copy_from_slice(head);
    (u64::from_be_bytes(e), value)
}

fn live(expiry: u64, at: u64) -> bool {
    expiry == 0 || expiry > at
}

/// The database in `path`, opened (and created) now if `slot` has none.
fn open(path: &Path, slot: &Mutex<Option<Arc<Database>>>) -> Result<Arc<Database>, KvError> {
    let mut db = slot.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(db) = &*db {
        return Ok(db.clone());
    }
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| failed(&format!("cannot create {}", dir.display()), e))?;
    }
    let opened = Arc::new(
        Database::create(path)
            .map_err(|e| failed(&format!("cannot open {}", path.display()), e))?,
    );
    tracing::info!("kv: embedded store {}", path.display());
    *db = Some(opened.clone());
    Ok(opened)
}

impl Store {
    /// The store in `path`.
    pub fn new(path: PathBuf) -> Store {
        Store {
            path,
            db: Arc::default(),
        }
    }

    /// Runs `f` with the database on a blocking thread (opening the file
    /// reads, or repairs, it: not on an async worker either).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, KvError> + Send + 'static,
    ) -> Result<T, KvError> {
        let (path, slot) = (self.path.clone(), self.db.clone());
        tokio::task::spawn_blocking(move || f(&*open(&path, &slot)?))
            .await
            .map_err(|e| failed("kv task", e))?
    }

    /// A write transaction: `f`, after purging a batch of expired keys.
    fn write<T>(
        db: &Database,
        f: impl FnOnce(&WriteTransaction, u64) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        let tx = db.begin_write().map_err(|e| failed("write", e))?;
        let at = now();
        purge(&tx, at)?;
        let out = f(&tx, at)?;
        tx.commit().map_err(|e| failed("commit", e))?;
        Ok(out)
    }

    /// The live value of `key`.
    pub async fn get(&self, key: String) -> Result<Option<Vec<u8>>, KvError> {
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(|e| failed("read", e))?;
            let table = match tx.open_table(DATA) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(failed("read", e)),
            };
            let Some(record) = table.get(key.as_str()).map_err(|e| failed("read", e))? else {
                return Ok(None);
            };
            let (expiry, value) = split(record.value());
            Ok(live(expiry, now()).then(|| value.to_vec()))
        })
        .await
    }

    /// Sets `key` (only if absent, with `only_new`); true if it was set.
    pub async fn put(
        &self,
        key: String,
        value: Vec<u8>,
        ttl: Option<u32>,
        only_new: bool,
    ) -> Result<bool, KvError> {
        self.blocking(move |db| {
            Store::write(db, |tx, at| {
                if only_new && current(tx, &key, at)?.is_some() {
                    return Ok(false);
                }
                let expiry = ttl.map_or(0, |t| at + u64::from(t));
                store(tx, &key, expiry, &value)?;
                Ok(true)
            })
        })
        .await
    }

    /// Adds `delta` to the integer at `key`.
    pub async fn increment(
        &self,
        key: String,
        delta: i64,
        ttl: Option<u32>,
    ) -> Result<i64, KvError> {
        self.blocking(move |db| {
            Store::write(db, |tx, at| {
                let (expiry, old) = match current(tx, &key, at)? {
                    Some((expiry, value)) => (expiry, parse_number(&value)?),
                    None => (ttl.map_or(0, |t| at + u64::from(t)), 0),
                };
                let new = old
                    .checked_add(delta)
                    .ok_or_else(|| KvError::Invalid("increment would overflow".into()))?;
                store(tx, &key, expiry, new.to_string().as_bytes())?;
                Ok(new)
            })
        })
        .await
    }

    /// Removes `key`; true if it was live.
    pub async fn delete(&self, key: String) -> Result<bool, KvError> {
        self.blocking(move |db| {
            Store::write(db, |tx, at| {
                let was = current(tx, &key, at)?.is_some();
                let mut data = tx.open_table(DATA).map_err(|e| failed("write", e))?;
                let old = data
                    .remove(key.as_str())
                    .map_err(|e| failed("write", e))?
                    .map(|r| split(r.value()).0);
                drop(data);
                if let Some(expiry) = old.filter(|&e| e != 0) {
                    let mut index = tx.open_table(EXPIRY).map_err(|e| failed("write", e))?;
                    index
                        .remove((expiry, key.as_str()))
                        .map_err(|e| failed("write", e))?;
                }
                Ok(was)
            })
        })
        .await
    }
}

/// The live `(expiry, value)` of `key` in a write transaction.
fn current(tx: &WriteTransaction, key: &str, at: u64) -> Result<Option<(u64, Vec<u8>)>, KvError> {
    let data = tx.open_table(DATA).map_err(|e| failed("write", e))?;
    let got = data.get(key).map_err(|e| failed("read", e))?;
    Ok(got.and_then(|r| {
        let (expiry, value) = split(r.value());
        live(expiry, at).then(|| (expiry, value.to_vec()))
    }))
}

/// Writes `key` with its expiry, and keeps the expiry index in step.
fn store(tx: &WriteTransaction, key: &str, expiry: u64, value: &[u8]) -> Result<(), KvError> {
    let mut record = Vec::with_capacity(8 + value.len());
    record.extend_from_slice(&expiry.to_be_bytes());
    record.extend_from_slice(value);
    let mut data = tx.open_table(DATA).map_err(|e| failed("write", e))?;
    let old = data
        .insert(key, record.as_slice())
        .map_err(|e| failed("write", e))?
        .map(|r| split(r.value()).0);
    drop(data);
    let mut index = tx.open_table(EXPIRY).map_err(|e| failed("write", e))?;
    if let Some(old) = old.filter(|&e| e != 0 && e != expiry) {
        index.remove((old, key)).map_err(|e| failed("write", e))?;
    }
    if expiry != 0 {
        index
            .insert((expiry, key), ())
            .map_err(|e| failed("write", e))?;
    }
    Ok(())
}

/// Removes up to [`PURGE_BATCH`] keys that expired before `at`.
fn purge(tx: &WriteTransaction, at: u64) -> Result<(), KvError> {
    let mut index = tx.open_table(EXPIRY).map_err(|e| failed("purge", e))?;
    let mut expired = Vec::new();
    for entry in index
        .range((0u64, "")..(at + 1, ""))
        .map_err(|e| failed("purge", e))?
        .take(PURGE_BATCH)
    {
        let (k, _) = entry.map_err(|e| failed("purge", e))?;
        let (expiry, key) = k.value();
        expired.push((expiry, key.to_string()));
    }
    if expired.is_empty() {
        return Ok(());
    }
    let mut data = tx.open_table(DATA).map_err(|e| failed("purge", e))?;
    for (expiry, key) in &expired {
        index
            .remove((*expiry, key.as_str()))
            .map_err(|e| failed("purge", e))?;
        data.remove(key.as_str()).map_err(|e| failed("purge", e))?;
    }
    Ok(())
}
