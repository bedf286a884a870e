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
        Pidfile::overwrite(path, pid)
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
    use crate::files::tests::{
        assert_symlinks_refused, assert_untouched, plant_as_other_user, victims,
    };
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_symlink_at_the_pid_file_is_refused_naming_it_and_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, dangling) = victims(dir.path());
        let path = dir.path().join("master.pid");
        let refuse = || {
            let err = Pidfile::create(&path, std::process::id() as i32).unwrap_err();
            assert!(matches!(err, PidfileError::NotAFile { .. }), "{err}");
            err.to_string()
        };
        assert_symlinks_refused(
            "pid file",
            &path,
            &[&secret, &dangling],
            (&secret, &dangling),
            refuse,
            || {},
        );
    }

    #[test]
    fn a_fifo_or_directory_at_the_pid_file_is_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.pid");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let err = Pidfile::create(&path, 1).unwrap_err();
        assert!(err.to_string().contains("is a fifo owned by "), "{err}");
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let err = Pidfile::create(&path, 1).unwrap_err();
        assert!(
            err.to_string().contains("is a directory owned by "),
            "{err}"
        );
    }

    #[test]
    fn symlinks_planted_at_temp_names_are_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, dangling) = victims(dir.path());
        let path = dir.path().join("master.pid");
        // The old predictable temp name, and names of the new pattern with a guessed suffix.
        let me = std::process::id();
        let mut planted = vec![dir.path().join(format!("master.pid.tmp{me}"))];
        for suffix in ["0000000000000000", "ffffffffffffffff"] {
            planted.push(dir.path().join(format!("master.pid.tmp{me}.{suffix}")));
        }
        for (i, link) in planted.iter().enumerate() {
            let target = if i % 2 == 0 { &secret } else { &dangling };
            std::os::unix::fs::symlink(target, link).unwrap();
            plant_as_other_user(link);
        }
        let _file = Pidfile::create(&path, me as i32).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{me}\n"));
        assert_untouched(&secret, &dangling);
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.mode() & 0o7777, 0o644);
        assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
        // Only the planted links are left beside it: no temp file of ours.
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("master.pid"))
            .collect();
        names.sort();
        assert_eq!(names.len(), planted.len() + 1, "{names:?}");
    }

    #[test]
    fn a_symlink_at_an_address_file_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, dangling) = victims(dir.path());
        for target in [&secret, &dangling] {
            let path = dir.path().join("addr");
            std::os::unix::fs::symlink(target, &path).unwrap();
            plant_as_other_user(&path);
            let file = WrittenFile::create(&path, "0 127.0.0.1:1\n").unwrap();
            assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
            assert_eq!(std::fs::read_to_string(&path).unwrap(), "0 127.0.0.1:1\n");
            assert_untouched(&secret, &dangling);
            drop(file);
            assert!(std::fs::symlink_metadata(&path).is_err(), "removed on drop");
            assert_untouched(&secret, &dangling);
        }
    }

    #[test]
    fn a_failed_write_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // The rename fails: a non-empty directory is at the path.
        let path = dir.path().join("busy");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), "x").unwrap();
        assert!(write_atomically(&path, "text").is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

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
