//! Counting live connections, waiting for them to finish, and cutting them at hammer time.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
    next_id: u64,
    fds: HashMap<u64, RawFd>,
    forced: bool,
}

impl Tracker {
    pub(crate) fn new() -> Arc<Tracker> {
        Arc::new(Tracker {
            registry: Mutex::new(Registry::default()),
            live: watch::Sender::new(0),
            accepted: AtomicU64::new(0),
        })
    }

    /// Registers a connection; it stays counted until the returned guard is dropped.
    pub(crate) fn track(self: &Arc<Tracker>, fd: RawFd) -> TrackGuard {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        let mut registry = self.lock();
        let id = registry.next_id;
        registry.next_id += 1;
        if registry.forced {
            // Accepted after hammer time (a race with the stop): it gets no service either.
            shutdown_socket(fd);
        }
        registry.fds.insert(id, fd);
        self.live.send_replace(registry.fds.len());
        TrackGuard {
            tracker: self.clone(),
            id,
        }
    }

    /// Shuts down every live connection (both directions); returns how many there were.
    pub(crate) fn force_close(&self) -> usize {
        let mut registry = self.lock();
        registry.forced = true;
        // The lock is held while shutting down: a connection being dropped meanwhile waits in
        // its guard's drop, before its fd is closed, so no fd number here can have been reused.
        for &fd in registry.fds.values() {
            shutdown_socket(fd);
        }
        registry.fds.len()
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

fn shutdown_socket(fd: RawFd) {
    // SAFETY: `fd` is a connected socket owned by a live `Connection` (see force_close).
    // Errors (ENOTCONN when the peer is gone already) need no handling: the goal is met.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// Keeps a connection counted. Must be dropped before the connection's fd is closed.
#[derive(Debug)]
pub(crate) struct TrackGuard {
    tracker: Arc<Tracker>,
    id: u64,
}

impl Drop for TrackGuard {
    fn drop(&mut self) {
        let mut registry = self.tracker.lock();
        registry.fds.remove(&self.id);
        self.tracker.live.send_replace(registry.fds.len());
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
}
