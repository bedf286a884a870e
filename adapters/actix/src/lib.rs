//! Run an actix-web app under a socket manager such as Einhorn, and upgrade it without a
//! single client noticing, keep-alive ones included.
//!
//! [`start`] takes what [`HttpServer::new`](actix_web::HttpServer::new) takes (a closure
//! making your `App`) and the index of the inherited socket; it serves the socket with
//! actix's own `HttpServer::listen`, with actix's signal handling off and the worker's on:
//! it ACKs to the master once actix accepts, and on SIGUSR2 stops accepting, answers with
//! `Connection: close`, gives idle keep-alive connections a grace before actix closes them,
//! lets requests in flight finish, and ends as soon as every connection has closed (or cuts
//! what is left at the drain timeout, and says so in the [`RunReport`]).
//!
//! # Example
//! Under Einhorn: `einhorn -m manual -b 127.0.0.1:8000 -- ./app`.
//! ```no_run
//! use actix_web::{App, HttpResponse, web};
//!
//! #[actix_web::main]
//! async fn main() -> Result<(), einhorn_actix::RunError> {
//!     let report = einhorn_actix::start(
//!         || App::new().route("/", web::get().to(|| async { HttpResponse::Ok().body("hello\n") })),
//!         0,
//!     )
//!     .on_stop(|| eprintln!("draining"))
//!     .await?;
//!     eprintln!("{report:?}");
//!     Ok(())
//! }
//! ```
//! From a plain `fn main`, call [`Start::run`] instead of `.await`.

mod connect;
mod drain;
mod start;

pub use connect::{StopSignal, readyz};
pub use drain::{DrainApp, DrainAppService, DrainFuture};
#[cfg(feature = "tls")]
pub use graceful_listener::TlsError;
pub use graceful_listener::{
    AckError, Bind, BindError, DEFAULT_DRAIN_TIMEOUT, ParseBindError, RunError, RunReport,
    ShutdownSignal, StopCause,
};
/// A rustls server configuration from a PEM certificate chain and a PEM private key,
/// offering HTTP/2 and HTTP/1.1 (ALPN `h2`, `http/1.1`), for [`Start::tls`].
///
/// # Errors
/// A [`graceful_listener::tls::TlsError`] naming the file that cannot be read or used.
///
/// # Example
/// ```no_run
/// let tls = einhorn_actix::tls_config("cert.pem", "key.pem")?;
/// # Ok::<(), graceful_listener::tls::TlsError>(())
/// ```
#[cfg(feature = "tls")]
pub fn tls_config(
    cert: impl AsRef<std::path::Path>,
    key: impl AsRef<std::path::Path>,
) -> Result<std::sync::Arc<rustls::ServerConfig>, graceful_listener::tls::TlsError> {
    graceful_listener::tls::server_config(cert, key, &[b"h2", b"http/1.1"])
}

#[allow(deprecated)] // DEFAULT_IDLE_GRACE: kept so that code naming it still builds.
pub use start::{
    ActixServer, AppFactory, AppServiceFactory, DEFAULT_IDLE_GRACE, Start, serve, start,
};
