//! Run an axum app under a socket manager such as Einhorn, and upgrade it without a single
//! client noticing, keep-alive ones included.
//!
//! [`run`] serves a [`Router`] (or `app.into_make_service()`, or
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
//! async fn main() -> Result<(), graceful_listener::RunError> {
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

mod listener;
mod make;

use std::convert::Infallible;

use axum::Router;
use einhorn_hyper::{HttpRun, HttpServer};
use graceful_listener::{Bind, Server};

pub use einhorn_hyper::{
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_GRACE, DEFAULT_LINGER, HttpConfig, HttpRun as Run,
};
pub use listener::ServeListener;
pub use make::{AxumMakeService, IncomingConnection};

/// Serves an axum app on Einhorn's listener number `fd_index` until a stop signal, then drains
/// without a keep-alive client noticing.
///
/// `app` is a [`Router`], `app.into_make_service()`, or
/// `app.into_make_service_with_connect_info::<C>()` for any `C` that is
/// [`Connected`](axum::extract::connect_info::Connected) to an [`IncomingConnection`]
/// (`SocketAddr` and [`graceful_listener::Address`] are). The returned [`Run`] is a builder
/// with every option of the core and of the HTTP engine; `.await` it.
///
/// # Example
/// ```no_run
/// use std::time::Duration;
/// use axum::{Router, routing::get};
///
/// # async fn example() -> Result<(), graceful_listener::RunError> {
/// let app = Router::new().route("/", get(|| async { "hello\n" }));
/// let report = einhorn_axum::run(app, 0)
///     .drain_timeout(Duration::from_secs(10))
///     .idle_grace(Duration::from_millis(500))
///     .on_stop(|| eprintln!("stopping"))
///     .await?;
/// # Ok(())
/// # }
/// ```
pub fn run<M>(app: M, fd_index: usize) -> HttpRun<AxumMakeService<M>>
where
    HttpServer<AxumMakeService<M>>: Server,
{
    serve(app).bind(Bind::Einhorn(fd_index))
}

/// Like [`run`], bound with [`Bind::Auto`] (Einhorn's first listener when run by Einhorn, else
/// `127.0.0.1:8000`); set another spec with `.bind(..)`.
///
/// # Example
/// ```no_run
/// use axum::{Router, routing::get};
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let app = Router::new().route("/", get(|| async { "hello\n" }));
/// einhorn_axum::serve(app).bind("127.0.0.1:3000".parse()?).await?;
/// # Ok(())
/// # }
/// ```
pub fn serve<M>(app: M) -> HttpRun<AxumMakeService<M>>
where
    HttpServer<AxumMakeService<M>>: Server,
{
    HttpRun::new(HttpServer::from_make_service(AxumMakeService::new(app)))
}

/// A router is its own make-service: each connection gets a clone.
impl tower_service::Service<IncomingConnection> for Router<()> {
    type Response = Router<()>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Router<()>, Infallible>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _conn: IncomingConnection) -> Self::Future {
        std::future::ready(Ok(self.clone()))
    }
}
