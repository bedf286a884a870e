//! Overlapping upgrades under the real `einhorn-master`: upgrades that arrive before the last
//! one's new workers have ACKed never leave the port without an acceptor. Workers take 3 s
//! to start serving and ACK (`-m manual`), upgrades come 1 s apart (3 `ctl upgrade`s and a
//! SIGHUP), keep-alive load runs throughout and a fresh connection probes every 50 ms.

use std::time::Duration;

use graceful_listener_suite::harness::example;
use graceful_listener_suite::load::{self, LoadConfig};
use graceful_listener_suite::master::{Master, WAIT};
use graceful_listener_suite::probe::Probe;
use nix::sys::signal::Signal;

/// The longest a fresh connection may wait for its answer: "a few hundred ms" on a busy
/// 2-core machine running a debug build, where a gap (nobody accepting) lasts seconds.
const SLOWEST_PROBE: Duration = Duration::from_millis(500);

#[test]
fn overlapping_upgrades_never_leave_the_port_without_an_acceptor() {
    // A worker that takes 3 s before it serves (and ACKs), and stops at once when told to
    // during that time: `exec` keeps the pid the master started.
    let slow_start = "trap 'kill $! 2>/dev/null; exit 0' USR2; sleep 3 & wait $!; exec \"$0\"";
    let master = Master::start(
        &["-b", "127.0.0.1:0", "-n", "2", "-m", "manual"],
        &[
            "sh".as_ref(),
            "-c".as_ref(),
            slow_start.as_ref(),
            example("hyper-hello").as_os_str(),
        ],
    );
    let addr = master.addr(0);
    let first = master.wait_serving(2);
    let load = load::start(
        LoadConfig::new(addr)
            .connections(8)
            .duration(Duration::from_secs(120)),
    );
    let probe = Probe::start(addr, Duration::from_millis(50));

    // Three upgrades 1 s apart, each started once the previous one's first new worker runs
    // (so each supersedes a worker that has not ACKed), then a SIGHUP the same way.
    let mut upgrades = Vec::new();
    for version in 1..=4u64 {
        if version == 4 {
            master.signal(Signal::SIGHUP);
        } else {
            let socket = master.socket.clone();
            upgrades.push(std::thread::spawn(move || {
                einhorn_master::client::upgrade(&socket, WAIT)
            }));
        }
        master.wait_for_line(&format!("version {version})"));
        if version < 4 {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let state = master.wait_state("2 workers of version 4 serving alone", |s| {
        s.version == 4
            && s.upgrading.is_none()
            && s.serving_pids().len() == 2
            && s.workers
                .iter()
                .all(|w| w.version == 4 && w.retired.is_none())
    });
    for upgrade in upgrades {
        let replies = upgrade
            .join()
            .expect("upgrade thread")
            .unwrap_or_else(|e| panic!("upgrade failed: {e}\n{}", master.output()));
        assert_eq!(replies.last().unwrap().message, "Upgrade done");
    }
    let probed = probe.stop();
    let report = load.stop();
    eprintln!("probe: {probed}\nload: {report}");

    assert!(probed.failures.is_empty(), "{probed}\n{}", master.output());
    assert!(
        probed.slowest < SLOWEST_PROBE,
        "a fresh connection waited: {probed}\n{}",
        master.output()
    );
    assert_eq!(report.failed(), 0, "{report}\n{}", master.output());
    assert!(state.serving_pids().iter().all(|p| !first.contains(p)));
    let output = master.output();
    assert_eq!(
        output
            .matches("workers of a superseded version that never ACKed")
            .count(),
        3,
        "each upgrade stopped the one it superseded:\n{output}"
    );
    assert!(
        !output.contains("killed by SIGUSR2"),
        "no worker died of a signal's default action:\n{output}"
    );
}
