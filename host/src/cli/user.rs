//! `postern user`: manages Postern's password file — what `saslpasswd2`
//! and `sasldblistusers2` are to a Cyrus set-up. The running daemon picks
//! up every change on the next AUTH; nothing needs a restart.

use std::io::{self, BufRead as _, IsTerminal as _, Write as _};
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Subcommand;

use crate::sasl::mechanism::Password;
use crate::sasl::passwd::file::{self, Edit, Record, Table};

/// `postern user ...` subcommands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user (the password is asked twice, or read from stdin).
    Add(PasswordArgs),
    /// Change a user's password.
    Passwd(PasswordArgs),
    /// Delete a user.
    Del {
        /// The user, as local@domain.
        user: String,
    },
    /// List the users and the credentials stored for each.
    List,
}

/// Arguments of `add` and `passwd`.
#[derive(Debug, clap::Args)]
pub struct PasswordArgs {
    /// The user, as local@domain (stored lower-cased).
    pub user: String,
    /// Read the password from the first line of stdin instead of asking.
    #[arg(long)]
    pub password_stdin: bool,
    /// Also store the secret CRAM-MD5 needs. It is password-equivalent
    /// and readable by whoever can read the file: only for clients that
    /// cannot use SCRAM-SHA-256 or PLAIN over TLS.
    #[arg(long)]
    pub cram_md5: bool,
}

/// Runs a `postern user` subcommand on the password file at `passwd_path`.
pub fn run(cmd: UserCommand, passwd_path: &Path) -> anyhow::Result<ExitCode> {
    match cmd {
        UserCommand::Add(args) => {
            let user = file::normalize_user(&args.user)?;
            if current(passwd_path)?.get(&user).is_some() {
                bail!("user {user} already exists (use `postern user passwd`)");
            }
            let record = new_record(&user, &args)?;
            file::edit(passwd_path, Edit::Add(record))?;
            println!("{user}: added");
        }
        UserCommand::Passwd(args) => {
            let user = file::normalize_user(&args.user)?;
            let had_cram = match current(passwd_path)?.get(&user) {
                Some(r) => r.cram_md5.is_some(),
                None => bail!("no such user: {user} (use `postern user add`)"),
            };
            let record = new_record(&user, &args)?;
            file::edit(passwd_path, Edit::Replace(record))?;
            println!("{user}: password changed");
            if had_cram && !args.cram_md5 {
                // The old secret was the old password: keeping it would be wrong.
                eprintln!("postern: {user}: CRAM-MD5 secret removed (add --cram-md5 to store one)");
            }
        }
        UserCommand::Del { user } => {
            let user = file::normalize_user(&user)?;
            file::edit(passwd_path, Edit::Delete(user.clone()))?;
            println!("{user}: deleted");
        }
        UserCommand::List => {
            for r in current(passwd_path)?.records() {
                println!("{} {}", r.user, r.schemes().join(" "));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The file as it is now (no file: no users); bad lines are reported and
/// skipped, as the daemon does.
fn current(path: &Path) -> anyhow::Result<Table> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Table::default()),
        Err(e) => return Err(e).with_context(|| path.display().to_string()),
    };
    let (table, errors) = Table::parse(&text);
    for (line, reason) in errors {
        eprintln!(
            "postern: {}:{line}: {reason}; record ignored",
            path.display()
        );
    }
    Ok(table)
}

fn new_record(user: &str, args: &PasswordArgs) -> anyhow::Result<Record> {
    let password = read_password(args.password_stdin)?;
    if args.cram_md5 {
        eprintln!(
            "postern: note: the CRAM-MD5 secret is password-equivalent; \
             anyone who can read the password file can use it"
        );
    }
    Ok(Record::new(user, password.expose(), args.cram_md5)?)
}

fn read_password(from_stdin: bool) -> anyhow::Result<Password> {
    let password = if from_stdin {
        let mut line = String::new();
        io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        strip_newline(line)
    } else if io::stdin().is_terminal() {
        let first = prompt("Password: ")?;
        let second = prompt("Retype password: ")?;
        if first.expose() != second.expose() {
            bail!("the passwords do not match");
        }
        first
    } else {
        bail!("stdin is not a terminal: pass the password with --password-stdin");
    };
    if password.expose().is_empty() {
        bail!("empty password refused");
    }
    if password.expose().contains(&0) {
        // PLAIN separates fields with NUL: such a password could never log in.
        bail!("a password may not contain a NUL character");
    }
    Ok(password)
}

fn strip_newline(line: String) -> Password {
    let mut bytes = line.into_bytes();
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    Password::new(bytes)
}

/// Asks on the terminal with echo off; echo comes back even on error.
fn prompt(message: &str) -> anyhow::Result<Password> {
    let mut stderr = io::stderr();
    write!(stderr, "{message}")?;
    stderr.flush()?;
    let stdin = io::stdin();
    let fd = stdin.as_fd();
    let echoed = set_echo(fd, false).context("turning off terminal echo")?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let restored = set_echo(fd, echoed);
    writeln!(stderr)?;
    read.context("reading the password")?;
    restored.context("restoring terminal echo")?;
    Ok(strip_newline(line))
}

/// Sets the terminal's ECHO flag on `fd`; returns whether it was set.
#[allow(unsafe_code)]
fn set_echo(fd: BorrowedFd<'_>, on: bool) -> io::Result<bool> {
    // SAFETY: `termios` is plain data, so all-zero is a valid value;
    // tcgetattr writes into it and tcsetattr reads it, both on a file
    // descriptor that `fd` keeps open for the duration of the calls.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd.as_raw_fd(), &mut t) != 0 {
            return Err(io::Error::last_os_error());
        }
        let was = t.c_lflag & libc::ECHO != 0;
        if on {
            t.c_lflag |= libc::ECHO;
        } else {
            t.c_lflag &= !libc::ECHO;
        }
        if libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &t) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(was)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newline_is_stripped_and_nothing_else() {
        assert_eq!(strip_newline("pw\n".into()).expose(), b"pw");
        assert_eq!(strip_newline("pw\r\n".into()).expose(), b"pw");
        assert_eq!(strip_newline(" pw ".into()).expose(), b" pw ");
        assert_eq!(strip_newline("pw".into()).expose(), b"pw");
    }

    #[test]
    fn commands_edit_the_file() {
        let dir = crate::sasl::mechanism::client::TempDir::new("cli-user");
        let path = dir.path().join("passwd");
        assert!(current(&path).expect("empty").is_empty());
        run(UserCommand::List, &path).expect("list");
        assert!(
            run(
                UserCommand::Del {
                    user: "a@x.test".into()
                },
                &path
            )
            .is_err()
        );
        // add/passwd read the password from a terminal or stdin, which a
        // test cannot provide; the file side is what they share with del.
        file::edit(
            &path,
            Edit::Add(Record::new("a@x.test", b"pw", false).expect("record")),
        )
        .expect("add");
        run(
            UserCommand::Del {
                user: "A@x.test".into(),
            },
            &path,
        )
        .expect("del");
        assert!(current(&path).expect("table").is_empty());
    }
}
