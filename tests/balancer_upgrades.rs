//! Upgrades behind real load balancers that pool idle keep-alive connections to their servers
//! and never retry a request that failed on one: HAProxy (`http-reuse always`, `retries 0`)
//! and nginx (`keepalive`, `proxy_next_upstream off`) side by side in front of the same
//! `einhorn-master` (2 workers), paced persistent clients on each (20-600 ms between
//! requests, so the balancers' upstream connections go idle), 10 upgrades: not one request
//! fails. HAProxy closes a client's connection without a word (and without a log line) when a
//! request it sent on a reused connection meets the server's close, so the test also checks
//! that HAProxy got a response to every request it sent.
//!
//! Skipped, with the reason printed, where HAProxy or nginx is not installed (CI installs
//! both).

use std::time::Duration;

use graceful_listener_suite::balancers::{Haproxy, Nginx, worker_drains};
use graceful_listener_suite::harness::{example, wait_until};
use graceful_listener_suite::load::{self, Load, LoadConfig, LoadReport};
use graceful_listener_suite::master::{Master, WAIT};

const UPGRADES: usize = 10;
/// Successful responses each balancer's clients must get after an upgrade before the next one
/// (about a second and a half of the paced load).
const BETWEEN: u64 = 80;

#[test]
fn axum_upgrades_behind_haproxy_and_nginx_lose_no_request() {
    upgrades_behind_balancers("axum-hello");
}

#[test]
fn actix_upgrades_behind_haproxy_and_nginx_lose_no_request() {
    upgrades_behind_balancers("actix-hello");
}

/// Paced persistent clients: 16 connections, 20 to 600 ms between two requests on each.
fn paced(addr: std::net::SocketAddr) -> Load {
    load::start(
        LoadConfig::new(addr)
            .connections(16)
            .pace(Duration::from_millis(20), Duration::from_millis(600))
            .duration(Duration::from_secs(300)),
    )
}

fn upgrades_behind_balancers(example_name: &str) {
    let master = Master::start(
        &["-b", "127.0.0.1:0", "-n", "2", "-m", "manual"],
        &[example(example_name)],
    );
    master.wait_serving(2);
    let backend = master.addr(0);
    let haproxy = match Haproxy::start(&[("workers".to_owned(), backend)], None) {
        Ok(haproxy) => haproxy,
        Err(reason) => {
            eprintln!("SKIPPED balancer_upgrades ({example_name}): {reason}");
            return;
        }
    };
    let nginx = match Nginx::start(&[backend]) {
        Ok(nginx) => nginx,
        Err(reason) => {
            eprintln!("SKIPPED balancer_upgrades ({example_name}): {reason}");
            return;
        }
    };
    let via_haproxy = paced(haproxy.addr);
    let via_nginx = paced(nginx.addr);
    let both_served = |at_least: (u64, u64)| {
        wait_until(WAIT, || {
            via_haproxy.snapshot().ok >= at_least.0 && via_nginx.snapshot().ok >= at_least.1
        })
    };
    assert!(
        both_served((BETWEEN, BETWEEN)),
        "no load through the balancers: {} / {}\n{}",
        via_haproxy.snapshot(),
        via_nginx.snapshot(),
        master.output()
    );

    for i in 1..=UPGRADES {
        let before = (via_haproxy.snapshot().ok, via_nginx.snapshot().ok);
        master
            .upgrade()
            .unwrap_or_else(|e| panic!("upgrade {i}: {e}\n{}", master.output()));
        assert!(
            both_served((before.0 + BETWEEN, before.1 + BETWEEN)),
            "upgrade {i}: the load stalled: {} / {}",
            via_haproxy.snapshot(),
            via_nginx.snapshot()
        );
    }
    // Every old worker gone: its pooled connections were closed by the balancers (or used
    // once more and closed after that response).
    master.wait_serving(2);
    let haproxy_report = via_haproxy.stop();
    let nginx_report = via_nginx.stop();
    let (drain_ms, forced) = worker_drains(&master.output());
    let stat = haproxy.server("workers");

    let summary = |name: &str, report: &LoadReport| {
        format!(
            "{name}: {} ok, {} failed, {} worker pids answered",
            report.ok,
            report.failed(),
            report.pids.len()
        )
    };
    let median = drain_ms.get(drain_ms.len() / 2).copied().unwrap_or(0);
    eprintln!(
        "balancer_upgrades ({example_name}): {UPGRADES} upgrades; {}; {}; old workers' drains \
         {} ms (median) to {} ms (max), {forced} connections cut; haproxy sent {} requests, \
         {} answered 2xx",
        summary("haproxy", &haproxy_report),
        summary("nginx", &nginx_report),
        median,
        drain_ms.last().copied().unwrap_or(0),
        stat.sessions,
        stat.responses_2xx,
    );

    assert_eq!(
        haproxy_report.failed(),
        0,
        "behind haproxy: {haproxy_report}"
    );
    assert_eq!(nginx_report.failed(), 0, "behind nginx: {nginx_report}");
    let abnormal = haproxy.abnormal_log_lines();
    assert!(abnormal.is_empty(), "haproxy's log: {abnormal:#?}");
    assert_eq!(
        stat.sessions, stat.responses_2xx,
        "haproxy sent requests that got no response (closed silently): {stat:?}"
    );
    assert_eq!(forced, 0, "a drain cut connections: {drain_ms:?}");
    assert_eq!(
        drain_ms.len(),
        2 * UPGRADES,
        "every old worker drained and said so"
    );
    // Each upgrade replaced both workers, and the new ones served through both balancers.
    for report in [&haproxy_report, &nginx_report] {
        assert!(
            report.pids.len() > UPGRADES,
            "few workers answered: {:?}",
            report.pids
        );
    }
}
