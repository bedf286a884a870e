//! The baseline: a warp worker for Einhorn written the way a Rust user would today, without
//! this project. Same routes as `warp-hello`, so the two can be compared under the same
//! upgrades and load (see the benchmark's upgrades section).
//!
//! By hand: the Einhorn listener (`EINHORN_FD_0` to a non-blocking tokio listener), the ACK
//! (one line to `EINHORN_SOCK_PATH`), and the drain (warp's own
//! `serve(..).incoming(..).graceful(SIGUSR2)`, bounded by `--drain-timeout`). What it lacks
//! is a drain that keep-alive clients do not notice: hyper closes idle keep-alive
//! connections at once, racing with the requests clients are sending on them.
//!
//! Under Einhorn: `einhorn-master -m manual -b 127.0.0.1:8000 -- target/debug/examples/warp-baseline`

mod by_hand;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use warp::Filter;

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
    let hello =
        warp::path::end().map(|| format!("hello from warp-baseline pid={}\n", std::process::id()));
    let sleep = warp::path!("sleep" / u64).then(|ms| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        format!("slept {ms}ms pid={}\n", std::process::id())
    });
    let routes = warp::get().and(hello.or(sleep));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        warp::serve(routes)
            .incoming(listener)
            .graceful(async {
                let _ = stop_rx.await;
            })
            .run(),
    );
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
        Ok(_) => tracing::info!("drained"),
        Err(_) => tracing::warn!("drain timeout: exiting with connections open"),
    }
    std::process::ExitCode::SUCCESS
}
