//! What one plugin instance may take: its linear memory (all its memories
//! together) and its tables, failing with typed errors the host recognises.

use std::time::Duration;

use wasmtime::ResourceLimiter;

/// A plugin asked for more memory than its limit.
#[derive(Debug)]
pub struct MemoryLimitExceeded {
    /// Bytes the guest wanted.
    pub desired: usize,
    /// The limit.
    pub limit: usize,
}

impl std::fmt::Display for MemoryLimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "memory limit exceeded (wanted {} bytes, limit {})",
            self.desired, self.limit
        )
    }
}

impl std::error::Error for MemoryLimitExceeded {}

/// Core instances one component may make (the pooling allocator's
/// per-component limit, and each store's).
pub const MAX_CORE_INSTANCES: usize = 64;

/// Linear memories one component may define.
pub const MAX_MEMORIES: usize = 16;

/// Tables one component may define.
pub const MAX_TABLES: usize = 64;

/// Entries one instance may hold in the host's resource table: pollables,
/// streams, and what the host lends a call (session, envelope, message).
/// Real guests hold a handful; wasmtime's default (a million) let a guest
/// that leaks pollables in a loop grow the host's heap by tens of
/// megabytes per instance before anything stopped it.
pub const MAX_HOST_RESOURCES: usize = 1024;

/// Component-model handles one store may hold at once (wasmtime's
/// default: 100,000): the guest's handles to host resources, and to
/// resources it makes itself with `resource.new`, which need no host code.
pub const MAX_HANDLES: usize = 4096;

/// Host memory a table element takes (a pointer, as wasmtime documents).
const TABLE_ELEMENT: usize = std::mem::size_of::<usize>();

/// The memory and table limits of one instance. Memories and tables are
/// counted together against `memory`: a guest must not get around its
/// memory limit by growing tables, which live in host memory.
#[derive(Debug)]
pub struct Limits {
    /// Limit in bytes, for all the instance's linear memories (a component
    /// may have several: its own, an adapter's) and its tables together.
    pub memory: usize,
    /// Bytes the instance's memories and tables have so far.
    pub used: usize,
    /// The growth last allowed, in bytes: undone if wasmtime then fails it
    /// (past a memory's declared maximum, or no memory left to map), so
    /// that refused growth never counts.
    pending: usize,
}

impl Limits {
    /// Limits of a new instance, allowing `memory` bytes.
    pub fn new(memory: usize) -> Limits {
        Limits {
            memory,
            used: 0,
            pending: 0,
        }
    }

    /// Allows growing something from `current` to `desired` bytes, or
    /// fails with [`MemoryLimitExceeded`].
    fn grow(&mut self, current: usize, desired: usize) -> wasmtime::Result<bool> {
        let total = self.used.saturating_sub(current).saturating_add(desired);
        if total > self.memory {
            return Err(MemoryLimitExceeded {
                desired: total,
                limit: self.memory,
            }
            .into());
        }
        self.pending = total.saturating_sub(self.used);
        self.used = total;
        Ok(true)
    }

    /// wasmtime refused the growth [`Limits::grow`] allowed last: the guest
    /// sees -1 (as for any refused growth), and the bytes do not count.
    fn undo(&mut self) {
        self.used = self.used.saturating_sub(self.pending);
        self.pending = 0;
    }
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(current, desired)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.undo();
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(
            current.saturating_mul(TABLE_ELEMENT),
            desired.saturating_mul(TABLE_ELEMENT),
        )
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.undo();
        Ok(())
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_limit_counts_every_memory_of_the_instance() {
        let mut l = Limits::new(100);
        // Two memories created with 40 each, then one grows to 60.
        assert!(l.memory_growing(0, 40, None).unwrap());
        assert!(l.memory_growing(0, 40, None).unwrap());
        assert!(l.memory_growing(40, 60, None).unwrap());
        assert_eq!(l.used, 100);
        // Either growing further passes the limit together.
        let e = l.memory_growing(40, 41, None).unwrap_err();
        let m = e.downcast_ref::<MemoryLimitExceeded>().unwrap();
        assert_eq!((m.desired, m.limit), (101, 100));
        assert_eq!(l.used, 100);
    }

    #[test]
    fn growth_that_wasmtime_refuses_does_not_count() {
        let mut l = Limits::new(100);
        assert!(l.memory_growing(0, 40, None).unwrap());
        // Allowed by the limiter, then refused by wasmtime (past the
        // memory's declared maximum): the guest got -1, nothing grew.
        assert!(l.memory_growing(40, 90, Some(64)).unwrap());
        l.memory_grow_failed(wasmtime::format_err!("past the maximum"))
            .unwrap();
        assert_eq!(l.used, 40);
        // So a warm instance that was refused once can still grow to its
        // limit (before, the refused 50 bytes stayed counted forever).
        assert!(l.memory_growing(40, 100, None).unwrap());
        assert_eq!(l.used, 100);
    }

    #[test]
    fn tables_count_against_the_memory_limit() {
        let e = std::mem::size_of::<usize>();
        let mut l = Limits::new(100 * e);
        assert!(l.memory_growing(0, 50 * e, None).unwrap());
        assert!(l.table_growing(0, 30, None).unwrap());
        assert_eq!(l.used, 80 * e);
        // A refused table growth does not count either.
        assert!(l.table_growing(30, 40, None).unwrap());
        l.table_grow_failed(wasmtime::format_err!("past the maximum"))
            .unwrap();
        assert_eq!(l.used, 80 * e);
        // Memory and tables together pass the limit.
        let err = l.table_growing(30, 51, None).unwrap_err();
        let m = err.downcast_ref::<MemoryLimitExceeded>().unwrap();
        assert_eq!((m.desired, m.limit), (101 * e, 100 * e));
        assert!(l.memory_growing(50 * e, 70 * e, None).unwrap());
        assert!(l.memory_growing(70 * e, 71 * e, None).is_err());
    }
}

/// Query names one call may look up (a DNSBL check counts one per list).
pub const MAX_LOOKUPS: u32 = 100;

/// A call's DNS allowance: wall-clock time and query names left.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Time the call's lookups may still take.
    pub left: Duration,
    /// Query names the call may still look up.
    pub lookups: u32,
}

impl Budget {
    /// A fresh call's allowance.
    pub fn new(limit: Duration) -> Budget {
        Budget {
            left: limit,
            lookups: MAX_LOOKUPS,
        }
    }

    /// Takes `n` lookups from the allowance; how many were granted.
    pub(crate) fn take(&mut self, n: usize) -> usize {
        let granted = n.min(self.lookups as usize);
        self.lookups -= u32::try_from(granted).unwrap_or(0);
        granted
    }
}
