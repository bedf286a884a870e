//! The demo: zero-downtime upgrades, seen from a client, beside today's way.
//!
//! `cargo build --release -p graceful-listener-demo && target/release/demo` starts `einhorn-master` with N
//! `axum-hello` workers on a loopback port, hammers it with keep-alive HTTP/1.1 load,
//! performs K smooth upgrades through the master's command socket, and prints what the
//! clients saw. Then it does the same with `axum-baseline` (the Einhorn fd taken by hand, a
//! manual ACK, and `axum::serve(..).with_graceful_shutdown(SIGUSR2)`): same master, same load,
//! same upgrades. With `--framework actix`, the same with `actix-hello` beside
//! `actix-baseline` (actix's own graceful stop on SIGUSR2); with `--framework warp`,
//! `warp-hello` beside `warp-baseline` (warp's own `graceful`). The run itself is
//! [`graceful_listener_demo::upgrades`].
//!
//! The master and the axum workers are bins of this package, beside this one: the command
//! that built the demo built them, and the demo builds nothing. The actix-web and warp workers
//! are the workspace's examples (`cargo build --release --example actix-hello --example
//! actix-baseline`), kept out of this package so that the first command builds no framework it
//! does not run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use graceful_listener_demo::upgrades::{
    self, Contender, ContenderResult, Counts, Latency, Programs, UpgradeConfig,
};
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
    /// Also write the JSON summary to this file (tests read it there: stdout and stderr
    /// interleave when both are captured).
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
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
    Warp,
    Actix,
}

impl Framework {
    fn name(self) -> &'static str {
        match self {
            Framework::Axum => "axum",
            Framework::Warp => "warp",
            Framework::Actix => "actix-web",
        }
    }

    /// Ours, then the baseline.
    fn contenders(self) -> [Contender; 2] {
        let key = match self {
            Framework::Axum => "axum",
            Framework::Warp => "warp",
            Framework::Actix => "actix",
        };
        upgrades::contenders(key).expect("every framework of the demo has a baseline")
    }

    /// The master and the workers of `contenders`, checked to be built: the master and the
    /// axum workers beside this program, the other frameworks' workers among the workspace's
    /// examples (with the command that builds them when they are not).
    fn programs(self, contenders: &[Contender]) -> Result<Programs, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
        let here = exe.parent().map_or_else(PathBuf::new, PathBuf::from);
        let programs = Programs {
            master: here.join("demo-master"),
            workers: match self {
                Framework::Axum => here.clone(),
                Framework::Warp | Framework::Actix => here.join("examples"),
            },
        };
        if !programs.master.is_file() {
            return Err(format!(
                "{} is not built: build the demo's programs first, `cargo build --release -p graceful-listener-demo` (`cargo run` builds the demo's alone)",
                programs.master.display()
            ));
        }
        for contender in contenders {
            programs.worker(contender).map_err(|e| match self {
                Framework::Axum => format!(
                    "{e}: build the demo's programs first, `cargo build --release -p graceful-listener-demo`"
                ),
                Framework::Warp | Framework::Actix => {
                    let profile = if cfg!(debug_assertions) { "" } else { " --release" };
                    let examples: Vec<String> = contenders
                        .iter()
                        .map(|c| format!("--example {}", c.example))
                        .collect();
                    format!(
                        "{e}: the {} workers are the workspace's examples; build them first with `cargo build{profile} {}`",
                        self.name(),
                        examples.join(" ")
                    )
                }
            })?;
        }
        Ok(programs)
    }
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
    let programs = match args.framework.programs(&[ours, baseline]) {
        Ok(programs) => programs,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
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
    let config = UpgradeConfig {
        programs,
        workers: args.workers,
        upgrades: args.upgrades,
        connections: args.connections,
        interval: Duration::from_secs_f64(args.interval),
        progress: true,
        max_unacked: 1,
    };
    for contender in &contenders {
        match upgrades::run(contender, &config) {
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
    let printed = graceful_listener_demo::print_results(
        &summary,
        || render(&summary),
        args.json,
        args.json_out.as_deref(),
    );
    if let Err(e) = printed {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
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
