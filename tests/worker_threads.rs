//! Workers sized to their share of the machine: under `einhorn-master -n N`, each worker's
//! runtime (tokio's, or actix-web's workers) runs `ceil(cores / N)` threads unless the
//! operator (`TOKIO_WORKER_THREADS`, `--worker-threads`) chose otherwise. Counted from the
//! kernel's list of each worker's threads, by the names the runtimes give them.

use std::process::Command;

use graceful_listener_suite::harness::example;
use graceful_listener_suite::master::Master;

/// What each runtime names its worker threads, as `/proc/PID/task/TID/comm` shows them (15
/// bytes at most): tokio's `tokio-rt-worker`, actix-web's `actix-rt|system:0|arbiter:N`
/// (one per actix worker; the example sets no `workers` of its own).
const TOKIO: &str = "tokio-rt-worker";
const ACTIX: &str = "actix-rt|system";

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The threads of `pid` whose name starts with `prefix`.
fn threads_named(pid: i32, prefix: &str) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the worker's threads");
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

/// Starts `example` under a master with `-n workers` and `flags`, the master's environment
/// adjusted by `env` (`None` removes the variable); returns each serving worker's count of
/// threads named `prefix`.
fn runtime_threads(
    example_name: &str,
    prefix: &str,
    workers: usize,
    flags: &[&str],
    threads_env: Option<&str>,
) -> Vec<usize> {
    let n = workers.to_string();
    let mut master_flags = vec!["-b", "127.0.0.1:0", "-m", "manual", "-n", &n];
    master_flags.extend_from_slice(flags);
    let master = Master::start_with(
        &master_flags,
        &[example(example_name)],
        |cmd: &mut Command| {
            match threads_env {
                Some(value) => cmd.env("TOKIO_WORKER_THREADS", value),
                None => cmd.env_remove("TOKIO_WORKER_THREADS"),
            };
        },
    );
    // A worker ACKs once its runtime (every actix worker too) is up: its threads exist.
    let pids = master.wait_serving(workers);
    pids.iter().map(|&pid| threads_named(pid, prefix)).collect()
}

#[test]
fn each_tokio_worker_runs_its_share_of_the_cores() {
    let share = cores().div_ceil(2);
    assert_eq!(
        runtime_threads("axum-hello", TOKIO, 2, &[], None),
        [share, share]
    );
    // One worker: the whole machine, as a single process would have.
    assert_eq!(
        runtime_threads("axum-hello", TOKIO, 1, &[], None),
        [cores()]
    );
}

#[test]
fn the_operators_choice_wins_over_the_share() {
    // TOKIO_WORKER_THREADS given to the master reaches the workers unchanged.
    assert_eq!(
        runtime_threads("axum-hello", TOKIO, 2, &[], Some("3")),
        [3, 3]
    );
    // --worker-threads N, and off: each runtime sizes itself to the machine.
    assert_eq!(
        runtime_threads("axum-hello", TOKIO, 2, &["--worker-threads", "2"], None),
        [2, 2]
    );
    assert_eq!(
        runtime_threads("axum-hello", TOKIO, 2, &["--worker-threads", "off"], None),
        [cores(), cores()]
    );
}

#[test]
fn each_actix_worker_runs_its_share_of_the_cores() {
    let share = cores().div_ceil(2);
    assert_eq!(
        runtime_threads("actix-hello", ACTIX, 2, &[], None),
        [share, share]
    );
    assert_eq!(
        runtime_threads("actix-hello", ACTIX, 2, &[], Some("3")),
        [3, 3]
    );
}

#[test]
fn a_bad_worker_threads_value_is_refused_by_name() {
    let output = Command::new(graceful_listener_suite::harness::binary("einhorn-master"))
        .args(["-b", "127.0.0.1:0", "--worker-threads", "0", "--", "true"])
        .output()
        .expect("run einhorn-master");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--worker-threads") && stderr.contains("\"0\""),
        "{stderr}"
    );
}
