//! The local delivery agent (Postfix's local(8)): a user's Maildir, mbox
//! file or mailbox command (`[local] mailbox`), with the `Delivered-To:`
//! loop check and the `Return-Path:` and `Delivered-To:` fields every
//! copy gets.

use super::agent::{Agent, Message, Outcome, Rcpt};
use super::maildir;
use super::mbox::Mbox;
use super::pipe::Pipe;
use crate::config::Mailbox;
use crate::route::{Router, Transport};

/// Delivers to local users' mailboxes as one configuration says.
pub struct Local<'r> {
    /// The routing tables (mailbox paths and kind, the delimiter).
    pub router: &'r Router,
}

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
            let Transport::Local { user, tag } = rcpt.transport else {
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

impl Agent for Local<'_> {
    fn deliver(&self, msg: Message<'_>, rcpts: &[Rcpt<'_>]) -> Vec<Outcome> {
        match self.router.mailbox().kind {
            Mailbox::Maildir => Maildir {
                router: self.router,
            }
            .deliver(msg, rcpts),
            Mailbox::Mbox => Mbox {
                router: self.router,
            }
            .deliver(msg, rcpts),
            Mailbox::Pipe => Pipe {
                settings: &self.router.mailbox().pipe,
            }
            .deliver(msg, rcpts),
        }
    }
}

/// Local users' Maildirs (`local.maildir`).
pub struct Maildir<'r> {
    /// The routing tables (the Maildir template).
    pub router: &'r Router,
}

impl Agent for Maildir<'_> {
    fn deliver(&self, msg: Message<'_>, rcpts: &[Rcpt<'_>]) -> Vec<Outcome> {
        let env = msg.env;
        each_local(msg, rcpts, |local| {
            let name = if msg.how.derived_names() {
                maildir::journal_name(
                    env.arrival as u64,
                    &format!("{}_{}", env.id, local.rcpt.index),
                    msg.hostname,
                )
            } else {
                maildir::unique_name(msg.hostname)
            };
            let dir = self.router.maildir(local.user);
            match maildir::deliver(
                &dir,
                local.tag,
                self.router.create_tag_folders(),
                &local.parts,
                &name,
                msg.how,
            ) {
                Ok(path) => {
                    Outcome::sent("local", format!("delivered to maildir {}", path.display()))
                }
                Err(e) => Outcome::deferred("local", "4.2.0", e.to_string()),
            }
        })
    }
}
