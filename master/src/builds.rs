//! The builds workers run, held open by version: the file a version's first worker was
//! started from is kept (an `O_PATH` descriptor), so that every later worker of that
//! version runs the same build even if the file at the program's path was replaced or
//! removed since. After a failed upgrade, the machine asks for workers of the last good
//! version ([`Action::Spawn`](crate::pure::machine::Action::Spawn)'s `version`): they run the build
//! that served, not the bad one still on disk.
//!
//! A worker is started from the program's path whenever that path still names the held
//! build (so a script's `$0` is what it always was), and from `/proc/self/fd/N` only when the
//! file there is another one now.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The builds held, by version.
#[derive(Debug, Default)]
pub struct Builds {
    by_version: BTreeMap<u64, OwnedFd>,
}

/// How to start a worker of some version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartFrom {
    /// The program's path: it names the version's build.
    Path,
    /// The held build, through `/proc/self/fd/N` (the path names another file now).
    Held(RawFd),
}

impl Builds {
    /// How to start a worker of `version` whose program is at `found` now (the path the
    /// spawn would run): the first worker of a version holds the file it runs.
    ///
    /// # Errors
    /// The OS error opening the file for the first worker of a version.
    pub fn start_from(&mut self, version: u64, found: &Path) -> std::io::Result<StartFrom> {
        let now = std::fs::metadata(found).ok().map(|m| (m.dev(), m.ino()));
        if let Some(fd) = self.by_version.get(&version) {
            let held = identity(fd);
            return Ok(if held.is_some() && held == now {
                StartFrom::Path
            } else {
                StartFrom::Held(fd.as_raw_fd())
            });
        }
        self.by_version.insert(version, open_path(found)?);
        Ok(StartFrom::Path)
    }

    /// `version`'s build, when held: how to start it while its path names nothing.
    pub fn held(&self, version: u64) -> Option<StartFrom> {
        self.by_version
            .get(&version)
            .map(|fd| StartFrom::Held(fd.as_raw_fd()))
    }

    /// Lets go of the builds of versions `keep` says no for.
    pub fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        self.by_version.retain(|&version, _| keep(version));
    }

    /// The builds held, by version, to hand over across an exec.
    pub fn fds(&self) -> Vec<(u64, RawFd)> {
        self.by_version
            .iter()
            .map(|(&version, fd)| (version, fd.as_raw_fd()))
            .collect()
    }

    /// Takes over the builds an earlier master held (made close-on-exec again).
    ///
    /// # Safety
    /// Each fd must have been handed over to this process to be taken, once.
    pub unsafe fn adopt(&mut self, fds: &[(u64, RawFd)]) {
        for &(version, fd) in fds {
            // SAFETY: the caller's promise.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            let _ = crate::exec::set_cloexec(fd, true);
            self.by_version.insert(version, owned);
        }
    }
}

/// Opens `path` as an `O_PATH` descriptor: enough to exec the file through
/// `/proc/self/fd/N`, whatever its read permission.
fn open_path(path: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)?;
    Ok(OwnedFd::from(file))
}

/// The file's device and inode.
fn identity(fd: &OwnedFd) -> Option<(u64, u64)> {
    nix::sys::stat::fstat(fd).ok().map(|s| (s.st_dev, s.st_ino))
}

/// `/proc/self/fd/N`: the held build, as a path a worker can be exec'd from.
pub fn held_path(fd: RawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{fd}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_runs_the_file_its_first_worker_ran_even_once_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("app");
        std::fs::write(&program, "#!/bin/sh\necho v1\n").unwrap();
        let mut builds = Builds::default();
        assert_eq!(builds.start_from(1, &program).unwrap(), StartFrom::Path);
        assert_eq!(builds.start_from(1, &program).unwrap(), StartFrom::Path);
        // v2 replaces the file (a new inode): version 1 now starts from what it held.
        let staged = dir.path().join("app.new");
        std::fs::write(&staged, "#!/bin/sh\necho v2\n").unwrap();
        std::fs::rename(&staged, &program).unwrap();
        assert_eq!(builds.start_from(2, &program).unwrap(), StartFrom::Path);
        let StartFrom::Held(fd) = builds.start_from(1, &program).unwrap() else {
            panic!("version 1 must start from its held build");
        };
        let text = std::fs::read_to_string(held_path(fd)).unwrap();
        assert_eq!(text, "#!/bin/sh\necho v1\n");
        // Removed from disk: still held.
        std::fs::remove_file(&program).unwrap();
        assert!(matches!(
            builds.start_from(1, &program).unwrap(),
            StartFrom::Held(_)
        ));
        builds.retain(|v| v == 2);
        assert!(builds.held(1).is_none() && builds.held(2).is_some());
    }
}
