//! The app of the `self-hosted` examples, following the examples' contract: `GET /` answers
//! with `version=<V> pid=<worker pid>`, `GET /sleep/<ms>` answers after that long,
//! `--drain-timeout` bounds a worker's drain, logs go to stderr, exit 0 after a graceful stop.

use std::future::IntoFuture;
use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use einhorn_master::self_hosted::SelfHosted;
use graceful_listener::Bind;

/// The command line: the master's settings and the workers' (every worker gets the same).
#[derive(Debug, clap::Parser)]
struct Args {
    /// Where the master listens: HOST:PORT (port 0: any free port), `[V6]:PORT`; options
    /// `,r` (SO_REUSEADDR) and `,n`. Repeat for more listeners; workers serve the first.
    #[arg(long, default_value = "127.0.0.1:8000")]
    bind: Vec<String>,
    /// Number of workers.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Longest drain of a worker, in seconds, before open connections are forced closed.
    #[arg(long, default_value_t = 30.0)]
    drain_timeout: f64,
    /// An upgrade fails when no new worker is ready for this many seconds.
    #[arg(long, default_value_t = 60.0)]
    upgrade_timeout: f64,
    /// The master's command socket [default: einhorn-self-hosted.sock in the user's runtime
    /// directory, $XDG_RUNTIME_DIR or $TMPDIR/einhorn-UID/].
    #[arg(long)]
    socket: Option<std::path::PathBuf>,
    /// Version 2 of the app runs this many workers instead of --workers: the tests' new
    /// build with a new setting, taken by the master when it reloads into it.
    #[arg(long)]
    v2_workers: Option<usize>,
    /// Version 2 of the app listens here instead of --bind (repeatable).
    #[arg(long)]
    v2_bind: Vec<String>,
    /// Canary upgrades on SIGHUP: this many new workers first, beside the old ones.
    #[arg(long)]
    canary: Option<usize>,
    /// How long the canaries serve beside the old workers, in seconds (with --canary).
    #[arg(long, default_value_t = 10.0)]
    soak: f64,
    /// Serve the master's metrics at GET http://HOST:PORT/metrics.
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
    /// Every worker warms up this long before it serves and ACKs (a slow start).
    #[arg(long)]
    warm_up_ms: Option<u64>,
    /// Version 2 of the app answers 500 to this percentage of `GET /` (a bad build).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    v2_fail_percent: u8,
    /// Version 2 of the app exits 1 this many milliseconds after its ACK (a bad build).
    #[arg(long)]
    v2_exit_after_ack: Option<u64>,
}

/// Runs the app as version `version`: the master, or (in a worker) the server.
pub(crate) fn main(version: &'static str) -> ExitCode {
    let args: Args = clap::Parser::parse();
    for (flag, value) in [
        ("--drain-timeout", args.drain_timeout),
        ("--upgrade-timeout", args.upgrade_timeout),
        ("--soak", args.soak),
    ] {
        if !(value.is_finite() && value >= 0.0) {
            eprintln!("error: {flag} {value} is not a number of seconds");
            return ExitCode::from(2);
        }
    }
    crate::common::init_logger();

    // First, before any runtime: in the master this never returns.
    let (binds, workers) = match version {
        "2" if !args.v2_bind.is_empty() => (&args.v2_bind, args.v2_workers),
        "2" => (&args.bind, args.v2_workers),
        _ => (&args.bind, None),
    };
    let mut master = binds
        .iter()
        .fold(SelfHosted::new(), |master, spec| master.bind(spec))
        .workers(workers.unwrap_or(args.workers))
        .upgrade_timeout(Duration::from_secs_f64(args.upgrade_timeout));
    if let Some(socket) = &args.socket {
        master = master.command_socket(socket);
    }
    if let Some(canary) = args.canary {
        master = master.canary(canary, Duration::from_secs_f64(args.soak));
    }
    if let Some(addr) = args.metrics {
        master = master.metrics(addr);
    }
    if let Err(e) = master.start() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }

    // A worker from here on.
    let _span = tracing::info_span!("worker", pid = std::process::id()).entered();
    tracing::info!("self-hosted version {version} starting");
    let warm_up_ms = args.warm_up_ms;
    let exit_after_ack = if version == "2" {
        crate::common::set_fail_percent(args.v2_fail_percent);
        args.v2_exit_after_ack
    } else {
        None
    };
    let app = Router::new()
        .route("/", get(move || hello(version)))
        .route("/sleep/{ms}", get(sleep));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut worker = einhorn_axum::serve(app)
        .bind(Bind::Einhorn(0))
        .drain_timeout(Duration::from_secs_f64(args.drain_timeout))
        .on_stop(|| tracing::info!("on_stop: accepting stopped, draining"))
        .on_ready(move || {
            if let Some(ms) = exit_after_ack {
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(ms));
                    eprintln!("exiting 1, {ms}ms after the ACK (--v2-exit-after-ack)");
                    std::process::exit(1);
                });
            }
        });
    if let Some(ms) = warm_up_ms {
        worker = worker.warm_up(move || async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<(), std::io::Error>(())
        });
    }
    let result = runtime.block_on(worker.into_future());
    crate::common::exit_status(result)
}

async fn hello(version: &'static str) -> (axum::http::StatusCode, String) {
    if crate::common::should_fail() {
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "failing on purpose\n".into(),
        );
    }
    let pid = std::process::id();
    let body = format!("hello from self-hosted version={version} pid={pid}\n");
    (axum::http::StatusCode::OK, body)
}

async fn sleep(Path(ms): Path<u64>) -> String {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("slept {ms}ms pid={}\n", std::process::id())
}
