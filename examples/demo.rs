//! The demo: zero-downtime upgrades, seen from a client, beside today's way.
//!
//! `cargo run --release --example demo` starts `einhorn-master` with N `axum-hello` workers
//! on a loopback port, hammers it with keep-alive HTTP/1.1 load, performs K smooth upgrades
//! through the master's command socket, and prints what the clients saw. Then it does the
//! same with `axum-baseline` (the Einhorn fd taken by hand, a manual ACK, and
//! `axum::serve(..).with_graceful_shutdown(SIGUSR2)`): same master, same load, same upgrades.
//! With `--framework actix`, the same with `actix-hello` beside `actix-baseline` (actix's own
//! graceful stop on SIGUSR2).
//!
//! The workers and the master are the workspace's own binaries; when run through `cargo run`,
//! the demo builds them first (same profile) unless `--no-build` is given.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use graceful_listener_suite::harness::{example, is_alive, wait_until};
use graceful_listener_suite::load::{self, FailureKind, LoadConfig, LoadReport};
use graceful_listener_suite::master::Master;
use serde::Serialize;

#[derive(Debug, clap::Parser)]
#[command(
    about = "Zero-downtime upgrades under keep-alive load: graceful-listener beside today's way"
)]
struct Args {
    /// Workers under the master.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Smooth upgrades to perform, for each kind of worker.
    #[arg(long, default_value_t = 5)]
    upgrades: usize,
    /// Keep-alive connections the load client keeps busy.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds of steady load before the first upgrade and after each one.
    #[arg(long, default_value_t = 1.5)]
    interval: f64,
    /// Which workers to run: both (ours, then the baseline), ours, or baseline.
    #[arg(long, value_enum, default_value = "both")]
    only: Only,
    /// Which framework the workers are written with.
    #[arg(long, value_enum, default_value = "axum")]
    framework: Framework,
    /// Print the summary as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    json: bool,
    /// Do not build the master and workers first: use the binaries next to this one.
    #[arg(long)]
    no_build: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Only {
    Both,
    Ours,
    Baseline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Framework {
    Axum,
    Actix,
}

impl Framework {
    fn name(self) -> &'static str {
        match self {
            Framework::Axum => "axum",
            Framework::Actix => "actix-web",
        }
    }

    /// Ours, then the baseline.
    fn contenders(self) -> [Contender; 2] {
        match self {
            Framework::Axum => [
                Contender {
                    key: "ours",
                    title: "graceful-listener (einhorn-axum)",
                    example: "axum-hello",
                },
                Contender {
                    key: "baseline",
                    title: "baseline (axum::serve + with_graceful_shutdown)",
                    example: "axum-baseline",
                },
            ],
            Framework::Actix => [
                Contender {
                    key: "ours",
                    title: "graceful-listener (einhorn-actix)",
                    example: "actix-hello",
                },
                Contender {
                    key: "baseline",
                    title: "baseline (HttpServer::listen + stop(true))",
                    example: "actix-baseline",
                },
            ],
        }
    }
}

/// One kind of worker to put under the master.
#[derive(Clone, Copy)]
struct Contender {
    key: &'static str,
    title: &'static str,
    example: &'static str,
}

/// What one upgrade did.
#[derive(Debug, Serialize)]
struct UpgradeResult {
    old_pids: Vec<i32>,
    new_pids: Vec<i32>,
    /// From sending `upgrade` to `Upgrade done` (every new worker ACKed).
    acked_ms: u64,
    /// From sending `upgrade` until every old worker had exited.
    old_exited_ms: u64,
    /// Every pid was replaced: new pids all fresh, old ones all gone, and once the old ones
    /// were gone only new pids answered.
    replaced_every_pid: bool,
    /// Pids that answered in this upgrade's window (or, for the last, after it) that were
    /// neither its old nor its new workers.
    unexpected_pids: Vec<i32>,
    failed_requests: u64,
    error: Option<String>,
}

/// Request outcomes, by kind.
#[derive(Debug, Default, Serialize)]
struct Counts {
    requests: u64,
    ok: u64,
    failed: u64,
    connect_errors: u64,
    write_errors: u64,
    read_errors: u64,
    timeouts: u64,
    non_2xx: u64,
    other_errors: u64,
}

impl Counts {
    fn of(report: &LoadReport) -> Counts {
        let of = |kind| report.failures_of(kind);
        Counts {
            requests: report.ok + report.failed_requests(),
            ok: report.ok,
            failed: report.failed(),
            connect_errors: of(FailureKind::Connect),
            write_errors: of(FailureKind::Write),
            read_errors: of(FailureKind::Reset) + of(FailureKind::Closed),
            timeouts: of(FailureKind::Timeout),
            non_2xx: of(FailureKind::Status),
            other_errors: of(FailureKind::Other),
        }
    }
}

/// Median and 99th percentile, in milliseconds.
#[derive(Debug, Default, Serialize)]
struct Latency {
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

impl Latency {
    fn of(report: &LoadReport) -> Latency {
        let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 1e5).round() / 100.0);
        Latency {
            p50_ms: ms(report.p50()),
            p99_ms: ms(report.p99()),
        }
    }
}

/// Everything measured for one kind of worker.
#[derive(Debug, Serialize)]
struct ContenderResult {
    key: &'static str,
    title: &'static str,
    counts: Counts,
    latency_outside_upgrades: Latency,
    latency_during_upgrades: Latency,
    seconds: f64,
    upgrades: Vec<UpgradeResult>,
    first_errors: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Summary {
    framework: Framework,
    workers: usize,
    upgrades: usize,
    connections: usize,
    results: Vec<ContenderResult>,
}

fn main() -> ExitCode {
    let args: Args = clap::Parser::parse();
    if args.workers == 0
        || args.connections == 0
        || !(args.interval.is_finite() && args.interval >= 0.0)
    {
        eprintln!(
            "error: --workers and --connections must be at least 1, --interval a number of seconds"
        );
        return ExitCode::from(2);
    }
    let [ours, baseline] = args.framework.contenders();
    if !args.no_build
        && let Err(e) = build_binaries(&[ours, baseline])
    {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let contenders: Vec<Contender> = match args.only {
        Only::Both => vec![ours, baseline],
        Only::Ours => vec![ours],
        Only::Baseline => vec![baseline],
    };
    eprintln!(
        "demo: {} {} workers under einhorn-master on 127.0.0.1, {} keep-alive connections, {} upgrades each",
        args.workers,
        args.framework.name(),
        args.connections,
        args.upgrades
    );
    let mut results = Vec::new();
    for contender in &contenders {
        match run_contender(contender, &args) {
            Ok(result) => results.push(result),
            Err(e) => {
                eprintln!("\nerror: {}: {e}", contender.title);
                return ExitCode::FAILURE;
            }
        }
    }
    let summary = Summary {
        framework: args.framework,
        workers: args.workers,
        upgrades: args.upgrades,
        connections: args.connections,
        results,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).expect("summary serializes")
        );
    } else {
        print!("{}", render(&summary));
    }
    ExitCode::SUCCESS
}

/// Builds the master and the contenders' workers with the profile this demo was built with,
/// through the cargo that runs us (`cargo run` sets `CARGO`).
fn build_binaries(contenders: &[Contender]) -> Result<(), String> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        // Not run by cargo: the binaries must be there already; `example`/`binary` say so if not.
        return Ok(());
    };
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let examples: Vec<&str> = contenders.iter().map(|c| c.example).collect();
    eprintln!("demo: building einhorn-master, {}", examples.join(" and "));
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(manifest);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    cmd.args(["-p", "graceful-listener-suite", "-p", "einhorn-master"])
        .args(examples.iter().flat_map(|e| ["--example", e]))
        .args(["--bin", "einhorn-master"]);
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building the demo's binaries failed ({status})"));
    }
    Ok(())
}

const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);

/// `einhorn-master -b 127.0.0.1:0 -n WORKERS -m manual -- WORKER --drain-timeout 10`, once
/// every worker has ACKed.
fn start_master(contender: &Contender, workers: usize) -> Master {
    let n = workers.to_string();
    let worker = [
        example(contender.example).into_os_string(),
        "--drain-timeout".into(),
        "10".into(),
    ];
    let flags = ["-b", "127.0.0.1:0", "-n", &n, "-m", "manual", "-q"];
    let master = Master::start_with(&flags, &worker, |cmd| {
        cmd.env("RUST_LOG", "warn");
    });
    master.wait_serving(workers);
    master
}

/// The pids of the workers serving now, sorted.
fn serving_pids(master: &Master) -> Result<Vec<i32>, String> {
    let state = einhorn_master::client::state(&master.socket, CONTROL_TIMEOUT)
        .map_err(|e| e.to_string())?;
    let mut pids = state.serving_pids();
    pids.sort_unstable();
    Ok(pids)
}

/// Stops the master gracefully (SIGINT: every worker drains) and waits for it.
fn stop_master(mut master: Master) -> Result<(), String> {
    match master.stop(Duration::from_secs(30)) {
        Some(status) if status.success() => Ok(()),
        Some(status) => Err(format!(
            "einhorn-master exited with {status}:\n{}",
            master.output()
        )),
        None => Err("einhorn-master did not stop within 30 s".into()),
    }
}

fn run_contender(contender: &Contender, args: &Args) -> Result<ContenderResult, String> {
    let master = start_master(contender, args.workers);
    let interval = Duration::from_secs_f64(args.interval);
    let started = Instant::now();
    let load = load::start(
        LoadConfig::new(master.addr(0))
            .connections(args.connections)
            .duration(Duration::from_secs(3600))
            .timeout(Duration::from_secs(5)),
    );
    let progress = Progress::new(contender, args.workers, args.upgrades);
    let mut outside = LoadReport::default();
    let mut during = LoadReport::default();
    let mut mark = load.snapshot();
    let mut upgrades = Vec::new();
    for k in 1..=args.upgrades {
        progress.steady(k, interval, &load);
        let before = load.snapshot();
        outside.absorb(before.since(&mark));
        let result = upgrade(&master, &load, &before);
        let after = load.snapshot();
        let window = after.since(&before);
        let upgrade_result = UpgradeResult {
            failed_requests: window.failed(),
            ..result
        };
        during.absorb(window);
        mark = after;
        progress.upgraded(k, &upgrade_result, &load);
        upgrades.push(upgrade_result);
    }
    progress.steady(args.upgrades + 1, interval, &load);
    let end = load.stop();
    outside.absorb(end.since(&mark));
    let seconds = started.elapsed().as_secs_f64();
    progress.finish();
    // The last gap shows whether only the newest workers answered at the end.
    if let (Some(last), Ok(serving)) = (upgrades.last_mut(), serving_pids(&master)) {
        // Old workers exit only once their last response is sent, but the client may read it
        // after the mark: an answer from the last old generation is not a stray.
        let after_last: BTreeSet<i32> = end.since(&mark).pids.keys().map(|&p| p as i32).collect();
        let strays: Vec<i32> = after_last
            .into_iter()
            .filter(|pid| !serving.contains(pid) && !last.old_pids.contains(pid))
            .collect();
        last.replaced_every_pid &= strays.is_empty();
        last.unexpected_pids.extend(strays);
    }
    stop_master(master)?;
    Ok(ContenderResult {
        key: contender.key,
        title: contender.title,
        counts: Counts::of(&end),
        latency_outside_upgrades: Latency::of(&outside),
        latency_during_upgrades: Latency::of(&during),
        seconds,
        upgrades,
        first_errors: end.first_errors.clone(),
    })
}

/// Performs one smooth upgrade and waits for every old worker to exit.
fn upgrade(master: &Master, load: &load::Load, before: &LoadReport) -> UpgradeResult {
    let old_pids = serving_pids(master).unwrap_or_default();
    let started = Instant::now();
    let outcome = einhorn_master::client::upgrade(&master.socket, CONTROL_TIMEOUT);
    let acked_ms = started.elapsed().as_millis() as u64;
    let mut error = outcome.err().map(|e| e.to_string());
    let exited = wait_until(Duration::from_secs(30), || {
        old_pids.iter().all(|&pid| !is_alive(pid))
    });
    let old_exited_ms = started.elapsed().as_millis() as u64;
    if !exited && error.is_none() {
        error = Some("old workers still alive 30 s after the upgrade".into());
    }
    let new_pids = serving_pids(master).unwrap_or_default();
    // Once the old workers are gone, only new ones may answer.
    let settled = load.snapshot();
    let recent = settled.since(before);
    let fresh =
        new_pids.len() == old_pids.len() && new_pids.iter().all(|pid| !old_pids.contains(pid));
    let unexpected_pids: Vec<i32> = recent
        .pids
        .keys()
        .map(|&pid| pid as i32)
        .filter(|pid| !old_pids.contains(pid) && !new_pids.contains(pid))
        .collect();
    UpgradeResult {
        replaced_every_pid: fresh && exited && unexpected_pids.is_empty(),
        unexpected_pids,
        old_pids,
        new_pids,
        acked_ms,
        old_exited_ms,
        failed_requests: 0,
        error,
    }
}

/// One line of progress on stderr, rewritten in place on a terminal.
struct Progress {
    key: &'static str,
    upgrades: usize,
    tty: bool,
}

impl Progress {
    fn new(contender: &Contender, workers: usize, upgrades: usize) -> Progress {
        eprintln!("\n{}: {workers} workers up", contender.title);
        Progress {
            key: contender.key,
            upgrades,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn line(&self, text: String) {
        if self.tty {
            eprint!("\r\x1b[2K{text}");
            let _ = std::io::stderr().flush();
        } else {
            eprintln!("{text}");
        }
    }

    /// Steady load for `interval`, reporting as it goes (on a terminal) or once (otherwise).
    fn steady(&self, next: usize, interval: Duration, load: &load::Load) {
        let until = Instant::now() + interval;
        let what = if next > self.upgrades {
            "final steady load".to_owned()
        } else {
            format!("steady load before upgrade {next}/{}", self.upgrades)
        };
        loop {
            let now = Instant::now();
            if self.tty || now >= until {
                let snap = load.snapshot();
                self.line(format!(
                    "[{}] {what}: {} requests, {} failed",
                    self.key,
                    snap.ok,
                    snap.failed()
                ));
            }
            if now >= until {
                return;
            }
            std::thread::sleep((until - now).min(Duration::from_millis(250)));
        }
    }

    fn upgraded(&self, k: usize, result: &UpgradeResult, load: &load::Load) {
        let snap = load.snapshot();
        self.line(format!(
            "[{}] upgrade {k}/{}: new workers ACKed in {} ms, old exited in {} ms, {} failed during it; {} requests so far",
            self.key, self.upgrades, result.acked_ms, result.old_exited_ms, result.failed_requests, snap.ok
        ));
        if self.tty {
            eprintln!();
        }
    }

    fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

/// The side-by-side summary.
fn render(summary: &Summary) -> String {
    let mut out = String::new();
    let results = &summary.results;
    let width = results.iter().map(|r| r.title.len()).max().unwrap_or(0) + 3;
    let mut row = |label: &str, values: Vec<String>| {
        out.push_str(&format!("{label:<34}"));
        for value in values {
            out.push_str(&format!("{value:<width$}"));
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    };
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
    row("", results.iter().map(|r| r.title.to_owned()).collect());
    row(
        "requests",
        results
            .iter()
            .map(|r| r.counts.requests.to_string())
            .collect(),
    );
    row(
        "failed requests",
        results
            .iter()
            .map(|r| r.counts.failed.to_string())
            .collect(),
    );
    type Field = fn(&Counts) -> u64;
    let kinds: [(&str, Field); 6] = [
        ("  connect errors", |c| c.connect_errors),
        ("  write errors", |c| c.write_errors),
        ("  read errors (reset, closed)", |c| c.read_errors),
        ("  timeouts", |c| c.timeouts),
        ("  non-2xx", |c| c.non_2xx),
        ("  other", |c| c.other_errors),
    ];
    for (label, get) in kinds {
        row(
            label,
            results.iter().map(|r| get(&r.counts).to_string()).collect(),
        );
    }
    type Window = fn(&ContenderResult) -> &Latency;
    let latency: [(&str, Window); 2] = [
        ("p50 / p99 ms, outside upgrades", |r| {
            &r.latency_outside_upgrades
        }),
        ("p50 / p99 ms, during upgrades", |r| {
            &r.latency_during_upgrades
        }),
    ];
    for (label, get) in latency {
        let cell = |r: &ContenderResult| format!("{} / {}", ms(get(r).p50_ms), ms(get(r).p99_ms));
        row(label, results.iter().map(cell).collect());
    }
    row(
        "every upgrade replaced every pid",
        results
            .iter()
            .map(|r| {
                if r.upgrades.iter().all(|u| u.replaced_every_pid) {
                    "yes"
                } else {
                    "NO"
                }
                .to_owned()
            })
            .collect(),
    );
    for r in results {
        out.push_str(&format!("\n{}: per upgrade\n", r.title));
        let pids = |p: &[i32]| p.iter().map(i32::to_string).collect::<Vec<_>>().join(" ");
        let changes: Vec<String> = r
            .upgrades
            .iter()
            .map(|u| format!("{} -> {}", pids(&u.old_pids), pids(&u.new_pids)))
            .collect();
        let w = changes.iter().map(String::len).max().unwrap_or(0).max(20);
        out.push_str(&format!(
            "  #  {:<w$} all new ACKed  all old exited  failed\n",
            "old pids -> new pids"
        ));
        for (i, (u, change)) in r.upgrades.iter().zip(&changes).enumerate() {
            out.push_str(&format!(
                "  {:<2} {change:<w$} {:>10} ms  {:>11} ms  {:>6}{}\n",
                i + 1,
                u.acked_ms,
                u.old_exited_ms,
                u.failed_requests,
                u.error
                    .as_ref()
                    .map_or(String::new(), |e| format!("  error: {e}")),
            ));
        }
        for error in r.first_errors.iter().take(3) {
            out.push_str(&format!("  first errors: {error}\n"));
        }
    }
    out
}
