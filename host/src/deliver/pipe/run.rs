//! Running a command with a message on its standard input, its output
//! kept and its time bounded.

use std::io::{self, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Command output kept for the log and the bounce (Postfix keeps 2000
/// bytes too).
const OUTPUT_KEPT: usize = 2000;

/// How long the output is awaited once the command has ended (a daemon
/// it started may hold the pipe open).
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

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
pub(super) fn run(mut cmd: Command, input: Vec<u8>, timeout: Duration) -> io::Result<Ran> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

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
