//! One worker, two listeners: an axum app on Einhorn's first socket (`--bind`, `auto` by
//! default) and an admin router (`/metrics`) on its second (`--admin-bind`, `einhorn@1` by
//! default). One ACK once both serve, one drain, one report.
//!
//! Under Einhorn: `einhorn-master -m manual -b 127.0.0.1:8000 -b 127.0.0.1:9000 -- target/debug/examples/two-listeners`
//! On its own:    `cargo run --example two-listeners -- --bind 127.0.0.1:8000 --admin-bind 127.0.0.1:9000`

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use einhorn_axum::Bind;

/// The examples' options (`--bind`, `--drain-timeout`, `--tls-cert`, ...), and where the
/// admin router listens.
#[derive(Debug, clap::Parser)]
struct TwoListenersArgs {
    #[command(flatten)]
    common: common::HttpArgs,
    /// Where the admin router listens.
    #[arg(long, default_value = "einhorn@1")]
    admin_bind: Bind,
}

async fn hello(State(requests): State<Arc<AtomicU64>>) -> String {
    requests.fetch_add(1, Ordering::Relaxed);
    format!("hello from two-listeners pid={}\n", std::process::id())
}

async fn sleep(State(requests): State<Arc<AtomicU64>>, Path(ms): Path<u64>) -> String {
    requests.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("slept {ms}ms pid={}\n", std::process::id())
}

async fn metrics(State(requests): State<Arc<AtomicU64>>) -> String {
    format!(
        "requests {} pid={}\n",
        requests.load(Ordering::Relaxed),
        std::process::id()
    )
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut args: TwoListenersArgs = clap::Parser::parse();
    args.common.worker = args.common.worker.validated();
    let common = &args.common;
    let _span = common::init_tracing();
    let requests = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route("/", get(hello))
        .route("/sleep/{ms}", get(sleep))
        .with_state(requests.clone());
    let admin = Router::new()
        .route("/metrics", get(metrics))
        .with_state(requests);
    // TLS, when given, on both listeners: the admin router's metrics are no less private.
    let tls = common.tls();
    let mut admin = einhorn_axum::server(admin);
    let mut worker = einhorn_axum::serve(app)
        .bind(common.bind.clone())
        .drain_timeout(common.drain_timeout())
        .lame_duck(common.lame_duck())
        .on_stop(|| tracing::info!("on_stop: accepting stopped, draining"));
    if let Some(tls) = tls {
        *admin.config_mut() = admin.get_config().clone().tls(tls.clone());
        worker = worker.tls(tls);
    }
    let result = worker.also_serve(args.admin_bind.clone(), admin).await;
    common::exit_status(result)
}
