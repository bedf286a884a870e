//! Run an axum app under a socket manager such as Einhorn, and upgrade it without a single
//! client noticing, keep-alive ones included.
//!
//! [`run`] serves a [`Router`](axum::Router) (or `app.into_make_service()`, or
//! `app.into_make_service_with_connect_info::<SocketAddr>()`) on Einhorn's listener with the
//! keep-alive-safe drain of [`einhorn_hyper`]: it ACKs to the master once serving, and on
//! SIGUSR2 stops accepting, answers with `Connection: close`, gives idle keep-alive
//! connections a grace, and exits as soon as every connection has finished (or at the drain
//! timeout, cutting what is left).
//!
//! For code that keeps [`axum::serve()`], [`ServeListener`] is a
//! [`GracefulListener`](graceful_listener::GracefulListener) that `axum::serve` accepts.
//!
//! # Example
//! Under Einhorn: `einhorn -m manual -b 127.0.0.1:8000 -- ./app`.
//! ```no_run
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use axum::{Router, extract::ConnectInfo, routing::get};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), einhorn_axum::RunError> {
//!     let app = Router::new().route(
//!         "/",
//!         get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { format!("hello {peer}\n") }),
//!     );
//!     let report = einhorn_axum::run(app.into_make_service_with_connect_info::<SocketAddr>(), 0)
//!         .drain_timeout(Duration::from_secs(10))
//!         .on_stop(|| eprintln!("draining"))
//!         .await?;
//!     eprintln!("{report:?}");
//!     Ok(())
//! }
//! ```

mod app;
mod listener;
mod make;
mod signal;

use einhorn_hyper::{HttpRun, HttpServer};

pub use app::App;
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
pub use listener::ServeListener;
pub use make::{AxumMakeService, IncomingConnection};
pub use signal::{StopSignal, readyz};

/// The builder [`run`] and [`serve`] return: every option of the worker and of the HTTP
/// engine; `.await` it.
pub type Run<M> = HttpRun<AxumMakeService<M>>;

/// Serves an axum app on Einhorn's listener number `fd_index` until a stop signal, then drains
/// without a keep-alive client noticing.
///
/// `app` is a [`Router`](axum::Router) (with its state given: `Router<()>`),
/// `app.into_make_service()`, or `app.into_make_service_with_connect_info::<C>()` for any
/// `C` that is [`Connected`](axum::extract::connect_info::Connected) to an
/// [`IncomingConnection`] (`SocketAddr` and [`graceful_listener::Address`] are): see [`App`].
///
/// `fd_index` is the position of the socket in the master's `-b` list (`0` for the first,
/// `EINHORN_FD_0`): this expects a socket manager. [`serve`] binds by itself when there is
/// none. The returned [`Run`] is a builder with every option of the core and of the HTTP
/// engine; `.await` it.
///
/// # Example
/// ```no_run
/// use std::time::Duration;
/// use axum::{Router, routing::get};
///
/// # async fn example() -> Result<(), einhorn_axum::RunError> {
/// let app = Router::new().route("/", get(|| async { "hello\n" }));
/// let report = einhorn_axum::run(app, 0)
///     .drain_timeout(Duration::from_secs(10))
///     .idle_grace(Duration::from_millis(500))
///     .on_stop(|| eprintln!("stopping"))
///     .await?;
/// # Ok(())
/// # }
/// ```
pub fn run<M: App>(app: M, fd_index: usize) -> Run<M> {
    serve(app).bind(Bind::Einhorn(fd_index))
}

/// Like [`run`], bound with [`Bind::Auto`] (the socket a manager passed when there is one,
/// else `127.0.0.1:8000`); set another spec with `.bind(..)`.
///
/// # Example
/// ```no_run
/// use axum::{Router, routing::get};
///
/// # async fn example() -> Result<(), einhorn_axum::RunError> {
/// let app = Router::new().route("/", get(|| async { "hello\n" }));
/// einhorn_axum::serve(app).bind("127.0.0.1:3000".parse()?).await?;
/// # Ok(())
/// # }
/// ```
pub fn serve<M: App>(app: M) -> Run<M> {
    HttpRun::from(server(app))
}

/// The HTTP server for an axum app, to serve beside the main one on another listener with
/// [`Run::also_serve`](einhorn_hyper::HttpRun::also_serve) (an admin router on `einhorn@1`,
/// say).
///
/// # Example
/// ```no_run
/// use axum::{Router, routing::get};
/// use einhorn_axum::Bind;
///
/// # async fn example() -> Result<(), einhorn_axum::RunError> {
/// let app = Router::new().route("/", get(|| async { "hello\n" }));
/// let admin = Router::new().route("/metrics", get(|| async { "requests 1\n" }));
/// einhorn_axum::run(app, 0)
///     .also_serve(Bind::Einhorn(1), einhorn_axum::server(admin))
///     .await?;
/// # Ok(())
/// # }
/// ```
pub fn server<M: App>(app: M) -> HttpServer<AxumMakeService<M>> {
    HttpServer::from_make_service(AxumMakeService::new(app))
}
