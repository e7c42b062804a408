//! The local delivery agent (Postfix's local(8)): a user's Maildir, mbox
//! file or mailbox command (`[local] mailbox`, or the kind a transport
//! entry names), with the `Delivered-To:` loop check and the
//! `Return-Path:` and `Delivered-To:` fields every copy gets.

use super::agent::{Agent, Message, Outcome, Rcpt};
use super::mailbox::each_local;
use super::maildir;
use super::mbox::Mbox;
use super::pipe::Pipe;
use crate::config::Mailbox;
use crate::route::Router;
use crate::route::Transport;

/// Delivers to local users' mailboxes as one configuration says. The
/// recipients of one call share a mailbox kind (the caller groups them).
pub struct Local<'r> {
    /// The routing tables (mailbox paths and kind, the delimiter).
    pub router: &'r Router,
}

impl Agent for Local<'_> {
    fn deliver(&self, msg: Message<'_>, rcpts: &[Rcpt<'_>]) -> Vec<Outcome> {
        let kind = match rcpts.first().map(|r| r.transport) {
            Some(Transport::Local { mailbox, .. }) => *mailbox,
            _ => self.router.mailbox().kind,
        };
        match kind {
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
