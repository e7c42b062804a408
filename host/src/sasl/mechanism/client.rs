//! Client sides of CRAM-MD5 and SCRAM-SHA-256, for tests that play the
//! SMTP client against a backend.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The context the backends' tests authenticate in.
pub fn ctx() -> crate::sasl::AuthContext {
    crate::sasl::AuthContext {
        client_ip: "127.0.0.1".parse().expect("ip"),
        local_ip: "127.0.0.1".parse().expect("ip"),
        secured: true,
        service: "smtp".into(),
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("hmac");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// `user SP hex(HMAC-MD5(password, challenge))`.
pub fn cram_md5(user: &str, password: &str, challenge: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<md5::Md5>::new_from_slice(password.as_bytes()).expect("hmac");
    mac.update(challenge);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{user} {hex}").into_bytes()
}

/// A SCRAM-SHA-256 client without channel binding.
pub struct Scram {
    password: String,
    bare: String,
    auth_message: String,
    salted: [u8; 32],
}

impl Scram {
    /// The client and its client-first message.
    pub fn new(user: &str, password: &str, nonce: &str) -> (Scram, Vec<u8>) {
        let bare = format!(
            "n={},r={nonce}",
            user.replace('=', "=3D").replace(',', "=2C")
        );
        let first = format!("n,,{bare}").into_bytes();
        let client = Scram {
            password: password.to_owned(),
            bare,
            auth_message: String::new(),
            salted: [0; 32],
        };
        (client, first)
    }

    /// client-final for a server-first message.
    pub fn client_final(&mut self, server_first: &[u8]) -> Vec<u8> {
        let server_first = std::str::from_utf8(server_first).expect("utf8");
        let mut fields = server_first.split(',');
        let nonce = fields.next().and_then(|f| f.strip_prefix("r=")).expect("r");
        let salt = BASE64
            .decode(fields.next().and_then(|f| f.strip_prefix("s=")).expect("s"))
            .expect("salt");
        let iterations: u32 = fields
            .next()
            .and_then(|f| f.strip_prefix("i="))
            .expect("i")
            .parse()
            .expect("i");
        pbkdf2::pbkdf2_hmac::<Sha256>(
            self.password.as_bytes(),
            &salt,
            iterations,
            &mut self.salted,
        );
        let client_key = hmac_sha256(&self.salted, b"Client Key");
        let stored_key = Sha256::digest(client_key);
        let without_proof = format!("c=biws,r={nonce}");
        self.auth_message = format!("{},{server_first},{without_proof}", self.bare);
        let sig = hmac_sha256(&stored_key, self.auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect();
        format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes()
    }

    /// Whether the server-final message proves the server knows the keys.
    pub fn server_final_ok(&self, server_final: &[u8]) -> bool {
        let server_key = hmac_sha256(&self.salted, b"Server Key");
        let sig = hmac_sha256(&server_key, self.auth_message.as_bytes());
        server_final == format!("v={}", BASE64.encode(sig)).as_bytes()
    }
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `postern-<name>-<pid>` afresh.
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("postern-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
