//! The baseline: an actix-web worker for Einhorn written the way a Rust user would today,
//! without this project. Same routes as `actix-hello`, so the two can be compared under the
//! same upgrades and load (see the demo's `--framework actix`).
//!
//! By hand: the Einhorn listener (`EINHORN_FD_0` to a std listener for
//! `HttpServer::listen`), the ACK (one line to `EINHORN_SOCK_PATH` once actix runs), and the
//! stop: actix's own graceful stop (`ServerHandle::stop(true)`) on SIGUSR2, with actix's
//! `shutdown_timeout` as the drain deadline. What it lacks is a drain that keep-alive clients
//! do not notice: actix closes idle keep-alive connections at once, racing with the requests
//! clients are sending on them.
//!
//! Under Einhorn: `einhorn-master -m manual -b 127.0.0.1:8000 -- target/debug/examples/actix-baseline`

mod by_hand;

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use tokio::signal::unix::{SignalKind, signal};

/// The options of the examples' contract (this baseline knows no bind specs: without
/// Einhorn it binds `--bind HOST:PORT`).
#[derive(Debug, clap::Parser)]
struct Args {
    /// Where to listen when not run by Einhorn.
    #[arg(long, default_value = "127.0.0.1:8000")]
    bind: SocketAddr,
    /// Longest drain, in seconds (actix's shutdown timeout).
    #[arg(long, default_value_t = 30)]
    drain_timeout: u64,
}

async fn hello() -> String {
    format!("hello from actix-baseline pid={}\n", std::process::id())
}

async fn sleep(ms: web::Path<u64>) -> String {
    let ms = ms.into_inner();
    actix_web::rt::time::sleep(Duration::from_millis(ms)).await;
    format!("slept {ms}ms pid={}\n", std::process::id())
}

/// Einhorn's first listener if we have one, else a fresh one on `bind`.
fn listener(bind: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    by_hand::einhorn_listener().unwrap_or_else(|| std::net::TcpListener::bind(bind))
}

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    let args: Args = clap::Parser::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    // Before the ACK: without a handler, SIGUSR2 would kill the process.
    let mut usr2 = signal(SignalKind::user_defined2()).expect("SIGUSR2 handler");
    let listener = match listener(args.bind) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen");
            return std::process::ExitCode::FAILURE;
        }
    };
    let server = HttpServer::new(|| {
        App::new()
            .route("/", web::get().to(hello))
            .route("/sleep/{ms}", web::get().to(sleep))
    })
    .workers(2)
    .shutdown_timeout(args.drain_timeout)
    .listen(listener);
    let server = match server {
        Ok(server) => server.run(),
        Err(e) => {
            tracing::error!(error = %e, "cannot listen");
            return std::process::ExitCode::FAILURE;
        }
    };
    let handle = server.handle();
    let running = actix_web::rt::spawn(server);
    if let Err(e) = by_hand::ack() {
        tracing::error!(error = %e, "cannot ack");
    }
    tracing::info!(pid = std::process::id(), "serving");
    usr2.recv().await;
    tracing::info!("on_stop: stopping, draining");
    handle.stop(true).await;
    let _ = running.await;
    tracing::info!("drained");
    std::process::ExitCode::SUCCESS
}
