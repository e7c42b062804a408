//! What every local mailbox agent (Maildir, mbox, pipe) shares: the
//! `Delivered-To:` loop check, and the `Return-Path:` and `Delivered-To:`
//! fields every copy gets.

use super::agent::{Message, Outcome, Rcpt};
use crate::route::Transport;

/// One local recipient, past the loop check, as a mailbox agent gets it.
pub struct LocalRcpt<'a> {
    /// The recipient handed to the agent.
    pub rcpt: &'a Rcpt<'a>,
    /// Its local user, as configured.
    pub user: &'a str,
    /// Its `+tag`, if any.
    pub tag: Option<&'a str>,
    /// The copy to store: `Return-Path:`, `Delivered-To:`, the host's
    /// trace fields, then the content (CRLF line ends).
    pub parts: [&'a [u8]; 4],
}

/// Runs `store` for each local recipient of `rcpts` that has not seen
/// this message before (Postfix local(8)'s `Delivered-To:` loop check);
/// the others are bounced. One outcome per recipient, in their order.
pub fn each_local<'a>(
    msg: Message<'a>,
    rcpts: &'a [Rcpt<'a>],
    mut store: impl FnMut(&LocalRcpt<'_>) -> Outcome,
) -> Vec<Outcome> {
    let env = msg.env;
    let return_path = format!("Return-Path: <{}>\r\n", env.sender);
    let looped = super::delivered_before(
        &[env.prepend.as_bytes(), msg.content],
        rcpts.iter().map(|r| r.record.address.clone()),
    );
    rcpts
        .iter()
        .map(|rcpt| {
            let to = &rcpt.record.address;
            let Transport::Local { user, tag, .. } = rcpt.transport else {
                return Outcome::deferred("local", "4.3.5", "not a local recipient");
            };
            if looped.contains(&to.to_lowercase()) {
                // Postfix local(8): the message already went through
                // this mailbox, so delivering it again would go round
                // for ever: returned to its sender.
                return Outcome::bounced(
                    "local",
                    "5.4.6",
                    format!("mail forwarding loop for {to}"),
                );
            }
            let delivered_to = format!("Delivered-To: {to}\r\n");
            store(&LocalRcpt {
                rcpt,
                user,
                tag: tag.as_deref(),
                parts: [
                    return_path.as_bytes(),
                    delivered_to.as_bytes(),
                    env.prepend.as_bytes(),
                    msg.content,
                ],
            })
        })
        .collect()
}
