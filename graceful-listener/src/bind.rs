//! Bind specs: where a listener comes from, as a string an operator can type.
//!
//! | spec | meaning |
//! | --- | --- |
//! | `einhorn@N` | the Nth `-b` socket of the Einhorn master running this worker |
//! | `systemd@N`, `systemd@NAME` | the Nth socket systemd passed, or the one named NAME (`FileDescriptorName=`) |
//! | `starter@N`, `starter@KEY` | the Nth socket Server::Starter passed, or the one for KEY (`127.0.0.1:8080`, `:8080`, a path) |
//! | `fd@N` | an inherited listening socket at fd N |
//! | `HOST:PORT`, `[V6]:PORT` | bind a TCP socket (`HOST` an IP literal or a name) |
//! | `:PORT` | bind a TCP socket on every IPv4 interface (`0.0.0.0:PORT`) |
//! | `unix:PATH`, or a path starting with `/` or `.` | bind a Unix socket; `,mode=0660` sets its permissions |
//! | `auto` | the socket the environment provides (see [`Bind::Auto`]), else `127.0.0.1:8000` |
//!
//! Pure: parsing and printing. Where `auto` leads is decided in `auto`, and opening a spec
//! (taking an inherited fd, binding an address) is in `open`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::str::FromStr;

// Types only: the spec names what can go wrong when it is opened (`BindError`), and the
// opening itself (I/O) lives above it, in `open`.
use crate::env::EnvError;
use crate::inherit::InheritError;

/// Where `auto` binds when no socket manager passed a listener and `PORT` is not set.
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8000);

/// Where a listener comes from. Parse one with [`str::parse`]; [`Display`](fmt::Display)
/// prints a spec that parses back to the same value, for every value a parse can produce.
/// Values built by hand that no spec can express print something that does not parse back:
/// a negative `Fd`, a Unix path that is not UTF-8 or contains `,mode=`, an IPv6 address with
/// a flow label, a mode above `0o7777`.
///
/// # Example
/// ```
/// use graceful_listener::Bind;
///
/// let bind: Bind = "einhorn@0".parse().unwrap();
/// assert_eq!(bind, Bind::Einhorn(0));
/// assert_eq!("[::1]:8080".parse::<Bind>().unwrap().to_string(), "[::1]:8080");
/// assert_eq!("systemd@admin".parse::<Bind>().unwrap(), Bind::SystemdName("admin".into()));
/// assert!("einhorn@x".parse::<Bind>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Bind {
    /// `einhorn@N`: the Nth listener passed by Einhorn (`EINHORN_FD_N`).
    Einhorn(usize),
    /// `systemd@N`: the Nth socket systemd passed (fd 3 + N), if `LISTEN_PID` is ours.
    Systemd(usize),
    /// `systemd@NAME`: the socket systemd passed under this name (`LISTEN_FDNAMES`).
    SystemdName(String),
    /// `starter@N`: the Nth socket Server::Starter passed (`SERVER_STARTER_PORT` order).
    Starter(usize),
    /// `starter@KEY`: the socket Server::Starter bound for KEY (`127.0.0.1:8080`, `:8080` for
    /// a port-only `--port=8080`, or a socket path).
    StarterKey(String),
    /// `fd@N`: a listening socket inherited at fd N.
    Fd(RawFd),
    /// `IP:PORT` or `[IPV6]:PORT`: bind this address.
    Addr(SocketAddr),
    /// `NAME:PORT`: resolve the name and bind its first address that binds.
    Host(String, u16),
    /// `:PORT`: bind this port on every IPv4 interface.
    Port(u16),
    /// `unix:PATH[,mode=OCTAL]`: bind a Unix stream socket at this path, replacing a stale
    /// socket file nobody listens on, with these permissions if given.
    Unix {
        /// The socket's path.
        path: PathBuf,
        /// Its permissions (`0o660`), set before it accepts; else as the umask leaves them.
        mode: Option<u32>,
    },
    /// `auto`: the socket the environment provides, first that applies:
    /// 1. `GRACEFUL_LISTENER_BIND`, a spec set explicitly;
    /// 2. `einhorn@0` when run by Einhorn (`EINHORN_MASTER_PID` is our parent);
    /// 3. `systemd@0` when socket-activated (`LISTEN_PID` is our pid);
    /// 4. `starter@0` when run by Server::Starter (`SERVER_STARTER_PORT`);
    /// 5. `:$PORT` when `PORT` is set;
    /// 6. [`DEFAULT_ADDR`].
    Auto,
}

impl Bind {
    /// A Unix socket at `path`, with default permissions.
    ///
    /// # Example
    /// ```
    /// let bind = graceful_listener::Bind::unix("/run/app.sock");
    /// assert_eq!(bind.to_string(), "unix:/run/app.sock");
    /// ```
    pub fn unix(path: impl Into<PathBuf>) -> Bind {
        Bind::Unix {
            path: path.into(),
            mode: None,
        }
    }
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

    /// What is wrong with it.
    ///
    /// ```
    /// let error = "127.0.0.1:99999".parse::<graceful_listener::Bind>().unwrap_err();
    /// assert_eq!(error.reason(), "port 99999 is above 65535");
    /// ```
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

const EXPECTED: &str = "expected einhorn@N, systemd@N, systemd@NAME, starter@N, starter@KEY, fd@N, \
                        HOST:PORT, [V6]:PORT, :PORT, unix:PATH or auto";

impl FromStr for Bind {
    type Err = ParseBindError;

    fn from_str(spec: &str) -> Result<Bind, ParseBindError> {
        let error = |reason: String| ParseBindError::new(spec, reason);
        let number = |digits: &str, what: &str| -> Result<u64, ParseBindError> {
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(error(format!("{digits:?} is not {what}")));
            }
            digits
                .parse()
                .map_err(|_| error(format!("{digits:?} is too large for {what}")))
        };
        let index = |digits: &str| -> Result<usize, ParseBindError> {
            let index = number(digits, "a listener index")?;
            usize::try_from(index).map_err(|_| error("listener index too large".into()))
        };
        if spec == "auto" {
            return Ok(Bind::Auto);
        }
        if let Some(rest) = spec.strip_prefix("einhorn@") {
            return index(rest).map(Bind::Einhorn);
        }
        if let Some(rest) = spec.strip_prefix("systemd@") {
            if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
                return index(rest).map(Bind::Systemd);
            }
            // systemd's own rule for FileDescriptorName=: printable, no colon, at most 255.
            let valid = !rest.is_empty()
                && rest.len() <= 255
                && rest.chars().all(|c| c.is_ascii_graphic() && c != ':');
            if !valid {
                return Err(error(format!(
                    "{rest:?} is not a socket index or name (printable, no ':', at most 255 characters)"
                )));
            }
            return Ok(Bind::SystemdName(rest.to_owned()));
        }
        if let Some(rest) = spec.strip_prefix("starter@") {
            if rest.is_empty() {
                return Err(error("the Server::Starter socket is missing".into()));
            }
            if rest.bytes().all(|b| b.is_ascii_digit()) {
                return index(rest).map(Bind::Starter);
            }
            return Ok(Bind::StarterKey(rest.to_owned()));
        }
        if let Some(fd) = spec.strip_prefix("fd@") {
            let fd = number(fd, "a file descriptor number")?;
            return RawFd::try_from(fd)
                .map(Bind::Fd)
                .map_err(|_| error(format!("{fd} is too large for a file descriptor number")));
        }
        let unix_path = spec
            .strip_prefix("unix:")
            .or_else(|| (spec.starts_with('/') || spec.starts_with('.')).then_some(spec));
        if let Some(rest) = unix_path {
            let (path, mode) = match rest.rsplit_once(",mode=") {
                Some((path, mode)) => {
                    let valid = (3..=4).contains(&mode.len())
                        && mode.bytes().all(|b| (b'0'..=b'7').contains(&b));
                    if !valid {
                        return Err(error(format!(
                            "{mode:?} is not a file mode (octal, like 0660)"
                        )));
                    }
                    (path, u32::from_str_radix(mode, 8).ok())
                }
                None => (rest, None),
            };
            if path.is_empty() {
                return Err(error("the socket path is empty".into()));
            }
            return Ok(Bind::Unix {
                path: PathBuf::from(path),
                mode,
            });
        }
        if let Some(reason) = near_miss(spec) {
            return Err(error(reason));
        }
        if let Ok(addr) = spec.parse::<SocketAddr>() {
            return Ok(Bind::Addr(addr));
        }
        let Some((host, port)) = spec.rsplit_once(':') else {
            return Err(error(EXPECTED.into()));
        };
        let port = number(port, "a port number")?;
        let port = u16::try_from(port).map_err(|_| error(format!("port {port} is above 65535")))?;
        if host.is_empty() {
            return Ok(Bind::Port(port));
        }
        if host.starts_with('[') || host.contains(':') {
            return Err(error(format!("{host:?} is not an IPv6 address")));
        }
        let valid_name = host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
        if !valid_name {
            return Err(error(format!("{host:?} is not a host name or IP address")));
        }
        Ok(Bind::Host(host.to_owned(), port))
    }
}

/// The socket managers' prefixes, each written `NAME@N`.
const MANAGERS: [&str; 4] = ["einhorn", "systemd", "starter", "fd"];

/// What is wrong with a spec that is close to a valid one, and the valid one: a URL
/// (`http://127.0.0.1:8080/`: the address without its scheme and path), or a manager's
/// socket written with another separator (`einhorn:0`, `einhorn0`, `Einhorn@0`: `einhorn@0`).
/// Without this, `einhorn:0` would be a host named `einhorn`, and fail at its DNS lookup.
fn near_miss(spec: &str) -> Option<String> {
    if let Some((scheme, rest)) = spec.split_once("://") {
        let address = rest.split('/').next().unwrap_or_default();
        let mut reason = format!("a URL scheme ({scheme}://) is not part of a bind address");
        if !address.is_empty() && address.parse::<Bind>().is_ok() {
            reason.push_str(&format!(": use {address}"));
        }
        return Some(reason);
    }
    let lower = spec.to_ascii_lowercase();
    MANAGERS.iter().find_map(|manager| {
        let rest = lower.strip_prefix(manager)?;
        let index = rest.trim_start_matches([':', '@', '#', '/', '-', '_', ' ', '=']);
        let near = !index.is_empty()
            && index.bytes().all(|b| b.is_ascii_digit())
            && !spec.starts_with(&format!("{manager}@"));
        near.then(|| format!("did you mean {manager}@{index}?"))
    })
}

impl fmt::Display for Bind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bind::Einhorn(index) => write!(f, "einhorn@{index}"),
            Bind::Systemd(index) => write!(f, "systemd@{index}"),
            Bind::SystemdName(name) => write!(f, "systemd@{name}"),
            Bind::Starter(index) => write!(f, "starter@{index}"),
            Bind::StarterKey(key) => write!(f, "starter@{key}"),
            Bind::Fd(fd) => write!(f, "fd@{fd}"),
            Bind::Addr(addr) => write!(f, "{addr}"),
            Bind::Host(host, port) => write!(f, "{host}:{port}"),
            Bind::Port(port) => write!(f, ":{port}"),
            Bind::Unix { path, mode: None } => write!(f, "unix:{}", path.display()),
            Bind::Unix {
                path,
                mode: Some(mode),
            } => write!(f, "unix:{},mode={mode:04o}", path.display()),
            Bind::Auto => f.write_str("auto"),
        }
    }
}

/// Opening a bind spec failed. The message names the spec and, for inherited sockets, the
/// environment variable and value at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// `auto` could not decide: a manager's environment is there but wrong.
    #[error("cannot resolve auto: {source}")]
    Auto {
        /// What is wrong with the environment.
        source: EnvError,
    },
    /// A manager's environment is missing or wrong.
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
    /// A socket the manager says it passed is not there: its count is wrong, or something
    /// closed the fd. Serving on the others would hide it until that socket is needed.
    #[error(
        "cannot take {bind}: {passed} passes fds {first} to {last}, but fd {fd} (systemd@{index}) {why}"
    )]
    Missing {
        /// The spec being opened.
        bind: Bind,
        /// How many sockets the environment says were passed, e.g. `LISTEN_FDS=2`.
        passed: String,
        /// The first fd passed.
        first: RawFd,
        /// The last fd passed.
        last: RawFd,
        /// The fd that is not there.
        fd: RawFd,
        /// Its index among the sockets passed (`systemd@INDEX`).
        index: usize,
        /// What is wrong with it: `is not open`, or it is close-on-exec (opened by this
        /// process, so not passed).
        why: &'static str,
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
        matches!(
            self,
            Bind::Einhorn(_)
                | Bind::Systemd(_)
                | Bind::SystemdName(_)
                | Bind::Starter(_)
                | Bind::StarterKey(_)
                | Bind::Fd(_)
        )
    }
}

#[cfg(test)]
pub(crate) mod props;

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
                Bind::unix("/run/app.sock"),
                "unix:/run/app.sock",
            ),
            (
                "/run/app.sock",
                Bind::unix("/run/app.sock"),
                "unix:/run/app.sock",
            ),
            ("./app.sock", Bind::unix("./app.sock"), "unix:./app.sock"),
            (
                "unix:/run/app.sock,mode=0660",
                Bind::Unix {
                    path: "/run/app.sock".into(),
                    mode: Some(0o660),
                },
                "unix:/run/app.sock,mode=0660",
            ),
            (
                "/run/a,b.sock,mode=600",
                Bind::Unix {
                    path: "/run/a,b.sock".into(),
                    mode: Some(0o600),
                },
                "unix:/run/a,b.sock,mode=0600",
            ),
            ("systemd@0", Bind::Systemd(0), "systemd@0"),
            (
                "systemd@web",
                Bind::SystemdName("web".into()),
                "systemd@web",
            ),
            (
                "systemd@web-2.admin",
                Bind::SystemdName("web-2.admin".into()),
                "systemd@web-2.admin",
            ),
            ("starter@1", Bind::Starter(1), "starter@1"),
            (
                "starter@127.0.0.1:8080",
                Bind::StarterKey("127.0.0.1:8080".into()),
                "starter@127.0.0.1:8080",
            ),
            (
                "starter@:8080",
                Bind::StarterKey(":8080".into()),
                "starter@:8080",
            ),
            (
                "starter@/run/s.sock",
                Bind::StarterKey("/run/s.sock".into()),
                "starter@/run/s.sock",
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
    fn names_that_only_start_like_a_manager_s_are_host_names() {
        for spec in ["einhorn-1:8080", "fdb:80", "systemd.local:80"] {
            assert!(matches!(parse(spec), Ok(Bind::Host(..))), "{spec}");
        }
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            // Near misses: the spec meant.
            (
                "einhorn:0",
                "invalid bind spec \"einhorn:0\": did you mean einhorn@0?",
            ),
            (
                "einhorn1",
                "invalid bind spec \"einhorn1\": did you mean einhorn@1?",
            ),
            (
                "Einhorn@2",
                "invalid bind spec \"Einhorn@2\": did you mean einhorn@2?",
            ),
            (
                "systemd:0",
                "invalid bind spec \"systemd:0\": did you mean systemd@0?",
            ),
            (
                "starter#3",
                "invalid bind spec \"starter#3\": did you mean starter@3?",
            ),
            ("fd:3", "invalid bind spec \"fd:3\": did you mean fd@3?"),
            (
                "http://127.0.0.1:8080",
                "invalid bind spec \"http://127.0.0.1:8080\": a URL scheme (http://) is not part of a bind address: use 127.0.0.1:8080",
            ),
            (
                "https://[::1]:8443/app",
                "invalid bind spec \"https://[::1]:8443/app\": a URL scheme (https://) is not part of a bind address: use [::1]:8443",
            ),
            (
                "http://example.com",
                "invalid bind spec \"http://example.com\": a URL scheme (http://) is not part of a bind address",
            ),
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
                "invalid bind spec \"8000\": expected einhorn@N, systemd@N, systemd@NAME, starter@N, starter@KEY, fd@N, HOST:PORT, [V6]:PORT, :PORT, unix:PATH or auto",
            ),
            (
                "",
                "invalid bind spec \"\": expected einhorn@N, systemd@N, systemd@NAME, starter@N, starter@KEY, fd@N, HOST:PORT, [V6]:PORT, :PORT, unix:PATH or auto",
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
            (
                "systemd@",
                "invalid bind spec \"systemd@\": \"\" is not a socket index or name (printable, no ':', at most 255 characters)",
            ),
            (
                "systemd@a:b",
                "invalid bind spec \"systemd@a:b\": \"a:b\" is not a socket index or name (printable, no ':', at most 255 characters)",
            ),
            (
                "starter@",
                "invalid bind spec \"starter@\": the Server::Starter socket is missing",
            ),
            (
                "unix:/a.sock,mode=999",
                "invalid bind spec \"unix:/a.sock,mode=999\": \"999\" is not a file mode (octal, like 0660)",
            ),
            (
                "unix:,mode=0660",
                "invalid bind spec \"unix:,mode=0660\": the socket path is empty",
            ),
        ];
        for (spec, message) in cases {
            assert_eq!(parse(spec), Err(message.to_string()), "{spec}");
        }
    }
}
