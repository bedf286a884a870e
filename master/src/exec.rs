//! What starting a program needs, whoever starts it (a worker's spawn, the master's own
//! re-exec, the self-hosted master): finding the program as `execvp` will, and choosing which
//! descriptors it inherits. Below [`spawn`](crate::spawn), [`reexec`](crate::reexec) and
//! [`builds`](crate::builds), which all use it.

use std::ffi::OsStr;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::unistd::{AccessFlags, access};

/// Why the worker command cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    /// The path names nothing (or cannot be looked at).
    #[error("worker command {path}: {source}")]
    Missing {
        /// The path.
        path: PathBuf,
        /// The OS error (`No such file or directory`, ...).
        source: std::io::Error,
    },
    /// The path names a directory.
    #[error("worker command {0} is a directory")]
    Directory(PathBuf),
    /// The file may not be executed by this user.
    #[error("worker command {0} is not executable (check its mode: chmod +x)")]
    NotExecutable(PathBuf),
    /// A bare name found in no `PATH` directory.
    #[error("worker command {name:?} is not found in PATH ({path})")]
    NotInPath {
        /// The name.
        name: String,
        /// The `PATH` searched.
        path: String,
    },
}

/// Checks that `program` names an executable file, the way the spawn will look it up: as a
/// path when it contains a `/`, else through `PATH`. Returns the file found. Run at start, so
/// that a typo fails the master at once instead of respawning forever.
///
/// # Errors
/// A [`ProgramError`] naming the path.
///
/// ```
/// use einhorn_master::exec::check_program;
/// assert!(check_program("sh".as_ref()).is_ok());
/// let err = check_program("/nonexistent/server".as_ref()).unwrap_err();
/// assert!(err.to_string().contains("/nonexistent/server"));
/// ```
pub fn check_program(program: &OsStr) -> Result<PathBuf, ProgramError> {
    if program.as_bytes().contains(&b'/') || program.is_empty() {
        return check_file(Path::new(program));
    }
    // As execvp does: glibc's default when PATH is unset.
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into());
    let mut first_error = None;
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        match check_file(&candidate) {
            Ok(found) => return Ok(found),
            Err(ProgramError::Missing { .. }) => {}
            // execvp goes on past a file it may not run; report it if nothing else is found.
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| ProgramError::NotInPath {
        name: program.to_string_lossy().into_owned(),
        path: path.to_string_lossy().into_owned(),
    }))
}

fn check_file(path: &Path) -> Result<PathBuf, ProgramError> {
    let meta = std::fs::metadata(path).map_err(|source| ProgramError::Missing {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_dir() {
        return Err(ProgramError::Directory(path.to_path_buf()));
    }
    access(path, AccessFlags::X_OK).map_err(|_| ProgramError::NotExecutable(path.to_path_buf()))?;
    Ok(path.to_path_buf())
}

/// Sets or clears `FD_CLOEXEC` on `fd`.
///
/// # Errors
/// The OS error.
pub fn set_cloexec(fd: RawFd, cloexec: bool) -> std::io::Result<()> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    // SAFETY: only the descriptor's flags change; the fd is borrowed for the calls.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let mut flags = FdFlag::from_bits_truncate(fcntl(borrowed, FcntlArg::F_GETFD)?);
    flags.set(FdFlag::FD_CLOEXEC, cloexec);
    fcntl(borrowed, FcntlArg::F_SETFD(flags))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_checked_like_execvp_looks_them_up() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("worker");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let err = check_program(script.as_os_str()).unwrap_err();
        assert!(matches!(err, ProgramError::NotExecutable(_)), "{err}");
        assert!(err.to_string().contains(&script.display().to_string()));
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        assert_eq!(check_program(script.as_os_str()).unwrap(), script);
        let err = check_program(dir.path().as_os_str()).unwrap_err();
        assert!(matches!(err, ProgramError::Directory(_)), "{err}");
        let err = check_program("/nonexistent/worker".as_ref()).unwrap_err();
        assert!(matches!(err, ProgramError::Missing { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/worker"), "{err}");
        let err = check_program("einhorn-master-no-such-program".as_ref()).unwrap_err();
        assert!(matches!(err, ProgramError::NotInPath { .. }), "{err}");
        assert!(check_program("".as_ref()).is_err());
        assert!(check_program("sh".as_ref()).unwrap().is_absolute());
    }
}
