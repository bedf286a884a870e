//! TLS configuration from PEM files, for the adapters that serve TLS (rustls, with the
//! `ring` provider). Knows no HTTP: the application protocols to offer (ALPN) are given.
//!
//! Sessions resume across workers and across upgrades: [`server_config`] installs a
//! [`SharedTicketer`], whose session-ticket keys come from the [key ring](crate::keyring)
//! that every generation of workers shares. A client that comes back after an upgrade, or
//! to another worker, resumes instead of making a full handshake.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::keyring::{KeyRing, KeyRingError, TicketKey};

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
    /// The key ring for session tickets could not be read.
    #[error(transparent)]
    KeyRing(#[from] KeyRingError),
}

/// A server configuration from a PEM certificate chain and a PEM private key, offering the
/// application protocols `alpn` (for HTTP: `h2` and `http/1.1`), with session tickets from
/// the shared key ring ([`shared_ticketer`]).
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
    config.ticketer = shared_ticketer()?;
    Ok(Arc::new(config))
}

/// A session ticketer whose keys every worker of this master shares, across upgrades: from
/// [`KeyRing::from_env`]. Install it in a `rustls::ServerConfig` of your own.
///
/// # Errors
/// A [`KeyRingError`] naming the variable at fault (see [`KeyRing::from_env`]).
///
/// # Example
/// ```
/// # fn config() -> rustls::ServerConfig { unimplemented!() }
/// # fn f() -> Result<(), graceful_listener::keyring::KeyRingError> {
/// let mut config: rustls::ServerConfig = config();
/// config.ticketer = graceful_listener::tls::shared_ticketer()?;
/// # Ok(()) }
/// ```
pub fn shared_ticketer() -> Result<Arc<SharedTicketer>, KeyRingError> {
    Ok(Arc::new(SharedTicketer::new(KeyRing::from_env()?)))
}

/// The longest ticket decrypted; longer ones are refused before any work. A session's
/// state is a few hundred bytes, a few kilobytes with a client's certificate chain.
pub const MAX_TICKET_LEN: usize = 16 * 1024;

const NAME_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Session tickets sealed with ChaCha20-Poly1305 under the [`KeyRing`]'s ticket keys: the
/// key's 16-byte name, a random nonce, the sealed session (the name is authenticated too).
/// The name picks the key that opens a ticket: the current one or one still accepted (the
/// previous). A ticket lives as long as the ring's rotation period.
///
/// rustls' own `Ticketer` cannot be given a key, so every process made its own: a ticket
/// resumed only on the worker that issued it, and never after an upgrade.
///
/// # Example
/// ```
/// use graceful_listener::keyring::KeyRing;
/// use graceful_listener::tls::SharedTicketer;
/// use rustls::server::ProducesTickets;
///
/// let ring = KeyRing::from_shared_secret(&[7; 32]);
/// let (a, b) = (SharedTicketer::new(ring.clone()), SharedTicketer::new(ring));
/// let ticket = a.encrypt(b"a session").unwrap();
/// assert_eq!(b.decrypt(&ticket).as_deref(), Some(&b"a session"[..]));
/// ```
#[derive(Debug, Clone)]
pub struct SharedTicketer {
    ring: KeyRing,
}

impl SharedTicketer {
    /// A ticketer on `ring`'s ticket keys.
    pub fn new(ring: KeyRing) -> SharedTicketer {
        SharedTicketer { ring }
    }

    fn sealing_key(key: &TicketKey) -> Option<ring::aead::LessSafeKey> {
        ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, key.secret())
            .ok()
            .map(ring::aead::LessSafeKey::new)
    }
}

impl rustls::server::ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(self.ring.rotation().as_secs()).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.ring.ticket_keys();
        let key = Self::sealing_key(&keys.current)?;
        let nonce: [u8; NONCE_LEN] = crate::keyring::random().ok()?;
        let mut ticket = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        ticket.extend_from_slice(keys.current.name());
        ticket.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.seal_in_place_append_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(keys.current.name()),
            &mut sealed,
        )
        .ok()?;
        ticket.extend_from_slice(&sealed);
        (ticket.len() <= MAX_TICKET_LEN).then_some(ticket)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        // Attacker-controlled: bounded before any work, and never a panic.
        if cipher.len() < NAME_LEN + NONCE_LEN + TAG_LEN || cipher.len() > MAX_TICKET_LEN {
            return None;
        }
        let (name, rest) = cipher.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let keys = self.ring.ticket_keys();
        let found = keys.find(name)?;
        let key = Self::sealing_key(found)?;
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buffer = sealed.to_vec();
        let plain = key
            .open_in_place(nonce, ring::aead::Aad::from(name), &mut buffer)
            .ok()?;
        Some(plain.to_vec())
    }
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
    use crate::keyring::Record;
    use rustls::server::ProducesTickets;

    /// A master's ring at `record`, as a worker reads it (`EINHORN_KEYS_FD`).
    fn master_ring(record: &Record) -> (std::fs::File, KeyRing) {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::FileExt;
        let path = std::env::temp_dir().join(format!(
            "gl-tls-ring-{}-{}",
            std::process::id(),
            record.serial
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let _ = std::fs::remove_file(&path);
        file.write_all_at(&record.encode(), 0).unwrap();
        let ring = crate::keyring::from_fd(&file.as_raw_fd().to_string()).unwrap();
        (file, ring)
    }

    #[test]
    fn a_ticket_round_trips_and_the_previous_key_still_decrypts() {
        let before = Record::new_random(3600, 1_000).unwrap();
        let after = before.rotated(TicketKey::random(4_600).unwrap());
        let (_f1, old) = master_ring(&before);
        let (_f2, new) = master_ring(&after);
        let (old, new) = (SharedTicketer::new(old), SharedTicketer::new(new));
        assert_eq!(old.lifetime(), 3600);
        let ticket = old.encrypt(b"session state").unwrap();
        assert_eq!(ticket.len(), 16 + 12 + 13 + 16);
        assert_eq!(&ticket[..16], before.current.name());
        assert_eq!(old.decrypt(&ticket).unwrap(), b"session state");
        assert_eq!(
            new.decrypt(&ticket).unwrap(),
            b"session state",
            "the previous key decrypts"
        );
        // Two tickets of the same session differ (a random nonce each).
        assert_ne!(old.encrypt(b"session state").unwrap(), ticket);
        // Once rotated twice, a ticket of the first key no longer opens.
        let later = after.rotated(TicketKey::random(8_200).unwrap());
        let (_f3, later) = master_ring(&later);
        assert_eq!(SharedTicketer::new(later).decrypt(&ticket), None);
    }

    #[test]
    fn unknown_tampered_short_and_long_tickets_are_refused() {
        let ring = KeyRing::from_shared_secret(&[1; 32]);
        let t = SharedTicketer::new(ring);
        let ticket = t.encrypt(b"state").unwrap();
        let other = SharedTicketer::new(KeyRing::from_shared_secret(&[2; 32]));
        assert_eq!(other.decrypt(&ticket), None, "unknown key name");
        for at in 0..ticket.len() {
            let mut bad = ticket.clone();
            bad[at] ^= 0x01;
            assert_eq!(t.decrypt(&bad), None, "tampered at {at}");
        }
        for len in 0..16 + 12 + 16 {
            assert_eq!(
                t.decrypt(&ticket[..len.min(ticket.len())]),
                None,
                "short {len}"
            );
        }
        let mut long = ticket.clone();
        long.resize(MAX_TICKET_LEN + 1, 0);
        assert_eq!(t.decrypt(&long), None);
        assert_eq!(
            t.encrypt(&vec![0; MAX_TICKET_LEN]),
            None,
            "too long to hand out"
        );
        assert!(t.encrypt(&[]).is_some());
    }

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
