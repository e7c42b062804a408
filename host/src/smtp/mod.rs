//! The SMTP protocol, free of I/O: replies, addresses, command parsing, the
//! content receiver and the session state machine (one file per stage).

pub mod address;
pub mod command;
mod data;
mod ehlo;
mod mail;
mod rcpt;
pub mod receiver;
pub mod reply;
pub mod session;

#[cfg(test)]
mod proptests;

pub use reply::{Enhanced, Reply};
