//! The pooling allocator, sized from what the loaded components need.
//!
//! wasmtime's pool reserves its memories, tables and stacks when the
//! engine is made, in totals over all instances. Totals guessed per slot
//! ran out long before `wasm.max_instances` instances (the Python
//! interpreter's component makes 14 core instances; the pool allowed 8
//! per slot), and sessions then got 451. The totals are
//! now `max_instances` times what the largest configured component needs,
//! read from the compiled components before the engine is made; core
//! instances are only counted by the pool (no memory behind them), so
//! their total never binds.
//!
//! Decommits are not batched (wasmtime's default): a freed memory, table
//! or stack goes back to its free list at once. Batched, it waited in a
//! queue; a module dropped meanwhile could not clear the slots it left
//! there (they came back later still mapping its image, which holds its
//! machine code: every build a reload replaced stayed in memory), and two
//! threads allocating from a full pool raced over the queue (one failed:
//! 451s at capacity). Measured: no cost for a Rust plugin (its memory is
//! reset in place, never queued), none visible for the Python one.

use wasmtime::PoolingAllocationConfig;
use wasmtime::component::Component;

use super::limits::{MAX_CORE_INSTANCES, MAX_MEMORIES, MAX_TABLES};
use crate::config::Wasm;

/// What one instance of a component takes from the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// Linear memories.
    pub memories: u32,
    /// Tables.
    pub tables: u32,
}

impl Needs {
    /// What an instance of `component` takes. A component that imports
    /// core modules cannot tell; it is given the per-component maximum.
    pub fn of(component: &Component) -> Needs {
        match component.resources_required() {
            Some(r) => Needs {
                memories: r.num_memories,
                tables: r.num_tables,
            },
            None => Needs {
                memories: u32::try_from(MAX_MEMORIES).unwrap_or(u32::MAX),
                tables: u32::try_from(MAX_TABLES).unwrap_or(u32::MAX),
            },
        }
    }

    /// The larger of each.
    pub fn max(self, other: Needs) -> Needs {
        Needs {
            memories: self.memories.max(other.memories),
            tables: self.tables.max(other.tables),
        }
    }
}

/// The pool's totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    /// Component instances alive at once (`wasm.max_instances`).
    pub slots: u32,
    /// What the pool holds for each instance (the largest component's
    /// needs when it was made).
    pub each: Needs,
}

impl Pool {
    /// A pool of `slots` instances that each need `each` (at least one
    /// memory and table, so that a plugin loaded later finds some).
    pub fn new(slots: u32, each: Needs) -> Pool {
        Pool {
            slots: slots.max(1),
            each: Needs {
                memories: each.memories.max(1),
                tables: each.tables.max(1),
            },
        }
    }

    /// Total memories.
    fn memories(&self) -> u32 {
        self.slots.saturating_mul(self.each.memories)
    }

    /// Total tables.
    fn tables(&self) -> u32 {
        self.slots.saturating_mul(self.each.tables)
    }

    /// Instances of a component needing `needs` that fit at once (all of
    /// them alike): `slots` unless it needs more than the pool was made
    /// for (a plugin a reload brought).
    pub fn capacity(&self, needs: Needs) -> u32 {
        let by = |total: u32, each: u32| total.checked_div(each).unwrap_or(u32::MAX);
        self.slots
            .min(by(self.memories(), needs.memories))
            .min(by(self.tables(), needs.tables))
    }

    /// The allocator's configuration.
    pub fn config(&self, cfg: &Wasm, keep_resident: usize) -> PoolingAllocationConfig {
        let max_memory = usize::try_from(cfg.max_memory.0).unwrap_or(usize::MAX);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(self.slots)
            .total_core_instances(
                self.slots
                    .saturating_mul(u32::try_from(MAX_CORE_INSTANCES).unwrap_or(u32::MAX)),
            )
            .total_memories(self.memories())
            .total_tables(self.tables())
            // A store keeps its fiber stack between calls.
            .total_stacks(self.slots)
            .max_memory_size(max_memory)
            .max_tables_per_module(8)
            .table_elements(100_000)
            .max_component_instance_size(1 << 20)
            .max_core_instances_per_component(u32::try_from(MAX_CORE_INSTANCES).unwrap_or(u32::MAX))
            .max_memories_per_component(u32::try_from(MAX_MEMORIES).unwrap_or(u32::MAX))
            .max_tables_per_component(u32::try_from(MAX_TABLES).unwrap_or(u32::MAX))
            .linear_memory_keep_resident(keep_resident)
            .table_keep_resident(64 << 10)
            .async_stack_keep_resident(64 << 10)
            .decommit_batch_size(1)
            .pagemap_scan(wasmtime::Enabled::Auto);
        pool
    }
}

impl std::fmt::Display for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} plugin instances at once ({} memories and {} tables each)",
            self.slots, self.each.memories, self.each.tables
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_max_instances_for_what_the_pool_was_sized_for() {
        let python = Needs {
            memories: 3,
            tables: 9,
        };
        let rust = Needs {
            memories: 1,
            tables: 2,
        };
        let pool = Pool::new(200, python.max(rust));
        assert_eq!((pool.memories(), pool.tables()), (600, 1800));
        assert_eq!(pool.capacity(python), 200);
        assert_eq!(pool.capacity(rust), 200);
        // A bigger component a reload brings fits fewer times.
        let bigger = Needs {
            memories: 6,
            tables: 9,
        };
        assert_eq!(pool.capacity(bigger), 100);
        assert_eq!(
            pool.capacity(Needs {
                memories: 0,
                tables: 0
            }),
            200
        );
        assert_eq!(Pool::new(0, rust).slots, 1);
    }
}
