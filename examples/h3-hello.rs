//! HTTP/3: an axum app served over QUIC from the UDP socket a manager passed, upgraded with no
//! request lost (see `einhorn_h3`). Follows the examples' contract (`GET /` answers with this
//! worker's pid, `--bind` (a UDP socket: `einhorn@N`, `systemd@N`, `HOST:PORT`),
//! `--drain-timeout`, an `on_stop` line, exit 0 after a drain); `--tls-cert` and `--tls-key`
//! are required (QUIC is TLS 1.3).
//!
//! - `GET /`: `hello from h3-hello pid=<pid>`.
//! - `GET /download?chunks=N&every_ms=MS`: N chunks of 1 KiB, one every MS milliseconds, each
//!   naming the pid: a long download, to watch an upgrade not cut it.
//! - `POST /echo`: the request body streamed back as it arrives, chunk by chunk (a ping-pong
//!   on one request, which the benchmark times through the relay).
//!
//! Under Einhorn: `einhorn-master -b 127.0.0.1:8443,udp -n 1 -d /tmp/h3.sock -- target/debug/examples/h3-hello --tls-cert cert.pem --tls-key key.pem`
//! Try it:        `curl --http3-only -k https://127.0.0.1:8443/` (a curl built with HTTP/3),
//!                then upgrade: `einhorn-master ctl -d /tmp/h3.sock upgrade`.

mod common;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Query;
use axum::routing::get;
use futures_util::StreamExt;

#[derive(Debug, serde::Deserialize)]
struct Download {
    #[serde(default = "default_chunks")]
    chunks: u32,
    #[serde(default = "default_every_ms")]
    every_ms: u64,
}

fn default_chunks() -> u32 {
    10
}

fn default_every_ms() -> u64 {
    100
}

async fn echo(request: axum::extract::Request) -> Body {
    Body::from_stream(request.into_body().into_data_stream())
}

async fn hello() -> String {
    format!("hello from h3-hello pid={}\n", std::process::id())
}

async fn download(Query(download): Query<Download>) -> Body {
    let pid = std::process::id();
    let every = Duration::from_millis(download.every_ms);
    let chunks =
        futures_util::stream::iter(0..download.chunks.min(100_000)).then(move |n| async move {
            if n > 0 {
                tokio::time::sleep(every).await;
            }
            let mut chunk = format!("pid={pid} chunk={n} ").into_bytes();
            chunk.resize(1024, b'.');
            *chunk.last_mut().expect("1 KiB") = b'\n';
            Ok::<_, std::convert::Infallible>(chunk)
        });
    Body::from_stream(chunks)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = common::HttpArgs::parse();
    let _span = common::init_tracing();
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        eprintln!("h3-hello: HTTP/3 needs --tls-cert and --tls-key");
        return std::process::ExitCode::from(2);
    };
    let tls = match einhorn_h3::tls_config(cert, key) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("h3-hello: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let app = Router::new()
        .route("/", get(hello))
        .route("/download", get(download))
        .route("/echo", axum::routing::post(echo));
    let pid = std::process::id();
    let worker = einhorn_h3::run(app, 0)
        .bind(args.bind.clone())
        .tls(tls)
        .drain_timeout(args.drain_timeout())
        .lame_duck(args.lame_duck())
        .on_stop(move || tracing::info!(pid, "on_stop: draining HTTP/3"));
    let worker = common::act_bad_build!(worker, args);
    common::exit_status(worker.await)
}
