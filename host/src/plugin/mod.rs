//! Policy as sandboxed WebAssembly plugins.
//!
//! - [`runtime`]: one wasmtime engine (pooling allocator, epoch ticker)
//!   and loading with WIT checks and hook detection.
//! - [`cache`]: the compile cache on disk, artifacts sealed with a MAC.
//! - [`state`]: what a plugin instance's store holds and the host imports.
//! - [`limits`]: the memory and table limits of one instance.
//! - [`meter`]: CPU time charged to plugin code, and the wall-clock backstop.
//! - [`pool`]: the pooling allocator, sized from the components' needs.
//! - [`chain`]: the per-stage chains of a generation and the per-session
//!   runner with Postfix restriction-list semantics.
//! - [`outcome`]: plugin answers in host terms, sanitised.
//! - [`scoring`]: policy weighting over a transaction.

mod bindings;
pub mod cache;
pub mod chain;
pub mod limits;
pub mod meter;
pub mod outcome;
pub mod pool;
pub mod runtime;
pub mod scoring;
pub mod state;

pub use chain::{
    Chains, Decision, EnvelopeInfo, Input, PluginSession, SessionInfo, Stage, StageResult,
};
pub use outcome::{Score, Verdict};
pub use runtime::Runtime;
