//! An actix-web app under Einhorn, following the examples' contract: `GET /` answers with
//! this worker's pid, `GET /sleep/<ms>` answers after that long, `GET /until-stop` answers
//! when the worker stops, `GET /readyz` answers 200 while ready and 503 in the lame duck.
//!
//! Under Einhorn: `einhorn-master -m manual -b 127.0.0.1:8000 -- target/debug/examples/actix-hello`
//! On its own:    `cargo run --example actix-hello -- --bind 127.0.0.1:8000`
//! Try it:        `curl localhost:8000/`, then upgrade the master while a load runs: no
//!                request fails, and the pid in the answers changes.

mod common;

use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, web};
use einhorn_actix::StopSignal;

async fn hello(req: HttpRequest) -> HttpResponse {
    common::act_slow().await;
    if common::should_fail() {
        return HttpResponse::InternalServerError().body("failing on purpose\n");
    }
    let peer = req
        .peer_addr()
        .map_or_else(|| "a unix client".to_owned(), |a| a.to_string());
    HttpResponse::Ok().body(format!(
        "hello from actix pid={} to {peer}\n",
        std::process::id()
    ))
}

async fn sleep(ms: web::Path<u64>) -> String {
    let ms = ms.into_inner();
    actix_web::rt::time::sleep(Duration::from_millis(ms)).await;
    format!("slept {ms}ms pid={}\n", std::process::id())
}

async fn until_stop(StopSignal(signal): StopSignal) -> String {
    signal.stopping().await;
    format!("stopping pid={}\n", std::process::id())
}

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    let args = common::HttpArgs::parse();
    let _span = common::init_tracing();
    let app = || {
        App::new()
            .route("/", web::get().to(hello))
            .route("/sleep/{ms}", web::get().to(sleep))
            .route("/until-stop", web::get().to(until_stop))
            .route("/readyz", web::get().to(einhorn_actix::readyz))
    };
    let mut worker = einhorn_actix::serve(app)
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
