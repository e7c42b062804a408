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

use std::io::{self, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::agent::{Agent, Message, Outcome, Rcpt, Status};
use super::local::{LocalRcpt, each_local};
use crate::config;

/// Command output kept for the log and the bounce (Postfix keeps 2000
/// bytes too).
const OUTPUT_KEPT: usize = 2000;

/// How long the output is awaited once the command has ended (a daemon
/// it started may hold the pipe open).
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

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
        match run(cmd, input, self.settings.timeout.0) {
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

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
    /// It ran past the timeout and was killed.
    TimedOut,
}

/// A command's run: how it ended, the start of its output, and an error
/// writing its input (other than its not reading it all).
#[derive(Debug)]
pub struct Ran {
    /// How it ended.
    pub ended: Ended,
    /// The first [`OUTPUT_KEPT`] bytes of its standard output and error.
    pub output: Vec<u8>,
    /// Writing the message failed (other than EPIPE).
    pub write_error: Option<io::Error>,
}

/// Runs `cmd` with `input` on its standard input, its output (both
/// streams, into one pipe) kept, killed with its process group after
/// `timeout`.
fn run(mut cmd: Command, input: Vec<u8>, timeout: Duration) -> io::Result<Ran> {
    let (mut reader, writer) = io::pipe()?;
    cmd.stdin(Stdio::piped())
        .stdout(writer.try_clone()?)
        .stderr(writer);
    let spawned = cmd.spawn();
    // The Command holds the pipe's write end: closed here, so the reader
    // sees its end when the command (and what it started) closes theirs.
    drop(cmd);
    let mut child = spawned?;
    let (out_tx, out_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = OUTPUT_KEPT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
        let _ = out_tx.send(kept);
    });
    let (in_tx, in_rx) = mpsc::channel();
    if let Some(mut stdin) = child.stdin.take() {
        std::thread::spawn(move || {
            let written = stdin.write_all(&input).and_then(|()| stdin.flush());
            let _ = in_tx.send(written);
        });
    }
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let ended = loop {
        if let Some(status) = child.try_wait()? {
            break match (status.code(), status.signal()) {
                (Some(code), _) => Ended::Exited(code),
                (None, Some(sig)) => Ended::Signaled(sig),
                (None, None) => Ended::Signaled(0),
            };
        }
        if Instant::now() >= deadline {
            kill_group(child.id());
            let _ = child.wait();
            break Ended::TimedOut;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    };
    let write_error = match in_rx.recv_timeout(OUTPUT_GRACE) {
        Ok(Err(e)) if e.kind() != io::ErrorKind::BrokenPipe => Some(e),
        _ => None,
    };
    let output = out_rx.recv_timeout(OUTPUT_GRACE).unwrap_or_default();
    Ok(Ran {
        ended,
        output,
        write_error,
    })
}

/// Kills the process group `pgid` (the command and what it started).
#[allow(unsafe_code)]
fn kill_group(pgid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    // SAFETY: kill takes integers and touches no memory; a negative pid
    // names the process group the command leads (`process_group(0)`).
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// `<sysexits.h>` as Postfix's `sys_exits.c` maps it: enhanced status
/// code and text.
pub fn sysexit(code: i32) -> Option<(&'static str, &'static str)> {
    Some(match code {
        64 => ("5.3.0", "command line usage error"),
        65 => ("5.6.0", "data format error"),
        66 => ("5.3.0", "cannot open input"),
        67 => ("5.1.1", "user unknown"),
        68 => ("5.1.2", "host name unknown"),
        69 => ("5.3.0", "service unavailable"),
        70 => ("5.3.0", "internal software error"),
        71 => ("4.3.0", "system resource problem"),
        72 => ("5.3.0", "critical OS file missing"),
        73 => ("5.2.0", "can't create user output file"),
        74 => ("5.3.0", "input/output error"),
        75 => ("4.3.0", "temporary failure"),
        76 => ("5.5.0", "remote error in protocol"),
        77 => ("5.7.0", "permission denied"),
        78 => ("5.3.5", "local configuration error"),
        _ => return None,
    })
}

/// The first lines of a command's output, on one line, for the log and
/// a bounce.
pub fn summary(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(output);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(3)
        .collect();
    let mut out: String = lines
        .join("; ")
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if out.chars().count() > 500 {
        out = out.chars().take(500).collect::<String>() + "...";
    }
    out
}

/// An enhanced status code at the start of `text` (`4.2.2 mailbox
/// full`), and the text after it (Postfix's `dsn_valid`).
fn leading_dsn(text: &str) -> Option<(&str, &str)> {
    let end = text.find(' ').unwrap_or(text.len());
    let code = &text[..end];
    let mut fields = code.split('.');
    let ok = matches!(fields.next(), Some("2" | "4" | "5"))
        && fields
            .by_ref()
            .take(2)
            .filter(|f| (1..=3).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit()))
            .count()
            == 2
        && fields.next().is_none();
    ok.then(|| (code, text[end..].trim_start()))
}

/// The outcome of a command's run, as Postfix's pipe(8) judges it.
pub fn judge(ran: &Ran, program: &str) -> Outcome {
    let said = summary(&ran.output);
    let with_output = |text: String| match said.is_empty() {
        true => text,
        false => format!("{text}. Command output: {said}"),
    };
    let outcome = |status: Status, dsn: &str, detail: String| Outcome {
        status,
        dsn: dsn.into(),
        relay: "local".into(),
        detail,
    };
    match ran.ended {
        Ended::TimedOut => outcome(
            Status::Deferred,
            "4.3.0",
            with_output(format!("Command time limit exceeded: \"{program}\"")),
        ),
        Ended::Signaled(sig) => outcome(
            Status::Deferred,
            "4.3.0",
            with_output(format!("Command died with signal {sig}: \"{program}\"")),
        ),
        Ended::Exited(0) => match &ran.write_error {
            Some(e) => outcome(
                Status::Deferred,
                "4.3.0",
                format!("Command failed: {e}: \"{program}\""),
            ),
            None => outcome(
                Status::Sent,
                "2.0.0",
                format!("delivered to command: {program}"),
            ),
        },
        Ended::Exited(code) => {
            if let Some((dsn, text)) = leading_dsn(&said) {
                let status = match dsn.starts_with('4') {
                    true => Status::Deferred,
                    false => Status::Bounced,
                };
                return outcome(status, dsn, text.to_string());
            }
            match sysexit(code) {
                Some((dsn, text)) => {
                    let status = match dsn.starts_with('4') {
                        true => Status::Deferred,
                        false => Status::Bounced,
                    };
                    outcome(status, dsn, with_output(text.to_string()))
                }
                None => outcome(
                    Status::Bounced,
                    "5.3.0",
                    with_output(format!("Command died with status {code}: \"{program}\"")),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ran(ended: Ended, output: &str) -> Ran {
        Ran {
            ended,
            output: output.as_bytes().to_vec(),
            write_error: None,
        }
    }

    fn verdict(ended: Ended, output: &str) -> (Status, String, String) {
        let o = judge(&ran(ended, output), "/bin/lda");
        (o.status, o.dsn, o.detail)
    }

    #[test]
    fn exit_statuses_map_as_postfix_pipe_maps_them() {
        use Status::*;
        for (code, status, dsn) in [
            (0, Sent, "2.0.0"),
            (75, Deferred, "4.3.0"),
            (71, Deferred, "4.3.0"),
            (67, Bounced, "5.1.1"),
            (68, Bounced, "5.1.2"),
            (69, Bounced, "5.3.0"),
            (65, Bounced, "5.6.0"),
            (77, Bounced, "5.7.0"),
            (64, Bounced, "5.3.0"),
            (70, Bounced, "5.3.0"),
            (73, Bounced, "5.2.0"),
            (78, Bounced, "5.3.5"),
            (1, Bounced, "5.3.0"),
            (2, Bounced, "5.3.0"),
        ] {
            let (s, d, _) = verdict(Ended::Exited(code), "");
            assert_eq!((s, d.as_str()), (status, dsn), "exit {code}");
        }
        assert_eq!(verdict(Ended::Signaled(9), "").0, Deferred);
        let (s, d, detail) = verdict(Ended::TimedOut, "");
        assert_eq!((s, d.as_str()), (Deferred, "4.3.0"));
        assert_eq!(detail, "Command time limit exceeded: \"/bin/lda\"");
        let (_, _, detail) = verdict(Ended::Exited(1), "");
        assert_eq!(detail, "Command died with status 1: \"/bin/lda\"");
        let (_, _, detail) = verdict(
            Ended::Exited(67),
            "no such user alice\nmore\n\nthird\nfourth",
        );
        assert_eq!(
            detail,
            "user unknown. Command output: no such user alice; more; third"
        );
    }

    #[test]
    fn an_enhanced_status_code_in_the_output_wins() {
        let (s, d, detail) = verdict(Ended::Exited(1), "4.2.2 mailbox full\n");
        assert_eq!(
            (s, d.as_str(), detail.as_str()),
            (Status::Deferred, "4.2.2", "mailbox full")
        );
        let (s, d, _) = verdict(Ended::Exited(75), "5.1.1 no such user");
        assert_eq!((s, d.as_str()), (Status::Bounced, "5.1.1"));
        // Not a code: the status decides.
        let (s, d, _) = verdict(Ended::Exited(75), "4.2 too short");
        assert_eq!((s, d.as_str()), (Status::Deferred, "4.3.0"));
        assert_eq!(leading_dsn("5.7.1"), Some(("5.7.1", "")));
        assert_eq!(leading_dsn("3.1.1 x"), None);
        assert_eq!(leading_dsn("4.1234.1 x"), None);
        assert_eq!(leading_dsn("4.1.1.1 x"), None);
    }

    #[test]
    fn a_write_error_defers_a_success_and_output_is_bounded() {
        let mut r = ran(Ended::Exited(0), "");
        r.write_error = Some(io::Error::other("disk on fire"));
        assert_eq!(judge(&r, "/x").status, Status::Deferred);
        let long = "x".repeat(2000);
        assert_eq!(summary(long.as_bytes()).chars().count(), 503);
        assert_eq!(summary(b"a\x07b\r\n"), "a?b");
    }

    #[test]
    fn line_ends_become_lf() {
        assert_eq!(to_lf(&[b"a\r\nb\r", b"\nc\rd\n"]), b"a\nb\nc\rd\n");
    }

    #[test]
    fn commands_run_with_input_output_status_and_timeout() {
        let sh = |script: &str| {
            let mut c = Command::new("/bin/sh");
            c.args(["-c", script]).process_group(0);
            c
        };
        let r = run(
            sh("cat; echo done >&2; exit 75"),
            b"in\n".to_vec(),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(r.ended, Ended::Exited(75));
        assert_eq!(r.output, b"in\ndone\n");
        let r = run(sh("exit 0"), vec![b'x'; 1 << 20], Duration::from_secs(10)).unwrap();
        assert_eq!(r.ended, Ended::Exited(0));
        assert!(r.write_error.is_none());
        let started = Instant::now();
        let r = run(
            sh("sleep 30 & sleep 30"),
            Vec::new(),
            Duration::from_millis(200),
        )
        .unwrap();
        assert_eq!(r.ended, Ended::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(10));
        let r = run(sh("kill -9 $$"), Vec::new(), Duration::from_secs(10)).unwrap();
        assert_eq!(r.ended, Ended::Signaled(9));
    }
}
