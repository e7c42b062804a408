//! Policy as sandboxed WebAssembly plugins.
//!
//! - [`runtime`]: one wasmtime engine (pooling allocator, epoch ticker)
//!   and loading with WIT checks and hook detection.
//! - [`cache`]: the compile cache on disk, artifacts sealed with a MAC.
//! - [`contract`]: which components load: WIT version, interfaces, grants.
//! - [`state`]: what a plugin instance's store holds.
//! - [`host`]: the host side of each WIT interface a plugin may import.
//! - [`input`]: what a hook is called with, in host terms.
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
pub mod contract;
pub mod host;
pub mod input;
pub mod limits;
pub mod meter;
pub mod outcome;
pub mod pool;
pub mod runtime;
pub mod scoring;
pub mod state;

pub use chain::{Chains, Decision, PluginSession, Stage, StageResult};
pub use input::{EnvelopeInfo, Input, SessionInfo};
pub use outcome::{Score, Verdict};
pub use runtime::Runtime;
