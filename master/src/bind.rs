//! `-b HOST:PORT[,OPT...]`: parsing (pure) and binding the listening sockets.
//!
//! `HOST:PORT`, `[V6]:PORT` and `:PORT` are read by the workers' own parser
//! ([`graceful_listener::Bind`]), so a value means the same to the master and to a worker
//! (`:PORT` is every IPv4 interface, `0.0.0.0:PORT`, for both); the master adds Einhorn's
//! options.
//!
//! The master binds each socket once, keeps it open for its whole life and never accepts on
//! it. The fd is not close-on-exec, so every worker inherits it under the same number.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::FromRawFd;
use std::os::fd::{AsRawFd, RawFd};
use std::str::FromStr;

use socket2::{Domain, Protocol, Socket, Type};

/// One `-b` option: an address and Einhorn's socket options.
///
/// ```
/// use einhorn_master::bind::BindSpec;
///
/// let spec: BindSpec = "127.0.0.1:0,r".parse().unwrap();
/// assert_eq!(spec.host, "127.0.0.1");
/// assert_eq!(spec.port, 0);
/// assert!(spec.reuse_addr && !spec.nonblock);
///
/// let spec: BindSpec = "[::1]:8080,n".parse().unwrap();
/// assert_eq!(spec.host, "::1");
/// assert_eq!(spec.to_string(), "[::1]:8080,n");
///
/// // `udp`: a datagram socket, for HTTP/3.
/// let spec: BindSpec = "127.0.0.1:8443,udp".parse().unwrap();
/// assert!(spec.udp);
///
/// // `:PORT` means every IPv4 interface, as in a worker's own `--bind :PORT`.
/// let spec: BindSpec = ":8080".parse().unwrap();
/// assert_eq!(spec.to_string(), "0.0.0.0:8080");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindSpec {
    /// An IP literal (IPv6 without brackets) or a host name.
    pub host: String,
    /// The port; `0` lets the kernel pick one.
    pub port: u16,
    /// `r` / `so_reuseaddr`: set `SO_REUSEADDR`.
    pub reuse_addr: bool,
    /// `n` / `o_nonblock`: set `O_NONBLOCK` (on the open file, shared with every worker).
    pub nonblock: bool,
    /// `udp`: a UDP socket (bound, not listening), for QUIC and HTTP/3, instead of a TCP
    /// listener. Einhorn has no such option; workers see it as any other `EINHORN_FD_N`.
    pub udp: bool,
}

/// Why a `-b` value is not a bind spec.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BindSpecError {
    /// No `:PORT`.
    #[error("bind address {0:?} has no port (expected HOST:PORT or :PORT)")]
    NoPort(String),
    /// A bind spec, but not a TCP address (`unix:PATH`, `einhorn@N`, ...).
    #[error("bind address {0:?} is not HOST:PORT or :PORT (the master binds TCP sockets)")]
    NotHostPort(String),
    /// The address does not parse, as the workers' own bind specs would say
    /// ([`graceful_listener::Bind`]: one parser for both).
    #[error("invalid bind address {spec:?}: {reason}")]
    Invalid {
        /// The whole value.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An option other than `r`, `so_reuseaddr`, `n`, `o_nonblock`.
    #[error(
        "unknown option {option:?} in bind address {spec:?} (known: r, so_reuseaddr, n, o_nonblock, udp)"
    )]
    UnknownOption {
        /// The whole value.
        spec: String,
        /// The option at fault.
        option: String,
    },
}

impl FromStr for BindSpec {
    type Err = BindSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let mut parts = spec.split(',');
        let addr = parts.next().unwrap_or_default().trim();
        if !addr.contains(':') {
            return Err(BindSpecError::NoPort(spec.to_string()));
        }
        // The address is parsed as the workers parse theirs: one grammar for HOST:PORT.
        let (host, port) = match addr.parse::<graceful_listener::Bind>() {
            Ok(graceful_listener::Bind::Addr(addr)) => (addr.ip().to_string(), addr.port()),
            Ok(graceful_listener::Bind::Host(host, port)) => (host, port),
            // Every IPv4 interface, as `Bind::Port` binds in a worker.
            Ok(graceful_listener::Bind::Port(port)) => {
                (std::net::Ipv4Addr::UNSPECIFIED.to_string(), port)
            }
            Ok(_) => return Err(BindSpecError::NotHostPort(spec.to_string())),
            Err(e) => {
                return Err(BindSpecError::Invalid {
                    spec: spec.to_string(),
                    reason: e.reason().to_owned(),
                });
            }
        };
        let mut out = BindSpec {
            host,
            port,
            reuse_addr: false,
            nonblock: false,
            udp: false,
        };
        for option in parts {
            match option.trim() {
                "r" | "so_reuseaddr" => out.reuse_addr = true,
                "n" | "o_nonblock" => out.nonblock = true,
                "udp" => out.udp = true,
                "" => {}
                other => {
                    return Err(BindSpecError::UnknownOption {
                        spec: spec.to_string(),
                        option: other.to_string(),
                    });
                }
            }
        }
        Ok(out)
    }
}

impl std::fmt::Display for BindSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)?;
        } else {
            write!(f, "{}:{}", self.host, self.port)?;
        }
        if self.reuse_addr {
            f.write_str(",r")?;
        }
        if self.nonblock {
            f.write_str(",n")?;
        }
        if self.udp {
            f.write_str(",udp")?;
        }
        Ok(())
    }
}

/// Why a listening socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The host did not resolve to any address.
    #[error("cannot resolve {host:?}: {source}")]
    Resolve {
        /// The host at fault.
        host: String,
        /// What the resolver said.
        source: std::io::Error,
    },
    /// The address is taken. The error names the processes holding it, when they can be
    /// found (most often: the workers of a master killed with SIGKILL), and what to do.
    #[error("cannot bind {spec}: {source}; {}", crate::holders::hint(.holders, *.reuse_addr))]
    InUse {
        /// The `-b` value at fault.
        spec: String,
        /// The OS error (`Address already in use`).
        source: std::io::Error,
        /// The processes with a listening socket on that address.
        holders: crate::holders::Holders,
        /// Whether `SO_REUSEADDR` was asked for (`,r`).
        reuse_addr: bool,
    },
    /// A socket call failed.
    #[error("cannot {step} {spec}: {source}")]
    Socket {
        /// `bind`, `listen`, ...
        step: &'static str,
        /// The `-b` value at fault.
        spec: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A bound, listening socket owned by the master.
#[derive(Debug)]
pub struct Bound {
    /// What was asked for.
    pub spec: BindSpec,
    /// The real address (the kernel's port when `0` was asked for).
    pub addr: SocketAddr,
    socket: Socket,
}

impl Bound {
    /// The fd workers inherit.
    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// A socket bound by an earlier master, for `spec`, handed over on `fd` (made
    /// inheritable again).
    ///
    /// # Errors
    /// When `fd` is not a listening socket.
    pub fn adopt(spec: BindSpec, fd: RawFd) -> std::io::Result<Bound> {
        // SAFETY: the fd was handed over to this process to be taken, once.
        let socket = unsafe { Socket::from_raw_fd(fd) };
        if spec.udp {
            if socket.r#type()? != Type::DGRAM {
                return Err(std::io::Error::other(format!(
                    "fd {fd} handed over for {spec} is not a datagram socket"
                )));
            }
        } else if !socket.is_listener()? {
            return Err(std::io::Error::other(format!(
                "fd {fd} handed over for {spec} is not a listening socket"
            )));
        }
        socket.set_cloexec(false)?;
        let addr = socket.local_addr()?.as_socket().ok_or_else(|| {
            std::io::Error::other(format!(
                "fd {fd} handed over for {spec} is not an IP socket"
            ))
        })?;
        Ok(Bound { spec, addr, socket })
    }
}

impl BindSpec {
    /// The address to bind: the host as an IP literal, or its first resolved address (IPv4
    /// first, as Einhorn binds IPv4).
    ///
    /// # Errors
    /// [`BindError::Resolve`] when the host is not an IP literal and does not resolve.
    pub fn resolve(&self) -> Result<SocketAddr, BindError> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        let resolve_error = |source| BindError::Resolve {
            host: self.host.clone(),
            source,
        };
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(resolve_error)?
            .collect();
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .ok_or_else(|| {
                resolve_error(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no addresses",
                ))
            })
    }

    /// Binds and listens, with the requested options, leaving the fd inheritable.
    ///
    /// # Errors
    /// [`BindError`] naming the step and the spec.
    pub fn bind(&self, backlog: i32) -> Result<Bound, BindError> {
        let addr = self.resolve()?;
        let fail = |step| {
            let spec = self.to_string();
            move |source| BindError::Socket { step, spec, source }
        };
        let (kind, protocol) = if self.udp {
            (Type::DGRAM, Protocol::UDP)
        } else {
            (Type::STREAM, Protocol::TCP)
        };
        let socket = Socket::new(Domain::for_address(addr), kind, Some(protocol))
            .map_err(fail("create a socket for"))?;
        if self.reuse_addr {
            socket
                .set_reuse_address(true)
                .map_err(fail("set SO_REUSEADDR on"))?;
        }
        socket.bind(&addr.into()).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AddrInUse {
                BindError::InUse {
                    spec: self.to_string(),
                    source,
                    // The holders are found among TCP listeners only.
                    holders: if self.udp {
                        crate::holders::Holders::default()
                    } else {
                        crate::holders::listening_on(addr)
                    },
                    reuse_addr: self.reuse_addr,
                }
            } else {
                fail("bind")(source)
            }
        })?;
        if !self.udp {
            socket.listen(backlog).map_err(fail("listen on"))?;
        }
        if self.nonblock {
            socket
                .set_nonblocking(true)
                .map_err(fail("set O_NONBLOCK on"))?;
        }
        // Inherited by every worker: that is the point of the master.
        socket
            .set_cloexec(false)
            .map_err(fail("clear FD_CLOEXEC on"))?;
        let addr = socket
            .local_addr()
            .map_err(fail("read the address of"))?
            .as_socket()
            .unwrap_or(addr);
        Ok(Bound {
            spec: self.clone(),
            addr,
            socket,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<BindSpec, BindSpecError> {
        s.parse()
    }

    #[test]
    fn udp_binds_a_datagram_socket_that_workers_inherit() {
        let spec = parse("127.0.0.1:0,udp").unwrap();
        assert!(spec.udp && !spec.reuse_addr);
        assert_eq!(spec.to_string(), "127.0.0.1:0,udp");
        let bound = spec.bind(16).unwrap();
        assert_ne!(bound.addr.port(), 0);
        // SAFETY: borrowing an fd the Bound owns for the checks below.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(bound.fd()) };
        let socket = socket2::SockRef::from(&fd);
        assert_eq!(socket.r#type().unwrap(), Type::DGRAM);
        assert!(!socket.is_listener().unwrap());
        // SAFETY: F_GETFD only reads the descriptor flags.
        let flags = unsafe { libc::fcntl(bound.fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, 0, "inherited by workers");
        // A datagram to it arrives (read through a copy of the fd, as a worker would).
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(b"ping", bound.addr).unwrap();
        let worker_copy = std::net::UdpSocket::from(nix::unistd::dup(fd).unwrap());
        let mut buf = [0u8; 8];
        let (n, _) = worker_copy.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        // Handed over to a re-exec'd master, it is taken back as a datagram socket.
        let spec_again = bound.spec.clone();
        let fd = nix::unistd::dup(fd).unwrap();
        let adopted = Bound::adopt(spec_again, std::os::fd::IntoRawFd::into_raw_fd(fd)).unwrap();
        assert_eq!(adopted.addr, bound.addr);
        // A busy port is named, as for TCP.
        let busy = format!("127.0.0.1:{},udp", bound.addr.port());
        let err = parse(&busy).unwrap().bind(16).unwrap_err();
        assert!(matches!(err, BindError::InUse { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot bind {busy}: ")),
            "{err}"
        );
        assert!(matches!(
            parse("127.0.0.1:0,tcp"),
            Err(BindSpecError::UnknownOption { option, .. }) if option == "tcp"
        ));
    }

    #[test]
    fn parses_einhorn_forms() {
        assert_eq!(
            parse("127.0.0.1:1234").unwrap(),
            BindSpec {
                host: "127.0.0.1".into(),
                port: 1234,
                reuse_addr: false,
                nonblock: false,
                udp: false,
            }
        );
        let spec = parse("0.0.0.0:80,r,n").unwrap();
        assert!(spec.reuse_addr && spec.nonblock);
        let spec = parse("localhost:80,so_reuseaddr,o_nonblock").unwrap();
        assert!(spec.reuse_addr && spec.nonblock);
        assert_eq!(spec.host, "localhost");
    }

    #[test]
    fn a_port_alone_is_every_ipv4_interface_as_in_a_worker() {
        let spec = parse(":18089,r").unwrap();
        assert_eq!((spec.host.as_str(), spec.port), ("0.0.0.0", 18089));
        assert!(spec.reuse_addr);
        // The same address a worker's `--bind :18089` binds.
        assert_eq!(
            ":18089".parse::<graceful_listener::Bind>().unwrap(),
            graceful_listener::Bind::Port(18089)
        );
        let bound = parse(":0").unwrap().bind(16).unwrap();
        assert!(bound.addr.ip().is_unspecified() && bound.addr.is_ipv4());
    }

    #[test]
    fn parses_ipv6_in_brackets() {
        let spec = parse("[::1]:0").unwrap();
        assert_eq!(spec.host, "::1");
        assert_eq!(spec.port, 0);
        assert_eq!(spec.to_string(), "[::1]:0");
        assert!(matches!(
            parse("::1:80"),
            Err(BindSpecError::Invalid { reason, .. }) if reason.contains("IPv6")
        ));
    }

    #[test]
    fn names_what_is_wrong() {
        assert_eq!(
            parse("127.0.0.1"),
            Err(BindSpecError::NoPort("127.0.0.1".into()))
        );
        assert_eq!(
            parse("unix:/tmp/x.sock").unwrap_err().to_string(),
            "bind address \"unix:/tmp/x.sock\" is not HOST:PORT or :PORT (the master binds TCP sockets)"
        );
        assert_eq!(
            parse("127.0.0.1:99999"),
            Err(BindSpecError::Invalid {
                spec: "127.0.0.1:99999".into(),
                reason: "port 99999 is above 65535".into()
            })
        );
        assert_eq!(
            parse("unix:/tmp/x.sock"),
            Err(BindSpecError::NotHostPort("unix:/tmp/x.sock".into()))
        );
        assert!(matches!(
            parse("bad host:80"),
            Err(BindSpecError::Invalid { .. })
        ));
        assert_eq!(
            parse("127.0.0.1:80,x"),
            Err(BindSpecError::UnknownOption {
                spec: "127.0.0.1:80,x".into(),
                option: "x".into()
            })
        );
        assert!(matches!(parse("[::1]"), Err(BindSpecError::Invalid { .. })));
        assert_eq!(
            parse("http://127.0.0.1:8080").unwrap_err().to_string(),
            "invalid bind address \"http://127.0.0.1:8080\": a URL scheme (http://) is not part \
             of a bind address: use 127.0.0.1:8080"
        );
    }

    #[test]
    fn display_round_trips() {
        for s in ["127.0.0.1:1,r", "[::1]:2,n", "h:3,r,n", "h:4"] {
            assert_eq!(parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn binds_port_zero_and_leaves_the_fd_inheritable() {
        let bound = parse("127.0.0.1:0,r").unwrap().bind(16).unwrap();
        assert_ne!(bound.addr.port(), 0);
        assert!(bound.addr.ip().is_loopback());
        let flags = nix::fcntl::fcntl(&bound.socket, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_eq!(flags & libc::FD_CLOEXEC, 0);
        std::net::TcpStream::connect(bound.addr).unwrap();
    }
}
