//! Dovecot's auth service as a backend: the SASL exchange is relayed to
//! Dovecot over its auth client protocol (version 1.x), so SMTP and IMAP
//! share one password store and every mechanism Dovecot offers.
//!
//! Protocol (Dovecot's `auth-protocol` document): both sides send a
//! handshake — we send `VERSION 1 2` and `CPID`, Dovecot sends `VERSION`,
//! `MECH` lines, `SPID`, `CUID`, `COOKIE` and `DONE`. An exchange is
//! `AUTH <id> <mech> service=.. lip=.. rip=.. [secured] [resp=<base64>]`,
//! answered by `CONT <id> <base64 challenge>` (we reply `CONT <id>
//! <base64 response>`), `OK <id> user=..` or `FAIL <id> ..`. Fields are
//! tab-separated and use Dovecot's tab-escaping. An empty initial response
//! is sent as `resp==` ("=" is base64 for nothing), since an empty
//! `resp=` means no initial response to Dovecot.
//!
//! **One connection per exchange.** Dovecot multiplexes requests on one
//! connection by id, but a shared connection needs a reader task, request
//! routing and reconnection, and a mutex around it would queue every
//! AUTH behind any failed one (Dovecot delays failures by
//! `auth_failure_delay`, 2 s by default). A connection per exchange costs
//! one local connect and a handshake (well under a millisecond on a unix
//! socket), isolates exchanges from each other, and makes a lost
//! connection affect one client only. Each handshake also refreshes the
//! advertised mechanisms.

use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _,
};

use super::mechanism::printable;
use super::{AuthContext, AuthError, ConfigError, Exchange};

/// How long Dovecot may take for one answer. Above its failure delay
/// (2 s by default) with room for a slow passdb.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest line we accept from Dovecot (it expects 16 KiB to be enough).
const MAX_LINE: u64 = 64 * 1024;
/// Mechanisms an SMTP server can relay, strongest first: challenge and
/// response only, no channel binding, no anonymous or external identity.
const RELAYABLE: [&str; 7] = [
    "SCRAM-SHA-256",
    "SCRAM-SHA-1",
    "CRAM-MD5",
    "PLAIN",
    "LOGIN",
    "OAUTHBEARER",
    "XOAUTH2",
];
/// What we assume Dovecot offers until a handshake says otherwise.
const FALLBACK: [&str; 2] = ["PLAIN", "LOGIN"];
/// The whole start-up or reload probe (connect and handshake) ends by then.
const PROBE_DEADLINE: Duration = Duration::from_secs(3);
/// Lines a handshake may have (Dovecot sends a dozen or two).
const MAX_HANDSHAKE_LINES: usize = 256;
/// Fields of an `OK` that Dovecot's own login processes take as "log in
/// elsewhere, or not at all" (`login-common/client-common-auth.c`): a
/// suspended account (`nologin`, with its `reason`), a proxy or referral
/// to another server (`proxy`, `proxy_maybe`, `host`, `hostip`; a proxying
/// passdb answers those with `nopassword`, so any password gets that OK),
/// and the failure codes. Such an `OK` is a refusal here.
const NOT_HERE: [&str; 9] = [
    "nologin",
    "proxy",
    "proxy_maybe",
    "host",
    "hostip",
    "reason",
    "temp",
    "user_disabled",
    "pass_expired",
];

/// Where Dovecot's auth client socket is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A unix socket (`unix:/path` or an absolute path).
    Unix(PathBuf),
    /// A TCP `host:port`.
    Tcp(String),
}

impl Address {
    /// Parses `unix:/path`, `/path` or `host:port`.
    pub fn parse(s: &str) -> Result<Address, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(Address::Unix(PathBuf::from(p)));
        }
        if s.starts_with('/') {
            return Ok(Address::Unix(PathBuf::from(s)));
        }
        let s = s.strip_prefix("inet:").unwrap_or(s);
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Address::Tcp(s.to_owned()))
            }
            _ => Err(format!(
                "Dovecot auth address {s:?}: expected unix:/path or host:port"
            )),
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Tcp(a) => f.write_str(a),
        }
    }
}

/// Dovecot's auth service as a credential backend.
#[derive(Debug)]
pub struct DovecotBackend {
    address: Address,
    service: String,
    wanted: Option<Vec<String>>,
    timeout: Duration,
    /// Offered mechanisms as of the last handshake.
    offered: Mutex<Vec<String>>,
}

impl DovecotBackend {
    /// A backend for the auth socket at `address` (`unix:/path`, `/path`
    /// or `host:port`), sending `service` with each request. `mechanisms`
    /// restricts and orders what is offered; by default everything Dovecot
    /// advertises that can be relayed. Does no I/O: until a handshake
    /// ([`DovecotBackend::probe`] or an exchange) the offer is a guess.
    pub fn new(
        address: &str,
        service: &str,
        mechanisms: Option<Vec<String>>,
    ) -> Result<DovecotBackend, ConfigError> {
        let address = Address::parse(address).map_err(ConfigError)?;
        let wanted = match mechanisms {
            None => None,
            Some(names) => {
                let mut out: Vec<String> = Vec::new();
                for n in names {
                    let n = n.to_ascii_uppercase();
                    if !RELAYABLE.contains(&n.as_str()) {
                        return Err(ConfigError(format!(
                            "mechanism {n} cannot be relayed to Dovecot (possible: {})",
                            RELAYABLE.join(" ")
                        )));
                    }
                    if !out.contains(&n) {
                        out.push(n);
                    }
                }
                Some(out)
            }
        };
        let backend = DovecotBackend {
            address,
            service: service.to_owned(),
            wanted,
            timeout: DEFAULT_TIMEOUT,
            offered: Mutex::new(Vec::new()),
        };
        // Without a handshake yet, assume what every Dovecot can do plus
        // whatever the operator asked for.
        let guess: Vec<MechInfo> = FALLBACK
            .iter()
            .map(|n| (*n).to_owned())
            .chain(backend.wanted.iter().flatten().cloned())
            .map(|name| MechInfo {
                name,
                private: false,
            })
            .collect();
        backend.remember(&guess);
        Ok(backend)
    }

    /// Changes how long one answer from Dovecot may take (default
    /// [`DEFAULT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> DovecotBackend {
        self.timeout = timeout;
        self
    }

    /// The socket address.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Connects once, blocking the thread (3 s at most for connect and
    /// handshake together, however slowly a peer trickles its lines), to
    /// learn which mechanisms Dovecot offers. For start-up and reloads,
    /// where [`DovecotBackend::mechanisms`] must be right before any
    /// exchange; call it where blocking is allowed (not an async worker).
    pub fn probe(&self) -> Result<Vec<String>, AuthError> {
        let deadline = self.timeout.min(PROBE_DEADLINE);
        let address = &self.address;
        // On a thread of its own, so that the runtime it needs never nests
        // in the caller's.
        let probed = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| e.to_string())?;
                    rt.block_on(async {
                        let handshake = async {
                            let mut conn =
                                Conn::connect(address).await.map_err(|e| e.to_string())?;
                            conn.handshake().await
                        };
                        tokio::time::timeout(deadline, handshake)
                            .await
                            .map_err(|_| format!("no complete handshake within {deadline:?}"))?
                    })
                })
                .join()
                .unwrap_or_else(|_| Err("the probe thread panicked".into()))
        });
        let mechs =
            probed.map_err(|e| AuthError::Temporary(format!("dovecot {}: {e}", self.address)))?;
        self.remember(&mechs);
        Ok(self.mechanisms())
    }

    /// The mechanisms offered, in the order to advertise them: what
    /// Dovecot advertised in the last handshake that we can relay,
    /// filtered and ordered by the configured list if any.
    pub fn mechanisms(&self) -> Vec<String> {
        self.offered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn remember(&self, advertised: &[MechInfo]) {
        let usable = |n: &str| {
            advertised
                .iter()
                .any(|m| m.name.eq_ignore_ascii_case(n) && !m.private)
        };
        let list: Vec<String> = match &self.wanted {
            Some(w) => w.iter().filter(|n| usable(n)).cloned().collect(),
            None => RELAYABLE
                .iter()
                .filter(|n| usable(n))
                .map(|n| (*n).to_owned())
                .collect(),
        };
        *self
            .offered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = list;
    }

    /// Connects, shakes hands and prepares an exchange; the `AUTH` request
    /// goes out with the first step.
    pub async fn start(
        &self,
        mechanism: &str,
        ctx: &AuthContext,
    ) -> Result<DovecotSession, AuthError> {
        let mechanism = mechanism.to_ascii_uppercase();
        let temporary = |e: String| AuthError::Temporary(format!("dovecot {}: {e}", self.address));
        let mut conn = tokio::time::timeout(self.timeout, Conn::connect(&self.address))
            .await
            .map_err(|_| temporary("connect timed out".into()))?
            .map_err(|e| temporary(e.to_string()))?;
        let advertised = tokio::time::timeout(self.timeout, conn.handshake())
            .await
            .map_err(|_| temporary("handshake timed out".into()))?
            .map_err(temporary)?;
        self.remember(&advertised);
        if !self.mechanisms().contains(&mechanism) {
            return Err(AuthError::UnsupportedMechanism(mechanism));
        }
        let mut params = vec![
            format!("service={}", escape(&self.service)),
            // The SMTP server is not logging anyone in to Dovecot's own
            // services (what Postfix sends too).
            "nologin".to_owned(),
            format!("lip={}", ctx.local_ip),
            format!("rip={}", ctx.client_ip),
        ];
        if ctx.secured {
            params.push("secured".to_owned());
        }
        Ok(DovecotSession {
            conn,
            address: self.address.to_string(),
            timeout: self.timeout,
            request: format!("AUTH\t1\t{mechanism}\t{}", params.join("\t")),
            state: State::Start,
        })
    }
}

/// One mechanism line of the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MechInfo {
    name: String,
    private: bool,
}

/// Reads the server's handshake lines up to `DONE`, keeping only the
/// mechanisms that can be relayed (at most [`RELAYABLE`]'s few), and
/// refusing a handshake that never ends.
#[derive(Debug, Default)]
struct Handshake {
    version_ok: bool,
    mechs: Vec<MechInfo>,
    lines: usize,
}

impl Handshake {
    /// Takes one line; `Ok(true)` at `DONE`.
    fn line(&mut self, line: &str) -> Result<bool, String> {
        self.lines += 1;
        if self.lines > MAX_HANDSHAKE_LINES {
            return Err(format!("handshake longer than {MAX_HANDSHAKE_LINES} lines"));
        }
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.first().copied() {
            Some("VERSION") => {
                if fields.get(1) != Some(&"1") {
                    return Err(format!(
                        "unsupported protocol version {:?}",
                        printable(line)
                    ));
                }
                self.version_ok = true;
            }
            Some("MECH") => {
                let name = fields.get(1).map(|n| unescape(n).to_ascii_uppercase());
                if let Some(name) = name
                    && RELAYABLE.contains(&name.as_str())
                    && !self.mechs.iter().any(|m| m.name == name)
                {
                    self.mechs.push(MechInfo {
                        name,
                        private: fields.iter().skip(2).any(|f| *f == "private"),
                    });
                }
            }
            Some("DONE") => {
                if !self.version_ok {
                    return Err("handshake without VERSION".into());
                }
                return Ok(true);
            }
            // SPID, CUID, COOKIE: only for master requests, which we
            // do not make.
            _ => {}
        }
        Ok(false)
    }
}

fn hello() -> String {
    format!("VERSION\t1\t2\nCPID\t{}\n", std::process::id())
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One connection to the auth service.
struct Conn {
    io: tokio::io::BufReader<Box<dyn Io>>,
}

impl Conn {
    async fn connect(address: &Address) -> io::Result<Conn> {
        let io: Box<dyn Io> = match address {
            Address::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await?),
            Address::Tcp(a) => Box::new(tokio::net::TcpStream::connect(a.as_str()).await?),
        };
        Ok(Conn {
            io: tokio::io::BufReader::new(io),
        })
    }

    async fn send(&mut self, line: &str) -> io::Result<()> {
        let io = self.io.get_mut();
        io.write_all(line.as_bytes()).await?;
        io.write_all(b"\n").await?;
        io.flush().await
    }

    async fn line(&mut self) -> io::Result<String> {
        let mut buf = Vec::new();
        let n = (&mut self.io)
            .take(MAX_LINE)
            .read_until(b'\n', &mut buf)
            .await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by Dovecot",
            ));
        }
        if buf.last() != Some(&b'\n') {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        String::from_utf8(buf).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))
    }

    async fn handshake(&mut self) -> Result<Vec<MechInfo>, String> {
        let io = self.io.get_mut();
        io.write_all(hello().as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut hs = Handshake::default();
        loop {
            let line = self.line().await.map_err(|e| e.to_string())?;
            if hs.line(&line)? {
                return Ok(hs.mechs);
            }
        }
    }
}

#[derive(Debug)]
enum State {
    Start,
    /// Dovecot sent CONT and waits for our answer.
    Continue,
    /// Dovecot said OK with final server data, relayed as a challenge
    /// that the client must acknowledge with an empty response.
    AwaitAck(String),
    Done,
}

/// An exchange relayed to Dovecot.
pub struct DovecotSession {
    conn: Conn,
    address: String,
    timeout: Duration,
    request: String,
    state: State,
}

impl DovecotSession {
    /// Feeds the client's response (see [`super::Session::step`]).
    pub async fn step(&mut self, response: Option<&[u8]>) -> Result<Exchange, AuthError> {
        let line = match (std::mem::replace(&mut self.state, State::Done), response) {
            (State::Start, None) => self.request.clone(),
            // "=" is base64 for nothing: an empty initial response, which
            // an empty "resp=" would not be.
            (State::Start, Some(b"")) => format!("{}\tresp==", self.request),
            (State::Start, Some(r)) => format!("{}\tresp={}", self.request, BASE64.encode(r)),
            (State::Continue, Some(r)) => format!("CONT\t1\t{}", BASE64.encode(r)),
            (State::AwaitAck(user), Some(b"")) => return Ok(Exchange::Success(user)),
            (State::AwaitAck(_), Some(_)) => {
                return Ok(Exchange::Failure(
                    "unexpected data after the final server message".into(),
                ));
            }
            (State::Continue | State::AwaitAck(_), None) => {
                return Ok(Exchange::Failure("missing response".into()));
            }
            (State::Done, _) => return Ok(Exchange::Failure("exchange already finished".into())),
        };
        let reply = tokio::time::timeout(self.timeout, async {
            self.conn.send(&line).await?;
            loop {
                let reply = self.conn.line().await?;
                let fields: Vec<&str> = reply.split('\t').collect();
                if matches!(fields.first(), Some(&("OK" | "CONT" | "FAIL")))
                    && fields.get(1) == Some(&"1")
                {
                    return Ok::<_, io::Error>(reply);
                }
            }
        })
        .await;
        let reply = match reply {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(self.temporary(&e.to_string())),
            Err(_) => return Err(self.temporary("no answer in time")),
        };
        let fields: Vec<&str> = reply.split('\t').collect();
        let param = |key: &str| {
            fields.iter().skip(2).find_map(|f| {
                f.strip_prefix(key)
                    .and_then(|v| v.strip_prefix('='))
                    .map(unescape)
            })
        };
        let flag = |key: &str| fields.iter().skip(2).any(|f| *f == key);
        match fields[0] {
            "CONT" => {
                let challenge = BASE64
                    .decode(fields.get(2).copied().unwrap_or(""))
                    .map_err(|_| self.temporary("CONT with invalid base64"))?;
                self.state = State::Continue;
                Ok(Exchange::Challenge(challenge))
            }
            "OK" => {
                let user = param("user")
                    .filter(|u| !u.is_empty())
                    .ok_or_else(|| self.temporary("OK without user"))?;
                let not_here = not_here(fields.get(2..).unwrap_or_default());
                if !not_here.is_empty() {
                    let why = format!(
                        "{} may not log in here ({})",
                        printable(&user),
                        not_here.join(", ")
                    );
                    return if flag("temp") {
                        Err(self.temporary(&why))
                    } else {
                        Ok(Exchange::Failure(format!("dovecot: {why}")))
                    };
                }
                match param("resp") {
                    Some(b64) if !b64.is_empty() => {
                        let data = BASE64
                            .decode(b64)
                            .map_err(|_| self.temporary("OK with invalid base64"))?;
                        self.state = State::AwaitAck(user);
                        Ok(Exchange::Challenge(data))
                    }
                    _ => Ok(Exchange::Success(user)),
                }
            }
            _ => {
                let reason = param("reason").unwrap_or_else(|| "authentication failed".into());
                let who = param("user")
                    .map(|u| format!(" for {}", printable(&u)))
                    .unwrap_or_default();
                if flag("temp") {
                    Err(self.temporary(&format!("temporary failure{who}: {}", printable(&reason))))
                } else {
                    Ok(Exchange::Failure(format!(
                        "dovecot: {}{who}",
                        printable(&reason)
                    )))
                }
            }
        }
    }

    fn temporary(&self, what: &str) -> AuthError {
        AuthError::Temporary(format!("dovecot {}: {what}", self.address))
    }
}

/// The fields of an `OK` (after its id) that send the client elsewhere or
/// nowhere ([`NOT_HERE`]), as `key` or `key=value` for the log.
fn not_here(fields: &[&str]) -> Vec<String> {
    fields
        .iter()
        .filter(|f| {
            let key = f.split_once('=').map_or(**f, |(k, _)| k);
            NOT_HERE.contains(&key)
        })
        .map(|f| printable(&unescape(f)))
        .collect()
}

/// Dovecot's tab-escaping: `\x01` then `1`, `t`, `r`, `n` or `0`.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\x01' => out.push_str("\x011"),
            '\t' => out.push_str("\x01t"),
            '\r' => out.push_str("\x01r"),
            '\n' => out.push_str("\x01n"),
            '\0' => out.push_str("\x010"),
            c => out.push(c),
        }
    }
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\x01' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('1') => out.push('\x01'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some('0') => out.push('\0'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sasl::mechanism::client;
    use tokio::io::BufReader;
    use tokio::net::UnixListener;
    use tokio::sync::mpsc;

    fn ctx(secured: bool) -> AuthContext {
        AuthContext {
            client_ip: "192.0.2.7".parse().expect("ip"),
            local_ip: "192.0.2.1".parse().expect("ip"),
            secured,
            service: "smtp".into(),
        }
    }

    const HANDSHAKE: &str = "VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nMECH\tLOGIN\tplaintext\n\
        MECH\tCRAM-MD5\tdictionary\tactive\nMECH\tSCRAM-SHA-256\tmutual-auth\n\
        MECH\tSCRAM-SHA-256-PLUS\tmutual-auth\nMECH\tGSSAPI\nMECH\tXOAUTH2\tprivate\n\
        SPID\t1\nCUID\t7\nCOOKIE\t0123456789abcdef\nDONE\n";

    fn param<'a>(fields: &'a [&str], key: &str) -> Option<&'a str> {
        fields
            .iter()
            .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
    }

    /// The fake's answer to one AUTH or CONT line; `None` hangs up,
    /// "SLEEP" never answers.
    fn answer(line: &str, seen: &mut Vec<String>) -> Option<String> {
        seen.push(line.to_owned());
        let fields: Vec<&str> = line.split('\t').collect();
        let mech = seen[0].split('\t').nth(2).unwrap_or("").to_owned();
        // Like Dovecot, take "=" for empty data.
        let decode = |s: &str| {
            let s = if s == "=" { "" } else { s };
            String::from_utf8(BASE64.decode(s).expect("b64")).expect("utf8")
        };
        let verdict = |user: &str, password: &str| match (user, password) {
            ("alice", "right") => Some("OK\t1\tuser=alice@mx.test".to_owned()),
            // What Dovecot 2.3 answers for passwd-file extra fields
            // `nologin reason=...`, `nopassword proxy host=...`,
            // `host=...` and `proxy_maybe=y host=...`.
            ("suspended", "right") => Some(
                "OK\t1\tuser=suspended@mx.test\tnologin\treason=Account\x01tsuspended".to_owned(),
            ),
            ("proxied", _) => Some("OK\t1\tuser=proxied@mx.test\tproxy\thost=192.0.2.9".to_owned()),
            ("referred", "right") => {
                Some("OK\t1\tuser=referred@mx.test\thost=192.0.2.10".to_owned())
            }
            ("maybe", "right") => {
                Some("OK\t1\tuser=maybe@mx.test\tproxy_maybe=y\thost=192.0.2.11".to_owned())
            }
            ("busy", "right") => {
                Some("OK\t1\tuser=busy@mx.test\tnologin\ttemp\treason=try later".to_owned())
            }
            ("temp", _) => Some("FAIL\t1\tuser=temp\ttemp\treason=passdb down".to_owned()),
            ("silent", _) => Some("SLEEP".to_owned()),
            ("drop", _) => None,
            (u, _) => Some(format!("FAIL\t1\tuser={u}\treason=Password mismatch")),
        };
        match (mech.as_str(), fields[0], seen.len()) {
            ("PLAIN", "AUTH", 1) => match param(&fields, "resp") {
                Some(r) => {
                    let msg = decode(r);
                    let mut parts = msg.split('\0').skip(1);
                    verdict(parts.next().unwrap_or(""), parts.next().unwrap_or(""))
                }
                None => Some("CONT\t1\t".to_owned()),
            },
            ("PLAIN", "CONT", 2) => {
                let msg = decode(fields[2]);
                let mut parts = msg.split('\0').skip(1);
                verdict(parts.next().unwrap_or(""), parts.next().unwrap_or(""))
            }
            ("LOGIN", "AUTH", 1) => Some(format!("CONT\t1\t{}", BASE64.encode("Username:"))),
            ("LOGIN", "CONT", 2) => Some(format!("CONT\t1\t{}", BASE64.encode("Password:"))),
            ("LOGIN", "CONT", 3) => {
                verdict(&decode(seen[1].split('\t').nth(2)?), &decode(fields[2]))
            }
            ("SCRAM-SHA-256", "AUTH", 1) => Some(format!(
                "OK\t1\tuser=al\x01tice\tresp={}",
                BASE64.encode("v=proof")
            )),
            _ => Some("FAIL\t1\treason=unexpected".to_owned()),
        }
    }

    /// A fake auth service; sends every AUTH/CONT line it gets to the
    /// channel.
    fn fake(name: &str) -> (client::TempDir, String, mpsc::UnboundedReceiver<String>) {
        let dir = client::TempDir::new(&format!("dovecot-{name}"));
        let path = dir.path().join("auth-client");
        let listener = UnixListener::bind(&path).expect("bind");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    w.write_all(HANDSHAKE.as_bytes()).await.expect("handshake");
                    let mut lines = BufReader::new(r).lines();
                    let mut seen = Vec::new();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if line.starts_with("VERSION") || line.starts_with("CPID") {
                            continue;
                        }
                        let _ = tx.send(line.clone());
                        match answer(&line, &mut seen) {
                            Some(a) if a == "SLEEP" => std::future::pending::<()>().await,
                            Some(a) => w
                                .write_all(format!("{a}\n").as_bytes())
                                .await
                                .expect("write"),
                            None => return,
                        }
                    }
                });
            }
        });
        (dir, format!("unix:{}", path.display()), rx)
    }

    #[tokio::test]
    async fn plain_with_and_without_initial_response() {
        let (_dir, addr, mut sent) = fake("plain");
        let b = DovecotBackend::new(&addr, "smtp", None).expect("backend");
        let mut s = b.start("PLAIN", &ctx(true)).await.expect("start");
        let out = s.step(Some(b"\0alice\0right")).await.expect("step");
        assert_eq!(out, Exchange::Success("alice@mx.test".into()));
        let line = sent.recv().await.expect("line");
        assert_eq!(
            line,
            format!(
                "AUTH\t1\tPLAIN\tservice=smtp\tnologin\tlip=192.0.2.1\trip=192.0.2.7\tsecured\tresp={}",
                BASE64.encode("\0alice\0right")
            )
        );
        assert_eq!(
            b.mechanisms(),
            ["SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN"],
            "no -PLUS, no private, nothing we cannot relay"
        );

        let mut s = b.start("PLAIN", &ctx(false)).await.expect("start");
        assert_eq!(
            s.step(None).await.expect("step"),
            Exchange::Challenge(Vec::new())
        );
        let line = sent.recv().await.expect("line");
        assert!(
            !line.contains("resp") && !line.contains("secured"),
            "{line}"
        );
        let out = s.step(Some(b"\0bob\0wrong")).await.expect("step");
        assert!(
            matches!(&out, Exchange::Failure(r) if r.contains("mismatch") && r.contains("bob")),
            "{out:?}"
        );
        assert!(sent.recv().await.expect("line").starts_with("CONT\t1\t"));

        // An empty initial response is "=", not an empty resp.
        let mut s = b.start("PLAIN", &ctx(true)).await.expect("start");
        let _ = s.step(Some(b"")).await.expect("step");
        assert!(sent.recv().await.expect("line").ends_with("\tresp=="));
    }

    #[tokio::test]
    async fn login_relays_challenges() {
        let (_dir, addr, _sent) = fake("login");
        let b = DovecotBackend::new(&addr, "smtp", None).expect("backend");
        let mut s = b.start("login", &ctx(true)).await.expect("start");
        assert_eq!(
            s.step(None).await.expect("step"),
            Exchange::Challenge(b"Username:".to_vec())
        );
        assert_eq!(
            s.step(Some(b"alice")).await.expect("step"),
            Exchange::Challenge(b"Password:".to_vec())
        );
        assert_eq!(
            s.step(Some(b"right")).await.expect("step"),
            Exchange::Success("alice@mx.test".into())
        );
    }

    #[tokio::test]
    async fn success_data_becomes_a_challenge() {
        let (_dir, addr, _sent) = fake("final");
        let b = DovecotBackend::new(&addr, "smtp", None).expect("backend");
        let mut s = b.start("SCRAM-SHA-256", &ctx(true)).await.expect("start");
        assert_eq!(
            s.step(Some(b"n,,n=alice,r=x")).await.expect("step"),
            Exchange::Challenge(b"v=proof".to_vec())
        );
        assert_eq!(
            s.step(Some(b"")).await.expect("step"),
            Exchange::Success("al\tice".into()),
            "tab-escaped user name"
        );
    }

    #[tokio::test]
    async fn trouble_is_temporary() {
        let (_dir, addr, _sent) = fake("trouble");
        let b = DovecotBackend::new(&addr, "smtp", None)
            .expect("backend")
            .with_timeout(Duration::from_millis(300));
        for user in ["temp", "silent", "drop"] {
            let mut s = b.start("PLAIN", &ctx(true)).await.expect("start");
            let msg = format!("\0{user}\0secret-pw");
            let err = s.step(Some(msg.as_bytes())).await.expect_err(user);
            assert!(
                matches!(&err, AuthError::Temporary(m) if !m.contains("secret-pw")),
                "{err}"
            );
        }
        assert!(matches!(
            b.start("GSSAPI", &ctx(true)).await,
            Err(AuthError::UnsupportedMechanism(_))
        ));
        let nowhere =
            DovecotBackend::new("unix:/nonexistent/auth-client", "smtp", None).expect("backend");
        assert!(matches!(
            nowhere.start("PLAIN", &ctx(true)).await,
            Err(AuthError::Temporary(_))
        ));
        assert_eq!(nowhere.mechanisms(), ["PLAIN", "LOGIN"]);
        assert!(nowhere.probe().is_err());
    }

    #[tokio::test]
    async fn an_ok_that_sends_the_client_elsewhere_is_a_refusal() {
        let (_dir, addr, _sent) = fake("not-here");
        let b = DovecotBackend::new(&addr, "smtp", None).expect("backend");
        for (user, password, expect) in [
            ("suspended", "right", "nologin, reason=Account\tsuspended"),
            // Behind a proxying passdb (nopassword), any password.
            ("proxied", "anything", "proxy, host=192.0.2.9"),
            ("referred", "right", "host=192.0.2.10"),
            ("maybe", "right", "proxy_maybe=y, host=192.0.2.11"),
        ] {
            let mut s = b.start("PLAIN", &ctx(true)).await.expect("start");
            let msg = format!("\0{user}\0{password}");
            let out = s.step(Some(msg.as_bytes())).await.expect(user);
            assert_eq!(
                out,
                Exchange::Failure(format!(
                    "dovecot: {user}@mx.test may not log in here ({})",
                    printable(expect)
                )),
                "{user}"
            );
        }
        // Not here for now: 454, not 535.
        let mut s = b.start("PLAIN", &ctx(true)).await.expect("start");
        let err = s.step(Some(b"\0busy\0right")).await.expect_err("temp");
        assert!(
            matches!(&err, AuthError::Temporary(m) if m.contains("nologin, temp, reason=try later")),
            "{err}"
        );
        // The others still log in.
        let mut s = b.start("PLAIN", &ctx(true)).await.expect("start");
        let out = s.step(Some(b"\0alice\0right")).await.expect("alice");
        assert_eq!(out, Exchange::Success("alice@mx.test".into()));
    }

    /// A fake auth service that sends `start` and then runs `rest` on the
    /// connection (for handshakes that misbehave).
    fn misbehaving<F, Fut>(name: &str, rest: F) -> (client::TempDir, String)
    where
        F: Fn(tokio::net::UnixStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let dir = client::TempDir::new(&format!("dovecot-{name}"));
        let path = dir.path().join("auth-client");
        let listener = UnixListener::bind(&path).expect("bind");
        let rest = std::sync::Arc::new(rest);
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(rest(s));
            }
        });
        (dir, format!("unix:{}", path.display()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_trickling_handshake_ends_at_the_probe_deadline() {
        // A byte every 50 ms: no single read ever waits long, so only an
        // overall deadline ends it.
        let (_dir, addr) = misbehaving("trickle", |mut s| async move {
            let _ = s.write_all(b"VERSION\t1\t2\n").await;
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if s.write_all(b"x").await.is_err() {
                    return;
                }
            }
        });
        let b = DovecotBackend::new(&addr, "smtp", None)
            .expect("backend")
            .with_timeout(Duration::from_millis(500));
        let started = std::time::Instant::now();
        let err = tokio::task::spawn_blocking(move || b.probe())
            .await
            .expect("join")
            .expect_err("trickle");
        assert!(err.to_string().contains("no complete handshake"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_endless_handshake_is_refused() {
        let (_dir, addr) = misbehaving("endless", |mut s| async move {
            let _ = s.write_all(b"VERSION\t1\t2\n").await;
            for i in 0u64.. {
                let line = format!("MECH\tX-{i}\tplaintext\nMECH\tPLAIN\n");
                if s.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        let b = DovecotBackend::new(&addr, "smtp", None).expect("backend");
        let err = tokio::task::spawn_blocking(move || b.probe())
            .await
            .expect("join")
            .expect_err("endless");
        assert!(err.to_string().contains("handshake longer than"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn probe_learns_mechanisms() {
        let (_dir, addr, _sent) = fake("probe");
        let b = DovecotBackend::new(
            &addr,
            "smtp",
            Some(vec!["plain".into(), "scram-sha-256".into()]),
        )
        .expect("backend");
        let mechs = tokio::task::spawn_blocking(move || b.probe())
            .await
            .expect("join");
        assert_eq!(mechs.expect("probe"), ["PLAIN", "SCRAM-SHA-256"]);
    }

    #[test]
    fn addresses_and_configuration() {
        assert_eq!(
            Address::parse("unix:/run/dovecot/auth-client"),
            Ok(Address::Unix("/run/dovecot/auth-client".into()))
        );
        assert_eq!(Address::parse("/x"), Ok(Address::Unix("/x".into())));
        assert_eq!(
            Address::parse("127.0.0.1:12345"),
            Ok(Address::Tcp("127.0.0.1:12345".into()))
        );
        assert_eq!(
            Address::parse("inet:[::1]:12345"),
            Ok(Address::Tcp("[::1]:12345".into()))
        );
        assert!(Address::parse("localhost").is_err());
        assert!(Address::parse("host:port").is_err());
        assert!(DovecotBackend::new("/x", "smtp", Some(vec!["GSSAPI".into()])).is_err());
    }

    #[test]
    fn tab_escaping_round_trips() {
        let s = "a\tb\nc\rd\x01e\0f";
        assert!(!escape(s).contains(['\t', '\n']));
        assert_eq!(unescape(&escape(s)), s);
        assert_eq!(unescape("x\x01"), "x");
    }

    #[test]
    fn handshake_parsing() {
        let mut hs = Handshake::default();
        for line in HANDSHAKE.lines() {
            let done = hs.line(line).expect("line");
            assert_eq!(done, line == "DONE");
        }
        // Only what can be relayed is kept: no -PLUS, no GSSAPI.
        let names: Vec<&str> = hs.mechs.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256", "XOAUTH2"]
        );
        assert!(hs.mechs.iter().any(|m| m.name == "XOAUTH2" && m.private));
        assert!(Handshake::default().line("VERSION\t2\t0").is_err());
        assert!(Handshake::default().line("DONE").is_err());
    }

    /// Against the Dovecot that ../shared/peers starts; run with
    /// `--ignored`. `POSTERN_DOVECOT` overrides the address.
    #[tokio::test]
    #[ignore = "needs the Dovecot test peer"]
    async fn real_dovecot() {
        let addrs = match std::env::var("POSTERN_DOVECOT") {
            Ok(a) => vec![a],
            Err(_) => vec![
                "unix:/tmp/postern-peers/dovecot/auth-client".to_owned(),
                "127.0.0.1:12345".to_owned(),
            ],
        };
        for addr in addrs {
            let b = DovecotBackend::new(&addr, "smtp", None).expect("backend");
            let probe_backend = DovecotBackend::new(&addr, "smtp", None).expect("backend");
            let probed = tokio::task::spawn_blocking(move || probe_backend.probe())
                .await
                .expect("join")
                .expect("probe");
            assert_eq!(
                probed,
                ["SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5", "PLAIN", "LOGIN"],
                "{addr}"
            );

            let mut s = b.start("PLAIN", &ctx(true)).await.expect("start");
            assert_eq!(
                s.step(Some(b"\0alice@mx.test\0alicepass"))
                    .await
                    .expect("step"),
                Exchange::Success("alice@mx.test".into()),
                "{addr} PLAIN"
            );

            let mut s = b.start("LOGIN", &ctx(false)).await.expect("start");
            assert_eq!(
                s.step(None).await.expect("step"),
                Exchange::Challenge(b"Username:".to_vec())
            );
            assert_eq!(
                s.step(Some(b"bob@example.test")).await.expect("step"),
                Exchange::Challenge(b"Password:".to_vec())
            );
            assert_eq!(
                s.step(Some(b"bobpass")).await.expect("step"),
                Exchange::Success("bob@example.test".into()),
                "{addr} LOGIN"
            );

            let mut s = b.start("CRAM-MD5", &ctx(true)).await.expect("start");
            let Exchange::Challenge(challenge) = s.step(None).await.expect("step") else {
                panic!("no CRAM-MD5 challenge");
            };
            let response = client::cram_md5("alice@mx.test", "alicepass", &challenge);
            assert_eq!(
                s.step(Some(&response)).await.expect("step"),
                Exchange::Success("alice@mx.test".into()),
                "{addr} CRAM-MD5"
            );

            let mut s = b.start("SCRAM-SHA-256", &ctx(true)).await.expect("start");
            let (mut scram, first) =
                client::Scram::new("bob@example.test", "bobpass", "postern-nonce");
            let Exchange::Challenge(server_first) = s.step(Some(&first)).await.expect("step")
            else {
                panic!("no server-first");
            };
            let client_final = scram.client_final(&server_first);
            let Exchange::Challenge(server_final) =
                s.step(Some(&client_final)).await.expect("step")
            else {
                panic!("no server-final");
            };
            assert!(
                scram.server_final_ok(&server_final),
                "{addr} server signature"
            );
            assert_eq!(
                s.step(Some(b"")).await.expect("step"),
                Exchange::Success("bob@example.test".into()),
                "{addr} SCRAM-SHA-256"
            );

            let started = std::time::Instant::now();
            let mut s = b.start("PLAIN", &ctx(true)).await.expect("start");
            let out = s.step(Some(b"\0alice@mx.test\0wrong")).await.expect("step");
            assert!(matches!(out, Exchange::Failure(_)), "{addr} {out:?}");
            eprintln!(
                "{addr}: wrong password answered after {:?}: {out:?}",
                started.elapsed()
            );
        }
    }
}
