//! A warp filter under Einhorn, following the examples' contract: `GET /` answers with this
//! worker's pid, `GET /sleep/<ms>` answers after that long, `GET /until-stop` answers when the
//! worker stops, `GET /readyz` answers 200 while ready and 503 in the lame duck.
//!
//! Under Einhorn: `einhorn-master -m manual -b 127.0.0.1:8000 -- target/debug/examples/warp-hello`
//! On its own:    `cargo run --example warp-hello -- --bind 127.0.0.1:8000`

mod common;

use std::time::Duration;

use warp::Filter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = common::HttpArgs::parse();
    let _span = common::init_tracing();
    let hello = warp::path::end().then(|| async {
        common::act_slow().await;
        if common::should_fail() {
            let reply = warp::reply::with_status(
                "failing on purpose\n".to_owned(),
                warp::http::StatusCode::INTERNAL_SERVER_ERROR,
            );
            return warp::reply::Reply::into_response(reply);
        }
        warp::reply::Reply::into_response(format!("hello from warp pid={}\n", std::process::id()))
    });
    let sleep = warp::path!("sleep" / u64).then(|ms| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        format!("slept {ms}ms pid={}\n", std::process::id())
    });
    let until_stop = warp::path!("until-stop")
        .and(einhorn_warp::stop_signal())
        .then(|signal: einhorn_warp::ShutdownSignal| async move {
            signal.stopping().await;
            format!("stopping pid={}\n", std::process::id())
        });
    let routes = einhorn_warp::readyz().or(warp::get().and(hello.or(sleep).or(until_stop)));
    let mut worker = einhorn_warp::serve(routes)
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
