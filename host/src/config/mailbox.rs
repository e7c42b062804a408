//! How local mail is stored (`[local] mailbox`): in a Maildir (the
//! default), appended to an mbox file (Postfix's `mail_spool_directory` /
//! `home_mailbox = mbox`), or handed to a command such as Dovecot's LDA
//! (Postfix's `mailbox_command`), set in `[local.pipe]`.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{Config, Problem, Seconds};

/// Where the local agent puts a local user's mail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mailbox {
    /// `local.maildir` (the default).
    #[default]
    Maildir,
    /// `local.mbox`, locked with fcntl and a dotlock.
    Mbox,
    /// `local.pipe.command`, the message on its standard input.
    Pipe,
}

impl Mailbox {
    /// Its name in the configuration and transport tables.
    pub fn as_str(&self) -> &'static str {
        match self {
            Mailbox::Maildir => "maildir",
            Mailbox::Mbox => "mbox",
            Mailbox::Pipe => "pipe",
        }
    }
}

/// `[local.pipe]`: the command local mail is handed to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pipe {
    /// The program (an absolute path, run without a shell) and its
    /// arguments, in which [`PLACEHOLDERS`] are replaced.
    pub command: Vec<String>,
    /// The account it runs as (Postfix pipe(8)'s `user=`); default:
    /// Postern's own (refused when that is root).
    pub user: Option<String>,
    /// Killed after this long, and the delivery deferred (Postfix's
    /// `command_time_limit`).
    pub timeout: Seconds,
}

impl Default for Pipe {
    fn default() -> Pipe {
        Pipe {
            command: Vec::new(),
            user: None,
            timeout: Seconds(Duration::from_secs(1000)),
        }
    }
}

/// What `{…}` may name in `local.pipe.command`.
pub const PLACEHOLDERS: [&str; 5] = ["user", "sender", "recipient", "tag", "domain"];

/// Replaces every `{name}` of `template` by `value(name)`; an unknown
/// name is an error naming it. `{` without a closing `}` is kept as it is.
pub fn expand(template: &str, value: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let (before, after) = rest.split_at(open);
        out.push_str(before);
        let Some(close) = after.find('}') else {
            out.push_str(after);
            return Ok(out);
        };
        let name = &after[1..close];
        match value(name) {
            Some(v) => out.push_str(&v),
            None => {
                return Err(format!(
                    "unknown placeholder {{{name}}}: use {}",
                    PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
                ));
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The account deliveries run as: the process's own, or `server.user`'s
/// when started as root (the daemon drops root for it).
fn delivering_uid(config: &Config) -> Option<(u32, String)> {
    let me = crate::privileges::euid();
    match &config.server.user {
        Some(name) if me == 0 => crate::privileges::lookup(name)
            .ok()
            .map(|a| (a.uid, format!("server.user {name:?}"))),
        _ => Some((me, format!("the account running it (uid {me})"))),
    }
}

/// What is wrong with the mailbox settings of `[local]`, each with its
/// key: those of `local.mailbox`'s kind and of every kind `[transport]`
/// names.
pub(super) fn problems(config: &Config) -> Vec<Problem> {
    let mut kinds = vec![config.local.mailbox];
    for kind in super::transport::mailbox_kinds(config) {
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    kinds
        .into_iter()
        .flat_map(|kind| kind_problems(config, kind))
        .collect()
}

/// The first thing wrong with the settings of one mailbox kind, as
/// `key: message`: a transport table naming it cannot be used.
pub fn kind_problem(config: &Config, kind: Mailbox) -> Option<String> {
    kind_problems(config, kind)
        .into_iter()
        .next()
        .map(|p| format!("{}: {}", p.key, p.message))
}

/// What is wrong with the settings of one mailbox kind.
fn kind_problems(config: &Config, kind: Mailbox) -> Vec<Problem> {
    let local = &config.local;
    let mut out = Vec::new();
    let mut bad = |key: &str, message: String| {
        out.push(Problem {
            key: key.into(),
            message,
        })
    };
    match kind {
        Mailbox::Maildir => {}
        Mailbox::Mbox => {
            if local.mbox.is_empty() || local.mbox.ends_with('/') {
                bad(
                    "local.mbox",
                    format!("{:?} does not name a file", local.mbox),
                );
            } else if !local.mbox.contains("{user}") && local.users.len() > 1 {
                bad(
                    "local.mbox",
                    "must contain {user} when there are several users".into(),
                );
            }
            if local.mbox_lock_timeout.0.is_zero() {
                bad("local.mbox_lock_timeout", "must be more than 0".into());
            }
        }
        Mailbox::Pipe => {
            let pipe = &local.pipe;
            match pipe.command.first() {
                None => bad(
                    "local.pipe.command",
                    "is empty: give the program and its arguments, e.g. \
                     [\"/usr/lib/dovecot/dovecot-lda\", \"-d\", \"{user}\", \"-f\", \"{sender}\"]"
                        .into(),
                ),
                Some(program) if !Path::new(program).is_absolute() => bad(
                    "local.pipe.command[0]",
                    format!(
                        "{program:?} is not an absolute path (commands run without a shell \
                         and without a PATH search)"
                    ),
                ),
                Some(_) => {}
            }
            let known = |name: &str| PLACEHOLDERS.contains(&name).then(String::new);
            for (i, arg) in pipe.command.iter().enumerate() {
                if let Err(e) = expand(arg, known) {
                    bad(&format!("local.pipe.command[{i}]"), e);
                }
                if arg.contains('\0') {
                    bad(
                        &format!("local.pipe.command[{i}]"),
                        "contains a NUL byte".into(),
                    );
                }
            }
            if pipe.timeout.0.is_zero() {
                bad("local.pipe.timeout", "must be more than 0".into());
            }
            let runs_as = delivering_uid(config);
            match &pipe.user {
                None => {
                    if let Some((0, _)) = runs_as {
                        bad(
                            "local.pipe.user",
                            "required when Postern delivers as root: commands are never run \
                             as root (e.g. user = \"vmail\")"
                                .into(),
                        );
                    }
                }
                Some(name) => match crate::privileges::lookup(name) {
                    Err(e) => bad("local.pipe.user", format!("{e:#}")),
                    Ok(account) if account.uid == 0 => bad(
                        "local.pipe.user",
                        format!("{name:?} is root: commands are never run as root"),
                    ),
                    Ok(account) => {
                        if let Some((uid, who)) = runs_as
                            && uid != 0
                            && uid != account.uid
                        {
                            bad(
                                "local.pipe.user",
                                format!(
                                    "{name:?} (uid {}): Postern delivers as {who}, which can \
                                     start a command as another account only as root; leave \
                                     user out or make it that account",
                                    account.uid
                                ),
                            );
                        }
                    }
                },
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::MINIMAL;
    use super::super::*;
    use super::*;

    fn with(local: &str, tail: &str) -> Result<Config, ConfigError> {
        let text = MINIMAL.replace("[local]", &format!("[local]\n{local}"));
        Config::from_toml(&format!("{text}\n{tail}"), Path::new("t.toml"))
    }

    fn error(local: &str, tail: &str) -> String {
        with(local, tail).unwrap_err().to_string()
    }

    #[test]
    fn placeholders_expand_and_unknown_ones_are_named() {
        let v = |n: &str| match n {
            "user" => Some("alice".to_string()),
            "tag" => Some(String::new()),
            _ => None,
        };
        assert_eq!(expand("-d{user}", v).unwrap(), "-dalice");
        assert_eq!(expand("{user}+{tag}", v).unwrap(), "alice+");
        assert_eq!(expand("plain", v).unwrap(), "plain");
        assert_eq!(expand("open{user", v).unwrap(), "open{user");
        let e = expand("{nope}", v).unwrap_err();
        assert!(
            e.starts_with("unknown placeholder {nope}: use {user}"),
            "{e}"
        );
    }

    #[test]
    fn existing_configs_keep_maildir() {
        let c = with("", "").unwrap();
        assert_eq!(c.local.mailbox, Mailbox::Maildir);
        assert_eq!(c.local.mbox, "var/mail/{user}");
    }

    #[test]
    fn mbox_and_pipe_settings_are_checked_with_their_key() {
        assert!(with("mailbox = \"mbox\"", "").is_ok());
        let e = error("mailbox = \"mbox\"\nmbox = \"var/mail/\"", "");
        assert!(
            e.contains("local.mbox: \"var/mail/\" does not name a file"),
            "{e}"
        );
        let e = error("mailbox = \"mailbox\"", "");
        assert!(e.contains("unknown variant `mailbox`"), "{e}");
        let pipe = |lines: &str| error("mailbox = \"pipe\"", &format!("[local.pipe]\n{lines}"));
        let e = pipe("user = \"nobody\"");
        assert!(e.contains("local.pipe.command: is empty"), "{e}");
        let e = pipe("command = [\"dovecot-lda\"]\nuser = \"nobody\"");
        assert!(
            e.contains("local.pipe.command[0]: \"dovecot-lda\" is not an absolute path"),
            "{e}"
        );
        let e = pipe("command = [\"/bin/x\", \"{rcpt}\"]\nuser = \"nobody\"");
        assert!(
            e.contains("local.pipe.command[1]: unknown placeholder {rcpt}"),
            "{e}"
        );
        let e = pipe("command = [\"/bin/x\"]\nuser = \"no-such-user-here\"");
        assert!(
            e.contains("local.pipe.user: no such user \"no-such-user-here\""),
            "{e}"
        );
        let e = pipe("command = [\"/bin/x\"]\nuser = \"root\"");
        assert!(e.contains("local.pipe.user: \"root\" is root"), "{e}");
        let e = pipe("command = [\"/bin/x\"]\nuser = \"nobody\"\ntimeout = 0");
        assert!(e.contains("local.pipe.timeout: must be more than 0"), "{e}");
        let e = pipe("command = [\"/bin/x\"]\nusr = \"nobody\"");
        assert!(e.contains("unknown field `usr`"), "{e}");
        if crate::privileges::euid() == 0 {
            let e = pipe("command = [\"/bin/x\"]");
            assert!(e.contains("local.pipe.user: required when"), "{e}");
            let c = with(
                "mailbox = \"pipe\"",
                "[local.pipe]\ncommand = [\"/bin/x\", \"-d\", \"{user}\"]\nuser = \"nobody\"\ntimeout = \"1h\"",
            )
            .unwrap();
            assert_eq!(c.local.pipe.timeout.0, Duration::from_secs(3600));
        } else {
            let e = pipe("command = [\"/bin/x\"]\nuser = \"nobody\"");
            assert!(
                e.contains("can start a command as another account only as root"),
                "{e}"
            );
        }
    }
}
