//! The local delivery agent (Postfix's local(8)): a user's Maildir, with
//! the `Delivered-To:` loop check.

use super::agent::{Agent, Message, Outcome, Rcpt};
use super::maildir;
use crate::route::{Router, Transport};

/// Delivers to local users' Maildirs as one configuration says.
pub struct Local<'r> {
    /// The routing tables (Maildir paths, the delimiter).
    pub router: &'r Router,
}

impl Agent for Local<'_> {
    fn deliver(&self, msg: Message<'_>, rcpts: &[Rcpt<'_>]) -> Vec<Outcome> {
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
                let parts: [&[u8]; 4] = [
                    return_path.as_bytes(),
                    delivered_to.as_bytes(),
                    env.prepend.as_bytes(),
                    msg.content,
                ];
                let name = if msg.how.derived_names() {
                    maildir::journal_name(
                        env.arrival as u64,
                        &format!("{}_{}", env.id, rcpt.index),
                        msg.hostname,
                    )
                } else {
                    maildir::unique_name(msg.hostname)
                };
                let dir = self.router.maildir(user);
                match maildir::deliver(&dir, tag.as_deref(), &parts, &name, msg.how) {
                    Ok(path) => {
                        Outcome::sent("local", format!("delivered to maildir {}", path.display()))
                    }
                    Err(e) => Outcome::deferred("local", "4.2.0", e.to_string()),
                }
            })
            .collect()
    }
}
