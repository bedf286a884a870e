//! Upgrades under load, as a client sees them: N workers under `einhorn-master`, keep-alive
//! load from [`crate::load`], K smooth upgrades through the master's command socket, and what
//! came back: failed requests per upgrade, latency during upgrades and outside them, how long
//! each upgrade took, and a timeline of requests over time for a picture.
//!
//! The demo and the load benchmark both run this, for our workers and for each framework's
//! baseline (the same routes, with the framework's own graceful stop), so the two are compared
//! under the same master, load and upgrades.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::harness::{binary, is_alive, profile_dir, wait_until_every};
use crate::load::{self, FailureKind, LoadConfig, LoadReport};
use crate::master::Master;

/// One kind of worker to put under the master.
#[derive(Debug, Clone, Copy)]
pub struct Contender {
    /// A short key: `ours` or `baseline`.
    pub key: &'static str,
    /// What it is, for people.
    pub title: &'static str,
    /// The example binary that is the worker.
    pub example: &'static str,
}

/// Ours and the framework's baseline, for a framework that has both (`axum`, `warp`,
/// `actix`).
pub fn contenders(framework: &str) -> Option<[Contender; 2]> {
    let pair = match framework {
        "axum" => [
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
        "warp" => [
            Contender {
                key: "ours",
                title: "graceful-listener (einhorn-warp)",
                example: "warp-hello",
            },
            Contender {
                key: "baseline",
                title: "baseline (warp::serve + graceful)",
                example: "warp-baseline",
            },
        ],
        "actix" | "actix-web" => [
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
        _ => return None,
    };
    Some(pair)
}

/// The programs of a run: the master, and the folder holding the workers.
#[derive(Debug, Clone)]
pub struct Programs {
    /// The `einhorn-master` program.
    pub master: PathBuf,
    /// The folder holding each contender's worker program (named as its
    /// [`Contender::example`]).
    pub workers: PathBuf,
}

impl Programs {
    /// The workspace's own: `target/<profile>/einhorn-master` and the examples beside it.
    ///
    /// # Panics
    /// When the master has not been built (see [`binary`]).
    pub fn workspace() -> Programs {
        Programs {
            master: binary("einhorn-master"),
            workers: profile_dir().join("examples"),
        }
    }

    /// The worker program of `contender`, checked to exist.
    ///
    /// # Errors
    /// When it is not there, naming the path.
    pub fn worker(&self, contender: &Contender) -> Result<PathBuf, String> {
        let path = self.workers.join(contender.example);
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{} is not built", path.display()))
        }
    }
}

/// How to run the upgrades.
#[derive(Debug, Clone)]
pub struct UpgradeConfig {
    /// Where the master and the workers are.
    pub programs: Programs,
    /// Workers under the master.
    pub workers: usize,
    /// Smooth upgrades to perform.
    pub upgrades: usize,
    /// Keep-alive connections of the load.
    pub connections: usize,
    /// Steady load before the first upgrade and after each one.
    pub interval: Duration,
    /// Progress lines on stderr.
    pub progress: bool,
    /// The master's `--max-unacked`: new workers started ahead of their ACKs (1: one at a
    /// time, the default).
    pub max_unacked: usize,
}

/// What one upgrade did.
#[derive(Debug, Serialize)]
pub struct UpgradeResult {
    /// The workers serving before it.
    pub old_pids: Vec<i32>,
    /// The workers serving after it.
    pub new_pids: Vec<i32>,
    /// Seconds from the start of the run to the `upgrade` command.
    pub started_s: f64,
    /// From sending `upgrade` to `Upgrade done` (every new worker ACKed).
    pub acked_ms: u64,
    /// From sending `upgrade` until every old worker had exited.
    pub old_exited_ms: u64,
    /// Every pid was replaced: new pids all fresh, old ones all gone, and once the old ones
    /// were gone only new pids answered.
    pub replaced_every_pid: bool,
    /// Pids that answered in this upgrade's window (or, for the last, after it) that were
    /// neither its old nor its new workers.
    pub unexpected_pids: Vec<i32>,
    /// Requests that failed from the `upgrade` command until the old workers had exited.
    pub failed_requests: u64,
    /// What went wrong with the upgrade itself, if anything.
    pub error: Option<String>,
}

/// Request outcomes, by kind.
#[derive(Debug, Default, Serialize)]
pub struct Counts {
    /// Requests sent.
    pub requests: u64,
    /// Requests answered 2xx.
    pub ok: u64,
    /// Failures of any kind.
    pub failed: u64,
    /// Connections refused.
    pub connect_errors: u64,
    /// Requests that could not be written.
    pub write_errors: u64,
    /// Connections reset or closed before the response.
    pub read_errors: u64,
    /// No response in time.
    pub timeouts: u64,
    /// Answers that were not 2xx.
    pub non_2xx: u64,
    /// Anything else.
    pub other_errors: u64,
}

impl Counts {
    /// The counts of a load report.
    pub fn of(report: &LoadReport) -> Counts {
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
pub struct Latency {
    /// The median.
    pub p50_ms: Option<f64>,
    /// The 99th percentile.
    pub p99_ms: Option<f64>,
}

impl Latency {
    /// The latency of a load report, rounded to 10 µs.
    pub fn of(report: &LoadReport) -> Latency {
        let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 1e5).round() / 100.0);
        Latency {
            p50_ms: ms(report.p50()),
            p99_ms: ms(report.p99()),
        }
    }
}

/// Requests over time: one sample per [`SAMPLE_EVERY`], counts since the previous sample.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub t_s: f64,
    /// Requests answered 2xx per second over the sample.
    pub ok_per_s: f64,
    /// Failed requests within the sample.
    pub failed: u64,
}

/// How often the timeline samples the load.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Everything measured for one kind of worker.
#[derive(Debug, Serialize)]
pub struct ContenderResult {
    /// The contender's key.
    pub key: &'static str,
    /// The contender's title.
    pub title: &'static str,
    /// Every request of the run.
    pub counts: Counts,
    /// Latency in the steady windows between upgrades.
    pub latency_outside_upgrades: Latency,
    /// Latency from each `upgrade` command until its old workers had exited.
    pub latency_during_upgrades: Latency,
    /// Length of the run.
    pub seconds: f64,
    /// Each upgrade.
    pub upgrades: Vec<UpgradeResult>,
    /// Requests over time.
    pub timeline: Vec<Sample>,
    /// The first few errors the load saw.
    pub first_errors: Vec<String>,
}

/// How long a command to the master may take.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);

/// `einhorn-master -b 127.0.0.1:0 -n WORKERS -m manual --max-unacked N -- WORKER
/// --drain-timeout 10`, once every worker has ACKed.
///
/// # Panics
/// When the master or its workers do not start.
pub fn start_master(
    programs: &Programs,
    contender: &Contender,
    workers: usize,
    max_unacked: usize,
) -> Master {
    let n = workers.to_string();
    let max_unacked = max_unacked.max(1).to_string();
    let program = programs.worker(contender).unwrap_or_else(|e| panic!("{e}"));
    let worker = [
        program.into_os_string(),
        "--drain-timeout".into(),
        "10".into(),
    ];
    let flags = [
        "-b",
        "127.0.0.1:0",
        "-n",
        &n,
        "-m",
        "manual",
        "-q",
        "--max-unacked",
        &max_unacked,
    ];
    let master = Master::start_program(&programs.master, &flags, &worker, |cmd| {
        cmd.env("RUST_LOG", "warn");
    });
    master.wait_serving(workers);
    master
}

/// The pids of the workers serving now, sorted.
///
/// # Errors
/// When the master cannot be asked.
pub fn serving_pids(master: &Master) -> Result<Vec<i32>, String> {
    let state = einhorn_master::client::state(&master.socket, CONTROL_TIMEOUT)
        .map_err(|e| e.to_string())?;
    let mut pids = state.serving_pids();
    pids.sort_unstable();
    Ok(pids)
}

/// Stops the master gracefully (SIGINT: every worker drains) and waits for it.
///
/// # Errors
/// When it does not stop within 30 s, or fails.
pub fn stop_master(mut master: Master) -> Result<(), String> {
    match master.stop(Duration::from_secs(30)) {
        Some(status) if status.success() => Ok(()),
        Some(status) => Err(format!(
            "einhorn-master exited with {status}:\n{}",
            master.output()
        )),
        None => Err("einhorn-master did not stop within 30 s".into()),
    }
}

/// Samples `load` every [`SAMPLE_EVERY`] until `done`.
fn sample(load: &load::Load, done: &AtomicBool) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut last = load.snapshot();
    let mut next = Instant::now() + SAMPLE_EVERY;
    while !done.load(Ordering::Acquire) {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += SAMPLE_EVERY;
        let now = load.snapshot();
        let window = now.elapsed.saturating_sub(last.elapsed).as_secs_f64();
        if window > 0.0 {
            samples.push(Sample {
                t_s: now.elapsed.as_secs_f64(),
                ok_per_s: now.ok.saturating_sub(last.ok) as f64 / window,
                failed: now.failed().saturating_sub(last.failed()),
            });
        }
        last = now;
    }
    samples
}

/// Runs `contender` under the master: steady load, `config.upgrades` upgrades each followed
/// by steady load, then a graceful stop.
///
/// # Errors
/// When the master does not stop cleanly.
pub fn run(contender: &Contender, config: &UpgradeConfig) -> Result<ContenderResult, String> {
    let master = start_master(
        &config.programs,
        contender,
        config.workers,
        config.max_unacked,
    );
    let started = Instant::now();
    let load = load::start(
        LoadConfig::new(master.addr(0))
            .connections(config.connections)
            .duration(Duration::from_secs(3600))
            .timeout(Duration::from_secs(5)),
    );
    let done = AtomicBool::new(false);
    let (mut upgrades, timeline, mut outside, during, mark) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| sample(&load, &done));
        let progress = Progress::new(contender, config);
        let mut outside = LoadReport::default();
        let mut during = LoadReport::default();
        let mut mark = load.snapshot();
        let mut upgrades = Vec::new();
        for k in 1..=config.upgrades {
            progress.steady(k, config.interval, &load);
            let before = load.snapshot();
            outside.absorb(before.since(&mark));
            let (result, settled) = upgrade(&master, &load, &before);
            during.absorb(settled.since(&before));
            mark = settled;
            progress.upgraded(k, &result, &load);
            upgrades.push(result);
        }
        progress.steady(config.upgrades + 1, config.interval, &load);
        done.store(true, Ordering::Release);
        let timeline = sampler.join().unwrap_or_default();
        progress.finish();
        (upgrades, timeline, outside, during, mark)
    });
    let end = load.stop();
    outside.absorb(end.since(&mark));
    let seconds = started.elapsed().as_secs_f64();
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
        timeline,
        first_errors: end.first_errors.clone(),
    })
}

/// Performs one smooth upgrade and waits for every old worker to exit; returns what it did
/// and the load's snapshot once it was done.
fn upgrade(master: &Master, load: &load::Load, before: &LoadReport) -> (UpgradeResult, LoadReport) {
    let old_pids = serving_pids(master).unwrap_or_default();
    let started = Instant::now();
    let outcome = einhorn_master::client::upgrade(&master.socket, CONTROL_TIMEOUT);
    let acked_ms = started.elapsed().as_millis() as u64;
    let mut error = outcome.err().map(|e| e.to_string());
    // Polled every millisecond: this is a figure of the benchmark.
    let exited = wait_until_every(Duration::from_secs(30), Duration::from_millis(1), || {
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
    let result = UpgradeResult {
        replaced_every_pid: fresh && exited && unexpected_pids.is_empty(),
        unexpected_pids,
        old_pids,
        new_pids,
        started_s: before.elapsed.as_secs_f64(),
        acked_ms,
        old_exited_ms,
        failed_requests: recent.failed(),
        error,
    };
    (result, settled)
}

/// One line of progress on stderr, rewritten in place on a terminal.
struct Progress {
    key: &'static str,
    upgrades: usize,
    enabled: bool,
    tty: bool,
}

impl Progress {
    fn new(contender: &Contender, config: &UpgradeConfig) -> Progress {
        if config.progress {
            eprintln!("\n{}: {} workers up", contender.title, config.workers);
        }
        Progress {
            key: contender.key,
            upgrades: config.upgrades,
            enabled: config.progress,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn line(&self, text: String) {
        if !self.enabled {
            return;
        }
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
        if self.enabled && self.tty {
            eprintln!();
        }
    }

    fn finish(&self) {
        if self.enabled && self.tty {
            eprintln!();
        }
    }
}
