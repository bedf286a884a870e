//! The relay between the workers that share one UDP socket: each worker binds a Unix
//! datagram socket in the abstract namespace, named after the shared socket and its own tag,
//! and any worker that reads a datagram owned by another sends it there.
//!
//! Abstract names need no file and vanish with the process, but any process in the network
//! namespace may send to one: every frame's sender is checked with `SO_PASSCRED` (the kernel
//! says who sent it) and refused unless it runs as this worker's user.
//!
//! A worker that serves (takes new connections) also binds a second name, its *serving*
//! mark, and drops it when it starts to drain: a draining worker stops reading the shared
//! socket only once another worker's mark says someone else reads it.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::task::{Context, Poll, ready};

use crate::cid::Tag;

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

    /// Whether a worker other than `me` has its serving mark up, from `/proc/net/unix`'s
    /// listing of abstract names (`@name`).
    pub(crate) fn someone_else_serves(&self, me: Tag) -> bool {
        let Ok(listing) = std::fs::read_to_string("/proc/net/unix") else {
            return false;
        };
        let mine = format!("@{}", self.serving(me));
        listing.lines().any(|line| {
            line.split_whitespace().last().is_some_and(|name| {
                name.starts_with('@')
                    && name[1..].starts_with(&self.prefix)
                    && name.ends_with(".serving")
                    && name != mine
            })
        })
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
    socket: tokio::net::UnixDatagram,
    /// The same socket, for sending to abstract names (tokio's API takes paths only).
    sender: UnixDatagram,
    uid: libc::uid_t,
}

/// Why a frame could not be handed to its owner.
#[derive(Debug)]
pub(crate) enum SendError {
    /// Nobody is bound at the owner's name: it has exited.
    Gone,
    /// Its queue is full, or another error: the datagram is dropped, as a network would.
    Dropped(io::Error),
}

impl Relay {
    /// Binds `me`'s relay endpoint. Needs a tokio runtime.
    pub(crate) fn bind(names: Names, me: Tag) -> io::Result<Relay> {
        let socket = UnixDatagram::bind_addr(&UnixAddr::from_abstract_name(names.relay(me))?)?;
        socket.set_nonblocking(true)?;
        nix::sys::socket::setsockopt(&socket.as_fd(), nix::sys::socket::sockopt::PassCred, &true)
            .map_err(io::Error::from)?;
        let sender = socket.try_clone()?;
        Ok(Relay {
            names,
            socket: tokio::net::UnixDatagram::from_std(socket)?,
            sender,
            // SAFETY: geteuid cannot fail.
            uid: unsafe { libc::geteuid() },
        })
    }

    /// Hands a frame to `owner`, without waiting.
    pub(crate) fn send(&self, owner: Tag, frame: &[u8]) -> Result<(), SendError> {
        let to =
            UnixAddr::from_abstract_name(self.names.relay(owner)).map_err(SendError::Dropped)?;
        match self.sender.send_to_addr(frame, &to) {
            Ok(_) => Ok(()),
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

    /// Receives the next frame from a worker of this user into `buf`; frames from any other
    /// user are dropped (and counted in `refused`).
    pub(crate) fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
        refused: &mut u64,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.socket.poll_recv_ready(cx))?;
            match self.socket.try_io(tokio::io::Interest::READABLE, || {
                recv_with_uid(&self.socket, buf)
            }) {
                Ok((len, Some(uid))) if uid == self.uid => return Poll::Ready(Ok(len)),
                Ok(_) => *refused += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// One `recvmsg`, with the sender's credentials.
fn recv_with_uid(
    socket: &tokio::net::UnixDatagram,
    buf: &mut [u8],
) -> io::Result<(usize, Option<libc::uid_t>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg};
    let mut cmsg = nix::cmsg_space!(UnixCredentials);
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let len = msg.bytes;
    let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
    let mut uid = None;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmCredentials(creds) = c {
            uid = Some(creds.uid());
        }
    }
    if truncated {
        // Larger than any QUIC datagram: not a frame of ours.
        return Ok((len, None));
    }
    Ok((len, uid))
}
