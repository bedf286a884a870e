//! Serve HTTP with hyper under a socket manager such as Einhorn, and upgrade without a single
//! client noticing, keep-alive ones included.
//!
//! This is the HTTP engine of [`graceful_listener`]: a connection loop on hyper-util's auto
//! builder (HTTP/1.1 and HTTP/2) over a [`graceful_listener::GracefulListener`], serving any
//! hyper service, with a drain made for keep-alive clients (see [`HttpServer`]):
//! `Connection: close` on every response once stopping, idle connections left to their peer
//! (a load balancer's pool may send on them at any instant), GOAWAY for HTTP/2, upgraded connections waited for until the drain timeout, and staged
//! closes that never turn into resets.
//!
//! `einhorn-axum` and `einhorn-warp` are thin layers on this crate.
//!
//! # Example
//! Under Einhorn: `einhorn -m manual -b 127.0.0.1:8000 -- ./hello`.
//! ```no_run
//! use std::convert::Infallible;
//! use http_body_util::Full;
//! use hyper::{Request, Response, body::{Bytes, Incoming}, service::service_fn};
//!
//! async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
//!     Ok(Response::new(Full::new(Bytes::from("hello\n"))))
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), einhorn_hyper::RunError> {
//!     let report = einhorn_hyper::run(service_fn(hello), 0).await?;
//!     eprintln!("{report:?}");
//!     Ok(())
//! }
//! ```

mod config;
mod h2_calm;
mod h2_frames;
mod h2_hold;
mod io;
mod make;
mod run;
mod server;
mod service;
mod state;
mod supervisor;

pub use config::{
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_GRACE, DEFAULT_LINGER, DEFAULT_MIN_RATE, HttpConfig,
};
#[cfg(feature = "tls")]
pub use graceful_listener::TlsError;
pub use graceful_listener::{
    AckError, Bind, BindError, DEFAULT_DRAIN_TIMEOUT, ParseBindError, RunError, RunReport,
    ShutdownSignal, StopCause,
};
pub use make::{ConnectionInfo, MakeService, Shared};
pub use run::{HttpRun, run, serve};
pub use server::HttpServer;

/// A rustls server configuration from a PEM certificate chain and a PEM private key,
/// offering HTTP/2 and HTTP/1.1 (ALPN `h2`, `http/1.1`), for [`HttpConfig::tls`].
///
/// # Errors
/// A [`graceful_listener::tls::TlsError`] naming the file that cannot be read or used.
///
/// # Example
/// ```no_run
/// # use std::convert::Infallible;
/// # use http_body_util::Empty;
/// # use hyper::{Response, body::Bytes, service::service_fn};
/// # async fn example() -> Result<(), einhorn_hyper::RunError> {
/// # let service = service_fn(|_req| async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) });
/// let tls = einhorn_hyper::tls_config("cert.pem", "key.pem")?;
/// einhorn_hyper::run(service, 0).tls(tls).await?;
/// # Ok(())
/// # }
/// ```
#[cfg(feature = "tls")]
pub fn tls_config(
    cert: impl AsRef<std::path::Path>,
    key: impl AsRef<std::path::Path>,
) -> Result<std::sync::Arc<rustls::ServerConfig>, graceful_listener::tls::TlsError> {
    graceful_listener::tls::server_config(cert, key, &[b"h2", b"http/1.1"])
}

/// A readiness response: `200 ready` while the worker serves, `503 not ready` in its
/// [lame duck](graceful_listener::WorkerOptions::lame_duck) and once it stops; answer a
/// Kubernetes `readinessProbe` path with it.
///
/// # Example
/// ```
/// use http_body_util::Full;
/// use hyper::body::Bytes;
///
/// let response: hyper::Response<Full<Bytes>> = einhorn_hyper::readyz();
/// assert_eq!(response.status(), 200); // no worker here: never stopping
/// ```
pub fn readyz<B: From<&'static str>>() -> http::Response<B> {
    let (status, body) = if ShutdownSignal::current().is_ready() {
        (http::StatusCode::OK, "ready\n")
    } else {
        (http::StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    };
    let mut response = http::Response::new(B::from(body));
    *response.status_mut() = status;
    response
}
