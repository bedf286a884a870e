//! TLS configuration from PEM files, for the adapters that serve TLS (rustls, with the
//! `ring` provider). Knows no HTTP: the application protocols to offer (ALPN) are given.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS configuration could not be made. The message names the file at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error from the system.
        source: std::io::Error,
    },
    /// The path is not a regular file (a FIFO, a device, a directory, a socket): reading it
    /// could block forever (a FIFO nobody writes to) or never end (`/dev/zero`).
    #[error("cannot read {}: it is {kind}, not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is instead: `a FIFO`, `a directory`, ...
        kind: &'static str,
    },
    /// The certificate file holds no PEM certificate, or a malformed one.
    #[error("{} holds no usable PEM certificate: {reason}", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key file holds no PEM private key, or a malformed one.
    #[error("{} holds no usable PEM private key: {reason}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the certificate and key (they do not match, an unsupported key...).
    #[error("the certificate {} and key {} do not make a TLS configuration: {source}", cert.display(), key.display())]
    Config {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        source: rustls::Error,
    },
}

/// A server configuration from a PEM certificate chain and a PEM private key, offering the
/// application protocols `alpn` (for HTTP: `h2` and `http/1.1`).
///
/// # Errors
/// A [`TlsError`] naming the file that cannot be read or used.
///
/// # Example
/// ```no_run
/// let config = graceful_listener::tls::server_config(
///     "/etc/app/cert.pem",
///     "/etc/app/key.pem",
///     &[b"h2", b"http/1.1"],
/// )?;
/// # Ok::<(), graceful_listener::tls::TlsError>(())
/// ```
pub fn server_config(
    cert: impl AsRef<Path>,
    key: impl AsRef<Path>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (cert, key) = (cert.as_ref(), key.as_ref());
    // Both files are read before either is parsed: a key path at fault is named even when
    // the certificate is wrong too.
    let (cert_pem, key_pem) = (read_regular_file(cert)?, read_regular_file(key)?);
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Certificate {
            path: cert.to_owned(),
            reason: "no CERTIFICATE block".to_owned(),
        });
    }
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| {
            builder
                .with_no_client_auth()
                .with_single_cert(chain, private_key)
        })
        .map_err(|source| TlsError::Config {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Reads a whole file, if it is a regular file. It is opened non-blocking and checked before a
/// byte is read: opening a FIFO for reading waits for a writer, and reading a device may never
/// end, either of which would hang a worker's start with no word of why.
fn read_regular_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

    let failed = |source| TlsError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(failed)?;
    let kind = file.metadata().map_err(failed)?.file_type();
    if !kind.is_file() {
        let kind = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(TlsError::NotAFile {
            path: path.to_owned(),
            kind,
        });
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(failed)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `server_config` on a thread, so that a hang fails the test instead of holding it.
    fn config_within_a_bound(cert: PathBuf, key: PathBuf) -> Result<(), TlsError> {
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(server_config(&cert, &key, &[b"h2"]).map(drop));
        });
        result
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("server_config returned: it did not block on the file")
    }

    #[test]
    fn a_fifo_with_no_writer_is_named_not_waited_for() {
        let dir = std::env::temp_dir().join(format!("gl-tls-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("cert.pem");
        std::fs::write(&cert, "a regular file").unwrap();
        let fifo = dir.join("key.pem");
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = config_within_a_bound(cert.clone(), fifo.clone()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot read {}: it is a FIFO, not a regular file",
                fifo.display()
            )
        );
        let err = config_within_a_bound(dir.clone(), cert).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot read {}: it is a directory, not a regular file",
                dir.display()
            )
        );
        let err = config_within_a_bound("/dev/zero".into(), fifo).unwrap_err();
        assert!(
            matches!(
                err,
                TlsError::NotAFile {
                    kind: "a character device",
                    ..
                }
            ),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
