//! An axum app under Einhorn, following the examples' contract: `GET /` answers with this
//! worker's pid, `GET /sleep/<ms>` answers after that long, `GET /until-stop` answers when the
//! worker stops, `GET /readyz` answers 200 while ready and 503 in the lame duck.
//!
//! Under Einhorn: `einhorn-master -m manual -b 127.0.0.1:8000 -- target/debug/examples/axum-hello`
//! On its own:    `cargo run --example axum-hello -- --bind 127.0.0.1:8000`
//! Try it:        `curl localhost:8000/`, then upgrade the master while a load runs: no
//!                request fails, and the pid in the answers changes.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Path};
use axum::http::StatusCode;
use axum::routing::get;
use einhorn_axum::StopSignal;

async fn hello(ConnectInfo(peer): ConnectInfo<SocketAddr>) -> (StatusCode, String) {
    common::act_slow().await;
    if common::should_fail() {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "failing on purpose\n".into(),
        );
    }
    let pid = std::process::id();
    (
        StatusCode::OK,
        format!("hello from axum pid={pid} to {peer}\n"),
    )
}

async fn sleep(Path(ms): Path<u64>) -> String {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("slept {ms}ms pid={}\n", std::process::id())
}

async fn until_stop(StopSignal(signal): StopSignal) -> String {
    signal.stopping().await;
    format!("stopping pid={}\n", std::process::id())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = common::HttpArgs::parse();
    let _span = common::init_tracing();
    let app = Router::new()
        .route("/", get(hello))
        .route("/sleep/{ms}", get(sleep))
        .route("/until-stop", get(until_stop))
        .route("/readyz", get(einhorn_axum::readyz));
    let mut worker = einhorn_axum::serve(app.into_make_service_with_connect_info::<SocketAddr>())
        .bind(args.bind.clone())
        .drain_timeout(args.drain_timeout())
        .lame_duck(args.lame_duck())
        .on_stop(|| tracing::info!("on_stop: accepting stopped, draining"));
    worker = common::act_bad_build!(worker, args);
    if let Some(tls) = args.tls() {
        worker = worker.tls(tls);
    }
    let result = worker.await;
    common::exit_status(result)
}
