//! Under Server::Starter (`start_server`, package libserver-starter-perl): the examples,
//! unchanged, serve the socket it passes (`auto` picks `starter@0`), and restarts with
//! SIGHUP under keep-alive load lose no request.

mod http_support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use graceful_listener_suite::harness::{Proc, example, is_alive, spawn_on_free_ports, wait_until};
use graceful_listener_suite::load::{self, LoadConfig};
use http_support::{WAIT, get};
use nix::sys::signal::Signal;

for_each_framework!(restarts_with_sighup_under_keep_alive_load_lose_nothing);

/// The pid of the `n`th worker start_server started (1-based), from its log.
fn nth_worker(server: &Proc, n: usize) -> u32 {
    let lines = server
        .wait_for_lines("starting new worker ", n, WAIT)
        .unwrap_or_else(|| panic!("no worker #{n}:\n{}", server.output()));
    lines[n - 1]
        .rsplit(' ')
        .next()
        .and_then(|pid| pid.trim().parse().ok())
        .expect("a pid")
}

fn restarts_with_sighup_under_keep_alive_load_lose_nothing(example_name: &str) {
    let (mut server, ports) = spawn_on_free_ports(1, "starting new worker", WAIT, |ports| {
        let mut cmd = Command::new("start_server");
        cmd.arg(format!("--port=127.0.0.1:{}", ports[0]))
            .arg("--")
            .arg(example(example_name))
            .args(["--drain-timeout", "10"]);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("EINHORN_") || key.starts_with("LISTEN_") || key == "PORT" {
                cmd.env_remove(key);
            }
        }
        cmd
    });
    let addr: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
    let listening = server
        .wait_for_line("listening (auto)", WAIT)
        .unwrap_or_else(|| panic!("the worker does not listen:\n{}", server.output()));
    assert!(
        listening.contains("bind=starter@0") && listening.contains("run by Server::Starter"),
        "{listening}"
    );
    let first = nth_worker(&server, 1);
    let answer = get(addr, "/").unwrap_or_else(|e| panic!("{e}:\n{}", server.output()));
    assert_eq!(answer.pid(), Some(first), "{answer:?}");

    let load = load::start(
        LoadConfig::new(addr)
            .connections(16)
            .duration(Duration::from_secs(120))
            .timeout(Duration::from_secs(10)),
    );
    let mut workers = vec![first];
    for round in 2..=4 {
        let old = *workers.last().unwrap();
        server.signal(Signal::SIGHUP).unwrap();
        let new = nth_worker(&server, round);
        workers.push(new);
        let deadline = Instant::now() + WAIT;
        let answered = wait_until(WAIT, || load.snapshot().pids.contains_key(&new));
        assert!(
            answered,
            "round {round}: {new} never answered:\n{}",
            server.output()
        );
        assert!(
            wait_until(deadline.saturating_duration_since(Instant::now()), || {
                !is_alive(old as i32)
            }),
            "round {round}: the old worker {old} is still running:\n{}",
            server.output()
        );
        server
            .wait_for_line(&format!("old worker {old} died, status:0"), WAIT)
            .unwrap_or_else(|| panic!("round {round}: {old} did not exit 0:\n{}", server.output()));
    }
    let report = load.stop();
    eprintln!("{example_name}: {report}");
    assert_eq!(report.failed(), 0, "{report}\n{}", server.output());
    assert!(
        report.ok >= 100,
        "too little traffic to mean anything: {report}"
    );
    let known: BTreeSet<u32> = workers.iter().copied().collect();
    assert!(
        report.pids.keys().all(|pid| known.contains(pid)),
        "answers from unknown pids: {report}"
    );

    server.signal(Signal::SIGTERM).unwrap();
    let status = server.wait_timeout(WAIT).expect("start_server exits");
    assert!(status.success(), "{status:?}\n{}", server.output());
}
