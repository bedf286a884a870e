//! TLS for tests: a certificate for 127.0.0.1 made on the spot (rcgen), its files for the
//! servers, and client configurations that trust it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A self-signed certificate for `127.0.0.1` and `localhost`, written as PEM files.
pub struct TestCertificate {
    /// The certificate's PEM file.
    pub cert: PathBuf,
    /// The private key's PEM file.
    pub key: PathBuf,
    der: rustls::pki_types::CertificateDer<'static>,
}

impl TestCertificate {
    /// Makes one and writes its files into `dir`.
    ///
    /// # Panics
    /// When the files cannot be written.
    pub fn new(dir: &Path) -> TestCertificate {
        let made = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])
        .expect("a certificate");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, made.cert.pem()).expect("write the certificate");
        std::fs::write(&key, made.signing_key.serialize_pem()).expect("write the key");
        TestCertificate {
            cert,
            key,
            der: made.cert.der().clone(),
        }
    }

    /// The examples' flags that serve it: `--tls-cert CERT --tls-key KEY`.
    pub fn worker_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".to_owned(),
            self.cert.display().to_string(),
            "--tls-key".to_owned(),
            self.key.display().to_string(),
        ]
    }

    /// A client configuration that trusts this certificate only, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).expect("a usable root");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}
