//! Taking ownership of an inherited listening socket, after checking it is one.
//!
//! An fd number from the environment is a claim, not a fact: it may be closed, a file, a
//! datagram socket, or a socket nobody called `listen()` on. Each is reported as such
//! instead of surfacing later as a baffling accept error or a tokio panic.

use std::collections::BTreeSet;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use socket2::{Domain, SockRef, Type};

use crate::socket::StdListener;

/// An inherited fd is not a listening stream socket we can use.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InheritError {
    /// Nothing is open at this fd number.
    #[error("fd {fd} is not open")]
    NotOpen {
        /// The fd number.
        fd: RawFd,
    },
    /// The fd is open but is not a socket (a file, a pipe, a terminal...).
    #[error("fd {fd} is not a socket")]
    NotASocket {
        /// The fd number.
        fd: RawFd,
    },
    /// The socket is not a stream socket (UDP, for instance).
    #[error("fd {fd} is a {kind} socket, not a stream socket")]
    NotStream {
        /// The fd number.
        fd: RawFd,
        /// What kind of socket it is.
        kind: &'static str,
    },
    /// The socket is not a datagram socket, where one was asked for (HTTP/3 serves QUIC over
    /// UDP: bind it with `-b HOST:PORT,udp`).
    #[error("fd {fd} is a {kind} socket, not a datagram (UDP) socket")]
    NotDatagram {
        /// The fd number.
        fd: RawFd,
        /// What kind of socket it is.
        kind: &'static str,
    },
    /// The datagram socket is not bound to a port, or is connected to one peer.
    #[error("fd {fd} is a datagram socket that is {what}")]
    NotBoundDatagram {
        /// The fd number.
        fd: RawFd,
        /// `not bound` or `connected to a peer`.
        what: &'static str,
    },
    /// The socket is not listening: nobody called `listen()` on it, or it is connected.
    #[error("fd {fd} is a socket that is not listening")]
    NotListening {
        /// The fd number.
        fd: RawFd,
    },
    /// The socket's family is neither IPv4, IPv6 nor Unix.
    #[error("fd {fd} is a socket of address family {family}, not IPv4, IPv6 or Unix")]
    UnsupportedFamily {
        /// The fd number.
        fd: RawFd,
        /// The family, as the system numbers it (`AF_*`).
        family: libc::c_int,
    },
    /// This fd was already taken by this process: each inherited listener can be taken once.
    #[error("fd {fd} was already taken: an inherited listener can be taken only once")]
    AlreadyTaken {
        /// The fd number.
        fd: RawFd,
    },
    /// A system call on the fd failed.
    #[error("fd {fd}: {source}")]
    Io {
        /// The fd number.
        fd: RawFd,
        /// The error.
        source: std::io::Error,
    },
}

/// Fd numbers taken so far. A number stays here for the life of the process: once our copy
/// is closed the number may name something else, and taking it again would be a lie.
static TAKEN: Mutex<BTreeSet<RawFd>> = Mutex::new(BTreeSet::new());

/// Checks that `fd` is an open, listening stream socket of a supported family, makes it
/// non-blocking and close-on-exec, and takes ownership of it (once per fd per process).
///
/// Non-blocking is set here because `O_NONBLOCK` lives on the open file, shared with the
/// master and every other worker: nobody else's setting can be assumed. Close-on-exec is set
/// so that programs this worker runs do not keep the listener alive.
///
/// # Errors
/// An [`InheritError`] naming the fd and what is wrong with it. On error the fd is left
/// untouched and not taken.
pub(crate) fn take_listener(fd: RawFd) -> Result<StdListener, InheritError> {
    take(fd, check).map(|(owned, domain)| {
        if domain == Domain::UNIX {
            StdListener::Unix(owned.into())
        } else {
            StdListener::Tcp(owned.into())
        }
    })
}

/// Takes `fd` once `check` has accepted it (and left it non-blocking and close-on-exec):
/// open, not taken before by this process; recorded as taken. On error the fd is left
/// untouched and not taken.
fn take<T>(
    fd: RawFd,
    check: impl FnOnce(RawFd, SockRef<'_>) -> Result<T, InheritError>,
) -> Result<(OwnedFd, T), InheritError> {
    if fd < 0 {
        return Err(InheritError::NotOpen { fd });
    }
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    if taken.contains(&fd) {
        return Err(InheritError::AlreadyTaken { fd });
    }
    // SAFETY: F_GETFD only reads the descriptor flags; an invalid fd yields EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(InheritError::NotOpen { fd });
    }
    // SAFETY: the fd is open (checked just above) and we only borrow it for the checks.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let checked = check(fd, SockRef::from(&borrowed))?;
    taken.insert(fd);
    // SAFETY: the fd is open, the socket `check` wants, and now ours alone within this
    // process (recorded in TAKEN, so no second OwnedFd can be made from it).
    Ok((unsafe { OwnedFd::from_raw_fd(fd) }, checked))
}

/// Checks that `fd` is an open, bound, unconnected UDP socket (IPv4 or IPv6), makes it
/// non-blocking and close-on-exec, and takes ownership of it (once per fd per process), as
/// [`take_listener`] does for stream sockets.
///
/// # Errors
/// An [`InheritError`] naming the fd and what is wrong with it; on error the fd is left
/// untouched and not taken.
pub(crate) fn take_datagram(fd: RawFd) -> Result<std::net::UdpSocket, InheritError> {
    take(fd, check_datagram).map(|(owned, ())| owned.into())
}

/// The socket's type and its name for messages (`stream`, `datagram`, ...).
fn socket_kind(fd: RawFd, socket: &SockRef<'_>) -> Result<(Type, &'static str), InheritError> {
    let kind = match socket.r#type() {
        Ok(kind) => kind,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => {
            return Err(InheritError::NotASocket { fd });
        }
        Err(source) => return Err(InheritError::Io { fd, source }),
    };
    let name = match kind {
        Type::STREAM => "stream",
        Type::DGRAM => "datagram",
        Type::SEQPACKET => "seqpacket",
        Type::RAW => "raw",
        _ => "unknown",
    };
    Ok((kind, name))
}

fn check_datagram(fd: RawFd, socket: SockRef<'_>) -> Result<(), InheritError> {
    let io = |source: std::io::Error| InheritError::Io { fd, source };
    match socket_kind(fd, &socket)? {
        (Type::DGRAM, _) => {}
        (_, kind) => return Err(InheritError::NotDatagram { fd, kind }),
    }
    let domain = socket.domain().map_err(io)?;
    if ![Domain::IPV4, Domain::IPV6].contains(&domain) {
        return Err(InheritError::UnsupportedFamily {
            fd,
            family: domain.into(),
        });
    }
    let bound = socket.local_addr().map_err(io)?.as_socket();
    if bound.is_none_or(|addr| addr.port() == 0) {
        return Err(InheritError::NotBoundDatagram {
            fd,
            what: "not bound",
        });
    }
    if socket.peer_addr().is_ok() {
        return Err(InheritError::NotBoundDatagram {
            fd,
            what: "connected to a peer",
        });
    }
    socket.set_nonblocking(true).map_err(io)?;
    socket.set_cloexec(true).map_err(io)?;
    Ok(())
}

/// Whether `fd` looks like one a manager passed across `exec`: taken by this process already
/// (it may have been closed since, by the listener's owner), or open without close-on-exec.
/// `Err` says what it is instead, for a message.
///
/// Open-ness alone proves nothing: by the time a listener is taken, the process has opened
/// fds of its own (the runtime's epoll and wake-up fds), at the lowest free numbers, which
/// are exactly those of a socket the manager counted but never passed. Those are
/// close-on-exec (the standard library and tokio open every fd so), and an fd that crossed
/// `exec` cannot be, unless something in this process marked it since (libsystemd's
/// `sd_listen_fds` does).
pub(crate) fn check_passed(fd: RawFd) -> Result<(), &'static str> {
    if TAKEN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&fd)
    {
        return Ok(());
    }
    // SAFETY: F_GETFD only reads the descriptor flags; an invalid fd yields EBADF.
    let flags = if fd < 0 {
        -1
    } else {
        unsafe { libc::fcntl(fd, libc::F_GETFD) }
    };
    if flags == -1 {
        Err("is not open")
    } else if flags & libc::FD_CLOEXEC != 0 {
        Err("is close-on-exec, so not passed across exec: this process opened it itself")
    } else {
        Ok(())
    }
}

fn check(fd: RawFd, socket: SockRef<'_>) -> Result<Domain, InheritError> {
    let io = |source: std::io::Error| InheritError::Io { fd, source };
    match socket_kind(fd, &socket)? {
        (Type::STREAM, _) => {}
        (_, kind) => return Err(InheritError::NotStream { fd, kind }),
    }
    let domain = socket.domain().map_err(io)?;
    if ![Domain::IPV4, Domain::IPV6, Domain::UNIX].contains(&domain) {
        return Err(InheritError::UnsupportedFamily {
            fd,
            family: domain.into(),
        });
    }
    if !socket.is_listener().map_err(io)? {
        return Err(InheritError::NotListening { fd });
    }
    socket.set_nonblocking(true).map_err(io)?;
    socket.set_cloexec(true).map_err(io)?;
    Ok(domain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, IntoRawFd};
    use std::sync::atomic::{AtomicI32, Ordering};

    /// Moves `fd` to a number no other test will be handed, since taken numbers stay taken
    /// for the life of the (shared) test process.
    fn unique_fd(fd: RawFd) -> RawFd {
        static NEXT: AtomicI32 = AtomicI32::new(900);
        let target = NEXT.fetch_add(1, Ordering::Relaxed);
        // SAFETY: dup2 onto a number no test uses, then close the original we own.
        unsafe {
            assert_eq!(libc::dup2(fd, target), target);
            libc::close(fd);
        }
        target
    }

    #[test]
    fn a_bound_udp_socket_is_taken_once_and_a_stream_socket_is_not() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = udp.local_addr().unwrap();
        let fd = unique_fd(udp.into_raw_fd());
        let taken = take_datagram(fd).unwrap();
        assert_eq!(taken.local_addr().unwrap(), addr);
        assert!(matches!(
            take_datagram(fd),
            Err(InheritError::AlreadyTaken { .. })
        ));
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = unique_fd(tcp.into_raw_fd());
        let err = take_datagram(fd).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("fd {fd} is a stream socket, not a datagram (UDP) socket")
        );
        let connected = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        connected.connect(addr).unwrap();
        let fd = unique_fd(connected.into_raw_fd());
        let err = take_datagram(fd).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("fd {fd} is a datagram socket that is connected to a peer")
        );
        let unbound = socket2::Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        let fd = unique_fd(unbound.into_raw_fd());
        assert!(matches!(
            take_datagram(fd),
            Err(InheritError::NotBoundDatagram {
                what: "not bound",
                ..
            })
        ));
    }

    #[test]
    fn a_listening_tcp_socket_is_taken_once_and_made_nonblocking() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let fd = unique_fd(listener.into_raw_fd());
        let StdListener::Tcp(taken) = take_listener(fd).unwrap() else {
            panic!("expected a TCP listener");
        };
        assert_eq!(taken.local_addr().unwrap(), addr);
        // SAFETY: reading the status flags of an fd we own.
        let flags = unsafe { libc::fcntl(taken.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(
            flags & libc::O_NONBLOCK,
            0,
            "inherited listener must be non-blocking"
        );
        let fd_flags = unsafe { libc::fcntl(taken.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(
            fd_flags & libc::FD_CLOEXEC,
            0,
            "inherited listener must be close-on-exec"
        );
        assert!(matches!(
            take_listener(fd),
            Err(InheritError::AlreadyTaken { .. })
        ));
    }

    #[test]
    fn a_unix_listener_is_recognised() {
        let dir = std::env::temp_dir().join(format!("gl-inherit-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let fd = unique_fd(listener.into_raw_fd());
        assert!(matches!(take_listener(fd), Ok(StdListener::Unix(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn wrong_fds_are_named_and_left_alone() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let err = take_listener(file.as_raw_fd()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("fd {} is not a socket", file.as_raw_fd())
        );

        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = take_listener(udp.as_raw_fd()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "fd {} is a datagram socket, not a stream socket",
                udp.as_raw_fd()
            )
        );

        let unbound = socket2::Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let err = take_listener(unbound.as_raw_fd()).unwrap_err();
        assert!(matches!(err, InheritError::NotListening { .. }), "{err}");

        // Still ours to use: nothing was closed or taken.
        assert!(udp.local_addr().is_ok());
        assert!(matches!(
            take_listener(-1),
            Err(InheritError::NotOpen { fd: -1 })
        ));
    }

    #[test]
    fn a_closed_fd_is_not_open() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = file.as_raw_fd();
        drop(file);
        // Another test thread may reuse the number at once; only assert when it is free.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            assert!(matches!(
                take_listener(fd),
                Err(InheritError::NotOpen { .. })
            ));
        }
        let err = take_listener(1_000_000).unwrap_err();
        assert_eq!(err.to_string(), "fd 1000000 is not open");
    }
}
