//! [`HttpServer`]: the accept loop, and each connection's keep-alive-safe drain.

use std::error::Error as StdError;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use graceful_listener::{Connection, GracefulListener, Server, ShutdownSignal};
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tracing::Instrument;

use crate::config::HttpConfig;
use crate::io::WatchedIo;
use crate::make::{ConnectionInfo, MakeService, Shared};
use crate::service::DrainService;
use crate::state::ConnState;

type BoxError = Box<dyn StdError + Send + Sync>;

/// An HTTP/1 and HTTP/2 server for a [`GracefulListener`], whose drain no keep-alive client
/// notices.
///
/// It is a [`graceful_listener::Server`]: run it with [`graceful_listener::run`], or more
/// simply with [`einhorn_hyper::run`](crate::run), which also sets its HTTP options. Once the
/// worker stops:
/// 1. every HTTP/1 response carries `Connection: close`, and its connection closes after it;
/// 2. an idle HTTP/1 connection may send one more request during the idle grace (it is
///    answered, with `Connection: close`); then, still idle, it is closed;
/// 3. an HTTP/2 connection gets a GOAWAY and finishes its streams;
/// 4. upgraded connections (WebSocket) go on until they end, or until the drain timeout, when
///    [`graceful_listener::run`] cuts them;
/// 5. every close is staged: our side shuts down its writes, then reads and discards what
///    the client still sends until the client closes (bounded by the linger), so that unread
///    bytes never turn the close into a reset that would wipe out the last response.
///
/// Handlers that must end something themselves when the worker stops, such as an endless
/// event stream, watch [`ShutdownSignal::current`] (the adapters offer it as an extractor).
///
/// # Example
/// ```no_run
/// use std::convert::Infallible;
/// use einhorn_hyper::HttpServer;
/// use http_body_util::Full;
/// use hyper::{Response, body::Bytes, service::service_fn};
///
/// # async fn example() -> Result<(), graceful_listener::RunError> {
/// let service = service_fn(|_req| async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hi")))) });
/// let report = graceful_listener::run(HttpServer::new(service), 0).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct HttpServer<M> {
    make: M,
    config: HttpConfig,
}

impl<S> HttpServer<Shared<S>> {
    /// A server giving each connection a clone of `service`, a [`hyper::service::Service`]
    /// (wrap a tower service in [`hyper_util::service::TowerToHyperService`]).
    ///
    /// # Example
    /// ```
    /// use std::convert::Infallible;
    /// use http_body_util::Empty;
    /// use hyper::{Request, Response, body::{Bytes, Incoming}, service::service_fn};
    ///
    /// let server = einhorn_hyper::HttpServer::new(service_fn(|_req: Request<Incoming>| async {
    ///     Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
    /// }));
    /// ```
    pub fn new(service: S) -> HttpServer<Shared<S>> {
        HttpServer::from_make_service(Shared::new(service))
    }
}

impl<M> HttpServer<M> {
    /// A server that makes each connection's service with `make`.
    ///
    /// # Example
    /// ```
    /// let server = einhorn_hyper::HttpServer::from_make_service(einhorn_hyper::Shared::new(()));
    /// ```
    pub fn from_make_service(make: M) -> HttpServer<M> {
        HttpServer {
            make,
            config: HttpConfig::default(),
        }
    }

    /// Replaces the HTTP options.
    ///
    /// # Example
    /// ```
    /// use std::time::Duration;
    /// use einhorn_hyper::{HttpConfig, HttpServer, Shared};
    ///
    /// let server = HttpServer::from_make_service(Shared::new(()))
    ///     .config(HttpConfig::default().idle_grace(Duration::from_secs(2)));
    /// assert_eq!(server.get_config().get_idle_grace(), Duration::from_secs(2));
    /// ```
    pub fn config(mut self, config: HttpConfig) -> HttpServer<M> {
        self.config = config;
        self
    }

    /// The HTTP options.
    ///
    /// # Example
    /// ```
    /// let server = einhorn_hyper::HttpServer::from_make_service(einhorn_hyper::Shared::new(()));
    /// assert_eq!(server.get_config().get_idle_grace(), einhorn_hyper::DEFAULT_IDLE_GRACE);
    /// ```
    pub fn get_config(&self) -> &HttpConfig {
        &self.config
    }

    /// The HTTP options, to change in place.
    ///
    /// # Example
    /// ```
    /// let mut server = einhorn_hyper::HttpServer::from_make_service(einhorn_hyper::Shared::new(()));
    /// let config = server.config_mut();
    /// *config = config.clone().http2(false);
    /// ```
    pub fn config_mut(&mut self) -> &mut HttpConfig {
        &mut self.config
    }
}

impl<M, S, B> Server for HttpServer<M>
where
    M: MakeService<Service = S>,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    async fn serve(mut self, mut listener: GracefulListener) -> std::io::Result<()> {
        let signal = listener.shutdown_signal();
        let local = listener.local_addr().clone();
        let builder = Arc::new(self.config.hyper_builder());
        let config = Arc::new(self.config);
        tracing::debug!(addr = %local, "serving HTTP");
        while let Some((conn, peer)) = listener.accept().await {
            if config.nodelay
                && let Some(tcp) = conn.as_tcp()
            {
                // Failing to set an option is no reason to refuse the connection.
                let _ = tcp.set_nodelay(true);
            }
            let make = self
                .make
                .make_service(&ConnectionInfo::new(peer, local.clone()));
            let (builder, config, signal) = (builder.clone(), config.clone(), signal.clone());
            tokio::spawn(
                async move {
                    let service = make.await;
                    serve_connection(&builder, conn, service, signal, &config).await;
                }
                .in_current_span(),
            );
        }
        Ok(())
    }
}

/// Serves one connection until it ends, draining it when the worker stops.
async fn serve_connection<S, B>(
    builder: &auto::Builder<TokioExecutor>,
    conn: Connection,
    service: S,
    signal: ShutdownSignal,
    config: &HttpConfig,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let fd = conn.as_raw_fd();
    let state = Arc::new(ConnState::new());
    let io = TokioIo::new(WatchedIo::new(conn, state.clone(), config.linger));
    let service = DrainService {
        inner: service,
        state: state.clone(),
        signal: signal.clone(),
    };
    let conn = builder.serve_connection_with_upgrades(io, service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        biased;
        result = conn.as_mut() => result,
        () = signal.stopping() => drain(conn.as_mut(), &state, fd, config).await,
    };
    if let Err(e) = result {
        // Clients resetting or timing out is ordinary; a cancelled protocol sniff is our own
        // doing (an idle connection closed during the drain).
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Drains one connection once the worker is stopping; returns when it has ended.
async fn drain<I, S, B>(
    mut conn: Pin<&mut auto::UpgradeableConnection<'_, I, DrainService<S>, TokioExecutor>>,
    state: &ConnState,
    fd: RawFd,
    config: &HttpConfig,
) -> Result<(), BoxError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let stopped_at = Instant::now();
    let mut not_before = stopped_at;
    loop {
        if state.is_h2() {
            tracing::debug!("stopping: HTTP/2 connection gets GOAWAY");
            conn.as_mut().graceful_shutdown();
            return conn.await;
        }
        // Busy connections need no timer: their response carries `Connection: close` and
        // hyper closes them after it. Idle ones get the grace, counted from when they became
        // idle or from the stop, whichever is later.
        let grace_ends = (state.idle_since().max(stopped_at) + config.idle_grace).max(not_before);
        tokio::select! {
            biased;
            // Polled first, so that hyper reads whatever has arrived before we judge idleness.
            result = conn.as_mut() => return result,
            () = state.changed() => {}
            () = tokio::time::sleep_until(grace_ends.into()), if state.is_idle() => {
                if state.is_idle() && !has_unread_bytes(fd) {
                    tracing::debug!(grace = ?config.idle_grace, "stopping: closing idle connection after its grace");
                    conn.as_mut().graceful_shutdown();
                    return conn.await;
                }
                // A request is arriving: let hyper read it, then look again.
                not_before = Instant::now() + RECHECK;
            }
        }
    }
}

/// How soon to look again at a connection whose next request was arriving as its idle grace
/// ended.
const RECHECK: std::time::Duration = std::time::Duration::from_millis(5);

/// Whether the client has sent bytes that nobody has read yet: the next request may be
/// in the socket's buffer though hyper has not seen it.
fn has_unread_bytes(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: `fd` belongs to the connection that hyper owns inside the connection future,
    // which the caller holds and has not completed: the fd is open and still this socket.
    // MSG_PEEK leaves the byte in place; MSG_DONTWAIT never blocks.
    let n = unsafe {
        libc::recv(
            fd,
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0
}
