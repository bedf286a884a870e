//! A fleet behind a real HAProxy: three hosts of the test's own (network namespaces joined to
//! the test's by veth pairs, addresses in 10.231.0.0/16), each running `einhorn-master` with
//! two workers on its own address, HAProxy in front (`option httpchk GET /readyz`,
//! `http-reuse always`, `retries 0`), paced persistent clients on HAProxy:
//!
//! - (a) a rolling in-place upgrade of the three hosts: 0 failed requests, and no host ever
//!   marked down (the socket never stops accepting, so readiness never flips);
//! - (b) a rolling replacement of each host as Kubernetes does it: SIGTERM, a lame duck in
//!   which `/readyz` fails and HAProxy marks the host down while its workers still serve, the
//!   drain, the exit, a new instance that HAProxy marks up; 0 failed requests;
//! - (c) the same replacement of a plain `axum::serve` app (`axum-baseline`, health checked on
//!   `/`): its failed requests are reported beside ours, not asserted.
//!
//! Needs root, iproute2 and HAProxy (CI has all three); skips with the reason printed where it
//! cannot create network namespaces or HAProxy is missing.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use graceful_listener_suite::balancers::{Haproxy, HealthCheck, worker_drains};
use graceful_listener_suite::harness::{binary, example, wait_until};
use graceful_listener_suite::load::{self, Load, LoadConfig, LoadReport};
use graceful_listener_suite::master::{Master, WAIT};
use graceful_listener_suite::netns::{Host, Hosts};
use nix::sys::signal::Signal;

const HOSTS: usize = 3;
/// Where each host's master listens, on the host's own address.
const PORT: u16 = 8080;
/// Successful responses the clients must get after each step before the next one.
const BETWEEN: u64 = 120;
/// Kubernetes' lame duck, in seconds: longer than HAProxy needs to mark a host down (2 failed
/// checks 200 ms apart, each with a 1 s timeout at most).
const LAME_DUCK: &str = "2";

/// Starts an instance on `host`: `einhorn-master` with two `worker` processes, run in the
/// host's namespace, bound to the host's address.
fn instance(host: &Host, scripts: &Path, worker: &[&str]) -> Master {
    let program = host.wrapper(scripts, &binary("einhorn-master"));
    let bind = format!("{}:{PORT},r", host.addr);
    let master = Master::start_program(
        &program,
        &["-b", &bind, "-n", "2", "-m", "manual"],
        worker,
        |_| {},
    );
    master.wait_serving(2);
    master
}

/// Paced persistent clients: 24 connections, 20 to 600 ms between two requests on each.
fn paced(addr: SocketAddr, path: &str, connections: usize) -> Load {
    load::start(
        LoadConfig::new(addr)
            .connections(connections)
            .path(path)
            .pace(Duration::from_millis(20), Duration::from_millis(600))
            .duration(Duration::from_secs(300)),
    )
}

/// Waits until `load` has `more` successful responses beyond `from`.
fn progress(load: &Load, from: u64, more: u64, what: &str) {
    assert!(
        wait_until(WAIT, || load.snapshot().ok >= from + more),
        "{what}: the load stalled: {}",
        load.snapshot()
    );
}

fn server_name(i: usize) -> String {
    format!("host{i}")
}

/// What a scenario saw.
struct Outcome {
    name: &'static str,
    report: LoadReport,
    took: Duration,
    /// Requests HAProxy sent that got no response at all (it closes the client's connection
    /// silently, without a log line, when that happens on a reused connection).
    unanswered: u64,
    down_transitions: u64,
    abnormal_log_lines: Vec<String>,
}

impl Outcome {
    fn new(name: &'static str, report: LoadReport, took: Duration, haproxy: &Haproxy) -> Outcome {
        let servers = haproxy.servers();
        Outcome {
            name,
            report,
            took,
            unanswered: servers
                .iter()
                .map(|s| s.sessions.saturating_sub(s.responses_2xx + s.responses_5xx))
                .sum(),
            down_transitions: servers.iter().map(|s| s.down_transitions).sum(),
            abnormal_log_lines: haproxy.abnormal_log_lines(),
        }
    }

    /// The line, and the first abnormal lines of HAProxy's log (side and phase of each
    /// termination).
    fn report(&self) -> String {
        let mut text = self.line();
        for line in self.abnormal_log_lines.iter().take(5) {
            text.push_str("\n    haproxy: ");
            text.push_str(line);
        }
        text
    }

    fn line(&self) -> String {
        format!(
            "{}: {} ok, {} failed {:?}, in {:.1} s; haproxy: {} requests no server answered, {} \
             abnormal log lines, {} times a host marked down",
            self.name,
            self.report.ok,
            self.report.failed(),
            self.report.failures,
            self.took.as_secs_f64(),
            self.unanswered,
            self.abnormal_log_lines.len(),
            self.down_transitions,
        )
    }
}

#[test]
fn a_fleet_behind_haproxy_is_upgraded_and_replaced_without_a_failed_request() {
    // Declared first, dropped last: every process in the namespaces is gone by then.
    let hosts = match Hosts::create(HOSTS) {
        Ok(hosts) => hosts,
        Err(reason) => {
            eprintln!("SKIPPED fleet_haproxy: cannot create network namespaces here: {reason}");
            return;
        }
    };
    let scripts = tempfile::tempdir().unwrap();
    let ours_program = example("axum-hello");
    let ours: Vec<&str> = vec![
        ours_program.to_str().unwrap(),
        "--lame-duck",
        LAME_DUCK,
        "--drain-timeout",
        "20",
    ];
    let mut masters: Vec<Master> = hosts
        .all()
        .iter()
        .map(|host| instance(host, scripts.path(), &ours))
        .collect();
    let servers: Vec<(String, SocketAddr)> = hosts
        .all()
        .iter()
        .enumerate()
        .map(|(i, host)| (server_name(i), SocketAddr::new(host.addr.into(), PORT)))
        .collect();
    let haproxy = match Haproxy::start(&servers, Some(&HealthCheck::new("/readyz"))) {
        Ok(haproxy) => haproxy,
        Err(reason) => {
            eprintln!("SKIPPED fleet_haproxy: {reason}");
            return;
        }
    };
    for (name, _) in &servers {
        assert!(
            haproxy.wait_status(name, "UP", WAIT),
            "{name} never up: {:?}\n{}",
            haproxy.server(name),
            haproxy.proc.output()
        );
    }

    // (a) A rolling in-place upgrade: each host's master replaces its workers behind the
    // same socket.
    let started = Instant::now();
    let load = paced(haproxy.addr, "/", 24);
    progress(&load, 0, BETWEEN, "(a) before");
    for (i, master) in masters.iter().enumerate() {
        let before = load.snapshot().ok;
        master
            .upgrade()
            .unwrap_or_else(|e| panic!("(a) upgrade of host {i}: {e}\n{}", master.output()));
        progress(&load, before, BETWEEN, "(a) after an upgrade");
    }
    for master in &masters {
        master.wait_serving(2);
    }
    let upgrade = Outcome::new(
        "(a) rolling upgrade",
        load.stop(),
        started.elapsed(),
        &haproxy,
    );
    eprintln!("fleet_haproxy {}", upgrade.report());
    let upgrade_drains: Vec<(Vec<u64>, u64)> =
        masters.iter().map(|m| worker_drains(&m.output())).collect();
    let upgrade_cut: u64 = upgrade_drains.iter().map(|(_, cut)| cut).sum();
    let mut upgrade_ms: Vec<u64> = upgrade_drains.into_iter().flat_map(|(ms, _)| ms).collect();
    upgrade_ms.sort_unstable();
    eprintln!("fleet_haproxy (a) old workers' drains: {upgrade_ms:?} ms, {upgrade_cut} cut");

    // (b) A rolling replacement, as Kubernetes does it: SIGTERM, the lame duck (not ready,
    // still serving) until the balancer marks the host down, the drain, the exit; a new
    // instance, marked up. A slow route is in flight meanwhile.
    let started = Instant::now();
    let before_down: u64 = haproxy.servers().iter().map(|s| s.down_transitions).sum();
    let load = paced(haproxy.addr, "/", 24);
    let slow = paced(haproxy.addr, "/sleep/300", 4);
    progress(&load, 0, BETWEEN, "(b) before");
    // Connections the replaced instances' drains cut at their timeout.
    let mut cut = 0;
    for (i, master) in masters.iter_mut().enumerate() {
        let name = server_name(i);
        let before = load.snapshot().ok;
        let signaled = Instant::now();
        master.signal(Signal::SIGTERM);
        assert!(
            haproxy.wait_status(&name, "DOWN", WAIT),
            "(b) {name} not marked down in its lame duck: {:?}",
            haproxy.server(&name)
        );
        let down_after = signaled.elapsed();
        let exited = master.wait_exit(WAIT);
        assert!(
            exited.is_some_and(|s| s.success()),
            "(b) host {i}'s instance did not exit cleanly: {exited:?}\n{}",
            master.output()
        );
        let (times, forced) = worker_drains(&master.output());
        cut += forced;
        eprintln!(
            "fleet_haproxy (b) host {i}: marked down {:.1} s after SIGTERM, exited after {:.1} s; drains {times:?} ms, {forced} cut",
            down_after.as_secs_f64(),
            signaled.elapsed().as_secs_f64()
        );
        *master = instance(hosts.host(i), scripts.path(), &ours);
        assert!(
            haproxy.wait_status(&name, "UP", WAIT),
            "(b) the new instance of {name} never up: {:?}",
            haproxy.server(&name)
        );
        progress(&load, before, BETWEEN, "(b) after a replacement");
    }
    let slow_report = slow.stop();
    let mut report = load.stop();
    report.absorb(slow_report);
    let mut replacement = Outcome::new(
        "(b) rolling replacement",
        report,
        started.elapsed(),
        &haproxy,
    );
    replacement.down_transitions -= before_down;
    eprintln!("fleet_haproxy {}", replacement.report());
    drop(haproxy);
    for master in &mut masters {
        master.stop(WAIT);
    }

    // (c) The baseline: the same replacement of `axum::serve(..).with_graceful_shutdown(..)`,
    // which has no lame duck and no readiness route (checked on `/`).
    let baseline_program = example("axum-baseline");
    let baseline: Vec<&str> = vec![baseline_program.to_str().unwrap(), "--drain-timeout", "20"];
    let mut masters: Vec<Master> = hosts
        .all()
        .iter()
        .map(|host| instance(host, scripts.path(), &baseline))
        .collect();
    let haproxy = Haproxy::start(&servers, Some(&HealthCheck::new("/"))).expect("haproxy");
    for (name, _) in &servers {
        assert!(haproxy.wait_status(name, "UP", WAIT), "{name} never up");
    }
    let started = Instant::now();
    let load = paced(haproxy.addr, "/", 24);
    let slow = paced(haproxy.addr, "/sleep/300", 4);
    progress(&load, 0, BETWEEN, "(c) before");
    for (i, master) in masters.iter_mut().enumerate() {
        let name = server_name(i);
        let before = load.snapshot().ok;
        master.signal(Signal::SIGTERM);
        let _ = master.wait_exit(WAIT);
        *master = instance(hosts.host(i), scripts.path(), &baseline);
        assert!(
            haproxy.wait_status(&name, "UP", WAIT),
            "(c) the new instance of {name} never up: {:?}",
            haproxy.server(&name)
        );
        progress(&load, before, BETWEEN, "(c) after a replacement");
    }
    let slow_report = slow.stop();
    let mut report = load.stop();
    report.absorb(slow_report);
    let plain = Outcome::new(
        "(c) baseline replacement",
        report,
        started.elapsed(),
        &haproxy,
    );
    eprintln!("fleet_haproxy {}", plain.report());

    assert_eq!(upgrade_cut, 0, "(a) drains cut connections");
    assert_eq!(
        cut, 0,
        "(b) drains cut connections: after the lame duck, the balancer's pooled connections \
         it no longer uses are closed after the idle grace"
    );
    for outcome in [&upgrade, &replacement] {
        assert_eq!(
            outcome.report.failed(),
            0,
            "{}\n{}",
            outcome.line(),
            outcome.report
        );
        assert_eq!(outcome.unanswered, 0, "{}", outcome.line());
        assert!(
            outcome.abnormal_log_lines.is_empty(),
            "{}: {:#?}",
            outcome.line(),
            outcome.abnormal_log_lines
        );
    }
    assert_eq!(
        upgrade.down_transitions,
        0,
        "an in-place upgrade marked a host down: {}",
        upgrade.line()
    );
    assert_eq!(
        replacement.down_transitions,
        HOSTS as u64,
        "each replaced host marked down once: {}",
        replacement.line()
    );
    assert!(plain.report.ok > 0, "the baseline served: {}", plain.line());
}
