//! Server::Starter's variable: `SERVER_STARTER_PORT`, the sockets `start_server` bound.

use std::os::fd::RawFd;

use super::{EnvError, Environment, invalid, parse_fd};

/// `SERVER_STARTER_PORT`: `key=fd` entries separated by `;`, the key being what
/// `start_server` was given (`--port=8080` gives `8080`, `--port=127.0.0.1:8080`
/// `127.0.0.1:8080`, `--path=/run/app.sock` the path).
pub const SERVER_STARTER_PORT: &str = "SERVER_STARTER_PORT";

const NOT_STARTER: &str = "this process was not started by Server::Starter (start_server)";
const ENTRIES: &str = "`host:port=fd` or `path=fd` entries separated by `;`";

/// One socket `start_server` passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StarterPort {
    /// What `start_server` was told to listen on: `8080`, `127.0.0.1:8080`, a path.
    pub key: String,
    /// The fd it passed.
    pub fd: RawFd,
}

impl StarterPort {
    /// Whether `key` (as a `starter@KEY` spec has it) names this socket: the key itself,
    /// or `:PORT` for a port-only key.
    pub fn is_named(&self, key: &str) -> bool {
        self.key == key || key.strip_prefix(':') == Some(self.key.as_str())
    }
}

impl Environment {
    /// The sockets `start_server` passed, in order: `None` when `SERVER_STARTER_PORT` is
    /// not set.
    ///
    /// # Errors
    /// [`EnvError::Invalid`] when the variable is not `key=fd` entries.
    ///
    /// # Example
    /// ```
    /// use graceful_listener::env::Environment;
    ///
    /// let env = Environment::from_vars([("SERVER_STARTER_PORT", "8080=4;/tmp/s.sock=5")], 2, 1);
    /// let ports = env.starter_ports().unwrap().unwrap();
    /// assert_eq!((ports[1].key.as_str(), ports[1].fd), ("/tmp/s.sock", 5));
    /// ```
    pub fn starter_ports(&self) -> Result<Option<Vec<StarterPort>>, EnvError> {
        let Some(value) = self.get(SERVER_STARTER_PORT) else {
            return Ok(None);
        };
        let malformed = || invalid(SERVER_STARTER_PORT, value, ENTRIES);
        value
            .split(';')
            .map(|entry| {
                let (key, fd) = entry.rsplit_once('=').ok_or_else(malformed)?;
                if key.is_empty() {
                    return Err(malformed());
                }
                let fd = parse_fd(SERVER_STARTER_PORT, fd).map_err(|_| malformed())?;
                Ok(StarterPort {
                    key: key.to_owned(),
                    fd,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Socket `index` of `start_server`'s (`starter@index`).
    ///
    /// # Errors
    /// As [`Environment::starter_ports`], [`EnvError::Missing`] when not set, and
    /// [`EnvError::IndexOutOfRange`].
    pub fn starter_port(&self, index: usize) -> Result<StarterPort, EnvError> {
        let ports = self.require_starter()?;
        let count = ports.len();
        ports
            .into_iter()
            .nth(index)
            .ok_or_else(|| EnvError::IndexOutOfRange {
                spec: format!("starter@{index}"),
                passed: format!("{SERVER_STARTER_PORT} has {count} entries"),
            })
    }

    /// The socket `start_server` bound for `key` (`starter@key`): see
    /// [`StarterPort::is_named`].
    ///
    /// # Errors
    /// As [`Environment::starter_ports`], [`EnvError::Missing`] when not set, and
    /// [`EnvError::NoSuchName`].
    pub fn starter_port_named(&self, key: &str) -> Result<StarterPort, EnvError> {
        self.require_starter()?
            .into_iter()
            .find(|port| port.is_named(key))
            .ok_or_else(|| EnvError::NoSuchName {
                name: key.to_owned(),
                var: SERVER_STARTER_PORT,
                names: self.get(SERVER_STARTER_PORT).unwrap_or_default().to_owned(),
            })
    }

    fn require_starter(&self) -> Result<Vec<StarterPort>, EnvError> {
        self.starter_ports()?.ok_or(EnvError::Missing {
            var: SERVER_STARTER_PORT.to_owned(),
            why: NOT_STARTER,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(value: &str) -> Environment {
        Environment::from_vars([(SERVER_STARTER_PORT, value)], 2, 1)
    }

    #[test]
    fn what_start_server_writes_parses() {
        let e = env("18555=4;127.0.0.1:18556=5;[::1]:80=7;/tmp/ss.sock=6");
        let keys: Vec<(String, RawFd)> = e
            .starter_ports()
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|p| (p.key, p.fd))
            .collect();
        assert_eq!(
            keys,
            [
                ("18555".into(), 4),
                ("127.0.0.1:18556".into(), 5),
                ("[::1]:80".into(), 7),
                ("/tmp/ss.sock".into(), 6)
            ]
        );
        assert_eq!(e.starter_port(1).unwrap().fd, 5);
        assert_eq!(e.starter_port_named(":18555").unwrap().fd, 4);
        assert_eq!(e.starter_port_named("18555").unwrap().fd, 4);
        assert_eq!(e.starter_port_named("127.0.0.1:18556").unwrap().fd, 5);
        assert_eq!(e.starter_port_named("/tmp/ss.sock").unwrap().fd, 6);
        assert_eq!(
            e.starter_port(4).unwrap_err().to_string(),
            "starter@4 is out of range: SERVER_STARTER_PORT has 4 entries (indexes start at 0)"
        );
        assert_eq!(
            e.starter_port_named(":9").unwrap_err().to_string(),
            "no socket is named \":9\": SERVER_STARTER_PORT=\"18555=4;127.0.0.1:18556=5;[::1]:80=7;/tmp/ss.sock=6\""
        );
    }

    #[test]
    fn malformed_values_are_named() {
        for bad in [
            "",
            "8080",
            "8080=",
            "=4",
            "8080=four",
            "8080=4;",
            "8080=-4",
            "a=4;;b=5",
        ] {
            assert_eq!(
                env(bad).starter_ports().unwrap_err().to_string(),
                format!(
                    "SERVER_STARTER_PORT={bad:?} is not `host:port=fd` or `path=fd` entries separated by `;`"
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn unset_is_none_and_asking_says_so() {
        let e = Environment::from_vars(Vec::<(String, String)>::new(), 2, 1);
        assert_eq!(e.starter_ports(), Ok(None));
        assert_eq!(
            e.starter_port(0).unwrap_err().to_string(),
            "SERVER_STARTER_PORT is not set: this process was not started by Server::Starter (start_server)"
        );
    }
}
