//! How a command's end is judged (Postfix's pipe(8) and `sys_exits.c`).

use super::run::{Ended, Ran};
use crate::deliver::agent::{Outcome, Status};

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
        handoff: Default::default(),
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
    use std::io;

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
}
