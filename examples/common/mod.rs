//! What every example shares: the command line of the examples' contract and logging.
//!
//! Contract (see the book): binds with `auto` unless `--bind SPEC` says otherwise (the socket
//! a manager passed: Einhorn, systemd, Server::Starter; else `:$PORT`, else
//! `127.0.0.1:8000`), `--drain-timeout SECS` bounds the drain, `--lame-duck SECS` keeps
//! serving that long after SIGTERM while `/readyz` answers 503, logs go to stderr through
//! `tracing`, and the exit status is 0 after a graceful stop. `--tls-cert`/`--tls-key` are
//! served by every example that speaks HTTP and refused by the others.

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
}

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
