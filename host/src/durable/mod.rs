//! Making files durable, shared by the spool, the journal and the delivery
//! agents: group commit of fsyncs ([`dirsync`]) and one descriptor per file
//! system for syncfs, so that no write-back error is lost ([`filesystems`]);
//! renames that never replace a file ([`noreplace`]); what identifies a
//! version of a file ([`stamp`]).
//!
//! These are operating-system helpers, not the spool's: a Maildir copy is
//! made durable by the same code as a queue file.

pub mod dirsync;
pub mod filesystems;
pub mod noreplace;
pub mod stamp;
