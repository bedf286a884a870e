//! Run a warp filter under a socket manager such as Einhorn, and upgrade it without a single
//! client noticing, keep-alive ones included.
//!
//! [`run`] serves a filter through [`warp::service`] on the HTTP engine of [`einhorn_hyper`]:
//! it ACKs to the master once serving, and on SIGUSR2 stops accepting, answers with
//! `Connection: close`, gives idle keep-alive connections a grace, and exits as soon as every
//! connection has finished (or at the drain timeout, cutting what is left).
//!
//! # Example
//! Under Einhorn: `einhorn -m manual -b 127.0.0.1:8000 -- ./app`.
//! ```no_run
//! use std::time::Duration;
//! use warp::Filter;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), einhorn_warp::RunError> {
//!     let hello = warp::path::end().map(|| "hello\n");
//!     let report = einhorn_warp::run(hello, 0)
//!         .drain_timeout(Duration::from_secs(10))
//!         .on_stop(|| eprintln!("draining"))
//!         .await?;
//!     eprintln!("{report:?}");
//!     Ok(())
//! }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

use einhorn_hyper::{HttpRun, HttpServer, Shared};
use hyper::Request;
use hyper::body::Incoming;
use warp::{Filter, Reply};

#[cfg(feature = "tls")]
pub use einhorn_hyper::tls_config;
pub use einhorn_hyper::{
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_GRACE, DEFAULT_LINGER, HttpConfig,
};
#[cfg(feature = "tls")]
pub use graceful_listener::TlsError;
pub use graceful_listener::{
    AckError, Bind, BindError, DEFAULT_DRAIN_TIMEOUT, ParseBindError, RunError, RunReport,
    ShutdownSignal, StopCause,
};

/// The builder [`run`] and [`serve`] return: every option of the worker and of the HTTP
/// engine; `.await` it.
pub type Run<F> = HttpRun<Shared<WarpService<F>>>;

/// Serves a warp filter on Einhorn's listener number `fd_index` until a stop signal, then
/// drains without a keep-alive client noticing.
///
/// `fd_index` is the position of the socket in the master's `-b` list (`0` for the first,
/// `EINHORN_FD_0`): this expects a socket manager. [`serve`] binds by itself when there is
/// none. The returned [`Run`] is a builder with every option of the core and of the HTTP engine;
/// `.await` it.
///
/// # Example
/// ```no_run
/// use std::time::Duration;
/// use warp::Filter;
///
/// # async fn example() -> Result<(), einhorn_warp::RunError> {
/// let routes = warp::path!("hello" / String).map(|name| format!("hello {name}\n"));
/// let report = einhorn_warp::run(routes, 0)
///     .drain_timeout(Duration::from_secs(10))
///     .idle_grace(Duration::from_millis(500))
///     .await?;
/// # Ok(())
/// # }
/// ```
pub fn run<F>(filter: F, fd_index: usize) -> Run<F>
where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: Reply,
{
    serve(filter).bind(Bind::Einhorn(fd_index))
}

/// Like [`run`], bound with [`Bind::Auto`] (the socket a manager passed when there is one,
/// else `127.0.0.1:8000`); set another spec with `.bind(..)`.
///
/// # Example
/// ```no_run
/// use warp::Filter;
///
/// # async fn example() -> Result<(), einhorn_warp::RunError> {
/// let hello = warp::any().map(|| "hello\n");
/// einhorn_warp::serve(hello).bind("127.0.0.1:3030".parse()?).await?;
/// # Ok(())
/// # }
/// ```
pub fn serve<F>(filter: F) -> Run<F>
where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: Reply,
{
    HttpRun::from(server(filter))
}

/// The HTTP server for a warp filter, to serve beside the main one on another listener with
/// [`Run::also_serve`](einhorn_hyper::HttpRun::also_serve) (admin routes on `einhorn@1`, say).
///
/// # Example
/// ```no_run
/// use einhorn_warp::Bind;
/// use warp::Filter;
///
/// # async fn example() -> Result<(), einhorn_warp::RunError> {
/// let app = warp::path::end().map(|| "hello\n");
/// let admin = warp::path("metrics").map(|| "requests 1\n");
/// einhorn_warp::run(app, 0)
///     .also_serve(Bind::Einhorn(1), einhorn_warp::server(admin))
///     .await?;
/// # Ok(())
/// # }
/// ```
pub fn server<F>(filter: F) -> HttpServer<Shared<WarpService<F>>>
where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: Reply,
{
    HttpServer::new(WarpService::new(filter))
}

/// Extracts the worker's [`ShutdownSignal`], for handlers that must end something themselves
/// when the worker stops: an event stream, a long poll. It is [`ShutdownSignal::current`]:
/// outside a worker, a signal that never fires.
///
/// # Example
/// ```
/// use warp::Filter;
///
/// let poll = warp::path("poll")
///     .and(einhorn_warp::stop_signal())
///     .then(|signal: einhorn_warp::ShutdownSignal| async move {
///         tokio::select! {
///             () = signal.stopping() => "worker stopping: ask again\n",
///             () = tokio::time::sleep(std::time::Duration::from_secs(30)) => "nothing new\n",
///         }
///     });
/// ```
pub fn stop_signal()
-> impl Filter<Extract = (ShutdownSignal,), Error = std::convert::Infallible> + Copy {
    warp::any().map(ShutdownSignal::current)
}

/// A readiness route, `GET /readyz`: `200 ready` while the worker serves, `503 not ready` in
/// its [lame duck](graceful_listener::WorkerOptions::lame_duck) and once it stops. For a
/// Kubernetes `readinessProbe`.
///
/// # Example
/// ```
/// use warp::Filter;
///
/// let hello = warp::path::end().map(|| "hello\n");
/// let routes = einhorn_warp::readyz().or(hello);
/// ```
pub fn readyz()
-> impl Filter<Extract = (warp::reply::WithStatus<&'static str>,), Error = warp::Rejection> + Copy {
    warp::get()
        .and(warp::path("readyz"))
        .and(warp::path::end())
        .map(|| {
            if ShutdownSignal::current().is_ready() {
                warp::reply::with_status("ready\n", warp::http::StatusCode::OK)
            } else {
                warp::reply::with_status("not ready\n", warp::http::StatusCode::SERVICE_UNAVAILABLE)
            }
        })
}

/// A warp filter as a [`hyper::service::Service`] (through [`warp::service`]), for
/// [`einhorn_hyper::HttpServer`].
///
/// # Example
/// ```
/// use warp::Filter;
///
/// let service = einhorn_warp::WarpService::new(warp::any().map(|| "hello"));
/// let server = einhorn_hyper::HttpServer::new(service);
/// ```
#[derive(Debug, Clone)]
pub struct WarpService<F> {
    filter: F,
}

impl<F> WarpService<F>
where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: Reply,
{
    /// Serves `filter`.
    ///
    /// # Example
    /// See [`WarpService`].
    pub fn new(filter: F) -> WarpService<F> {
        WarpService { filter }
    }
}

/// The response future of a [`WarpService`] (warp's own future type cannot be named).
pub type WarpFuture =
    Pin<Box<dyn Future<Output = Result<warp::reply::Response, Infallible>> + Send>>;

impl<F> hyper::service::Service<Request<Incoming>> for WarpService<F>
where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: Reply,
{
    type Response = warp::reply::Response;
    type Error = Infallible;
    type Future = WarpFuture;

    fn call(&self, req: Request<Incoming>) -> WarpFuture {
        let mut service = warp::service(self.filter.clone());
        Box::pin(tower_service::Service::call(&mut service, req))
    }
}
