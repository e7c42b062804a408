//! Version 1 of the envelope, read and converted to version 2: recipients
//! were serialised routing results (`{"kind":"local","user":…,"tag":…,
//! "domain":…}` or `{"kind":"remote","address":…}`).
//!
//! A local result becomes the address `user[DELIM tag]@domain`. The
//! delimiter is the one configured now ([`set_delimiter`], `+` until the
//! daemon or a command sets it): the file does not say which was used
//! when it was written, and delivery will split the tag with today's.

use std::sync::atomic::{AtomicU32, Ordering};

use serde::Deserialize;

use super::{Client, Envelope, FormatError, Recipient};

/// `0` for "no delimiter", otherwise the delimiter as a `char`'s value.
static DELIMITER: AtomicU32 = AtomicU32::new('+' as u32);

/// The recipient delimiter version 1 local recipients are converted with.
pub fn set_delimiter(delimiter: Option<char>) {
    DELIMITER.store(delimiter.map_or(0, u32::from), Ordering::Relaxed);
}

fn delimiter() -> Option<char> {
    char::from_u32(DELIMITER.load(Ordering::Relaxed)).filter(|&c| c != '\0')
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeV1 {
    #[allow(dead_code)]
    version: u32,
    id: String,
    arrival: f64,
    sender: String,
    recipients: Vec<RecipientV1>,
    prepend: String,
    client: Client,
    #[serde(default)]
    smtputf8: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipientV1 {
    original: String,
    destination: DestinationV1,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum DestinationV1 {
    Local {
        user: String,
        tag: Option<String>,
        domain: String,
    },
    Remote {
        address: String,
    },
}

/// Reads a version 1 envelope as version 2.
pub(super) fn read(json: &[u8]) -> Result<Envelope, FormatError> {
    let v1: EnvelopeV1 = serde_json::from_slice(json)
        .map_err(|e| FormatError::Corrupt(format!("envelope (version 1): {e}")))?;
    let recipients = v1
        .recipients
        .into_iter()
        .map(|r| {
            let address = match r.destination {
                DestinationV1::Local { user, tag, domain } => match (tag, delimiter()) {
                    (Some(t), Some(d)) => format!("{user}{d}{t}@{domain}"),
                    _ => format!("{user}@{domain}"),
                },
                DestinationV1::Remote { address } => address,
            };
            Recipient::new(address, r.original)
        })
        .collect();
    Ok(Envelope {
        version: super::ENVELOPE_VERSION,
        id: v1.id,
        arrival: v1.arrival,
        sender: v1.sender,
        recipients,
        prepend: v1.prepend,
        client: v1.client,
        smtputf8: v1.smtputf8,
        ret: None,
        envid: None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{decode, encode_tail};

    /// A queue file exactly as version 1 wrote it: content, envelope JSON,
    /// trailer.
    fn v1_file(json: &str, content: &[u8]) -> Vec<u8> {
        let mut file = content.to_vec();
        file.extend_from_slice(json.as_bytes());
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&file);
        file.extend_from_slice(&(content.len() as u64).to_le_bytes());
        file.extend_from_slice(&(json.len() as u64).to_le_bytes());
        file.extend_from_slice(&hasher.finalize().to_le_bytes());
        file.extend_from_slice(b"PSTRNQ01");
        file
    }

    const V1: &str = r#"{"version":1,"id":"00000000000000A1","arrival":5.0,"sender":"s@x.test","recipients":[{"original":"info@example.test","destination":{"kind":"local","user":"alice","tag":"news","domain":"example.test"}},{"original":"bob@example.test","destination":{"kind":"local","user":"bob","tag":null,"domain":"example.test"}},{"original":"far@dest.test","destination":{"kind":"remote","address":"far@dest.test"}}],"prepend":"Received: x\r\n","client":{"ip":"127.0.0.1","ptr":null,"helo":"h","auth_user":null,"listener":"mx"},"smtputf8":false}"#;

    #[test]
    fn a_version_1_file_reads_as_version_2() {
        let file = v1_file(V1, b"Subject: s\r\n\r\nbody\r\n");
        let (env, range) = decode(&file).unwrap();
        assert_eq!(&file[range.clone()], b"Subject: s\r\n\r\nbody\r\n");
        assert_eq!(env.version, 2);
        assert_eq!(env.id, "00000000000000A1");
        let got: Vec<(&str, &str)> = env
            .recipients
            .iter()
            .map(|r| (r.address.as_str(), r.original.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("alice+news@example.test", "info@example.test"),
                ("bob@example.test", "bob@example.test"),
                ("far@dest.test", "far@dest.test"),
            ]
        );
        assert!(env.recipients.iter().all(|r| r.notify.is_none()));
        // Written again, it is a version 2 file with the same content.
        let again = encode_tail(&file[range.clone()], &env);
        assert!(String::from_utf8_lossy(&again).contains("\"version\":2"));
    }
}
