//! Postern: a mail transfer agent whose policy runs as sandboxed
//! WebAssembly plugins.
//!
//! The crate is organised by concern: [`smtp`] is the protocol without I/O,
//! [`server`] drives it over sockets, [`spool`] makes messages durable,
//! [`route`] decides where they go and [`deliver`] takes them there.

pub mod cli;
pub mod config;
pub mod deliver;
pub mod dns;
pub mod dsn;
pub mod durable;
pub mod kv;
pub mod message;
pub mod plugin;
pub mod policy_service;
pub mod privileges;
pub mod route;
pub mod sasl;
pub mod server;
pub mod smtp;
pub mod spool;
pub mod tls;
