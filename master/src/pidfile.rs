//! `-e PIDFILE`: the master's pid in a file, refused while it names a live process; and
//! [`WrittenFile`], any file the master writes and removes when it is done.

use std::path::{Path, PathBuf};

use nix::sys::signal::kill;
use nix::unistd::Pid;

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
    /// Writes `pid` to `path` (atomically), unless the file names another live process.
    ///
    /// # Errors
    /// [`PidfileError`] naming the file.
    pub fn create(path: &Path, pid: i32) -> Result<Pidfile, PidfileError> {
        let old = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok());
        if let Some(old) = old
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

    /// Writes `pid` to `path` (atomically) whatever the file names: for a master that took
    /// over from the one it replaced by exec (same pid), whose pid file is its own even if
    /// someone wrote another pid into it meanwhile.
    ///
    /// # Errors
    /// [`PidfileError::Write`] naming the file.
    pub fn overwrite(path: &Path, pid: i32) -> Result<Pidfile, PidfileError> {
        let file = WrittenFile::create(path, &format!("{pid}\n")).map_err(|source| {
            PidfileError::Write {
                path: path.to_path_buf(),
                source,
            }
        })?;
        Ok(Pidfile { _file: file })
    }
}

/// Writes `text` to a temporary file beside `path`, then renames it over `path`, so a reader
/// sees the old content or the new, never a part.
///
/// # Errors
/// The OS error of the write or the rename.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
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
