//! The load benchmark: each adapter against its framework's own plain serve, with the same
//! handler (`bench-server`), on this machine, in one run.
//!
//! `cargo run --release --example bench` measures, for axum, hyper, warp and actix-web:
//! - requests per second under keep-alive load, as the median of the ratios of paired runs
//!   (ours / plain, alternating which goes first), beside the ratio of plain against a second
//!   plain server (A/A), which shows how noisy the machine is;
//! - p50 and p99 latency in those runs;
//! - memory per idle keep-alive connection (RSS growth over N connections that each served
//!   one request);
//! - with `--callgrind` (valgrind installed), instructions per request, which unlike time
//!   do not depend on what else the machine is doing.
//!
//! Load comes from `wrk` when installed, else from the in-repo client. `--short` runs a
//! tiny version of everything (CI runs it, to keep it working); `--json` prints the results
//! for machines.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use graceful_listener_suite::harness::{Proc, example};
use graceful_listener_suite::load::{self, LoadConfig};
use nix::sys::signal::Signal;
use serde::Serialize;

#[derive(Debug, clap::Parser)]
#[command(about = "Each adapter against its framework's plain serve, same handler, same machine")]
struct Args {
    /// Frameworks to measure.
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
    /// Idle keep-alive connections for the memory measure.
    #[arg(long, default_value_t = 2000)]
    idle: usize,
    /// Count instructions per request under valgrind's callgrind.
    #[arg(long)]
    callgrind: bool,
    /// Use the in-repo load client even when wrk is installed.
    #[arg(long)]
    no_wrk: bool,
    /// A tiny run of everything, to check the benchmark works.
    #[arg(long)]
    short: bool,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Plain,
    Ours,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Ours => "ours",
        }
    }
}

/// A `bench-server` running on a loopback port.
struct Server {
    proc: Proc,
    addr: SocketAddr,
}

impl Server {
    fn start(framework: &str, mode: Mode, wrapper: &[String]) -> Result<Server, String> {
        let binary = example("bench-server");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(binary);
                cmd
            }
            None => Command::new(binary),
        };
        cmd.args(["--framework", framework, "--mode", mode.arg()]);
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
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Runs load against `addr` for `duration`.
fn measure(
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

fn run_wrk(addr: SocketAddr, connections: usize, duration: Duration) -> Result<Run, String> {
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
fn parse_wrk_duration(text: &str) -> Option<f64> {
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

fn median(mut values: Vec<f64>) -> f64 {
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
struct Throughput {
    pairs: usize,
    /// Median of ours/plain over the pairs.
    ratio: f64,
    /// Median of plain'/plain over the pairs: the noise floor.
    aa_ratio: f64,
    plain: Run,
    ours: Run,
}

fn throughput(framework: &str, args: &Args, wrk: bool) -> Result<Throughput, String> {
    let plain = Server::start(framework, Mode::Plain, &[])?;
    let plain2 = Server::start(framework, Mode::Plain, &[])?;
    let ours = Server::start(framework, Mode::Ours, &[])?;
    let duration = Duration::from_secs_f64(args.duration);
    let run = |addr| measure(addr, args.connections, duration, wrk);
    // One warm-up run each, not counted.
    for addr in [plain.addr, plain2.addr, ours.addr] {
        measure(addr, args.connections, Duration::from_millis(500), false)?;
    }
    let (mut ratios, mut aa) = (Vec::new(), Vec::new());
    let (mut plain_runs, mut ours_runs) = (Vec::new(), Vec::new());
    for i in 0..args.pairs {
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
            args.pairs,
            a2.rps / a.rps
        );
    }
    let summary = |runs: &[Run]| Run {
        rps: median(runs.iter().map(|r| r.rps).collect()),
        p50_ms: median(runs.iter().map(|r| r.p50_ms).collect()),
        p99_ms: median(runs.iter().map(|r| r.p99_ms).collect()),
    };
    let result = Throughput {
        pairs: args.pairs,
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
fn rss(pid: i32) -> Result<u64, String> {
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
fn idle_connections(addr: SocketAddr, n: usize) -> Result<Vec<std::net::TcpStream>, String> {
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
fn memory_per_connection(framework: &str, mode: Mode, n: usize) -> Result<f64, String> {
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
struct Memory {
    connections: usize,
    plain_bytes: f64,
    ours_bytes: f64,
    ratio: f64,
}

fn memory(framework: &str, n: usize) -> Result<Memory, String> {
    // Alternated, three times each: the median.
    let (mut plain, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..3 {
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
fn instructions(framework: &str, mode: Mode, requests: u64, dir: &Path) -> Result<u64, String> {
    let out = dir.join(format!("callgrind.{framework}.{}.{requests}", mode.arg()));
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
struct Instructions {
    plain_per_request: f64,
    ours_per_request: f64,
    ratio: f64,
}

/// Instructions per request: the difference between two runs, so that start and stop cancel.
fn callgrind(framework: &str, short: bool) -> Result<Instructions, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (few, many) = if short { (200, 1000) } else { (2000, 12000) };
    let per_request = |mode| -> Result<f64, String> {
        let a = instructions(framework, mode, few, dir.path())?;
        let b = instructions(framework, mode, many, dir.path())?;
        Ok(b.saturating_sub(a) as f64 / (many - few) as f64)
    };
    let plain = per_request(Mode::Plain)?;
    let ours = per_request(Mode::Ours)?;
    Ok(Instructions {
        plain_per_request: plain,
        ours_per_request: ours,
        ratio: ours / plain,
    })
}

#[derive(Debug, Serialize)]
struct FrameworkResult {
    framework: String,
    throughput: Throughput,
    memory: Memory,
    instructions: Option<Instructions>,
}

#[derive(Debug, Serialize)]
struct Summary {
    load: &'static str,
    connections: usize,
    duration_s: f64,
    cpus: usize,
    results: Vec<FrameworkResult>,
}

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn main() -> ExitCode {
    let mut args: Args = clap::Parser::parse();
    if args.short {
        args.pairs = 1;
        args.duration = 0.5;
        args.idle = 100;
        args.connections = args.connections.min(8);
    }
    raise_fd_limit();
    let wrk = !args.no_wrk && !args.short && Command::new("wrk").arg("-v").output().is_ok();
    let valgrind = Command::new("valgrind").arg("--version").output().is_ok();
    if args.callgrind && !valgrind {
        eprintln!("error: --callgrind needs valgrind");
        return ExitCode::from(2);
    }
    let started = Instant::now();
    let mut results = Vec::new();
    for framework in &args.frameworks {
        let result = (|| -> Result<FrameworkResult, String> {
            eprintln!("bench: {framework}: throughput");
            let throughput = throughput(framework, &args, wrk)?;
            eprintln!("bench: {framework}: memory per idle connection");
            let memory = memory(framework, args.idle)?;
            let instructions = if args.callgrind {
                eprintln!("bench: {framework}: instructions per request (callgrind)");
                Some(callgrind(framework, args.short)?)
            } else {
                None
            };
            Ok(FrameworkResult {
                framework: framework.clone(),
                throughput,
                memory,
                instructions,
            })
        })();
        match result {
            Ok(result) => results.push(result),
            Err(e) => {
                eprintln!("error: {framework}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let summary = Summary {
        load: if wrk { "wrk -t1" } else { "in-repo client" },
        connections: args.connections,
        duration_s: args.duration,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        results,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).expect("serializes")
        );
    } else {
        print!("{}", render(&summary));
    }
    eprintln!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}

fn render(summary: &Summary) -> String {
    let mut out = format!(
        "load: {}, {} keep-alive connections, {} s runs, {} CPUs\n\n",
        summary.load, summary.connections, summary.duration_s, summary.cpus
    );
    out.push_str(
        "framework  ours/plain req/s (A/A)   plain req/s   ours req/s   p99 ms plain/ours   bytes/idle conn plain/ours (ratio)   instr/req plain/ours (ratio)\n",
    );
    for r in &summary.results {
        let t = &r.throughput;
        let m = &r.memory;
        let instructions = r.instructions.as_ref().map_or("-".to_owned(), |i| {
            format!(
                "{:.0} / {:.0} ({:.3})",
                i.plain_per_request, i.ours_per_request, i.ratio
            )
        });
        out.push_str(&format!(
            "{:<9}  {:.3} ({:.3})              {:>11.0}   {:>10.0}   {:.2} / {:.2}         {:.0} / {:.0} ({:.3})               {}\n",
            r.framework,
            t.ratio,
            t.aa_ratio,
            t.plain.rps,
            t.ours.rps,
            t.plain.p99_ms,
            t.ours.p99_ms,
            m.plain_bytes,
            m.ours_bytes,
            m.ratio,
            instructions
        ));
    }
    out
}
