//! The relay between the workers that share one UDP socket: each worker listens on a Unix
//! `SOCK_SEQPACKET` socket in the abstract namespace, named after the shared socket and its
//! own tag, and any worker that reads a datagram owned by another sends it there, one record
//! per datagram, on a connection it keeps to that owner.
//!
//! Connections, not datagrams: a Unix datagram socket queues at most
//! `net.unix.max_dgram_qlen` datagrams (10 by default) from unconnected senders, and a relay
//! carrying a busy worker's traffic overflows that at once; a connection is bounded by its
//! buffer's bytes instead (set to [`BUFFER_BYTES`]).
//!
//! Abstract names need no file and vanish with the process, but any process in the network
//! namespace may connect to one: each connection's peer is checked once (`SO_PEERCRED`, which
//! the kernel fills) and refused unless it runs as this worker's user.
//!
//! A worker that serves (takes new connections) also binds a second name, its *serving*
//! mark, and drops it when it starts to drain: a draining worker stops reading the shared
//! socket only once another worker's mark says someone else reads it.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::sync::Mutex;
use std::task::{Context, Poll};

use tokio::io::unix::AsyncFd;

use crate::cid::Tag;

/// The socket buffer of each relay connection, both ends: about 3,000 full datagrams.
pub(crate) const BUFFER_BYTES: usize = 4 << 20;

/// The names of one shared socket's relay endpoints: `graceful-listener/h3/<inode>/<tag>`.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    prefix: String,
}

impl Names {
    /// The names for the shared socket `udp` (identified by its inode, which every process
    /// holding it sees).
    pub(crate) fn for_socket(udp: &impl AsRawFd) -> io::Result<Names> {
        let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat fills the struct it is given; it is read only on success.
        if unsafe { libc::fstat(udp.as_raw_fd(), stat.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: initialised by the successful fstat above.
        let inode = unsafe { stat.assume_init() }.st_ino;
        Ok(Names {
            prefix: format!("graceful-listener/h3/{inode:x}/"),
        })
    }

    fn relay(&self, tag: Tag) -> String {
        format!("{}{tag}", self.prefix)
    }

    fn serving(&self, tag: Tag) -> String {
        format!("{}{tag}.serving", self.prefix)
    }

    /// Whether a worker other than `me` has its serving mark up.
    pub(crate) fn someone_else_serves(&self, me: Tag) -> bool {
        self.serving_tags().iter().any(|&tag| tag != me)
    }

    /// The workers whose serving mark is up, from `/proc/net/unix`'s listing of abstract
    /// names (`@name`).
    pub(crate) fn serving_tags(&self) -> Vec<Tag> {
        let Ok(listing) = std::fs::read_to_string("/proc/net/unix") else {
            return Vec::new();
        };
        let at_prefix = format!("@{}", self.prefix);
        listing
            .lines()
            .filter_map(|line| line.split_whitespace().last())
            .filter_map(|name| name.strip_prefix(&at_prefix)?.strip_suffix(".serving"))
            .filter_map(|tag| u32::from_str_radix(tag, 16).ok())
            .map(Tag)
            .collect()
    }

    /// Puts up `me`'s serving mark; it stays up until the returned socket is dropped.
    pub(crate) fn serving_mark(&self, me: Tag) -> io::Result<UnixDatagram> {
        UnixDatagram::bind_addr(&UnixAddr::from_abstract_name(self.serving(me))?)
    }
}

/// This worker's end of the relay.
#[derive(Debug)]
pub(crate) struct Relay {
    names: Names,
    /// `None` once closed.
    listener: Mutex<Option<AsyncFd<OwnedFd>>>,
    /// Connections from the other workers, each checked.
    incoming: Mutex<Vec<AsyncFd<OwnedFd>>>,
    /// Connections to the other workers, made when first needed.
    outgoing: Mutex<HashMap<Tag, OwnedFd>>,
    uid: libc::uid_t,
}

/// Why a frame could not be handed to its owner.
#[derive(Debug)]
pub(crate) enum SendError {
    /// Nobody listens at the owner's name: it has exited.
    Gone,
    /// Its buffer is full, or another error: the datagram is dropped, as a network would.
    Dropped(io::Error),
}

fn seqpacket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd, ours alone.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let size = BUFFER_BYTES;
    // Best effort: the system may cap it lower (`net.core.wmem_max`).
    let _ = socket2::SockRef::from(&fd).set_send_buffer_size(size);
    let _ = socket2::SockRef::from(&fd).set_recv_buffer_size(size);
    Ok(fd)
}

fn abstract_addr(name: &str) -> io::Result<socket2::SockAddr> {
    let addr = UnixAddr::from_abstract_name(name)?;
    // socket2 reads an abstract name from a leading NUL.
    let mut path = vec![0u8];
    path.extend_from_slice(addr.as_abstract_name().expect("abstract"));
    socket2::SockAddr::unix(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&path))
}

/// Registers an fd we own with tokio's reactor.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd returns the same open fd for as long as it lives, and the AsyncFd
    // owns it (so nothing else can close it meanwhile).
    unsafe { AsyncFd::register(fd) }.map_err(|e| io::Error::other(e.to_string()))
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Relay {
    /// Listens at `me`'s relay name. Needs a tokio runtime.
    pub(crate) fn bind(names: Names, me: Tag) -> io::Result<Relay> {
        let fd = seqpacket()?;
        let sock = socket2::SockRef::from(&fd);
        sock.bind(&abstract_addr(&names.relay(me))?)?;
        sock.listen(64)?;
        Ok(Relay {
            names,
            listener: Mutex::new(Some(register(fd)?)),
            incoming: Mutex::new(Vec::new()),
            outgoing: Mutex::new(HashMap::new()),
            // SAFETY: geteuid cannot fail.
            uid: unsafe { libc::geteuid() },
        })
    }

    /// Stops listening and closes every connection from the other workers: their next
    /// frame for this worker fails, and they answer its datagrams themselves.
    pub(crate) fn close(&self) {
        self.listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.incoming
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Hands a frame to `owner`, without waiting.
    pub(crate) fn send(&self, owner: Tag, frame: &[u8]) -> Result<(), SendError> {
        let mut outgoing = self.outgoing.lock().unwrap_or_else(|e| e.into_inner());
        let fd = match outgoing.get(&owner) {
            Some(fd) => fd.as_raw_fd(),
            None => {
                let fd = self.connect(owner)?;
                let raw = fd.as_raw_fd();
                outgoing.insert(owner, fd);
                raw
            }
        };
        match send_record(fd, frame) {
            Ok(()) => Ok(()),
            Err(e) if would_block(&e) => Err(SendError::Dropped(e)),
            Err(e) => {
                // The owner has closed its end: it is gone (or going).
                outgoing.remove(&owner);
                tracing::debug!(%owner, error = %e, "relay: connection to a worker ended");
                Err(SendError::Gone)
            }
        }
    }

    fn connect(&self, owner: Tag) -> Result<OwnedFd, SendError> {
        let fd = seqpacket().map_err(SendError::Dropped)?;
        let addr = abstract_addr(&self.names.relay(owner)).map_err(SendError::Dropped)?;
        match socket2::SockRef::from(&fd).connect(&addr) {
            Ok(()) => Ok(fd),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ECONNREFUSED) | Some(libc::ENOENT)
                ) =>
            {
                Err(SendError::Gone)
            }
            Err(e) => Err(SendError::Dropped(e)),
        }
    }

    /// Receives the next frame from another worker of this user into `buf`. Connections
    /// from any other user are refused (and counted in `refused`).
    pub(crate) fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
        refused: &mut u64,
    ) -> Poll<io::Result<usize>> {
        let mut incoming = self.incoming.lock().unwrap_or_else(|e| e.into_inner());
        let listener = self.listener.lock().unwrap_or_else(|e| e.into_inner());
        let Some(listener) = listener.as_ref() else {
            return Poll::Pending;
        };
        // New connections.
        while let Poll::Ready(guard) = listener.poll_read_ready(cx) {
            let mut guard = guard?;
            match guard.try_io(|fd| accept(fd.as_raw_fd())) {
                Ok(Ok(fd)) => match peer_uid(&fd) {
                    Ok(uid) if uid == self.uid => incoming.push(register(fd)?),
                    _ => *refused += 1,
                },
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
        // Records from each.
        let mut i = 0;
        while i < incoming.len() {
            match incoming[i].poll_read_ready(cx) {
                Poll::Pending => i += 1,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(mut guard)) => {
                    match guard.try_io(|fd| recv_record(fd.as_raw_fd(), buf)) {
                        Ok(Ok(0)) => {
                            // The sender has gone.
                            drop(guard);
                            incoming.swap_remove(i);
                        }
                        Ok(Ok(len)) => return Poll::Ready(Ok(len)),
                        Ok(Err(_)) => {
                            drop(guard);
                            incoming.swap_remove(i);
                        }
                        Err(_would_block) => {}
                    }
                }
            }
        }
        Poll::Pending
    }
}

fn accept(listener: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: accept4 on our listener; the result is checked.
    let fd = unsafe {
        libc::accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd, ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn peer_uid(fd: &OwnedFd) -> io::Result<libc::uid_t> {
    let creds =
        nix::sys::socket::getsockopt(&fd.as_fd(), nix::sys::socket::sockopt::PeerCredentials)
            .map_err(io::Error::from)?;
    Ok(creds.uid())
}

fn send_record(fd: RawFd, frame: &[u8]) -> io::Result<()> {
    // SAFETY: send(2) of a borrowed buffer on an fd we own.
    let sent = unsafe {
        libc::send(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn recv_record(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recv(2) into a buffer we own, of its length.
    let got = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(got as usize)
}
