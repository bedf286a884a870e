//! The server the benchmarks measure: one handler, served either by the framework's own
//! plain serve or by this project's adapter, so that the two differ in nothing else.
//!
//! `bench-server --framework axum|hyper|warp|actix --mode plain|ours --bind 127.0.0.1:0`
//!
//! Plain serve is what a user of the framework writes without this project: `axum::serve`,
//! hyper-util's auto builder in an accept loop, `warp::serve`, actix's `HttpServer`. Ours is
//! `einhorn_<framework>::serve`. Both answer `GET /` with the same few bytes, listen on a
//! socket bound the same way, and print `listening addr=ADDR` on stderr once they accept.
//! SIGTERM stops either.

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Framework {
    Axum,
    Hyper,
    Warp,
    Actix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Plain,
    Ours,
}

#[derive(Debug, clap::Parser)]
struct Args {
    #[arg(long, value_enum)]
    framework: Framework,
    #[arg(long, value_enum)]
    mode: Mode,
    /// A TCP address (port 0: the kernel picks one).
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Install a metrics recorder first (`prometheus`: metrics-exporter-prometheus, without
    /// its HTTP listener), for the cost of the workers' metrics with one.
    #[arg(long)]
    recorder: Option<Recorder>,
    /// `ours` only: how long a keep-alive connection may sit idle, or a request head take,
    /// in seconds (axum, hyper, warp: `header_read_timeout`; actix: `keep_alive` and
    /// `client_request_timeout`). A drain leaves idle connections to their peer up to it.
    #[arg(long)]
    idle_timeout: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Recorder {
    Prometheus,
}

/// The body every variant answers with.
const BODY: &str = "hello from bench-server\n";

/// The handler, as a hyper service function.
async fn hyper_hello(
    _req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    Ok(hyper::Response::new(Full::new(Bytes::from_static(
        BODY.as_bytes(),
    ))))
}

/// The handler, as an axum handler.
async fn axum_hello() -> &'static str {
    BODY
}

/// The handler, as an actix handler.
async fn actix_hello() -> &'static str {
    BODY
}

/// A bound listener, as both modes get it: std, non-blocking.
fn listener(addr: SocketAddr) -> std::net::TcpListener {
    let listener = std::net::TcpListener::bind(addr).expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    eprintln!(
        "listening addr={}",
        listener.local_addr().expect("local address")
    );
    listener
}

/// Lets the benchmark hold thousands of idle connections.
fn raise_fd_limit() {
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn main() {
    let args: Args = clap::Parser::parse();
    raise_fd_limit();
    if args.recorder == Some(Recorder::Prometheus) {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("install the Prometheus recorder");
        // Kept for the process's life, as an application's /metrics route would.
        std::mem::forget(handle);
    }
    let std_listener = listener(args.bind);
    let idle_timeout = args.idle_timeout.map(std::time::Duration::from_secs_f64);
    match args.framework {
        Framework::Actix => actix(args.mode, idle_timeout, std_listener),
        framework => tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(tokio_based(
                framework,
                args.mode,
                idle_timeout,
                std_listener,
            )),
    }
}

async fn tokio_based(
    framework: Framework,
    mode: Mode,
    idle_timeout: Option<std::time::Duration>,
    std_listener: std::net::TcpListener,
) {
    if mode == Mode::Ours {
        // The adapter takes the socket as an inherited one would be: `fd@N`.
        let bind = einhorn_axum::Bind::Fd(std::os::fd::IntoRawFd::into_raw_fd(std_listener));
        let idle = einhorn_hyper::DEFAULT_HEADER_READ_TIMEOUT;
        let idle = idle_timeout.unwrap_or(idle);
        let result = match framework {
            Framework::Axum => {
                let app = axum::Router::new().route("/", axum::routing::get(axum_hello));
                einhorn_axum::serve(app)
                    .bind(bind)
                    .header_read_timeout(idle)
                    .await
            }
            Framework::Hyper => {
                einhorn_hyper::serve(hyper::service::service_fn(hyper_hello))
                    .bind(bind)
                    .header_read_timeout(idle)
                    .await
            }
            Framework::Warp => {
                use warp::Filter;
                let hello = warp::path::end().map(|| BODY);
                einhorn_warp::serve(hello)
                    .bind(bind)
                    .header_read_timeout(idle)
                    .await
            }
            Framework::Actix => unreachable!("actix runs on its own runtime"),
        };
        if let Err(e) = result {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        return;
    }
    let listener = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM");
    match framework {
        Framework::Axum => {
            let app = axum::Router::new().route("/", axum::routing::get(axum_hello));
            tokio::select! {
                _ = axum::serve(listener, app).into_future() => {}
                _ = term.recv() => {}
            }
        }
        Framework::Hyper => {
            let serve = async {
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let builder = builder.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(hyper_hello);
                        let _ = builder
                            .serve_connection_with_upgrades(
                                hyper_util::rt::TokioIo::new(stream),
                                service,
                            )
                            .await;
                    });
                }
            };
            tokio::select! {
                () = serve => {}
                _ = term.recv() => {}
            }
        }
        Framework::Warp => {
            use warp::Filter;
            let hello = warp::path::end().map(|| BODY);
            tokio::select! {
                () = warp::serve(hello).incoming(listener).run() => {}
                _ = term.recv() => {}
            }
        }
        Framework::Actix => unreachable!("actix runs on its own runtime"),
    }
}

fn actix(
    mode: Mode,
    idle_timeout: Option<std::time::Duration>,
    std_listener: std::net::TcpListener,
) {
    let app = || actix_web::App::new().route("/", actix_web::web::get().to(actix_hello));
    if mode == Mode::Ours {
        let bind = einhorn_actix::Bind::Fd(std::os::fd::IntoRawFd::into_raw_fd(std_listener));
        if let Err(e) = einhorn_actix::serve(app)
            .bind(bind)
            .configure(move |server| match idle_timeout {
                Some(idle) => server
                    .workers(2)
                    .keep_alive(idle)
                    .client_request_timeout(idle),
                None => server.workers(2),
            })
            .run()
        {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        return;
    }
    let ran = actix_web::rt::System::new().block_on(async move {
        actix_web::HttpServer::new(app)
            .workers(2)
            .listen(std_listener)?
            .run()
            .await
    });
    if let Err(e) = ran {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
