//! What every example shares: the command line of the examples' contract and logging.
//!
//! Contract (see the book): binds with `auto` unless `--bind SPEC` says otherwise (the socket
//! a manager passed: Einhorn, systemd, Server::Starter; else `:$PORT`, else
//! `127.0.0.1:8000`), `--drain-timeout SECS` bounds the drain, `--lame-duck SECS` keeps
//! serving that long after SIGTERM while `/readyz` answers 503, logs go to stderr through
//! `tracing`, and the exit status is 0 after a graceful stop. `--tls-cert`/`--tls-key` are
//! served by every example that speaks HTTP and refused by the others.
//!
//! To act a bad build, for the tests of upgrades that must fail or roll back, every HTTP
//! example also takes `--warm-up-ms MS` (its warm-up takes that long), `--warm-up-fail` (the
//! warm-up returns an error; `--warm-up-timeout SECS` bounds it), `--exit-after-ack MS` (it exits 1 that long after its ACK),
//! `--fail-percent P` (`GET /` answers 500 to P% of requests, spread evenly), `--delay-ms MS`
//! (`GET /` answers that late) and `--stall-after-ack` (`GET /` is never answered).

use std::time::Duration;

use graceful_listener::Bind;

/// The options every example takes. An example that does not speak HTTP takes only these:
/// `--tls-cert` and `--tls-key` are then refused by the parser, never silently ignored.
#[derive(Debug, clap::Parser)]
pub(crate) struct Args {
    /// Where to listen: auto, einhorn@N, fd@N, HOST:PORT, [V6]:PORT, :PORT, unix:PATH.
    #[arg(long, default_value = "auto")]
    pub(crate) bind: Bind,
    /// Longest drain, in seconds, before open connections are forced closed.
    #[arg(long, default_value_t = 30.0)]
    pub(crate) drain_timeout: f64,
    /// Seconds to keep serving after SIGTERM, not ready (Kubernetes' lame duck).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) lame_duck: f64,
}

/// The options of the examples that speak HTTP: every example's, and TLS, which each of them
/// serves when given.
#[derive(Debug, clap::Parser)]
#[allow(dead_code)] // the examples that do not speak HTTP take `Args` alone
pub(crate) struct HttpArgs {
    #[command(flatten)]
    pub(crate) worker: Args,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub(crate) tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub(crate) tls_key: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub(crate) bad_build: BadBuild,
}

/// How an example acts a bad build, for the tests of upgrades that must fail or roll back.
#[derive(Debug, clap::Args)]
pub(crate) struct BadBuild {
    /// The warm-up takes this many milliseconds (the worker ACKs only after it).
    #[arg(long, value_name = "MS")]
    pub(crate) warm_up_ms: Option<u64>,
    /// The warm-up fails: the worker exits 1 without ever serving.
    #[arg(long)]
    pub(crate) warm_up_fail: bool,
    /// The longest the warm-up may take, in seconds (the library's default: 60).
    #[arg(long, value_name = "SECS")]
    pub(crate) warm_up_timeout: Option<f64>,
    /// Exit 1 this many milliseconds after the ACK (a build that crashes once serving).
    #[arg(long, value_name = "MS")]
    pub(crate) exit_after_ack: Option<u64>,
    /// `GET /` answers 500 to this percentage of requests, spread evenly.
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u8).range(0..=100), default_value_t = 0)]
    pub(crate) fail_percent: u8,
    /// `GET /` answers this many milliseconds late (a build that got slow).
    #[arg(long, value_name = "MS")]
    pub(crate) delay_ms: Option<u64>,
    /// `GET /` is never answered (a build that ACKs, accepts, and hangs).
    #[arg(long)]
    pub(crate) stall_after_ack: bool,
}

/// The share of `GET /` answered 500 (`--fail-percent`).
static FAIL_PERCENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// `GET /` requests so far, for spreading the failures evenly.
static ROOT_REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How late `GET /` is answered, in milliseconds (`--delay-ms`); `u64::MAX`: never
/// (`--stall-after-ack`).
static DELAY_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Waits before answering `GET /` as the bad build says: `--delay-ms`, or forever with
/// `--stall-after-ack`.
#[allow(dead_code)] // the examples that do not speak HTTP are never slow on purpose
pub(crate) async fn act_slow() {
    match DELAY_MS.load(std::sync::atomic::Ordering::Relaxed) {
        0 => {}
        u64::MAX => std::future::pending().await,
        ms => tokio::time::sleep(Duration::from_millis(ms)).await,
    }
}

/// Sets the share of `GET /` answered 500 (`--fail-percent`).
pub(crate) fn set_fail_percent(percent: u8) {
    FAIL_PERCENT.store(percent.into(), std::sync::atomic::Ordering::Relaxed);
}

/// Whether this `GET /` is one of the `--fail-percent` that answer 500: request `n` fails
/// when `n * P / 100` steps up, so that any 100 consecutive requests hold exactly P failures.
#[allow(dead_code)] // the examples that do not speak HTTP never fail on purpose
pub(crate) fn should_fail() -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    let percent = FAIL_PERCENT.load(Relaxed);
    if percent == 0 {
        return false;
    }
    let n = ROOT_REQUESTS.fetch_add(1, Relaxed);
    (n + 1) * percent / 100 != n * percent / 100
}

/// Gives a worker builder the bad build's warm-up and exit after the ACK (any builder: they
/// all have the same option methods).
#[allow(unused_macros)]
macro_rules! act_bad_build {
    ($worker:expr, $args:expr) => {{
        let bad = &$args.bad_build;
        let mut worker = $worker;
        if bad.warm_up_ms.is_some() || bad.warm_up_fail {
            let (ms, fail) = (bad.warm_up_ms.unwrap_or(0), bad.warm_up_fail);
            worker = worker.warm_up(move || async move {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                if fail {
                    return Err(std::io::Error::other(
                        "the database at db.internal:5432 refused the connection (--warm-up-fail)",
                    ));
                }
                Ok(())
            });
        }
        if let Some(secs) = bad.warm_up_timeout {
            let timeout = std::time::Duration::try_from_secs_f64(secs).unwrap_or_default();
            worker = worker.warm_up_timeout(timeout);
        }
        if let Some(ms) = bad.exit_after_ack {
            worker = worker.on_ready(move || {
                std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                    eprintln!("exiting 1, {ms}ms after the ACK (--exit-after-ack)");
                    std::process::exit(1);
                });
            });
        }
        worker
    }};
}
#[allow(unused_imports)]
pub(crate) use act_bad_build;

impl std::ops::Deref for HttpArgs {
    type Target = Args;

    fn deref(&self) -> &Args {
        &self.worker
    }
}

#[allow(dead_code)] // the examples that do not speak HTTP take `Args` alone
impl HttpArgs {
    /// Parses the command line, exiting with a usage message on bad input.
    pub(crate) fn parse() -> HttpArgs {
        let mut args: HttpArgs = clap::Parser::parse();
        args.worker = args.worker.validated();
        set_fail_percent(args.bad_build.fail_percent);
        let delay = match (args.bad_build.stall_after_ack, args.bad_build.delay_ms) {
            (true, _) => u64::MAX,
            (false, ms) => ms.unwrap_or(0),
        };
        DELAY_MS.store(delay, std::sync::atomic::Ordering::Relaxed);
        args
    }

    /// The TLS configuration of --tls-cert and --tls-key, if given; exits with a usage
    /// message naming the file when it cannot be used.
    pub(crate) fn tls(&self) -> Option<std::sync::Arc<rustls::ServerConfig>> {
        let (cert, key) = (self.tls_cert.as_ref()?, self.tls_key.as_ref()?);
        match graceful_listener::tls::server_config(cert, key, &[b"h2", b"http/1.1"]) {
            Ok(config) => Some(config),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(2);
            }
        }
    }
}

impl Args {
    /// Parses the command line, exiting with a usage message on bad input.
    #[allow(dead_code)] // not every example parses these alone
    pub(crate) fn parse() -> Args {
        let args: Args = clap::Parser::parse();
        args.validated()
    }

    /// Checks what clap cannot, exiting with a usage message on bad input.
    pub(crate) fn validated(self) -> Args {
        for (flag, value) in [
            ("--drain-timeout", self.drain_timeout),
            ("--lame-duck", self.lame_duck),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                eprintln!("error: {flag} {value} is not a number of seconds");
                std::process::exit(2);
            }
        }
        self
    }

    /// The drain timeout as a duration.
    pub(crate) fn drain_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.drain_timeout)
    }

    /// The lame duck as a duration.
    pub(crate) fn lame_duck(&self) -> Duration {
        Duration::from_secs_f64(self.lame_duck)
    }
}

/// Logs to stderr at `info` (or as `RUST_LOG` says), every line tagged with this pid so
/// that the lines of several workers under one master can be told apart.
#[allow(dead_code)] // the self-hosted example tags only its workers' lines
pub(crate) fn init_tracing() -> tracing::span::EnteredSpan {
    init_logger();
    tracing::info_span!("worker", pid = std::process::id()).entered()
}

/// Logs to stderr at `info` (or as `RUST_LOG` says), untagged.
pub(crate) fn init_logger() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

/// Turns the end of a run into the process's exit status, saying why on failure.
pub(crate) fn exit_status(
    result: Result<graceful_listener::RunReport, graceful_listener::RunError>,
) -> std::process::ExitCode {
    match result {
        Ok(report) => {
            tracing::info!(?report, "exiting");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "exiting");
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
