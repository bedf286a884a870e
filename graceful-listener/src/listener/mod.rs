//! [`GracefulListener`]: a listener that stops cleanly and knows its live connections.

mod connection;
mod tracker;

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

pub use connection::Connection;

use crate::address::Address;
pub use tracker::ConnectionGuard;
pub(crate) use tracker::Counts;
use tracker::Tracker;

use crate::bind::{Bind, BindError};
use crate::env::Environment;
use crate::shutdown::{Phase, Shutdown, ShutdownSignal};
use crate::socket::StdListener;

/// A listening socket registered with tokio.
#[derive(Debug)]
enum RawListener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// How long accept backs off after an error that is not about one connection (out of file
/// descriptors, typically): long enough for the condition to clear, short enough to recover.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// A TCP or Unix listener that hands out tracked [`Connection`]s and stops on request.
///
/// Stopping ([`ListenerHandle::stop`]) makes [`accept`](GracefulListener::accept) return
/// `None` and closes this process's copy of the listening socket. It never calls
/// `shutdown(2)` on it: an inherited socket is shared with the master and the other workers,
/// and shutting it down would refuse connections for all of them.
///
/// # Example
/// A custom server: its accept loop ends when the worker stops.
/// ```no_run
/// use graceful_listener::{Bind, GracefulListener};
/// use tokio::io::AsyncWriteExt;
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let mut listener = GracefulListener::bind(&"127.0.0.1:0".parse::<Bind>()?).await?;
/// while let Some((mut conn, peer)) = listener.accept().await {
///     tokio::spawn(async move {
///         let _ = conn.write_all(format!("hello {peer}\n").as_bytes()).await;
///     });
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct GracefulListener {
    listener: Option<RawListener>,
    local_addr: Address,
    handle: ListenerHandle,
    signal: ShutdownSignal,
}

/// Controls a worker's listeners from outside their accept loops: stop them, count and
/// track connections, watch them drain, cut them. Cheap to clone.
///
/// Every listener a [`Worker`](crate::Worker) opens shares its worker's handle: one stop,
/// one live count, one drain. A [`GracefulListener`] made on its own has its own handle.
#[derive(Debug, Clone)]
pub struct ListenerHandle {
    tracker: Arc<Tracker>,
    shutdown: Shutdown,
}

impl GracefulListener {
    /// Opens a bind spec: takes an inherited socket (validated) or binds a new one.
    ///
    /// # Errors
    /// A [`BindError`] naming the spec, and for inherited sockets the variable and value at
    /// fault.
    pub async fn bind(bind: &Bind) -> Result<GracefulListener, BindError> {
        GracefulListener::bind_in(bind, &Environment::from_process()).await
    }

    pub(crate) async fn bind_in(
        bind: &Bind,
        env: &Environment,
    ) -> Result<GracefulListener, BindError> {
        let opened = crate::open::open(bind, env)?;
        GracefulListener::from_std_with(opened.listener, ListenerHandle::new()).map_err(|source| {
            BindError::Io {
                bind: opened.bind,
                source,
            }
        })
    }

    /// Wraps a listening socket taken or bound without a runtime (see [`StdListener`]).
    ///
    /// # Errors
    /// When the socket cannot be registered with tokio.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    #[track_caller]
    pub fn from_std(listener: StdListener) -> std::io::Result<GracefulListener> {
        GracefulListener::from_std_with(listener, ListenerHandle::new())
    }

    #[track_caller]
    pub(crate) fn from_std_with(
        listener: StdListener,
        handle: ListenerHandle,
    ) -> std::io::Result<GracefulListener> {
        // Every StdListener is non-blocking already, as tokio requires.
        let raw = match listener {
            StdListener::Tcp(l) => RawListener::Tcp(tokio::net::TcpListener::from_std(l)?),
            StdListener::Unix(l) => RawListener::Unix(tokio::net::UnixListener::from_std(l)?),
        };
        Ok(GracefulListener::from_raw(raw, handle))
    }

    /// Wraps a bound tokio TCP listener.
    pub fn from_tcp(listener: tokio::net::TcpListener) -> GracefulListener {
        GracefulListener::from_raw(RawListener::Tcp(listener), ListenerHandle::new())
    }

    /// Wraps a bound tokio Unix listener.
    pub fn from_unix(listener: tokio::net::UnixListener) -> GracefulListener {
        GracefulListener::from_raw(RawListener::Unix(listener), ListenerHandle::new())
    }

    fn from_raw(listener: RawListener, handle: ListenerHandle) -> GracefulListener {
        let local_addr = match &listener {
            RawListener::Tcp(l) => l.local_addr().map(Address::Tcp),
            RawListener::Unix(l) => l.local_addr().map(|a| Address::from_unix(&a)),
        }
        // A bound listener always knows its address; fall back rather than fail for a log field.
        .unwrap_or(Address::Unix(None));
        GracefulListener {
            listener: Some(listener),
            local_addr,
            signal: handle.shutdown.signal(),
            handle,
        }
    }

    /// The address this listener accepts on.
    pub fn local_addr(&self) -> &Address {
        &self.local_addr
    }

    /// A handle to stop this listener and watch its connections.
    pub fn handle(&self) -> ListenerHandle {
        self.handle.clone()
    }

    /// A watcher of the stop: servers use it to switch to draining (for HTTP: answer with
    /// `Connection: close`, close idle connections after a grace).
    pub fn shutdown_signal(&self) -> ShutdownSignal {
        self.signal.clone()
    }

    /// Waits for the next connection; `None` once the listener has been stopped.
    ///
    /// Errors about a single connection (reset or aborted before it was accepted) are
    /// skipped. Other errors (such as running out of file descriptors) are logged and
    /// retried after a pause, since returning them would end the server for good over a
    /// condition that usually clears.
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped, no connection is lost (it stays queued).
    pub async fn accept(&mut self) -> Option<(Connection, Address)> {
        loop {
            // Asked to move some clients to a canary: the ones ended reconnect while this
            // worker does not accept (see `crate::shed`).
            if let Some(left) = crate::shed::accept_paused_for() {
                tokio::select! {
                    () = self.signal.stopping() => {}
                    () = tokio::time::sleep(left) => {}
                }
            }
            // A sibling under the same master holds clearly fewer connections: let it take
            // the next one (see `crate::balance`; bounded, and never the least loaded).
            let balancing = crate::balance::take_part();
            if balancing {
                let until = tokio::time::Instant::now() + crate::balance::MAX_WAIT;
                while crate::balance::publish_and_should_wait(self.handle.live())
                    && tokio::time::Instant::now() < until
                {
                    tokio::select! {
                        () = self.signal.stopping() => break,
                        () = tokio::time::sleep(crate::balance::RECHECK) => {}
                    }
                }
            }
            let listener = self.listener.as_ref()?;
            let signal = &self.signal;
            let handle = &self.handle;
            // A sibling holds back for this worker: take what is queued now, without waiting
            // for a wake-up the kernel will not send (see `crate::balance`).
            let direct = (crate::balance::help_wanted() && !signal.is_stopping())
                .then(|| accept_now(listener))
                .flatten();
            let accepted = if let Some(direct) = direct {
                Some(Some(direct))
            } else {
                let mut stopping = std::pin::pin!(signal.stopping());
                let mut pause = std::pin::pin!(crate::shed::pause_begins());
                // While waiting, the load table hears from this worker every REFRESH: an
                // entry that goes quiet means a worker that does not accept.
                let mut refresh =
                    std::pin::pin!(balancing.then(|| tokio::time::sleep(crate::balance::REFRESH)));
                std::future::poll_fn(|cx| {
                    if let Some(mut refresh) = refresh.as_mut().as_pin_mut() {
                        while refresh.as_mut().poll(cx).is_ready() {
                            crate::balance::publish(handle.live());
                            refresh
                                .as_mut()
                                .reset(tokio::time::Instant::now() + crate::balance::REFRESH);
                            // A sibling holds back for us, with connections queued that the
                            // kernel will not wake us for again: take one.
                            if crate::balance::help_wanted()
                                && !signal.is_stopping()
                                && let Some(accepted) = accept_now(listener)
                            {
                                return Poll::Ready(Some(Some(accepted)));
                            }
                        }
                    }
                    // The phase is read on every poll, before the accept: the channel behind
                    // `stopping` wakes its waiters in groups, so a handler woken by the stop may
                    // already have told its client to reconnect while this future still waits
                    // for its turn; that reconnection must stay in the queue for the new workers.
                    if signal.is_stopping() || stopping.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(None);
                    }
                    if pause.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(None));
                    }
                    poll_accept_raw(listener, cx).map(|a| Some(Some(a)))
                })
                .await
            };
            let Some(accepted) = accepted else {
                self.close();
                return None;
            };
            // A pause began while waiting: look again.
            let Some(accepted) = accepted else {
                continue;
            };
            match accepted {
                Ok((conn, peer)) => return Some((self.track(conn), peer)),
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::error!(error = %e, addr = %self.local_addr, "accept failed; retrying in 1s");
                    tokio::select! {
                        () = self.signal.stopping() => {}
                        () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                    }
                }
            }
        }
    }

    fn track(&self, conn: Accepted) -> Connection {
        match conn {
            Accepted::Tcp(s) => Connection::tcp(self.handle.tracker.track(s.as_raw_fd()), s),
            Accepted::Unix(s) => Connection::unix(self.handle.tracker.track(s.as_raw_fd()), s),
        }
    }

    fn close(&mut self) {
        if self.listener.take().is_some() {
            crate::balance::withdraw();
            tracing::debug!(addr = %self.local_addr, "listener closed");
        }
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

fn poll_accept_raw(
    listener: &RawListener,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<(Accepted, Address)>> {
    match listener {
        RawListener::Tcp(l) => l
            .poll_accept(cx)
            .map_ok(|(s, a)| (Accepted::Tcp(s), Address::Tcp(a))),
        RawListener::Unix(l) => l
            .poll_accept(cx)
            .map_ok(|(s, a)| (Accepted::Unix(s), Address::from_unix(&a))),
    }
}

/// One accept, tried now whatever the runtime last heard from the socket (it will not hear
/// again until the next connection arrives); `None` when none is queued.
fn accept_now(listener: &RawListener) -> Option<std::io::Result<(Accepted, Address)>> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let fd = match listener {
        RawListener::Tcp(l) => l.as_raw_fd(),
        RawListener::Unix(l) => l.as_raw_fd(),
    };
    let flags =
        nix::sys::socket::SockFlag::SOCK_CLOEXEC | nix::sys::socket::SockFlag::SOCK_NONBLOCK;
    let accepted = match nix::sys::socket::accept4(fd, flags) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::EAGAIN) => return None,
        Err(e) => return Some(Err(e.into())),
    };
    // SAFETY: accept4 returned a new socket that nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(accepted) };
    let stream = || -> std::io::Result<(Accepted, Address)> {
        Ok(match listener {
            RawListener::Tcp(_) => {
                let std = std::net::TcpStream::from(owned);
                let peer = std.peer_addr()?;
                (
                    Accepted::Tcp(tokio::net::TcpStream::from_std(std)?),
                    Address::Tcp(peer),
                )
            }
            RawListener::Unix(_) => {
                let std = std::os::unix::net::UnixStream::from(owned);
                let stream = tokio::net::UnixStream::from_std(std)?;
                let peer = stream.peer_addr()?;
                (Accepted::Unix(stream), Address::from_unix(&peer))
            }
        })
    };
    Some(stream())
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

impl ListenerHandle {
    pub(crate) fn new() -> ListenerHandle {
        ListenerHandle {
            tracker: Tracker::new(),
            shutdown: Shutdown::new(),
        }
    }

    /// Counts a connection accepted by a host that accepts on its own (actix-web's accept
    /// thread, a blocking accept loop): it stays live, drained for, and cut at hammer time,
    /// until the returned guard is dropped. Connections from a [`GracefulListener`] are
    /// counted already.
    ///
    /// Hammer time shuts the socket down (`shutdown(2)`) wherever its task is; it first
    /// checks that `fd` is still the same socket, so a guard that outlives its connection
    /// never cuts another file that reused the number.
    ///
    /// # Example
    /// ```
    /// use std::os::fd::AsFd;
    ///
    /// # fn serve(_: std::net::TcpStream) {}
    /// fn on_accept(handle: &graceful_listener::ListenerHandle, stream: std::net::TcpStream) {
    ///     let guard = handle.track(stream.as_fd());
    ///     std::thread::spawn(move || {
    ///         let _guard = guard; // counted until this thread is done with the stream
    ///         serve(stream);
    ///     });
    /// }
    /// ```
    pub fn track(&self, fd: BorrowedFd<'_>) -> ConnectionGuard {
        self.tracker.track_external(fd.as_raw_fd())
    }

    /// Counts a connection that has no socket of its own (a QUIC connection, multiplexed on
    /// a shared UDP socket) until the guard is dropped: the live count and the drain see it.
    /// Hammer time cannot cut it: the host closes it itself on
    /// [`ShutdownSignal::hammer`](crate::ShutdownSignal::hammer).
    ///
    /// # Example
    /// ```
    /// fn on_handshake(handle: &graceful_listener::ListenerHandle) {
    ///     let guard = handle.track_without_socket();
    ///     assert_eq!(handle.live(), 1);
    ///     drop(guard);
    ///     assert_eq!(handle.live(), 0);
    /// }
    /// ```
    pub fn track_without_socket(&self) -> ConnectionGuard {
        self.tracker.track(-1)
    }

    /// Enters the lame duck: still accepting and serving, but not ready. Returns whether this
    /// call did it (not if already there or past it).
    pub(crate) fn lame_duck(&self) -> bool {
        self.shutdown.advance(Phase::LameDuck)
    }

    /// Stops accepting: every listener's `accept` returns `None` and its socket is closed.
    /// Connections already accepted carry on. Returns whether this call did the stopping.
    pub fn stop(&self) -> bool {
        self.shutdown.advance(Phase::Stopping)
    }

    /// Hammer time: stops accepting and shuts down every live connection, so that each
    /// one's next read sees end of file and its next write fails. Returns how many
    /// connections were live.
    pub fn force_close(&self) -> usize {
        self.shutdown.advance(Phase::Hammer);
        self.tracker.force_close()
    }

    /// The live, accepted and forced counts at one instant.
    pub(crate) fn counts(&self) -> Counts {
        self.tracker.counts()
    }

    /// How many accepted connections are still open.
    pub fn live(&self) -> usize {
        self.tracker.live()
    }

    /// How many connections have been accepted in all.
    pub fn accepted(&self) -> u64 {
        self.tracker.accepted()
    }

    /// Resolves when no accepted connection is open (at once if none is).
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn drained(&self) {
        self.tracker.drained().await
    }

    /// A watcher of the stop, the same one [`GracefulListener::shutdown_signal`] gives.
    pub fn shutdown_signal(&self) -> ShutdownSignal {
        self.shutdown.signal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn accepts_tracks_and_stops() {
        let mut listener = GracefulListener::bind(&"127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr().as_tcp().unwrap();
        let handle = listener.handle();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut conn, peer) = listener.accept().await.unwrap();
        assert_eq!(peer, Address::Tcp(client.local_addr().unwrap()));
        assert_eq!((handle.live(), handle.accepted()), (1, 1));

        assert!(handle.stop());
        assert!(
            listener.accept().await.is_none(),
            "accept ends once stopped"
        );
        // Our socket is closed: new connections are refused (we are its only holder here).
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
        // The accepted connection still works.
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        drop(conn);
        tokio::time::timeout(Duration::from_secs(5), handle.drained())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn force_close_ends_a_pending_read() {
        let mut listener = GracefulListener::bind(&"127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr().as_tcp().unwrap();
        let handle = listener.handle();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut conn, _) = listener.accept().await.unwrap();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1];
            let n = conn.read(&mut buf).await;
            drop(conn);
            n
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(handle.force_close(), 1);
        let n = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n.unwrap(), 0, "a pending read sees end of file");
        tokio::time::timeout(Duration::from_secs(5), handle.drained())
            .await
            .unwrap();
        assert!(handle.shutdown_signal().phase() == Phase::Hammer);
    }

    #[tokio::test]
    async fn unix_listeners_work_the_same() {
        let dir = std::env::temp_dir().join(format!("gl-listener-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("l.sock");
        let _ = std::fs::remove_file(&path);
        let mut listener = GracefulListener::bind(&Bind::unix(path.clone()))
            .await
            .unwrap();
        assert_eq!(listener.local_addr(), &Address::Unix(Some(path.clone())));
        let _client = tokio::net::UnixStream::connect(&path).await.unwrap();
        let (conn, peer) = listener.accept().await.unwrap();
        assert_eq!(peer, Address::Unix(None));
        assert!(conn.as_unix().is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
