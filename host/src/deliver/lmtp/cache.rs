//! Idle LMTP sessions kept for the next message to the same server
//! (Postfix's connection cache): a session that ended a transaction
//! cleanly waits here a short while; one taken out is checked with RSET.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Session;
use crate::config::NextHop;

/// How long a session may wait idle (Postfix's
/// `smtp_connection_cache_time_limit`).
pub const IDLE_LIMIT: Duration = Duration::from_secs(2);
/// How long a session is reused at most (Postfix's
/// `lmtp_connection_reuse_time_limit`).
pub const REUSE_LIMIT: Duration = Duration::from_secs(300);
/// Idle sessions kept, all servers together.
pub const MAX_IDLE: usize = 16;

/// Idle sessions, with the server and since when each waits.
static IDLE: Mutex<Vec<(NextHop, Session, Instant)>> = Mutex::new(Vec::new());

/// Takes out the sessions that waited too long (to be closed by the
/// caller, outside the lock).
fn expired(idle: &mut Vec<(NextHop, Session, Instant)>) -> Vec<Session> {
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

/// An idle session to `next_hop`, if one waits.
pub(super) fn take(next_hop: &NextHop) -> Option<Session> {
    let (found, old) = {
        let Ok(mut idle) = IDLE.lock() else {
            return None;
        };
        let old = expired(&mut idle);
        let found = idle
            .iter()
            .position(|e| &e.0 == next_hop)
            .map(|i| idle.swap_remove(i).1);
        (found, old)
    };
    old.into_iter().for_each(|mut s| s.conn.quit());
    found
}

/// Keeps a session that ended a transaction cleanly, unless it is old.
pub(super) fn put(next_hop: &NextHop, mut session: Session) {
    if session.born.elapsed() > REUSE_LIMIT {
        session.conn.quit();
        return;
    }
    let mut old = {
        let Ok(mut idle) = IDLE.lock() else {
            session.conn.quit();
            return;
        };
        let mut old = expired(&mut idle);
        if idle.len() >= MAX_IDLE
            && let Some(i) = (0..idle.len()).min_by_key(|&i| idle.get(i).map(|e| e.2))
        {
            old.push(idle.swap_remove(i).1);
        }
        idle.push((next_hop.clone(), session, Instant::now()));
        old
    };
    old.iter_mut().for_each(|s| s.conn.quit());
}
