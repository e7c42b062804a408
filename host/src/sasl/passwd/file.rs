//! The password file: format, parsing and atomic editing.
//!
//! One line per user, fields separated by `:` (no field can contain one):
//!
//! ```text
//! # comments and blank lines are kept as they are
//! alice@example.test:argon2=$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>:scram-sha-256=4096,<salt>,<StoredKey>,<ServerKey>
//! bob@example.test:argon2=...:scram-sha-256=...:cram-md5={PLAIN.b64}<base64 password>
//! ```
//!
//! - the user is `local@domain`, lower-cased;
//! - `argon2=` is an argon2id PHC string, checked for PLAIN and LOGIN;
//! - `scram-sha-256=` holds the iteration count, then the salt, StoredKey
//!   and ServerKey in standard base64 (RFC 5802), for SCRAM-SHA-256;
//! - `cram-md5={PLAIN.b64}` is present only when the operator asked for it
//!   (`postern user add --cram-md5`).
//!
//! **The CRAM-MD5 trade-off.** CRAM-MD5 needs the HMAC-MD5 key, which is
//! the password itself. Dovecot stores the precomputed inner and outer
//! MD5 states instead, which at least hides the password from a reader of
//! the file; md-5 0.10 does not expose the MD5 compression function or
//! its state, so Postern stores the password, base64-encoded (an encoding,
//! not a protection). Anyone who can read a `cram-md5=` field can log in
//! as that user with any mechanism, and learns a password the user may
//! have reused elsewhere. Store it only for clients that cannot do better,
//! keep the file at mode 0600, and prefer SCRAM-SHA-256, which stores
//! nothing password-equivalent. `{PLAIN.b64}` names the scheme, as in
//! Dovecot, so that a state-based one (Dovecot's `{CRAM-MD5}`) can be
//! added without breaking existing files.
//!
//! Every change is written to a temporary file in the same directory,
//! fsynced and renamed over the old one (then the directory is fsynced),
//! under an exclusive lock on `<file>.lock`, so readers see the old or the
//! new file and never half of one, and two `postern user` runs cannot lose
//! each other's change.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher as _, SaltString};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::sasl::mechanism::scram::{ITERATIONS, SALT_LEN, ScramKeys};

/// The first lines of a new password file.
const HEADER: &str = "\
# Postern password file, managed by `postern user` (see sasl/passwd/file.rs).
# user@domain:argon2=<PHC>:scram-sha-256=<iterations>,<salt>,<StoredKey>,<ServerKey>[:cram-md5={PLAIN.b64}<base64>]
";

/// Errors reading or editing the password file.
#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    /// The file (or its lock or directory) could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// A line is not a valid record.
    #[error("{path}:{line}: {reason}")]
    Format {
        /// The password file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong (never the line itself: it holds secrets).
        reason: String,
    },
    /// `add` for a user that has a record.
    #[error("user {0} already exists")]
    UserExists(String),
    /// `passwd`/`del` for a user without a record.
    #[error("no such user: {0}")]
    NoSuchUser(String),
    /// Not a valid `local@domain` name.
    #[error("invalid user name {0:?}: {1}")]
    InvalidUser(String, &'static str),
    /// A mechanism name the backend does not know.
    #[error("mechanism {0} is not supported by the password file")]
    UnsupportedMechanism(String),
    /// Hashing failed (bad parameters or no randomness).
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// A CRAM-MD5 secret (password-equivalent): redacted in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct CramSecret(Vec<u8>);

impl CramSecret {
    /// The HMAC-MD5 key.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for CramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CramSecret(<redacted>)")
    }
}

/// One user's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `local@domain`, lower-cased.
    pub user: String,
    /// argon2id PHC string (PLAIN, LOGIN).
    pub argon2: Option<String>,
    /// SCRAM-SHA-256 verifier.
    pub scram_sha256: Option<ScramKeys>,
    /// CRAM-MD5 secret, only when the operator asked for one.
    pub cram_md5: Option<CramSecret>,
}

/// The password as SCRAM clients hash it: SASLprep'd (RFC 5802 §2.2,
/// RFC 4013), so that e.g. a soft hyphen or a compatibility character
/// typed by the user gives the same keys. A password that is not UTF-8 or
/// that SASLprep refuses is used as is, as clients such as libpq do.
pub fn scram_password(password: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    match std::str::from_utf8(password).map(stringprep::saslprep) {
        Ok(Ok(std::borrow::Cow::Owned(p))) => std::borrow::Cow::Owned(p.into_bytes()),
        _ => std::borrow::Cow::Borrowed(password),
    }
}

impl Record {
    /// Derives a record from a password: argon2id hash, SCRAM-SHA-256
    /// keys, and the CRAM-MD5 secret when `cram_md5` is set. Slow by
    /// design (argon2 and PBKDF2).
    pub fn new(user: &str, password: &[u8], cram_md5: bool) -> Result<Record, PasswdError> {
        let user = normalize_user(user)?;
        if password.is_empty() {
            return Err(PasswdError::Hash("empty password".into()));
        }
        Ok(Record {
            user,
            argon2: Some(hash_password(password)?),
            scram_sha256: Some(ScramKeys::derive(
                &scram_password(password),
                &random(SALT_LEN)?,
                ITERATIONS,
            )),
            cram_md5: cram_md5.then(|| CramSecret(password.to_vec())),
        })
    }

    /// Parses one line (not a comment or blank).
    pub fn parse(line: &str) -> Result<Record, String> {
        let mut fields = line.split(':');
        let user = fields.next().unwrap_or_default();
        let user = normalize_user(user).map_err(|e| e.to_string())?;
        let mut record = Record {
            user,
            argon2: None,
            scram_sha256: None,
            cram_md5: None,
        };
        for field in fields {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| "field without '='".to_string())?;
            let duplicate = match key {
                "argon2" => {
                    PasswordHash::new(value).map_err(|e| format!("argon2: {e}"))?;
                    record.argon2.replace(value.to_owned()).is_some()
                }
                "scram-sha-256" => record.scram_sha256.replace(parse_scram(value)?).is_some(),
                "cram-md5" => {
                    let b64 = value
                        .strip_prefix("{PLAIN.b64}")
                        .ok_or("cram-md5: unknown scheme (expected {PLAIN.b64})")?;
                    let secret = BASE64
                        .decode(b64)
                        .map_err(|_| "cram-md5: not base64".to_string())?;
                    record.cram_md5.replace(CramSecret(secret)).is_some()
                }
                // Never echo the field: it may be a secret.
                _ => return Err("unknown field".into()),
            };
            if duplicate {
                return Err(format!("{key} given twice"));
            }
        }
        if record.argon2.is_none() && record.scram_sha256.is_none() && record.cram_md5.is_none() {
            return Err("record without credentials".into());
        }
        Ok(record)
    }

    /// The record as one line, without the newline.
    pub fn to_line(&self) -> String {
        let mut line = self.user.clone();
        if let Some(phc) = &self.argon2 {
            line.push_str(":argon2=");
            line.push_str(phc);
        }
        if let Some(k) = &self.scram_sha256 {
            line.push_str(&format!(
                ":scram-sha-256={},{},{},{}",
                k.iterations,
                BASE64.encode(&k.salt),
                BASE64.encode(k.stored_key),
                BASE64.encode(k.server_key)
            ));
        }
        if let Some(s) = &self.cram_md5 {
            line.push_str(":cram-md5={PLAIN.b64}");
            line.push_str(&BASE64.encode(&s.0));
        }
        line
    }

    /// The schemes this record holds, for `postern user list`.
    pub fn schemes(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.argon2.is_some() {
            out.push("argon2id");
        }
        if self.scram_sha256.is_some() {
            out.push("scram-sha-256");
        }
        if self.cram_md5.is_some() {
            out.push("cram-md5");
        }
        out
    }
}

fn parse_scram(value: &str) -> Result<ScramKeys, String> {
    let err = || "scram-sha-256: expected <iterations>,<salt>,<StoredKey>,<ServerKey>".to_string();
    let mut parts = value.split(',');
    let (Some(i), Some(salt), Some(stored), Some(server), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(err());
    };
    let iterations: u32 = i.parse().map_err(|_| err())?;
    if iterations == 0 {
        return Err("scram-sha-256: zero iterations".into());
    }
    let key = |s: &str| -> Result<[u8; 32], String> {
        BASE64
            .decode(s)
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(err)
    };
    Ok(ScramKeys {
        iterations,
        salt: BASE64.decode(salt).map_err(|_| err())?,
        stored_key: key(stored)?,
        server_key: key(server)?,
    })
}

/// Lower-cases and checks a `local@domain` user name for a record. A
/// record's name must be one field of the file and one token in logs.
pub fn normalize_user(user: &str) -> Result<String, PasswdError> {
    let invalid = |why| PasswdError::InvalidUser(user.to_owned(), why);
    if user.len() > 254 {
        return Err(invalid("longer than 254 bytes"));
    }
    if user
        .chars()
        .any(|c| c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(invalid("contains ':', white space or a control character"));
    }
    match user.split_once('@') {
        Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.contains('@') =>
        {
            Ok(user.to_lowercase())
        }
        _ => Err(invalid("expected local@domain")),
    }
}

/// Hashes a password with argon2id and the crate's default parameters.
pub fn hash_password(password: &[u8]) -> Result<String, PasswdError> {
    let salt =
        SaltString::encode_b64(&random(16)?).map_err(|e| PasswdError::Hash(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswdError::Hash(e.to_string()))
}

fn random(len: usize) -> Result<Vec<u8>, PasswdError> {
    let mut buf = vec![0u8; len];
    getrandom::fill(&mut buf).map_err(|e| PasswdError::Hash(e.to_string()))?;
    Ok(buf)
}

/// The parsed file: records by user name.
#[derive(Debug, Default)]
pub struct Table {
    users: HashMap<String, Record>,
}

/// A line that could not be parsed: 1-based number and reason.
pub type LineError = (usize, String);

impl Table {
    /// Parses a whole file. Bad lines are left out and reported, so one
    /// broken record locks out one user, not all of them; the first of
    /// two records for one user wins.
    pub fn parse(text: &str) -> (Table, Vec<LineError>) {
        let mut table = Table::default();
        let mut errors = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            match Record::parse(line) {
                Ok(r) if table.users.contains_key(&r.user) => {
                    errors.push((i + 1, format!("second record for {}", r.user)));
                }
                Ok(r) => {
                    table.users.insert(r.user.clone(), r);
                }
                Err(reason) => errors.push((i + 1, reason)),
            }
        }
        (table, errors)
    }

    /// The record of `user` (any case).
    pub fn get(&self, user: &str) -> Option<&Record> {
        self.users.get(&user.to_lowercase())
    }

    /// All records, sorted by user name.
    pub fn records(&self) -> Vec<&Record> {
        let mut v: Vec<&Record> = self.users.values().collect();
        v.sort_by(|a, b| a.user.cmp(&b.user));
        v
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// No users at all.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Reads and parses the file; any bad line is an error (for `postern
/// check`, start-up and `postern user list`). A missing file is an error
/// too.
pub fn load_strict(path: &Path) -> Result<Table, PasswdError> {
    let text = std::fs::read_to_string(path).map_err(|source| PasswdError::Io {
        path: path.to_owned(),
        source,
    })?;
    let (table, errors) = Table::parse(&text);
    match errors.into_iter().next() {
        Some((line, reason)) => Err(PasswdError::Format {
            path: path.to_owned(),
            line,
            reason,
        }),
        None => Ok(table),
    }
}

/// A change to the file.
#[derive(Debug)]
pub enum Edit {
    /// Add a user who must not exist yet.
    Add(Record),
    /// Replace the record of a user who must exist.
    Replace(Record),
    /// Remove a user who must exist.
    Delete(String),
}

/// Applies one change atomically. Other lines, comments included, stay
/// as they are; a new user is appended. The file is created (mode 0600)
/// if it does not exist.
pub fn edit(path: &Path, change: Edit) -> Result<(), PasswdError> {
    let io_err = |p: &Path| {
        let p = p.to_owned();
        move |source| PasswdError::Io { path: p, source }
    };
    let lock_path = with_suffix(path, ".lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    lock.lock().map_err(io_err(&lock_path))?;

    let (text, meta) = match File::open(path) {
        Ok(f) => {
            let meta = f.metadata().map_err(io_err(path))?;
            (io::read_to_string(f).map_err(io_err(path))?, Some(meta))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => (HEADER.to_owned(), None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let user = match &change {
        Edit::Add(r) | Edit::Replace(r) => r.user.clone(),
        Edit::Delete(u) => normalize_user(u)?,
    };
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let position = lines.iter().position(|l| is_record_of(l, &user));
    match (change, position) {
        (Edit::Add(_), Some(_)) => return Err(PasswdError::UserExists(user)),
        (Edit::Add(r), None) => lines.push(r.to_line()),
        (Edit::Replace(r), Some(i)) => {
            lines[i] = r.to_line();
            // A hand-made duplicate further down is dead (the first record
            // wins) but would come back to life after a later delete.
            let mut n = 0;
            lines.retain(|l| {
                n += 1;
                n <= i + 1 || !is_record_of(l, &user)
            });
        }
        (Edit::Delete(_), Some(_)) => lines.retain(|l| !is_record_of(l, &user)),
        (Edit::Replace(_) | Edit::Delete(_), None) => return Err(PasswdError::NoSuchUser(user)),
    }
    let mut out = lines.join("\n");
    out.push('\n');
    // Never looser than 0640, whatever the old file had.
    let mode = meta.as_ref().map_or(0o600, |m| m.mode() & 0o640);
    let owner = meta.as_ref().map(|m| (m.uid(), m.gid()));
    write_atomic(path, out.as_bytes(), mode, owner).map_err(io_err(path))
}

/// Whether `line` is a record for `user` (lower-cased), in any case.
fn is_record_of(line: &str, user: &str) -> bool {
    !line.trim_start().starts_with('#')
        && line
            .split(':')
            .next()
            .is_some_and(|u| u.to_lowercase() == user)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Writes `contents` to a temporary file next to `path`, fsyncs it and
/// renames it over `path`, then fsyncs the directory.
fn write_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let tmp = with_suffix(path, &format!(".tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        if let Some((uid, gid)) = owner {
            let m = f.metadata()?;
            if (m.uid(), m.gid()) != (uid, gid) {
                std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
            }
        }
        // After fchown (which may clear mode bits) and regardless of umask.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sasl::mechanism::client;

    #[test]
    fn scram_passwords_are_saslprepped_like_rfc_4013() {
        let p = |s: &str| scram_password(s.as_bytes()).into_owned();
        assert_eq!(p("I\u{AD}X"), b"IX"); // soft hyphen maps to nothing
        assert_eq!(p("user"), b"user");
        assert_eq!(p("USER"), b"USER"); // case is kept
        assert_eq!(p("\u{AA}"), b"a"); // NFKC
        assert_eq!(p("\u{2168}"), b"IX");
        assert_eq!(p("a\u{A0}b"), b"a b"); // non-ASCII space maps to space
        // Refused by SASLprep (a control character): used as is.
        assert_eq!(p("a\u{7}b"), b"a\x07b");
        assert_eq!(scram_password(b"\xff\xfe").into_owned(), b"\xff\xfe");
    }

    fn tempdir(name: &str) -> client::TempDir {
        client::TempDir::new(&format!("passwd-{name}"))
    }

    #[test]
    fn record_round_trip() {
        let r = Record::new("Alice@Example.TEST", b"secret", true).expect("record");
        assert_eq!(r.user, "alice@example.test");
        let line = r.to_line();
        assert!(line.starts_with("alice@example.test:argon2=$argon2id$"));
        assert!(line.contains(":scram-sha-256=4096,"));
        assert!(line.ends_with(":cram-md5={PLAIN.b64}c2VjcmV0"));
        assert_eq!(Record::parse(&line).expect("parse"), r);
        let r = Record::new("bob@example.test", b"pw", false).expect("record");
        assert!(!r.to_line().contains("cram-md5"));
        assert_eq!(r.schemes(), ["argon2id", "scram-sha-256"]);
    }

    #[test]
    fn stored_scram_keys_match_rfc7677() {
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        let keys = ScramKeys::derive(b"pencil", &salt, 4096);
        let line = format!(
            "user@x.test:scram-sha-256=4096,W22ZaJ0SNY7soEsUEjb6gQ==,{},{}",
            BASE64.encode(keys.stored_key),
            BASE64.encode(keys.server_key)
        );
        let r = Record::parse(&line).expect("parse");
        assert_eq!(r.scram_sha256, Some(keys));
        assert_eq!(r.to_line(), line);
    }

    #[test]
    fn bad_lines_are_reported_without_content() {
        let good = Record::new("a@x.test", b"pw", false)
            .expect("record")
            .to_line();
        let text = format!(
            "# comment\n\n{good}\nnodomain:argon2=x\nb@x.test:secret=hunter2\nc@x.test\n\
             d@x.test:scram-sha-256=1,2\ne@x.test:cram-md5=hunter2\n{good}\n"
        );
        let (table, errors) = Table::parse(&text);
        assert_eq!(table.len(), 1);
        assert!(table.get("A@X.test").is_some());
        let lines: Vec<usize> = errors.iter().map(|e| e.0).collect();
        assert_eq!(lines, [4, 5, 6, 7, 8, 9]);
        assert!(
            errors.iter().all(|e| !e.1.contains("hunter2")),
            "{errors:?}"
        );
    }

    #[test]
    fn user_names_are_checked() {
        assert_eq!(normalize_user("A@B.c").expect("ok"), "a@b.c");
        for bad in ["a", "@b", "a@", "a@b@c", "a b@c", "a:b@c", "a@b\n", ""] {
            assert!(normalize_user(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn edits_are_atomic_and_keep_other_lines() {
        let dir = tempdir("edit");
        let path = dir.path().join("passwd");
        let alice = Record::new("alice@x.test", b"one", false).expect("record");
        edit(&path, Edit::Add(alice.clone())).expect("add");
        let mode = std::fs::metadata(&path).expect("stat").mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            edit(&path, Edit::Add(alice.clone())),
            Err(PasswdError::UserExists(_))
        ));
        let bob = Record::new("bob@x.test", b"two", true).expect("record");
        edit(&path, Edit::Add(bob.clone())).expect("add");
        let mut text = std::fs::read_to_string(&path).expect("read");
        text.push_str("# operator's note\n");
        std::fs::write(&path, &text).expect("write");

        let alice2 = Record::new("alice@x.test", b"three", false).expect("record");
        edit(&path, Edit::Replace(alice2.clone())).expect("replace");
        let table = load_strict(&path).expect("load");
        assert_eq!(table.get("alice@x.test"), Some(&alice2));
        assert_eq!(table.get("bob@x.test"), Some(&bob));
        assert!(
            std::fs::read_to_string(&path)
                .expect("read")
                .contains("# operator's note")
        );

        edit(&path, Edit::Delete("BOB@x.test".into())).expect("delete");
        assert!(matches!(
            edit(&path, Edit::Delete("bob@x.test".into())),
            Err(PasswdError::NoSuchUser(_))
        ));
        assert!(matches!(
            edit(&path, Edit::Replace(bob)),
            Err(PasswdError::NoSuchUser(_))
        ));
        let table = load_strict(&path).expect("load");
        assert_eq!(table.len(), 1);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn load_strict_reports_the_first_bad_line() {
        let dir = tempdir("strict");
        let path = dir.path().join("passwd");
        std::fs::write(&path, "# x\nbroken\n").expect("write");
        let err = load_strict(&path).expect_err("bad");
        assert!(matches!(err, PasswdError::Format { line: 2, .. }), "{err}");
    }
}
