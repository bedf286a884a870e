//! `-e PIDFILE`: the master's pid in a file, refused while it names a live process; and
//! [`WrittenFile`], any file the master writes and removes when it is done.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::signal::kill;
use nix::unistd::Pid;

use crate::files::{Found, create_unique};

/// Why the pid file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PidfileError {
    /// The file names a process that is alive.
    #[error("pid file {path} names live process {pid}; is another master running?")]
    Alive {
        /// The pid file.
        path: PathBuf,
        /// The pid in it.
        pid: i32,
    },
    /// Something other than a regular file is at the path: a symlink there (planted by
    /// another user in a shared directory, most often) is neither followed nor replaced.
    #[error("pid file {path} is {found}, not a regular file; not following or replacing it")]
    NotAFile {
        /// The pid file.
        path: PathBuf,
        /// What is there.
        found: Found,
    },
    /// The file could not be written.
    #[error("cannot write pid file {path}: {source}")]
    Write {
        /// The pid file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A written pid file, removed on drop.
#[derive(Debug)]
pub struct Pidfile {
    _file: WrittenFile,
}

/// A file written atomically by [`WrittenFile::create`] and removed on drop, whichever way the
/// master ends (the address file, the pid file).
#[derive(Debug)]
pub struct WrittenFile {
    path: PathBuf,
}

impl WrittenFile {
    /// Writes `text` to `path` with [`write_atomically`].
    ///
    /// # Errors
    /// The OS error of the write or the rename.
    pub fn create(path: &Path, text: &str) -> std::io::Result<WrittenFile> {
        write_atomically(path, text)?;
        Ok(WrittenFile {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for WrittenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Pidfile {
    /// Writes `pid` to `path` (atomically), unless the file names another live process, or
    /// is not a regular file (a symlink, say).
    ///
    /// # Errors
    /// [`PidfileError`] naming the file.
    pub fn create(path: &Path, pid: i32) -> Result<Pidfile, PidfileError> {
        if let Some(old) = Pidfile::read_old(path)?
            && old > 0
            && old != pid
            && kill(Pid::from_raw(old), None).is_ok()
        {
            return Err(PidfileError::Alive {
                path: path.to_path_buf(),
                pid: old,
            });
        }
        let file = WrittenFile::create(path, &format!("{pid}\n")).map_err(|source| {
            PidfileError::Write {
                path: path.to_path_buf(),
                source,
            }
        })?;
        Ok(Pidfile { _file: file })
    }

    /// The pid in the file at `path` from an earlier master, if it holds one.
    ///
    /// A symlink at `path` is refused rather than replaced by the rename: the master never
    /// follows one (reading the old pid through it would read a file the master may not own),
    /// and a link where the pid file belongs most often means another user planted it, which
    /// the operator should hear of. A file that cannot be read for another reason holds no
    /// pid: the rename replaces it.
    fn read_old(path: &Path) -> Result<Option<i32>, PidfileError> {
        let not_a_file = |found| PidfileError::NotAFile {
            path: path.to_path_buf(),
            found,
        };
        // O_NONBLOCK: opening a fifo planted there would otherwise wait for a writer.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path);
        let file = match file {
            Ok(file) => file,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return match Found::at(path) {
                    Ok(found) => Err(not_a_file(found)),
                    // Gone in between: nothing to read.
                    Err(_) => Ok(None),
                };
            }
            Err(_) => return Ok(None),
        };
        match file.metadata() {
            Ok(meta) if !meta.is_file() => {
                return Err(not_a_file(Found::from_metadata(path, &meta)));
            }
            Ok(_) => {}
            Err(_) => return Ok(None),
        }
        // A pid is a few digits: a large file there is not a pid file, and is not read whole.
        let mut text = String::new();
        let _ = file.take(64).read_to_string(&mut text);
        Ok(text.trim().parse::<i32>().ok())
    }
}

/// Writes `text` to a new temporary file beside `path` (mode 0644, synced to disk), then
/// renames it over `path`, so a reader sees the old content or the new, never a part.
///
/// Safe in a directory other users can write (`/tmp`), even as root: the temporary file has
/// an unpredictable name (`PATH.tmp<pid>.<random>`) and is created exclusively without
/// following a symlink (`O_CREAT|O_EXCL|O_NOFOLLOW`), so nothing planted there beforehand is
/// ever written through; and the rename replaces whatever is at `path`, a symlink included,
/// as a directory entry: it never writes to a symlink's target. The temporary file is removed
/// when a step fails.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("addr");
/// einhorn_master::pidfile::write_atomically(&path, "0 127.0.0.1:8080\n").unwrap();
/// assert_eq!(std::fs::read_to_string(&path).unwrap(), "0 127.0.0.1:8080\n");
/// ```
///
/// # Errors
/// The OS error of the create, the write, the sync or the rename.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let (tmp, file) = create_unique(path, "tmp", |tmp| {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(tmp)
    })?;
    fill(file, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

/// Gives a new temporary `file` its mode and content, on disk before it is renamed into place
/// (so a crash leaves the old file or the whole new one), and closes it.
fn fill(mut file: std::fs::File, text: &str) -> std::io::Result<()> {
    // 0644 whatever the umask: the file is for others to read (a pid file for scripts).
    file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_refuses_a_live_pid_and_removes_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.pid");
        let me = std::process::id() as i32;
        let file = Pidfile::create(&path, me).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{me}\n"));
        // pid 1 is alive: refused.
        std::fs::write(&path, "1\n").unwrap();
        assert!(matches!(
            Pidfile::create(&path, me),
            Err(PidfileError::Alive { pid: 1, .. })
        ));
        drop(file);
        assert!(!path.exists());
        // A stale pid is overwritten.
        std::fs::write(&path, "999999999\n").unwrap();
        let _file = Pidfile::create(&path, me).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{me}\n"));
    }
}
