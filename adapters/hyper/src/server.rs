//! [`HttpServer`]: the accept loop, and each connection's keep-alive-safe drain.

use std::error::Error as StdError;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::task::{Poll, Waker};

use graceful_listener::{GracefulListener, Server};
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

use crate::config::HttpConfig;
use crate::io::{Stream, WatchedIo};
use crate::make::{ConnectionInfo, MakeService, Shared};
use crate::service::DrainService;
use crate::state::{Command, ConnState};
use crate::supervisor::Supervisor;

type BoxError = Box<dyn StdError + Send + Sync>;

/// An HTTP/1 and HTTP/2 server for a [`GracefulListener`], whose drain no keep-alive client
/// notices.
///
/// It is a [`graceful_listener::Server`]: run it with [`graceful_listener::run`], or more
/// simply with [`einhorn_hyper::run`](crate::run), which also sets its HTTP options. Once the
/// worker stops:
/// 1. every HTTP/1 response carries `Connection: close`, and its connection closes after it;
/// 2. an idle HTTP/1 connection is left to its peer, which may send on it at any instant (a
///    load balancer's pool does): its next request is answered, with `Connection: close`; it
///    is closed by us only at the idle timeout ([`HttpConfig::header_read_timeout`]), as while
///    serving, or at the drain timeout. After a [lame duck](graceful_listener::WorkerOptions::lame_duck),
///    one not used in the second half of the lame duck gets the idle grace, then is closed;
/// 3. a connection in the middle of a request head or a TLS handshake when the idle grace
///    ends (a client trickling bytes to hold the worker) gets `408 Request Timeout` and is
///    closed;
/// 4. an HTTP/2 connection gets a GOAWAY and finishes its streams;
/// 5. upgraded connections (WebSocket) go on until they end, or until the drain timeout, when
///    [`graceful_listener::run`] cuts them;
/// 6. every close is staged: our side shuts down its writes, then reads and discards what
///    the client still sends until the client closes (bounded by the linger), so that unread
///    bytes never turn the close into a reset that would wipe out the last response.
///
/// While serving, a supervisor task enforces the header read timeout and the minimum rate
/// (see [`HttpConfig`]) without a timer per request.
///
/// Handlers that must end something themselves when the worker stops, such as an endless
/// event stream, watch [`ShutdownSignal::current`](graceful_listener::ShutdownSignal::current)
/// (the adapters offer it as an extractor).
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
        let builder = Arc::new(self.config.build_hyper());
        let supervisor = Supervisor::new(self.config.limits());
        tokio::spawn(supervisor.clone().run(signal.clone()));
        let (nodelay, linger, grace) = (
            self.config.nodelay,
            self.config.linger,
            self.config.idle_grace,
        );
        #[cfg(feature = "tls")]
        let tls: Tls = self.config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        #[cfg(not(feature = "tls"))]
        let tls: Tls = None;
        tracing::debug!(addr = %local, "serving HTTP");
        loop {
            // The make-service may ask the accept loop to wait (tower's `poll_ready`).
            std::future::poll_fn(|cx| self.make.poll_ready(cx)).await;
            let Some((conn, peer)) = listener.accept().await else {
                break;
            };
            if nodelay && let Some(tcp) = conn.as_tcp() {
                // Failing to set an option is no reason to refuse the connection.
                let _ = tcp.set_nodelay(true);
            }
            let make = self
                .make
                .make_service(&ConnectionInfo::new(peer, local.clone()));
            let state = Arc::new(ConnState::new(conn.as_raw_fd(), signal.clone()));
            let supervised = supervisor.supervise(state.clone());
            let builder = builder.clone();
            // Not instrumented with the caller's span: entering a span on every poll costs
            // more than a request's bookkeeping, for log lines a connection rarely writes.
            // One task shape per transport: a task's allocation is the size of its largest
            // state, and a TLS connection's is several times a plain one's.
            match &tls {
                None => {
                    tokio::spawn(async move {
                        let service = make.await;
                        serve_stream(&builder, conn, service, state, (linger, grace)).await;
                        drop(supervised);
                    });
                }
                #[cfg(feature = "tls")]
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let service = make.await;
                        serve_tls(&builder, acceptor, conn, service, state, (linger, grace)).await;
                        drop(supervised);
                    });
                }
                #[cfg(not(feature = "tls"))]
                Some(never) => match *never {},
            }
        }
        Ok(())
    }
}

/// The TLS acceptor, when the server speaks TLS.
#[cfg(feature = "tls")]
type Tls = Option<tokio_rustls::TlsAcceptor>;
#[cfg(not(feature = "tls"))]
type Tls = Option<std::convert::Infallible>;

/// Keeps the connection task's waker with its state, so that the supervisor can wake it with
/// a command; registering only when the waker changes (rarely: it is the task's).
#[derive(Default)]
struct CommandWatch {
    registered: Option<Waker>,
}

impl CommandWatch {
    /// The command in force, after making sure the next one wakes this task.
    fn poll(&mut self, state: &ConnState, cx: &std::task::Context<'_>) -> Command {
        if !self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.register(cx.waker());
            self.registered = Some(cx.waker().clone());
        }
        // Read after registering: a command given before the waker was there is seen here.
        state.command()
    }
}

/// Serves one TLS connection until it ends: the handshake first (a command from the
/// supervisor ends it: once stopping, the idle grace applies to a handshake as to a request
/// head; while serving, the header timeout), then HTTP.
#[cfg(feature = "tls")]
async fn serve_tls<S, B>(
    builder: &auto::Builder<TokioExecutor>,
    acceptor: tokio_rustls::TlsAcceptor,
    conn: graceful_listener::Connection,
    service: S,
    state: Arc<ConnState>,
    times: (std::time::Duration, std::time::Duration),
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut handshake = acceptor.accept(conn);
    let mut watch = CommandWatch::default();
    state.set_handshaking(true);
    let accepted = std::future::poll_fn(|cx| {
        if watch.poll(&state, cx) != Command::Serve {
            return Poll::Ready(None);
        }
        std::pin::Pin::new(&mut handshake).poll(cx).map(Some)
    })
    .await;
    state.set_handshaking(false);
    match accepted {
        Some(Ok(stream)) => serve_stream(builder, stream, service, state, times).await,
        Some(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
        None => tracing::debug!("TLS handshake cut: the worker is stopping or it took too long"),
    }
}

/// Serves HTTP on one connection until it ends, carrying out the supervisor's commands.
async fn serve_stream<T: Stream, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    stream: T,
    service: S,
    state: Arc<ConnState>,
    (linger, grace): (std::time::Duration, std::time::Duration),
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let io = TokioIo::new(WatchedIo::new(stream, state.clone(), linger, grace));
    let service = DrainService {
        inner: service,
        state: state.clone(),
    };
    let conn = builder.serve_connection_with_upgrades(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut watch = CommandWatch::default();
    let mut acted = Command::Serve;
    let result = std::future::poll_fn(|cx| {
        // One load per wake-up: the supervisor wakes the task when it gives a command.
        let command = watch.poll(&state, cx);
        if command != acted {
            acted = command;
            match command {
                Command::Serve => {}
                Command::Close => {
                    if state.observe().h2 {
                        // Before h2 sends its PING: the IO holds the answer for the grace.
                        state.set_h2_closing();
                    }
                    conn.as_mut().graceful_shutdown();
                }
                Command::Timeout => {
                    // Only if the head is still not complete: hyper may have read the rest
                    // since the supervisor looked, and then the stream is no longer at a
                    // message boundary.
                    if state.observe().head_arriving() {
                        state.write_request_timeout();
                        tracing::debug!("request head timed out: 408");
                        return Poll::Ready(Ok(()));
                    }
                    conn.as_mut().graceful_shutdown();
                }
                Command::Abort => {
                    tracing::debug!(
                        "connection cut: its client sends too slowly, does not read, or floods"
                    );
                    return Poll::Ready(Ok(()));
                }
            }
        }
        conn.as_mut().poll(cx)
    })
    .await;
    // Returning drops the connection (for a timeout or an abort, in the middle of it): its IO
    // makes the close a staged one.
    if let Err(e) = result {
        // Clients resetting or timing out is ordinary.
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
