//! Postern's own password file as a SASL backend: SCRAM-SHA-256, PLAIN,
//! LOGIN and, for users who have a stored secret, CRAM-MD5.
//!
//! The file (format in [`file`]) is checked on every [`PasswdBackend::start`]:
//! when its inode, size, mtime or ctime changed it is read again, so a
//! `postern user passwd` takes effect on the next AUTH, without a restart
//! or a reload. A record that fails to parse at that point locks out its
//! user only (and is logged); at [`PasswdBackend::open`] any bad line is an
//! error, so `postern check` and start-up report it.
//!
//! An unknown user costs what a wrong password costs: PLAIN and LOGIN
//! verify against a dummy argon2 hash, SCRAM runs to the proof with
//! dummy keys that are stable per name, CRAM-MD5 computes a MAC. Both end
//! in the same [`Exchange::Failure`]; only the log reason differs.
//!
//! argon2 is slow and memory-hard by design, so verification runs on
//! tokio's blocking pool, and at most one verification per CPU runs at a
//! time: that bounds the memory a flood of AUTH PLAIN can take.

pub mod file;

use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use argon2::PasswordVerifier as _;
use argon2::password_hash::PasswordHash;
use tokio::sync::Semaphore;

use crate::durable::stamp::Stamp;

use self::file::{PasswdError, Record, Table};
use super::mechanism::cram_md5::{self, CramMd5};
use super::mechanism::login::Login;
use super::mechanism::plain::Plain;
use super::mechanism::scram::{ScramKeys, ScramSha256};
use super::mechanism::{Output, Password, printable, random_token};
use super::{AuthContext, AuthError, Exchange};

/// Mechanisms offered when the configuration names none, in the order
/// they are advertised.
pub const DEFAULT_MECHANISMS: [&str; 4] = ["SCRAM-SHA-256", "PLAIN", "LOGIN", "CRAM-MD5"];

/// The mechanisms this backend implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mech {
    ScramSha256,
    Plain,
    Login,
    CramMd5,
}

impl Mech {
    fn from_name(name: &str) -> Option<Mech> {
        match name.to_ascii_uppercase().as_str() {
            "SCRAM-SHA-256" => Some(Mech::ScramSha256),
            "PLAIN" => Some(Mech::Plain),
            "LOGIN" => Some(Mech::Login),
            "CRAM-MD5" => Some(Mech::CramMd5),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mech::ScramSha256 => "SCRAM-SHA-256",
            Mech::Plain => "PLAIN",
            Mech::Login => "LOGIN",
            Mech::CramMd5 => "CRAM-MD5",
        }
    }
}

#[derive(Debug)]
struct Cache {
    stamp: Option<Stamp>,
    table: Arc<Table>,
}

/// State shared by the backend and its sessions.
struct Shared {
    /// Verified instead of a real hash when the user is unknown.
    dummy_argon2: String,
    /// Keys the dummy SCRAM verifiers of unknown users.
    dummy_secret: [u8; 32],
    /// One argon2 verification per CPU at a time.
    cpu: Arc<Semaphore>,
}

/// Postern's password file as a credential backend.
pub struct PasswdBackend {
    path: PathBuf,
    mechanisms: Vec<Mech>,
    hostname: String,
    cache: Mutex<Cache>,
    shared: Arc<Shared>,
}

impl fmt::Debug for PasswdBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswdBackend")
            .field("path", &self.path)
            .field("mechanisms", &self.mechanisms)
            .finish_non_exhaustive()
    }
}

impl PasswdBackend {
    /// Opens the password file at `path`, offering `mechanisms` (in that
    /// order; default [`DEFAULT_MECHANISMS`]). Fails if the file is
    /// missing or has a bad line, or a mechanism is unknown. Computes one
    /// argon2 hash (the dummy for unknown users), so it takes a moment.
    pub fn open(
        path: impl Into<PathBuf>,
        mechanisms: Option<Vec<String>>,
    ) -> Result<PasswdBackend, PasswdError> {
        let path = path.into();
        let mechanisms = match mechanisms {
            None => DEFAULT_MECHANISMS
                .iter()
                .filter_map(|m| Mech::from_name(m))
                .collect(),
            Some(names) => {
                let mut out = Vec::new();
                for n in names {
                    let m = Mech::from_name(&n).ok_or(PasswdError::UnsupportedMechanism(n))?;
                    if !out.contains(&m) {
                        out.push(m);
                    }
                }
                out
            }
        };
        let file = std::fs::File::open(&path).map_err(|source| PasswdError::Io {
            path: path.clone(),
            source,
        })?;
        let meta = file.metadata().map_err(|source| PasswdError::Io {
            path: path.clone(),
            source,
        })?;
        if meta.mode() & 0o007 != 0 {
            tracing::warn!(
                "{}: password file is accessible to everyone (mode {:o}); chmod 640 it (group: server.user's)",
                path.display(),
                meta.mode() & 0o777
            );
        }
        let table = file::load_strict(&path)?;
        let mut dummy_secret = [0u8; 32];
        getrandom::fill(&mut dummy_secret).map_err(|e| PasswdError::Hash(e.to_string()))?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(PasswdBackend {
            path,
            mechanisms,
            hostname: system_hostname(),
            cache: Mutex::new(Cache {
                stamp: Some(Stamp::of(&meta)),
                table: Arc::new(table),
            }),
            shared: Arc::new(Shared {
                dummy_argon2: file::hash_password(b"postern dummy password")?,
                dummy_secret,
                cpu: Arc::new(Semaphore::new(cpus)),
            }),
        })
    }

    /// Sets the host name CRAM-MD5 challenges carry (default: the
    /// system's host name); pass `server.hostname`.
    pub fn with_hostname(mut self, hostname: &str) -> PasswdBackend {
        hostname.clone_into(&mut self.hostname);
        self
    }

    /// The path of the password file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The mechanisms offered, in the order to advertise them.
    pub fn mechanisms(&self) -> Vec<String> {
        self.mechanisms
            .iter()
            .map(|m| m.name().to_owned())
            .collect()
    }

    /// Whether `user` has a record in the file (read again if it
    /// changed); `None` when the file cannot be read just now.
    pub fn knows(&self, user: &str) -> Option<bool> {
        self.table().ok().map(|t| t.get(user).is_some())
    }

    /// Starts an exchange, first picking up any change to the file.
    pub fn start(&self, mechanism: &str, _ctx: &AuthContext) -> Result<PasswdSession, AuthError> {
        let mech = Mech::from_name(mechanism)
            .filter(|m| self.mechanisms.contains(m))
            .ok_or_else(|| AuthError::UnsupportedMechanism(mechanism.to_owned()))?;
        let table = self.table()?;
        let random = |e: getrandom::Error| AuthError::Temporary(format!("no randomness: {e}"));
        let state = match mech {
            Mech::Plain => Local::Plain(Plain::new()),
            Mech::Login => Local::Login(Login::new()),
            Mech::CramMd5 => Local::CramMd5(CramMd5::new(
                cram_md5::challenge(&self.hostname).map_err(random)?,
            )),
            Mech::ScramSha256 => Local::Scram(ScramSha256::new(random_token(18).map_err(random)?)),
        };
        Ok(PasswdSession {
            table,
            shared: self.shared.clone(),
            state,
            dummy_reason: None,
        })
    }

    /// The current table, re-read if the file changed since last time.
    fn table(&self) -> Result<Arc<Table>, AuthError> {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if cache.stamp.take().is_some() {
                    tracing::warn!("{}: password file removed: no users", self.path.display());
                    cache.table = Arc::new(Table::default());
                }
                return Ok(cache.table.clone());
            }
            Err(e) => return Err(self.temporary(&e)),
        };
        let meta = file.metadata().map_err(|e| self.temporary(&e))?;
        let stamp = Stamp::of(&meta);
        if cache.stamp != Some(stamp) {
            let text = io::read_to_string(file).map_err(|e| self.temporary(&e))?;
            let (table, errors) = Table::parse(&text);
            for (line, reason) in errors {
                tracing::warn!("{}:{line}: {reason}; record ignored", self.path.display());
            }
            tracing::info!(
                "{}: password file reloaded, {} user(s)",
                self.path.display(),
                table.len()
            );
            cache.stamp = Some(stamp);
            cache.table = Arc::new(table);
        }
        Ok(cache.table.clone())
    }

    fn temporary(&self, e: &io::Error) -> AuthError {
        AuthError::Temporary(format!("{}: {e}", self.path.display()))
    }
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

enum Local {
    Plain(Plain),
    Login(Login),
    CramMd5(CramMd5),
    Scram(ScramSha256),
}

/// An exchange against the password file, on the table as it was when
/// the exchange started.
pub struct PasswdSession {
    table: Arc<Table>,
    shared: Arc<Shared>,
    state: Local,
    /// Set when the mechanism runs on dummy credentials.
    dummy_reason: Option<String>,
}

impl PasswdSession {
    /// Feeds the client's response (see [`super::Session::step`]).
    pub async fn step(&mut self, response: Option<&[u8]>) -> Result<Exchange, AuthError> {
        let out = match &mut self.state {
            Local::Plain(m) => m.step(response),
            Local::Login(m) => m.step(response),
            Local::CramMd5(m) => m.step(response),
            Local::Scram(m) => m.step(response),
        };
        match out {
            Output::Challenge(c) => Ok(Exchange::Challenge(c)),
            Output::CheckPassword { user, password } => self.check_password(&user, password).await,
            Output::NeedCredentials { user } => Ok(self.credentials(&user)),
            Output::Success(user) => Ok(Exchange::Success(user)),
            Output::Failure(reason) => Ok(Exchange::Failure(self.reason(reason))),
        }
    }

    /// The mechanism saw dummy credentials and says "wrong password";
    /// the log should say what really happened.
    fn reason(&self, reason: String) -> String {
        self.dummy_reason.clone().unwrap_or(reason)
    }

    fn credentials(&mut self, user: &str) -> Exchange {
        let record = self.table.get(user);
        let identity = record.map_or_else(|| user.to_lowercase(), |r| r.user.clone());
        if record.is_none() {
            self.dummy_reason = Some(format!("unknown user {}", printable(user)));
        }
        let out = match &mut self.state {
            Local::CramMd5(m) => {
                let secret = record.and_then(|r| r.cram_md5.as_ref());
                m.credentials(&identity, secret.map(|s| s.expose()))
            }
            Local::Scram(m) => match record.and_then(|r| r.scram_sha256.as_ref()) {
                Some(keys) => m.credentials(&identity, keys),
                None => {
                    if record.is_some() {
                        self.dummy_reason = Some(format!("no SCRAM-SHA-256 keys for {identity}"));
                    }
                    m.credentials(
                        &identity,
                        &ScramKeys::dummy(&identity, &self.shared.dummy_secret),
                    )
                }
            },
            Local::Plain(_) | Local::Login(_) => {
                Output::Failure("mechanism asked for credentials out of turn".into())
            }
        };
        match out {
            Output::Challenge(c) => Exchange::Challenge(c),
            Output::Success(user) => Exchange::Success(user),
            Output::Failure(reason) => Exchange::Failure(self.reason(reason)),
            Output::CheckPassword { .. } | Output::NeedCredentials { .. } => {
                Exchange::Failure("mechanism out of sequence".into())
            }
        }
    }

    async fn check_password(
        &mut self,
        user: &str,
        password: Password,
    ) -> Result<Exchange, AuthError> {
        let record: Option<Record> = self.table.get(user).cloned();
        let phc = record.as_ref().and_then(|r| r.argon2.clone());
        let shared = self.shared.clone();
        let permit = shared
            .cpu
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| AuthError::Temporary("verifier closed".into()))?;
        let real = phc.is_some();
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let phc = phc.as_deref().unwrap_or(&shared.dummy_argon2);
            verify_argon2(phc, password.expose())
        })
        .await
        .map_err(|e| AuthError::Temporary(format!("password verification failed: {e}")))?;
        Ok(match record {
            Some(r) if real && ok => Exchange::Success(r.user),
            Some(r) if real => Exchange::Failure(format!("wrong password for {}", r.user)),
            Some(r) => Exchange::Failure(format!("no password hash for {}", r.user)),
            None => Exchange::Failure(format!("unknown user {}", printable(user))),
        })
    }
}

fn verify_argon2(phc: &str, password: &[u8]) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => argon2::Argon2::default()
            .verify_password(password, &hash)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sasl::mechanism::client;

    use client::ctx;

    fn setup(name: &str) -> (client::TempDir, PathBuf, PasswdBackend) {
        let dir = client::TempDir::new(&format!("passwd-backend-{name}"));
        let path = dir.path().join("passwd");
        let alice = Record::new("alice@example.test", b"alice-secret", false).expect("record");
        let bob = Record::new("bob@example.test", b"bob-secret", true).expect("record");
        file::edit(&path, file::Edit::Add(alice)).expect("add");
        file::edit(&path, file::Edit::Add(bob)).expect("add");
        let backend = PasswdBackend::open(&path, None)
            .expect("open")
            .with_hostname("mx.test");
        (dir, path, backend)
    }

    async fn run(
        backend: &PasswdBackend,
        mech: &str,
        responses: &[Option<&[u8]>],
    ) -> Vec<Exchange> {
        let mut session = backend.start(mech, &ctx()).expect("start");
        let mut out = Vec::new();
        for r in responses {
            out.push(session.step(*r).await.expect("step"));
        }
        out
    }

    #[tokio::test]
    async fn plain_and_login() {
        let (_dir, _path, b) = setup("plain");
        assert_eq!(
            b.mechanisms(),
            ["SCRAM-SHA-256", "PLAIN", "LOGIN", "CRAM-MD5"]
        );
        let out = run(&b, "PLAIN", &[Some(b"\0Alice@Example.test\0alice-secret")]).await;
        assert_eq!(out, [Exchange::Success("alice@example.test".into())]);
        let out = run(&b, "PLAIN", &[Some(b"\0alice@example.test\0wrong")]).await;
        assert!(matches!(&out[0], Exchange::Failure(r) if r.contains("wrong password")));
        let out = run(&b, "PLAIN", &[Some(b"\0nobody@example.test\0alice-secret")]).await;
        assert!(matches!(&out[0], Exchange::Failure(r) if r.contains("unknown user")));
        let out = run(
            &b,
            "LOGIN",
            &[None, Some(b"bob@example.test"), Some(b"bob-secret")],
        )
        .await;
        assert_eq!(out[0], Exchange::Challenge(b"Username:".to_vec()));
        assert_eq!(out[1], Exchange::Challenge(b"Password:".to_vec()));
        assert_eq!(out[2], Exchange::Success("bob@example.test".into()));
        assert!(matches!(
            b.start("DIGEST-MD5", &ctx()),
            Err(AuthError::UnsupportedMechanism(_))
        ));
    }

    #[test]
    fn a_deleted_user_is_known_no_more() {
        let (_dir, path, b) = setup("knows");
        assert_eq!(b.knows("Alice@example.test"), Some(true));
        assert_eq!(b.knows("carol@example.test"), Some(false));
        file::edit(&path, file::Edit::Delete("alice@example.test".into())).expect("delete");
        assert_eq!(b.knows("alice@example.test"), Some(false));
        assert_eq!(b.knows("bob@example.test"), Some(true));
    }

    #[tokio::test]
    async fn cram_md5_only_with_a_stored_secret() {
        let (_dir, _path, b) = setup("cram");
        for (user, secret, ok) in [
            ("bob@example.test", "bob-secret", true),
            ("bob@example.test", "wrong", false),
            ("alice@example.test", "alice-secret", false),
            ("nobody@example.test", "x", false),
        ] {
            let mut s = b.start("CRAM-MD5", &ctx()).expect("start");
            let Exchange::Challenge(challenge) = s.step(None).await.expect("step") else {
                panic!("no challenge");
            };
            assert!(challenge.ends_with(b"@mx.test>"));
            let response = client::cram_md5(user, secret, &challenge);
            let out = s.step(Some(&response)).await.expect("step");
            assert_eq!(matches!(out, Exchange::Success(_)), ok, "{user} {out:?}");
        }
    }

    /// Plays a SCRAM-SHA-256 client, checking the server's proof.
    async fn scram_login(b: &PasswdBackend, user: &str, password: &str) -> Exchange {
        let mut s = b.start("SCRAM-SHA-256", &ctx()).expect("start");
        let (mut client, first) = client::Scram::new(user, password, "clientnonce");
        let Exchange::Challenge(server_first) = s.step(Some(&first)).await.expect("step") else {
            panic!("no server-first");
        };
        let client_final = client.client_final(&server_first);
        match s.step(Some(&client_final)).await.expect("step") {
            Exchange::Challenge(server_final) => {
                assert!(client.server_final_ok(&server_final));
                s.step(Some(b"")).await.expect("step")
            }
            other => other,
        }
    }

    #[tokio::test]
    async fn scram_sha256() {
        let (_dir, _path, b) = setup("scram");
        assert_eq!(
            scram_login(&b, "alice@example.test", "alice-secret").await,
            Exchange::Success("alice@example.test".into())
        );
        let out = scram_login(&b, "alice@example.test", "nope").await;
        assert!(
            matches!(&out, Exchange::Failure(r) if r.contains("wrong password")),
            "{out:?}"
        );
        let out = scram_login(&b, "nobody@example.test", "nope").await;
        assert!(
            matches!(&out, Exchange::Failure(r) if r.contains("unknown user")),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn unknown_users_get_a_stable_salt() {
        let (_dir, _path, b) = setup("salt");
        let mut first = Vec::new();
        for _ in 0..2 {
            let mut s = b.start("SCRAM-SHA-256", &ctx()).expect("start");
            let Exchange::Challenge(c) = s
                .step(Some(b"n,,n=ghost@example.test,r=abc"))
                .await
                .expect("step")
            else {
                panic!("no challenge");
            };
            let c = String::from_utf8(c).expect("utf8");
            first.push(c.split(',').nth(1).expect("salt").to_owned());
        }
        assert_eq!(first[0], first[1]);
    }

    #[tokio::test]
    async fn changes_apply_without_restart() {
        let (_dir, path, b) = setup("reload");
        let new = Record::new("alice@example.test", b"changed", false).expect("record");
        file::edit(&path, file::Edit::Replace(new)).expect("replace");
        let out = run(&b, "PLAIN", &[Some(b"\0alice@example.test\0changed")]).await;
        assert_eq!(out, [Exchange::Success("alice@example.test".into())]);
        let out = run(&b, "PLAIN", &[Some(b"\0alice@example.test\0alice-secret")]).await;
        assert!(matches!(out[0], Exchange::Failure(_)));

        file::edit(&path, file::Edit::Delete("alice@example.test".into())).expect("del");
        let out = run(&b, "PLAIN", &[Some(b"\0alice@example.test\0changed")]).await;
        assert!(matches!(&out[0], Exchange::Failure(r) if r.contains("unknown user")));

        std::fs::remove_file(&path).expect("rm");
        let out = run(&b, "PLAIN", &[Some(b"\0bob@example.test\0bob-secret")]).await;
        assert!(matches!(out[0], Exchange::Failure(_)));
    }

    #[test]
    fn configured_mechanisms() {
        let (_dir, path, _b) = setup("mechs");
        let b = PasswdBackend::open(&path, Some(vec!["plain".into(), "SCRAM-SHA-256".into()]))
            .expect("open");
        assert_eq!(b.mechanisms(), ["PLAIN", "SCRAM-SHA-256"]);
        assert!(matches!(
            b.start("LOGIN", &ctx()),
            Err(AuthError::UnsupportedMechanism(_))
        ));
        assert!(matches!(
            PasswdBackend::open(&path, Some(vec!["GSSAPI".into()])),
            Err(PasswdError::UnsupportedMechanism(_))
        ));
        assert!(PasswdBackend::open(path.with_file_name("missing"), None).is_err());
    }
}
