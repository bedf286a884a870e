//! The baseline: an axum worker for Einhorn written the way a Rust user would today, without
//! this project. Same routes as `axum-hello`, so the two can be compared under the same
//! upgrades and load (see the book's "drain" page).
//!
//! By hand: the Einhorn listener (`EINHORN_FD_0` to a non-blocking tokio listener), the ACK
//! (one line to `EINHORN_SOCK_PATH`), and the drain (`axum::serve(..).with_graceful_shutdown`
//! on SIGUSR2, bounded by `--drain-timeout`). It is careful (signal handlers before the ACK,
//! a drain deadline); what it lacks is a drain that keep-alive clients do not notice: hyper
//! closes idle keep-alive connections at once, racing with the requests clients are sending.
//!
//! Under Einhorn: `einhorn-master -m manual -b 127.0.0.1:8000 -- target/debug/examples/axum-baseline`

mod by_hand;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use tokio::signal::unix::{SignalKind, signal};

/// The options of the examples' contract (this baseline knows no bind specs: without
/// Einhorn it binds `--bind HOST:PORT`).
#[derive(Debug, clap::Parser)]
struct Args {
    /// Where to listen when not run by Einhorn.
    #[arg(long, default_value = "127.0.0.1:8000")]
    bind: SocketAddr,
    /// Longest drain, in seconds.
    #[arg(long, default_value_t = 30.0)]
    drain_timeout: f64,
}

async fn hello() -> String {
    format!("hello from axum-baseline pid={}\n", std::process::id())
}

async fn sleep(Path(ms): Path<u64>) -> String {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("slept {ms}ms pid={}\n", std::process::id())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Args = clap::Parser::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let mut usr2 = signal(SignalKind::user_defined2()).expect("SIGUSR2 handler");
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let listener = match by_hand::tokio_listener(args.bind).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen");
            return std::process::ExitCode::FAILURE;
        }
    };
    let app = Router::new()
        .route("/", get(hello))
        .route("/sleep/{ms}", get(sleep));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });
    if let Err(e) = by_hand::ack() {
        tracing::error!(error = %e, "cannot ack");
    }
    tracing::info!(pid = std::process::id(), "serving");
    tokio::select! {
        _ = usr2.recv() => {}
        _ = term.recv() => {}
    }
    tracing::info!("on_stop: stopping, draining");
    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs_f64(args.drain_timeout), server).await {
        Ok(_) => {
            tracing::info!("drained");
            std::process::ExitCode::SUCCESS
        }
        Err(_) => {
            tracing::warn!("drain timeout: exiting with connections open");
            std::process::ExitCode::SUCCESS
        }
    }
}
