//! HTTP/2 across upgrades under the real `einhorn-master`: multiplexed load from hyper-util's
//! pooled client, and from h2load (package nghttp2-client) when installed, loses no request
//! while the workers are replaced. (actix-web serves HTTP/2 only over TLS here; its examples
//! speak HTTP/1.)

mod http_support;

use std::time::Duration;

use graceful_listener_suite::h2load::{self, H2loadLog};
use graceful_listener_suite::harness::wait_until;
use graceful_listener_suite::load_h2;
use http_support::{HttpMaster, WAIT};

for_each_engine_framework!(multiplexed_clients_lose_nothing_across_upgrades);

const UPGRADES: usize = 4;

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
    let h2load_installed = h2load::installed();
    let logs = tempfile::tempdir().expect("temporary directory");
    let mut h2load_total = H2loadLog::default();
    for round in 1..=UPGRADES {
        let h2load_log = logs.path().join(format!("round-{round}.log"));
        let h2load = h2load_installed.then(|| {
            let h2load = h2load::spawn(master.addr, &h2load_log);
            h2load
                .wait_for_line("Main benchmark duration is started", WAIT)
                .unwrap_or_else(|| panic!("h2load did not start:\n{}", h2load.output()));
            h2load
        });
        assert!(
            load.wait_answers(200, WAIT),
            "round {round}: no load before the upgrade"
        );
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
            let log = h2load::read_log(&text);
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
