//! Bind specs: where a listener comes from, as a string an operator can type.
//!
//! | spec | meaning |
//! | --- | --- |
//! | `einhorn@N` | the Nth `-b` socket of the Einhorn master running this worker |
//! | `fd@N` | an inherited listening socket at fd N |
//! | `HOST:PORT`, `[V6]:PORT` | bind a TCP socket (`HOST` an IP literal or a name) |
//! | `:PORT` | bind a TCP socket on every IPv4 interface (`0.0.0.0:PORT`) |
//! | `unix:PATH`, or a path starting with `/` or `.` | bind a Unix socket |
//! | `auto` | `einhorn@0` when run by Einhorn, else `127.0.0.1:8000` |

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::str::FromStr;

use crate::env::{EinhornEnv, EnvError};
use crate::inherit::{InheritError, take_listener};
use crate::socket::{self, StdListener};

/// Where `auto` binds when no socket manager passed a listener.
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8000);

/// Where a listener comes from. Parse one with [`str::parse`]; [`Display`](fmt::Display)
/// prints a spec that parses back to the same value.
///
/// # Example
/// ```
/// use graceful_listener::Bind;
///
/// let bind: Bind = "einhorn@0".parse().unwrap();
/// assert_eq!(bind, Bind::Einhorn(0));
/// assert_eq!("[::1]:8080".parse::<Bind>().unwrap().to_string(), "[::1]:8080");
/// assert!("einhorn@x".parse::<Bind>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Bind {
    /// `einhorn@N`: the Nth listener passed by Einhorn (`EINHORN_FD_N`).
    Einhorn(usize),
    /// `fd@N`: a listening socket inherited at fd N.
    Fd(RawFd),
    /// `IP:PORT` or `[IPV6]:PORT`: bind this address.
    Addr(SocketAddr),
    /// `NAME:PORT`: resolve the name and bind its first address that binds.
    Host(String, u16),
    /// `:PORT`: bind this port on every IPv4 interface.
    Port(u16),
    /// `unix:PATH`: bind a Unix stream socket at this path.
    Unix(PathBuf),
    /// `auto`: the listener the environment provides, else [`DEFAULT_ADDR`]. See
    /// [`Bind::resolve_auto`].
    Auto,
}

/// A bind spec that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid bind spec {spec:?}: {reason}")]
pub struct ParseBindError {
    spec: String,
    reason: String,
}

impl ParseBindError {
    fn new(spec: &str, reason: impl Into<String>) -> ParseBindError {
        ParseBindError {
            spec: spec.to_owned(),
            reason: reason.into(),
        }
    }

    /// The spec that failed to parse.
    pub fn spec(&self) -> &str {
        &self.spec
    }
}

impl FromStr for Bind {
    type Err = ParseBindError;

    fn from_str(spec: &str) -> Result<Bind, ParseBindError> {
        let number = |digits: &str, what: &str| -> Result<u64, ParseBindError> {
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ParseBindError::new(
                    spec,
                    format!("{digits:?} is not {what}"),
                ));
            }
            digits.parse().map_err(|_| {
                ParseBindError::new(spec, format!("{digits:?} is too large for {what}"))
            })
        };
        if spec == "auto" {
            return Ok(Bind::Auto);
        }
        if let Some(index) = spec.strip_prefix("einhorn@") {
            let index = number(index, "a listener index")?;
            return usize::try_from(index)
                .map(Bind::Einhorn)
                .map_err(|_| ParseBindError::new(spec, "listener index too large"));
        }
        if let Some(fd) = spec.strip_prefix("fd@") {
            let fd = number(fd, "a file descriptor number")?;
            return RawFd::try_from(fd).map(Bind::Fd).map_err(|_| {
                ParseBindError::new(
                    spec,
                    format!("{fd} is too large for a file descriptor number"),
                )
            });
        }
        if let Some(path) = spec.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(ParseBindError::new(spec, "the socket path is empty"));
            }
            return Ok(Bind::Unix(PathBuf::from(path)));
        }
        if spec.starts_with('/') || spec.starts_with('.') {
            return Ok(Bind::Unix(PathBuf::from(spec)));
        }
        if let Ok(addr) = spec.parse::<SocketAddr>() {
            return Ok(Bind::Addr(addr));
        }
        let Some((host, port)) = spec.rsplit_once(':') else {
            return Err(ParseBindError::new(
                spec,
                "expected einhorn@N, fd@N, HOST:PORT, [V6]:PORT, :PORT, unix:PATH or auto",
            ));
        };
        let port = number(port, "a port number")?;
        let port = u16::try_from(port)
            .map_err(|_| ParseBindError::new(spec, format!("port {port} is above 65535")))?;
        if host.is_empty() {
            return Ok(Bind::Port(port));
        }
        if host.starts_with('[') || host.contains(':') {
            return Err(ParseBindError::new(
                spec,
                format!("{host:?} is not an IPv6 address"),
            ));
        }
        let valid_name = host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
        if !valid_name {
            return Err(ParseBindError::new(
                spec,
                format!("{host:?} is not a host name or IP address"),
            ));
        }
        Ok(Bind::Host(host.to_owned(), port))
    }
}

impl fmt::Display for Bind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bind::Einhorn(index) => write!(f, "einhorn@{index}"),
            Bind::Fd(fd) => write!(f, "fd@{fd}"),
            Bind::Addr(addr) => write!(f, "{addr}"),
            Bind::Host(host, port) => write!(f, "{host}:{port}"),
            Bind::Port(port) => write!(f, ":{port}"),
            Bind::Unix(path) => write!(f, "unix:{}", path.display()),
            Bind::Auto => f.write_str("auto"),
        }
    }
}

/// Opening a bind spec failed. The message names the spec and, for inherited sockets, the
/// environment variable and value at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// Einhorn's environment is missing or wrong.
    #[error("cannot take {bind}: {source}")]
    Env {
        /// The spec being opened.
        bind: Bind,
        /// What is wrong with the environment.
        source: EnvError,
    },
    /// The inherited fd is not a usable listening socket.
    #[error("cannot take {bind} ({origin}): {source}")]
    Inherit {
        /// The spec being opened.
        bind: Bind,
        /// Where the fd number came from, e.g. `EINHORN_FD_0=3`.
        origin: String,
        /// What is wrong with the fd.
        source: InheritError,
    },
    /// Binding a new socket failed.
    #[error("cannot bind {bind}: {source}")]
    Io {
        /// The spec being opened.
        bind: Bind,
        /// The error from the system.
        source: std::io::Error,
    },
}

impl Bind {
    /// Whether this spec takes a socket a manager passed down rather than binding one.
    pub fn is_inherited(&self) -> bool {
        matches!(self, Bind::Einhorn(_) | Bind::Fd(_))
    }

    /// Replaces `auto` with the spec the environment calls for: `einhorn@0` when this
    /// process is an Einhorn worker with at least one listener, else [`DEFAULT_ADDR`].
    /// Any other spec is returned as it is.
    pub fn resolve_auto(self) -> Bind {
        self.resolve_auto_in(&EinhornEnv::from_process())
    }

    pub(crate) fn resolve_auto_in(self, env: &EinhornEnv) -> Bind {
        match self {
            Bind::Auto if env.is_worker_with_listeners() => Bind::Einhorn(0),
            Bind::Auto => Bind::Addr(DEFAULT_ADDR),
            other => other,
        }
    }

    /// Opens the listener: takes the inherited socket, or binds a new one.
    pub(crate) fn open_std(&self, env: &EinhornEnv) -> Result<StdListener, BindError> {
        let resolved = self.clone().resolve_auto_in(env);
        let io = |source| BindError::Io {
            bind: resolved.clone(),
            source,
        };
        match &resolved {
            Bind::Einhorn(index) => {
                let fd = env.listener_fd(*index).map_err(|source| BindError::Env {
                    bind: resolved.clone(),
                    source,
                })?;
                let origin = format!("{}={fd}", EinhornEnv::listener_var(*index));
                inherited(&resolved, fd, origin)
            }
            Bind::Fd(fd) => inherited(&resolved, *fd, format!("fd {fd}")),
            Bind::Addr(addr) => socket::bind_tcp(*addr).map(StdListener::Tcp).map_err(io),
            Bind::Port(port) => {
                socket::bind_tcp(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), *port))
                    .map(StdListener::Tcp)
                    .map_err(io)
            }
            Bind::Host(host, port) => socket::bind_host(host, *port)
                .map(StdListener::Tcp)
                .map_err(io),
            Bind::Unix(path) => socket::bind_unix(path).map(StdListener::Unix).map_err(io),
            Bind::Auto => unreachable!("resolve_auto_in never returns Auto"),
        }
    }
}

fn inherited(bind: &Bind, fd: RawFd, origin: String) -> Result<StdListener, BindError> {
    take_listener(fd).map_err(|source| BindError::Inherit {
        bind: bind.clone(),
        origin,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Bind, String> {
        s.parse::<Bind>().map_err(|e| e.to_string())
    }

    #[test]
    fn every_form_parses_and_prints_back() {
        let cases: &[(&str, Bind, &str)] = &[
            ("einhorn@0", Bind::Einhorn(0), "einhorn@0"),
            ("einhorn@12", Bind::Einhorn(12), "einhorn@12"),
            ("fd@3", Bind::Fd(3), "fd@3"),
            (
                "127.0.0.1:8000",
                Bind::Addr("127.0.0.1:8000".parse().unwrap()),
                "127.0.0.1:8000",
            ),
            (
                "[::1]:80",
                Bind::Addr("[::1]:80".parse().unwrap()),
                "[::1]:80",
            ),
            (":8080", Bind::Port(8080), ":8080"),
            (
                "localhost:0",
                Bind::Host("localhost".into(), 0),
                "localhost:0",
            ),
            (
                "unix:/run/app.sock",
                Bind::Unix("/run/app.sock".into()),
                "unix:/run/app.sock",
            ),
            (
                "/run/app.sock",
                Bind::Unix("/run/app.sock".into()),
                "unix:/run/app.sock",
            ),
            (
                "./app.sock",
                Bind::Unix("./app.sock".into()),
                "unix:./app.sock",
            ),
            ("auto", Bind::Auto, "auto"),
        ];
        for (spec, bind, printed) in cases {
            assert_eq!(parse(spec).as_ref(), Ok(bind), "{spec}");
            assert_eq!(bind.to_string(), *printed);
            assert_eq!(parse(printed).as_ref(), Ok(bind), "{printed} parses back");
        }
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            (
                "einhorn@",
                "invalid bind spec \"einhorn@\": \"\" is not a listener index",
            ),
            (
                "einhorn@x",
                "invalid bind spec \"einhorn@x\": \"x\" is not a listener index",
            ),
            (
                "einhorn@-1",
                "invalid bind spec \"einhorn@-1\": \"-1\" is not a listener index",
            ),
            (
                "fd@abc",
                "invalid bind spec \"fd@abc\": \"abc\" is not a file descriptor number",
            ),
            (
                "fd@99999999999",
                "invalid bind spec \"fd@99999999999\": 99999999999 is too large for a file descriptor number",
            ),
            (
                ":70000",
                "invalid bind spec \":70000\": port 70000 is above 65535",
            ),
            (":", "invalid bind spec \":\": \"\" is not a port number"),
            (
                "host:http",
                "invalid bind spec \"host:http\": \"http\" is not a port number",
            ),
            (
                "unix:",
                "invalid bind spec \"unix:\": the socket path is empty",
            ),
            (
                "8000",
                "invalid bind spec \"8000\": expected einhorn@N, fd@N, HOST:PORT, [V6]:PORT, :PORT, unix:PATH or auto",
            ),
            (
                "",
                "invalid bind spec \"\": expected einhorn@N, fd@N, HOST:PORT, [V6]:PORT, :PORT, unix:PATH or auto",
            ),
            (
                "::1:80",
                "invalid bind spec \"::1:80\": \"::1\" is not an IPv6 address",
            ),
            (
                "[::1:80",
                "invalid bind spec \"[::1:80\": \"[::1\" is not an IPv6 address",
            ),
            (
                "bad host:80",
                "invalid bind spec \"bad host:80\": \"bad host\" is not a host name or IP address",
            ),
        ];
        for (spec, message) in cases {
            assert_eq!(parse(spec), Err(message.to_string()), "{spec}");
        }
    }

    #[test]
    fn auto_follows_the_environment() {
        let worker = EinhornEnv::from_vars(
            [
                ("EINHORN_MASTER_PID", "10"),
                ("EINHORN_FD_COUNT", "1"),
                ("EINHORN_FD_0", "3"),
            ],
            10,
        );
        assert_eq!(Bind::Auto.resolve_auto_in(&worker), Bind::Einhorn(0));
        let grandchild = EinhornEnv::from_vars(
            [
                ("EINHORN_MASTER_PID", "10"),
                ("EINHORN_FD_COUNT", "1"),
                ("EINHORN_FD_0", "3"),
            ],
            11,
        );
        assert_eq!(
            Bind::Auto.resolve_auto_in(&grandchild),
            Bind::Addr(DEFAULT_ADDR)
        );
        let plain = EinhornEnv::from_vars(Vec::<(String, String)>::new(), 1);
        assert_eq!(Bind::Auto.resolve_auto_in(&plain), Bind::Addr(DEFAULT_ADDR));
        assert_eq!(Bind::Port(1).resolve_auto_in(&worker), Bind::Port(1));
    }

    #[test]
    fn einhorn_errors_name_the_variable_and_value() {
        let env = EinhornEnv::from_vars(
            [
                ("EINHORN_MASTER_PID", "10"),
                ("EINHORN_FD_COUNT", "1"),
                ("EINHORN_FD_0", "1000000"),
            ],
            10,
        );
        let err = Bind::Einhorn(0).open_std(&env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot take einhorn@0 (EINHORN_FD_0=1000000): fd 1000000 is not open"
        );
        let err = Bind::Einhorn(1).open_std(&env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot take einhorn@1: einhorn@1 is out of range: EINHORN_FD_COUNT=1 (indexes start at 0)"
        );
    }

    #[test]
    fn a_unix_bind_error_names_the_spec() {
        let dir = std::env::temp_dir().join(format!("gl-bind-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("app.sock");
        let _ = std::fs::remove_file(&path);
        let env = EinhornEnv::from_vars(Vec::<(String, String)>::new(), 1);
        let bind = Bind::Unix(path.clone());
        let _first = bind.open_std(&env).unwrap();
        let err = bind.open_std(&env).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot bind unix:{}", path.display())),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
