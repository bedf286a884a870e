//! A plain hyper service under Einhorn, following the examples' contract: `GET /` answers
//! with this worker's pid, `GET /sleep/<ms>` answers after that long, `GET /until-stop`
//! answers when the worker stops, `GET /readyz` answers 200 while ready and 503 in the lame
//! duck.
//!
//! Under Einhorn: `einhorn-master -m manual -b 127.0.0.1:8000 -- target/debug/examples/hyper-hello`
//! On its own:    `cargo run --example hyper-hello -- --bind 127.0.0.1:8000`

mod common;

use std::convert::Infallible;
use std::time::Duration;

use einhorn_hyper::ShutdownSignal;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let pid = std::process::id();
    let path = req.uri().path();
    if path == "/" {
        common::act_slow().await;
    }
    let (status, body) = if path == "/" && common::should_fail() {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "failing on purpose\n".to_owned(),
        )
    } else if path == "/" {
        (StatusCode::OK, format!("hello from hyper pid={pid}\n"))
    } else if let Some(ms) = path
        .strip_prefix("/sleep/")
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        (StatusCode::OK, format!("slept {ms}ms pid={pid}\n"))
    } else if path == "/readyz" {
        return Ok(einhorn_hyper::readyz());
    } else if path == "/until-stop" {
        ShutdownSignal::current().stopping().await;
        (StatusCode::OK, format!("stopping pid={pid}\n"))
    } else {
        (StatusCode::NOT_FOUND, "not found\n".to_owned())
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    Ok(response)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = common::HttpArgs::parse();
    let _span = common::init_tracing();
    let mut worker = einhorn_hyper::serve(service_fn(handle))
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
