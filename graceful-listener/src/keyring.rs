//! Secret keys every generation of workers shares: TLS session-ticket keys, and keys derived
//! for any other purpose (QUIC's reset key, its token key, ...).
//!
//! A worker that makes its own keys cannot decrypt what its siblings or its predecessors
//! issued: every upgrade turns every returning TLS client into a full handshake. So the
//! ring comes, in this order, from:
//! 1. [`KEYS_FD`]: einhorn-master makes the keys once, keeps them across its own re-execs,
//!    rotates the ticket key on a schedule (`--key-rotation`), and hands every worker a
//!    read-only memory file holding them (a [`Record`]; nothing on disk, nothing in the
//!    environment in clear). Workers read it again when their copy is older than
//!    [`REFRESH`]: no system call per handshake.
//! 2. [`KEY_FILE`]: a file the operator names (mode `0600` or stricter, at least 32 bytes),
//!    for the real Einhorn, systemd, or a fleet of hosts: ticket keys derive from its secret
//!    per epoch (the Unix time divided by [`DEFAULT_ROTATION`]), so every host that shares
//!    the file agrees, and the previous epoch's key (and the next one's, for clocks a little
//!    apart) still decrypts.
//! 3. Otherwise, a random secret of this process's own, with the same epochs: sessions
//!    resume on this process only.
//!
//! When [`KEYS_FD`] is set but unusable, [`KeyRing::from_env`] logs a warning and fails
//! with a typed error rather than make keys of its own: a worker that silently stopped
//! sharing keys would turn every resumption into a full handshake with no word of why.
//!
//! [`KeyRing::stable_key`] derives a key for one purpose from the ring's stable secret, so
//! that every worker given the same ring derives the same key.
//!
//! # Example
//! ```
//! use graceful_listener::keyring::KeyRing;
//!
//! let ring = KeyRing::from_env()?;
//! // Under einhorn-master: "master"; with GRACEFUL_LISTENER_KEY_FILE: "key file".
//! println!("keys from {}, rotated every {:?}", ring.origin(), ring.rotation());
//! let token_key: [u8; 32] = ring.stable_key("quic token");
//! # let _ = token_key;
//! # Ok::<(), graceful_listener::keyring::KeyRingError>(())
//! ```

mod record;

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{BorrowedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use ring::hkdf;

pub use record::{FORMAT, MAGIC, MAX_ROTATION_SECS, RECORD_LEN, Record, RecordError, TicketKey};

pub use crate::env::KEYS_FD;

/// `GRACEFUL_LISTENER_KEY_FILE`: a file whose content is the secret every worker (and every
/// host) that reads it shares, when no master hands over a ring ([`KEYS_FD`]).
pub const KEY_FILE: &str = "GRACEFUL_LISTENER_KEY_FILE";

/// The ticket-key rotation period of a ring without a master (a key file, or one of this
/// process's own), and einhorn-master's default: 6 hours, as rustls' own ticketer.
pub const DEFAULT_ROTATION: Duration = Duration::from_secs(6 * 60 * 60);

/// How old a worker's copy of its master's ring may get before it is read again.
pub const REFRESH: Duration = Duration::from_secs(1);

/// The shortest key file accepted, in bytes.
pub const MIN_KEY_FILE_LEN: u64 = 32;

/// The longest key file read, in bytes.
const MAX_KEY_FILE_LEN: u64 = 64 * 1024;

/// How many times a read that raced a rotation (a bad checksum) is tried again.
const TORN_READ_RETRIES: usize = 16;

/// The keys this worker shares with its siblings and with the generations before and after it.
#[derive(Clone)]
pub struct KeyRing {
    stable: [u8; 32],
    source: Arc<Source>,
}

/// Where the ticket keys come from.
enum Source {
    /// The master's memory file, and the copy last read of it.
    Master {
        file: File,
        fd: RawFd,
        cache: RwLock<(Instant, Record)>,
    },
    /// Keys derived per epoch from a secret (a key file's, or a random one).
    Epochs {
        secret: [u8; 32],
        rotation: Duration,
        origin: &'static str,
    },
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("source", &self.origin())
            .field("rotation", &self.rotation())
            .finish_non_exhaustive()
    }
}

/// The key ring named by the environment could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyRingError {
    /// The system has no randomness to make a key with.
    #[error("cannot make a random key: the system's random source failed")]
    Random,
    /// [`KEYS_FD`] is not an fd number above stderr.
    #[error("{KEYS_FD}={value:?}: not a file descriptor number above 2")]
    FdInvalid {
        /// The value found.
        value: String,
    },
    /// [`KEYS_FD`] names an fd that is not open, or not a readable regular file.
    #[error("{KEYS_FD}={fd}: {reason}")]
    FdUnusable {
        /// The fd.
        fd: RawFd,
        /// What is wrong with it.
        reason: String,
    },
    /// The ring behind [`KEYS_FD`] is not one (its message names the variable).
    #[error("{source} (fd {fd})")]
    Record {
        /// The fd.
        fd: RawFd,
        /// What is wrong with it.
        source: RecordError,
    },
    /// The [`KEY_FILE`] cannot be read.
    #[error("{KEY_FILE}={}: {source}", path.display())]
    KeyFileRead {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The [`KEY_FILE`] is not a regular file.
    #[error("{KEY_FILE}={}: not a regular file", path.display())]
    KeyFileNotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The [`KEY_FILE`] can be read by its group or by others.
    #[error("{KEY_FILE}={}: readable by group or others (mode {mode:o}): make it 0600 or stricter", path.display())]
    KeyFileMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The [`KEY_FILE`] holds fewer than [`MIN_KEY_FILE_LEN`] bytes, or more than 64 KiB.
    #[error("{KEY_FILE}={}: {len} bytes; a key file holds 32 bytes to 64 KiB of random data", path.display())]
    KeyFileLength {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
}

/// The ticket keys in use now: the one that encrypts, and the others that still decrypt.
#[derive(Clone, Debug)]
pub struct TicketKeys {
    /// Encrypts new tickets (and decrypts them).
    pub current: TicketKey,
    /// Still decrypt: the previous key (and, for a key file, the next epoch's).
    pub accepted: Vec<TicketKey>,
    /// How long a ticket stays useful: the rotation period.
    pub lifetime: Duration,
}

impl TicketKeys {
    /// The key named `name`, if it is current or accepted.
    pub fn find(&self, name: &[u8]) -> Option<&TicketKey> {
        std::iter::once(&self.current)
            .chain(&self.accepted)
            .find(|key| key.name().as_slice() == name)
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// `len` bytes of HKDF-SHA256 from `secret`, for `info`.
fn derive<const N: usize>(secret: &[u8], salt: &[u8], info: &[&[u8]]) -> [u8; N] {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(secret);
    let mut out = [0u8; N];
    prk.expand(info, Len(N))
        .and_then(|okm| okm.fill(&mut out))
        .expect("up to 255 * 32 bytes is a valid HKDF-SHA256 output length");
    out
}

/// The ticket keys of epoch `now_secs / rotation` from `secret`: the same on every host that
/// shares the secret. Pure.
fn epoch_keys(secret: &[u8; 32], rotation: Duration, now_secs: u64) -> TicketKeys {
    let period = rotation.as_secs().max(1);
    let epoch = now_secs / period;
    let key = |epoch: u64| {
        let at = epoch.to_be_bytes();
        TicketKey::new(
            derive(secret, b"graceful-listener ticket name", &[&at]),
            derive(secret, b"graceful-listener ticket key", &[&at]),
            epoch.saturating_mul(period),
        )
    };
    let mut accepted = Vec::with_capacity(2);
    if let Some(previous) = epoch.checked_sub(1) {
        accepted.push(key(previous));
    }
    if let Some(next) = epoch.checked_add(1) {
        accepted.push(key(next));
    }
    TicketKeys {
        current: key(epoch),
        accepted,
        lifetime: Duration::from_secs(period),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `N` bytes from the system's random source.
pub(crate) fn random<const N: usize>() -> Result<[u8; N], KeyRingError> {
    let mut bytes = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| KeyRingError::Random)?;
    Ok(bytes)
}

impl TicketKey {
    /// A new random key (name and secret), made at `created` (Unix seconds).
    ///
    /// # Errors
    /// [`KeyRingError::Random`].
    pub fn random(created: u64) -> Result<TicketKey, KeyRingError> {
        Ok(TicketKey::new(random()?, random()?, created))
    }
}

impl Record {
    /// A new ring, its secrets random, rotated every `rotation_secs`, made at `now` (Unix
    /// seconds): what a master makes once.
    ///
    /// # Errors
    /// [`KeyRingError::Random`].
    pub fn new_random(rotation_secs: u64, now: u64) -> Result<Record, KeyRingError> {
        Ok(Record {
            serial: 0,
            rotation_secs: rotation_secs.clamp(1, MAX_ROTATION_SECS),
            stable: random()?,
            current: TicketKey::random(now)?,
            previous: None,
        })
    }
}

/// Reads the record behind `file` (`fd`), again while a read races a write (bounded).
fn read_record(file: &File, fd: RawFd) -> Result<Record, KeyRingError> {
    let mut bytes = [0u8; RECORD_LEN];
    let mut last = RecordError::Checksum;
    for _ in 0..TORN_READ_RETRIES {
        let n = file
            .read_at(&mut bytes, 0)
            .map_err(|e| KeyRingError::FdUnusable {
                fd,
                reason: format!("cannot read it: {e}"),
            })?;
        match Record::parse(&bytes[..n]) {
            Ok(record) => return Ok(record),
            Err(RecordError::Checksum) => std::thread::yield_now(),
            Err(source) => return Err(KeyRingError::Record { fd, source }),
        }
        last = RecordError::Checksum;
    }
    Err(KeyRingError::Record { fd, source: last })
}

/// Takes the master's ring from fd `value`: checked, duplicated (close-on-exec; the
/// inherited number is made close-on-exec too, so this worker's children do not get it).
pub(crate) fn from_fd(value: &str) -> Result<KeyRing, KeyRingError> {
    let fd: RawFd = value
        .trim()
        .parse()
        .ok()
        .filter(|&fd| fd > 2)
        .ok_or_else(|| KeyRingError::FdInvalid {
            value: value.to_owned(),
        })?;
    let unusable = |reason: String| KeyRingError::FdUnusable { fd, reason };
    // SAFETY: F_GETFD reads the descriptor flags of a number; a closed one fails (EBADF).
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(unusable(format!(
            "not an open file descriptor ({})",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: the fd is open (checked above) and only borrowed to duplicate it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let file = File::from(
        borrowed
            .try_clone_to_owned()
            .map_err(|e| unusable(format!("cannot duplicate it: {e}")))?,
    );
    let meta = file
        .metadata()
        .map_err(|e| unusable(format!("cannot stat it: {e}")))?;
    if !meta.file_type().is_file() {
        return Err(unusable("not a memory file or a regular file".to_owned()));
    }
    // SAFETY: F_SETFD on an open fd, only its close-on-exec flag added.
    unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    let record = read_record(&file, fd)?;
    Ok(KeyRing {
        stable: record.stable,
        source: Arc::new(Source::Master {
            file,
            fd,
            cache: RwLock::new((Instant::now(), record)),
        }),
    })
}

/// Reads a key file: a regular file, readable by its owner only, of 32 bytes to 64 KiB.
fn key_file_secret(path: &Path) -> Result<[u8; 32], KeyRingError> {
    use std::io::Read;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    let failed = |source| KeyRingError::KeyFileRead {
        path: path.to_owned(),
        source,
    };
    // Non-blocking: a FIFO named by mistake is refused below, not waited on.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(failed)?;
    let meta = file.metadata().map_err(failed)?;
    if !meta.file_type().is_file() {
        return Err(KeyRingError::KeyFileNotAFile {
            path: path.to_owned(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyRingError::KeyFileMode {
            path: path.to_owned(),
            mode,
        });
    }
    let len = meta.len();
    if !(MIN_KEY_FILE_LEN..=MAX_KEY_FILE_LEN).contains(&len) {
        return Err(KeyRingError::KeyFileLength {
            path: path.to_owned(),
            len,
        });
    }
    let mut content = Vec::new();
    file.take(MAX_KEY_FILE_LEN)
        .read_to_end(&mut content)
        .map_err(failed)?;
    if (content.len() as u64) < MIN_KEY_FILE_LEN {
        return Err(KeyRingError::KeyFileLength {
            path: path.to_owned(),
            len: content.len() as u64,
        });
    }
    Ok(derive(&content, b"graceful-listener key file", &[]))
}

impl KeyRing {
    /// The ring this process was given ([`KEYS_FD`], else [`KEY_FILE`]), or one of its own.
    /// Read once per process: later calls return the same ring (an error is not kept: the
    /// next call tries again).
    ///
    /// # Errors
    /// A [`KeyRingError`] naming the variable and what is wrong: [`KEYS_FD`] set but not a
    /// readable ring (warned about, too), a [`KEY_FILE`] that cannot be read, is readable by
    /// others or is too short, or no randomness.
    ///
    /// ```
    /// let ring = graceful_listener::keyring::KeyRing::from_env()?;
    /// assert_eq!(ring.stable_key("quic reset"), ring.stable_key("quic reset"));
    /// assert_ne!(ring.stable_key("quic reset"), ring.stable_key("quic token"));
    /// # Ok::<(), graceful_listener::keyring::KeyRingError>(())
    /// ```
    pub fn from_env() -> Result<KeyRing, KeyRingError> {
        static RING: OnceLock<KeyRing> = OnceLock::new();
        if let Some(ring) = RING.get() {
            return Ok(ring.clone());
        }
        let ring = KeyRing::from_vars(|name| std::env::var_os(name))?;
        Ok(RING.get_or_init(|| ring).clone())
    }

    /// As [`KeyRing::from_env`], with the variables from `var`, not cached.
    fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Result<KeyRing, KeyRingError> {
        if let Some(value) = var(KEYS_FD) {
            let value = value.to_string_lossy();
            return match from_fd(&value) {
                Ok(ring) => {
                    tracing::debug!(fd = %value, "TLS ticket keys: the master's key ring ({KEYS_FD})");
                    Ok(ring)
                }
                Err(e) => {
                    tracing::warn!("{e}: the master's key ring cannot be used");
                    Err(e)
                }
            };
        }
        if let Some(path) = var(KEY_FILE) {
            let path = PathBuf::from(path);
            let secret = key_file_secret(&path)?;
            tracing::info!(path = %path.display(), "TLS ticket keys: derived from the key file ({KEY_FILE})");
            return Ok(KeyRing::from_secret(secret, "key file"));
        }
        tracing::debug!(
            "TLS ticket keys: this process's own (neither {KEYS_FD} nor {KEY_FILE} is set): sessions resume on this process only"
        );
        Ok(KeyRing::from_secret(random()?, "random"))
    }

    fn from_secret(secret: [u8; 32], origin: &'static str) -> KeyRing {
        KeyRing {
            stable: derive(&secret, b"graceful-listener stable", &[]),
            source: Arc::new(Source::Epochs {
                secret,
                rotation: DEFAULT_ROTATION,
                origin,
            }),
        }
    }

    /// A ring whose keys derive from `secret`, as from a [`KEY_FILE`] holding it: two rings
    /// made from the same secret share every key.
    ///
    /// ```
    /// use graceful_listener::keyring::KeyRing;
    /// let (a, b) = (KeyRing::from_shared_secret(b"0123456789abcdef0123456789abcdef"),
    ///               KeyRing::from_shared_secret(b"0123456789abcdef0123456789abcdef"));
    /// assert_eq!(a.stable_key("x"), b.stable_key("x"));
    /// assert_eq!(a.ticket_keys().current.name(), b.ticket_keys().current.name());
    /// ```
    pub fn from_shared_secret(secret: &[u8]) -> KeyRing {
        KeyRing::from_secret(
            derive(secret, b"graceful-listener key file", &[]),
            "key file",
        )
    }

    /// Where the ring came from: `master`, `key file` or `random`.
    pub fn origin(&self) -> &'static str {
        match &*self.source {
            Source::Master { .. } => "master",
            Source::Epochs { origin, .. } => origin,
        }
    }

    /// The ticket-key rotation period: the lifetime of a ticket.
    pub fn rotation(&self) -> Duration {
        match &*self.source {
            Source::Master { cache, .. } => Duration::from_secs(
                cache
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .1
                    .rotation_secs,
            ),
            Source::Epochs { rotation, .. } => *rotation,
        }
    }

    /// The ticket keys in use now. From a master's ring, its copy is read again when older
    /// than [`REFRESH`] (a failed read keeps the copy, with a warning).
    ///
    /// ```
    /// use graceful_listener::keyring::KeyRing;
    /// let ring = KeyRing::from_shared_secret(&[3; 32]);
    /// let keys = ring.ticket_keys();
    /// assert!(keys.find(keys.current.name()).is_some());
    /// assert_eq!(keys.lifetime, ring.rotation());
    /// ```
    pub fn ticket_keys(&self) -> TicketKeys {
        match &*self.source {
            Source::Epochs {
                secret, rotation, ..
            } => epoch_keys(secret, *rotation, unix_now()),
            Source::Master { file, fd, cache } => {
                let now = Instant::now();
                let fresh = {
                    let cached = cache
                        .read()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    (now.duration_since(cached.0) < REFRESH).then(|| cached.1.clone())
                };
                let record = match fresh {
                    Some(record) => record,
                    None => {
                        let mut cached = cache
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        if now.duration_since(cached.0) >= REFRESH {
                            match read_record(file, *fd) {
                                Ok(record) => {
                                    if record.serial != cached.1.serial {
                                        tracing::debug!(
                                            serial = record.serial,
                                            "TLS ticket keys: the master rotated them"
                                        );
                                    }
                                    cached.1 = record;
                                }
                                Err(e) => {
                                    tracing::warn!("{e}: keeping the ticket keys read before")
                                }
                            }
                            cached.0 = now;
                        }
                        cached.1.clone()
                    }
                };
                TicketKeys {
                    lifetime: Duration::from_secs(record.rotation_secs),
                    accepted: record.previous.into_iter().collect(),
                    current: record.current,
                }
            }
        }
    }

    /// A 32-byte key for `purpose`, derived (HKDF-SHA256) from the ring's stable secret: the
    /// same in every worker that shares the ring, different for every purpose.
    pub fn stable_key(&self, purpose: &str) -> [u8; 32] {
        derive(
            &self.stable,
            b"graceful-listener key ring",
            &[purpose.as_bytes()],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::PermissionsExt;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> + use<> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn the_stable_key_is_the_skeletons() {
        // What the skeleton derived, so code written against it keeps its keys.
        let ring = KeyRing::from_secret([0; 32], "random");
        let prk =
            hkdf::Salt::new(hkdf::HKDF_SHA256, b"graceful-listener key ring").extract(&ring.stable);
        let mut expected = [0u8; 32];
        prk.expand(&[b"quic reset".as_slice()], Len(32))
            .unwrap()
            .fill(&mut expected)
            .unwrap();
        assert_eq!(ring.stable_key("quic reset"), expected);
    }

    #[test]
    fn epochs_agree_and_the_previous_and_next_still_decrypt() {
        let secret = [5; 32];
        let hour = Duration::from_secs(3600);
        let a = epoch_keys(&secret, hour, 7200 + 10);
        let b = epoch_keys(&secret, hour, 7200 + 3000);
        assert_eq!(a.current, b.current, "same epoch, same key");
        let later = epoch_keys(&secret, hour, 10_800 + 1);
        assert_ne!(later.current, a.current);
        assert!(later.find(a.current.name()).is_some(), "previous decrypts");
        assert!(
            a.find(later.current.name()).is_some(),
            "next decrypts (skew)"
        );
        let much_later = epoch_keys(&secret, hour, 14_400 + 1);
        assert!(much_later.find(a.current.name()).is_none());
        assert!(
            epoch_keys(&[6; 32], hour, 7200)
                .find(a.current.name())
                .is_none()
        );
        assert_eq!(epoch_keys(&secret, hour, 0).accepted.len(), 1);
    }

    #[test]
    fn a_bad_keys_fd_is_a_typed_error_naming_the_variable() {
        for value in ["", "x", "-1", "2", "0"] {
            let err = KeyRing::from_vars(vars(&[(KEYS_FD, value)])).unwrap_err();
            assert!(matches!(err, KeyRingError::FdInvalid { .. }), "{err}");
            assert!(err.to_string().starts_with("EINHORN_KEYS_FD="), "{err}");
        }
        let err = KeyRing::from_vars(vars(&[(KEYS_FD, "999999")])).unwrap_err();
        assert!(
            matches!(err, KeyRingError::FdUnusable { fd: 999999, .. }),
            "{err}"
        );
        // A file that is no ring: named, and the key file is not used instead.
        let mut junk = tempfile_in_target("junk");
        junk.1.write_all(&[0u8; RECORD_LEN]).unwrap();
        let fd = junk.1.as_raw_fd().to_string();
        let err =
            KeyRing::from_vars(vars(&[(KEYS_FD, &fd), (KEY_FILE, "/nonexistent")])).unwrap_err();
        assert!(
            matches!(
                err,
                KeyRingError::Record {
                    source: RecordError::Magic,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_master_ring_is_read_and_read_again_after_a_rotation() {
        let (_path, file) = tempfile_in_target("ring");
        let record = Record::new_random(60, 1_000).unwrap();
        file.write_all_at(&record.encode(), 0).unwrap();
        let fd = file.as_raw_fd().to_string();
        let ring = KeyRing::from_vars(vars(&[(KEYS_FD, &fd)])).unwrap();
        assert_eq!(ring.origin(), "master");
        assert_eq!(ring.rotation(), Duration::from_secs(60));
        assert_eq!(ring.ticket_keys().current, record.current);
        let rotated = record.rotated(TicketKey::random(1_060).unwrap());
        file.write_all_at(&rotated.encode(), 0).unwrap();
        // The copy is kept for REFRESH, then read again.
        if let Source::Master { cache, .. } = &*ring.source {
            cache.write().unwrap().0 = Instant::now() - REFRESH;
        }
        let keys = ring.ticket_keys();
        assert_eq!(keys.current, rotated.current);
        assert!(keys.find(record.current.name()).is_some());
        assert_eq!(
            ring.stable_key("a"),
            KeyRing::from_vars(vars(&[(KEYS_FD, &fd)]))
                .unwrap()
                .stable_key("a")
        );
    }

    /// A file of this test process's own, its mode bits ours to set.
    fn tempfile_in_target(name: &str) -> (PathBuf, File) {
        let dir = std::env::temp_dir().join(format!("gl-keyring-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        (path, file)
    }

    #[test]
    fn a_key_file_is_checked_and_shared() {
        let (path, mut file) = tempfile_in_target("key");
        let var = |p: &Path| vars(&[(KEY_FILE, p.to_str().unwrap())]);
        file.write_all(&[7u8; 31]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = KeyRing::from_vars(var(&path)).unwrap_err();
        assert!(
            matches!(err, KeyRingError::KeyFileLength { len: 31, .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains(KEY_FILE) && err.to_string().contains(path.to_str().unwrap()),
            "{err}"
        );
        file.write_all(&[7u8; 1]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = KeyRing::from_vars(var(&path)).unwrap_err();
        assert!(
            matches!(err, KeyRingError::KeyFileMode { mode: 0o640, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("640"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        let a = KeyRing::from_vars(var(&path)).unwrap();
        let b = KeyRing::from_vars(var(&path)).unwrap();
        assert_eq!(a.origin(), "key file");
        assert_eq!(a.stable_key("x"), b.stable_key("x"));
        assert_eq!(a.ticket_keys().current, b.ticket_keys().current);
        assert_eq!(
            a.stable_key("x"),
            KeyRing::from_shared_secret(&[7u8; 32]).stable_key("x")
        );
        let missing = path.with_extension("missing");
        let err = KeyRing::from_vars(var(&missing)).unwrap_err();
        assert!(matches!(err, KeyRingError::KeyFileRead { .. }), "{err}");
        let dir = path.parent().unwrap();
        let err = KeyRing::from_vars(var(dir)).unwrap_err();
        assert!(
            matches!(
                err,
                KeyRingError::KeyFileNotAFile { .. } | KeyRingError::KeyFileMode { .. }
            ),
            "{err}"
        );
        // Without either variable: a ring of this process's own, different every time.
        let own = KeyRing::from_vars(vars(&[])).unwrap();
        assert_eq!(own.origin(), "random");
        assert_ne!(
            own.stable_key("x"),
            KeyRing::from_vars(vars(&[])).unwrap().stable_key("x")
        );
        assert!(!format!("{own:?}").contains("stable:"), "{own:?}");
    }
}
