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
pub use graceful_listener::{
    Bind, DEFAULT_DRAIN_TIMEOUT, RunError, RunReport, ShutdownSignal, StopCause,
};
pub use start::{
    ActixServer, AppFactory, AppServiceFactory, DEFAULT_IDLE_GRACE, Start, serve, start,
};
