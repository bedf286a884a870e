//! A worker's exit takes its process group with it: a child it forked (here a `sleep` with a
//! marker argument) does not outlive it, one more at each respawn. `--keep-orphans` leaves
//! them, as Einhorn does.

use graceful_listener_suite::harness::{example, pids_running, wait_until};
use graceful_listener_suite::master::{Master, WAIT};

/// The pids of the processes `sleep MARKER`.
fn sleeping_pids(marker: &str) -> Vec<i32> {
    pids_running(&["sleep", marker])
}

fn sleeping(marker: &str) -> usize {
    sleeping_pids(marker).len()
}

/// Kills every `sleep MARKER` when dropped: the test leaves nothing behind, even failing.
struct Sleepers(String);

impl Drop for Sleepers {
    fn drop(&mut self) {
        for pid in sleeping_pids(&self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A master whose worker starts `sleep MARKER` in the background, then becomes hyper-hello.
fn master_with_forking_worker(marker: &str, extra: &[&str]) -> Master {
    let script = format!(
        "sleep {marker} & exec '{}'",
        example("hyper-hello").display()
    );
    let mut flags = vec!["-b", "127.0.0.1:0", "-n", "1", "-m", "manual"];
    flags.extend_from_slice(extra);
    Master::start(&flags, &["sh", "-c", &script])
}

#[test]
fn an_upgraded_workers_children_go_with_it() {
    let marker = format!("{}", 7_000 + std::process::id() % 1_000);
    let _sleepers = Sleepers(marker.clone());
    let master = master_with_forking_worker(&marker, &[]);
    master.wait_serving(1);
    assert_eq!(sleeping(&marker), 1);
    for _ in 0..3 {
        master.upgrade().expect("upgrade");
        master.wait_serving(1);
    }
    assert!(
        wait_until(WAIT, || sleeping(&marker) == 1),
        "only the serving worker's child is left: {}\n{}",
        sleeping(&marker),
        master.output()
    );
    assert!(
        master
            .output()
            .contains("left processes running in its process group")
    );
}

#[test]
fn keep_orphans_leaves_them_as_einhorn_does() {
    let marker = format!("{}", 8_000 + std::process::id() % 1_000);
    let _sleepers = Sleepers(marker.clone());
    let master = master_with_forking_worker(&marker, &["--keep-orphans"]);
    master.wait_serving(1);
    master.upgrade().expect("upgrade");
    master.wait_serving(1);
    assert!(wait_until(WAIT, || sleeping(&marker) == 2));
}
