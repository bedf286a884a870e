//! The load benchmark: each adapter against its framework's own plain serve with the same
//! handler, and our workers against each framework's baseline through upgrades, on this
//! machine, in one run: `cargo run --release --example bench`.
//!
//! Sections (`--sections`; all but `metrics` by default):
//! - `engine`: requests per second under keep-alive load as the median of the ratios of paired
//!   runs (ours / plain, alternating which goes first) beside the ratio of plain against a
//!   second plain server (A/A, the noise floor); p50 and p99 latency; memory per idle
//!   keep-alive connection (RSS growth over N connections that each served one request);
//!   instructions per request under valgrind's callgrind when valgrind is installed, which
//!   unlike time do not depend on what else the machine is doing. Load from `wrk` when
//!   installed, else from the in-repo client.
//! - `hostile`: N idle keep-alive connections and a client trickling a request head, at the
//!   stop: how long the worker takes to exit, against idle grace + linger + 0.5 s.
//! - `lifecycle`: a worker under Einhorn's protocol: spawn to ACK, SIGUSR2 to exit idle and
//!   busy.
//! - `upgrades`: repeated upgrades of N workers under `einhorn-master` and HTTP/1.1
//!   keep-alive load, ours beside each framework's baseline (axum's
//!   `with_graceful_shutdown`, warp's `graceful`, actix's own stop): failed requests per
//!   upgrade, p99 during upgrades and outside, time to upgrade N workers; and the timeline
//!   picture (`--svg`).
//! - `http2`: upgrades under HTTP/2 load from hyper-util's pooled client and from h2load
//!   (when installed), ours beside axum's baseline.
//! - `tail` (not by default; needs wrk): p50, p99 and p99.9 of 1, 2 and 4 workers under
//!   `einhorn-master` against the framework's baseline (its own plain serve) in one process
//!   with the same total threads (`--threads`, default: the cores), on hello-world and on a
//!   mixed workload (one request in 200 sleeps 20 ms); medians of `--pairs` rounds, and the
//!   median of each round's ratio to the plain serve.
//! - `metrics` (not by default): instructions per request of our adapter with
//!   metrics-exporter-prometheus' recorder installed, against none (needs valgrind).
//! - `h3` (not by default): the HTTP/3 relay's cost: 1 KiB round trips on a request whose
//!   datagrams reach their worker directly against one whose datagrams go through another
//!   worker's relay, p50 and p99 over `--pairs` alternated rounds, and the relaying worker's
//!   CPU time per datagram relayed.
//!
//! `--short` runs a tiny version of everything (a test runs it, to keep it working);
//! `--json` prints the results for machines (`--json-out PATH` writes them to a file).

mod engine;
mod h3;
mod hostile;
mod lifecycle;
mod picture;
mod tail;
mod upgrade;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use graceful_listener_suite::upgrades::UpgradeConfig;
use serde::Serialize;

use engine::{FrameworkResult, LoadShape};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    Engine,
    Hostile,
    Lifecycle,
    Upgrades,
    Http2,
    /// Tail latency of 1, 2 and 4 workers against one process with the same threads.
    Tail,
    /// Instructions per request with a Prometheus recorder installed against none.
    Metrics,
    /// The HTTP/3 relay's added latency and CPU per relayed datagram.
    H3,
}

#[derive(Debug, clap::Parser)]
#[command(about = "Each adapter against its framework's plain serve, same handler, same machine")]
struct Args {
    /// What to measure.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "engine,hostile,lifecycle,upgrades,http2"
    )]
    sections: Vec<Section>,
    /// Frameworks to measure (the upgrades compare axum, warp and actix with their
    /// baselines; http2 compares axum).
    #[arg(long, value_delimiter = ',', default_value = "axum,hyper,warp,actix")]
    frameworks: Vec<String>,
    /// Paired throughput runs per framework (ours/plain and plain/plain each).
    #[arg(long, default_value_t = 11)]
    pairs: usize,
    /// Seconds each throughput run lasts.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Keep-alive connections of the load.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Idle keep-alive connections for the memory and hostile measures.
    #[arg(long, default_value_t = 2000)]
    idle: usize,
    /// Do not count instructions under callgrind, even with valgrind installed.
    #[arg(long)]
    no_callgrind: bool,
    /// Count instructions under callgrind even in a short run.
    #[arg(long)]
    callgrind: bool,
    /// Use the in-repo load client even when wrk is installed.
    #[arg(long)]
    no_wrk: bool,
    /// Workers under the master in the upgrades.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// The master's `--max-unacked` in the upgrades: new workers started ahead of their
    /// ACKs (1: one at a time).
    #[arg(long, default_value_t = 1)]
    max_unacked: usize,
    /// Upgrades per contender.
    #[arg(long, default_value_t = 5)]
    upgrades: usize,
    /// Seconds of steady load before the first upgrade and after each one.
    #[arg(long, default_value_t = 2.0)]
    interval: f64,
    /// Total runtime threads in the tail section (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Runs of each worker in the lifecycle section.
    #[arg(long, default_value_t = 5)]
    lifecycle_runs: usize,
    /// Where to write the timeline picture of the first framework's upgrades (SVG).
    #[arg(long, default_value = "target/bench/upgrade-timeline.svg")]
    svg: PathBuf,
    /// A tiny run of everything, to check the benchmark works.
    #[arg(long)]
    short: bool,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Also write the JSON results to this file (tests read it there: stdout and stderr
    /// interleave when both are captured).
    #[arg(long)]
    json_out: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct HostileResult {
    framework: String,
    #[serde(flatten)]
    result: hostile::Hostile,
}

#[derive(Debug, Serialize)]
struct LifecycleResult {
    framework: String,
    #[serde(flatten)]
    result: lifecycle::Lifecycle,
}

#[derive(Debug, Serialize)]
struct Summary {
    /// When and where it ran.
    date: String,
    machine: String,
    cpus: usize,
    load: &'static str,
    connections: usize,
    duration_s: f64,
    engine: Vec<FrameworkResult>,
    hostile: Vec<HostileResult>,
    lifecycle: Vec<LifecycleResult>,
    upgrades: Vec<upgrade::Http1Upgrades>,
    http2: Vec<upgrade::Http2Upgrades>,
    metrics: Vec<engine::RecorderCost>,
    tail: Vec<TailResult>,
    h3: Option<h3::RelayCost>,
    svg: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct TailResult {
    framework: String,
    threads: usize,
    rows: Vec<tail::TailRow>,
}

fn valgrind_installed() -> bool {
    Command::new("valgrind").arg("--version").output().is_ok()
}

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// `uname -srm` and the CPU model, for the record.
fn machine() -> String {
    let uname = Command::new("uname")
        .arg("-srm")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    format!("{uname}, {cpu}")
}

fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn main() -> ExitCode {
    let mut args: Args = clap::Parser::parse();
    if args.short {
        args.pairs = 1;
        args.duration = 0.5;
        args.idle = 100;
        args.connections = args.connections.min(8);
        args.workers = 2;
        args.upgrades = 1;
        args.interval = 0.3;
        args.lifecycle_runs = 1;
    }
    if args.pairs == 0 || args.connections == 0 || args.workers == 0 || args.idle == 0 {
        eprintln!("error: --pairs, --connections, --workers and --idle must be at least 1");
        return ExitCode::from(2);
    }
    let seconds_ok = args.duration.is_finite()
        && args.duration > 0.0
        && args.interval.is_finite()
        && args.interval >= 0.0;
    if !seconds_ok {
        eprintln!("error: --duration and --interval must be numbers of seconds");
        return ExitCode::from(2);
    }
    raise_fd_limit();
    let wrk = !args.no_wrk && !args.short && Command::new("wrk").arg("-v").output().is_ok();
    let valgrind = valgrind_installed();
    if args.callgrind && !valgrind {
        eprintln!("error: --callgrind needs valgrind");
        return ExitCode::from(2);
    }
    let callgrind = args.callgrind || (valgrind && !args.no_callgrind && !args.short);
    let started = Instant::now();
    match run(&args, wrk, callgrind) {
        Ok(summary) => {
            let printed = graceful_listener_suite::print_results(
                &summary,
                || render(&summary),
                args.json,
                args.json_out.as_deref(),
            );
            if let Err(e) = printed {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
            eprintln!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args, wrk: bool, callgrind: bool) -> Result<Summary, String> {
    let mut summary = Summary {
        date: today(),
        machine: machine(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load: if wrk { "wrk -t1" } else { "in-repo client" },
        connections: args.connections,
        duration_s: args.duration,
        engine: Vec::new(),
        hostile: Vec::new(),
        lifecycle: Vec::new(),
        upgrades: Vec::new(),
        http2: Vec::new(),
        metrics: Vec::new(),
        tail: Vec::new(),
        h3: None,
        svg: None,
    };
    let on = |section| args.sections.contains(&section);
    let shape = LoadShape {
        pairs: args.pairs,
        duration: Duration::from_secs_f64(args.duration),
        connections: args.connections,
    };
    if on(Section::H3) {
        eprintln!("bench: HTTP/3 relay");
        let round_trips = if args.short { 50 } else { 2000 };
        summary.h3 = Some(h3::relay(args.pairs, round_trips).map_err(|e| format!("h3: {e}"))?);
    }
    for framework in &args.frameworks {
        let framework = framework.as_str();
        let with = |e: String| format!("{framework}: {e}");
        if on(Section::Engine) {
            eprintln!("bench: {framework}: throughput");
            let throughput = engine::throughput(framework, &shape, wrk).map_err(with)?;
            eprintln!("bench: {framework}: memory per idle connection");
            let memory = engine::memory(framework, args.idle).map_err(with)?;
            let instructions = if callgrind {
                eprintln!("bench: {framework}: instructions per request (callgrind)");
                Some(engine::callgrind(framework, args.short).map_err(with)?)
            } else {
                None
            };
            summary.engine.push(FrameworkResult {
                framework: framework.to_owned(),
                throughput,
                memory,
                instructions,
            });
        }
        if on(Section::Metrics) {
            if !valgrind_installed() {
                return Err("the metrics section counts instructions: it needs valgrind".into());
            }
            eprintln!("bench: {framework}: instructions per request with a recorder");
            summary
                .metrics
                .push(engine::recorder_cost(framework, args.short).map_err(with)?);
        }
        if on(Section::Hostile) {
            eprintln!("bench: {framework}: hostile clients at the stop");
            let result = hostile::hostile(framework, args.idle.min(1000)).map_err(with)?;
            summary.hostile.push(HostileResult {
                framework: framework.to_owned(),
                result,
            });
        }
        if on(Section::Lifecycle) {
            eprintln!("bench: {framework}: lifecycle");
            let worker = format!("{framework}-hello");
            let result = lifecycle::lifecycle(&worker, args.lifecycle_runs, 16).map_err(with)?;
            summary.lifecycle.push(LifecycleResult {
                framework: framework.to_owned(),
                result,
            });
        }
        if on(Section::Upgrades) && framework != "hyper" {
            eprintln!("bench: {framework}: upgrades under HTTP/1.1 load");
            let config = UpgradeConfig {
                programs: graceful_listener_suite::upgrades::Programs::workspace(),
                workers: args.workers,
                upgrades: args.upgrades,
                connections: args.connections,
                interval: Duration::from_secs_f64(args.interval),
                progress: true,
                max_unacked: args.max_unacked,
            };
            let result = upgrade::http1(framework, &config).map_err(with)?;
            if summary.svg.is_none() {
                let caption = format!(
                    "{} upgrades of {} {framework} workers under {} keep-alive connections",
                    args.upgrades, args.workers, args.connections
                );
                picture::timeline(&result, &caption, &args.svg).map_err(with)?;
                summary.svg = Some(args.svg.clone());
            }
            summary.upgrades.push(result);
        }
        if on(Section::Tail) {
            if !wrk {
                return Err("the tail section needs wrk (and no --no-wrk or --short)".into());
            }
            let threads = args.threads.unwrap_or(summary.cpus);
            let rows = tail::tail(
                framework,
                threads,
                args.pairs,
                args.connections,
                Duration::from_secs_f64(args.duration),
            )
            .map_err(with)?;
            summary.tail.push(TailResult {
                framework: framework.to_owned(),
                threads,
                rows,
            });
        }
        if on(Section::Http2) && framework == "axum" {
            eprintln!("bench: {framework}: upgrades under HTTP/2 load");
            let rounds = if args.short { 1 } else { 4 };
            summary
                .http2
                .push(upgrade::http2(framework, rounds).map_err(with)?);
        }
    }
    Ok(summary)
}

fn render(summary: &Summary) -> String {
    let mut out = format!(
        "{} on {} ({} CPUs)\n",
        summary.date, summary.machine, summary.cpus
    );
    if !summary.engine.is_empty() {
        out.push_str(&format!(
            "\nengine: load {}, {} keep-alive connections, {} s runs\n",
            summary.load, summary.connections, summary.duration_s
        ));
        out.push_str(
            "framework  req/s ours/plain (A/A)  p99 ms plain/ours  bytes/idle conn (ratio)   instr/req (ratio)\n",
        );
        for r in &summary.engine {
            let t = &r.throughput;
            let m = &r.memory;
            let instructions = r.instructions.as_ref().map_or("-".to_owned(), |i| {
                format!(
                    "{:.0}/{:.0} ({:.3})",
                    i.plain_per_request, i.ours_per_request, i.ratio
                )
            });
            out.push_str(&format!(
                "{:<9}  {:.3} ({:.3})           {:>5.2} / {:<5.2}      {:>5.0}/{:<5.0} ({:.3})  {}\n",
                r.framework,
                t.ratio,
                t.aa_ratio,
                t.plain.p99_ms,
                t.ours.p99_ms,
                m.plain_bytes,
                m.ours_bytes,
                m.ratio,
                instructions
            ));
        }
    }
    if !summary.metrics.is_empty() {
        out.push_str("\nmetrics: instructions per request, no recorder / Prometheus recorder\n");
        out.push_str("framework  none      prometheus  ratio\n");
        for m in &summary.metrics {
            out.push_str(&format!(
                "{:<9}  {:<8.0}  {:<10.0}  {:.4}\n",
                m.framework, m.ours_per_request, m.recorded_per_request, m.ratio
            ));
        }
    }
    if !summary.hostile.is_empty() {
        out.push_str("\nhostile clients at the stop (idle keep-alive connections + a trickler)\n");
        out.push_str("framework  idle conns  exit after SIGTERM  target\n");
        for h in &summary.hostile {
            out.push_str(&format!(
                "{:<9}  {:>10}  {:>15.2} s  {:.2} s {}\n",
                h.framework,
                h.result.idle_connections,
                h.result.exit_s,
                h.result.target_s,
                if h.result.exit_s <= h.result.target_s {
                    "met"
                } else {
                    "MISSED"
                }
            ));
        }
    }
    if !summary.lifecycle.is_empty() {
        out.push_str("\nlifecycle (medians)\n");
        out.push_str("framework  spawn to ACK  SIGUSR2 to exit, idle  busy (keep-alive load)\n");
        for l in &summary.lifecycle {
            out.push_str(&format!(
                "{:<9}  {:>9.1} ms  {:>18.1} ms  {:>8.1} ms ({} conns)\n",
                l.framework,
                l.result.spawn_to_ack_ms,
                l.result.stop_idle_ms,
                l.result.stop_busy_ms,
                l.result.busy_connections
            ));
        }
    }
    for u in &summary.upgrades {
        out.push_str(&format!(
            "\nupgrades: {} of {} {} workers, {} keep-alive connections\n",
            u.ours.upgrades.len(),
            u.workers,
            u.framework,
            summary.connections
        ));
        out.push_str(
            "           requests  failed  per upgrade       p99 ms out/during  upgrade N ms  old exit ms\n",
        );
        for r in [&u.ours, &u.baseline] {
            let per: Vec<String> = r
                .upgrades
                .iter()
                .map(|x| x.failed_requests.to_string())
                .collect();
            let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
            let med = |f: fn(&graceful_listener_suite::upgrades::UpgradeResult) -> u64| {
                engine::median(r.upgrades.iter().map(|x| f(x) as f64).collect())
            };
            out.push_str(&format!(
                "{:<9}  {:>8}  {:>6}  {:<16}  {:>6} / {:<8}  {:>11.0}  {:>11.0}\n",
                r.key,
                r.counts.requests,
                r.counts.failed,
                per.join(" "),
                ms(r.latency_outside_upgrades.p99_ms),
                ms(r.latency_during_upgrades.p99_ms),
                med(|x| x.acked_ms),
                med(|x| x.old_exited_ms),
            ));
        }
    }
    for h in &summary.http2 {
        out.push_str(&format!(
            "\nHTTP/2 across {} upgrades of 2 {} workers\n",
            h.ours.upgrades, h.framework
        ));
        out.push_str(
            "           pooled client ok/failed   h2load sent ok / sent failed / never sent\n",
        );
        for (key, r) in [("ours", &h.ours), ("baseline", &h.baseline)] {
            let h2load = r.h2load.as_ref().map_or("not installed".to_owned(), |c| {
                format!("{} / {} / {}", c.succeeded, c.sent_and_failed, c.never_sent)
            });
            out.push_str(&format!(
                "{key:<9}  {:>12} / {:<8}   {h2load}\n",
                r.pooled_ok, r.pooled_failed
            ));
        }
    }
    if let Some(h) = &summary.h3 {
        out.push_str(&format!(
            "\nh3 relay: {} round trips of 1 KiB each way\n\
             direct   p50 {:.0} us  p99 {:.0} us\n\
             relayed  p50 {:.0} us  p99 {:.0} us  (added at p99: {:.0} us, median of rounds)\n\
             relaying worker's CPU: {:.1} us per relayed datagram ({:.1} us per datagram of its own)\n",
            h.round_trips,
            h.direct_p50_us,
            h.direct_p99_us,
            h.relayed_p50_us,
            h.relayed_p99_us,
            h.added_p99_us,
            h.cpu_per_relayed_datagram_us,
            h.cpu_per_direct_datagram_us,
        ));
    }
    for t in &summary.tail {
        out.push_str(&format!(
            "\ntail: {} with {} threads in all, {} keep-alive connections (medians; ratios to plain per round)\n",
            t.framework, t.threads, summary.connections
        ));
        out.push_str(
            "workload  contender           req/s    p50 ms  p99 ms  p99.9 ms  p99 ratio  p99.9 ratio\n",
        );
        for r in &t.rows {
            out.push_str(&format!(
                "{:<8}  {:<18}  {:>7.0}  {:>6.2}  {:>6.2}  {:>8.2}  {:>9.2}  {:>11.2}\n",
                format!("{:?}", r.workload).to_lowercase(),
                r.contender,
                r.rps,
                r.p50_ms,
                r.p99_ms,
                r.p999_ms,
                r.p99_ratio,
                r.p999_ratio
            ));
        }
    }
    if let Some(svg) = &summary.svg {
        out.push_str(&format!("\ntimeline picture: {}\n", svg.display()));
    }
    out
}
