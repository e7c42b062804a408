//! Every reply the daemon's side of a session builds, in one place: the
//! driver's (timeouts, shutdown, limits, AUTH), the stages' (relay
//! control, routing, ownership of the sender, VRFY) and the message's
//! commit. The SMTP state machine's own protocol replies stay with it in
//! [`crate::smtp`]; plugins' replies come sanitised from their verdicts.
//!
//! The texts and codes are contracts (clients, tests and log readers
//! match them): change one only on purpose.

use std::fmt::Display;

use crate::smtp::reply::{Reply, r};

// ----- The session as a whole (driver) -----

/// A panic ended the session (a bug).
pub fn panicked() -> Reply {
    r(
        421,
        4,
        3,
        0,
        "Error: internal error, closing transmission channel",
    )
}

/// The daemon is stopping.
pub fn shutting_down() -> Reply {
    r(
        421,
        4,
        3,
        2,
        "Service shutting down, closing transmission channel",
    )
}

/// The client did not send (or read) in time.
pub fn timeout() -> Reply {
    r(421, 4, 4, 2, "Error: timeout exceeded")
}

/// The connection ended in the middle of an AUTH exchange.
pub fn lost_connection() -> Reply {
    r(421, 4, 4, 2, "Error: lost connection")
}

/// The session reached its age or command limit.
pub fn session_limit() -> Reply {
    r(
        421,
        4,
        7,
        0,
        "Error: session limit reached, closing transmission channel",
    )
}

/// Pipelining where RFC 2920 says to wait (unauthenticated, untrusted).
pub fn pipelining() -> Reply {
    r(554, 5, 5, 0, "Error: SMTP protocol synchronization")
}

/// Refused at accept: `max_connections` reached.
pub fn too_many_connections() -> Reply {
    r(421, 4, 7, 0, "Error: too many connections")
}

/// Refused at accept: `max_connections_per_ip` reached.
pub fn too_many_connections_from_address() -> Reply {
    r(
        421,
        4,
        7,
        0,
        "Error: too many connections from your address",
    )
}

// ----- AUTH -----

/// AUTH on a listener without a backend.
pub fn auth_not_enabled() -> Reply {
    r(502, 5, 5, 1, "Error: authentication not enabled")
}

/// The client's address failed too often recently.
pub fn auth_tarpit() -> Reply {
    r(
        454,
        4,
        7,
        0,
        "Too many authentication failures from your address, try again later",
    )
}

/// This session failed `max_auth_failures` times.
pub fn auth_too_many_failures() -> Reply {
    r(421, 4, 7, 0, "Error: too many authentication failures")
}

/// Wrong credentials.
pub fn auth_invalid() -> Reply {
    r(535, 5, 7, 8, "Authentication credentials invalid")
}

/// A mechanism the backend does not offer.
pub fn auth_unknown_mechanism() -> Reply {
    r(504, 5, 5, 4, "Unrecognized authentication type")
}

/// The initial response is not base64.
pub fn auth_bad_initial() -> Reply {
    r(501, 5, 5, 2, "Cannot decode AUTH parameter")
}

/// A continuation line is not base64.
pub fn auth_bad_response() -> Reply {
    r(501, 5, 5, 2, "Cannot decode response")
}

/// A continuation line longer than RFC 4954 allows.
pub fn auth_line_too_long() -> Reply {
    r(500, 5, 5, 6, "Authentication Exchange line is too long")
}

/// The client answered `*`.
pub fn auth_aborted() -> Reply {
    r(501, 5, 0, 0, "Authentication aborted")
}

/// The backend failed or did not answer in time.
pub fn auth_temporary() -> Reply {
    r(454, 4, 7, 0, "Temporary authentication failure")
}

// ----- MAIL and RCPT (stages) -----

/// An authenticated client used a sender it does not own.
pub fn sender_not_owned(from: &dyn Display, user: &str) -> Reply {
    r(
        553,
        5,
        7,
        1,
        format!("<{from}>: Sender address rejected: not owned by user {user}"),
    )
}

/// A recipient in a domain we do not serve, from a client that may not
/// relay.
pub fn relay_denied(to: &dyn Display) -> Reply {
    r(554, 5, 7, 1, format!("<{to}>: Relay access denied"))
}

/// A local recipient nobody is.
pub fn unknown_user(to: &dyn Display) -> Reply {
    r(
        550,
        5,
        1,
        1,
        format!("<{to}>: Recipient address rejected: User unknown in local recipient table"),
    )
}

/// A recipient whose aliases loop.
pub fn alias_loop(to: &dyn Display) -> Reply {
    r(
        550,
        5,
        4,
        6,
        format!("<{to}>: Recipient address rejected: alias loop"),
    )
}

// ----- VRFY -----

/// VRFY with an argument that is no address.
pub fn vrfy_bad_syntax() -> Reply {
    r(501, 5, 1, 3, "Bad recipient address syntax")
}

/// VRFY of an address in a domain that is not local.
pub fn vrfy_cannot() -> Reply {
    r(
        252,
        2,
        0,
        0,
        "Cannot VRFY user, but will accept message and attempt delivery",
    )
}

/// VRFY of a local address that resolves.
pub fn vrfy_known(path: &dyn Display) -> Reply {
    r(250, 2, 0, 0, format!("<{path}>"))
}

/// VRFY of a local address nobody is.
pub fn vrfy_unknown(path: &dyn Display) -> Reply {
    r(
        550,
        5,
        1,
        1,
        format!("<{path}>: Recipient address rejected: User unknown"),
    )
}

// ----- End of data (stage and commit) -----

/// End of data without a transaction (cannot happen; answered all the
/// same).
pub fn no_transaction() -> Reply {
    r(503, 5, 5, 1, "Error: no transaction")
}

/// More `Received:` fields than `hopcount_limit`.
pub fn too_many_hops() -> Reply {
    r(554, 5, 4, 6, "Error: too many hops")
}

/// The message is ours (queued, delivered, held or discarded).
pub fn queued(id: &str) -> Reply {
    r(250, 2, 0, 0, format!("Ok: queued as {id}"))
}

/// The host's own work on the message failed (a bug).
pub fn internal_error() -> Reply {
    r(451, 4, 3, 0, "Error: internal error, try again later")
}

/// The spool (or journal) could not take the message.
pub fn queue_write_error() -> Reply {
    r(
        451,
        4,
        3,
        0,
        "Error: queue file write error, try again later",
    )
}

/// Direct local delivery failed as a whole.
pub fn local_delivery_failed() -> Reply {
    r(
        451,
        4,
        3,
        0,
        "Error: local delivery failed, try again later",
    )
}

/// No room on disk for the message.
pub fn storage_full() -> Reply {
    r(452, 4, 3, 1, "Error: insufficient system storage")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts clients and tests match, as they go on the wire.
    #[test]
    fn replies_keep_their_wire_form() {
        let wire = |r: Reply| String::from_utf8(r.to_bytes()).unwrap();
        assert_eq!(
            wire(relay_denied(&"x@y.test")),
            "554 5.7.1 <x@y.test>: Relay access denied\r\n"
        );
        assert_eq!(
            wire(unknown_user(&"a@b.test")),
            "550 5.1.1 <a@b.test>: Recipient address rejected: User unknown in local recipient table\r\n"
        );
        assert_eq!(wire(queued("Q1")), "250 2.0.0 Ok: queued as Q1\r\n");
        assert_eq!(
            wire(sender_not_owned(&"a@b.test", "bob")),
            "553 5.7.1 <a@b.test>: Sender address rejected: not owned by user bob\r\n"
        );
    }
}
