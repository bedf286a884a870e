//! Run any Rust server under a socket manager such as Stripe's Einhorn, and upgrade it
//! without losing a request.
//!
//! A socket manager binds listening sockets once and runs workers that inherit them. To
//! upgrade, it starts new workers, waits for each to say it is ready (an ACK), then asks the
//! old ones to stop (SIGUSR2). This crate is the worker's side of that contract, and knows
//! nothing of HTTP:
//!
//! - [`Bind`]: where the listener comes from (`einhorn@0`, `fd@3`, `127.0.0.1:8000`,
//!   `unix:/run/app.sock`, `auto`), each inherited fd checked before use;
//! - [`GracefulListener`]: accepts [`Connection`]s that stay counted until closed, stops
//!   accepting on request, and can force-close what is left;
//! - [`Server`]: anything that serves a `GracefulListener` (Go's `Serve(net.Listener)`);
//! - [`run`]: signals, ACK, drain with a timeout, `on_stop`, and a [`RunReport`];
//! - [`Worker`]: the same life in pieces, for hosts that accept connections on their own
//!   (actix-web): signals, [`StdListener`]s, a [`ConnectionGuard`] per connection, the ACK,
//!   the stop, the drain.
//!
//! HTTP frameworks plug in through thin adapter crates (`einhorn-axum`, `einhorn-warp`,
//! `einhorn-hyper`) whose drain no keep-alive client notices.
//!
//! # Example
//! A line-echo server, run by Einhorn as `einhorn -m manual -b 127.0.0.1:9000 -- ./echo`:
//! ```no_run
//! use graceful_listener::GracefulListener;
//! use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let server = |mut listener: GracefulListener| async move {
//!         while let Some((conn, _peer)) = listener.accept().await {
//!             tokio::spawn(async move {
//!                 let (read, mut write) = tokio::io::split(conn);
//!                 let mut lines = BufReader::new(read).lines();
//!                 while let Ok(Some(line)) = lines.next_line().await {
//!                     if write.write_all(format!("{line}\n").as_bytes()).await.is_err() {
//!                         break;
//!                     }
//!                 }
//!             });
//!         }
//!         Ok(())
//!     };
//!     let report = graceful_listener::run(server, 0).await?;
//!     eprintln!("{report:?}");
//!     Ok(())
//! }
//! ```

mod address;
mod auto;
pub mod balance;
mod bind;
pub mod einhorn;
pub mod env;
mod inherit;
pub mod keyring;
mod listener;
mod notify;
mod open;
mod options;
mod report;
mod run;
mod server;
pub mod shed;
mod shutdown;
mod signals;
mod socket;
pub mod telemetry;
#[cfg(feature = "rustls")]
pub mod tls;
mod worker;

pub use address::Address;
pub use bind::{Bind, BindError, DEFAULT_ADDR, ParseBindError};
pub use einhorn::AckError;
pub use env::EnvError;
pub use inherit::InheritError;
pub use listener::{Connection, ConnectionGuard, GracefulListener, ListenerHandle};
pub use options::{DEFAULT_DRAIN_TIMEOUT, DEFAULT_WARM_UP_TIMEOUT, WorkerOptions};
pub use report::{RunError, RunReport, StopCause, WarmUpError};
pub use run::{Run, run};
pub use server::Server;
pub use shutdown::{Phase, Shutdown, ShutdownSignal};
pub use signals::{STOP_SIGNALS, UNBLOCKS_STOP_SIGNALS_SECTION, unblocks_stop_signals_marker};
pub use socket::StdListener;
#[cfg(feature = "rustls")]
pub use tls::TlsError;
pub use worker::{Stop, Worker};
