//! Workers under the real master, with `sleep` and `sh` as workers: environment, fds, signal
//! dispositions, ACKs, respawn, signals, `-t`, `-k`, upgrade timeout.

mod support;

use std::os::unix::process::CommandExt;
use std::process::Command;

use einhorn_master::client::{self, ClientError};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::unistd::Pid;
use support::{
    Master, WAIT, environ, is_alive, open_fds, path_str, status_field, wait_catching, wait_until,
};

fn env_of(pid: i32, key: &str) -> Option<String> {
    environ(pid)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

#[test]
fn workers_get_einhorns_environment_their_fds_and_nothing_else() {
    let mut flags = vec![
        "-n",
        "2",
        "-m",
        "0",
        "-b",
        "127.0.0.1:0,r",
        "-b",
        "127.0.0.1:0",
    ];
    let ipv6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    if ipv6 {
        flags.extend(["-b", "[::1]:0"]);
    }
    let count = if ipv6 { 3 } else { 2 };
    // The master itself starts with signals ignored and blocked (as under `nohup` or a
    // careless supervisor): workers must not inherit that.
    let master = Master::start_with(&flags, &["sleep", "1000"], |cmd| unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGUSR1, libc::SIG_IGN);
            libc::signal(libc::SIGTTOU, libc::SIG_IGN);
            let mut set = SigSet::empty();
            set.add(Signal::SIGWINCH);
            sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
            Ok(())
        });
    });
    let pids = master.wait_serving(2);
    assert_eq!(
        status_field(master.pid(), "SigIgn")
            .as_deref()
            .map(|m| m != "0000000000000000"),
        Some(true),
        "the master does ignore something"
    );
    let mut indexes = Vec::new();
    for &pid in &pids {
        assert_eq!(
            env_of(pid, "EINHORN_MASTER_PID"),
            Some(master.pid().to_string())
        );
        assert_eq!(env_of(pid, "EINHORN_FD_COUNT"), Some(count.to_string()));
        assert_eq!(
            env_of(pid, "EINHORN_SOCK_PATH").as_deref(),
            Some(path_str(&master.socket))
        );
        indexes.push(env_of(pid, "EINHORN_CHILD_INDEX").unwrap());
        let fds: Vec<i32> = (0..count)
            .map(|i| {
                env_of(pid, &format!("EINHORN_FD_{i}"))
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        let listed: Vec<String> = fds.iter().map(|fd| fd.to_string()).collect();
        assert_eq!(env_of(pid, "EINHORN_FDS"), Some(listed.join(" ")));
        // The key ring every worker reads (EINHORN_KEYS_FD).
        let keys: i32 = env_of(pid, "EINHORN_KEYS_FD")
            .expect("EINHORN_KEYS_FD")
            .parse()
            .unwrap();
        // Exactly stdio, the listening sockets and the key ring: no command socket, lock
        // file, the ring's writable fd or other fd.
        // (Waited for: `sleep` itself opens locale files for a moment while it starts.)
        let mut expected = vec![0, 1, 2, keys];
        expected.extend(&fds);
        expected.sort_unstable();
        let mut open = Vec::new();
        let settled = wait_until(WAIT, || {
            open = open_fds(pid);
            open.iter().map(|(fd, _)| *fd).eq(expected.iter().copied())
        });
        assert!(settled, "{open:?}, expected fds {expected:?}");
        for fd in &fds {
            let (_, target) = open.iter().find(|(n, _)| n == fd).unwrap();
            assert!(target.starts_with("socket:"), "fd {fd} is {target}");
        }
        let (_, target) = open.iter().find(|(n, _)| *n == keys).unwrap();
        assert!(
            target.starts_with("/memfd:einhorn-keys"),
            "fd {keys} is {target}"
        );
        // Opened read-only: a worker cannot plant a key.
        let fdinfo = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{keys}")).unwrap();
        let flags = fdinfo
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|f| i64::from_str_radix(f.trim(), 8).unwrap())
            .unwrap();
        assert_eq!(flags & 0o3, libc::O_RDONLY as i64, "{fdinfo}");
        // Default dispositions, nothing blocked.
        assert_eq!(
            status_field(pid, "SigIgn").as_deref(),
            Some("0000000000000000")
        );
        assert_eq!(
            status_field(pid, "SigBlk").as_deref(),
            Some("0000000000000000")
        );
        // Its own process group.
        assert_eq!(
            nix::unistd::getpgid(Some(Pid::from_raw(pid)))
                .unwrap()
                .as_raw(),
            pid
        );
    }
    indexes.sort();
    assert_eq!(indexes, ["0", "1"]);
}

#[test]
fn manual_acks_are_counted_and_timer_mode_ignores_them() {
    let master = Master::start(&["-n", "2", "-m", "manual"], &["sleep", "1000"]);
    let state = master.wait_state("two workers", |s| s.all_pids().len() == 2);
    assert!(state.workers.iter().all(|w| !w.acked));
    for pid in state.all_pids() {
        client::ack(&master.socket, pid as u32).unwrap();
    }
    master.wait_serving(2);
    master.wait_for_line("ACKed");

    // A forgotten `-m manual`: warned once, with the flag to add; the next ACKs at debug
    // (`-v` shows them, so the test sees the second one handled).
    let timer = Master::start(&["-n", "1", "-m", "0.2", "-v"], &["sleep", "1000"]);
    let pid = timer.wait_serving(1)[0];
    client::ack(&timer.socket, pid as u32).unwrap();
    let warned = timer.wait_for_line("but the ACK mode is timer (0.2s); ignoring it");
    assert!(
        warned.contains("WARN")
            && warned.contains("start the master with")
            && warned.contains("-m manual"),
        "{warned}"
    );
    client::ack(&timer.socket, pid as u32).unwrap();
    let lines = timer
        .proc
        .wait_for_lines("received a manual ACK", 2, WAIT)
        .expect("the second ACK is logged");
    assert!(lines[1].contains("DEBUG"), "warned once only: {lines:?}");
}

#[test]
fn a_killed_worker_is_respawned() {
    let master = Master::start(&["-n", "2", "-m", "0"], &["sleep", "1000"]);
    let pids = master.wait_serving(2);
    kill(Pid::from_raw(pids[0]), Signal::SIGKILL).unwrap();
    let state = master.wait_state("a replacement", |s| {
        s.serving_pids().len() == 2 && !s.all_pids().contains(&pids[0])
    });
    assert!(state.all_pids().contains(&pids[1]));
    assert!(
        wait_until(WAIT, || !is_alive(pids[0])),
        "the killed worker is reaped"
    );
    master.wait_for_line(&format!("Exited worker {}", pids[0]));
}

#[test]
fn signal_timeout_kills_a_worker_that_ignores_usr2() {
    // `exec` keeps the pid: the process the master forked is the one ignoring USR2.
    let mut master = Master::start(
        &["-n", "1", "-m", "0", "-t", "1"],
        &["sh", "-c", "trap '' USR2; exec sleep 1000"],
    );
    let pid = master.wait_serving(1)[0];
    assert!(wait_until(WAIT, || status_field(pid, "Name").as_deref()
        == Some("sleep")));
    assert_ne!(
        status_field(pid, "SigIgn").as_deref(),
        Some("0000000000000000")
    );
    master.signal(Signal::SIGINT);
    let status = master
        .wait_exit(WAIT)
        .expect("the master exits once the worker is killed");
    assert_eq!(status.code(), Some(0));
    assert!(!is_alive(pid));
    let line = master.wait_for_line("sending KILL");
    assert!(line.contains(&pid.to_string()), "{line}");
}

#[test]
fn kill_children_on_exit_sends_usr2_when_the_master_dies() {
    let dir = tempfile::tempdir().unwrap();
    let worker = |name: &str| {
        let file = dir.path().join(name);
        format!(
            "trap 'echo usr2 > {}; exit 0' USR2; while :; do sleep 0.05; done",
            file.display()
        )
    };
    let with_k = worker("with-k");
    let without_k = worker("without-k");
    let mut a = Master::start(&["-n", "1", "-m", "0", "-k"], &["sh", "-c", &with_k]);
    let mut b = Master::start(&["-n", "1", "-m", "0"], &["sh", "-c", &without_k]);
    let a_worker = a.wait_serving(1)[0];
    let b_worker = b.wait_serving(1)[0];
    a.orphans.push(a_worker);
    b.orphans.push(b_worker);
    // `-m 0` counts them up at once: wait for the shells to have run their `trap`.
    wait_catching(&[a_worker, b_worker], Signal::SIGUSR2);
    a.signal(Signal::SIGKILL);
    b.signal(Signal::SIGKILL);
    assert!(a.wait_exit(WAIT).is_some() && b.wait_exit(WAIT).is_some());
    assert!(
        wait_until(WAIT, || std::fs::read_to_string(dir.path().join("with-k"))
            .is_ok_and(|s| s == "usr2\n")),
        "the -k worker got SIGUSR2"
    );
    assert!(wait_until(WAIT, || !is_alive(a_worker)));
    // The other master's worker, orphaned just as long, got nothing.
    assert!(is_alive(b_worker));
    assert!(!dir.path().join("without-k").exists());
}

#[test]
fn sigterm_is_forwarded_and_the_master_exits_after_its_workers() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("term");
    let script = format!(
        "trap 'echo term >> {}; exit 0' TERM; while :; do sleep 0.05; done",
        file.display()
    );
    let mut master = Master::start(&["-n", "2", "-m", "0"], &["sh", "-c", &script]);
    let pids = master.wait_serving(2);
    wait_catching(&pids, Signal::SIGTERM);
    master.signal(Signal::SIGTERM);
    let status = master.wait_exit(WAIT).expect("master exits");
    assert_eq!(status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "term\nterm\n");
    assert!(pids.iter().all(|&p| !is_alive(p)));
    assert!(!master.socket.exists(), "socket removed on exit");
    assert_eq!(
        files_in(master.dir.path()),
        Vec::<String>::new(),
        "lock file and address file removed too"
    );
}

#[test]
fn a_second_stop_signal_is_forwarded_so_workers_stop_now() {
    // Like a worker on graceful-listener: the first USR2 starts a drain (here: forever), the
    // second means "stop now".
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("signals");
    let script = format!(
        "n=0; trap 'n=$((n+1)); echo usr2 >> {log}; [ $n -ge 2 ] && exit 0' USR2; \
         while :; do sleep 0.05; done",
        log = log.display()
    );
    for second in [Signal::SIGINT, Signal::SIGTERM] {
        let _ = std::fs::remove_file(&log);
        let mut master = Master::start(&["-n", "2", "-m", "0"], &["sh", "-c", &script]);
        let pids = master.wait_serving(2);
        wait_catching(&pids, Signal::SIGUSR2);
        master.signal(Signal::SIGINT);
        let count = |text: &str| text.lines().count();
        assert!(
            wait_until(WAIT, || std::fs::read_to_string(&log)
                .is_ok_and(|s| count(&s) == 2)),
            "both workers got the first USR2"
        );
        // Draining: they do not exit, and the master waits for them.
        assert!(master.try_wait().is_none());
        assert!(pids.iter().all(|&p| is_alive(p)));
        if second == Signal::SIGINT {
            master.signal(Signal::SIGINT);
            let status = master.wait_exit(WAIT).expect("the master exits");
            assert_eq!(status.code(), Some(0));
            assert_eq!(std::fs::read_to_string(&log).unwrap(), "usr2\n".repeat(4));
            assert!(pids.iter().all(|&p| !is_alive(p)));
            master.wait_for_line(&format!(
                "stopping already: sent USR2 again to 2 workers still running {pids:?}"
            ));
        } else {
            // SIGTERM after SIGINT: the workers get TERM, which these do not trap (the default
            // action ends them), as Einhorn forwards it.
            master.signal(Signal::SIGTERM);
            let status = master.wait_exit(WAIT).expect("the master exits");
            assert_eq!(status.code(), Some(0));
            assert!(pids.iter().all(|&p| !is_alive(p)));
        }
    }
}

#[test]
fn sigquit_stops_now_and_die_stops_gracefully() {
    let mut master = Master::start(&["-n", "2", "-m", "0"], &["sleep", "1000"]);
    let pids = master.wait_serving(2);
    master.orphans.extend(&pids);
    master.signal(Signal::SIGQUIT);
    assert!(master.wait_exit(WAIT).is_some());
    assert!(
        wait_until(WAIT, || pids.iter().all(|&p| !is_alive(p))),
        "QUIT reached the workers"
    );

    let mut master = Master::start(&["-n", "2", "-m", "0"], &["sleep", "1000"]);
    let pids = master.wait_serving(2);
    let replies = client::command(&master.socket, "die", &[], WAIT).unwrap();
    assert!(
        replies[0]
            .message
            .starts_with("Einhorn is going down! Successfully sent USR2s to 2 processes")
    );
    let status = master.wait_exit(WAIT).expect("master exits");
    assert_eq!(status.code(), Some(0));
    assert!(pids.iter().all(|&p| !is_alive(p)));
}

#[test]
fn an_upgrade_whose_workers_never_ack_times_out_and_old_workers_keep_serving() {
    let master = Master::start(
        &["-n", "2", "-m", "manual", "--upgrade-timeout", "1"],
        &["sleep", "1000"],
    );
    let old = master
        .wait_state("two workers", |s| s.all_pids().len() == 2)
        .all_pids();
    for &pid in &old {
        client::ack(&master.socket, pid as u32).unwrap();
    }
    master.wait_serving(2);
    let err = master.upgrade().unwrap_err();
    let ClientError::Failed {
        message, replies, ..
    } = &err
    else {
        panic!("{err}");
    };
    assert!(
        message.starts_with("Upgrade failed: no new worker ACKed within 1s"),
        "{message}"
    );
    assert!(replies.last().unwrap().error);
    let state = master.wait_state("the unACKed new worker gone", |s| s.workers.len() == 2);
    assert!(state.upgrading.is_none());
    let mut serving = state.serving_pids();
    serving.sort_unstable();
    let mut expected = old.clone();
    expected.sort_unstable();
    assert_eq!(serving, expected);
    assert!(old.iter().all(|&p| is_alive(p)));
    // Versions stay truthful: the old workers still say version 0; version 1 is what the next
    // spawn would run, and the base version says the version-0 workers are the pool.
    assert_eq!((state.version, state.base_version), (1, 0));
    assert!(state.workers.iter().all(|w| w.version == 0), "{state:?}");

    // ctl reports it with a non-zero status.
    let out = Command::new(env!("CARGO_BIN_EXE_einhorn-master"))
        .args(["ctl", "-d", path_str(&master.socket), "upgrade"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Upgrade failed"));
}

#[test]
fn pidfile_is_written_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("master.pid");
    let mut master = Master::start(
        &["-n", "1", "-m", "0", "-e", path_str(&pidfile)],
        &["sleep", "1000"],
    );
    master.wait_serving(1);
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{}\n", master.pid())
    );
    master.signal(Signal::SIGUSR2);
    assert_eq!(master.wait_exit(WAIT).and_then(|s| s.code()), Some(0));
    assert!(!pidfile.exists());
}

/// Writes a script with this mode.
fn script(path: &std::path::Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

/// The files in `dir`, sorted.
fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn setup_errors_are_reported_once_before_any_worker_starts_and_leave_no_files() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let out = Command::new(env!("CARGO_BIN_EXE_einhorn-master"))
        .args([
            "-d",
            path_str(&dir.path().join("s.sock")),
            "-e",
            path_str(&dir.path().join("pid")),
            "-b",
            &addr,
            "--",
        ])
        .args(["sh", "-c", &format!("touch {}", marker.display())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("cannot bind {addr}")), "{stderr}");
    assert_eq!(
        stderr.matches(&format!("cannot bind {addr}")).count(),
        1,
        "printed once: {stderr}"
    );
    assert!(!marker.exists());
    // The pid file, the command socket and its lock file were created, then removed.
    assert_eq!(files_in(dir.path()), Vec::<String>::new());

    let out = Command::new(env!("CARGO_BIN_EXE_einhorn-master"))
        .args(["--no-such-flag", "sleep", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
}

#[test]
fn a_port_kept_by_the_workers_of_a_killed_master_names_them() {
    let mut master = Master::start(
        &["-n", "2", "-m", "0", "-b", "127.0.0.1:0"],
        &["sleep", "1000"],
    );
    let addr = master.addr(0);
    let workers = master.wait_serving(2);
    master.orphans.extend(&workers);
    let old_master = master.pid();
    master.signal(Signal::SIGKILL);
    assert!(master.wait_exit(WAIT).is_some());
    assert!(
        workers.iter().all(|&p| is_alive(p)),
        "the workers keep the port"
    );

    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_einhorn-master"))
        .args(["-d", path_str(&dir.path().join("s.sock"))])
        .args(["-b", &format!("{addr},r"), "--", "sleep", "1000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("einhorn-master: cannot bind"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains("Address already in use"), "{line}");
    for pid in &workers {
        assert!(line.contains(&format!("pid {pid} (sleep)")), "{line}");
    }
    assert!(
        line.contains(&format!(
            "workers of einhorn master {old_master}, which is no longer running"
        )),
        "{line}"
    );
    assert!(
        line.contains(&format!("kill -USR2 {} {}", workers[0], workers[1])),
        "{line}"
    );
}

#[test]
fn a_program_that_cannot_run_fails_the_master_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let not_executable = dir.path().join("not-executable");
    script(&not_executable, "#!/bin/sh\nexec sleep 1000\n", 0o644);
    let bad_interpreter = dir.path().join("bad-interpreter");
    script(&bad_interpreter, "#!/nonexistent/interpreter\n", 0o755);
    let cases = [
        ("/nonexistent/worker-binary", "No such file or directory"),
        (path_str(&not_executable), "is not executable"),
        ("einhorn-master-no-such-program", "is not found in PATH"),
        // Found and executable, but exec fails: the first spawn ends the master.
        (path_str(&bad_interpreter), "cannot start worker"),
    ];
    for (program, expected) in cases {
        let run = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_einhorn-master"))
            .args(["-d", path_str(&run.path().join("s.sock"))])
            .args(["--addr-file", path_str(&run.path().join("addrs"))])
            .args(["-b", "127.0.0.1:0", "-n", "2", "--", program])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{program}: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.starts_with("einhorn-master: "))
            .unwrap_or_else(|| panic!("{program}: no error line in {stderr}"));
        assert!(line.contains(program), "{line}");
        assert!(line.contains(expected), "{line}");
        assert!(
            !stderr.contains("could not start worker"),
            "no respawn: {stderr}"
        );
        assert_eq!(files_in(run.path()), Vec::<String>::new(), "{program}");
    }
}

#[test]
fn a_program_removed_after_start_still_runs_the_build_its_version_started_from() {
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("worker");
    script(&program, "#!/bin/sh\nexec sleep 1000\n", 0o755);
    let master = Master::start(&["-n", "1", "-m", "0"], &[program.as_os_str()]);
    let pid = master.wait_serving(1)[0];
    std::fs::remove_file(&program).unwrap();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    // The file is gone from its path, not from the master: version 0's build is held open
    // since its first worker, and the replacement runs it (after the backoff of a crash).
    master.wait_for_line("starting version 0's build as held since its first worker");
    let state = master.wait_state("a replacement serving", |s| {
        s.serving_pids().len() == 1 && !s.serving_pids().contains(&pid)
    });
    assert_eq!(state.workers[0].version, 0);
    assert!(!master.output().contains("could not start worker"));
}
