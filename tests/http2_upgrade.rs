//! HTTP/2 across upgrades under the real `einhorn-master`: multiplexed load from hyper-util's
//! pooled client, and from h2load (package nghttp2-client) when installed, loses no request
//! while the workers are replaced. (actix-web serves HTTP/2 only over TLS here; its examples
//! speak HTTP/1.)

mod http_support;

use std::process::Command;
use std::time::Duration;

use graceful_listener_suite::harness::{Proc, wait_until};
use graceful_listener_suite::load_h2;
use http_support::{HttpMaster, WAIT};

for_each_engine_framework!(multiplexed_clients_lose_nothing_across_upgrades);

const UPGRADES: usize = 4;

/// h2load (package nghttp2-client) for one upgrade: 16 connections of 8 streams, after a short
/// warm-up, logging every request to `log`. h2load does not open a new connection after a
/// GOAWAY, so each round needs its own.
fn spawn_h2load(addr: std::net::SocketAddr, log: &std::path::Path) -> Proc {
    let mut cmd = Command::new("h2load");
    cmd.args(["-c", "16", "-m", "8", "-D", "3", "--warm-up-time", "100ms"])
        .arg(format!("--log-file={}", log.display()))
        .arg(format!("http://{addr}/"));
    Proc::spawn(cmd).expect("h2load")
}

/// What h2load's request log (`--log-file`: start time in microseconds, status, duration) says.
#[derive(Debug, Default)]
struct H2loadLog {
    /// Requests sent that got a 2xx.
    succeeded: usize,
    /// Requests sent that did not: a stream reset, refused, or an error status.
    failed: Vec<String>,
    /// Requests h2load queued and then never sent: it reads a response's end and the server's
    /// GOAWAY in one batch, queues the next request on the first, and its HTTP/2 library
    /// refuses it at send time on the second. h2load counts them as failed and does not
    /// retry them; they never reach any server.
    never_sent: usize,
}

fn read_h2load_log(text: &str) -> H2loadLog {
    let mut log = H2loadLog::default();
    for line in text.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [start, status, _] = fields[..] else {
            panic!("unexpected h2load log line {line:?}");
        };
        // A request never sent has no send time: h2load logs the epoch.
        if start == "0" {
            log.never_sent += 1;
        } else if status.starts_with('2') && status.len() == 3 {
            log.succeeded += 1;
        } else {
            log.failed.push(line.to_string());
        }
    }
    log
}

fn multiplexed_clients_lose_nothing_across_upgrades(example: &str) {
    let master = HttpMaster::start(example, 2, &["--drain-timeout", "10"]);
    let mut current = master.wait_serving(2);
    let load = load_h2::start(master.addr, 64, Duration::from_secs(10));
    let answered = |pids: &[u32]| {
        wait_until(WAIT, || {
            load.snapshot().pids.keys().any(|p| pids.contains(p))
        })
    };
    assert!(answered(&current), "{}", master.master.output());
    let h2load_installed = Command::new("h2load").arg("--version").output().is_ok();
    let logs = tempfile::tempdir().expect("temporary directory");
    let mut h2load_total = H2loadLog::default();
    for round in 1..=UPGRADES {
        let h2load_log = logs.path().join(format!("round-{round}.log"));
        let h2load = h2load_installed.then(|| {
            let h2load = spawn_h2load(master.addr, &h2load_log);
            h2load
                .wait_for_line("Main benchmark duration is started", WAIT)
                .unwrap_or_else(|| panic!("h2load did not start:\n{}", h2load.output()));
            h2load
        });
        std::thread::sleep(Duration::from_millis(300));
        master.upgrade();
        let new = master.wait_serving(2);
        assert!(new.iter().all(|p| !current.contains(p)), "round {round}");
        assert!(answered(&new), "round {round}: {}", master.master.output());
        for pid in &current {
            let exit = master.wait_exited(*pid);
            assert!(exit.contains("(exit status 0)"), "round {round}: {exit}");
        }
        current = new;
        if let Some(mut h2load) = h2load {
            let status = h2load.wait_timeout(WAIT).expect("h2load finishes");
            let text = std::fs::read_to_string(&h2load_log).unwrap_or_default();
            let log = read_h2load_log(&text);
            assert!(
                log.failed.is_empty(),
                "round {round}: requests sent and lost: {:?}\n{}",
                log.failed,
                h2load.output()
            );
            assert!(
                log.succeeded > 0,
                "round {round} ({status:?}): {}",
                h2load.output()
            );
            h2load_total.succeeded += log.succeeded;
            h2load_total.never_sent += log.never_sent;
        }
    }
    let report = load.stop();
    eprintln!("{example}: hyper-util client: {report}");
    assert_eq!(report.failed, 0, "{report}\n{}", master.master.output());
    assert!(report.ok > 100, "{report}");
    if h2load_installed {
        eprintln!(
            "{example}: h2load over {UPGRADES} upgrades: {} succeeded, 0 sent and lost, {} queued \
             by h2load after the GOAWAY and never sent",
            h2load_total.succeeded, h2load_total.never_sent
        );
        assert!(h2load_total.succeeded > 100, "{h2load_total:?}");
    }
}

#[test]
fn h2load_log_lines_are_sorted_by_what_reached_the_server() {
    let log = read_h2load_log(
        "1764000000000000\t200\t812\n0\t-1\t1764000000000000\n1764000000000100\t-1\t90\n\
         1764000000000200\t503\t70\n",
    );
    assert_eq!(log.succeeded, 1);
    assert_eq!(log.never_sent, 1);
    assert_eq!(log.failed.len(), 2);
}
