//! TLS with rustls: certificates chosen by SNI, reloaded without restart,
//! TLS 1.2 and 1.3 with rustls' modern AEAD suites only, and the stream
//! type that lets a plain connection become a TLS one (STARTTLS).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::Config;
use crate::privileges::write_through_new;

/// One certificate with where it came from.
#[derive(Debug, Clone)]
struct CertSource {
    cert: PathBuf,
    key: PathBuf,
    names: Vec<String>,
}

/// The certificates currently served.
#[derive(Debug)]
struct CertSet {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

/// SNI resolver over a swappable certificate set.
#[derive(Debug)]
struct Resolver {
    set: ArcSwap<CertSet>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.set.load();
        if let Some(name) = hello.server_name() {
            let name = name.to_ascii_lowercase();
            if let Some(k) = set.by_name.get(&name) {
                return Some(k.clone());
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some(k) = set.by_name.get(&format!("*.{parent}"))
            {
                return Some(k.clone());
            }
        }
        Some(set.default.clone())
    }
}

/// The daemon's TLS state: acceptor plus what is needed to reload.
pub struct Tls {
    resolver: Arc<Resolver>,
    acceptor: TlsAcceptor,
    sources: std::sync::Mutex<(Vec<CertSource>, Vec<FileStamp>)>,
}

/// What a file looked like just before it was last read: a renewal that
/// replaces it (new inode), rewrites it (size, change time) or touches it
/// changes at least one of these, even when it keeps the modification
/// time (`cp -p`, `install -p`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
    changed: (i64, i64),
}

/// A file and its stamp (`None` if it could not be looked at).
type FileStamp = (PathBuf, Option<Stamp>);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("resolver", &self.resolver)
            .finish()
    }
}

/// How certificate and key files are read (a test stands in for
/// `std::fs::read` to land a renewal in the middle of a load).
type Read<'a> = &'a dyn Fn(&Path) -> io::Result<Vec<u8>>;

fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    std::fs::read(path)
}

fn load_key(source: &CertSource, read: Read<'_>) -> anyhow::Result<Arc<CertifiedKey>> {
    let cert_pem = read(&source.cert)
        .with_context(|| format!("cannot read certificate {}", source.cert.display()))?;
    let key_pem =
        read(&source.key).with_context(|| format!("cannot read key {}", source.key.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: bad PEM", source.cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no certificate in the file", source.cert.display());
    }
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .with_context(|| format!("{}: bad PEM", source.key.display()))?
        .with_context(|| format!("{}: no private key in the file", source.key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .with_context(|| format!("{}: unsupported key type", source.key.display()))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().with_context(|| {
        format!(
            "{} does not match {}",
            source.key.display(),
            source.cert.display()
        )
    })?;
    Ok(Arc::new(ck))
}

/// Loads every certificate, stamping the files first: a renewal landing
/// while they are read leaves stamps older than the files, so the next
/// check loads them again instead of missing it.
fn load(sources: &[CertSource], read: Read<'_>) -> anyhow::Result<(CertSet, Vec<FileStamp>)> {
    let before = stamps(sources);
    let set = load_set(sources, read)?;
    Ok((set, before))
}

fn load_set(sources: &[CertSource], read: Read<'_>) -> anyhow::Result<CertSet> {
    let mut default = None;
    let mut by_name = HashMap::new();
    for s in sources {
        let key = load_key(s, read)?;
        if s.names.is_empty() {
            default = Some(key);
        } else {
            for n in &s.names {
                by_name.insert(n.to_ascii_lowercase(), key.clone());
            }
        }
    }
    let default = default
        .or_else(|| by_name.values().next().cloned())
        .context("no certificate configured")?;
    Ok(CertSet { default, by_name })
}

fn stamps(sources: &[CertSource]) -> Vec<FileStamp> {
    use std::os::unix::fs::MetadataExt as _;
    sources
        .iter()
        .flat_map(|s| [s.cert.clone(), s.key.clone()])
        .map(|p| {
            // Through links, as the files are read (certbot's live/ links).
            let stamp = std::fs::metadata(&p).ok().map(|m| Stamp {
                dev: m.dev(),
                ino: m.ino(),
                len: m.len(),
                modified: m.modified().ok(),
                changed: (m.ctime(), m.ctime_nsec()),
            });
            (p, stamp)
        })
        .collect()
}

/// Writes a self-signed certificate for `hostname` unless one exists.
fn self_signed(dir: &Path, hostname: &str) -> anyhow::Result<CertSource> {
    let cert = dir.join("selfsigned.crt");
    let key = dir.join("selfsigned.key");
    if !cert.exists() || !key.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut params = rcgen::CertificateParams::new(vec![hostname.to_string()])
            .context("cannot generate a self-signed certificate")?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, hostname.to_string());
        let key_pair = rcgen::KeyPair::generate().context("cannot generate a key")?;
        let cert_pem = params
            .self_signed(&key_pair)
            .context("cannot sign the self-signed certificate")?
            .pem();
        // The key private from its first byte.
        let key_tmp = dir.join("selfsigned.key.tmp");
        write_through_new(&key_tmp, &key, 0o600, key_pair.serialize_pem().as_bytes())?;
        let cert_tmp = dir.join("selfsigned.crt.tmp");
        write_through_new(&cert_tmp, &cert, 0o644, cert_pem.as_bytes())?;
        tracing::warn!(
            "tls: no certificate configured; generated a self-signed one for {hostname} in {} (fine for testing, not for the Internet)",
            dir.display()
        );
    }
    Ok(CertSource {
        cert,
        key,
        names: Vec::new(),
    })
}

/// Certificates loaded by [`Tls::prepare`], not yet in use.
pub struct Certificates {
    sources: Vec<CertSource>,
    set: CertSet,
    stamps: Vec<FileStamp>,
}

impl Tls {
    /// Sets up TLS if any listener uses it; `None` otherwise.
    pub fn from_config(config: &Config) -> anyhow::Result<Option<Arc<Tls>>> {
        if !config.uses_tls() {
            return Ok(None);
        }
        let sources = sources(config)?;
        let (set, stamps) = load(&sources, &read_file)?;
        let resolver = Arc::new(Resolver {
            set: ArcSwap::from_pointee(set),
        });
        // rustls offers TLS 1.2 and 1.3 only, with AEAD suites and (EC)DHE
        // key exchange: nothing weak to switch off.
        let server =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .context("cannot set TLS versions")?
                .with_no_client_auth()
                .with_cert_resolver(resolver.clone());
        Ok(Some(Arc::new(Tls {
            resolver,
            acceptor: TlsAcceptor::from(Arc::new(server)),
            sources: std::sync::Mutex::new((sources, stamps)),
        })))
    }

    /// Reads and checks every certificate and key the config names, as a
    /// start would, but makes no self-signed one (`postern check`).
    pub fn check_files(config: &Config) -> anyhow::Result<()> {
        if !config.uses_tls() {
            return Ok(());
        }
        for source in configured(config) {
            load_key(&source, &read_file)?;
        }
        Ok(())
    }

    /// The acceptor for handshakes.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Loads the certificates of `config` for a reload, without using
    /// them yet: a reload puts them in use ([`Tls::install`]) only once the
    /// whole new generation is built, so a failed reload changes nothing.
    pub fn prepare(&self, config: &Config) -> anyhow::Result<Certificates> {
        let sources = sources(config)?;
        let (set, stamps) = load(&sources, &read_file)?;
        Ok(Certificates {
            sources,
            set,
            stamps,
        })
    }

    /// Puts certificates from [`Tls::prepare`] in use for new handshakes.
    pub fn install(&self, certs: Certificates) {
        self.resolver.set.store(Arc::new(certs.set));
        *self.sources.lock().unwrap_or_else(|p| p.into_inner()) = (certs.sources, certs.stamps);
    }

    /// Reloads if any certificate or key file changed since the last load
    /// (reads files: call it off the async workers).
    pub fn reload_if_changed(&self) {
        let mut guard = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if stamps(&guard.0) == guard.1 {
            return;
        }
        match load(&guard.0, &read_file) {
            Ok((set, stamps)) => {
                self.resolver.set.store(Arc::new(set));
                guard.1 = stamps;
                tracing::info!("tls: certificate files changed; reloaded");
            }
            // Maybe half-written (cert replaced before key): try again later.
            Err(e) => {
                tracing::warn!("tls: certificate files changed but cannot be loaded yet: {e:#}")
            }
        }
    }
}

/// The certificates the config names: the default (if both files are
/// set) and the SNI ones.
fn configured(config: &Config) -> Vec<CertSource> {
    let t = &config.tls;
    let mut sources = Vec::new();
    if let Some((cert, key)) = t.default_pair() {
        sources.push(CertSource {
            cert: cert.clone(),
            key: key.clone(),
            names: Vec::new(),
        });
    }
    for s in &t.sni {
        sources.push(CertSource {
            cert: s.certificate.clone(),
            key: s.key.clone(),
            names: s.names.clone(),
        });
    }
    sources
}

/// What the daemon loads: the configured certificates, with a self-signed
/// default made (once) when none is configured.
fn sources(config: &Config) -> anyhow::Result<Vec<CertSource>> {
    let mut sources = configured(config);
    if config.tls.default_pair().is_none() {
        let dir = config.server.spool_dir.join("tls");
        sources.insert(0, self_signed(&dir, &config.server.hostname)?);
    }
    Ok(sources)
}

/// Negotiated TLS parameters, for logs, `Received:` and plugins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: String,
    /// IANA cipher suite name.
    pub cipher: String,
    /// Symmetric key bits.
    pub bits: u16,
    /// SNI name the client asked for.
    pub sni: Option<String>,
}

impl TlsInfo {
    /// Reads the parameters of an established connection.
    pub fn of(stream: &TlsStream<TcpStream>) -> TlsInfo {
        let (_, conn) = stream.get_ref();
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            Some(v) => format!("{v:?}"),
            None => "unknown".to_string(),
        };
        // rustls spells TLS 1.3 suites TLS13_*; use the IANA names.
        let cipher = conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .map(|n| match n.strip_prefix("TLS13_") {
                Some(rest) => format!("TLS_{rest}"),
                None => n.to_string(),
            })
            .unwrap_or_else(|| "unknown".to_string());
        let bits = if cipher.contains("AES_128") { 128 } else { 256 };
        TlsInfo {
            version,
            cipher,
            bits,
            sni: conn.server_name().map(str::to_string),
        }
    }

    /// Postfix's `Received:` comment form.
    pub fn received_comment(&self) -> String {
        format!(
            "{} with cipher {} ({}/{} bits)",
            self.version, self.cipher, self.bits, self.bits
        )
    }
}

/// A client connection, plain or TLS.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
    /// Transient state during the STARTTLS handshake.
    Upgrading,
}

impl Stream {
    /// Runs a TLS handshake on a plain stream.
    pub async fn upgrade(self, acceptor: &TlsAcceptor) -> io::Result<Stream> {
        match self {
            Stream::Plain(tcp) => Ok(Stream::Tls(Box::new(acceptor.accept(tcp).await?))),
            other => Err(io::Error::other(format!("cannot upgrade {other:?}"))),
        }
    }

    /// The TLS parameters, when TLS is active.
    pub fn tls_info(&self) -> Option<TlsInfo> {
        match self {
            Stream::Tls(s) => Some(TlsInfo::of(s)),
            _ => None,
        }
    }
}

fn upgrading() -> io::Error {
    io::Error::other("stream is being upgraded to TLS")
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("postern-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn a_renewal_landing_during_a_load_is_seen_by_the_next_check() {
        let dir = temp("renewal");
        let current = self_signed(&dir.join("current"), "mx.test").expect("certificate");
        let renewed = self_signed(&dir.join("renewed"), "mx.test").expect("certificate");
        let sources = vec![current.clone()];
        // The renewal lands right after the old pair was read: the load
        // serves the old pair, and must not stamp it with the new files.
        let landed = std::cell::Cell::new(false);
        let read = |p: &Path| {
            let data = std::fs::read(p);
            if p == current.key && !landed.replace(true) {
                std::fs::rename(&renewed.cert, &current.cert).expect("renew cert");
                std::fs::rename(&renewed.key, &current.key).expect("renew key");
            }
            data
        };
        let stamped_before = stamps(&sources);
        let (_, kept) = load(&sources, &read).expect("old pair");
        assert!(landed.get());
        assert_eq!(kept, stamped_before);
        assert_ne!(
            stamps(&sources),
            stamped_before,
            "the renewed files must look changed"
        );
        // Loaded again (as the next check does), the renewal is served.
        let (_, kept) = load(&sources, &read_file).expect("renewed pair");
        assert_eq!(kept, stamps(&sources));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_rewrite_keeping_the_modification_time_is_a_change() {
        let dir = temp("keep-mtime");
        let source = self_signed(&dir, "mx.test").expect("certificate");
        let sources = vec![source.clone()];
        let before = stamps(&sources);
        let mtime = std::fs::metadata(&source.cert)
            .and_then(|m| m.modified())
            .expect("mtime");
        let pem = std::fs::read(&source.cert).expect("read");
        // File times come from a coarse clock (a jiffy, 1-10 ms): let it
        // move on, so that the rewrite gets another change time.
        std::thread::sleep(std::time::Duration::from_millis(50));
        // Rewritten in place (same inode, same size), then the old
        // modification time put back, as `cp -p` does.
        std::fs::write(&source.cert, &pem).expect("rewrite");
        std::fs::File::options()
            .write(true)
            .open(&source.cert)
            .and_then(|f| f.set_modified(mtime))
            .expect("set mtime");
        assert_ne!(stamps(&sources), before);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
