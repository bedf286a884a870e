//! The framework's plain serve against ours on one machine: requests per second in paired
//! runs (with the A/A ratio of plain against itself), memory per idle keep-alive connection,
//! and instructions per request under callgrind.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use graceful_listener_suite::harness::{Proc, example};
use graceful_listener_suite::load::{self, LoadConfig};
use nix::sys::signal::Signal;
use serde::Serialize;

/// The shape of the throughput runs.
pub(crate) struct LoadShape {
    pub(crate) pairs: usize,
    pub(crate) duration: Duration,
    pub(crate) connections: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    Plain,
    Ours,
    /// Ours, with a Prometheus recorder installed.
    Recorded,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Ours | Mode::Recorded => "ours",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Recorded => "recorded",
            mode => mode.arg(),
        }
    }
}

/// A `bench-server` running on a loopback port.
pub(crate) struct Server {
    pub(crate) proc: Proc,
    pub(crate) addr: SocketAddr,
}

impl Server {
    pub(crate) fn start(framework: &str, mode: Mode, wrapper: &[String]) -> Result<Server, String> {
        Server::start_with(framework, mode, wrapper, &[])
    }

    /// As [`Server::start`], with more arguments for `bench-server`.
    pub(crate) fn start_with(
        framework: &str,
        mode: Mode,
        wrapper: &[String],
        extra: &[&str],
    ) -> Result<Server, String> {
        let binary = example("bench-server");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(binary);
                cmd
            }
            None => Command::new(binary),
        };
        cmd.args(["--framework", framework, "--mode", mode.arg()])
            .args(extra);
        if mode == Mode::Recorded {
            cmd.args(["--recorder", "prometheus"]);
        }
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("EINHORN_") || key.starts_with("LISTEN_") {
                cmd.env_remove(key);
            }
        }
        let proc = Proc::spawn(cmd).map_err(|e| format!("cannot start bench-server: {e}"))?;
        // Under valgrind a start takes a while.
        let line = proc
            .wait_for_line("listening addr=", Duration::from_secs(120))
            .ok_or_else(|| format!("bench-server did not start:\n{}", proc.output()))?;
        let addr = line
            .split("addr=")
            .nth(1)
            .and_then(|a| a.trim().parse().ok())
            .ok_or_else(|| format!("no address in {line:?}"))?;
        Ok(Server { proc, addr })
    }

    fn pid(&self) -> i32 {
        self.proc.pid()
    }

    fn stop(mut self) -> Result<(), String> {
        let _ = self.proc.signal(Signal::SIGTERM);
        match self.proc.wait_timeout(Duration::from_secs(120)) {
            Some(_) => Ok(()),
            None => Err(format!(
                "bench-server did not stop:\n{}",
                self.proc.output()
            )),
        }
    }
}

/// One throughput run.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Run {
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

/// Runs load against `addr` for `duration`.
pub(crate) fn measure(
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    wrk: bool,
) -> Result<Run, String> {
    if wrk {
        return run_wrk(addr, connections, duration);
    }
    let report = load::start(
        LoadConfig::new(addr)
            .connections(connections)
            .duration(duration),
    )
    .wait();
    if report.failed() > 0 {
        return Err(format!("the load saw failures: {report}"));
    }
    let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    Ok(Run {
        rps: report.rate(),
        p50_ms: ms(report.p50()),
        p99_ms: ms(report.p99()),
    })
}

pub(crate) fn run_wrk(
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
) -> Result<Run, String> {
    let output = Command::new("wrk")
        .args(["-t1", "--latency"])
        .arg(format!("-c{connections}"))
        .arg(format!(
            "-d{}s",
            duration.as_secs_f64().ceil().max(1.0) as u64
        ))
        .arg(format!("http://{addr}/"))
        .output()
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        return Err(format!("wrk saw errors:\n{text}"));
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    let quantile = |q: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(q))
            .and_then(|v| parse_wrk_duration(v.trim()))
            .unwrap_or(0.0)
    };
    Ok(Run {
        rps,
        p50_ms: quantile("50%"),
        p99_ms: quantile("99%"),
    })
}

/// `812.00us`, `1.27ms`, `2.01s` in milliseconds.
pub(crate) fn parse_wrk_duration(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Throughput of one framework: ours against plain, and plain against plain.
#[derive(Debug, Serialize)]
pub(crate) struct Throughput {
    pub(crate) pairs: usize,
    /// Median of ours/plain over the pairs.
    pub(crate) ratio: f64,
    /// Median of plain'/plain over the pairs: the noise floor.
    pub(crate) aa_ratio: f64,
    pub(crate) plain: Run,
    pub(crate) ours: Run,
}

pub(crate) fn throughput(
    framework: &str,
    load: &LoadShape,
    wrk: bool,
) -> Result<Throughput, String> {
    let plain = Server::start(framework, Mode::Plain, &[])?;
    let plain2 = Server::start(framework, Mode::Plain, &[])?;
    let ours = Server::start(framework, Mode::Ours, &[])?;
    let duration = load.duration;
    let run = |addr| measure(addr, load.connections, duration, wrk);
    // One warm-up run each, not counted.
    for addr in [plain.addr, plain2.addr, ours.addr] {
        measure(addr, load.connections, Duration::from_millis(500), false)?;
    }
    let (mut ratios, mut aa) = (Vec::new(), Vec::new());
    let (mut plain_runs, mut ours_runs) = (Vec::new(), Vec::new());
    for i in 0..load.pairs {
        // Alternate which goes first, so that drift in the machine cancels out.
        let (a, b) = if i % 2 == 0 {
            let a = run(plain.addr)?;
            (a, run(ours.addr)?)
        } else {
            let b = run(ours.addr)?;
            (run(plain.addr)?, b)
        };
        let ratio = b.rps / a.rps;
        ratios.push(ratio);
        plain_runs.push(a);
        ours_runs.push(b);
        let (a, a2) = if i % 2 == 0 {
            let a = run(plain.addr)?;
            (a, run(plain2.addr)?)
        } else {
            let a2 = run(plain2.addr)?;
            (run(plain.addr)?, a2)
        };
        aa.push(a2.rps / a.rps);
        eprintln!(
            "bench: {framework} pair {}/{}: ours/plain {ratio:.3}, plain/plain {:.3}",
            i + 1,
            load.pairs,
            a2.rps / a.rps
        );
    }
    let summary = |runs: &[Run]| Run {
        rps: median(runs.iter().map(|r| r.rps).collect()),
        p50_ms: median(runs.iter().map(|r| r.p50_ms).collect()),
        p99_ms: median(runs.iter().map(|r| r.p99_ms).collect()),
    };
    let result = Throughput {
        pairs: load.pairs,
        ratio: median(ratios),
        aa_ratio: median(aa),
        plain: summary(&plain_runs),
        ours: summary(&ours_runs),
    };
    for server in [plain, plain2, ours] {
        server.stop()?;
    }
    Ok(result)
}

/// Resident memory of `pid`, in bytes.
pub(crate) fn rss(pid: i32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| "no VmRSS".to_owned())
}

/// Opens `n` keep-alive connections, each served one request, and holds them.
pub(crate) fn idle_connections(
    addr: SocketAddr,
    n: usize,
) -> Result<Vec<std::net::TcpStream>, String> {
    use std::io::{Read, Write};
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = std::net::TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n")
            .map_err(|e| format!("write: {e}"))?;
        let mut response = Vec::new();
        let mut buf = [0u8; 1024];
        while !response.ends_with(b"bench-server\n") {
            let read = stream.read(&mut buf).map_err(|e| format!("read: {e}"))?;
            if read == 0 {
                return Err("closed before the response".into());
            }
            response.extend_from_slice(&buf[..read]);
        }
        held.push(stream);
    }
    Ok(held)
}

/// Memory per idle keep-alive connection of one server, in bytes.
pub(crate) fn memory_per_connection(framework: &str, mode: Mode, n: usize) -> Result<f64, String> {
    let server = Server::start(framework, mode, &[])?;
    // Warm up the allocator and the runtime with a tenth as many, then let them go.
    drop(idle_connections(server.addr, n / 10 + 1)?);
    std::thread::sleep(Duration::from_millis(300));
    let before = rss(server.pid())?;
    let held = idle_connections(server.addr, n)?;
    std::thread::sleep(Duration::from_millis(300));
    let after = rss(server.pid())?;
    drop(held);
    server.stop()?;
    Ok(after.saturating_sub(before) as f64 / n as f64)
}

#[derive(Debug, Serialize)]
pub(crate) struct Memory {
    pub(crate) connections: usize,
    pub(crate) plain_bytes: f64,
    pub(crate) ours_bytes: f64,
    pub(crate) ratio: f64,
}

pub(crate) fn memory(framework: &str, n: usize) -> Result<Memory, String> {
    // Alternated, five times each: the median (the allocator's arenas move one run by 1 to 2%).
    let (mut plain, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        plain.push(memory_per_connection(framework, Mode::Plain, n)?);
        ours.push(memory_per_connection(framework, Mode::Ours, n)?);
    }
    let (plain, ours) = (median(plain), median(ours));
    Ok(Memory {
        connections: n,
        plain_bytes: plain,
        ours_bytes: ours,
        ratio: ours / plain,
    })
}

/// Instructions the server executes, under callgrind, to answer `requests` requests.
pub(crate) fn instructions(
    framework: &str,
    mode: Mode,
    requests: u64,
    dir: &Path,
) -> Result<u64, String> {
    let out = dir.join(format!("callgrind.{framework}.{}.{requests}", mode.name()));
    let wrapper = vec![
        "valgrind".to_owned(),
        "--tool=callgrind".to_owned(),
        format!("--callgrind-out-file={}", out.display()),
    ];
    let server = Server::start(framework, mode, &wrapper)?;
    let connections = 8;
    let report = load::start(
        LoadConfig::new(server.addr)
            .connections(connections)
            .requests_per_connection(requests / connections as u64)
            .duration(Duration::from_secs(600))
            .timeout(Duration::from_secs(60)),
    )
    .wait();
    if report.failed() > 0 || report.ok != requests {
        return Err(format!("callgrind load: {report}"));
    }
    server.stop()?;
    let text = std::fs::read_to_string(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no totals in {}", out.display()))
}

#[derive(Debug, Serialize)]
pub(crate) struct Instructions {
    pub(crate) plain_per_request: f64,
    pub(crate) ours_per_request: f64,
    pub(crate) ratio: f64,
}

/// Instructions per request: the difference between two runs, so that start and stop cancel.
pub(crate) fn callgrind(framework: &str, short: bool) -> Result<Instructions, String> {
    let (plain, ours) = compare(framework, short, Mode::Plain, Mode::Ours)?;
    Ok(Instructions {
        plain_per_request: plain,
        ours_per_request: ours,
        ratio: ours / plain,
    })
}

/// Instructions per request of modes `a` and `b`, each from the difference of two runs.
fn compare(framework: &str, short: bool, a: Mode, b: Mode) -> Result<(f64, f64), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (few, many) = if short { (200, 1000) } else { (2000, 12000) };
    let per_request = |mode| -> Result<f64, String> {
        let a = instructions(framework, mode, few, dir.path())?;
        let b = instructions(framework, mode, many, dir.path())?;
        Ok(b.saturating_sub(a) as f64 / (many - few) as f64)
    };
    Ok((per_request(a)?, per_request(b)?))
}

#[derive(Debug, Serialize)]
pub(crate) struct RecorderCost {
    pub(crate) framework: String,
    /// Ours, no recorder installed (the facade's handles are empty).
    pub(crate) ours_per_request: f64,
    /// Ours, with metrics-exporter-prometheus' recorder installed.
    pub(crate) recorded_per_request: f64,
    pub(crate) ratio: f64,
}

/// What the workers' metrics cost per request with a Prometheus recorder installed.
pub(crate) fn recorder_cost(framework: &str, short: bool) -> Result<RecorderCost, String> {
    let (ours, recorded) = compare(framework, short, Mode::Ours, Mode::Recorded)?;
    Ok(RecorderCost {
        framework: framework.to_owned(),
        ours_per_request: ours,
        recorded_per_request: recorded,
        ratio: recorded / ours,
    })
}

#[derive(Debug, Serialize)]
pub(crate) struct FrameworkResult {
    pub(crate) framework: String,
    pub(crate) throughput: Throughput,
    pub(crate) memory: Memory,
    pub(crate) instructions: Option<Instructions>,
}
