//! The host side of the WIT interfaces, one file per interface (or
//! resource): what a plugin can read and do, and nothing else. New
//! capabilities get their own file here and their own grant
//! (`[[plugin]] grants`).

pub mod dns;
pub mod edit;
pub mod envelope;
pub mod kv;
pub mod log;
pub mod message;
pub mod session;
pub mod stderr;

use std::sync::Arc;

/// The daemon's services behind the capabilities, shared by every
/// instance. Absent in runs without a daemon (`postern check`, `postern
/// plugin test`): lookups then answer `temporary`, the store
/// `unavailable`.
#[derive(Debug, Clone, Default)]
pub struct Caps {
    /// The resolver (`dns`).
    pub dns: Option<Arc<crate::dns::Dns>>,
    /// The key-value store (`kv`).
    pub kv: Option<Arc<crate::kv::Kv>>,
}
