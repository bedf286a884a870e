//! The key ring the master hands to every generation of its workers (see
//! [`graceful_listener::keyring`]): made once, kept across the master's re-execs (its fd is
//! in the [`Handover`](crate::handover::Handover)), its ticket key rotated every
//! `--key-rotation`.
//!
//! The ring lives in a memory file (nothing on disk, nothing in the environment in clear).
//! The master writes it through its own read-write fd, close-on-exec, which no worker gets;
//! each worker inherits a second fd opened read-only (`/proc/self/fd/N` reopened), named by
//! [`KEYS_FD`]. The file's mode is `0400`, so a worker cannot reopen its fd for writing
//! either, unless it runs as root or changes the mode first (it is the same user):
//! `F_SEAL_FUTURE_WRITE` would stop that too, but it also stops the master's writes through
//! any mapping made after an exec, and the ring must outlive the master's re-execs.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::time::{Duration, SystemTime};

pub use graceful_listener::env::KEYS_FD;
use graceful_listener::keyring::{RECORD_LEN, Record, TicketKey};

/// einhorn-master's default `--key-rotation`: 6 hours, as rustls' own ticketer.
pub const DEFAULT_KEY_ROTATION: Duration = graceful_listener::keyring::DEFAULT_ROTATION;

/// The master's key ring: its memory file, the read-only fd workers inherit, the record.
#[derive(Debug)]
pub struct KeyRingFile {
    file: File,
    readonly: OwnedFd,
    record: Record,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_error(e: graceful_listener::keyring::KeyRingError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl KeyRingFile {
    /// A new ring, rotated every `rotation`.
    ///
    /// # Errors
    /// The OS error (no memory file, no randomness).
    pub fn create(rotation: Duration) -> std::io::Result<KeyRingFile> {
        let fd =
            nix::sys::memfd::memfd_create(c"einhorn-keys", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
        let file = File::from(fd);
        file.set_len(RECORD_LEN as u64)?;
        let record =
            Record::new_random(rotation.as_secs().max(1), unix_now()).map_err(random_error)?;
        file.write_all_at(&record.encode(), 0)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o400))?;
        let readonly = reopen_readonly(&file)?;
        tracing::info!(
            "key ring made (ticket keys rotated every {}s); workers get it as {KEYS_FD}",
            record.rotation_secs
        );
        Ok(KeyRingFile {
            file,
            readonly,
            record,
        })
    }

    /// Takes the ring handed over on `fd` by the master before the exec, rotated every
    /// `rotation` from now on.
    ///
    /// # Errors
    /// The OS error, or the record's, as an I/O error.
    ///
    /// # Safety
    /// `fd` must be the ring's fd, handed over to this process to be taken, once.
    pub unsafe fn adopt(fd: RawFd, rotation: Duration) -> std::io::Result<KeyRingFile> {
        // SAFETY: by the caller's contract.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut bytes = [0u8; RECORD_LEN];
        file.read_exact_at(&mut bytes, 0)?;
        let mut record = Record::parse(&bytes).map_err(std::io::Error::other)?;
        let rotation_secs = rotation.as_secs().max(1);
        if record.rotation_secs != rotation_secs {
            record.rotation_secs = rotation_secs;
            file.write_all_at(&record.encode(), 0)?;
        }
        let readonly = reopen_readonly(&file)?;
        tracing::info!(
            "key ring taken over (serial {}, ticket keys rotated every {}s)",
            record.serial,
            record.rotation_secs
        );
        Ok(KeyRingFile {
            file,
            readonly,
            record,
        })
    }

    /// The master's read-write fd (handed over across its exec, never to a worker).
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// The read-only fd every worker inherits as [`KEYS_FD`].
    pub fn worker_fd(&self) -> RawFd {
        self.readonly.as_raw_fd()
    }

    /// How long until the current ticket key is due to be rotated (zero: now).
    pub fn due_in(&self) -> Duration {
        Duration::from_secs(self.record.due().saturating_sub(unix_now()))
    }

    /// The serial of the ring as written now.
    pub fn serial(&self) -> u64 {
        self.record.serial
    }

    /// Rotates the ticket key: a new current key, the current one kept as previous.
    ///
    /// # Errors
    /// The OS error; the ring is then unchanged.
    pub fn rotate(&mut self) -> std::io::Result<()> {
        let fresh = TicketKey::random(unix_now()).map_err(random_error)?;
        let next = self.record.rotated(fresh);
        // One write of the whole record: a worker reading meanwhile sees a bad checksum
        // and reads again.
        self.file.write_all_at(&next.encode(), 0)?;
        self.record = next;
        tracing::info!("ticket keys rotated (serial {})", self.record.serial);
        Ok(())
    }
}

/// `file` opened again, read-only and close-on-exec (made inheritable in a worker only).
fn reopen_readonly(file: &File) -> std::io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let readonly = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    Ok(OwnedFd::from(readonly))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_read_the_ring_and_cannot_write_it() {
        let mut ring = KeyRingFile::create(Duration::from_secs(60)).unwrap();
        assert!(ring.due_in() <= Duration::from_secs(60));
        // SAFETY (test): a fresh duplicate of the read-only fd, owned here.
        let readonly = unsafe { File::from_raw_fd(libc::dup(ring.worker_fd())) };
        assert!(readonly.write_all_at(b"x", 0).is_err(), "read-only");
        let mut bytes = [0u8; RECORD_LEN];
        readonly.read_exact_at(&mut bytes, 0).unwrap();
        let first = Record::parse(&bytes).unwrap();
        assert_eq!(first.rotation_secs, 60);
        ring.rotate().unwrap();
        readonly.read_exact_at(&mut bytes, 0).unwrap();
        let second = Record::parse(&bytes).unwrap();
        assert_eq!(second.serial, first.serial + 1);
        assert_eq!(second.previous.as_ref(), Some(&first.current));
        assert_eq!(second.stable, first.stable);
        let mode = readonly.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
    }
}
