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

/// h2load's summary line, `requests: N total, N started, N done, N succeeded, N failed, ...`:
/// the succeeded, failed and errored counts.
fn h2load_counts(line: &str) -> Option<(u64, u64, u64)> {
    let count = |word: &str| -> Option<u64> {
        line.split(',')
            .find(|part| part.trim().ends_with(word))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((count("succeeded")?, count("failed")?, count("errored")?))
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
    // h2load beside it when installed: 16 connections of 8 streams, for a fixed time that
    // covers the upgrades.
    let h2load = Command::new("h2load")
        .arg("--version")
        .output()
        .is_ok()
        .then(|| {
            let mut cmd = Command::new("h2load");
            cmd.args(["-c", "16", "-m", "8", "-D", "8"])
                .arg(format!("http://{}/", master.addr));
            Proc::spawn(cmd).expect("h2load")
        });
    for round in 1..=UPGRADES {
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
    }
    let report = load.stop();
    eprintln!("{example}: hyper-util client: {report}");
    assert_eq!(report.failed, 0, "{report}\n{}", master.master.output());
    assert!(report.ok > 100, "{report}");
    if let Some(mut h2load) = h2load {
        let status = h2load.wait_timeout(WAIT).expect("h2load finishes");
        let summary = h2load
            .wait_for_line("requests:", Duration::ZERO)
            .unwrap_or_else(|| panic!("no h2load summary ({status:?}):\n{}", h2load.output()));
        eprintln!("{example}: h2load: {summary}");
        let (succeeded, failed, errored) =
            h2load_counts(&summary).unwrap_or_else(|| panic!("cannot read {summary:?}"));
        assert!(succeeded > 100, "{summary}");
        assert_eq!((failed, errored), (0, 0), "{summary}\n{}", h2load.output());
    }
}
