//! The command socket's file: a lock against a second master, stale-socket removal, mode 0600.
//! Both files are removed when the master is done, on every path, failures included.

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Why the command socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// The lock file could not be opened.
    #[error("cannot open lock file {path}: {source}")]
    LockFile {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another master holds the lock.
    #[error("another master is running on {socket} (lock {lock} is held)")]
    Locked {
        /// The socket path.
        socket: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// Something that is not a socket is in the way.
    #[error("{0} exists and is not a socket; not removing it")]
    NotASocket(PathBuf),
    /// Removing a stale socket, binding or setting the mode failed.
    #[error("cannot {step} command socket {path}: {source}")]
    Io {
        /// What failed.
        step: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The bound command socket. Dropping it removes the socket file, then the lock file, then
/// releases the lock.
#[derive(Debug)]
pub struct CommandSocket {
    listener: Option<UnixListener>,
    path: PathBuf,
    // Dropped after the socket file is gone (fields drop after `Drop::drop`).
    _lock: LockFile,
}

/// A held lock file. Dropping it removes the file while still holding the lock, then releases
/// it; [`LockFile::acquire`] copes with a file removed that way under its feet.
#[derive(Debug)]
struct LockFile {
    path: PathBuf,
    // Released after the file is removed (fields drop after `Drop::drop`).
    _flock: Flock<File>,
}

impl LockFile {
    /// Creates (or opens) `path` and takes an exclusive lock on it, without waiting.
    fn acquire(path: &Path, socket: &Path) -> Result<LockFile, SocketError> {
        // Bounded: each round loses only to a master that removed the file between our open
        // and our lock, which happens once per exiting master.
        for _ in 0..5 {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| SocketError::LockFile {
                    path: path.to_path_buf(),
                    source,
                })?;
            if let Some(lock) = LockFile::lock_if_current(file, path, socket)? {
                return Ok(lock);
            }
        }
        Err(SocketError::Locked {
            socket: socket.to_path_buf(),
            lock: path.to_path_buf(),
        })
    }

    /// Locks `file`, opened from `path`; `None` when it is no longer the file at `path` (a
    /// master that exited removed it after we opened it): that lock would guard nothing.
    fn lock_if_current(
        file: File,
        path: &Path,
        socket: &Path,
    ) -> Result<Option<LockFile>, SocketError> {
        let flock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| {
            SocketError::Locked {
                socket: socket.to_path_buf(),
                lock: path.to_path_buf(),
            }
        })?;
        let ours = flock.metadata().ok().map(|m| (m.dev(), m.ino()));
        let current = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
        Ok((ours.is_some() && ours == current).then(|| LockFile {
            path: path.to_path_buf(),
            _flock: flock,
        }))
    }
}

impl LockFile {
    /// Whether the file at the lock path is still the one this lock is on (someone may have
    /// removed it, or put another file there).
    fn is_current(&self) -> bool {
        let ours = self._flock.metadata().ok().map(|m| (m.dev(), m.ino()));
        let current = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        ours.is_some() && ours == current
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        // Only our own file: one put in its place (another master's) is left alone.
        if self.is_current() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl CommandSocket {
    /// Takes the lock at `lock`, removes a stale socket at `path` (only a socket, and only
    /// while holding the lock, so never a live master's), and binds a fresh one with mode 0600.
    /// When this fails after taking the lock, the lock file is removed again.
    ///
    /// # Errors
    /// [`SocketError`] naming the path and the step at fault.
    pub fn open(path: &Path, lock: &Path) -> Result<CommandSocket, SocketError> {
        let io = |step, source| SocketError::Io {
            step,
            path: path.to_path_buf(),
            source,
        };
        // From here on, any error drops the lock, which removes the lock file.
        let lock_guard = LockFile::acquire(lock, path)?;
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                tracing::info!("removing stale command socket {}", path.display());
                std::fs::remove_file(path).map_err(|e| io("remove stale", e))?;
            }
            Ok(_) => return Err(SocketError::NotASocket(path.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("inspect", e)),
        }
        // Bound in a private directory (mode 0700) beside the path, made 0600, and renamed
        // into place once listening: the path only ever names a socket that accepts, and no
        // one else can connect in between. The process-wide umask is left alone: the
        // application embedding the master may be creating files on other threads.
        let mut dir = path.as_os_str().to_owned();
        dir.push(format!(".{}", std::process::id()));
        let dir = PathBuf::from(dir);
        let tmp = dir.join("s");
        // A previous run with this pid that died in between.
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_dir(&dir);
        DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io("create a private directory for", e))?;
        let placed = UnixListener::bind(&tmp)
            .map_err(|e| io("bind", e))
            .and_then(|listener| {
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| io("chmod", e))?;
                std::fs::rename(&tmp, path).map_err(|e| io("rename", e))?;
                Ok(listener)
            });
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_dir(&dir);
        let listener = placed?;
        Ok(CommandSocket {
            listener: Some(listener),
            path: path.to_path_buf(),
            _lock: lock_guard,
        })
    }

    /// The command socket of an earlier master, handed over: the listening fd and the lock
    /// file's fd (the lock belongs to the open file, so it is still held).
    ///
    /// A master that took over workers keeps them: a lock file removed or replaced
    /// meanwhile is taken again at its path if it can be ([`CommandSocket::keep_lock`]),
    /// else the master runs on with the lock it has, and says so.
    ///
    /// # Errors
    /// [`SocketError`] only when `lock_fd` holds no lock and the lock path's cannot be taken
    /// either (a hand-over that is not this master's).
    pub fn adopt(
        path: &Path,
        listener_fd: std::os::fd::RawFd,
        lock: &Path,
        lock_fd: std::os::fd::RawFd,
    ) -> Result<CommandSocket, SocketError> {
        use std::os::fd::FromRawFd;
        // SAFETY: both fds were handed over to this process to be taken, once.
        let (listener, file) = unsafe {
            (
                UnixListener::from_raw_fd(listener_fd),
                File::from_raw_fd(lock_fd),
            )
        };
        // The lock is held through the open file: flock on it again only confirms it.
        let lock_guard = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(flock) => LockFile {
                path: lock.to_path_buf(),
                _flock: flock,
            },
            // Not our lock after all (a broken hand-over): take the path's, if no one has it.
            Err((_, e)) => {
                tracing::error!(
                    "the lock handed over on fd {lock_fd} for {} is not held ({e}): taking it again",
                    lock.display()
                );
                LockFile::acquire(lock, path)?
            }
        };
        let mut socket = CommandSocket {
            listener: Some(listener),
            path: path.to_path_buf(),
            _lock: lock_guard,
        };
        if let Err(e) = socket.keep_lock() {
            tracing::error!("{e}; running on with the lock this master has");
        }
        Ok(socket)
    }

    /// Makes sure the lock file at the lock path is the one this master holds: one removed
    /// (or replaced by a file no one locks) is taken again at its path, with a warning.
    ///
    /// # Errors
    /// Why it cannot be: the path's file is locked by another process (another master was
    /// started on this socket path meanwhile), or cannot be opened.
    pub fn keep_lock(&mut self) -> Result<(), String> {
        if self._lock.is_current() {
            return Ok(());
        }
        let lock = self._lock.path.clone();
        match LockFile::acquire(&lock, &self.path) {
            Ok(taken) => {
                tracing::warn!(
                    "lock file {} was removed or replaced while this master held it: taken again",
                    lock.display()
                );
                // The old lock's file is no longer at the path: dropping it removes nothing.
                self._lock = taken;
                Ok(())
            }
            Err(e) => Err(format!(
                "lock file {} was removed or replaced while this master held it, and cannot be taken again ({e})",
                lock.display()
            )),
        }
    }

    /// The lock file's fd (to hand it over across an exec).
    pub fn lock_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self._lock._flock.as_raw_fd()
    }

    /// The lock file's path.
    pub fn lock_path(&self) -> &Path {
        &self._lock.path
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the listener out (to hand it to the async driver). The file stays ours: it is
    /// still removed when this is dropped.
    ///
    /// # Panics
    /// When called twice.
    pub fn take_listener(&mut self) -> UnixListener {
        self.listener.take().expect("listener taken once")
    }
}

impl Drop for CommandSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn opens_with_mode_0600_leaving_the_umask_and_no_stray_file_and_removes_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sock");
        let umask = || {
            let mode = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
            nix::sys::stat::umask(mode);
            mode.bits()
        };
        let before = umask();
        let socket = CommandSocket::open(&path, &dir.path().join("m.lock")).unwrap();
        assert_eq!(umask(), before, "the process-wide umask is untouched");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["m.lock", "m.sock"]);
        UnixStream::connect(&path).unwrap();
        drop(socket);
        assert!(!path.exists());
    }

    #[test]
    fn a_second_master_is_refused_and_a_stale_socket_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sock");
        let lock = dir.path().join("m.lock");
        let first = CommandSocket::open(&path, &lock).unwrap();
        let err = CommandSocket::open(&path, &lock).unwrap_err();
        assert!(matches!(err, SocketError::Locked { .. }), "{err}");
        assert!(path.exists(), "the live master's socket is untouched");
        drop(first);
        // A stale socket (its master died without cleaning up) is replaced.
        let stale = UnixListener::bind(&path).unwrap();
        drop(stale);
        assert!(path.exists());
        let _second = CommandSocket::open(&path, &lock).unwrap();
        UnixStream::connect(&path).unwrap();
    }

    #[test]
    fn the_lock_file_is_removed_on_drop_and_on_failure_but_never_another_masters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sock");
        let lock = dir.path().join("m.lock");
        let socket = CommandSocket::open(&path, &lock).unwrap();
        assert!(lock.exists());
        // Refused: the live master's lock file stays.
        assert!(CommandSocket::open(&path, &lock).is_err());
        assert!(lock.exists());
        drop(socket);
        assert!(!lock.exists(), "removed on drop");
        // A failure after the lock was taken (here: a file in the socket's place) removes it.
        std::fs::write(&path, "data").unwrap();
        assert!(CommandSocket::open(&path, &lock).is_err());
        assert!(!lock.exists(), "removed on failure");
    }

    #[test]
    fn a_lock_file_removed_by_its_last_holder_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sock");
        let lock = dir.path().join("m.lock");
        // A master that exits removes its lock file while still holding it; one that opened
        // the old file just before must not think it holds the lock.
        let first = LockFile::acquire(&lock, &path).unwrap();
        let opened_before = File::open(&lock).unwrap();
        drop(first);
        assert!(!lock.exists());
        let stale = LockFile::lock_if_current(opened_before, &lock, &path).unwrap();
        assert!(stale.is_none(), "a lock on a removed file guards nothing");
        let second = LockFile::acquire(&lock, &path).unwrap();
        assert!(lock.exists(), "a new lock file, really locked");
        let again = LockFile::acquire(&lock, &path);
        assert!(matches!(again, Err(SocketError::Locked { .. })));
        drop(second);
    }

    #[test]
    fn a_regular_file_is_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sock");
        std::fs::write(&path, "data").unwrap();
        let err = CommandSocket::open(&path, &dir.path().join("m.lock")).unwrap_err();
        assert!(matches!(err, SocketError::NotASocket(_)), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
    }
}
