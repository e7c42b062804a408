//! The host side of the WIT interfaces, one file per interface (or
//! resource): what a plugin can read and do, and nothing else. New
//! capabilities get their own file here and their own grant
//! (`[[plugin]] grants`).

pub mod edit;
pub mod envelope;
pub mod log;
pub mod message;
pub mod session;
pub mod stderr;
