//! HTTPS across upgrades under the real `einhorn-master`, with a real TLS client (rustls;
//! a certificate made by rcgen): keep-alive HTTP/1.1 load loses nothing across 5 upgrades,
//! and so does HTTP/2 from hyper-util's pooled client (ALPN `h2`).

mod http_support;

use std::time::Duration;

use graceful_listener_suite::harness::wait_until;
use graceful_listener_suite::load_h2;
use graceful_listener_suite::tls::TestCertificate;
use http_support::{HttpMaster, UpgradeOutcome, UpgradePlan, WAIT, upgrades_under_load};

for_each_framework!(https_keep_alive_loses_nothing_across_upgrades);
for_each_engine_framework!(https_http2_loses_nothing_across_upgrades);

fn https_keep_alive_loses_nothing_across_upgrades(example: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCertificate::new(dir.path());
    let plan = UpgradePlan {
        worker_args: cert.worker_args(),
        tls: Some(cert.client_config(&[b"http/1.1"])),
        ..UpgradePlan::new(2, 5, 16)
    };
    let UpgradeOutcome { report, master, .. } = upgrades_under_load(example, &plan);
    eprintln!("{example} over TLS: {report}");
    assert_eq!(report.failed(), 0, "{report}\n{}", master.master.output());
    assert!(
        report.ok >= 100,
        "too little traffic to mean anything: {report}"
    );
}

fn https_http2_loses_nothing_across_upgrades(example: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCertificate::new(dir.path());
    let args = [
        vec!["--drain-timeout".to_owned(), "10".to_owned()],
        cert.worker_args(),
    ]
    .concat();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let master = HttpMaster::start(example, 2, &args);
    let mut current = master.wait_serving(2);
    let load = load_h2::start_with(
        master.addr,
        64,
        Duration::from_secs(10),
        Some(cert.client_config(&[b"h2"])),
    );
    let answered = |pids: &[u32]| {
        wait_until(WAIT, || {
            load.snapshot().pids.keys().any(|p| pids.contains(p))
        })
    };
    assert!(answered(&current), "{}", master.master.output());
    for round in 1..=4 {
        assert!(
            load.wait_answers(200, WAIT),
            "round {round}: no load before the upgrade"
        );
        master.upgrade();
        let new = master.wait_serving(2);
        assert!(answered(&new), "round {round}: {}", master.master.output());
        for pid in &current {
            let exit = master.wait_exited(*pid);
            assert!(exit.contains("(exit status 0)"), "round {round}: {exit}");
        }
        current = new;
    }
    let report = load.stop();
    eprintln!("{example} HTTP/2 over TLS: {report}");
    assert_eq!(report.failed, 0, "{report}\n{}", master.master.output());
    assert!(report.ok > 100, "{report}");
}
