//! The environment socket managers leave a worker (Einhorn, systemd, Server::Starter, `PORT`),
//! parsed without touching the process: an [`Environment`] is a snapshot of the variables and
//! of this process's pids, so every parser here can be tested exhaustively.
//!
//! | manager | variables | module |
//! | --- | --- | --- |
//! | Einhorn | `EINHORN_MASTER_PID`, `EINHORN_FD_COUNT`, `EINHORN_FD_<i>`, `EINHORN_SOCK_PATH`, ... | [`einhorn`](self#einhorn) |
//! | systemd | `LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`, `NOTIFY_SOCKET` | [`systemd`](self#systemd) |
//! | Server::Starter | `SERVER_STARTER_PORT` | [`starter`](self#serverstarter) |
//! | anyone | `GRACEFUL_LISTENER_BIND` (a bind spec for `auto`), `PORT` | |
//!
//! # Einhorn
//! A process is an Einhorn worker only if `EINHORN_MASTER_PID` is its parent: a grandchild
//! that inherited the variables is not one. Listener `i` is `EINHORN_FD_<i>`, for `i` below
//! `EINHORN_FD_COUNT`.
//!
//! # systemd
//! The sockets are for this process only if `LISTEN_PID` is its pid (children inherit the
//! variables and must ignore them). They are fds 3 to 3 + `LISTEN_FDS` - 1, named in order by
//! `LISTEN_FDNAMES` (colon separated) when the unit gives names.
//!
//! # Server::Starter
//! `SERVER_STARTER_PORT` lists `key=fd` entries separated by `;`, where the key is what
//! `start_server` was given: `8080`, `127.0.0.1:8080`, `[::1]:8080`, or a socket path.

mod einhorn;
mod starter;
mod systemd;

use std::os::fd::RawFd;

pub use einhorn::{
    CHILD_INDEX, CommandSocket, FD_COUNT, FDS, KEYS_FD, LOAD_FD, MASTER_EXTENSIONS, MASTER_PID,
    PREFIX, SOCK_FD, SOCK_PATH, fd_var,
};
pub use starter::{SERVER_STARTER_PORT, StarterPort};
pub use systemd::{
    Activation, LISTEN_FDNAMES, LISTEN_FDS, LISTEN_FDS_START, LISTEN_PID, NOTIFY_SOCKET,
};

/// `GRACEFUL_LISTENER_BIND`: a bind spec that `auto` takes before anything else.
pub const BIND: &str = "GRACEFUL_LISTENER_BIND";
/// `TOKIO_WORKER_THREADS`: the worker threads of a tokio runtime whose application did not
/// choose (`#[tokio::main]`, `Builder::new_multi_thread()`). einhorn-master sets it to each
/// worker's share of the cores, and einhorn-actix reads it for actix-web's workers.
pub const TOKIO_WORKER_THREADS: &str = "TOKIO_WORKER_THREADS";
/// `PORT`: the port to listen on, on every interface (Heroku, Cloud Run, Kubernetes
/// conventions), when no manager passed a socket.
pub const PORT: &str = "PORT";

/// The variables this crate reads, by prefix or name.
const PREFIXES: [&str; 2] = [PREFIX, "LISTEN_"];
const NAMES: [&str; 4] = [SERVER_STARTER_PORT, NOTIFY_SOCKET, BIND, PORT];

/// A variable a socket manager sets is missing or wrong, or the sockets it passed are not
/// this process's.
///
/// Every message names the variable and, where there is one, the value at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvError {
    /// A required variable is not set.
    #[error("{var} is not set: {why}")]
    Missing {
        /// The variable's name.
        var: String,
        /// What its absence means, e.g. "this process was not started by an Einhorn master".
        why: &'static str,
    },
    /// A variable is set to something that is not what a manager writes there.
    #[error("{var}={value:?} is not {expected}")]
    Invalid {
        /// The variable's name.
        var: String,
        /// Its value, as found.
        value: String,
        /// What it should have been.
        expected: &'static str,
    },
    /// A variable meant to hold a bind spec holds something that does not parse; the reason
    /// is the parser's own (`port 99999 is above 65535`).
    #[error("{var}={value:?} is not a bind spec: {reason}")]
    InvalidSpec {
        /// The variable's name.
        var: String,
        /// Its value, as found.
        value: String,
        /// What is wrong with it, as [`ParseBindError::reason`](crate::ParseBindError::reason)
        /// says.
        reason: String,
    },
    /// The Einhorn master pid is not this process's parent: a grandchild that inherited the
    /// environment, or a process started by hand with a copied environment.
    #[error(
        "{MASTER_PID}={master_pid} is not this process's parent (pid {parent_pid}): \
         only a direct child of the Einhorn master is a worker"
    )]
    NotOurMaster {
        /// The value of `EINHORN_MASTER_PID`.
        master_pid: i32,
        /// This process's actual parent pid.
        parent_pid: i32,
    },
    /// systemd passed its sockets to another process (this one inherited the variables).
    #[error(
        "{LISTEN_PID}={listen_pid} is not this process (pid {pid}): the sockets were passed to \
         another process"
    )]
    NotOurActivation {
        /// The value of `LISTEN_PID`.
        listen_pid: i32,
        /// This process's pid.
        pid: i32,
    },
    /// A listener index at or past the number of listeners.
    #[error("{spec} is out of range: {passed} (indexes start at 0)")]
    IndexOutOfRange {
        /// The spec asked for, e.g. `einhorn@2`.
        spec: String,
        /// How many listeners were passed, as the environment says it, e.g.
        /// `EINHORN_FD_COUNT=2`.
        passed: String,
    },
    /// `LISTEN_FDNAMES` names a different number of sockets than `LISTEN_FDS` passes.
    #[error("{LISTEN_FDNAMES}={names:?} names {named} sockets but {LISTEN_FDS}={count}")]
    NameCountMismatch {
        /// The value of `LISTEN_FDNAMES`.
        names: String,
        /// How many names it holds.
        named: usize,
        /// The value of `LISTEN_FDS`.
        count: usize,
    },
    /// No socket has the name asked for.
    #[error("no socket is named {name:?}: {var}={names:?}")]
    NoSuchName {
        /// The name asked for.
        name: String,
        /// The variable holding the names.
        var: &'static str,
        /// Its value (empty when unset).
        names: String,
    },
}

/// A snapshot of the variables socket managers set, with this process's pid and parent pid
/// to check them against.
///
/// # Example
/// ```
/// use graceful_listener::env::Environment;
///
/// let env = Environment::from_vars([("LISTEN_PID", "42"), ("LISTEN_FDS", "1")], 42, 1);
/// assert_eq!(env.activation().unwrap().unwrap().count(), 1);
/// ```
#[derive(Debug, Clone)]
pub struct Environment {
    vars: Vec<(String, String)>,
    pid: i32,
    parent_pid: i32,
}

impl Environment {
    /// Reads the variables of this process, its pid and its parent's.
    pub fn from_process() -> Environment {
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned())))
            .filter(|(k, _)| is_ours(k))
            .collect();
        Environment {
            vars,
            pid: std::process::id() as i32,
            parent_pid: nix::unistd::getppid().as_raw(),
        }
    }

    /// A snapshot made of given variables, as if this process were `pid` with parent
    /// `parent_pid`.
    pub fn from_vars<K, V>(
        vars: impl IntoIterator<Item = (K, V)>,
        pid: i32,
        parent_pid: i32,
    ) -> Environment
    where
        K: Into<String>,
        V: Into<String>,
    {
        Environment {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            pid,
            parent_pid,
        }
    }

    /// This process's pid, as the snapshot has it.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The value of `var`, if set (the last setting wins).
    pub fn get(&self, var: &str) -> Option<&str> {
        self.vars
            .iter()
            .rev()
            .find(|(k, _)| k == var)
            .map(|(_, v)| v.as_str())
    }

    fn require(&self, var: &str, why: &'static str) -> Result<&str, EnvError> {
        self.get(var).ok_or_else(|| EnvError::Missing {
            var: var.to_owned(),
            why,
        })
    }

    /// The port in `PORT`, if set.
    ///
    /// # Errors
    /// [`EnvError::Invalid`] when it is not a port number (0 to 65535).
    pub fn port(&self) -> Result<Option<u16>, EnvError> {
        self.get(PORT)
            .map(|value| parse(PORT, value, "a port number (0 to 65535)"))
            .transpose()
    }
}

fn is_ours(var: &str) -> bool {
    PREFIXES.iter().any(|p| var.starts_with(p)) || NAMES.contains(&var)
}

fn invalid(var: &str, value: &str, expected: &'static str) -> EnvError {
    EnvError::Invalid {
        var: var.to_owned(),
        value: value.to_owned(),
        expected,
    }
}

/// Parses a plain decimal number. Managers write nothing else; anything else is garbage,
/// not a number to guess at.
fn parse<T: std::str::FromStr>(
    var: &str,
    value: &str,
    expected: &'static str,
) -> Result<T, EnvError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return Err(invalid(var, value, expected));
    }
    value.parse().map_err(|_| invalid(var, value, expected))
}

/// Parses a non-negative fd number.
fn parse_fd(var: &str, value: &str) -> Result<RawFd, EnvError> {
    let fd: RawFd = parse(var, value, "a file descriptor number")?;
    if fd < 0 {
        return Err(invalid(var, value, "a file descriptor number"));
    }
    Ok(fd)
}

#[cfg(test)]
pub(crate) mod props;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_managers_variables_are_kept() {
        for var in [
            "EINHORN_FD_0",
            "LISTEN_FDS",
            "SERVER_STARTER_PORT",
            "NOTIFY_SOCKET",
            "PORT",
            "GRACEFUL_LISTENER_BIND",
        ] {
            assert!(is_ours(var), "{var}");
        }
        for var in [
            "HOME",
            "PATH",
            "PORTS",
            "XEINHORN_FD_0",
            "SERVER_STARTER_GENERATION",
        ] {
            assert!(!is_ours(var), "{var}");
        }
    }

    #[test]
    fn port_is_a_port_number() {
        let env = |value: &str| Environment::from_vars([(PORT, value)], 2, 1);
        assert_eq!(env("8080").port(), Ok(Some(8080)));
        assert_eq!(Environment::from_vars([("X", "1")], 2, 1).port(), Ok(None));
        for bad in ["99999", "-1", "80a", "", " 80", "0x50"] {
            assert_eq!(
                env(bad).port().unwrap_err().to_string(),
                format!("PORT={bad:?} is not a port number (0 to 65535)")
            );
        }
    }
}
