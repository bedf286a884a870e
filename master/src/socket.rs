//! The command socket's file: a lock against a second master, stale-socket removal, mode 0600.
//! Both files are removed when the master is done, on every path, failures included.

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::files::{FileKind, Found, Owner, create_unique};

/// Why the command socket (or the directory it belongs in) could not be opened.
///
/// Nothing at the socket, lock or directory path is ever followed if it is a symlink, or
/// removed if it is not what the master put there: the errors say what is there and whose it
/// is, for the operator to judge.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// The lock file could not be opened.
    #[error("cannot open lock file {path}{}: {source}", found_note(.found))]
    LockFile {
        /// The lock file.
        path: PathBuf,
        /// What is at the path, when something is.
        found: Option<Found>,
        /// The OS error.
        source: std::io::Error,
    },
    /// Something other than a regular file is at the lock file's path (a symlink, say).
    #[error("lock file {path} is {found}, not a regular file; not following or removing it")]
    LockNotAFile {
        /// The lock file.
        path: PathBuf,
        /// What is there.
        found: Found,
    },
    /// Another master holds the lock.
    #[error("another master is running on {socket} (lock {lock}{} is held)", owner_note(.owner))]
    Locked {
        /// The socket path.
        socket: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// The lock file's owner, when it could be seen.
        owner: Option<Owner>,
    },
    /// Something that is not a socket is at the socket's path (a symlink included, never
    /// followed).
    #[error("command socket path {path} is {found}, not a socket; not removing it")]
    NotASocket {
        /// The socket path.
        path: PathBuf,
        /// What is there.
        found: Found,
    },
    /// The default socket's directory is not private to this user (see
    /// [`crate::runtime_dir`]): someone else could replace the socket in it.
    #[error(
        "runtime directory {path} is {found}; expected a directory owned by {expected} with mode 0700, and not changing it (remove it, or give the socket another path with -d)"
    )]
    RuntimeDirUnsafe {
        /// The directory.
        path: PathBuf,
        /// What is there.
        found: Found,
        /// Its expected owner: this process's user.
        expected: Owner,
    },
    /// The default socket's directory could not be created or inspected.
    #[error("cannot create runtime directory {path}: {source}")]
    RuntimeDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
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

/// ` (a regular file owned by ...)` for an error about a path where something was found.
fn found_note(found: &Option<Found>) -> String {
    found
        .as_ref()
        .map_or_else(String::new, |f| format!(" ({f})"))
}

/// `, owned by ...` for [`SocketError::Locked`].
fn owner_note(owner: &Option<Owner>) -> String {
    owner
        .as_ref()
        .map_or_else(String::new, |o| format!(", owned by {o},"))
}

impl SocketError {
    /// [`SocketError::Locked`], with the owner of the file at `lock` as it is now.
    fn locked(socket: &Path, lock: &Path) -> SocketError {
        SocketError::Locked {
            socket: socket.to_path_buf(),
            lock: lock.to_path_buf(),
            owner: std::fs::symlink_metadata(lock)
                .ok()
                .map(|meta| Owner::of_uid(meta.uid())),
        }
    }
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
    ///
    /// A symlink at `path` is never followed (`O_NOFOLLOW`): in a shared directory, another
    /// user could point it at any file, which the master (often root) would create or lock.
    /// Anything else that is not a regular file is refused too.
    fn acquire(path: &Path, socket: &Path) -> Result<LockFile, SocketError> {
        let not_a_file = |found| SocketError::LockNotAFile {
            path: path.to_path_buf(),
            found,
        };
        // Bounded: each round loses only to a master that removed the file between our open
        // and our lock, which happens once per exiting master.
        for _ in 0..5 {
            // O_NONBLOCK: opening a fifo planted there would otherwise wait for a reader. It
            // changes nothing for a regular file (the flock below does not wait either).
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
                .open(path)
                .map_err(|source| {
                    // A symlink fails with ELOOP, a fifo with ENXIO: say what is there.
                    match Found::at(path).ok() {
                        Some(found) if found.kind != FileKind::File => not_a_file(found),
                        found => SocketError::LockFile {
                            path: path.to_path_buf(),
                            found,
                            source,
                        },
                    }
                })?;
            match file.metadata() {
                Ok(meta) if !meta.is_file() => {
                    return Err(not_a_file(Found::from_metadata(path, &meta)));
                }
                _ => {}
            }
            if let Some(lock) = LockFile::lock_if_current(file, path, socket)? {
                return Ok(lock);
            }
        }
        Err(SocketError::locked(socket, path))
    }

    /// Locks `file`, opened from `path`; `None` when it is no longer the file at `path` (a
    /// master that exited removed it after we opened it): that lock would guard nothing.
    fn lock_if_current(
        file: File,
        path: &Path,
        socket: &Path,
    ) -> Result<Option<LockFile>, SocketError> {
        let flock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| SocketError::locked(socket, path))?;
        let lock = LockFile {
            path: path.to_path_buf(),
            _flock: flock,
        };
        // Not current: dropped, it removes nothing (it is not the file at the path).
        Ok(lock.is_current().then_some(lock))
    }
}

impl LockFile {
    /// Whether the file at the lock path is still the one this lock is on (someone may have
    /// removed it, or put another file there).
    fn is_current(&self) -> bool {
        let ours = self._flock.metadata().ok().map(|m| (m.dev(), m.ino()));
        // lstat: a symlink swapped in since is not our file either.
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
            Ok(meta) => {
                return Err(SocketError::NotASocket {
                    path: path.to_path_buf(),
                    found: Found::from_metadata(path, &meta),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("inspect", e)),
        }
        // Bound in a private directory (mode 0700) beside the path, made 0600, and renamed
        // into place once listening: the path only ever names a socket that accepts, and no
        // one else can connect in between. The process-wide umask is left alone: the
        // application embedding the master may be creating files on other threads. The
        // directory's name is unpredictable and mkdir never follows a symlink, so nothing
        // planted beside the path is used. The rename replaces the path itself, never a
        // symlink's target (one planted after the check above).
        let (dir, ()) = create_unique(path, "", |dir| DirBuilder::new().mode(0o700).create(dir))
            .map_err(|e| io("create a private directory for", e))?;
        let tmp = dir.join("s");
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
    use crate::files::tests::{
        assert_names_other_owner, assert_symlinks_refused, assert_untouched, plant_as_other_user,
        victims,
    };
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_symlink_at_the_lock_path_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, dangling) = victims(dir.path());
        let path = dir.path().join("m.sock");
        let lock = dir.path().join("m.sock.lock");
        let refuse = || {
            let err = CommandSocket::open(&path, &lock).unwrap_err();
            assert!(matches!(err, SocketError::LockNotAFile { .. }), "{err}");
            err.to_string()
        };
        let no_socket = || assert!(std::fs::symlink_metadata(&path).is_err(), "no socket made");
        assert_symlinks_refused(
            "lock file",
            &lock,
            &[&secret, &dangling],
            (&secret, &dangling),
            refuse,
            no_socket,
        );
    }

    #[test]
    fn a_fifo_at_the_lock_path_is_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("m.lock");
        nix::unistd::mkfifo(&lock, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = CommandSocket::open(&dir.path().join("m.sock"), &lock).unwrap_err();
        assert!(matches!(err, SocketError::LockNotAFile { .. }), "{err}");
        assert!(err.to_string().contains("is a fifo owned by "), "{err}");
        assert!(
            std::fs::symlink_metadata(&lock)
                .unwrap()
                .file_type()
                .is_fifo()
        );
    }

    #[test]
    fn a_symlink_or_file_at_the_socket_path_is_refused_naming_it_and_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, dangling) = victims(dir.path());
        let path = dir.path().join("m.sock");
        let lock = dir.path().join("m.sock.lock");
        // A symlink to a live socket too: the master must not remove or replace it.
        let live_path = dir.path().join("live.sock");
        let _live = UnixListener::bind(&live_path).unwrap();
        let refuse = || {
            let err = CommandSocket::open(&path, &lock).unwrap_err();
            assert!(matches!(err, SocketError::NotASocket { .. }), "{err}");
            err.to_string()
        };
        let no_lock = || assert!(!lock.exists(), "the lock file is removed on failure");
        assert_symlinks_refused(
            "command socket path",
            &path,
            &[&secret, &dangling, &live_path],
            (&secret, &dangling),
            refuse,
            no_lock,
        );
        UnixStream::connect(&live_path).unwrap();
        // A regular file and a directory, planted by another user.
        std::fs::write(&path, "data").unwrap();
        let planted = plant_as_other_user(&path);
        let text = CommandSocket::open(&path, &lock).unwrap_err().to_string();
        assert!(
            text.starts_with(&format!(
                "command socket path {} is a regular file owned by ",
                path.display()
            )),
            "{text}"
        );
        assert!(
            text.ends_with("mode 0644, not a socket; not removing it"),
            "{text}"
        );
        assert_names_other_owner(&text, planted);
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let text = CommandSocket::open(&path, &lock).unwrap_err().to_string();
        assert!(text.contains("is a directory owned by "), "{text}");
    }

    #[test]
    fn a_held_lock_names_its_files_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sock");
        let lock = dir.path().join("m.sock.lock");
        let _first = CommandSocket::open(&path, &lock).unwrap();
        let planted = plant_as_other_user(&lock);
        let text = CommandSocket::open(&path, &lock).unwrap_err().to_string();
        assert!(
            text.starts_with(&format!(
                "another master is running on {} (lock {}, owned by ",
                path.display(),
                lock.display()
            )),
            "{text}"
        );
        assert!(text.ends_with(", is held)"), "{text}");
        assert_names_other_owner(&text, planted);
    }

    #[test]
    fn symlinks_planted_beside_the_socket_are_never_used() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, dangling) = victims(dir.path());
        let target_dir = dir.path().join("elsewhere");
        std::fs::create_dir(&target_dir).unwrap();
        std::fs::write(target_dir.join("s"), "keep").unwrap();
        let path = dir.path().join("m.sock");
        // The old predictable private directory name, pointing at another directory.
        let old = dir.path().join(format!("m.sock.{}", std::process::id()));
        std::os::unix::fs::symlink(&target_dir, &old).unwrap();
        plant_as_other_user(&old);
        let socket = CommandSocket::open(&path, &dir.path().join("m.lock")).unwrap();
        UnixStream::connect(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(target_dir.join("s")).unwrap(),
            "keep"
        );
        assert_untouched(&secret, &dangling);
        drop(socket);
    }

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
        assert!(matches!(err, SocketError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
    }
}
