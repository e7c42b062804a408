//! The queue file: message content, then the envelope as JSON, then a
//! fixed trailer that makes a complete file recognisable.
//!
//! ```text
//! [content bytes][envelope JSON][content len u64 LE][envelope len u64 LE][crc32 u32 LE]["PSTRNQ01"]
//! ```
//!
//! Content comes first so that a large message can be streamed to disk as
//! it arrives and the envelope (which includes headers computed at the end
//! of DATA) appended last. A file without a valid trailer was never
//! acknowledged; a file whose CRC does not match is corrupt.

//!
//! Version 2 of the envelope keeps, for each recipient, a record of its
//! own: the address it goes to and the one it was given as, with its DSN
//! parameters; which transport takes it is decided by routing at delivery
//! time, so a new transport never changes this format. Version 1 files
//! (recipients as serialised routing results) are read and converted.

use serde::{Deserialize, Serialize};

use crate::dsn::{Notify, Ret};

mod v1;

pub use v1::set_delimiter as set_v1_delimiter;

const MAGIC: &[u8; 8] = b"PSTRNQ01";
const TRAILER: usize = 8 + 8 + 4 + 8;

/// Format version of [`Envelope`] written by this version.
pub const ENVELOPE_VERSION: u32 = 2;

/// Everything about a queued message except its content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// [`ENVELOPE_VERSION`].
    pub version: u32,
    /// Queue ID.
    pub id: String,
    /// Arrival time, seconds since the epoch.
    pub arrival: f64,
    /// Envelope sender; empty for `<>`.
    pub sender: String,
    /// Recipients with their destinations.
    pub recipients: Vec<Recipient>,
    /// Header lines (CRLF-terminated) to put before the content on delivery:
    /// `Received:`, and `Message-ID:`/`Date:` where the message lacked them.
    pub prepend: String,
    /// The client that handed us the message.
    pub client: Client,
    /// The envelope used SMTPUTF8.
    #[serde(default)]
    pub smtputf8: bool,
    /// `RET=` of MAIL FROM (RFC 3461).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<Ret>,
    /// `ENVID=` of MAIL FROM (RFC 3461), decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
}

/// One recipient of a queued message: where it goes, what it was given
/// as, and what its sender asked to be told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipient {
    /// The address it is delivered to, after alias expansion (with its
    /// `+tag`, as routing gave it).
    pub address: String,
    /// The address given in RCPT TO.
    pub original: String,
    /// `ORCPT=` (RFC 3461) as `addr-type;address`, decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<String>,
    /// `NOTIFY=` (RFC 3461); `None` without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
}

impl Recipient {
    /// A recipient without DSN parameters.
    pub fn new(address: impl Into<String>, original: impl Into<String>) -> Recipient {
        Recipient {
            address: address.into(),
            original: original.into(),
            orcpt: None,
            notify: None,
        }
    }

    /// What the sender wants reported for this recipient.
    pub fn notify(&self) -> Notify {
        self.notify.unwrap_or(Notify::DEFAULT)
    }
}

/// Who submitted the message (for logs and `queue list`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    /// Client IP address.
    pub ip: String,
    /// Verified PTR name.
    pub ptr: Option<String>,
    /// HELO/EHLO name.
    pub helo: Option<String>,
    /// SASL identity.
    pub auth_user: Option<String>,
    /// Listener name.
    pub listener: String,
}

/// Why a queue file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// No trailer: the file was never completed.
    #[error("incomplete queue file (no trailer)")]
    Incomplete,
    /// Trailer present but the checksum or lengths do not match.
    #[error("corrupt queue file: {0}")]
    Corrupt(String),
}

/// The bytes that follow the content in the file: envelope and trailer.
pub fn encode_tail(content: &[u8], env: &Envelope) -> Vec<u8> {
    encode_tail_crc(content, env).0
}

/// [`encode_tail`], and the CRC-32 of the whole file (content and tail),
/// taken on the same pass over the content (the journal's record checksum).
pub fn encode_tail_crc(content: &[u8], env: &Envelope) -> (Vec<u8>, u32) {
    let json = serde_json::to_vec(env).unwrap_or_default();
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(content);
    hasher.update(&json);
    let crc = hasher.clone().finalize();
    let mut out = Vec::with_capacity(json.len() + TRAILER);
    out.extend_from_slice(&json);
    out.extend_from_slice(&(content.len() as u64).to_le_bytes());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(MAGIC);
    hasher.update(&out[json.len()..]);
    (out, hasher.finalize())
}

/// Serialises content + envelope into the on-disk form.
pub fn encode(content: &[u8], env: &Envelope) -> Vec<u8> {
    let mut out = content.to_vec();
    out.extend_from_slice(&encode_tail(content, env));
    out
}

/// Reads only the envelope of a queue file and the content's length
/// (for listings: the content is neither read nor checksummed, so a
/// queue of 100,000 messages lists in envelope-sized reads).
pub fn read_envelope(file: &mut std::fs::File) -> Result<(Envelope, u64), FormatError> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |e: std::io::Error| FormatError::Corrupt(format!("read: {e}"));
    let size = file.metadata().map_err(io)?.len();
    if size < TRAILER as u64 {
        return Err(FormatError::Incomplete);
    }
    let mut t = [0u8; TRAILER];
    file.seek(SeekFrom::Start(size - TRAILER as u64))
        .map_err(io)?;
    file.read_exact(&mut t).map_err(io)?;
    let (content_len, env_len, _) = trailer(&t, size)?;
    let mut json = vec![0u8; usize::try_from(env_len).map_err(|_| FormatError::Incomplete)?];
    file.seek(SeekFrom::Start(content_len)).map_err(io)?;
    file.read_exact(&mut json).map_err(io)?;
    Ok((envelope_of(&json)?, content_len))
}

/// The envelope from its JSON, of either version.
fn envelope_of(json: &[u8]) -> Result<Envelope, FormatError> {
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    let version = serde_json::from_slice::<Version>(json)
        .map_err(|e| FormatError::Corrupt(format!("envelope: {e}")))?
        .version;
    match version {
        ENVELOPE_VERSION => {
            serde_json::from_slice(json).map_err(|e| FormatError::Corrupt(format!("envelope: {e}")))
        }
        1 => v1::read(json),
        v => Err(FormatError::Corrupt(format!(
            "envelope version {v} not supported"
        ))),
    }
}

/// The trailer of a file of `size` bytes: content length, envelope
/// length and CRC, checked against the magic and the file's size.
fn trailer(t: &[u8], size: u64) -> Result<(u64, u64, u32), FormatError> {
    if t.len() != TRAILER || &t[TRAILER - 8..] != MAGIC {
        return Err(FormatError::Incomplete);
    }
    let word = |i: usize| u64::from_le_bytes(t[i..i + 8].try_into().unwrap_or([0; 8]));
    let (content_len, env_len) = (word(0), word(8));
    let crc = u32::from_le_bytes(t[16..20].try_into().unwrap_or([0; 4]));
    if content_len.checked_add(env_len) != Some(size - TRAILER as u64) {
        return Err(FormatError::Corrupt(
            "lengths do not match file size".into(),
        ));
    }
    Ok((content_len, env_len, crc))
}

/// Parses a queue file, returning the envelope and the content's range.
pub fn decode(file: &[u8]) -> Result<(Envelope, std::ops::Range<usize>), FormatError> {
    if file.len() < TRAILER {
        return Err(FormatError::Incomplete);
    }
    let body_len = file.len() - TRAILER;
    let (content_len, _, crc) = trailer(&file[body_len..], file.len() as u64)?;
    if crc32fast::hash(&file[..body_len]) != crc {
        return Err(FormatError::Corrupt("checksum mismatch".into()));
    }
    let content_len = content_len as usize;
    let json = &file[content_len..body_len];
    Ok((envelope_of(json)?, 0..content_len))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Envelope {
        Envelope {
            version: ENVELOPE_VERSION,
            id: "0000000000000001".into(),
            arrival: 1.0,
            sender: "a@b.test".into(),
            recipients: vec![Recipient::new("alice@example.test", "alice@example.test")],
            prepend: "Received: x\r\n".into(),
            client: Client::default(),
            smtputf8: false,
            ret: None,
            envid: None,
        }
    }

    #[test]
    fn dsn_parameters_round_trip() {
        let mut env = sample();
        env.ret = Some(Ret::Hdrs);
        env.envid = Some("E1".into());
        env.recipients[0].orcpt = Some("rfc822;al@example.test".into());
        env.recipients[0].notify = Some(Notify {
            success: true,
            failure: false,
            delay: false,
        });
        let (back, _) = decode(&encode(b"\r\nx\r\n", &env)).unwrap();
        assert_eq!(back, env);
        assert_eq!(sample().recipients[0].notify(), Notify::DEFAULT);
    }

    #[test]
    fn a_version_it_does_not_know_is_corrupt_not_guessed() {
        let mut env = sample();
        env.version = 3;
        assert!(matches!(
            decode(&encode(b"\r\nx\r\n", &env)),
            Err(FormatError::Corrupt(e)) if e.contains("version 3")
        ));
    }

    #[test]
    fn roundtrip_and_damage() {
        let env = sample();
        let file = encode(b"Subject: hi\r\n\r\nbody\r\n", &env);
        let (_, crc) = encode_tail_crc(b"Subject: hi\r\n\r\nbody\r\n", &env);
        assert_eq!(crc, crc32fast::hash(&file));
        let (back, range) = decode(&file).unwrap();
        assert_eq!(back, env);
        assert_eq!(&file[range], b"Subject: hi\r\n\r\nbody\r\n");
        assert!(matches!(
            decode(&file[..file.len() - 1]),
            Err(FormatError::Incomplete)
        ));
        let mut bad = file.clone();
        bad[3] ^= 1;
        assert!(matches!(decode(&bad), Err(FormatError::Corrupt(_))));
    }

    #[test]
    fn the_envelope_alone_is_read_from_the_end_of_the_file() {
        use std::io::Write;
        let env = sample();
        let content = b"Subject: hi\r\n\r\nbody\r\n".repeat(1000);
        let path = std::env::temp_dir().join(format!("postern-env-{}", std::process::id()));
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&encode(&content, &env)).unwrap();
        let mut f = std::fs::File::open(&path).unwrap();
        let (back, size) = read_envelope(&mut f).unwrap();
        assert_eq!((back, size), (env.clone(), content.len() as u64));
        // A file cut short is incomplete, as decode says.
        let whole = encode(&content, &env);
        std::fs::write(&path, &whole[..whole.len() - 3]).unwrap();
        let mut f = std::fs::File::open(&path).unwrap();
        assert!(matches!(
            read_envelope(&mut f),
            Err(FormatError::Incomplete)
        ));
        let _ = std::fs::remove_file(&path);
    }
}
