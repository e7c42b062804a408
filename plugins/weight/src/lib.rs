//! `weight`: policyd-weight's checks and weights as score contributions.
//!
//! At RCPT, the client's DNSBL listings, the HELO name against the client
//! address, its reverse DNS and the sender domain's MX/A records, dialup-
//! looking names, bogus MX records, anonymous and random-looking senders
//! and the sender's RHSBL listings each add policyd-weight's weight as a
//! score symbol (`PW_<token>`); the host's `[scoring]` thresholds give the
//! verdict, or with `decide = true` the plugin answers as policyd-weight
//! does. See README.md for every check and weight.

#![allow(missing_docs)] // generated bindings

pub mod check;
pub mod config;
mod glue;
pub mod names;

postern_sdk::bindings!(path: "wit", world: "postern:weight/weight");

use glue::Plugin;
export!(Plugin);
