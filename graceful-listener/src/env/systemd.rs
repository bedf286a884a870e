//! systemd's socket activation variables (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`), and
//! where its notifications go (`NOTIFY_SOCKET`).

use std::os::fd::RawFd;

use super::{EnvError, Environment, invalid, parse};

/// `LISTEN_PID`: the process the sockets are for. Children inherit the variables; only the
/// process with this pid may take the sockets.
pub const LISTEN_PID: &str = "LISTEN_PID";
/// `LISTEN_FDS`: how many sockets systemd passed, from fd [`LISTEN_FDS_START`] on.
pub const LISTEN_FDS: &str = "LISTEN_FDS";
/// `LISTEN_FDNAMES`: the sockets' names (`FileDescriptorName=`), colon separated, in order.
pub const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// `NOTIFY_SOCKET`: where `sd_notify` messages (`READY=1`, `STOPPING=1`, ...) go.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

const NOT_ACTIVATED: &str = "this process was not socket-activated by systemd";

/// The sockets systemd passed this process.
///
/// # Example
/// ```
/// use graceful_listener::env::Environment;
///
/// let env = Environment::from_vars(
///     [("LISTEN_PID", "7"), ("LISTEN_FDS", "2"), ("LISTEN_FDNAMES", "http:admin")],
///     7,
///     1,
/// );
/// let activation = env.activation().unwrap().expect("activated");
/// assert_eq!(activation.fd(1), Some(4));
/// assert_eq!(activation.index_of("admin"), Some(1));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    count: usize,
    names: Option<Vec<String>>,
}

impl Activation {
    /// How many sockets were passed.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Their names, in order, when the unit gave them (`LISTEN_FDNAMES`).
    pub fn names(&self) -> Option<&[String]> {
        self.names.as_deref()
    }

    /// The fd of socket `index`, if there is one.
    pub fn fd(&self, index: usize) -> Option<RawFd> {
        (index < self.count).then(|| LISTEN_FDS_START + index as RawFd)
    }

    /// The index of the first socket named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.names.as_ref()?.iter().position(|n| n == name)
    }
}

impl Environment {
    /// The sockets systemd passed this process: `None` when `LISTEN_PID` is not set.
    ///
    /// # Errors
    /// [`EnvError::NotOurActivation`] when `LISTEN_PID` names another process (the variables
    /// were inherited), [`EnvError::Invalid`] or [`EnvError::Missing`] for garbage or missing
    /// `LISTEN_PID` / `LISTEN_FDS`, [`EnvError::NameCountMismatch`] when `LISTEN_FDNAMES`
    /// does not name every socket.
    pub fn activation(&self) -> Result<Option<Activation>, EnvError> {
        let Some(listen_pid) = self.get(LISTEN_PID) else {
            return Ok(None);
        };
        let listen_pid: i32 = parse(LISTEN_PID, listen_pid, "a process id")?;
        if listen_pid != self.pid() {
            return Err(EnvError::NotOurActivation {
                listen_pid,
                pid: self.pid(),
            });
        }
        let count_value = self.require(LISTEN_FDS, NOT_ACTIVATED)?;
        let count: usize = parse(LISTEN_FDS, count_value, "a socket count")?;
        // Every socket's fd number must fit, as sd_listen_fds checks: past that, fd numbers
        // would overflow.
        if count > (RawFd::MAX - LISTEN_FDS_START) as usize {
            return Err(invalid(LISTEN_FDS, count_value, "a socket count"));
        }
        let names = match self.get(LISTEN_FDNAMES) {
            None => None,
            Some("") if count == 0 => Some(Vec::new()),
            Some(value) => {
                let names: Vec<String> = value.split(':').map(str::to_owned).collect();
                if names.len() != count {
                    return Err(EnvError::NameCountMismatch {
                        names: value.to_owned(),
                        named: names.len(),
                        count,
                    });
                }
                Some(names)
            }
        };
        Ok(Some(Activation { count, names }))
    }

    /// The fd of systemd's socket `index` (`systemd@index`).
    ///
    /// # Errors
    /// As [`Environment::activation`], [`EnvError::Missing`] when not activated, and
    /// [`EnvError::IndexOutOfRange`].
    pub fn systemd_fd(&self, index: usize) -> Result<RawFd, EnvError> {
        let activation = self.require_activation()?;
        activation
            .fd(index)
            .ok_or_else(|| EnvError::IndexOutOfRange {
                spec: format!("systemd@{index}"),
                passed: format!("{LISTEN_FDS}={}", activation.count),
            })
    }

    /// The index and fd of systemd's socket named `name` (`systemd@name`).
    ///
    /// # Errors
    /// As [`Environment::activation`], [`EnvError::Missing`] when not activated, and
    /// [`EnvError::NoSuchName`].
    pub fn systemd_fd_named(&self, name: &str) -> Result<(usize, RawFd), EnvError> {
        let activation = self.require_activation()?;
        let index = activation
            .index_of(name)
            .ok_or_else(|| EnvError::NoSuchName {
                name: name.to_owned(),
                var: LISTEN_FDNAMES,
                names: self.get(LISTEN_FDNAMES).unwrap_or_default().to_owned(),
            })?;
        Ok((index, LISTEN_FDS_START + index as RawFd))
    }

    fn require_activation(&self) -> Result<Activation, EnvError> {
        self.activation()?.ok_or(EnvError::Missing {
            var: LISTEN_PID.to_owned(),
            why: NOT_ACTIVATED,
        })
    }

    /// Where `sd_notify` messages go, when systemd asked for them.
    pub fn notify_socket(&self) -> Option<&str> {
        self.get(NOTIFY_SOCKET).filter(|path| !path.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PID: i32 = 500;

    fn env(vars: &[(&str, &str)]) -> Environment {
        Environment::from_vars(vars.iter().copied(), PID, 1)
    }

    #[test]
    fn sockets_start_at_fd_3_and_are_found_by_index_or_name() {
        let e = env(&[
            (LISTEN_PID, "500"),
            (LISTEN_FDS, "3"),
            (LISTEN_FDNAMES, "web:admin:web"),
        ]);
        assert_eq!(e.systemd_fd(0), Ok(3));
        assert_eq!(e.systemd_fd(2), Ok(5));
        assert_eq!(e.systemd_fd_named("admin"), Ok((1, 4)));
        assert_eq!(e.systemd_fd_named("web"), Ok((0, 3)), "the first of a name");
        assert_eq!(
            e.systemd_fd(3).unwrap_err().to_string(),
            "systemd@3 is out of range: LISTEN_FDS=3 (indexes start at 0)"
        );
        assert_eq!(
            e.systemd_fd_named("metrics").unwrap_err().to_string(),
            "no socket is named \"metrics\": LISTEN_FDNAMES=\"web:admin:web\""
        );
    }

    #[test]
    fn not_activated_is_none_and_asking_says_so() {
        let e = env(&[]);
        assert_eq!(e.activation(), Ok(None));
        assert_eq!(
            e.systemd_fd(0).unwrap_err().to_string(),
            "LISTEN_PID is not set: this process was not socket-activated by systemd"
        );
        // LISTEN_FDS without LISTEN_PID is not for us either (as sd_listen_fds reads it).
        assert_eq!(env(&[(LISTEN_FDS, "1")]).activation(), Ok(None));
    }

    #[test]
    fn another_process_sockets_are_not_ours() {
        let e = env(&[(LISTEN_PID, "499"), (LISTEN_FDS, "1")]);
        assert_eq!(
            e.activation().unwrap_err().to_string(),
            "LISTEN_PID=499 is not this process (pid 500): the sockets were passed to another process"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[(LISTEN_PID, "abc"), (LISTEN_FDS, "1")],
                "LISTEN_PID=\"abc\" is not a process id",
            ),
            (
                &[(LISTEN_PID, "500"), (LISTEN_FDS, "abc")],
                "LISTEN_FDS=\"abc\" is not a socket count",
            ),
            (
                &[(LISTEN_PID, "500")],
                "LISTEN_FDS is not set: this process was not socket-activated by systemd",
            ),
            (
                &[
                    (LISTEN_PID, "500"),
                    (LISTEN_FDS, "2"),
                    (LISTEN_FDNAMES, "web"),
                ],
                "LISTEN_FDNAMES=\"web\" names 1 sockets but LISTEN_FDS=2",
            ),
            (
                &[
                    (LISTEN_PID, "500"),
                    (LISTEN_FDS, "1"),
                    (LISTEN_FDNAMES, "a:b"),
                ],
                "LISTEN_FDNAMES=\"a:b\" names 2 sockets but LISTEN_FDS=1",
            ),
        ];
        for (vars, message) in cases {
            assert_eq!(
                env(vars).activation().unwrap_err().to_string(),
                *message,
                "{vars:?}"
            );
        }
    }

    /// Found by the property tests: a count past the last fd number made `systemd_fd`
    /// overflow (a panic in debug builds, a negative fd in release builds).
    #[test]
    fn a_count_past_the_last_fd_number_is_refused() {
        let last = RawFd::MAX - LISTEN_FDS_START;
        let e = env(&[(LISTEN_PID, "500"), (LISTEN_FDS, &last.to_string())]);
        assert_eq!(e.systemd_fd(last as usize - 1), Ok(RawFd::MAX - 1));
        for count in [u64::from(last.unsigned_abs()) + 1, u64::MAX] {
            let count = count.to_string();
            let e = env(&[(LISTEN_PID, "500"), (LISTEN_FDS, &count)]);
            let message = format!("LISTEN_FDS={count:?} is not a socket count");
            assert_eq!(e.activation().unwrap_err().to_string(), message);
            assert_eq!(
                e.systemd_fd(usize::MAX - 1).unwrap_err().to_string(),
                message
            );
        }
    }

    #[test]
    fn names_are_optional_and_zero_sockets_is_activation_without_sockets() {
        let e = env(&[(LISTEN_PID, "500"), (LISTEN_FDS, "1")]);
        let activation = e.activation().unwrap().unwrap();
        assert_eq!(activation.names(), None);
        assert_eq!(
            e.systemd_fd_named("web").unwrap_err().to_string(),
            "no socket is named \"web\": LISTEN_FDNAMES=\"\""
        );
        let none = env(&[(LISTEN_PID, "500"), (LISTEN_FDS, "0"), (LISTEN_FDNAMES, "")]);
        assert_eq!(none.activation().unwrap().unwrap().count(), 0);
    }
}
