//! What one plugin instance may take: its linear memory (all its memories
//! together) and its tables, failing with typed errors the host recognises.

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

/// Limits that fail with a typed error the host can recognise.
#[derive(Debug)]
pub struct Limits {
    /// Linear memory limit in bytes, for all the instance's memories
    /// together (a component may have several: its own, an adapter's).
    pub memory: usize,
    /// Bytes of linear memory the instance has so far.
    pub used: usize,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.used.saturating_sub(current).saturating_add(desired);
        if total > self.memory {
            return Err(MemoryLimitExceeded {
                desired: total,
                limit: self.memory,
            }
            .into());
        }
        self.used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_limit_counts_every_memory_of_the_instance() {
        let mut l = Limits {
            memory: 100,
            used: 0,
        };
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
}
