//! Delivery status notifications (RFC 3461–3464): the parameters a sender
//! gives at MAIL and RCPT, kept with the message; the reports themselves
//! come with bounces.

pub mod params;
pub mod report;

pub use params::{DsnError, Notify, RcptDsn, Ret};
