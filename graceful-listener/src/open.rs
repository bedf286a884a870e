//! Opening a bind spec: resolving `auto`, then taking the inherited socket (checked) or
//! binding a new one. The I/O above the pure spec (`bind`, `auto`) and the socket primitives
//! (`socket`, `inherit`), below the listeners.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::RawFd;

use crate::bind::{Bind, BindError};
use crate::env::{Environment, LISTEN_FDNAMES, LISTEN_FDS, SERVER_STARTER_PORT};
use crate::inherit::{take_datagram, take_listener};
use crate::socket::{self, StdListener};

impl Bind {
    /// Opens the listener: takes the inherited socket, or binds a new one. `self` must not be
    /// `auto` (resolve it first).
    fn open_resolved(&self, env: &Environment) -> Result<StdListener, BindError> {
        let io = |source| BindError::Io {
            bind: self.clone(),
            source,
        };
        let from_env = |source| BindError::Env {
            bind: self.clone(),
            source,
        };
        if let Some((fd, origin)) = self.passed_fd(env)? {
            return inherited(self, fd, origin);
        }
        match self {
            Bind::Starter(index) => {
                let port = env.starter_port(*index).map_err(from_env)?;
                inherited(
                    self,
                    port.fd,
                    format!("{SERVER_STARTER_PORT} {}={}", port.key, port.fd),
                )
            }
            Bind::StarterKey(key) => {
                let port = env.starter_port_named(key).map_err(from_env)?;
                inherited(
                    self,
                    port.fd,
                    format!("{SERVER_STARTER_PORT} {}={}", port.key, port.fd),
                )
            }
            Bind::Addr(addr) => socket::bind_tcp(*addr).map(StdListener::Tcp).map_err(io),
            Bind::Port(port) => {
                socket::bind_tcp(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), *port))
                    .map(StdListener::Tcp)
                    .map_err(io)
            }
            Bind::Host(host, port) => socket::bind_host(host, *port)
                .map(StdListener::Tcp)
                .map_err(io),
            Bind::Unix { path, mode } => socket::bind_unix(path, *mode)
                .map(StdListener::Unix)
                .map_err(io),
            Bind::Auto => unreachable!("auto is resolved before it is opened"),
            Bind::Einhorn(_) | Bind::Systemd(_) | Bind::SystemdName(_) | Bind::Fd(_) => {
                unreachable!("passed sockets are taken above")
            }
        }
    }

    /// Opens a UDP socket: resolves `auto` as for a listener (the first socket a manager
    /// passed, else `:$PORT`, else `127.0.0.1:8000`), then takes the inherited one (checked:
    /// a bound, unconnected UDP socket, then made non-blocking and close-on-exec) or binds a
    /// new one.
    pub(crate) fn open_datagram(
        &self,
        env: &Environment,
    ) -> Result<std::net::UdpSocket, BindError> {
        if *self == Bind::Auto {
            return crate::auto::resolve(Bind::Auto, env)?
                .bind
                .open_datagram(env);
        }
        let io = |source| BindError::Io {
            bind: self.clone(),
            source,
        };
        let socket = match self.passed_fd(env)? {
            Some((fd, origin)) => take_datagram(fd).map_err(|source| BindError::Inherit {
                bind: self.clone(),
                origin,
                source,
            })?,
            None => match self {
                Bind::Addr(addr) => std::net::UdpSocket::bind(addr).map_err(io)?,
                Bind::Port(port) => {
                    std::net::UdpSocket::bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), *port))
                        .map_err(io)?
                }
                Bind::Host(host, port) => {
                    std::net::UdpSocket::bind((host.as_str(), *port)).map_err(io)?
                }
                _ => {
                    return Err(io(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "not a datagram socket spec (UDP is einhorn@N, systemd@N, fd@N, HOST:PORT or auto)",
                    )));
                }
            },
        };
        socket.set_nonblocking(true).map_err(io)?;
        Ok(socket)
    }

    /// The fd a manager passed for this spec, and where its number came from (for messages):
    /// `None` for a spec that binds a socket of its own. Server::Starter passes stream
    /// sockets only: its specs are not datagram ones.
    fn passed_fd(&self, env: &Environment) -> Result<Option<(RawFd, String)>, BindError> {
        let from_env = |source| BindError::Env {
            bind: self.clone(),
            source,
        };
        Ok(Some(match self {
            Bind::Einhorn(index) => {
                let fd = env.einhorn_fd(*index).map_err(from_env)?;
                (fd, format!("{}={fd}", Environment::einhorn_fd_var(*index)))
            }
            Bind::Systemd(index) => {
                let fd = env.systemd_fd(*index).map_err(from_env)?;
                every_systemd_socket_passed(self, env)?;
                (fd, format!("{LISTEN_FDS} socket {index}, fd {fd}"))
            }
            Bind::SystemdName(name) => {
                let (_, fd) = env.systemd_fd_named(name).map_err(from_env)?;
                every_systemd_socket_passed(self, env)?;
                (fd, format!("{LISTEN_FDNAMES} {name:?}, fd {fd}"))
            }
            Bind::Fd(fd) => (*fd, format!("fd {fd}")),
            _ => return Ok(None),
        }))
    }

    /// Resolves `auto` if it is, then opens the listener.
    pub(crate) fn open_std(&self, env: &Environment) -> Result<StdListener, BindError> {
        open(self, env).map(|opened| opened.listener)
    }
}

/// A spec opened: the spec `auto` became (or the spec itself), why `auto` chose it, and the
/// listener.
pub(crate) struct Opened {
    pub(crate) bind: Bind,
    pub(crate) why: Option<String>,
    pub(crate) listener: StdListener,
}

/// The one way from a spec to a listener: resolves `auto` in `env`, then takes the inherited
/// socket or binds a new one.
pub(crate) fn open(bind: &Bind, env: &Environment) -> Result<Opened, BindError> {
    let resolved = crate::auto::resolve(bind.clone(), env)?;
    let listener = resolved.bind.open_resolved(env)?;
    Ok(Opened {
        bind: resolved.bind,
        why: resolved.why,
        listener,
    })
}

/// Checks that every fd systemd says it passed (`LISTEN_FDS` of them from fd 3) is there (see
/// [`crate::inherit::check_passed`]), not only the one taken: a count that claims more sockets than arrived is a broken unit or
/// launcher, said at start rather than when the missing socket is asked for. Only open-ness
/// is checked: the others may be datagram sockets or FIFOs, which a unit may pass too.
fn every_systemd_socket_passed(bind: &Bind, env: &Environment) -> Result<(), BindError> {
    let Ok(Some(activation)) = env.activation() else {
        // Taking the socket asked for has already checked the variables.
        return Ok(());
    };
    let count = activation.count();
    let fd = |index| activation.fd(index).unwrap_or(RawFd::MAX);
    // Ends at the first fd that was not passed: a process cannot hold more fds than its
    // limit, however large a count the variable claims.
    for index in 0..count {
        if let Err(why) = crate::inherit::check_passed(fd(index)) {
            return Err(BindError::Missing {
                bind: bind.clone(),
                passed: format!("{LISTEN_FDS}={count}"),
                first: fd(0),
                last: fd(count - 1),
                fd: fd(index),
                index,
                why,
            });
        }
    }
    Ok(())
}

fn inherited(bind: &Bind, fd: RawFd, origin: String) -> Result<StdListener, BindError> {
    take_listener(fd).map_err(|source| BindError::Inherit {
        bind: bind.clone(),
        origin,
        source,
    })
}

impl StdListener {
    /// Opens a bind spec: takes the inherited socket (checked: open, a listening stream
    /// socket, then made non-blocking and close-on-exec, at most once per process) or binds a
    /// new one. Needs no runtime.
    ///
    /// # Errors
    /// A [`BindError`] naming the spec and, for inherited sockets, the variable and value at
    /// fault.
    pub fn open(bind: &Bind) -> Result<StdListener, BindError> {
        bind.open_std(&Environment::from_process())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn einhorn_errors_name_the_variable_and_value() {
        let env = Environment::from_vars(
            [
                ("EINHORN_MASTER_PID", "10"),
                ("EINHORN_FD_COUNT", "1"),
                ("EINHORN_FD_0", "1000000"),
            ],
            11,
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
        let env = Environment::from_vars(Vec::<(String, String)>::new(), 2, 1);
        let bind = Bind::unix(path.clone());
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
