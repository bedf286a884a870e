//! [`StdListener`]: a listening socket not yet tied to a runtime, and binding new ones.
//!
//! Every listener this crate hands out, inherited or bound here, is non-blocking and
//! close-on-exec: non-blocking because tokio (and mio, under actix) require it and an
//! inherited socket's mode is whatever the master or a sibling last set; close-on-exec so
//! that a program the worker runs does not keep the listener alive.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};

use socket2::{Domain, Protocol, Socket, Type};

use crate::address::Address;

/// The backlog of sockets bound here: tokio's, and more than Einhorn's 100.
const BACKLOG: i32 = 1024;

/// A listening socket, non-blocking and close-on-exec, not yet tied to a runtime.
///
/// This is what a host that accepts connections itself takes (actix-web's
/// `HttpServer::listen`, a thread with a blocking accept loop after `set_nonblocking(false)`);
/// [`GracefulListener::from_std`](crate::GracefulListener::from_std) turns one into a tokio
/// listener with connection tracking.
///
/// # Example
/// ```
/// use graceful_listener::{Bind, StdListener};
///
/// let listener = StdListener::open(&"127.0.0.1:0".parse::<Bind>().unwrap()).unwrap();
/// let StdListener::Tcp(tcp) = listener else { unreachable!() };
/// assert!(tcp.local_addr().unwrap().port() > 0);
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum StdListener {
    /// A TCP listener (IPv4 or IPv6).
    Tcp(std::net::TcpListener),
    /// A Unix stream listener.
    Unix(std::os::unix::net::UnixListener),
}

impl StdListener {
    /// The address this listener accepts on.
    ///
    /// # Errors
    /// When the system cannot say (the socket was closed under us).
    pub fn local_addr(&self) -> io::Result<Address> {
        match self {
            StdListener::Tcp(l) => l.local_addr().map(Address::Tcp),
            StdListener::Unix(l) => l
                .local_addr()
                .map(|a| Address::Unix(a.as_pathname().map(PathBuf::from))),
        }
    }
}

impl AsFd for StdListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            StdListener::Tcp(l) => l.as_fd(),
            StdListener::Unix(l) => l.as_fd(),
        }
    }
}

impl AsRawFd for StdListener {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// Binds a TCP listener on `addr` with `SO_REUSEADDR` (so a restart does not wait out
/// `TIME_WAIT`), as tokio's `TcpListener::bind` does.
pub(crate) fn bind_tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Resolves `host` and binds the first of its addresses that binds.
pub(crate) fn bind_host(host: &str, port: u16) -> io::Result<std::net::TcpListener> {
    let mut last = None;
    for addr in (host, port).to_socket_addrs()? {
        match bind_tcp(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} resolves to no address"),
        )
    }))
}

/// Binds a Unix socket, replacing a stale socket file that nobody listens on any more
/// (left by a crashed process), but never one that is still served, nor a file that is not
/// a socket. With `mode`, the socket file gets those permissions before it accepts a
/// connection (between `bind` and `listen`), so there is no moment with the umask's.
pub(crate) fn bind_unix(
    path: &Path,
    mode: Option<u32>,
) -> io::Result<std::os::unix::net::UnixListener> {
    match bind_unix_once(path, mode) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let is_socket = std::fs::symlink_metadata(path)
                .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                .unwrap_or(false);
            let served = std::os::unix::net::UnixStream::connect(path).is_ok();
            if !is_socket || served {
                return Err(e);
            }
            std::fs::remove_file(path)?;
            bind_unix_once(path, mode)
        }
        other => other,
    }
}

fn bind_unix_once(path: &Path, mode: Option<u32>) -> io::Result<std::os::unix::net::UnixListener> {
    let socket = Socket::new(Domain::UNIX, Type::STREAM.nonblocking().cloexec(), None)?;
    socket.bind(&socket2::SockAddr::unix(path)?)?;
    if let Some(mode) = mode {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(fd: RawFd) -> (bool, bool) {
        // SAFETY: reading the flags of an fd the caller owns.
        let (fl, fd_fl) = unsafe {
            (
                libc::fcntl(fd, libc::F_GETFL),
                libc::fcntl(fd, libc::F_GETFD),
            )
        };
        (fl & libc::O_NONBLOCK != 0, fd_fl & libc::FD_CLOEXEC != 0)
    }

    #[test]
    fn bound_listeners_are_nonblocking_and_close_on_exec() {
        let tcp = bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(flags(tcp.as_raw_fd()), (true, true));
        let host = bind_host("localhost", 0).unwrap();
        assert_eq!(flags(host.as_raw_fd()), (true, true));
        let dir = tempfile_dir("socket-flags");
        let unix = bind_unix(&dir.join("s.sock"), None).unwrap();
        assert_eq!(flags(unix.as_raw_fd()), (true, true));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_stale_unix_socket_file_is_replaced_but_a_served_one_or_a_file_is_not() {
        let dir = tempfile_dir("socket-stale");
        let path = dir.join("app.sock");
        let first = bind_unix(&path, None).unwrap();
        let err = bind_unix(&path, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        drop(first); // the file stays behind, as after a crash
        assert!(path.exists());
        bind_unix(&path, None).expect("stale socket file replaced");
        let file = dir.join("not-a-socket");
        std::fs::write(&file, b"data").unwrap();
        assert!(bind_unix(&file, None).is_err());
        assert_eq!(
            std::fs::read(&file).unwrap(),
            b"data",
            "a plain file is never removed"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_unix_socket_gets_its_mode_before_it_accepts() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile_dir("socket-mode");
        let path = dir.join("m.sock");
        let _listener = bind_unix(&path, Some(0o600)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gl-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
