//! Upgrades that prove the new version before they commit, under the real `einhorn-master`
//! and keep-alive load: a warm-up that fails (or outlasts its timeout) fails the upgrade, a
//! canary that crashes after its ACK or answers too many 500s is rolled back, a healthy one
//! goes on; `ctl` says so by its exit status, `state` and the metrics show it.
//!
//! The workers are `hyper-hello`, run through a script that a test rewrites to deploy a bad
//! build (the examples act one with `--warm-up-fail`, `--exit-after-ack`, `--fail-percent`).

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use graceful_listener_suite::harness::{binary, example, unused_loopback_port};
use graceful_listener_suite::load::{self, FailureKind, LoadConfig, LoadReport};
use graceful_listener_suite::master::Master;

/// Writes the worker program: `hyper-hello FLAGS "$@"`, replaced atomically.
fn deploy(program: &Path, flags: &str) {
    deploy_example(program, "hyper-hello", flags);
}

/// Writes the worker program: `EXAMPLE FLAGS "$@"`, replaced atomically.
fn deploy_example(program: &Path, name: &str, flags: &str) {
    let staged = program.with_extension("new");
    let body = format!(
        "#!/bin/sh\nexec {} {flags} \"$@\"\n",
        example(name).display()
    );
    std::fs::write(&staged, body).unwrap();
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&staged, program).unwrap();
}

/// A master of 2 `hyper-hello` workers (manual ACK) run through a deployable script, which
/// lives in the returned directory.
fn start(flags: &[&str]) -> (Master, PathBuf, tempfile::TempDir) {
    start_example("hyper-hello", flags)
}

/// As [`start`], with `name`'s workers.
fn start_example(name: &str, flags: &[&str]) -> (Master, PathBuf, tempfile::TempDir) {
    let mut all = vec!["-b", "127.0.0.1:0", "-n", "2", "-m", "manual"];
    all.extend_from_slice(flags);
    let scripts = tempfile::tempdir().unwrap();
    let program = scripts.path().join("app");
    deploy_example(&program, name, "");
    let master = Master::start(&all, &[program.as_os_str()]);
    master.wait_serving(2);
    (master, program, scripts)
}

/// `einhorn-master ctl -d SOCKET ARGS...`: exit status and output.
fn ctl(socket: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(binary("einhorn-master"))
        .arg("ctl")
        .arg("-d")
        .arg(socket)
        .args(["--timeout", "90"])
        .args(args)
        .output()
        .expect("run ctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Keep-alive load on `GET /` for up to two minutes, each connection making way for a new
/// one after 20 requests (as real clients come and go: a canary gets its share of them).
fn load_on(master: &Master) -> load::Load {
    load::start(
        LoadConfig::new(master.addr(0))
            .connections(4)
            .reconnect_every(20)
            .duration(Duration::from_secs(120)),
    )
}

/// The failures of a run other than 500s answered on purpose.
fn failures_but_500s(report: &LoadReport) -> u64 {
    report.failed() - report.failures_of(FailureKind::Status)
}

/// The old workers serve alone, and keep serving.
fn old_workers_serve_on(master: &Master, old: &[i32]) {
    let state = master.wait_state("the old workers serving alone", |s| {
        s.upgrading.is_none() && s.workers.len() == 2
    });
    let mut serving = state.serving_pids();
    serving.sort_unstable();
    let mut old = old.to_vec();
    old.sort_unstable();
    assert_eq!(serving, old, "{}", master.output());
}

#[test]
fn a_warm_up_that_fails_or_outlasts_its_timeout_fails_the_upgrade_and_the_old_workers_serve_on() {
    // The default upgrade timeout (60 s): three failed starts in a row fail it within seconds.
    let (master, program, _scripts) = start(&[]);
    let old = master.state().serving_pids();
    let load = load_on(&master);

    for (flags, error) in [
        (
            "--warm-up-fail",
            "warm-up failed: the database at db.internal:5432 refused the connection (--warm-up-fail)",
        ),
        (
            "--warm-up-ms 10000 --warm-up-timeout 0.5",
            "warm-up did not finish within 500ms",
        ),
    ] {
        deploy(&program, flags);
        let started = std::time::Instant::now();
        let (status, out) = ctl(&master.socket, &["upgrade"]);
        let took = started.elapsed();
        assert_ne!(status, 0, "the upgrade to {flags} must fail:\n{out}");
        assert!(
            out.contains("3 new workers in a row exited before their ACK"),
            "{out}"
        );
        assert!(took < Duration::from_secs(10), "ctl took {took:?}: {out}");
        master.wait_for_line(error);
        old_workers_serve_on(&master, &old);
    }
    let report = load.stop();
    eprintln!("load: {report}");
    assert_eq!(report.failed(), 0, "{report}\n{}", master.output());
    assert!(report.ok > 100, "{report}");
    // Only the old workers answered: the failed builds never accepted a connection.
    assert!(
        report.pids.keys().all(|&p| old.contains(&(p as i32))),
        "{report} (old: {old:?})"
    );
}

#[test]
fn a_canary_that_crashes_after_its_ack_is_rolled_back_and_the_old_workers_serve_on() {
    let (master, program, _scripts) = start(&[]);
    let old = master.state().serving_pids();
    let load = load_on(&master);

    deploy(&program, "--exit-after-ack 2000");
    let (status, out) = ctl(&master.socket, &["upgrade", "--canary", "1", "--soak", "6"]);
    assert_ne!(status, 0, "{out}");
    assert!(out.contains("rolled back: "), "{out}");
    assert!(out.contains("exited"), "{out}");
    old_workers_serve_on(&master, &old);
    let after_rollback = load.snapshot();
    wait_for_requests(&load, &after_rollback, 200);
    let state = master.state();
    assert!(
        state
            .last_rollback
            .as_deref()
            .is_some_and(|why| why.starts_with("rolled back: ")),
        "{state:?}"
    );
    let report = load.stop();
    let since = report.since(&after_rollback);
    eprintln!("load: {report}\nsince the rollback: {since}");
    // The crash cuts what the canary had in flight, at most one request per client
    // connection; nothing else fails, and nothing after the rollback.
    assert!(report.failed() <= 4, "{report}\n{}", master.output());
    assert_eq!(
        report.failed(),
        [FailureKind::Reset, FailureKind::Closed, FailureKind::Write]
            .iter()
            .map(|&kind| report.failures_of(kind))
            .sum::<u64>(),
        "{report}"
    );
    assert_eq!(since.failed(), 0, "{since}\n{}", master.output());
}

#[test]
fn a_plain_upgrade_to_a_build_that_crashes_after_its_ack_is_rolled_back_with_no_gap() {
    let (master, program, _scripts) = start(&[]);
    let old = master.state().serving_pids();
    // Persistent connections that never reconnect (a balancer's pool), and a new-connection
    // probe every 50 ms.
    let load = load::start(
        LoadConfig::new(master.addr(0))
            .connections(8)
            .duration(Duration::from_secs(120)),
    );
    let probe =
        graceful_listener_suite::probe::Probe::start(master.addr(0), Duration::from_millis(50));
    let before = load.snapshot();
    wait_for_requests(&load, &before, 200);

    deploy(&program, "--exit-after-ack 300");
    let (status, out) = ctl(&master.socket, &["upgrade"]);
    assert_ne!(status, 0, "{out}");
    assert!(
        out.contains("rolled back: new workers exited after their ACK"),
        "{out}\n{}",
        master.output()
    );
    old_workers_serve_on(&master, &old);
    let after = load.snapshot();
    wait_for_requests(&load, &after, 200);
    let probed = probe.stop();
    let report = load.stop();
    eprintln!("a build crashing 300 ms after its ACK: {report}; probe: {probed}");
    assert!(probed.failures.is_empty(), "{probed}\n{}", master.output());
    assert_eq!(report.failed(), 0, "{report}\n{}", master.output());
    assert_eq!(master.state().pinned_version, Some(0));
}

#[test]
fn a_canary_that_hangs_or_answers_late_is_rolled_back() {
    let (master, program, _scripts) = start(&[]);
    let old = master.state().serving_pids();
    let load = load_on(&master);
    for flags in [
        "--stall-after-ack --drain-timeout 1",
        "--delay-ms 5000 --drain-timeout 1",
    ] {
        deploy(&program, flags);
        let (status, out) = ctl(&master.socket, &["upgrade", "--canary", "1", "--soak", "3"]);
        assert_ne!(status, 0, "{flags}: {out}");
        assert!(
            out.contains("rolled back: too few responses reached the canary to judge"),
            "{flags}: {out}"
        );
        old_workers_serve_on(&master, &old);
    }
    // The good build is back at the path: the next upgrade goes through.
    deploy(&program, "");
    let (status, out) = ctl(&master.socket, &["upgrade", "--canary", "1", "--soak", "2"]);
    assert_eq!(status, 0, "{out}\n{}", master.output());
    let report = load.stop();
    eprintln!("hanging and slow canaries rolled back: {report}");
    assert!(report.ok > 100, "{report}");
}

#[test]
fn a_canary_gets_its_share_of_clients_that_keep_their_connections() {
    for (name, connections) in [("hyper-hello", 8), ("hyper-hello", 64), ("actix-hello", 8)] {
        let (master, program, _scripts) = start_example(name, &[]);
        let old = master.state().serving_pids();
        // A balancer's pool: persistent connections, never reconnecting on their own.
        let load = load::start(
            LoadConfig::new(master.addr(0))
                .connections(connections)
                .duration(Duration::from_secs(120)),
        );
        let before = load.snapshot();
        wait_for_requests(&load, &before, 200);

        // A build answering 500 to a fifth of its requests: judged on its 5xx, not rolled
        // back for want of traffic.
        deploy_example(&program, name, "--fail-percent 20");
        let (status, out) = ctl(&master.socket, &["upgrade", "--canary", "1", "--soak", "4"]);
        assert_ne!(status, 0, "{name}, {connections} connections: {out}");
        assert!(
            out.contains("rolled back: new workers answered"),
            "{connections} connections: {out}\n{}",
            master.output()
        );
        old_workers_serve_on(&master, &old);
        // The rolled-back canary drains: a request already on its way to it is answered, by
        // the bad build (a 500 a fifth of the time). Counted from its exit on.
        master.wait_state("the rolled-back canary gone", |s| {
            s.workers.iter().all(|w| old.contains(&w.pid.unwrap_or(0)))
        });
        let after_rollback = load.snapshot();
        wait_for_requests(&load, &after_rollback, 200);

        // A good build passes on what it served, and the upgrade completes.
        deploy_example(&program, name, "");
        let (status, out) = ctl(&master.socket, &["upgrade", "--canary", "1", "--soak", "3"]);
        assert_eq!(
            status,
            0,
            "{connections} connections: {out}\n{}",
            master.output()
        );
        assert!(
            out.contains("Canary passed: ") && !out.contains("exits alone"),
            "{out}"
        );
        master.wait_state("2 new workers serving alone", |s| {
            s.upgrading.is_none()
                && s.serving_pids().len() == 2
                && s.workers.iter().all(|w| !old.contains(&w.pid.unwrap_or(0)))
        });
        let done = load.snapshot();
        wait_for_requests(&load, &done, 200);
        let report = load.stop();
        let since = report.since(&after_rollback);
        eprintln!("{connections} persistent connections: {report}\nsince the rollback: {since}");
        // Only the bad canary's own 500s failed: no socket error, and nothing once it was
        // gone.
        assert_eq!(failures_but_500s(&report), 0, "{report}");
        assert_eq!(since.failed(), 0, "{since}\n{}", master.output());
        assert!(report.server_closes > 0, "connections were moved: {report}");
    }
}

#[test]
fn a_canary_far_slower_than_the_old_workers_is_rolled_back_under_persistent_clients() {
    let (master, program, _scripts) = start(&[]);
    let old = master.state().serving_pids();
    let load = load::start(
        LoadConfig::new(master.addr(0))
            .connections(32)
            .duration(Duration::from_secs(120)),
    );
    let before = load.snapshot();
    wait_for_requests(&load, &before, 200);
    deploy(&program, "--delay-ms 300");
    let (status, out) = ctl(&master.socket, &["upgrade", "--canary", "1", "--soak", "5"]);
    assert_ne!(status, 0, "{out}");
    assert!(
        out.contains("rolled back: new workers answered slowly"),
        "{out}\n{}",
        master.output()
    );
    old_workers_serve_on(&master, &old);
    let report = load.stop();
    eprintln!("a canary answering in 300 ms: {report}");
    assert_eq!(report.failed(), 0, "{report}");
}

/// The command line of process `pid`, its arguments joined by spaces.
fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .unwrap_or_default()
}

#[test]
fn after_a_rollback_respawned_and_added_workers_run_the_last_good_build_not_the_file_on_disk() {
    let (master, program, _scripts) = start(&[]);
    let old = master.state().serving_pids();
    let load = load_on(&master);

    // Every request of this build fails: rolled back, and it stays on disk.
    deploy(&program, "--fail-percent 100");
    let (status, out) = ctl(&master.socket, &["upgrade", "--canary", "1", "--soak", "4"]);
    assert_ne!(status, 0, "{out}");
    assert!(out.contains("rolled back: "), "{out}");
    old_workers_serve_on(&master, &old);
    let after_rollback = load.snapshot();
    assert_eq!(master.state().pinned_version, Some(0));

    // A worker killed outright, and one more asked for: both run version 0's build.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    master.wait_exited(old[0]);
    let (status, out) = ctl(&master.socket, &["inc"]);
    assert_eq!(status, 0, "{out}");
    let state = master.wait_state("3 workers serving", |s| s.serving_pids().len() == 3);
    let fresh: Vec<i32> = state
        .serving_pids()
        .into_iter()
        .filter(|p| !old.contains(p))
        .collect();
    assert_eq!(fresh.len(), 2, "{state:?}");
    for pid in &fresh {
        let command = cmdline(*pid);
        assert!(
            !command.contains("--fail-percent"),
            "worker {pid} runs the build on disk: {command}"
        );
        let version = state
            .workers
            .iter()
            .find(|w| w.pid == Some(*pid))
            .unwrap()
            .version;
        assert_eq!(version, 0, "{state:?}");
    }
    let output = master.output();
    assert!(
        output.contains("workers started from now on run version 0's build")
            && output.contains("starting version 0's build as held since its first worker"),
        "{output}"
    );
    wait_for_requests(&load, &after_rollback, 300);
    let report = load.stop();
    let since = report.since(&after_rollback);
    eprintln!("after the rollback, a kill -9 and an inc: {since}");
    // Not one 500 from the bad build after the rollback (a killed worker's in-flight
    // requests aside).
    assert_eq!(since.failures_of(FailureKind::Status), 0, "{since}");
}

#[test]
fn a_canary_that_answers_500s_is_rolled_back_and_a_healthy_one_goes_on_with_metrics_to_show() {
    let metrics = format!("127.0.0.1:{}", unused_loopback_port());
    let (master, program, _scripts) = start(&["--metrics", &metrics]);
    let old = master.state().serving_pids();
    let load = load_on(&master);

    // A build that answers 500 to a fifth of its requests: the soak compares it with the
    // old workers (0%) and rolls it back.
    deploy(&program, "--fail-percent 20");
    let (status, out) = ctl(&master.socket, &["upgrade", "--canary", "1", "--soak", "4"]);
    assert_ne!(status, 0, "{out}");
    assert!(out.contains("rolled back: "), "{out}");
    old_workers_serve_on(&master, &old);
    let during = load.snapshot();
    assert!(
        during.failures_of(FailureKind::Status) > 0,
        "the canary served: {during}"
    );
    assert_eq!(failures_but_500s(&during), 0, "{during}");

    // After the rollback, nothing fails any more, and the workers that serve on are the
    // current generation again.
    let after_rollback = load.snapshot();
    wait_for_requests(&load, &after_rollback, 200);
    let text = scrape(&metrics);
    assert_eq!(
        metric(
            &text,
            "einhorn_master_workers{generation=\"current\",state=\"serving\"}"
        ),
        2.0,
        "{text}"
    );
    assert_eq!(metric(&text, "einhorn_master_version"), 0.0, "{text}");

    // A healthy build passes its soak and the upgrade completes.
    deploy(&program, "");
    let (status, out) = ctl(&master.socket, &["upgrade", "--canary", "1", "--soak", "2"]);
    assert_eq!(status, 0, "{out}\n{}", master.output());
    let state = master.wait_state("2 new workers serving alone", |s| {
        s.upgrading.is_none()
            && s.serving_pids().len() == 2
            && s.workers.iter().all(|w| !old.contains(&w.pid.unwrap_or(0)))
    });
    let report = load.stop();
    let since = report.since(&after_rollback);
    eprintln!("load: {report}\nsince the rollback: {since}");
    assert_eq!(since.failed(), 0, "{since}\n{}", master.output());
    assert_eq!(failures_but_500s(&report), 0, "{report}");

    // The scrape: two upgrades begun (across the master's own reloads), one rolled back, one
    // done; the rolled-back version's 5xx and the new version's 2xx as the workers reported.
    let text = scrape(&metrics);
    eprintln!("{text}");
    let value = |line: &str| metric(&text, line);
    assert_eq!(
        value("einhorn_master_upgrades_started_total"),
        2.0,
        "{text}"
    );
    assert_eq!(
        value("einhorn_master_upgrades_rolled_back_total"),
        1.0,
        "{text}"
    );
    assert_eq!(value("einhorn_master_upgrades_done_total"), 1.0, "{text}");
    assert_eq!(value("einhorn_master_upgrades_failed_total"), 0.0, "{text}");
    let rolled_back = format!("version=\"{}\"", state.version - 1);
    assert!(
        value(&format!(
            "einhorn_master_generation_responses_total{{{rolled_back},class=\"5xx\"}}"
        )) > 0.0,
        "{text}"
    );
    assert!(
        value(&format!(
            "einhorn_master_generation_responses_total{{version=\"{}\",class=\"2xx\"}}",
            state.version
        )) > 0.0,
        "{text}"
    );
    assert_eq!(
        value("einhorn_master_workers{generation=\"current\",state=\"serving\"}"),
        2.0,
        "{text}"
    );
    assert!(value("einhorn_master_last_upgrade_duration_seconds") > 0.0);

    // One more upgrade (its own re-exec), and a worker killed outright: the histogram keeps
    // every upgrade across the re-execs, and the kill is the one respawn.
    let (status, out) = ctl(&master.socket, &["upgrade"]);
    assert_eq!(status, 0, "{out}");
    let victim = master.wait_serving(2)[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    master.wait_exited(victim);
    master.wait_serving(2);
    let text = scrape(&metrics);
    let value = |line: &str| metric(&text, line);
    assert_eq!(
        value("einhorn_master_upgrades_started_total"),
        3.0,
        "{text}"
    );
    assert_eq!(
        value("einhorn_master_upgrade_duration_seconds_count"),
        3.0,
        "{text}"
    );
    assert_eq!(value("einhorn_master_respawns_total"), 1.0, "{text}");
    assert_eq!(
        value("einhorn_master_workers{generation=\"current\",state=\"serving\"}"),
        2.0,
        "{text}"
    );
}

/// Waits (bounded) until the load has answered `n` more requests since `since`.
fn wait_for_requests(load: &load::Load, since: &LoadReport, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while load.snapshot().since(since).ok < n {
        assert!(std::time::Instant::now() < deadline, "the load stalled");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET http://addr/metrics`, the body.
fn scrape(addr: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // The endpoint is rebound by each new master after its reload: retry briefly.
        match std::net::TcpStream::connect(addr) {
            Ok(mut stream) => {
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                write!(
                    stream,
                    "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
                )
                .unwrap();
                let mut response = String::new();
                stream.read_to_string(&mut response).unwrap();
                assert!(response.starts_with("HTTP/1.1 200"), "{response}");
                return response;
            }
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "metrics: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The value of the sample `name{labels}` in a Prometheus text scrape; 0 when absent.
fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}
