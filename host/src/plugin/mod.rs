//! Policy as sandboxed WebAssembly plugins.
//!
//! - [`runtime`]: one wasmtime engine (pooling allocator, epoch ticker),
//!   the compile cache, and loading with WIT checks and hook detection.
//! - [`contract`]: which components load: WIT version, interfaces, grants.
//! - [`state`]: what a plugin instance's store holds.
//! - [`host`]: the host side of each WIT interface a plugin may import.
//! - [`input`]: what a hook is called with, in host terms.
//! - [`chain`]: the per-stage chains of a generation and the per-session
//!   runner with Postfix restriction-list semantics.
//! - [`outcome`]: plugin answers in host terms, sanitised.
//! - [`scoring`]: policy weighting over a transaction.

mod bindings;
pub mod chain;
pub mod contract;
pub mod host;
pub mod input;
pub mod outcome;
pub mod runtime;
pub mod scoring;
pub mod state;

pub use chain::{Chains, Decision, PluginSession, Stage, StageResult};
pub use input::{EnvelopeInfo, Input, SessionInfo};
pub use outcome::{Score, Verdict};
pub use runtime::Runtime;
