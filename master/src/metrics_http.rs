//! The `/metrics` HTTP endpoint: Prometheus' scrapes of the master's metrics, served so that
//! no client can hurt the master.
//!
//! The endpoint listens on the same host as everything else, and anyone who can connect to it
//! must not be able to take the master's fds, memory or CPU, nor its signals:
//! - at most [`MAX_CONNECTIONS`] connections at once. At the limit the server stops
//!   accepting until one ends: further clients wait in the kernel's backlog, which costs the
//!   process no fd;
//! - a request head must arrive in full within [`HEAD_TIMEOUT`] of the accept and be at
//!   most [`MAX_HEAD`] bytes, else the connection is closed (hyper answers an oversized head
//!   with `431`);
//! - one request per connection (`Connection: close`), its whole response written within
//!   [`RESPONSE_TIMEOUT`];
//! - a failed accept (out of fds: `EMFILE`, `ENFILE`) pauses accepting for
//!   [`ACCEPT_BACKOFF`] instead of spinning, and is logged once per 10 s with the count of
//!   the failures not logged;
//! - the server runs on its own thread, `metrics-http`, with its own single-threaded tokio
//!   runtime, and that thread has the master's signals
//!   ([`MASTER_SIGNALS`](crate::reexec::MASTER_SIGNALS)) blocked from its first instruction:
//!   a signal sent to the process is never delivered to it, so the master's handlers always
//!   see it.
//!
//! Only `GET /metrics` (with or without a query) answers, `200` with the Prometheus text
//! format; any other path is `404`, any other method `405`.
//!
//! The server starts from an already-bound [`std::net::TcpListener`] ([`bind`] makes one),
//! so that a master can as well adopt a listening socket handed over by the master it
//! replaced. [`MetricsServer::fd`] is that socket: it stays open and listening for the life
//! of the process.
//!
//! The names, the tally and the recorder's installation are [`metrics`](crate::metrics)'.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONNECTION, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

use crate::conn::{Throttle, more};

/// Connections served at once; at the limit, accepting waits until one ends.
pub const MAX_CONNECTIONS: usize = 64;
/// The time from the accept within which the request head (its line and headers) must have
/// arrived in full.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head, in bytes (also the most a connection buffers). Hyper's
/// smallest read buffer, so the least it accepts.
pub const MAX_HEAD: usize = 8 * 1024;
/// The time from the end of the request head within which the response must be written.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause after a failed accept, before the next try.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How often the recorder's upkeep runs (as the exporter's own listener did): it drains the
/// histograms' pending samples, which otherwise grow between scrapes.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// The name of the server's thread.
pub const THREAD_NAME: &str = "metrics-http";
/// The backlog [`bind`] asks for (the kernel caps it at `net.core.somaxconn`): connections
/// waiting there while the server is at its limit cost the process nothing.
const BACKLOG: i32 = 1024;
/// Repeated accept failures are logged once per window.
const LOG_WINDOW: Duration = Duration::from_secs(10);
/// The content type of Prometheus' text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4";

/// The server's limits. [`Default`] is the documented constants; tests shorten the times.
///
/// ```
/// use einhorn_master::metrics_http::{Limits, HEAD_TIMEOUT};
/// let limits = Limits::default();
/// assert_eq!(limits.head_timeout, HEAD_TIMEOUT);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once ([`MAX_CONNECTIONS`]).
    pub max_connections: usize,
    /// The time from the accept within which the request head must arrive ([`HEAD_TIMEOUT`]).
    pub head_timeout: Duration,
    /// The time within which the response must be written ([`RESPONSE_TIMEOUT`]).
    pub response_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            head_timeout: HEAD_TIMEOUT,
            response_timeout: RESPONSE_TIMEOUT,
        }
    }
}

/// Why the metrics endpoint could not be served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address could not be bound (in use, not local, not permitted).
    #[error("cannot bind the metrics endpoint to {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The listener handed to [`MetricsServer::start`] is not a usable TCP socket.
    #[error("the metrics endpoint's listener (fd {fd}) is unusable: {source}")]
    Listener {
        /// Its fd.
        fd: RawFd,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The server's runtime or thread could not be created.
    #[error("cannot start the metrics endpoint on {addr}: {source}")]
    Start {
        /// The address it listens on.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The Prometheus recorder could not be installed (one is installed already).
    #[error("cannot install the Prometheus recorder for the metrics endpoint on {addr}: {source}")]
    Install {
        /// The address the endpoint would have listened on.
        addr: SocketAddr,
        /// The exporter's error.
        #[source]
        source: metrics_exporter_prometheus::BuildError,
    },
}

/// Binds a listening socket for [`MetricsServer::start`]: `SO_REUSEADDR` (a restarted master
/// rebinds at once over the previous one's `TIME_WAIT` connections), nonblocking,
/// close-on-exec.
///
/// ```
/// let listener = einhorn_master::metrics_http::bind("127.0.0.1:0".parse().unwrap()).unwrap();
/// assert_ne!(listener.local_addr().unwrap().port(), 0);
/// ```
///
/// # Errors
/// [`MetricsError::Bind`], naming `addr`.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, MetricsError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let failed = |source| MetricsError::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(failed)?;
    socket.set_reuse_address(true).map_err(failed)?;
    socket.bind(&addr.into()).map_err(failed)?;
    socket.listen(BACKLOG).map_err(failed)?;
    socket.set_nonblocking(true).map_err(failed)?;
    Ok(socket.into())
}

/// The running `/metrics` server. See the [module documentation](self).
///
/// Dropping it leaves the server running: it serves, and its socket stays open, for the life
/// of the process (unpaused: a paused server whose handle is dropped stays paused).
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    fd: RawFd,
    /// A permit per connection slot: all free means no connection in progress.
    slots: Arc<Semaphore>,
    max_connections: usize,
    /// `true` while paused for a hand-over.
    paused: watch::Sender<bool>,
}

impl MetricsServer {
    /// Serves `handle`'s metrics on `listener` within `limits`, on a new thread
    /// ([`THREAD_NAME`]) with the master's signals blocked. The listener is made nonblocking
    /// (an adopted one may not be).
    ///
    /// ```
    /// use einhorn_master::metrics_http::{bind, Limits, MetricsServer};
    /// use metrics_exporter_prometheus::PrometheusBuilder;
    ///
    /// // A recorder of its own: `metrics::serve` installs the process's.
    /// let handle = PrometheusBuilder::new().build_recorder().handle();
    /// let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    /// let server = MetricsServer::start(listener, handle, Limits::default()).unwrap();
    /// println!("scrape http://{}/metrics", server.addr());
    /// ```
    ///
    /// # Errors
    /// [`MetricsError::Listener`] when the listener's address cannot be read or it cannot be
    /// made nonblocking; [`MetricsError::Start`] when the runtime or the thread cannot be
    /// created.
    pub fn start(
        listener: std::net::TcpListener,
        handle: PrometheusHandle,
        limits: Limits,
    ) -> Result<MetricsServer, MetricsError> {
        let fd = listener.as_raw_fd();
        let unusable = |source| MetricsError::Listener { fd, source };
        let addr = listener.local_addr().map_err(unusable)?;
        listener.set_nonblocking(true).map_err(unusable)?;
        let failed = |source| MetricsError::Start { addr, source };
        // Built here, not on the thread, so that every failure is the caller's to handle.
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let (paused, paused_rx) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(failed)?;
        let listener = {
            let _in = runtime.enter();
            tokio::net::TcpListener::from_std(listener).map_err(unusable)?
        };
        // Born with the master's signals blocked (see `reexec::with_master_signals_blocked`).
        crate::reexec::with_master_signals_blocked(|| {
            std::thread::Builder::new()
                .name(THREAD_NAME.to_owned())
                .spawn({
                    let slots = slots.clone();
                    move || runtime.block_on(run(listener, handle, limits, slots, paused_rx))
                })
        })
        .and_then(|spawned| spawned)
        .map_err(failed)?;
        tracing::info!(%addr, "serving metrics at /metrics");
        Ok(MetricsServer {
            addr,
            fd,
            slots,
            max_connections: limits.max_connections,
            paused,
        })
    }

    /// Stops accepting (new connections wait in the listening socket's backlog, for the
    /// master that comes next, or for this one again after [`resume`](Self::resume)), and
    /// waits up to `within` for the connections in progress to end: a re-exec would cut
    /// them. Returns how many were still open at the end (a client that sends its request
    /// slowly, or not at all, is not waited for longer).
    pub async fn pause(&self, within: Duration) -> usize {
        self.paused.send_replace(true);
        let all = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        match tokio::time::timeout(within, self.slots.acquire_many(all)).await {
            Ok(Ok(_every_slot)) => 0,
            _ => self.max_connections - self.slots.available_permits(),
        }
    }

    /// Accepts again after [`pause`](Self::pause) (the re-exec did not happen).
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening socket, open for the life of the process (for a re-exec to hand over).
    pub fn fd(&self) -> RawFd {
        self.fd
    }
}

/// The accept loop: never returns, so the listener stays open for the life of the process.
async fn run(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    limits: Limits,
    slots: Arc<Semaphore>,
    mut paused: watch::Receiver<bool>,
) {
    tokio::spawn(upkeep(handle.clone()));
    let http = {
        let mut http = http1::Builder::new();
        http.keep_alive(false)
            .max_buf_size(MAX_HEAD)
            .max_header_size(MAX_HEAD)
            .timer(TokioTimer::new())
            .header_read_timeout(limits.head_timeout);
        http
    };
    let accept_failed = Throttle::new(LOG_WINDOW);
    'accepting: loop {
        until(&mut paused, false).await;
        // A slot first, then the accept: at the limit, connections wait in the backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the connection slots are never closed"),
            () = until(&mut paused, true) => continue 'accepting,
        };
        let stream = loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = until(&mut paused, true) => continue 'accepting,
            };
            match accepted {
                Ok((stream, _)) => break stream,
                Err(error) => {
                    if let Some(skipped) = accept_failed.hit(Instant::now()) {
                        tracing::warn!("metrics endpoint: accept failed: {error}{}", more(skipped));
                    }
                    // Out of fds, the listener stays readable: retrying at once would spin.
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        };
        tokio::spawn(serve(stream, http.clone(), handle.clone(), limits, slot));
    }
}

/// Returns once `paused` is `value`; never if it cannot be any more (the server's handle is
/// gone, and with it any pause or resume).
async fn until(paused: &mut watch::Receiver<bool>, value: bool) {
    if paused.wait_for(|p| *p == value).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Runs the recorder's upkeep forever.
async fn upkeep(handle: PrometheusHandle) {
    let mut ticks = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        ticks.tick().await;
        handle.run_upkeep();
    }
}

/// Serves one connection; its slot is freed when it ends.
async fn serve(
    stream: tokio::net::TcpStream,
    http: http1::Builder,
    handle: PrometheusHandle,
    limits: Limits,
    _slot: OwnedSemaphorePermit,
) {
    // The head's time is hyper's `header_read_timeout`, started as the connection is first
    // polled (now, right after the accept). The response's time starts when the head has
    // been read: the service tells.
    let head_read = Arc::new(Notify::new());
    let service = {
        let head_read = head_read.clone();
        service_fn(move |request: Request<Incoming>| {
            head_read.notify_one();
            let response = respond(&request, &handle);
            async move { Ok::<_, Infallible>(response) }
        })
    };
    let connection = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        ended = &mut connection => {
            // Timed out, too large, malformed or closed by the client: nothing to tell
            // anyone (a warning per connection would hand the log to any client).
            if let Err(error) = ended {
                tracing::debug!("metrics endpoint: connection ended: {error}");
            }
            return;
        }
        () = head_read.notified() => {}
    }
    match tokio::time::timeout(limits.response_timeout, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!("metrics endpoint: connection ended: {error}"),
        Err(_) => tracing::debug!(
            "metrics endpoint: response not written within {:?}; connection closed",
            limits.response_timeout
        ),
    }
}

/// The response to a request: the metrics, `404` or `405`.
fn respond(request: &Request<Incoming>, handle: &PrometheusHandle) -> Response<Full<Bytes>> {
    let (status, body) = if request.uri().path() != "/metrics" {
        (
            StatusCode::NOT_FOUND,
            "not found: only /metrics is served\n".into(),
        )
    } else if request.method() != Method::GET {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: GET only\n".into(),
        )
    } else {
        (StatusCode::OK, handle.render())
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    match status {
        StatusCode::OK => headers.insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT)),
        StatusCode::METHOD_NOT_ALLOWED => headers.insert(ALLOW, HeaderValue::from_static("GET")),
        _ => None,
    };
    response
}
