//! Counting live connections, waiting for them to finish, and cutting them at hammer time.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use slab::Slab;
use tokio::sync::watch;

/// The connections a listener handed out that are still alive.
///
/// The registry keeps each connection's fd so that hammer time can `shutdown(2)` it: that
/// wakes and fails the connection's pending and next reads and writes wherever its task is,
/// without our having to reach the task. Only connected sockets are shut down this way,
/// never the (shared) listening socket.
#[derive(Debug)]
pub(crate) struct Tracker {
    registry: Mutex<Registry>,
    live: watch::Sender<usize>,
    accepted: AtomicU64,
}

#[derive(Debug, Default)]
struct Registry {
    /// A slab rather than a map: a slot per connection and no spare buckets to pay for.
    fds: Slab<Tracked>,
    forced: bool,
    /// Connections shut down at hammer time, and any accepted after it.
    forced_count: u64,
}

/// The counts at one instant, consistent with each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) live: usize,
    pub(crate) accepted: u64,
    pub(crate) forced: u64,
}

/// A live connection's socket, as hammer time needs it.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    fd: RawFd,
    /// For a connection whose fd a host closes on its own schedule (not through a
    /// [`Connection`](super::Connection), which drops its guard first): the socket's inode,
    /// checked before shutting the fd down, in case the number now names another file.
    inode: Option<u64>,
}

impl Tracker {
    pub(crate) fn new() -> Arc<Tracker> {
        Arc::new(Tracker {
            registry: Mutex::new(Registry::default()),
            live: watch::Sender::new(0),
            accepted: AtomicU64::new(0),
        })
    }

    /// Registers a connection whose guard is dropped before its fd is closed (a
    /// [`Connection`](super::Connection)); it stays counted until the guard is dropped.
    pub(crate) fn track(self: &Arc<Tracker>, fd: RawFd) -> ConnectionGuard {
        self.register(Tracked { fd, inode: None })
    }

    /// Registers a connection a host closes itself, in any order with the guard: hammer
    /// time checks the socket's identity before shutting it down.
    pub(crate) fn track_external(self: &Arc<Tracker>, fd: RawFd) -> ConnectionGuard {
        self.register(Tracked {
            fd,
            inode: inode(fd),
        })
    }

    fn register(self: &Arc<Tracker>, tracked: Tracked) -> ConnectionGuard {
        let mut registry = self.lock();
        // Counted under the lock, so that `counts` sees it together with the live count.
        self.accepted.fetch_add(1, Ordering::Relaxed);
        if registry.forced {
            // Accepted after hammer time (a race with the stop): it gets no service either.
            shutdown_tracked(tracked);
            registry.forced_count += 1;
        }
        let key = registry.fds.insert(tracked);
        self.live.send_replace(registry.fds.len());
        crate::telemetry::connection_opened(registry.fds.len());
        crate::balance::publish(registry.fds.len());
        ConnectionGuard {
            tracker: self.clone(),
            key,
        }
    }

    /// Shuts down every live connection (both directions); returns how many there were.
    pub(crate) fn force_close(&self) -> usize {
        let mut registry = self.lock();
        registry.forced = true;
        // The lock is held while shutting down: a connection being dropped meanwhile waits in
        // its guard's drop, before its fd is closed, so no fd number here can have been reused.
        for (_, &tracked) in &registry.fds {
            shutdown_tracked(tracked);
        }
        let live = registry.fds.len();
        registry.forced_count += live as u64;
        live
    }

    /// The live, accepted and forced counts, taken together.
    pub(crate) fn counts(&self) -> Counts {
        let registry = self.lock();
        Counts {
            live: registry.fds.len(),
            accepted: self.accepted.load(Ordering::Relaxed),
            forced: registry.forced_count,
        }
    }

    pub(crate) fn live(&self) -> usize {
        *self.live.borrow()
    }

    pub(crate) fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub(crate) async fn drained(&self) {
        let mut rx = self.live.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|live| *live == 0).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn shutdown_tracked(tracked: Tracked) {
    if tracked.fd < 0 {
        // No socket of its own (a QUIC connection): its host closes it.
        return;
    }
    if tracked.inode.is_some() && inode(tracked.fd) != tracked.inode {
        // The host closed this connection and the number was reused: not ours to cut.
        return;
    }
    // SAFETY: `fd` is a connected socket still open (see force_close and the inode check).
    // Errors (ENOTCONN when the peer is gone already) need no handling: the goal is met.
    unsafe {
        libc::shutdown(tracked.fd, libc::SHUT_RDWR);
    }
}

/// The inode of the file at `fd` (sockets have unique ones while open); `None` if closed.
fn inode(fd: RawFd) -> Option<u64> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills the struct it is given; it is read only on success.
    if unsafe { libc::fstat(fd, stat.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: initialised by the successful fstat above.
    Some(unsafe { stat.assume_init() }.st_ino)
}

/// Keeps a connection counted by its worker until dropped: the live count, the drain, and
/// hammer time (which shuts the connection's socket down) all see it.
///
/// Made by [`ListenerHandle::track`](super::ListenerHandle::track) for a connection accepted
/// by a host that accepts on its own (actix-web, a thread); every
/// [`Connection`](super::Connection) a [`GracefulListener`](super::GracefulListener) hands
/// out holds one already. Keep it exactly as long as the connection is open.
#[derive(Debug)]
#[must_use = "the connection is counted only while its guard lives"]
pub struct ConnectionGuard {
    tracker: Arc<Tracker>,
    key: usize,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut registry = self.tracker.lock();
        registry.fds.remove(self.key);
        self.tracker.live.send_replace(registry.fds.len());
        crate::telemetry::connection_closed(registry.fds.len());
        crate::balance::publish(registry.fds.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    #[tokio::test]
    async fn counts_and_drains() {
        let tracker = Tracker::new();
        let a = tracker.track(-1);
        let b = tracker.track(-1);
        assert_eq!((tracker.live(), tracker.accepted()), (2, 2));
        drop(a);
        assert_eq!(tracker.live(), 1);
        let drained = tokio::spawn({
            let tracker = tracker.clone();
            async move { tracker.drained().await }
        });
        tokio::task::yield_now().await;
        assert!(!drained.is_finished());
        drop(b);
        drained.await.unwrap();
        assert_eq!((tracker.live(), tracker.accepted()), (0, 2));
    }

    #[test]
    fn a_freed_slot_reused_by_the_next_connection_keeps_each_guard_to_its_own() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..3 {
            clients.push(std::net::TcpStream::connect(addr).unwrap());
            servers.push(listener.accept().unwrap().0);
        }
        let tracker = Tracker::new();
        let first = tracker.track(servers[0].as_raw_fd());
        let second = tracker.track(servers[1].as_raw_fd());
        drop(first);
        // Takes the slot the first one left.
        let third = tracker.track(servers[2].as_raw_fd());
        drop(third);
        assert_eq!((tracker.live(), tracker.accepted()), (1, 3));
        // Only the second is still registered: hammer time cuts it and nothing else.
        assert_eq!(tracker.force_close(), 1);
        let mut buf = [0u8; 1];
        assert_eq!(clients[1].read(&mut buf).unwrap(), 0, "the second is cut");
        for i in [0, 2] {
            clients[i].write_all(b"x").unwrap();
            servers[i].read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"x", "connection {i} left alone");
        }
        drop(second);
        assert_eq!(tracker.live(), 0);
    }

    #[test]
    fn force_close_fails_the_next_read_and_write() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let tracker = Tracker::new();
        let _guard = tracker.track(server.as_raw_fd());
        assert_eq!(tracker.force_close(), 1);
        let mut buf = [0u8; 8];
        assert_eq!(
            server.read(&mut buf).unwrap(),
            0,
            "read after force close sees EOF"
        );
        assert!(
            server.write_all(b"late").is_err(),
            "write after force close fails"
        );
        assert_eq!(
            client.read(&mut buf).unwrap(),
            0,
            "the client sees the close"
        );
        // A connection accepted after hammer time is cut at once.
        let _late_client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut late, _) = listener.accept().unwrap();
        let _late_guard = tracker.track(late.as_raw_fd());
        assert_eq!(late.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn an_external_guard_never_cuts_a_reused_fd_number() {
        /// A number no other test uses, so that reusing it here is safe.
        const FD: RawFd = 850;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        // SAFETY: dup2 onto a number only this test uses.
        assert_eq!(unsafe { libc::dup2(server.as_raw_fd(), FD) }, FD);
        drop(server);
        let tracker = Tracker::new();
        let guard = tracker.track_external(FD);
        // The host closes the connection but keeps the guard (an order `Connection` rules
        // out), and the number is reused by another connection.
        // SAFETY: closing the dup this test made.
        unsafe { libc::close(FD) };
        let mut other_client = std::net::TcpStream::connect(addr).unwrap();
        let (other, _) = listener.accept().unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { libc::dup2(other.as_raw_fd(), FD) }, FD);
        drop(other);
        assert_eq!(tracker.force_close(), 1);
        // The unrelated connection at that number was not cut.
        // SAFETY: FD is open (the dup above) and owned by this test from here on.
        let mut reused =
            unsafe { <std::net::TcpStream as std::os::fd::FromRawFd>::from_raw_fd(FD) };
        other_client.write_all(b"ok").unwrap();
        let mut buf = [0u8; 2];
        reused.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ok");
        drop(guard);
        assert_eq!(tracker.live(), 0);
    }
}
