//! A connection handed out by a [`GracefulListener`](super::GracefulListener).

use std::fmt;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::tracker::ConnectionGuard;
use crate::address::Address;

/// A TCP or Unix stream that stays counted by its listener until dropped.
///
/// It reads and writes like the stream it wraps. At hammer time (the drain timeout, or a
/// second stop signal) its socket is shut down: a pending or later read returns end of
/// file and a write fails, so whatever task serves it ends.
pub struct Connection {
    // Field order matters: the guard must leave the registry before the stream closes the
    // fd (fields drop in declaration order), so hammer time never touches a reused fd number.
    _guard: ConnectionGuard,
    stream: Stream,
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.stream {
            Stream::Tcp(s) => f.debug_tuple("Connection").field(s).finish(),
            Stream::Unix(s) => f.debug_tuple("Connection").field(s).finish(),
        }
    }
}

impl Connection {
    pub(crate) fn tcp(guard: ConnectionGuard, stream: TcpStream) -> Connection {
        Connection {
            _guard: guard,
            stream: Stream::Tcp(stream),
        }
    }

    pub(crate) fn unix(guard: ConnectionGuard, stream: UnixStream) -> Connection {
        Connection {
            _guard: guard,
            stream: Stream::Unix(stream),
        }
    }

    /// The TCP stream, for TCP options such as `set_nodelay`; `None` for a Unix stream.
    pub fn as_tcp(&self) -> Option<&TcpStream> {
        match &self.stream {
            Stream::Tcp(s) => Some(s),
            Stream::Unix(_) => None,
        }
    }

    /// The Unix stream; `None` for a TCP stream.
    pub fn as_unix(&self) -> Option<&UnixStream> {
        match &self.stream {
            Stream::Unix(s) => Some(s),
            Stream::Tcp(_) => None,
        }
    }

    /// The address of the peer.
    ///
    /// # Errors
    /// When the socket can no longer say (it was reset, for instance).
    pub fn peer_addr(&self) -> std::io::Result<Address> {
        match &self.stream {
            Stream::Tcp(s) => s.peer_addr().map(Address::Tcp),
            Stream::Unix(s) => s.peer_addr().map(|a| Address::from_unix(&a)),
        }
    }

    /// The local address of the connection.
    ///
    /// # Errors
    /// When the socket can no longer say.
    pub fn local_addr(&self) -> std::io::Result<Address> {
        match &self.stream {
            Stream::Tcp(s) => s.local_addr().map(Address::Tcp),
            Stream::Unix(s) => s.local_addr().map(|a| Address::from_unix(&a)),
        }
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.stream {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// Forwards a call to the inner stream, whichever it is.
macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match &mut $self.get_mut().stream {
            Stream::Tcp($s) => $call,
            Stream::Unix($s) => $call,
        }
    };
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}
