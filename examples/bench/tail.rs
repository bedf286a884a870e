//! Tail latency: N workers under `einhorn-master` against the framework's own plain serve in
//! one process with the same total threads, at p50, p99 and p99.9, on hello-world and on a
//! mixed workload (most requests cheap, one in 200 sleeping 20 ms).
//!
//! Every contender runs under the master (the plain one as `-n 1`: one process, the
//! framework's own serve, so that the socket and the ACK are the same for all), with
//! `--worker-threads` giving each worker its threads. The contenders are measured in turn
//! in every round, the first one of a round rotating, and the ratios to the plain serve are
//! taken within each round: the figure is the median of those ratios.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use graceful_listener_suite::harness::example;
use graceful_listener_suite::master::Master;
use serde::Serialize;

use crate::engine::median;

/// What the load asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Workload {
    /// `GET /` only.
    Hello,
    /// `GET /`, and one request in 200 `GET /sleep/20`.
    Mixed,
}

impl Workload {
    fn slow_one_in(self) -> u32 {
        match self {
            Workload::Hello => 0,
            Workload::Mixed => 200,
        }
    }
}

/// One contender's figures over the rounds (medians), and its p99 against the plain serve's.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TailRow {
    pub(crate) workload: Workload,
    /// `plain 1x2`, `ours 2x1`: processes x threads each.
    pub(crate) contender: String,
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    /// Median over the rounds of this contender's p99 / the plain serve's p99 in that round.
    pub(crate) p99_ratio: f64,
    pub(crate) p999_ratio: f64,
}

/// The wrk script: picks each request's path and prints the percentiles wrk keeps.
const SCRIPT: &str = r#"
local slow_one_in = tonumber(os.getenv("TAIL_SLOW_ONE_IN") or "0")
request = function()
  if slow_one_in > 0 and math.random(slow_one_in) == 1 then
    return wrk.format(nil, "/sleep/20")
  end
  return wrk.format(nil, "/")
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("TAIL requests=%d seconds=%f errors=%d p50=%d p99=%d p999=%d\n",
    summary.requests, summary.duration / 1e6,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#;

struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
}

fn run_wrk(
    addr: std::net::SocketAddr,
    script: &Path,
    workload: Workload,
    connections: usize,
    duration: Duration,
) -> Result<Sample, String> {
    let output = Command::new("wrk")
        .args(["-t1", "-s"])
        .arg(script)
        .arg(format!("-c{connections}"))
        .arg(format!(
            "-d{}s",
            duration.as_secs_f64().ceil().max(1.0) as u64
        ))
        .arg(format!("http://{addr}/"))
        .env("TAIL_SLOW_ONE_IN", workload.slow_one_in().to_string())
        .output()
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("TAIL "))
        .ok_or_else(|| format!("no TAIL line in wrk's output:\n{text}"))?;
    let field = |name: &str| -> Result<f64, String> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no {name} in {line:?}"))
    };
    if field("errors")? > 0.0 {
        return Err(format!("wrk saw errors: {line}"));
    }
    Ok(Sample {
        rps: field("requests")? / field("seconds")?,
        p50_ms: field("p50")? / 1000.0,
        p99_ms: field("p99")? / 1000.0,
        p999_ms: field("p999")? / 1000.0,
    })
}

/// A contender: `processes` workers of `program`, `threads` runtime threads each.
struct Contender {
    name: String,
    master: Master,
}

fn start(program: &str, processes: usize, threads: usize, balance: bool) -> Contender {
    let (n, t) = (processes.to_string(), threads.to_string());
    let mut flags = vec!["-b", "127.0.0.1:0", "-m", "manual", "-q", "-n", &n];
    flags.extend(["--worker-threads", &t]);
    if balance {
        flags.push("--balance");
    }
    let master = Master::start_with(&flags, &[example(program)], |cmd| {
        cmd.env_remove("TOKIO_WORKER_THREADS");
    });
    master.wait_serving(processes);
    let kind = if program.ends_with("-baseline") {
        "plain"
    } else {
        "ours"
    };
    let balanced = if balance { " --balance" } else { "" };
    Contender {
        name: format!("{kind} {processes}x{threads}{balanced}"),
        master,
    }
}

/// The section: for each workload, the plain serve with `threads` threads in one process and
/// ours with 1, 2 and 4 workers sharing the same threads (at least one each), 2 workers with
/// the load table (`--balance`), and 2 workers each sized to the whole machine.
pub(crate) fn tail(
    framework: &str,
    threads: usize,
    rounds: usize,
    connections: usize,
    duration: Duration,
) -> Result<Vec<TailRow>, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let script = dir.path().join("tail.lua");
    std::fs::write(&script, SCRIPT).map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for workload in [Workload::Hello, Workload::Mixed] {
        let plain_program = format!("{framework}-baseline");
        let ours_program = format!("{framework}-hello");
        let mut contenders = vec![start(&plain_program, 1, threads, false)];
        for processes in [1, 2, 4] {
            let each = threads.div_ceil(processes).max(1);
            contenders.push(start(&ours_program, processes, each, false));
        }
        // The same two workers with the load table: what balancing is worth; and two
        // workers each sized to the whole machine (`--worker-threads N`).
        let each = threads.div_ceil(2).max(1);
        contenders.push(start(&ours_program, 2, each, true));
        contenders.push(start(&ours_program, 2, threads, false));
        // samples[c][round]
        let mut samples: Vec<Vec<Sample>> = contenders.iter().map(|_| Vec::new()).collect();
        for round in 0..rounds {
            for k in 0..contenders.len() {
                let c = (round + k) % contenders.len();
                eprintln!(
                    "bench: {framework}: tail {workload:?} round {}/{rounds}: {}",
                    round + 1,
                    contenders[c].name
                );
                let addr = contenders[c].master.addr(0);
                samples[c].push(run_wrk(addr, &script, workload, connections, duration)?);
            }
        }
        for (c, contender) in contenders.iter().enumerate() {
            let of = |f: fn(&Sample) -> f64| median(samples[c].iter().map(f).collect());
            let ratio = |f: fn(&Sample) -> f64| {
                median(
                    samples[c]
                        .iter()
                        .zip(&samples[0])
                        .map(|(ours, plain)| f(ours) / f(plain))
                        .collect(),
                )
            };
            rows.push(TailRow {
                workload,
                contender: contender.name.clone(),
                rps: of(|s| s.rps),
                p50_ms: of(|s| s.p50_ms),
                p99_ms: of(|s| s.p99_ms),
                p999_ms: of(|s| s.p999_ms),
                p99_ratio: ratio(|s| s.p99_ms),
                p999_ratio: ratio(|s| s.p999_ms),
            });
        }
    }
    Ok(rows)
}
