//! Idle client sessions kept for the next message to the same server
//! (Postfix's connection cache), for the LMTP and SMTP agents: a session
//! that ended a transaction cleanly waits here a short while; the agent
//! checks one taken out with RSET before it sends anything.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::conn::Conn;

/// How long a session may wait idle (Postfix's
/// `smtp_connection_cache_time_limit`).
pub const IDLE_LIMIT: Duration = Duration::from_secs(2);
/// How long a session is reused at most (Postfix's
/// `smtp_connection_reuse_time_limit`).
pub const REUSE_LIMIT: Duration = Duration::from_secs(300);
/// Idle sessions kept per agent, all servers together.
pub const MAX_IDLE: usize = 16;

/// A session that can wait for reuse.
pub trait Reusable {
    /// Its connection (to say RSET or QUIT).
    fn conn(&mut self) -> &mut Conn;
    /// When it was opened.
    fn born(&self) -> Instant;
}

/// Idle sessions, with their key (the server, and whatever else must
/// match for reuse) and since when each waits.
pub struct Idle<K, S> {
    list: Mutex<Vec<(K, S, Instant)>>,
}

impl<K: PartialEq + Clone, S: Reusable> Default for Idle<K, S> {
    fn default() -> Idle<K, S> {
        Idle::new()
    }
}

impl<K: PartialEq + Clone, S: Reusable> Idle<K, S> {
    /// An empty cache (for a `static`).
    pub const fn new() -> Idle<K, S> {
        Idle {
            list: Mutex::new(Vec::new()),
        }
    }

    /// An idle session for `key` that still answers RSET, if one waits.
    pub fn take(&self, key: &K) -> Option<S> {
        loop {
            let (found, old) = {
                let Ok(mut idle) = self.list.lock() else {
                    return None;
                };
                let old = expired(&mut idle);
                let found = idle
                    .iter()
                    .position(|e| &e.0 == key)
                    .map(|i| idle.swap_remove(i).1);
                (found, old)
            };
            old.into_iter().for_each(|mut s| s.conn().quit());
            let mut s = found?;
            // A server that closed an idle connection meanwhile fails
            // here, before anything of the message was sent.
            let conn = s.conn();
            if conn.send(b"RSET\r\n", "RSET").is_ok()
                && conn.read("the RSET reply").is_ok_and(|r| r.class() == 2)
            {
                return Some(s);
            }
        }
    }

    /// Keeps a session that ended a transaction cleanly, unless it is
    /// old.
    pub fn put(&self, key: &K, mut session: S) {
        if session.born().elapsed() > REUSE_LIMIT {
            session.conn().quit();
            return;
        }
        let mut old = {
            let Ok(mut idle) = self.list.lock() else {
                session.conn().quit();
                return;
            };
            let mut old = expired(&mut idle);
            if idle.len() >= MAX_IDLE
                && let Some(i) = (0..idle.len()).min_by_key(|&i| idle.get(i).map(|e| e.2))
            {
                old.push(idle.swap_remove(i).1);
            }
            idle.push((key.clone(), session, Instant::now()));
            old
        };
        old.iter_mut().for_each(|s| s.conn().quit());
    }
}

/// Takes out the sessions that waited too long (to be closed by the
/// caller, outside the lock).
fn expired<K, S>(idle: &mut Vec<(K, S, Instant)>) -> Vec<S> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < idle.len() {
        if idle.get(i).is_some_and(|e| e.2.elapsed() > IDLE_LIMIT) {
            out.push(idle.swap_remove(i).1);
        } else {
            i += 1;
        }
    }
    out
}
