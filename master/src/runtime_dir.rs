//! Where the command socket (and its lock file) live when `-d` does not say: in a directory
//! only this user can write, as systemd's user services and ssh-agent keep theirs, never
//! directly in a shared one such as `/tmp`, where another user could plant a file, a symlink
//! or a lock at the path first.
//!
//! - `$XDG_RUNTIME_DIR` when it is set, absolute, and a directory (not a symlink) owned by
//!   this user that neither group nor others can write: systemd's `/run/user/UID`;
//! - else `$TMPDIR/einhorn-UID` (`/tmp/einhorn-UID` without `TMPDIR`), which the master
//!   creates with mode 0700 and refuses when it is anything else than a directory of this
//!   user's with mode 0700 (it never changes someone else's).
//!
//! The master creates the directory ([`runtime_dir`]); `einhorn-master ctl` only computes the
//! path ([`RuntimeDir::choose`]), the same way, so the two agree when run by the same user in
//! the same environment. A `ctl` run as another user (root, for a user's master) needs `-d`.
//!
//! ```
//! use einhorn_master::runtime_dir::{RuntimeDir, RuntimeEnv};
//!
//! let env = RuntimeEnv { xdg_runtime_dir: None, tmpdir: None, uid: 1000 };
//! assert_eq!(RuntimeDir::choose(&env).path(), "/tmp/einhorn-1000");
//! ```

use std::ffi::OsString;
use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::files::{Found, Owner};
use crate::socket::SocketError;

/// What the choice of the directory depends on: passed in, so that it can be tested without
/// changing the process's environment (shared by every thread, tests included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeEnv {
    /// `XDG_RUNTIME_DIR`.
    pub xdg_runtime_dir: Option<OsString>,
    /// `TMPDIR`.
    pub tmpdir: Option<OsString>,
    /// The user the directory must belong to: this process's effective uid.
    pub uid: u32,
}

impl RuntimeEnv {
    /// This process's environment and effective uid.
    pub fn current() -> RuntimeEnv {
        RuntimeEnv {
            xdg_runtime_dir: std::env::var_os("XDG_RUNTIME_DIR"),
            tmpdir: std::env::var_os("TMPDIR"),
            uid: nix::unistd::geteuid().as_raw(),
        }
    }
}

/// The directory chosen for the default command socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuntimeDir {
    /// `$XDG_RUNTIME_DIR`, already private to this user (its session manager made it).
    Xdg(PathBuf),
    /// `$TMPDIR/einhorn-UID`, private once [`ensure_private_dir`] has made or checked it.
    Private {
        /// The directory.
        path: PathBuf,
        /// `$XDG_RUNTIME_DIR`, when it was set but not usable.
        refused_xdg: Option<PathBuf>,
    },
}

impl RuntimeDir {
    /// Chooses the directory for `env` (see the [module](self)); reads the metadata of
    /// `$XDG_RUNTIME_DIR` but creates nothing.
    ///
    /// ```
    /// use einhorn_master::runtime_dir::{RuntimeDir, RuntimeEnv};
    ///
    /// // A relative XDG_RUNTIME_DIR is not used.
    /// let env = RuntimeEnv {
    ///     xdg_runtime_dir: Some("run/user/1000".into()),
    ///     tmpdir: Some("/var/tmp".into()),
    ///     uid: 1000,
    /// };
    /// assert_eq!(RuntimeDir::choose(&env).path(), "/var/tmp/einhorn-1000");
    /// ```
    pub fn choose(env: &RuntimeEnv) -> RuntimeDir {
        let xdg = env
            .xdg_runtime_dir
            .as_ref()
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from);
        if let Some(xdg) = &xdg
            && xdg_usable(xdg, env.uid)
        {
            return RuntimeDir::Xdg(xdg.clone());
        }
        let tmpdir = env
            .tmpdir
            .as_ref()
            .filter(|dir| !dir.is_empty())
            .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
        RuntimeDir::Private {
            path: tmpdir.join(format!("einhorn-{}", env.uid)),
            refused_xdg: xdg,
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        match self {
            RuntimeDir::Xdg(path) | RuntimeDir::Private { path, .. } => path,
        }
    }
}

/// Whether `dir` (from `XDG_RUNTIME_DIR`) is fit for the socket: absolute, and a directory
/// itself (not a symlink) owned by `uid` that neither group nor others can write.
fn xdg_usable(dir: &Path, uid: u32) -> bool {
    dir.is_absolute()
        && std::fs::symlink_metadata(dir)
            .is_ok_and(|meta| meta.is_dir() && meta.uid() == uid && meta.mode() & 0o022 == 0)
}

/// The master's directory for its default command socket, created if it is missing (see the
/// [module](self)).
///
/// # Errors
/// [`SocketError::RuntimeDirUnsafe`] naming the directory, what it is and whose, when it is
/// not private to this user; [`SocketError::RuntimeDir`] when it cannot be created.
pub fn runtime_dir() -> Result<PathBuf, SocketError> {
    let env = RuntimeEnv::current();
    match RuntimeDir::choose(&env) {
        RuntimeDir::Xdg(path) => Ok(path),
        RuntimeDir::Private { path, refused_xdg } => {
            if let Some(xdg) = refused_xdg {
                tracing::warn!(
                    "XDG_RUNTIME_DIR {} is not an absolute path to a directory of uid {} that \
                     only it can write; using {}",
                    xdg.display(),
                    env.uid,
                    path.display()
                );
            }
            ensure_private_dir(&path, env.uid)?;
            Ok(path)
        }
    }
}

/// Creates `path` as a directory with mode 0700 when nothing is there; otherwise checks that
/// it is a directory (not a symlink) owned by `uid` with mode 0700. Someone else's is never
/// changed: it is an error.
///
/// ```
/// use std::os::unix::fs::PermissionsExt;
///
/// let tmp = tempfile::tempdir().unwrap();
/// let dir = tmp.path().join("einhorn-me");
/// let me = nix::unistd::geteuid().as_raw();
/// einhorn_master::runtime_dir::ensure_private_dir(&dir, me).unwrap();
/// assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
/// ```
///
/// # Errors
/// [`SocketError::RuntimeDirUnsafe`] naming `path`, what is there and whose;
/// [`SocketError::RuntimeDir`] when it cannot be created or inspected.
pub fn ensure_private_dir(path: &Path, uid: u32) -> Result<(), SocketError> {
    let io = |source| SocketError::RuntimeDir {
        path: path.to_path_buf(),
        source,
    };
    let made = match DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(io(e)),
    };
    let unsafe_dir = |found| SocketError::RuntimeDirUnsafe {
        path: path.to_path_buf(),
        found,
        expected: Owner::of_uid(uid),
    };
    // Opened without following a symlink, and checked (and, if just made, chmod'ed) through
    // the fd: the directory checked is the one there, not one swapped in between.
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path);
    let dir = match dir {
        Ok(dir) => dir,
        // A symlink (ELOOP), a file (ENOTDIR), another user's directory (EACCES, when not
        // root): say what it is.
        Err(_) => return Err(Found::at(path).map_or_else(io, unsafe_dir)),
    };
    let private = |meta: &std::fs::Metadata| meta.uid() == uid && meta.mode() & 0o7777 == 0o700;
    let mut meta = dir.metadata().map_err(io)?;
    if made && meta.uid() == uid && !private(&meta) {
        // Ours, just made: the umask took bits off 0700.
        dir.set_permissions(std::fs::Permissions::from_mode(0o700))
            .map_err(io)?;
        meta = dir.metadata().map_err(io)?;
    }
    if private(&meta) {
        Ok(())
    } else {
        Err(unsafe_dir(Found::from_metadata(path, &meta)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::tests::{OTHER_UID, assert_names_other_owner, plant_as_other_user};

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn env(xdg: Option<&Path>, tmpdir: Option<&Path>) -> RuntimeEnv {
        RuntimeEnv {
            xdg_runtime_dir: xdg.map(Into::into),
            tmpdir: tmpdir.map(Into::into),
            uid: me(),
        }
    }

    fn mkdir(path: &Path, mode: u32) {
        std::fs::create_dir(path).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn xdg_runtime_dir_when_it_is_private_to_the_user() {
        let tmp = tempfile::tempdir().unwrap();
        let xdg = tmp.path().join("run-user");
        mkdir(&xdg, 0o700);
        let private = tmp.path().join(format!("einhorn-{}", me()));
        let chosen = RuntimeDir::choose(&env(Some(&xdg), Some(tmp.path())));
        assert_eq!(chosen, RuntimeDir::Xdg(xdg.clone()));
        assert_eq!(chosen.path(), xdg);
        // 0755 is fine: others can look, not write.
        std::fs::set_permissions(&xdg, std::fs::Permissions::from_mode(0o755)).unwrap();
        let chosen = RuntimeDir::choose(&env(Some(&xdg), Some(tmp.path())));
        assert_eq!(chosen, RuntimeDir::Xdg(xdg.clone()));

        let fallback = |xdg: &Path| RuntimeDir::Private {
            path: private.clone(),
            refused_xdg: Some(xdg.to_path_buf()),
        };
        // Writable by others, a group, relative, missing, a symlink to a good one: not used.
        for mode in [0o777, 0o770, 0o1777] {
            std::fs::set_permissions(&xdg, std::fs::Permissions::from_mode(mode)).unwrap();
            let chosen = RuntimeDir::choose(&env(Some(&xdg), Some(tmp.path())));
            assert_eq!(chosen, fallback(&xdg), "mode {mode:o}");
        }
        std::fs::set_permissions(&xdg, std::fs::Permissions::from_mode(0o700)).unwrap();
        let relative = Path::new("run-user");
        let chosen = RuntimeDir::choose(&env(Some(relative), Some(tmp.path())));
        assert_eq!(chosen, fallback(relative));
        let missing = tmp.path().join("missing");
        let chosen = RuntimeDir::choose(&env(Some(&missing), Some(tmp.path())));
        assert_eq!(chosen, fallback(&missing));
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&xdg, &link).unwrap();
        let chosen = RuntimeDir::choose(&env(Some(&link), Some(tmp.path())));
        assert_eq!(chosen, fallback(&link));
        // Someone else's.
        if plant_as_other_user(&xdg) {
            let chosen = RuntimeDir::choose(&env(Some(&xdg), Some(tmp.path())));
            assert_eq!(chosen, fallback(&xdg));
        }
    }

    #[test]
    fn tmpdir_or_tmp_without_xdg() {
        let chosen = RuntimeDir::choose(&env(None, Some(Path::new("/var/tmp"))));
        assert_eq!(
            chosen,
            RuntimeDir::Private {
                path: PathBuf::from(format!("/var/tmp/einhorn-{}", me())),
                refused_xdg: None,
            }
        );
        let unset = RuntimeDir::choose(&env(None, None));
        assert_eq!(
            unset.path(),
            PathBuf::from(format!("/tmp/einhorn-{}", me()))
        );
        let empty = RuntimeDir::choose(&env(Some(Path::new("")), Some(Path::new(""))));
        assert_eq!(empty, unset, "empty variables count as unset");
    }

    #[test]
    fn the_private_dir_is_created_0700_and_accepted_again() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("einhorn-x");
        ensure_private_dir(&dir, me()).unwrap();
        let meta = std::fs::symlink_metadata(&dir).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.mode() & 0o7777, 0o700);
        assert_eq!(meta.uid(), me());
        ensure_private_dir(&dir, me()).unwrap();
    }

    #[test]
    fn a_squatted_private_dir_is_refused_and_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let check = |dir: &Path, what: &str| {
            let err = ensure_private_dir(dir, me()).unwrap_err();
            assert!(matches!(err, SocketError::RuntimeDirUnsafe { .. }), "{err}");
            let text = err.to_string();
            assert!(text.contains(&dir.display().to_string()), "{text}");
            assert!(text.contains(what), "{text}");
            text
        };
        // Ours but open to everyone: not changed.
        let open = tmp.path().join("open");
        mkdir(&open, 0o777);
        check(&open, "a directory owned by ");
        check(&open, "mode 0777");
        let meta = std::fs::metadata(&open).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o777, "not chmod'ed");
        // Someone else's, even with mode 0700: not chown'ed.
        let theirs = tmp.path().join("theirs");
        mkdir(&theirs, 0o700);
        if plant_as_other_user(&theirs) {
            let text = check(&theirs, "mode 0700");
            assert_names_other_owner(&text, true);
            assert_eq!(std::fs::metadata(&theirs).unwrap().uid(), OTHER_UID);
        }
        // A symlink to a good directory, and a file.
        let good = tmp.path().join("good");
        mkdir(&good, 0o700);
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        let planted = plant_as_other_user(&link);
        let text = check(&link, &format!("a symlink to {}", good.display()));
        assert_names_other_owner(&text, planted);
        let file = tmp.path().join("file");
        std::fs::write(&file, "x").unwrap();
        check(&file, "a regular file");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    }
}
