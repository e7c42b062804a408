//! The SMTP client's TLS: one configuration that checks nothing but the
//! handshake's signatures (opportunistic and `encrypt`, as Postfix's
//! "Untrusted"/"Anonymous" connections, RFC 7435), and one that verifies
//! the certificate chain and the host name (`verify`).

use std::sync::Arc;

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

/// The system's CA bundle (Debian's ca-certificates).
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The client's two TLS configurations.
pub struct ClientTls {
    /// For `may` and `encrypt`: any certificate.
    pub any: Arc<ClientConfig>,
    /// For `verify`: a chain to a trusted CA, for the host's name.
    /// `None` if no CA could be read (then `verify` defers).
    pub verified: Option<Arc<ClientConfig>>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ClientTls {
    /// Builds both; the CAs come from `ca_file` or the system bundle.
    pub fn new(ca_file: Option<&std::path::Path>) -> anyhow::Result<ClientTls> {
        let provider = provider();
        let any = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("cannot set TLS versions")?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider.clone())))
            .with_no_client_auth();
        let path = ca_file.unwrap_or(std::path::Path::new(SYSTEM_CAS));
        let verified = match roots(path) {
            Ok(roots) => Some(Arc::new(
                ClientConfig::builder_with_provider(provider)
                    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                    .context("cannot set TLS versions")?
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )),
            // A configured file must be readable (`postern check` says so);
            // without one, `verify` is refused at delivery when used.
            Err(e) if ca_file.is_some() => return Err(e),
            Err(e) => {
                tracing::debug!("smtp client: no CA bundle: {e:#}");
                None
            }
        };
        Ok(ClientTls {
            any: Arc::new(any),
            verified,
        })
    }
}

fn roots(path: &std::path::Path) -> anyhow::Result<rustls::RootCertStore> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.with_context(|| format!("{}: bad PEM", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("{}: bad CA certificate", path.display()))?;
    }
    anyhow::ensure!(!roots.is_empty(), "{}: no certificate", path.display());
    Ok(roots)
}

/// Accepts any certificate, but still checks that the server holds its key
/// (the handshake signatures): encryption against passive listeners.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
