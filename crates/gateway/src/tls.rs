//! TLS on the gateway's own port (rustls through `tokio-rustls`): with
//! `--tls-cert` and `--tls-key` every connection is TLS, so the same port
//! serves `wss://` and `https://` (`/health`, `/metrics`, the demo app).
//!
//! The certificate chain and key are PEM files, read once at start (a renewed
//! certificate takes a `sbctl reload receive`, which has no downtime). Only the
//! `ring` provider is built: one provider, no C toolchain beyond what `ring`
//! needs, TLS 1.2 and 1.3 with rustls' safe defaults. ALPN offers `http/1.1`
//! (a WebSocket upgrade is an HTTP/1.1 request).

use anyhow::Context;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

/// Accepts TLS connections with the gateway's certificate.
#[derive(Clone)]
pub struct Tls(pub tokio_rustls::TlsAcceptor);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// Loads a PEM certificate chain (leaf first) and its PEM private key
    /// (PKCS#8, PKCS#1 or SEC1).
    ///
    /// # Errors
    ///
    /// A file that cannot be read, holds no certificate or no key, or a key
    /// that does not match the certificate.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("reading --tls-cert {}", cert.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing --tls-cert {}", cert.display()))?;
        if chain.is_empty() {
            anyhow::bail!("--tls-cert {}: no certificate in it", cert.display());
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("--tls-key {}: no readable private key", key.display()))?;
        Self::from_der(chain, key)
    }

    /// From DER: a certificate chain (leaf first) and its private key.
    ///
    /// # Errors
    ///
    /// The key does not match the certificate, or rustls refuses either.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("the TLS key does not fit the certificate")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
    }
}
