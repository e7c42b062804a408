//! saslauthd as a backend: our PLAIN and LOGIN state machines take the
//! credentials apart, saslauthd checks the password (PAM, shadow, LDAP,
//! ...) over its unix socket.
//!
//! The protocol (Cyrus SASL `saslauthd/ipc_unix.c`): one connection per
//! request; the client sends four counted strings — login, password,
//! service, realm — each a 2-byte big-endian length and the bytes; the
//! server answers one counted string starting with `OK` or `NO` and
//! closes. saslauthd only verifies plaintext passwords, hence PLAIN and
//! LOGIN only.
//!
//! A name `user@realm` is sent as login `user` and realm `realm`, as
//! Cyrus SASL does, so a saslauthd set up for Postfix or Cyrus works
//! unchanged (`saslauthd -r` joins them again for backends that want the
//! whole address); a name without `@` goes with the configured realm.
//!
//! The identity is the account asked about, realm included: `user@realm`
//! (the configured realm for a name without one), or `user` when there is
//! no realm at all. `alice@a.test` and `alice@b.test` are two identities
//! even when saslauthd ignores the realm (PAM or shadow without `-r`),
//! where both log in with the unix account's password: each then owns
//! only its own address, never the other's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;

use super::mechanism::login::Login;
use super::mechanism::plain::Plain;
use super::mechanism::{Output, Password, printable};
use super::{AuthContext, AuthError, ConfigError, Exchange};

/// Default socket of Debian's saslauthd (`-m /var/run/saslauthd`).
pub const DEFAULT_SOCKET: &str = "/var/run/saslauthd/mux";
/// How long one request may take before AUTH answers `454`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// saslauthd drops requests with a longer field (`MAX_REQ_LEN`).
const MAX_FIELD: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mech {
    Plain,
    Login,
}

impl Mech {
    fn from_name(name: &str) -> Option<Mech> {
        match name.to_ascii_uppercase().as_str() {
            "PLAIN" => Some(Mech::Plain),
            "LOGIN" => Some(Mech::Login),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mech::Plain => "PLAIN",
            Mech::Login => "LOGIN",
        }
    }
}

#[derive(Debug)]
struct Settings {
    socket: PathBuf,
    service: String,
    realm: String,
    timeout: Duration,
}

/// A running saslauthd as a credential backend.
#[derive(Debug)]
pub struct SaslauthdBackend {
    settings: Arc<Settings>,
    mechanisms: Vec<Mech>,
}

impl SaslauthdBackend {
    /// A backend asking the saslauthd listening on `socket` (its `mux`
    /// file), passing `service` with each request, and `realm` (empty if
    /// `None`) for user names without `@`. `mechanisms` defaults to PLAIN and LOGIN; anything else is
    /// refused.
    pub fn new(
        socket: impl Into<PathBuf>,
        service: &str,
        realm: Option<String>,
        mechanisms: Option<Vec<String>>,
    ) -> Result<SaslauthdBackend, ConfigError> {
        let mechanisms = match mechanisms {
            None => vec![Mech::Plain, Mech::Login],
            Some(names) => {
                let mut out = Vec::new();
                for n in names {
                    let m = Mech::from_name(&n).ok_or_else(|| {
                        ConfigError(format!(
                            "mechanism {n} is not available with saslauthd (PLAIN, LOGIN)"
                        ))
                    })?;
                    if !out.contains(&m) {
                        out.push(m);
                    }
                }
                out
            }
        };
        Ok(SaslauthdBackend {
            settings: Arc::new(Settings {
                socket: socket.into(),
                service: service.to_owned(),
                realm: realm.unwrap_or_default(),
                timeout: DEFAULT_TIMEOUT,
            }),
            mechanisms,
        })
    }

    /// Changes the per-request timeout (default [`DEFAULT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> SaslauthdBackend {
        let s = &self.settings;
        self.settings = Arc::new(Settings {
            socket: s.socket.clone(),
            service: s.service.clone(),
            realm: s.realm.clone(),
            timeout,
        });
        self
    }

    /// The mechanisms offered, in the order to advertise them.
    pub fn mechanisms(&self) -> Vec<String> {
        self.mechanisms
            .iter()
            .map(|m| m.name().to_owned())
            .collect()
    }

    /// Starts an exchange; saslauthd is only asked once the client has
    /// sent its password.
    pub fn start(
        &self,
        mechanism: &str,
        _ctx: &AuthContext,
    ) -> Result<SaslauthdSession, AuthError> {
        let state = match Mech::from_name(mechanism).filter(|m| self.mechanisms.contains(m)) {
            Some(Mech::Plain) => Local::Plain(Plain::new()),
            Some(Mech::Login) => Local::Login(Login::new()),
            None => return Err(AuthError::UnsupportedMechanism(mechanism.to_owned())),
        };
        Ok(SaslauthdSession {
            settings: self.settings.clone(),
            state,
        })
    }
}

#[derive(Debug)]
enum Local {
    Plain(Plain),
    Login(Login),
}

/// A PLAIN or LOGIN exchange whose password saslauthd checks.
#[derive(Debug)]
pub struct SaslauthdSession {
    settings: Arc<Settings>,
    state: Local,
}

impl SaslauthdSession {
    /// Feeds the client's response (see [`super::Session::step`]).
    pub async fn step(&mut self, response: Option<&[u8]>) -> Result<Exchange, AuthError> {
        let out = match &mut self.state {
            Local::Plain(m) => m.step(response),
            Local::Login(m) => m.step(response),
        };
        match out {
            Output::Challenge(c) => Ok(Exchange::Challenge(c)),
            Output::CheckPassword { user, password } => {
                check(&self.settings, &user, &password).await
            }
            Output::Success(user) => Ok(Exchange::Success(user)),
            Output::Failure(reason) => Ok(Exchange::Failure(reason)),
            Output::NeedCredentials { .. } => Ok(Exchange::Failure(
                "mechanism asked for stored credentials".into(),
            )),
        }
    }
}

/// Asks saslauthd; `OK` is success, `NO` failure, anything else (or no
/// answer in time) a temporary error.
async fn check(s: &Settings, user: &str, password: &Password) -> Result<Exchange, AuthError> {
    let (login, realm) = match user.rsplit_once('@') {
        Some((login, realm)) if !realm.is_empty() => (login, realm),
        // "alice@" is alice of the configured realm, as "alice" is.
        Some((login, _)) => (login, s.realm.as_str()),
        None => (user, s.realm.as_str()),
    };
    let fields = [
        login.as_bytes(),
        password.expose(),
        s.service.as_bytes(),
        realm.as_bytes(),
    ];
    if fields.iter().any(|f| f.len() > MAX_FIELD) {
        return Ok(Exchange::Failure(format!(
            "user name or password too long for saslauthd ({})",
            printable(user)
        )));
    }
    let mut buf = Vec::with_capacity(fields.iter().map(|f| f.len() + 2).sum());
    for f in fields {
        // Fits: MAX_FIELD < 65536.
        buf.extend_from_slice(&(f.len() as u16).to_be_bytes());
        buf.extend_from_slice(f);
    }
    // Wrapped so that this copy of the password is wiped when dropped.
    let request = Password::new(buf);
    let exchange = async {
        let mut stream = UnixStream::connect(&s.socket).await?;
        stream.write_all(request.expose()).await?;
        let len = stream.read_u16().await?;
        let mut reply = vec![0u8; usize::from(len)];
        stream.read_exact(&mut reply).await?;
        Ok::<_, std::io::Error>(reply)
    };
    let reply = match tokio::time::timeout(s.timeout, exchange).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => {
            return Err(AuthError::Temporary(format!(
                "saslauthd {}: {e}",
                s.socket.display()
            )));
        }
        Err(_) => {
            return Err(AuthError::Temporary(format!(
                "saslauthd {}: no answer within {:?}",
                s.socket.display(),
                s.timeout
            )));
        }
    };
    let text = printable(String::from_utf8_lossy(&reply).trim());
    if reply.starts_with(b"OK") {
        // The account saslauthd was asked about, never a part of it:
        // merging "alice@a.test" and "alice@b.test" into "alice" would let
        // one customer send as the other.
        let identity = if realm.is_empty() {
            login.to_owned()
        } else {
            format!("{login}@{realm}")
        };
        Ok(Exchange::Success(identity))
    } else if reply.starts_with(b"NO") {
        Ok(Exchange::Failure(format!(
            "saslauthd refused {}: {text}",
            printable(user)
        )))
    } else {
        Err(AuthError::Temporary(format!(
            "saslauthd {}: unexpected answer {text:?}",
            s.socket.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sasl::mechanism::client;
    use tokio::net::UnixListener;

    use client::ctx;

    fn socket_path(name: &str) -> (client::TempDir, PathBuf) {
        let dir = client::TempDir::new(&format!("saslauthd-{name}"));
        let path = dir.path().join("mux");
        (dir, path)
    }

    async fn read_field(s: &mut UnixStream) -> String {
        let len = s.read_u16().await.expect("len");
        let mut buf = vec![0u8; usize::from(len)];
        s.read_exact(&mut buf).await.expect("field");
        String::from_utf8(buf).expect("utf8")
    }

    /// A fake saslauthd: answers OK for alice/right in realm example.test
    /// (service smtp), NO otherwise; records each request's fields.
    fn fake(path: &std::path::Path) -> tokio::sync::mpsc::UnboundedReceiver<[String; 4]> {
        let listener = UnixListener::bind(path).expect("bind");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let f = [
                    read_field(&mut s).await,
                    read_field(&mut s).await,
                    read_field(&mut s).await,
                    read_field(&mut s).await,
                ];
                let ok =
                    f[0] == "alice" && f[1] == "right" && f[2] == "smtp" && f[3] == "example.test";
                let reply: &[u8] = if ok {
                    b"OK"
                } else {
                    b"NO authentication failed"
                };
                let mut out = (reply.len() as u16).to_be_bytes().to_vec();
                out.extend_from_slice(reply);
                s.write_all(&out).await.expect("write");
                let _ = tx.send(f);
            }
        });
        rx
    }

    #[tokio::test]
    async fn plain_and_login_against_a_fake_saslauthd() {
        let (_dir, path) = socket_path("fake");
        let mut requests = fake(&path);
        let b = SaslauthdBackend::new(&path, "smtp", Some("example.test".into()), None)
            .expect("backend");
        assert_eq!(b.mechanisms(), ["PLAIN", "LOGIN"]);

        let mut s = b.start("PLAIN", &ctx()).expect("start");
        let out = s
            .step(Some(b"\0alice@example.test\0right"))
            .await
            .expect("step");
        assert_eq!(out, Exchange::Success("alice@example.test".into()));
        let f = requests.recv().await.expect("request");
        assert_eq!(
            f,
            ["alice", "right", "smtp", "example.test"].map(String::from)
        );

        // No '@': the configured realm goes with the name.
        let mut s = b.start("LOGIN", &ctx()).expect("start");
        assert_eq!(
            s.step(None).await.expect("step"),
            Exchange::Challenge(b"Username:".to_vec())
        );
        let _ = s.step(Some(b"alice")).await.expect("step");
        let out = s.step(Some(b"right")).await.expect("step");
        assert_eq!(
            out,
            Exchange::Success("alice@example.test".into()),
            "the account of the configured realm"
        );
        let _ = requests.recv().await;

        let mut s = b.start("PLAIN", &ctx()).expect("start");
        let out = s
            .step(Some(b"\0alice@example.test\0wrong"))
            .await
            .expect("step");
        assert!(
            matches!(&out, Exchange::Failure(r) if r.contains("authentication failed") && !r.contains("wrong")),
            "{out:?}"
        );
        let _ = requests.recv().await;
        assert!(matches!(
            b.start("CRAM-MD5", &ctx()),
            Err(AuthError::UnsupportedMechanism(_))
        ));

        // A realm other than the configured one: the identity keeps it
        // (never "alice", which would merge the accounts of every realm).
        let other =
            SaslauthdBackend::new(&path, "smtp", Some("other.test".into()), None).expect("backend");
        let mut s = other.start("PLAIN", &ctx()).expect("start");
        let out = s
            .step(Some(b"\0alice@example.test\0right"))
            .await
            .expect("step");
        assert_eq!(out, Exchange::Success("alice@example.test".into()));
        let _ = requests.recv().await;
        // "alice@" is alice of the configured realm.
        let mut s = b.start("PLAIN", &ctx()).expect("start");
        let out = s.step(Some(b"\0alice@\0right")).await.expect("step");
        assert_eq!(out, Exchange::Success("alice@example.test".into()));
        let f = requests.recv().await.expect("request");
        assert_eq!(f[3], "example.test");
        // Without any realm the bare login stays bare.
        let bare = SaslauthdBackend::new(&path, "smtp", None, None).expect("backend");
        let mut s = bare.start("PLAIN", &ctx()).expect("start");
        let out = s.step(Some(b"\0alice\0right")).await.expect("step");
        assert!(matches!(out, Exchange::Failure(_)), "{out:?}");
        let f = requests.recv().await.expect("request");
        assert_eq!(f[3], "");
        assert!(
            SaslauthdBackend::new(&path, "smtp", None, Some(vec!["SCRAM-SHA-256".into()])).is_err()
        );
    }

    #[tokio::test]
    async fn silence_and_absence_are_temporary() {
        let (_dir, path) = socket_path("silent");
        let listener = UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let b = SaslauthdBackend::new(&path, "smtp", None, None)
            .expect("backend")
            .with_timeout(Duration::from_millis(200));
        let mut s = b.start("PLAIN", &ctx()).expect("start");
        let err = s.step(Some(b"\0a@b\0pw")).await.expect_err("timeout");
        assert!(
            matches!(err, AuthError::Temporary(ref m) if !m.contains("pw")),
            "{err}"
        );

        let b = SaslauthdBackend::new(path.with_file_name("nothing"), "smtp", None, None)
            .expect("backend");
        let mut s = b.start("PLAIN", &ctx()).expect("start");
        assert!(matches!(
            s.step(Some(b"\0a@b\0pw")).await,
            Err(AuthError::Temporary(_))
        ));
    }

    #[tokio::test]
    async fn garbage_answers_are_temporary() {
        let (_dir, path) = socket_path("garbage");
        let listener = UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                for _ in 0..4 {
                    let _ = read_field(&mut s).await;
                }
                let _ = s.write_all(b"\x00\x05HELLO").await;
            }
        });
        let b = SaslauthdBackend::new(&path, "smtp", None, None).expect("backend");
        let mut s = b.start("PLAIN", &ctx()).expect("start");
        assert!(matches!(
            s.step(Some(b"\0a@b\0pw")).await,
            Err(AuthError::Temporary(_))
        ));
    }

    /// Against a real saslauthd, run with `--ignored`. Set-up (Debian 12,
    /// root, no systemd needed):
    ///
    /// ```text
    /// apt-get install -y sasl2-bin
    /// echo -n alice-sasl | saslpasswd2 -p -c -u example.test alice   # into /etc/sasldb2
    /// mkdir -p /tmp/postern-saslauthd
    /// saslauthd -a sasldb -m /tmp/postern-saslauthd -n 1
    /// ```
    ///
    /// `POSTERN_SASLAUTHD=/path/to/mux,user@realm,password` points it
    /// elsewhere.
    #[tokio::test]
    #[ignore = "needs a running saslauthd"]
    async fn real_saslauthd() {
        let spec = std::env::var("POSTERN_SASLAUTHD")
            .unwrap_or_else(|_| "/tmp/postern-saslauthd/mux,alice@example.test,alice-sasl".into());
        let mut parts = spec.splitn(3, ',');
        let (Some(socket), Some(user), Some(password)) = (parts.next(), parts.next(), parts.next())
        else {
            panic!("POSTERN_SASLAUTHD=socket,user,password");
        };
        let b = SaslauthdBackend::new(socket, "smtp", None, None).expect("backend");
        let mut s = b.start("PLAIN", &ctx()).expect("start");
        let msg = format!("\0{user}\0{password}");
        assert_eq!(
            s.step(Some(msg.as_bytes())).await.expect("step"),
            Exchange::Success(user.to_owned())
        );
        let mut s = b.start("LOGIN", &ctx()).expect("start");
        let _ = s.step(Some(user.as_bytes())).await.expect("step");
        let out = s.step(Some(b"not-the-password")).await.expect("step");
        assert!(matches!(out, Exchange::Failure(_)), "{out:?}");
    }
}
