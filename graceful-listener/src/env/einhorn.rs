//! Einhorn's variables: is this process a worker, its listeners, its command socket.

use std::os::fd::RawFd;
use std::path::PathBuf;

use super::{EnvError, Environment, invalid, parse, parse_fd};

/// What a missing Einhorn variable means.
const NOT_EINHORN: &str = "this process was not started by an Einhorn master";

/// `EINHORN_FD_COUNT`: how many `-b` sockets the master bound.
pub const FD_COUNT: &str = "EINHORN_FD_COUNT";
/// `EINHORN_MASTER_PID`: the master's pid, which must be this process's parent.
pub const MASTER_PID: &str = "EINHORN_MASTER_PID";
/// `EINHORN_SOCK_PATH`: path of the master's command socket.
pub const SOCK_PATH: &str = "EINHORN_SOCK_PATH";
/// `EINHORN_SOCK_FD`: an fd already connected to the command socket (`einhorn -g`).
pub const SOCK_FD: &str = "EINHORN_SOCK_FD";
/// `EINHORN_CHILD_INDEX`: this worker's index.
pub const CHILD_INDEX: &str = "EINHORN_CHILD_INDEX";
/// `EINHORN_FDS`: the listening fds, space separated (deprecated by Einhorn; still set).
pub const FDS: &str = "EINHORN_FDS";
/// `EINHORN_MASTER_EXTENSIONS`: the worker messages beyond Einhorn's that the master
/// understands, space separated (`worker:stats`). Set by einhorn-master, never by Stripe's
/// Einhorn: a worker sends such a message only when its master names it here.
pub const MASTER_EXTENSIONS: &str = "EINHORN_MASTER_EXTENSIONS";
/// `EINHORN_LOAD_FD`: a shared-memory table in which the workers of one master publish their
/// load, so that one with clearly more connections than its siblings lets them accept
/// (see [`balance`](crate::balance)). Set by einhorn-master, never by Stripe's Einhorn.
pub const LOAD_FD: &str = "EINHORN_LOAD_FD";
/// `EINHORN_KEYS_FD`: a read-only memory file holding the key ring the master shares with
/// every generation of its workers (see [`keyring`](crate::keyring)). Set by einhorn-master,
/// never by Stripe's Einhorn.
pub const KEYS_FD: &str = "EINHORN_KEYS_FD";
/// The prefix every Einhorn variable shares: a master clears inherited ones before it sets
/// its own.
pub const PREFIX: &str = "EINHORN_";

/// The name of the variable that holds listener `index`'s fd: `EINHORN_FD_<index>`.
///
/// ```
/// assert_eq!(graceful_listener::env::fd_var(2), "EINHORN_FD_2");
/// ```
pub fn fd_var(index: usize) -> String {
    format!("{PREFIX}FD_{index}")
}

/// How to reach the master's command socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandSocket {
    /// `EINHORN_SOCK_FD`: an fd said to be connected already (to be checked before use).
    Fd(RawFd),
    /// `EINHORN_SOCK_PATH`: connect to this path.
    Path(PathBuf),
}

impl Environment {
    /// Whether this process is an Einhorn worker with at least one listener: the fd count
    /// is above zero and the master pid is the parent pid (the test Go's `IsRunning` lacks).
    pub fn einhorn_worker_with_listeners(&self) -> bool {
        self.check_einhorn_worker().is_ok() && self.einhorn_fd_count().is_ok_and(|n| n > 0)
    }

    /// Checks that this process is a worker: `EINHORN_MASTER_PID` is set, numeric, and the
    /// parent pid.
    ///
    /// # Errors
    /// [`EnvError::Missing`], [`EnvError::Invalid`] or [`EnvError::NotOurMaster`].
    pub fn check_einhorn_worker(&self) -> Result<(), EnvError> {
        let value = self.require(MASTER_PID, NOT_EINHORN)?;
        let master_pid: i32 = parse(MASTER_PID, value, "a process id")?;
        if master_pid <= 0 {
            // The value as found: `-0` and `-007` are reported as written, not as parsed.
            return Err(invalid(MASTER_PID, value, "a process id"));
        }
        if master_pid != self.parent_pid {
            return Err(EnvError::NotOurMaster {
                master_pid,
                parent_pid: self.parent_pid,
            });
        }
        Ok(())
    }

    /// The number of listeners the master passed (`EINHORN_FD_COUNT`).
    ///
    /// # Errors
    /// [`EnvError::Missing`] or [`EnvError::Invalid`].
    pub fn einhorn_fd_count(&self) -> Result<usize, EnvError> {
        parse(
            FD_COUNT,
            self.require(FD_COUNT, NOT_EINHORN)?,
            "a listener count",
        )
    }

    /// The fd number of listener `index` (`EINHORN_FD_<index>`), after checking that this
    /// process is a worker and that `index` is below the count.
    ///
    /// # Errors
    /// Any [`EnvError`]: not a worker, index out of range, or a missing or garbage variable.
    pub fn einhorn_fd(&self, index: usize) -> Result<RawFd, EnvError> {
        self.check_einhorn_worker()?;
        let count = self.einhorn_fd_count()?;
        if index >= count {
            return Err(EnvError::IndexOutOfRange {
                spec: format!("einhorn@{index}"),
                passed: format!("{FD_COUNT}={count}"),
            });
        }
        let var = Environment::einhorn_fd_var(index);
        parse_fd(&var, self.require(&var, NOT_EINHORN)?)
    }

    /// The name of the variable that holds listener `index`'s fd.
    pub fn einhorn_fd_var(index: usize) -> String {
        fd_var(index)
    }

    /// Where to send the ACK: `EINHORN_SOCK_FD` when it is set and numeric, else
    /// `EINHORN_SOCK_PATH`. (A given fd must still be checked: see [`crate::einhorn::ack`].)
    ///
    /// # Errors
    /// [`EnvError::Missing`] when neither is set, [`EnvError::Invalid`] for an empty path.
    pub fn einhorn_command_socket(&self) -> Result<CommandSocket, EnvError> {
        let sock_fd = self
            .get(SOCK_FD)
            .and_then(|v| v.trim().parse::<RawFd>().ok());
        if let Some(fd) = sock_fd.filter(|fd| *fd >= 0) {
            return Ok(CommandSocket::Fd(fd));
        }
        self.einhorn_command_socket_path().map(CommandSocket::Path)
    }

    /// The command socket's path (`EINHORN_SOCK_PATH`).
    ///
    /// # Errors
    /// [`EnvError::Missing`] or, for an empty value, [`EnvError::Invalid`].
    pub fn einhorn_command_socket_path(&self) -> Result<PathBuf, EnvError> {
        let path = self.require(SOCK_PATH, NOT_EINHORN)?;
        if path.is_empty() {
            return Err(invalid(SOCK_PATH, path, "a socket path"));
        }
        Ok(PathBuf::from(path))
    }

    /// Whether the master says it understands the worker message `message`
    /// (`EINHORN_MASTER_EXTENSIONS` names it).
    pub fn einhorn_master_understands(&self, message: &str) -> bool {
        self.get(MASTER_EXTENSIONS)
            .is_some_and(|v| v.split_ascii_whitespace().any(|m| m == message))
    }

    /// This worker's index (`EINHORN_CHILD_INDEX`), if set and numeric.
    pub fn einhorn_child_index(&self) -> Option<usize> {
        self.get(CHILD_INDEX)?.trim().parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: i32 = 4242;

    fn env(vars: &[(&str, &str)]) -> Environment {
        Environment::from_vars(vars.iter().copied(), PARENT + 1, PARENT)
    }

    fn worker(extra: &[(&str, &str)]) -> Environment {
        let mut vars = vec![
            (MASTER_PID, "4242"),
            (FD_COUNT, "2"),
            ("EINHORN_FD_0", "3"),
            ("EINHORN_FD_1", "7"),
            (SOCK_PATH, "/tmp/einhorn.sock"),
        ];
        vars.extend_from_slice(extra);
        env(&vars)
    }

    #[test]
    fn a_real_worker_environment_parses() {
        let e = worker(&[(CHILD_INDEX, "5")]);
        assert!(e.einhorn_worker_with_listeners());
        assert_eq!(e.einhorn_fd_count(), Ok(2));
        assert_eq!(e.einhorn_fd(0), Ok(3));
        assert_eq!(e.einhorn_fd(1), Ok(7));
        assert_eq!(e.einhorn_child_index(), Some(5));
        assert_eq!(
            e.einhorn_command_socket(),
            Ok(CommandSocket::Path("/tmp/einhorn.sock".into()))
        );
    }

    #[test]
    fn an_empty_environment_is_not_a_worker() {
        let e = env(&[]);
        assert!(!e.einhorn_worker_with_listeners());
        assert_eq!(
            e.check_einhorn_worker(),
            Err(EnvError::Missing {
                var: MASTER_PID.into(),
                why: NOT_EINHORN,
            })
        );
        let msg = e.einhorn_fd(0).unwrap_err().to_string();
        assert_eq!(
            msg,
            "EINHORN_MASTER_PID is not set: this process was not started by an Einhorn master"
        );
    }

    #[test]
    fn zero_listeners_is_a_worker_without_listeners() {
        let e = env(&[(MASTER_PID, "4242"), (FD_COUNT, "0")]);
        assert!(e.check_einhorn_worker().is_ok());
        assert!(!e.einhorn_worker_with_listeners());
        assert_eq!(
            e.einhorn_fd(0),
            Err(EnvError::IndexOutOfRange {
                spec: "einhorn@0".into(),
                passed: "EINHORN_FD_COUNT=0".into(),
            })
        );
    }

    #[test]
    fn a_grandchild_is_not_a_worker() {
        let e = Environment::from_vars(
            [(MASTER_PID, "4242"), (FD_COUNT, "1"), ("EINHORN_FD_0", "3")],
            1000,
            999,
        );
        assert!(!e.einhorn_worker_with_listeners());
        let err = e.einhorn_fd(0).unwrap_err();
        assert_eq!(
            err,
            EnvError::NotOurMaster {
                master_pid: 4242,
                parent_pid: 999
            }
        );
        assert!(
            err.to_string()
                .contains("EINHORN_MASTER_PID=4242 is not this process's parent (pid 999)")
        );
    }

    #[test]
    fn index_past_the_count_names_both() {
        let err = worker(&[]).einhorn_fd(2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "einhorn@2 is out of range: EINHORN_FD_COUNT=2 (indexes start at 0)"
        );
    }

    #[test]
    fn garbage_values_are_named() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "EINHORN_FD_0",
                "abc",
                "EINHORN_FD_0=\"abc\" is not a file descriptor number",
            ),
            (
                "EINHORN_FD_0",
                "",
                "EINHORN_FD_0=\"\" is not a file descriptor number",
            ),
            (
                "EINHORN_FD_0",
                "-1",
                "EINHORN_FD_0=\"-1\" is not a file descriptor number",
            ),
            (
                "EINHORN_FD_0",
                "3 ",
                "EINHORN_FD_0=\"3 \" is not a file descriptor number",
            ),
            (
                "EINHORN_FD_0",
                "99999999999",
                "EINHORN_FD_0=\"99999999999\" is not a file descriptor number",
            ),
            (
                FD_COUNT,
                "two",
                "EINHORN_FD_COUNT=\"two\" is not a listener count",
            ),
            (
                FD_COUNT,
                "-2",
                "EINHORN_FD_COUNT=\"-2\" is not a listener count",
            ),
            (
                MASTER_PID,
                "0x10",
                "EINHORN_MASTER_PID=\"0x10\" is not a process id",
            ),
            (
                MASTER_PID,
                "0",
                "EINHORN_MASTER_PID=\"0\" is not a process id",
            ),
            // Found by the property tests: a pid that parses but is not positive was reported
            // as parsed (`"0"` for `-0`), not as found.
            (
                MASTER_PID,
                "-0",
                "EINHORN_MASTER_PID=\"-0\" is not a process id",
            ),
            (
                MASTER_PID,
                "-007",
                "EINHORN_MASTER_PID=\"-007\" is not a process id",
            ),
        ];
        for (var, value, message) in cases {
            let e = worker(&[(var, value)]);
            let err = e.einhorn_fd(0).unwrap_err();
            assert_eq!(&err.to_string(), message, "{var}={value:?}");
        }
    }

    #[test]
    fn a_missing_listener_variable_is_named() {
        let e = env(&[(MASTER_PID, "4242"), (FD_COUNT, "1")]);
        assert_eq!(
            e.einhorn_fd(0),
            Err(EnvError::Missing {
                var: "EINHORN_FD_0".into(),
                why: NOT_EINHORN,
            })
        );
    }

    #[test]
    fn sock_fd_wins_over_path_only_when_numeric() {
        assert_eq!(
            worker(&[(SOCK_FD, "9")]).einhorn_command_socket(),
            Ok(CommandSocket::Fd(9))
        );
        assert_eq!(
            worker(&[(SOCK_FD, "nine")]).einhorn_command_socket(),
            Ok(CommandSocket::Path("/tmp/einhorn.sock".into()))
        );
        assert_eq!(
            env(&[(MASTER_PID, "4242")]).einhorn_command_socket(),
            Err(EnvError::Missing {
                var: SOCK_PATH.into(),
                why: NOT_EINHORN,
            })
        );
        assert!(matches!(
            env(&[(SOCK_PATH, "")]).einhorn_command_socket(),
            Err(EnvError::Invalid { .. })
        ));
    }
}
