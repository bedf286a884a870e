//! The spawn-time signal window: a stop signal that reaches a worker before its handlers are
//! installed must not kill it by the default action. `einhorn-master` starts graceful-listener
//! workers with the stop signals blocked; the library unblocks them once its handlers exist.
//!
//! 200 SIGHUPs, each 0 to 10 ms after the previous one's new worker was launched: every
//! upgrade supersedes a worker that has just been exec'd, which the master stops with
//! SIGUSR2 at once. Not one may die of SIGUSR2's default action; each exits 0 (graceful).

use std::time::Duration;

use graceful_listener_suite::harness::{example, wait_until};
use graceful_listener_suite::master::{Master, WAIT};
use nix::sys::signal::Signal;

const ROUNDS: u64 = 200;

#[test]
fn a_stop_signal_right_after_spawn_never_kills_a_worker_by_default_action() {
    let master = Master::start(
        &["-b", "127.0.0.1:0", "-n", "1", "-m", "manual"],
        &[example("hyper-hello")],
    );
    master.wait_serving(1);
    // A deterministic spread of delays over 0..=10 ms (xorshift).
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    for version in 1..=ROUNDS {
        master.signal(Signal::SIGHUP);
        master.wait_for_line(&format!("version {version})"));
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_micros(seed % 10_001));
    }
    let state = master.wait_state("the last version serving alone", |s| {
        s.version == ROUNDS && s.upgrading.is_none() && s.workers.len() == 1
    });
    assert_eq!(state.serving_pids().len(), 1);
    // Every superseded worker was reaped: ROUNDS - 1 of them, plus the first one retired by
    // the last upgrade.
    assert!(
        wait_until(WAIT, || master.proc.count_lines("===> Exited worker")
            >= ROUNDS as usize),
        "every retired worker exits:\n{}",
        master.output()
    );
    let output = master.output();
    let killed = output.matches("killed by SIGUSR2").count();
    let graceful = output.matches("(exit status 0)").count();
    assert_eq!(killed, 0, "{killed} workers died of SIGUSR2:\n{output}");
    assert_eq!(graceful, ROUNDS as usize, "{output}");
}
