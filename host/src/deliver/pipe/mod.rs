//! Delivery to a command (Postfix's `mailbox_command` in local(8), and
//! pipe(8)): `local.pipe.command` is run without a shell, its `{user}`,
//! `{sender}`, `{recipient}`, `{tag}` and `{domain}` replaced, as
//! `local.pipe.user`, with the message on its standard input
//! (`Return-Path:` and `Delivered-To:` first, LF line ends). Its exit
//! status decides as Postfix's pipe(8) does: 0 delivered; a status of
//! `<sysexits.h>` by its table (EX_TEMPFAIL and EX_OSERR retried, the
//! others bounced with their enhanced status code); output that starts
//! with an enhanced status code (`4.2.2 mailbox full`) by that code; any
//! other status bounced; killed by a signal retried. One that runs longer
//! than `local.pipe.timeout` is killed with its process group, and the
//! delivery deferred.

mod run;
mod verdict;

use std::os::unix::process::CommandExt;
use std::process::Command;

use super::agent::{Agent, Message, Outcome, Rcpt};
use super::mailbox::{LocalRcpt, each_local};
use crate::config;
pub use run::{Ended, Ran};
pub use verdict::{judge, summary, sysexit};

/// Local mail handed to `local.pipe.command`.
pub struct Pipe<'s> {
    /// `[local.pipe]`.
    pub settings: &'s config::Pipe,
}

impl Agent for Pipe<'_> {
    fn deliver(&self, msg: Message<'_>, rcpts: &[Rcpt<'_>]) -> Vec<Outcome> {
        each_local(msg, rcpts, |local| self.deliver_one(&msg.env.sender, local))
    }
}

impl Pipe<'_> {
    fn deliver_one(&self, sender: &str, local: &LocalRcpt<'_>) -> Outcome {
        let program = self.settings.command.first().map_or("", |p| p.as_str());
        let argv = match argv(&self.settings.command, sender, local) {
            Ok(a) => a,
            Err(Refusal::Config(e)) => return Outcome::deferred("local", "4.3.5", e),
            Err(Refusal::Address(e)) => return Outcome::bounced("local", "5.1.3", e),
        };
        let ids = match identity(self.settings.user.as_deref()) {
            Ok(ids) => ids,
            Err(e) => return Outcome::deferred("local", "4.3.5", e),
        };
        let address = &local.rcpt.record.address;
        let (local_part, domain) = address.rsplit_once('@').unwrap_or((address, ""));
        let env: [(&str, &str); 8] = [
            ("PATH", "/usr/bin:/bin"),
            ("SENDER", sender),
            ("RECIPIENT", address),
            ("ORIGINAL_RECIPIENT", &local.rcpt.record.original),
            ("USER", local.user),
            ("LOGNAME", local.user),
            ("LOCAL", local_part),
            ("DOMAIN", domain),
        ];
        let mut cmd = Command::new(program);
        cmd.args(&argv[1..])
            .env_clear()
            .envs(env)
            .env("EXTENSION", local.tag.unwrap_or(""))
            .current_dir("/")
            // Its own process group: a timeout kills what it started too.
            .process_group(0);
        for keep in ["TZ", "LANG"] {
            if let Some(v) = std::env::var_os(keep) {
                cmd.env(keep, v);
            }
        }
        if let Some((uid, gid)) = ids {
            // std drops the supplementary groups before setuid.
            cmd.uid(uid).gid(gid);
        }
        let input = to_lf(&local.parts);
        match run::run(cmd, input, self.settings.timeout.0) {
            Ok(ran) => judge(&ran, program),
            Err(e) => Outcome::deferred(
                "local",
                "4.3.0",
                format!("cannot run command \"{program}\": {e}"),
            ),
        }
    }
}

/// Why a command line cannot be made.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// The configuration (changed since it was checked).
    Config(String),
    /// The address would become an option of the command (Postfix's
    /// `allow_min_user = no`).
    Address(String),
}

/// The command line for one recipient.
fn argv(template: &[String], sender: &str, local: &LocalRcpt<'_>) -> Result<Vec<String>, Refusal> {
    if template.is_empty() {
        return Err(Refusal::Config("local.pipe.command is empty".into()));
    }
    let address = &local.rcpt.record.address;
    let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
    let value = |name: &str| -> Option<String> {
        Some(match name {
            "user" => local.user.to_string(),
            // Postfix pipe(8)'s `null_sender` default.
            "sender" if sender.is_empty() => "MAILER-DAEMON".into(),
            "sender" => sender.to_string(),
            "recipient" => address.clone(),
            "tag" => local.tag.unwrap_or("").to_string(),
            "domain" => domain.to_string(),
            _ => return None,
        })
    };
    template
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let arg = config::expand(t, value).map_err(Refusal::Config)?;
            if i > 0 && arg.starts_with('-') && !t.starts_with('-') {
                return Err(Refusal::Address(format!(
                    "argument {i} of the command would begin with '-' ({arg:?}): \
                     an address is never passed as an option"
                )));
            }
            Ok(arg)
        })
        .collect()
}

/// The user and group IDs to run the command as; `None`: as we are.
fn identity(user: Option<&str>) -> Result<Option<(u32, u32)>, String> {
    let me = crate::privileges::euid();
    let Some(name) = user else {
        return match me {
            0 => Err("local.pipe.user is not set: a command is never run as root".into()),
            _ => Ok(None),
        };
    };
    let account = crate::privileges::lookup(name).map_err(|e| format!("local.pipe.user: {e:#}"))?;
    match (account.uid, me) {
        (0, _) => Err(format!(
            "local.pipe.user {name:?} is root: a command is never run as root"
        )),
        (uid, me) if uid == me => Ok(None),
        (uid, 0) => Ok(Some((uid, account.gid))),
        (uid, me) => Err(format!(
            "cannot run a command as {name:?} (uid {uid}): Postern runs as uid {me}, not root"
        )),
    }
}

/// The message with LF line ends, as commands get it from Postfix.
fn to_lf(parts: &[&[u8]]) -> Vec<u8> {
    let whole = parts.concat();
    let mut out = Vec::with_capacity(whole.len());
    let mut bytes = whole.iter().peekable();
    while let Some(&b) = bytes.next() {
        if b == b'\r' && bytes.peek() == Some(&&b'\n') {
            continue;
        }
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Transport;
    use crate::spool::Recipient;

    #[test]
    fn arguments_are_substituted_and_never_become_options() {
        let record = Recipient::new("alice+news@example.test", "info@example.test");
        let transport = Transport::Local {
            user: "alice".into(),
            tag: Some("news".into()),
            mailbox: crate::config::Mailbox::Pipe,
        };
        let rcpt = Rcpt {
            index: 0,
            record: &record,
            transport: &transport,
        };
        let local = LocalRcpt {
            rcpt: &rcpt,
            user: "alice",
            tag: Some("news"),
            parts: [b""; 4],
        };
        let template: Vec<String> = [
            "/usr/lib/dovecot/dovecot-lda",
            "-d",
            "{user}",
            "-f",
            "{sender}",
            "-a{recipient}",
            "{tag}@{domain}",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            argv(&template, "s@x.test", &local).unwrap(),
            [
                "/usr/lib/dovecot/dovecot-lda",
                "-d",
                "alice",
                "-f",
                "s@x.test",
                "-aalice+news@example.test",
                "news@example.test"
            ]
        );
        assert_eq!(argv(&template, "", &local).unwrap()[4], "MAILER-DAEMON");
        assert!(matches!(
            argv(&template, "-oQ/tmp@x.test", &local),
            Err(Refusal::Address(_))
        ));
        assert!(matches!(argv(&[], "s@x", &local), Err(Refusal::Config(_))));
    }

    #[test]
    fn line_ends_become_lf() {
        assert_eq!(to_lf(&[b"a\r\nb\r", b"\nc\rd\n"]), b"a\nb\nc\rd\n");
    }
}
