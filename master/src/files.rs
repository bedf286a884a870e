//! The master's files in shared directories such as `/tmp`, where other users can plant
//! files and symlinks: what is at a path, described in errors with its owner (so a file
//! planted by someone else says whose it is), and the unpredictable, exclusively created
//! names of the master's temporary files (a predictable name can be planted beforehand).
//!
//! ```
//! use einhorn_master::files::{FileKind, Found};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let found = Found::at(dir.path()).unwrap();
//! assert_eq!(found.kind, FileKind::Directory);
//! assert!(found.to_string().starts_with("a directory owned by "), "{found}");
//! ```

use std::ffi::OsString;
use std::fmt;
use std::fs::Metadata;
use std::hash::{BuildHasher, Hasher};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The owner of a file: its uid and, when `/etc/passwd` (or whatever NSS uses) knows it, the
/// user's name.
///
/// ```
/// use einhorn_master::files::Owner;
///
/// let root = Owner::of_uid(0);
/// assert_eq!(root.uid, 0);
/// assert_eq!(root.to_string(), "root (uid 0)");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The uid.
    pub uid: u32,
    /// The user's name, if the uid has one.
    pub name: Option<String>,
}

impl Owner {
    /// The owner `uid`, with its user name looked up.
    pub fn of_uid(uid: u32) -> Owner {
        let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|user| user.name);
        Owner { uid, name }
    }

    /// The effective user of this process.
    pub fn current() -> Owner {
        Owner::of_uid(nix::unistd::geteuid().as_raw())
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name} (uid {})", self.uid),
            None => write!(f, "uid {}", self.uid),
        }
    }
}

/// The kind of a file, as `lstat` sees it (a symlink is never followed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link, and where it points (`None` when it cannot be read).
    Symlink(Option<PathBuf>),
    /// A unix socket.
    Socket,
    /// A named pipe.
    Fifo,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileKind::File => f.write_str("a regular file"),
            FileKind::Directory => f.write_str("a directory"),
            FileKind::Symlink(Some(target)) => write!(f, "a symlink to {}", target.display()),
            FileKind::Symlink(None) => f.write_str("a symlink"),
            FileKind::Socket => f.write_str("a socket"),
            FileKind::Fifo => f.write_str("a fifo"),
            FileKind::CharDevice => f.write_str("a character device"),
            FileKind::BlockDevice => f.write_str("a block device"),
        }
    }
}

/// What is at a path: its kind, owner and permission bits, to name in an error when it is
/// not what the master expects there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The kind of file.
    pub kind: FileKind,
    /// Its owner.
    pub owner: Owner,
    /// Its permission bits (`0o7777` at most).
    pub mode: u32,
}

impl Found {
    /// What is at `path`, without following a symlink there.
    ///
    /// # Errors
    /// The OS error of `lstat` (`NotFound` when there is nothing).
    pub fn at(path: &Path) -> std::io::Result<Found> {
        let meta = std::fs::symlink_metadata(path)?;
        Ok(Found::from_metadata(path, &meta))
    }

    /// What `meta` (the `lstat` or `fstat` of `path`) describes; a symlink's target is read
    /// from `path`.
    pub fn from_metadata(path: &Path, meta: &Metadata) -> Found {
        let kind = meta.file_type();
        let kind = if kind.is_symlink() {
            FileKind::Symlink(std::fs::read_link(path).ok())
        } else if kind.is_dir() {
            FileKind::Directory
        } else if kind.is_socket() {
            FileKind::Socket
        } else if kind.is_fifo() {
            FileKind::Fifo
        } else if kind.is_char_device() {
            FileKind::CharDevice
        } else if kind.is_block_device() {
            FileKind::BlockDevice
        } else {
            FileKind::File
        };
        Found {
            kind,
            owner: Owner::of_uid(meta.uid()),
            mode: meta.mode() & 0o7777,
        }
    }
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} owned by {}", self.kind, self.owner)?;
        // A symlink's own mode is always 0777 and means nothing.
        if !matches!(self.kind, FileKind::Symlink(_)) {
            write!(f, ", mode {:04o}", self.mode)?;
        }
        Ok(())
    }
}

/// How many names [`create_unique`] tries: another name is taken only when something is
/// already there, and a random name is taken by chance with a probability of 2^-64.
const UNIQUE_ATTEMPTS: usize = 8;

/// A name beside `path` that no one can predict: `PATH.TAG<pid>.<64 random bits in hex>`.
fn unique_name(path: &Path, tag: &str) -> PathBuf {
    // `RandomState` is seeded from the OS's randomness once per thread and changes with each
    // instance; the time and a counter are mixed in so two calls never share a seed.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut hasher = std::hash::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    let mut name = OsString::from(path.as_os_str());
    name.push(format!(
        ".{tag}{}.{:016x}",
        std::process::id(),
        hasher.finish()
    ));
    PathBuf::from(name)
}

/// Creates a file or directory with `create` at an unpredictable name beside `path` (see
/// [`unique_name`]), trying another name when one is taken (`AlreadyExists`). `create` must
/// create exclusively (`O_CREAT|O_EXCL`, `mkdir`), which never follows a symlink planted at
/// the name: so whatever it returns is a new file of ours.
///
/// # Errors
/// The first error of `create` other than `AlreadyExists`, or the last `AlreadyExists`.
pub(crate) fn create_unique<T>(
    path: &Path,
    tag: &str,
    mut create: impl FnMut(&Path) -> std::io::Result<T>,
) -> std::io::Result<(PathBuf, T)> {
    let mut last = None;
    for _ in 0..UNIQUE_ATTEMPTS {
        let name = unique_name(path, tag);
        match create(&name) {
            Ok(made) => return Ok((name, made)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::ErrorKind::AlreadyExists.into()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The uid of the "another user" of the tests: nobody.
    pub(crate) const OTHER_UID: u32 = 65534;

    /// Gives `path` (a symlink itself, not its target) to [`OTHER_UID`], as if another user
    /// had planted it; `false` when not running as root, which cannot.
    pub(crate) fn plant_as_other_user(path: &Path) -> bool {
        if !nix::unistd::geteuid().is_root() {
            return false;
        }
        std::os::unix::fs::lchown(path, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
        true
    }

    /// Holds that `message` names the owner of a file given to another user by
    /// [`plant_as_other_user`] (when it could be given).
    pub(crate) fn assert_names_other_owner(message: &str, planted: bool) {
        if planted {
            assert!(
                message.contains(&format!("uid {OTHER_UID}")),
                "names the owner: {message}"
            );
        }
    }

    /// A root-only file outside the master's files, and a path that does not exist yet:
    /// what a planted symlink points at.
    pub(crate) fn victims(dir: &Path) -> (PathBuf, PathBuf) {
        let secret = dir.join("secret");
        std::fs::write(&secret, "root only\n").unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        (secret, dir.join("created-through-a-link"))
    }

    /// Plants, at `link`, a symlink to each of `targets` in turn (given to another user where
    /// it can be), has `refuse` try the master's file there, and holds that the refusal it
    /// returns reads `"{what} {link} is a symlink to {target} owned by ..."` naming that
    /// owner, that nothing was written through the link to the [`victims`] and that the link
    /// is left in place; `after` checks what else must hold for each.
    pub(crate) fn assert_symlinks_refused(
        what: &str,
        link: &Path,
        targets: &[&Path],
        (secret, dangling): (&Path, &Path),
        mut refuse: impl FnMut() -> String,
        mut after: impl FnMut(),
    ) {
        for &target in targets {
            std::os::unix::fs::symlink(target, link).unwrap();
            let planted = plant_as_other_user(link);
            let text = refuse();
            assert!(
                text.starts_with(&format!(
                    "{what} {} is a symlink to {} owned by ",
                    link.display(),
                    target.display()
                )),
                "{text}"
            );
            assert_names_other_owner(&text, planted);
            assert_untouched(secret, dangling);
            assert_eq!(std::fs::read_link(link).unwrap(), target, "left in place");
            after();
            std::fs::remove_file(link).unwrap();
        }
    }

    /// Holds that nothing was written, created or locked through a planted symlink to
    /// [`victims`].
    pub(crate) fn assert_untouched(secret: &Path, dangling: &Path) {
        assert_eq!(std::fs::read_to_string(secret).unwrap(), "root only\n");
        let meta = std::fs::metadata(secret).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o600);
        assert!(
            std::fs::symlink_metadata(dangling).is_err(),
            "no file created at a dangling target"
        );
        let file = std::fs::File::open(secret).unwrap();
        assert!(
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok(),
            "the target is not locked"
        );
    }

    #[test]
    fn describes_each_kind_without_following_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o640))
            .unwrap();
        let found = Found::at(&file).unwrap();
        assert_eq!(found.kind, FileKind::File);
        assert_eq!(found.mode, 0o640);
        assert_eq!(found.owner, Owner::current());
        assert!(found.to_string().ends_with(", mode 0640"), "{found}");

        let link = dir.path().join("l");
        std::os::unix::fs::symlink("/nonexistent/target", &link).unwrap();
        let planted = plant_as_other_user(&link);
        let found = Found::at(&link).unwrap();
        assert_eq!(
            found.kind,
            FileKind::Symlink(Some("/nonexistent/target".into()))
        );
        let text = found.to_string();
        assert!(
            text.starts_with("a symlink to /nonexistent/target owned by "),
            "{text}"
        );
        assert!(!text.contains("mode"), "{text}");
        assert_names_other_owner(&text, planted);
        if planted {
            assert_eq!(
                text,
                "a symlink to /nonexistent/target owned by nobody (uid 65534)"
            );
        }
        assert_eq!(
            Found::at(&dir.path().join("none")).unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
    }

    #[test]
    fn an_owner_without_a_name_is_its_uid() {
        let owner = Owner::of_uid(4_000_000_000);
        assert_eq!(owner.name, None);
        assert_eq!(owner.to_string(), "uid 4000000000");
    }

    #[test]
    fn unique_names_are_beside_the_path_and_differ() {
        let path = Path::new("/run/x/master.pid");
        let a = unique_name(path, "tmp");
        let b = unique_name(path, "tmp");
        assert_ne!(a, b);
        assert_eq!(a.parent(), path.parent());
        let prefix = format!("/run/x/master.pid.tmp{}.", std::process::id());
        assert!(a.to_str().unwrap().starts_with(&prefix), "{a:?}");
        assert_eq!(a.to_str().unwrap().len(), prefix.len() + 16);
    }

    #[test]
    fn a_taken_name_is_retried_a_bounded_number_of_times() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("f");
        let mut tries = Vec::new();
        let (made, ()) = create_unique(&base, "tmp", |name| {
            tries.push(name.to_path_buf());
            if tries.len() < 3 {
                Err(std::io::ErrorKind::AlreadyExists.into())
            } else {
                Ok(())
            }
        })
        .unwrap();
        assert_eq!(tries.len(), 3);
        assert_eq!(made, tries[2]);
        let mut calls = 0;
        let err = create_unique(&base, "tmp", |_| -> std::io::Result<()> {
            calls += 1;
            Err(std::io::ErrorKind::AlreadyExists.into())
        })
        .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(calls, UNIQUE_ATTEMPTS);
        // Any other error ends it at once.
        let mut calls = 0;
        let err = create_unique(&base, "tmp", |_| -> std::io::Result<()> {
            calls += 1;
            Err(std::io::ErrorKind::PermissionDenied.into())
        })
        .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        assert_eq!(calls, 1);
    }
}
