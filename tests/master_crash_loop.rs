//! Crash loops under the real `einhorn-master`: a worker that dies at once, or soon after its
//! ACK, is respawned with a growing delay in every ACK mode; a worker that then stays up ends
//! the backoff, and `state` shows both.

use std::path::Path;
use std::time::{Duration, Instant};

use graceful_listener_suite::harness::example;
use graceful_listener_suite::master::{Master, WAIT};

/// A worker that runs `sleep 1000` once `flag` exists, and until then dies after `after`
/// seconds with status 1.
fn crashing_worker(flag: &Path, after: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            "if [ -e '{}' ]; then exec sleep 1000; fi; sleep {after}; exit 1",
            flag.display()
        ),
    ]
}

/// The times between the first `launches` launches (from the master's log, as they appear).
fn launch_gaps(master: &Master, launches: usize) -> Vec<Duration> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT * 2;
    while seen.len() < launches {
        assert!(Instant::now() < deadline, "{}", master.output());
        let count = master.proc.count_lines("===> Launched");
        while seen.len() < count.min(launches) {
            seen.push(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    seen.windows(2).map(|w| w[1] - w[0]).collect()
}

fn crash_loop_backs_off_then_a_worker_that_stays_up_ends_it(ack_mode: &str, dies_after: &str) {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("healthy");
    crash_loop_backs_off(
        &["-n", "1", "-m", ack_mode],
        &crashing_worker(&flag, dies_after),
        &flag,
    );
}

/// Runs `command` under a master with `flags` (and `--min-uptime 1`): launches grow apart
/// until `flag` exists, then the worker stays up and the backoff ends.
fn crash_loop_backs_off(flags: &[&str], command: &[String], flag: &Path) {
    let mut all = flags.to_vec();
    all.extend(["--min-uptime", "1"]);
    let master = Master::start(&all, command);
    let gaps = launch_gaps(&master, 5);
    eprintln!("{flags:?}: gaps between launches {gaps:?}");
    // Launches grow apart (1 s, 1.5 s, 2.25 s ... from one spawn to the next, or the
    // worker's own life when longer): never a flat loop.
    assert!(gaps[0] >= Duration::from_millis(900), "{gaps:?}");
    for pair in gaps.windows(2) {
        assert!(
            pair[1] > pair[0] + Duration::from_millis(200),
            "launches grow apart: {gaps:?}\n{}",
            master.output()
        );
    }
    let state = master.state();
    assert!(state.consecutive_failures >= 4, "{state:?}");
    assert!(
        state.respawn_backoff_seconds.is_some_and(|s| s >= 2.0),
        "{state:?}"
    );

    // The next worker stays up: once it has been up --min-uptime after its ACK, the
    // backoff is over.
    std::fs::write(flag, "").unwrap();
    master.wait_for_line("failed starts forgiven");
    let state = master.wait_state("the backoff over", |s| {
        s.consecutive_failures == 0 && s.serving_pids().len() == 1
    });
    assert_eq!(state.respawn_backoff_seconds, None);
}

#[test]
fn a_worker_dying_at_once_under_timer_ack_zero_backs_off() {
    crash_loop_backs_off_then_a_worker_that_stays_up_ends_it("0", "0");
}

#[test]
fn a_worker_dying_soon_after_its_timer_ack_backs_off() {
    // ACKed by the timer at 0.2 s, dead at 0.5 s: within --min-uptime of the ACK.
    crash_loop_backs_off_then_a_worker_that_stays_up_ends_it("0.2", "0.5");
}

#[test]
fn a_worker_dying_soon_after_its_manual_ack_backs_off() {
    // hyper-hello ACKs by itself once serving, and exits 1 0.3 s later.
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("healthy");
    let hello = example("hyper-hello");
    let script = format!(
        "if [ -e '{}' ]; then exec '{}'; fi; exec '{}' --exit-after-ack 300",
        flag.display(),
        hello.display(),
        hello.display()
    );
    crash_loop_backs_off(
        &["-b", "127.0.0.1:0", "-n", "1", "-m", "manual"],
        &["sh".into(), "-c".into(), script],
        &flag,
    );
}
