//! The `self-hosted` example, its own master: SIGHUP upgrades under keep-alive load lose no
//! request and keep the master's pid; the binary on disk replaced between upgrades is what
//! runs next; broken new builds (exit at start, never ACK) leave the old workers serving and
//! are reported with their exit status and last stderr lines; systemd's notify protocol;
//! SIGTERM under load drains everything and exits 0.

mod http_support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use graceful_listener_suite::harness::{Proc, example, is_alive, wait_until};
use graceful_listener_suite::load::{self, FailureKind, LoadConfig};
use graceful_listener_suite::master::{Master, WAIT};
use graceful_listener_suite::probe::Probe;
use http_support::get;
use nix::sys::signal::Signal;

/// The example copied to a temporary path and started from there, so that the test can
/// replace the file at that path as a deployment would.
struct App {
    master: Master,
    addr: SocketAddr,
    program: PathBuf,
}

impl App {
    fn start(workers: usize, adjust: impl FnOnce(&mut Command)) -> App {
        let dir = tempfile::tempdir().expect("tempdir");
        let program = dir.path().join("app");
        copy_executable(&example("self-hosted"), &program);
        let socket = dir.path().join("master.sock");
        let mut cmd = Command::new(&program);
        cmd.args(["--bind", "127.0.0.1:0", "--workers", &workers.to_string()])
            .args(["--drain-timeout", "10", "--upgrade-timeout", "3"])
            .arg("--socket")
            .arg(&socket);
        adjust(&mut cmd);
        let proc = Proc::spawn(cmd).expect("start the example");
        let master = Master {
            proc,
            socket,
            dir,
            orphans: Vec::new(),
        };
        let line = master.wait_for_line("listening on ");
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        App {
            master,
            addr,
            program,
        }
    }

    /// Replaces the program file (a new inode, as `cp` to a temporary name and `mv` do: the
    /// running binary's file is never written to).
    fn deploy(&self, from: &Path) {
        let staged = self.program.with_extension("new");
        copy_executable(from, &staged);
        std::fs::rename(&staged, &self.program).expect("deploy the new build");
    }

    /// Deploys a shell script as the new build.
    fn deploy_script(&self, body: &str) {
        let staged = self.program.with_extension("new");
        let script = self.program.with_extension("script");
        std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        copy_executable(&script, &staged);
        std::fs::rename(&staged, &self.program).unwrap();
    }

    /// SIGHUP, then waits until `workers` workers of `version` serve, none of them in
    /// `before`. Returns their pids and how long it took.
    fn upgrade(&self, version: u64, workers: usize, before: &[i32]) -> (Vec<i32>, Duration) {
        let started = Instant::now();
        self.master.signal(Signal::SIGHUP);
        let state = self
            .master
            .wait_state(&format!("version {version} serving"), |s| {
                let serving = s.serving_pids();
                // The old workers gone too: one told to stop may still accept a fresh
                // connection in the moment before it handles the signal.
                s.version == version
                    && s.base_version == version
                    && s.upgrading.is_none()
                    && serving.len() == workers
                    && s.workers.len() == workers
                    && serving.iter().all(|p| !before.contains(p))
            });
        (state.serving_pids(), started.elapsed())
    }

    /// Starts a keep-alive load of `connections` connections, stopped by the test.
    fn load(&self, connections: usize) -> load::Load {
        load::start(
            LoadConfig::new(self.addr)
                .connections(connections)
                .duration(Duration::from_secs(120)),
        )
    }

    /// The version fresh connections are answered by (asserting every answer agrees).
    fn answering_version(&self, tries: usize) -> String {
        let versions: Vec<String> = (0..tries)
            .map(|_| {
                let answer = get(self.addr, "/").expect("GET /");
                assert_eq!(answer.status, 200, "{answer:?}");
                answer
                    .body
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("version="))
                    .unwrap_or_else(|| panic!("no version in {:?}", answer.body))
                    .to_string()
            })
            .collect();
        assert!(
            versions.iter().all(|v| *v == versions[0]),
            "mixed versions {versions:?}"
        );
        versions[0].clone()
    }
}

/// Copies an executable in a `cp` process, not in this one: a file this (multi-threaded)
/// process had open for writing could still be open in a child another test thread forked
/// meanwhile, and executing it would then fail with "Text file busy" (ETXTBSY).
fn copy_executable(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(
        status.success(),
        "cp {} {}: {status}",
        from.display(),
        to.display()
    );
}

#[test]
fn five_sighup_upgrades_under_keep_alive_load_lose_nothing_and_keep_the_master_pid() {
    let app = App::start(2, |_| {});
    let master_pid = app.master.pid();
    let mut current = app.master.wait_serving(2);
    let mut generations = vec![current.clone()];
    let load = app.load(16);
    assert!(
        wait_until(WAIT, || load.snapshot().ok >= 200),
        "the load gets answers"
    );
    let mut times = Vec::new();
    for version in 1..=5u64 {
        let (new, took) = app.upgrade(version, 2, &current);
        times.push(took);
        // Some traffic on the new generation before the next upgrade.
        let seen = load.snapshot().ok;
        assert!(wait_until(WAIT, || load.snapshot().ok >= seen + 200));
        assert_eq!(app.master.state().master_pid, master_pid);
        current = new;
        generations.push(current.clone());
    }
    let report = load.stop();
    eprintln!("5 SIGHUP upgrades of 2 workers, 16 connections: {report}; upgrade times {times:?}");
    assert_eq!(report.failed(), 0, "{report}\n{}", app.master.output());
    for (i, generation) in generations.iter().enumerate() {
        assert!(
            generation
                .iter()
                .any(|&p| report.pids.contains_key(&(p as u32))),
            "generation {i} ({generation:?}) never answered: {report}"
        );
    }
    assert!(
        app.master
            .proc
            .output()
            .contains(&format!("einhorn-master {master_pid}: command socket"))
    );
    assert!(is_alive(master_pid));
}

#[test]
fn the_binary_on_disk_replaced_between_upgrades_is_what_answers_next() {
    let app = App::start(2, |_| {});
    let v1 = app.master.wait_serving(2);
    assert_eq!(app.answering_version(4), "1");

    app.deploy(&example("self-hosted-v2"));
    // Deployed but not upgraded: the running workers are still the old build.
    assert_eq!(app.answering_version(4), "1");
    let (v2, _) = app.upgrade(1, 2, &v1);
    assert_eq!(app.answering_version(6), "2");

    app.deploy(&example("self-hosted"));
    app.upgrade(2, 2, &v2);
    assert_eq!(app.answering_version(6), "1");
}

#[test]
fn broken_new_builds_leave_the_old_workers_serving_and_are_reported() {
    let app = App::start(2, |_| {});
    let master_pid = app.master.pid();
    let old = app.master.wait_serving(2);
    let load = app.load(4);
    let refusals = |n: usize| {
        assert!(
            app.master
                .proc
                .wait_for_lines("Upgrade refused: the new master cannot take over", n, WAIT)
                .is_some(),
            "{}",
            app.master.output()
        );
    };

    // A build that exits at start: its check fails, and says why.
    app.deploy_script("echo 'boom: cannot read /etc/app.toml' >&2\nexit 1");
    app.master.signal(Signal::SIGHUP);
    refusals(1);
    let output = app.master.output();
    assert!(
        output.contains("its check exited with exit status 1: boom: cannot read /etc/app.toml"),
        "the refusal names the exit status and what the build said:\n{output}"
    );
    assert_eq!(
        sorted(app.master.state().serving_pids()),
        old,
        "the old workers serve"
    );
    assert_eq!(app.answering_version(4), "1");

    // A build that is not executable, then none at all.
    std::fs::set_permissions(&app.program, std::fs::Permissions::from_mode(0o644)).unwrap();
    app.master.signal(Signal::SIGHUP);
    refusals(2);
    std::fs::remove_file(&app.program).unwrap();
    app.master.signal(Signal::SIGHUP);
    refusals(3);
    let output = app.master.output();
    assert!(
        output.contains(&format!("cannot start {}", app.program.display())),
        "the refusal names the program:\n{output}"
    );
    let state = app.master.state();
    assert_eq!(sorted(state.serving_pids()), old);
    assert_eq!((state.version, state.master_pid), (0, master_pid));
    assert_eq!(app.answering_version(4), "1");

    // The next good build upgrades as usual, the master included.
    app.deploy(&example("self-hosted-v2"));
    app.upgrade(1, 2, &old);
    assert_eq!(app.answering_version(4), "2");
    assert_eq!(app.master.state().master_pid, master_pid);
    let report = load.stop();
    eprintln!("broken builds: {report}");
    assert_eq!(report.failed(), 0, "{report}\n{}", app.master.output());
}

#[test]
fn systemd_hears_ready_reloading_ready_stopping_from_the_master_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&path).unwrap();
    notify.set_read_timeout(Some(WAIT)).unwrap();
    let mut app = App::start(2, |cmd| {
        cmd.env("NOTIFY_SOCKET", &path);
    });
    let master_pid = app.master.pid();
    let recv_until = |what: &str| -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "no {what}");
            let mut buf = [0u8; 4096];
            let n = notify
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no {what}: {e}"));
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            if message.lines().any(|l| l == what) {
                return message;
            }
        }
    };
    let ready = recv_until("READY=1");
    assert!(
        ready.contains(&format!("MAINPID={master_pid}")),
        "{ready:?}"
    );
    assert!(
        ready.contains("STATUS=2 of 2 workers serving, version 0"),
        "{ready:?}"
    );
    let workers = app.master.wait_serving(2);
    for pid in &workers {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(
            !environ
                .split(|&b| b == 0)
                .any(|kv| kv.starts_with(b"NOTIFY_SOCKET=")),
            "worker {pid} must not speak to systemd"
        );
    }

    let before = monotonic_usec();
    app.master.signal(Signal::SIGHUP);
    let reloading = recv_until("RELOADING=1");
    let after = monotonic_usec();
    let stamp: u128 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"))
        .parse()
        .unwrap();
    assert!(
        (before..=after).contains(&stamp),
        "{before} <= {stamp} <= {after}"
    );
    let ready = recv_until("READY=1");
    assert!(
        ready.contains("STATUS=2 of 2 workers serving, version 1"),
        "{ready:?}"
    );

    app.master.signal(Signal::SIGTERM);
    let stopping = recv_until("STOPPING=1");
    assert!(stopping.contains("STATUS=stopping"), "{stopping:?}");
    let status = app.master.wait_exit(WAIT).expect("the master exits");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sigterm_under_load_completes_requests_in_flight_and_exits_0() {
    let mut app = App::start(2, |_| {});
    let workers = app.master.wait_serving(2);
    let load = app.load(16);
    assert!(wait_until(WAIT, || load.snapshot().ok >= 200));
    // A slow request on a connection a worker has surely accepted (it answered one already).
    let mut slow = TcpStream::connect(app.addr).unwrap();
    slow.set_read_timeout(Some(WAIT)).unwrap();
    let mut reader = BufReader::new(slow.try_clone().unwrap());
    slow.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        .unwrap();
    read_response(&mut reader);
    slow.write_all(b"GET /sleep/1500 HTTP/1.1\r\nhost: t\r\n\r\n")
        .unwrap();

    let stopped_at = Instant::now();
    app.master.signal(Signal::SIGTERM);
    // No new request after the stop (one that reconnected would reach only the backlog).
    let report = load.stop();
    let (head, body) = read_response(&mut reader);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("slept 1500ms"), "{body}");
    let status = app.master.wait_exit(WAIT).expect("the master exits");
    eprintln!(
        "SIGTERM under load: {report}; master exited {:?} after the signal",
        stopped_at.elapsed()
    );
    assert_eq!(status.code(), Some(0), "{}", app.master.output());
    assert_eq!(report.failed(), 0, "{report}\n{}", app.master.output());
    assert!(
        stopped_at.elapsed() >= Duration::from_millis(1400),
        "the master waited for the slow request"
    );
    for pid in workers {
        assert!(!is_alive(pid), "worker {pid} is gone");
        app.master
            .proc
            .wait_for_line(&format!("Exited worker {pid} (exit status 0)"), WAIT)
            .expect("every worker exits 0");
    }
}

#[test]
fn workers_follow_a_master_killed_with_sigkill_and_a_restart_binds_at_once() {
    let mut app = App::start(2, |_| {});
    let workers = app.master.wait_serving(2);
    // In case the test fails below: the workers are killed on drop.
    app.master.orphans.extend(&workers);
    let load = app.load(4);
    assert!(wait_until(WAIT, || load.snapshot().ok >= 100));
    app.master.proc.signal(Signal::SIGKILL).unwrap();
    app.master.wait_exit(WAIT).expect("the master is gone");
    let killed = Instant::now();
    // Each worker got SIGUSR2 (its parent-death signal) and drains: idle keep-alive
    // connections are closed within the idle grace, so they are gone in a few seconds.
    assert!(
        wait_until(Duration::from_secs(10), || workers
            .iter()
            .all(|&p| !is_alive(p))),
        "workers still running 10 s after their master was killed: {:?}\n{}",
        workers
            .iter()
            .map(|&p| (p, graceful_listener_suite::harness::parent_pid(p)))
            .collect::<Vec<_>>(),
        app.master.output()
    );
    let gone_after = killed.elapsed();
    let report = load.stop();
    eprintln!("workers gone {gone_after:?} after the master's SIGKILL; load: {report}");
    // A supervisor's restart: the same port binds at once.
    let socket = app.master.dir.path().join("again.sock");
    let mut cmd = Command::new(&app.program);
    cmd.args(["--bind", &app.addr.to_string(), "--workers", "1"])
        .arg("--socket")
        .arg(&socket);
    let restarted = Master {
        proc: Proc::spawn(cmd).expect("restart the app"),
        socket,
        dir: tempfile::tempdir().expect("tempdir"),
        orphans: Vec::new(),
    };
    restarted.wait_for_line(&format!("listening on {}", app.addr));
    restarted.wait_serving(1);
    assert_eq!(
        get(app.addr, "/").expect("GET / after the restart").status,
        200
    );
}

#[test]
fn sighup_reloads_the_master_into_the_new_build_with_its_worker_count_and_binds() {
    // Version 2 runs 3 workers and adds a second listener; version 1 again drops it.
    let app = App::start(2, |cmd| {
        cmd.args(["--v2-workers", "3"]).args([
            "--v2-bind",
            "127.0.0.1:0",
            "--v2-bind",
            "127.0.0.1:0",
        ]);
    });
    let master_pid = app.master.pid();
    let v1 = app.master.wait_serving(2);
    let load = app.load(8);
    assert!(wait_until(WAIT, || load.snapshot().ok >= 200));

    app.deploy(&example("self-hosted-v2"));
    let deployed = std::fs::metadata(&app.program).unwrap().ino();
    let (v2, _) = app.upgrade(1, 3, &v1);
    assert_eq!(app.master.pid(), master_pid);
    assert_eq!(
        std::fs::metadata(format!("/proc/{master_pid}/exe"))
            .unwrap()
            .ino(),
        deployed,
        "the master runs the new build"
    );
    assert_eq!(app.answering_version(6), "2");
    let state = app.master.state();
    assert_eq!((state.master_pid, state.target_workers), (master_pid, 3));
    assert_eq!(state.listeners.len(), 2, "{state:?}");
    assert_eq!(
        state.listeners[0].addr,
        app.addr.to_string(),
        "the first socket kept"
    );
    let added: SocketAddr = state.listeners[1].addr.parse().unwrap();
    // Bound and listening (the app's workers serve only the first listener).
    TcpStream::connect(added).expect("the added listener accepts connections");

    // Back to version 1: 2 workers, and the added listener closes once version 2 is gone.
    app.deploy(&example("self-hosted"));
    app.upgrade(2, 2, &v2);
    assert_eq!(app.answering_version(6), "1");
    assert_eq!(app.master.state().listeners.len(), 1);
    assert!(
        wait_until(WAIT, || TcpStream::connect(added).is_err()),
        "the dropped listener is closed once no worker uses it:\n{}",
        app.master.output()
    );
    let report = load.stop();
    eprintln!("self-hosted reloads with new settings: {report}");
    assert_eq!(report.failed(), 0, "{report}\n{}", app.master.output());
    assert_eq!(
        app.master
            .output()
            .matches("took over from einhorn-master")
            .count(),
        2
    );
}

#[test]
fn a_new_build_whose_new_listener_cannot_be_bound_is_refused_and_the_old_one_serves_on() {
    // Another process holds the port version 2 wants to add.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = squatter.local_addr().unwrap();
    let app = App::start(2, |cmd| {
        cmd.args(["--v2-bind", "127.0.0.1:0", "--v2-bind", &busy.to_string()]);
    });
    let master_pid = app.master.pid();
    let v1 = sorted(app.master.wait_serving(2));
    let load = app.load(8);
    let probe = Probe::start(app.addr, Duration::from_millis(50));
    assert!(wait_until(WAIT, || load.snapshot().ok >= 200));

    app.deploy(&example("self-hosted-v2"));
    app.master.signal(Signal::SIGHUP);
    let line = app.master.wait_for_line("the new master cannot take over");
    assert!(line.contains(&format!("new listener {busy}")), "{line}");
    let state = app.master.state();
    assert_eq!(state.master_pid, master_pid);
    assert_eq!(state.version, 0, "no upgrade happened");
    assert_eq!(sorted(state.serving_pids()), v1);
    assert_eq!(state.listeners.len(), 1);
    let served = load.snapshot().ok;
    assert!(wait_until(WAIT, || load.snapshot().ok >= served + 200));

    // The port freed, the same build upgrades.
    drop(squatter);
    app.upgrade(1, 2, &v1);
    assert_eq!(app.answering_version(6), "2");
    assert_eq!(app.master.state().listeners.len(), 2);
    let probed = probe.stop();
    let report = load.stop();
    assert_eq!(report.failed(), 0, "{report}\n{}", app.master.output());
    assert!(probed.failures.is_empty(), "{probed}");
}

#[test]
fn a_canary_that_answers_500s_is_rolled_back_on_sighup_and_the_old_workers_serve_on() {
    // Version 2 answers 500 to a fifth of its requests; every SIGHUP upgrade is a canary.
    let app = App::start(2, |cmd| {
        cmd.args(["--canary", "1", "--soak", "4", "--v2-fail-percent", "20"]);
    });
    let master_pid = app.master.pid();
    let v1 = sorted(app.master.wait_serving(2));
    // Clients come and go, so that the canary gets its share of new connections.
    let load = load::start(
        LoadConfig::new(app.addr)
            .connections(4)
            .reconnect_every(20)
            .duration(Duration::from_secs(120)),
    );
    assert!(wait_until(WAIT, || load.snapshot().ok >= 200));

    app.deploy(&example("self-hosted-v2"));
    app.master.signal(Signal::SIGHUP);
    let line = app.master.wait_for_line("rolled back: ");
    assert!(line.contains("5xx"), "{line}");
    let state = app.master.wait_state("the old workers serving alone", |s| {
        s.upgrading.is_none() && s.workers.len() == 2
    });
    assert_eq!(sorted(state.serving_pids()), v1, "{}", app.master.output());
    assert!(
        state
            .last_rollback
            .as_deref()
            .is_some_and(|why| why.starts_with("rolled back: ")),
        "{state:?}"
    );
    assert_eq!(state.master_pid, master_pid);
    let after_rollback = load.snapshot();
    assert!(wait_until(WAIT, || load
        .snapshot()
        .since(&after_rollback)
        .ok
        >= 200));
    assert_eq!(app.answering_version(6), "1");

    let report = load.stop();
    let since = report.since(&after_rollback);
    eprintln!("self-hosted canary rolled back: {report}\nsince the rollback: {since}");
    // Only the canary's own 500s failed, and nothing after the rollback.
    assert!(
        report.failures_of(FailureKind::Status) > 0,
        "the canary served: {report}"
    );
    assert_eq!(
        report.failed(),
        report.failures_of(FailureKind::Status),
        "{report}"
    );
    assert_eq!(since.failed(), 0, "{since}\n{}", app.master.output());
}

#[test]
fn overlapping_sighups_never_leave_the_port_without_an_acceptor() {
    // Workers take 1.2 s to warm up before they accept and ACK (well within the app's 3 s
    // upgrade timeout); three SIGHUPs 0.7 s apart each supersede the last one's new workers
    // before they serve.
    let app = App::start(2, |cmd| {
        cmd.args(["--warm-up-ms", "1200"]);
    });
    let first = app.master.wait_serving(2);
    let load = app.load(8);
    let probe = Probe::start(app.addr, Duration::from_millis(50));
    for version in 1..=3u64 {
        app.master.signal(Signal::SIGHUP);
        app.master.wait_for_line(&format!("version {version})"));
        if version < 3 {
            std::thread::sleep(Duration::from_millis(700));
        }
    }
    let state = app
        .master
        .wait_state("2 workers of version 3 serving alone", |s| {
            s.version == 3
                && s.upgrading.is_none()
                && s.serving_pids().len() == 2
                && s.workers
                    .iter()
                    .all(|w| w.version == 3 && w.retired.is_none())
        });
    let probed = probe.stop();
    let report = load.stop();
    eprintln!("self-hosted overlapping HUPs: probe: {probed}\nload: {report}");
    assert!(
        probed.failures.is_empty(),
        "{probed}\n{}",
        app.master.output()
    );
    assert!(
        probed.slowest < Duration::from_millis(500),
        "a fresh connection waited: {probed}\n{}",
        app.master.output()
    );
    assert_eq!(report.failed(), 0, "{report}\n{}", app.master.output());
    assert!(state.serving_pids().iter().all(|p| !first.contains(p)));
}

#[test]
fn a_second_instance_on_the_same_command_socket_is_told_how_to_get_its_own() {
    let app = App::start(1, |_| {});
    app.master.wait_serving(1);
    let mut cmd = Command::new(&app.program);
    cmd.args(["--bind", "127.0.0.1:0", "--workers", "1", "--socket"])
        .arg(&app.master.socket);
    let mut second = Proc::spawn(cmd).expect("start a second instance");
    let status = second
        .wait_timeout(WAIT)
        .expect("the second instance exits");
    let out = second.output();
    assert_eq!(status.code(), Some(1), "{out}");
    let taken = format!(
        "error: self-hosted master: another master is running on {}",
        app.master.socket.display()
    );
    assert!(
        out.contains(&taken)
            && out.contains("give it its own command socket with .command_socket(PATH)"),
        "{out}"
    );
    // The first one is untouched.
    assert_eq!(app.master.state().serving_pids().len(), 1);
}

fn sorted(mut pids: Vec<i32>) -> Vec<i32> {
    pids.sort_unstable();
    pids
}

/// CLOCK_MONOTONIC in microseconds, as systemd's `MONOTONIC_USEC` counts it.
fn monotonic_usec() -> u128 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which we own.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) },
        0
    );
    u128::try_from(now.tv_sec).unwrap() * 1_000_000 + u128::try_from(now.tv_nsec).unwrap() / 1_000
}

/// Reads one response with a `content-length` body; returns its head and body.
fn read_response(reader: &mut impl BufRead) -> (String, String) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "closed in {head:?}"
        );
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no content-length in {head:?}"));
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (head, String::from_utf8_lossy(&body).into_owned())
}
