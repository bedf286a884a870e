//! HTTP/3 under einhorn-master (`-b 127.0.0.1:0,udp`, the `h3-hello` example): upgrades that
//! no HTTP/3 client notices, with pooled clients that never retry a request they sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use graceful_listener_suite::h3::{H3Clients, H3Counts};
use graceful_listener_suite::harness::example;
use graceful_listener_suite::master::Master;
use graceful_listener_suite::tls::TestCertificate;

fn start(dir: &std::path::Path, flags: &[&str], drain_timeout: &str) -> (Master, TestCertificate) {
    let cert = TestCertificate::new(dir);
    let mut command = vec![example("h3-hello").display().to_string()];
    command.extend(cert.worker_args());
    command.extend(["--drain-timeout".to_owned(), drain_timeout.to_owned()]);
    let mut master_flags = vec!["-b", "127.0.0.1:0,udp", "-m", "manual"];
    master_flags.extend_from_slice(flags);
    let master = Master::start(&master_flags, &command);
    (master, cert)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

#[test]
fn a_pooled_client_keeps_its_connection_across_an_upgrade_and_the_old_worker_drains() {
    let dir = tempfile::tempdir().unwrap();
    let (master, cert) = start(dir.path(), &["-n", "1"], "10");
    let old = master.wait_serving(1);
    let addr = master.addr(0);
    let rt = runtime();
    rt.block_on(async {
        let clients = H3Clients::new(addr, cert.client_config(&[b"h3"]), 0);
        let mut client = clients.client();
        let body = client
            .get("/")
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", master.output()));
        let first = String::from_utf8_lossy(&body).into_owned();
        assert!(first.contains(&format!("pid={}", old[0])), "{first}");
        // A download that outlives the upgrade, on the same pooled connection's worker.
        let mut downloader = clients.client();
        let download =
            tokio::spawn(async move { downloader.get("/download?chunks=60&every_ms=50").await });
        // Let the download start before the upgrade.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let replies = tokio::task::spawn_blocking({
            let socket = master.socket.clone();
            move || einhorn_master::client::upgrade(&socket, Duration::from_secs(30))
        })
        .await
        .unwrap();
        replies.unwrap_or_else(|e| panic!("upgrade: {e}\n{}", master.output()));
        let body = download
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("download: {e}\n{}", master.output()));
        let text = String::from_utf8_lossy(&body);
        assert_eq!(body.len(), 60 * 1024);
        assert!(
            text.lines()
                .all(|l| l.starts_with(&format!("pid={} ", old[0]))),
            "the old worker answered it all"
        );
        // The pooled client goes on: GOAWAY, then a new connection to the new worker.
        let mut seen_new = false;
        for _ in 0..50 {
            let body = client
                .get("/")
                .await
                .unwrap_or_else(|e| panic!("{e}\n{}", master.output()));
            if !String::from_utf8_lossy(&body).contains(&format!("pid={}", old[0])) {
                seen_new = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            seen_new,
            "the new worker never answered:\n{}",
            master.output()
        );
        let counts = &clients.counts;
        assert_eq!(H3Counts::get(&counts.failed), 0);
        assert_eq!(H3Counts::get(&counts.resets), 0);
    });
    master.wait_exited(old[0]);
    // The download's datagrams reached the old worker through the new one's relay.
    let output = master.output();
    let done = output
        .lines()
        .find(|l| l.contains(&format!("pid={}", old[0])) && l.contains("HTTP/3 worker done"))
        .unwrap_or_else(|| panic!("no end line for the old worker:\n{output}"));
    let relayed_in: u64 = done
        .split("relayed_in=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no relayed_in in {done:?}"));
    assert!(
        relayed_in > 0,
        "nothing was relayed to the old worker: {done}"
    );
    let new = master.wait_serving(1);
    assert_ne!(new, old);
}
