//! `einhorn-master` reloads its own code in place, as Einhorn does: `reload` (the master
//! alone) and `upgrade` (the master, then the workers) exec the program now at the master's
//! path with the same pid, keeping the sockets, the workers and the clients waiting; a new
//! master that fails its check is refused and nothing changes. Also `-g`: workers ACK through
//! `EINHORN_SOCK_FD`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use graceful_listener_suite::harness::{Proc, binary, example, pids_running, wait_until};
use graceful_listener_suite::load::{self, LoadConfig};
use graceful_listener_suite::master::{Master, WAIT};
use graceful_listener_suite::probe::Probe;

/// `einhorn-master` copied to a temporary path and started from there (so the test can put
/// a new release at that path), with `hyper-hello` workers.
fn start_master(flags: &[&str], command: &[&std::ffi::OsStr]) -> (Master, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let program = dir.path().join("einhorn-master");
    std::fs::copy(binary("einhorn-master"), &program).expect("copy einhorn-master");
    let socket = dir.path().join("master.sock");
    let cmd = command_for(&program, &socket, dir.path(), flags, command);
    // A thread of another test may fork while our copy is still open for writing: exec
    // then fails with "text file busy" until that child has exec'd too. Bounded retries.
    let mut proc = Proc::spawn(cmd);
    for _ in 0..100 {
        match &proc {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(10));
                proc = Proc::spawn(command_for(&program, &socket, dir.path(), flags, command));
            }
            _ => break,
        }
    }
    let master = Master {
        proc: proc.expect("start einhorn-master"),
        socket,
        dir,
        orphans: Vec::new(),
    };
    master.wait_for_line(": command socket ");
    (master, program)
}

/// `PROGRAM -d SOCKET --addr-file DIR/addrs -b 127.0.0.1:0 -m manual FLAGS -- COMMAND`.
fn command_for(
    program: &Path,
    socket: &Path,
    dir: &Path,
    flags: &[&str],
    command: &[&std::ffi::OsStr],
) -> Command {
    let mut cmd = Command::new(program);
    cmd.arg("-d")
        .arg(socket)
        .arg("--addr-file")
        .arg(dir.join("addrs"))
        .args(["-b", "127.0.0.1:0", "-m", "manual"])
        .args(flags)
        .arg("--")
        .args(command);
    cmd
}

/// Puts a new release at `path`: a copy of einhorn-master under a new inode, renamed over.
fn deploy(path: &Path) -> u64 {
    let staged = path.with_extension("new");
    std::fs::copy(binary("einhorn-master"), &staged).expect("stage the new master");
    std::fs::rename(&staged, path).expect("deploy the new master");
    std::fs::metadata(path).unwrap().ino()
}

/// Puts a script at `path` as the new "release".
fn deploy_script(path: &Path, body: &str, mode: u32) {
    let staged = path.with_extension("new");
    std::fs::write(&staged, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// The inode of the file process `pid` runs.
fn exe_inode(pid: i32) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/exe")).unwrap().ino()
}

/// `einhorn-master ctl -d SOCKET COMMAND`: its exit status and output.
fn ctl(socket: &Path, command: &str) -> (i32, String) {
    let out = Command::new(binary("einhorn-master"))
        .arg("ctl")
        .arg("-d")
        .arg(socket)
        .args(["--timeout", "60", command])
        .output()
        .expect("run ctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// `reload` and `upgrade` are both refused, saying `expected`, and nothing changes: the
/// same master (`pid`), version 0, the same `workers`.
fn refused_twice(master: &Master, pid: i32, workers: &[i32], what: &str, expected: &str) {
    for command in ["reload", "upgrade"] {
        let (code, out) = ctl(&master.socket, command);
        assert_ne!(code, 0, "{what}: ctl {command} fails: {out}");
        assert!(
            out.contains("the new master cannot take over") && out.contains(expected),
            "{what}: ctl {command} says why: {out}\n{}",
            master.output()
        );
        let state = master.state();
        assert_eq!(state.master_pid, pid, "{what}");
        assert_eq!(state.version, 0, "{what}: no upgrade happened");
        let mut serving = state.serving_pids();
        serving.sort_unstable();
        assert_eq!(serving, workers, "{what}: the same workers serve");
    }
}

#[test]
fn ten_reload_and_upgrade_cycles_keep_the_pid_the_sockets_and_every_request() {
    let (master, program) = start_master(&["-n", "2"], &[example("hyper-hello").as_os_str()]);
    let pid = master.pid();
    let addr = master.addr(0);
    let mut workers = master.wait_serving(2);
    let load = load::start(
        LoadConfig::new(addr)
            .connections(8)
            .duration(Duration::from_secs(300)),
    );
    let probe = Probe::start(addr, Duration::from_millis(50));
    assert!(wait_until(WAIT, || load.snapshot().ok >= 200));
    for cycle in 0..10 {
        let inode = deploy(&program);
        let reload = cycle % 2 == 0;
        let (code, out) = ctl(&master.socket, if reload { "reload" } else { "upgrade" });
        assert_eq!(code, 0, "cycle {cycle}: {out}\n{}", master.output());
        assert!(out.contains("Reloaded: einhorn-master"), "{out}");
        assert_eq!(
            exe_inode(pid),
            inode,
            "cycle {cycle}: the master runs the new file"
        );
        let state = master.state();
        assert_eq!(state.master_pid, pid);
        let serving = {
            let mut s = state.serving_pids();
            s.sort_unstable();
            s
        };
        if reload {
            assert_eq!(
                serving, workers,
                "cycle {cycle}: a reload keeps every worker"
            );
            assert!(out.contains(&format!("(pid {pid}, unchanged)")), "{out}");
        } else {
            assert!(out.contains("Upgrade done"), "{out}");
            let new = master.wait_serving(2);
            assert!(new.iter().all(|p| !workers.contains(p)), "cycle {cycle}");
            workers = new;
        }
        let seen = load.snapshot().ok;
        assert!(wait_until(WAIT, || load.snapshot().ok >= seen + 100));
    }
    let probed = probe.stop();
    let report = load.stop();
    eprintln!("10 reload/upgrade cycles: {report}; probe: {probed}");
    assert_eq!(report.failed(), 0, "{report}\n{}", master.output());
    assert!(probed.failures.is_empty(), "{probed}");
    assert_eq!(
        master
            .output()
            .matches("took over from einhorn-master")
            .count(),
        10
    );
}

#[test]
fn a_broken_new_master_is_refused_and_everything_keeps_serving() {
    let (master, program) = start_master(&["-n", "2"], &[example("hyper-hello").as_os_str()]);
    let pid = master.pid();
    let workers = master.wait_serving(2);
    let load = load::start(
        LoadConfig::new(master.addr(0))
            .connections(4)
            .duration(Duration::from_secs(120)),
    );
    let real = binary("einhorn-master");
    // (what is wrong, how to deploy it, what the refusal says)
    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "exits 1",
            Box::new(|| {
                deploy_script(&program, "echo 'new master: bad config' >&2; exit 1", 0o755)
            }),
            "its check exited with exit status 1: new master: bad config",
        ),
        (
            "not executable",
            Box::new(|| deploy_script(&program, "exit 0", 0o644)),
            "Permission denied",
        ),
        (
            "missing",
            Box::new(|| {
                let _ = std::fs::remove_file(&program);
            }),
            "No such file or directory",
        ),
        (
            // A master that cannot read the state it is handed: here, the state it gets is
            // empty (the script empties the file on the fd before the real master reads it).
            "cannot read the state",
            Box::new(|| {
                deploy_script(
                    &program,
                    &format!(": > /proc/self/fd/$3; exec '{}' \"$@\"", real.display()),
                    0o755,
                )
            }),
            "the state handed over is not one",
        ),
    ];
    for (what, break_it, expected) in &cases {
        break_it();
        refused_twice(&master, pid, &workers, what, expected);
    }
    // The next good release reloads.
    let inode = deploy(&program);
    let (code, out) = ctl(&master.socket, "reload");
    assert_eq!(code, 0, "{out}");
    assert_eq!(exe_inode(pid), inode);
    let report = load.stop();
    assert_eq!(report.failed(), 0, "{report}\n{}", master.output());
}

#[test]
fn a_reload_during_an_upgrade_lets_the_upgrade_finish_in_the_new_master() {
    // Workers that take 2 s to start, so the upgrade is still running when the reload comes.
    let slow_start = "trap 'kill $! 2>/dev/null; exit 0' USR2; sleep 2 & wait $!; exec \"$0\"";
    let (master, program) = start_master(
        &["-n", "2"],
        &[
            "sh".as_ref(),
            "-c".as_ref(),
            slow_start.as_ref(),
            example("hyper-hello").as_os_str(),
        ],
    );
    let pid = master.pid();
    let old = master.wait_serving(2);
    let socket = master.socket.clone();
    let upgrade = std::thread::spawn(move || ctl(&socket, "upgrade"));
    master.wait_for_line("version 1)");
    let inode = deploy(&program);
    let (code, out) = ctl(&master.socket, "reload");
    assert_eq!(code, 0, "{out}\n{}", master.output());
    assert_eq!(exe_inode(pid), inode);
    let (code, out) = upgrade.join().unwrap();
    assert_eq!(code, 0, "the upgrade ends in the new master: {out}");
    assert!(out.trim_end().ends_with("Upgrade done"), "{out}");
    let new = master.wait_serving(2);
    assert!(new.iter().all(|p| !old.contains(p)));
    assert_eq!(master.state().master_pid, pid);
}

#[test]
fn with_g_workers_ack_through_einhorn_sock_fd_without_the_socket_path() {
    let (master, _) = start_master(&["-n", "2", "-g"], &[example("hyper-hello").as_os_str()]);
    // The path workers were told no longer exists: only the inherited fd can carry an ACK.
    let hidden = master.dir.path().join("elsewhere.sock");
    let first = master.wait_serving(2);
    std::fs::rename(&master.socket, &hidden).unwrap();
    let client = |command: &str| {
        let out = Command::new(binary("einhorn-master"))
            .arg("ctl")
            .arg("-d")
            .arg(&hidden)
            .args(["--timeout", "60", command])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = client("upgrade");
    assert_eq!(
        code,
        Some(0),
        "new workers ACK through their fd: {out}\n{}",
        master.output()
    );
    assert!(
        master
            .proc
            .wait_for_lines("acked to the Einhorn master (EINHORN_SOCK_FD)", 4, WAIT)
            .is_some(),
        "{}",
        master.output()
    );
    let output = master.output();
    assert!(
        !output.contains("acked to the Einhorn master path="),
        "{output}"
    );
    std::fs::rename(&hidden, &master.socket).unwrap();
    let state = master.wait_state("2 new workers", |s| {
        s.serving_pids().len() == 2 && s.version == 1
    });
    assert!(state.serving_pids().iter().all(|p| !first.contains(p)));
}

/// Copies `example` into `dir` (so the test can remove or break it) and returns its path.
fn worker_copy(dir: &Path, example_name: &str) -> PathBuf {
    let path = dir.join(example_name);
    std::fs::copy(example(example_name), &path).expect("copy the worker");
    path
}

#[test]
fn a_deploy_broken_around_the_master_never_ends_it() {
    let workdir = tempfile::tempdir().unwrap();
    let worker = worker_copy(workdir.path(), "hyper-hello");
    let pidfile = workdir.path().join("master.pid");
    let (master, program) = start_master(
        &["-n", "2", "-e", pidfile.to_str().unwrap()],
        &[worker.as_os_str()],
    );
    let pid = master.pid();
    let workers = master.wait_serving(2);
    let load = load::start(
        LoadConfig::new(master.addr(0))
            .connections(4)
            .duration(Duration::from_secs(120)),
    );
    let probe = Probe::start(master.addr(0), Duration::from_millis(50));
    let hidden = workdir.path().join("hidden");
    // (what is wrong, how to break it, what the refusal says, how to mend it)
    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, &'a str, Box<dyn Fn() + 'a>);
    let cases: Vec<Case> = vec![
        (
            "the worker program missing",
            Box::new(|| std::fs::rename(&worker, &hidden).unwrap()),
            "No such file or directory",
            Box::new(|| std::fs::rename(&hidden, &worker).unwrap()),
        ),
        (
            "the worker program not executable",
            Box::new(|| {
                std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o644)).unwrap()
            }),
            "is not executable",
            Box::new(|| {
                std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755)).unwrap()
            }),
        ),
        (
            "a check that fails leaving a child behind",
            Box::new(|| deploy_script(&program, "sleep 6019 & exit 1", 0o755)),
            "exit status 1",
            Box::new(|| {
                assert!(
                    wait_until(WAIT, || pids_running(&["sleep", "6019"]).is_empty()),
                    "the check's child is killed with it"
                );
                deploy(&program);
            }),
        ),
        (
            "/bin/true at the master's path",
            Box::new(|| deploy_script(&program, "exit 0", 0o755)),
            "without the handshake",
            Box::new(|| {
                deploy(&program);
            }),
        ),
    ];
    for (what, break_it, expected, mend) in &cases {
        break_it();
        refused_twice(&master, pid, &workers, what, expected);
        mend();
    }
    // The master's own files, tampered with: it takes them back and reloads.
    let lock = master.socket.with_extension("sock.lock");
    assert!(lock.exists(), "{}", lock.display());
    std::fs::remove_file(&lock).unwrap();
    std::fs::write(&pidfile, "1\n").unwrap();
    let (code, out) = ctl(&master.socket, "reload");
    assert_eq!(
        code, 0,
        "a reload with the lock and pid file tampered with: {out}"
    );
    assert_eq!(master.state().master_pid, pid);
    assert!(lock.exists(), "the lock file is taken again");
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        pid.to_string(),
        "the pid file names the master again"
    );
    // A fault the check does not look at (the address file's path is a directory now): the
    // new master lives with it, and `state` says so.
    let addrs = master.dir.path().join("addrs");
    std::fs::remove_file(&addrs).unwrap();
    std::fs::create_dir(&addrs).unwrap();
    let (code, out) = ctl(&master.socket, "reload");
    assert_eq!(code, 0, "{out}");
    let state = master.state();
    assert_eq!(state.master_pid, pid);
    assert!(
        state
            .faults
            .iter()
            .any(|f| f.contains("cannot write address file")),
        "{state:?}"
    );
    std::fs::remove_dir(&addrs).unwrap();
    // Another master cannot start on the socket the reloaded one serves.
    let second = Command::new(binary("einhorn-master"))
        .arg("-d")
        .arg(&master.socket)
        .args(["-b", "127.0.0.1:0", "--", "true"])
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("another master is running"));
    // And a good upgrade works.
    let (code, out) = ctl(&master.socket, "upgrade");
    assert_eq!(code, 0, "{out}\n{}", master.output());
    let new = master.wait_serving(2);
    assert!(new.iter().all(|p| !workers.contains(p)));
    let probed = probe.stop();
    let report = load.stop();
    assert_eq!(report.failed(), 0, "{report}\n{}", master.output());
    assert!(probed.failures.is_empty(), "{probed}");
}

/// Sends `reload` without waiting for its answer.
fn reload_async(socket: &Path) -> einhorn_master::client::Client {
    let mut client = einhorn_master::client::Client::connect(socket).expect("connect");
    client.send("reload", &[]).expect("send reload");
    client
}

/// A command client that sends requests and never reads their replies: the master's
/// hand-over waits up to its bound for that connection before the exec.
fn deaf_client(socket: &Path) -> std::os::unix::net::UnixStream {
    use std::io::Write;
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    stream.set_nonblocking(true).unwrap();
    let line = b"{\"command\":\"state\"}\n";
    for _ in 0..2_000 {
        if stream.write(line).is_err() {
            break;
        }
    }
    stream
}

#[test]
fn a_sighup_sent_during_a_reload_is_acted_on_once() {
    let (master, _program) = start_master(&["-n", "1"], &[example("hyper-hello").as_os_str()]);
    master.wait_serving(1);
    let mut version = 0;
    for offset in 0..=20 {
        let deaf = (offset % 2 == 0).then(|| deaf_client(&master.socket));
        let _client = reload_async(&master.socket);
        std::thread::sleep(Duration::from_millis(offset));
        master.signal(nix::sys::signal::Signal::SIGHUP);
        version += 1;
        let state = master.wait_state(&format!("version {version} serving alone"), |s| {
            s.version >= version && s.upgrading.is_none() && s.serving_pids().len() == 1
        });
        assert_eq!(
            state.version,
            version,
            "offset {offset} ms: one upgrade per SIGHUP\n{}",
            master.output()
        );
        drop(deaf);
    }
    let output = master.output();
    eprintln!(
        "21 SIGHUPs during reloads: {} reloads done, {} abandoned for the signal",
        output.matches("took over from einhorn-master").count(),
        output.matches("was abandoned").count()
    );
}

#[test]
fn a_stop_signal_sent_during_a_reload_stops_the_master() {
    use nix::sys::signal::Signal;
    for offset in 0..=20 {
        let signal = if offset % 2 == 0 {
            Signal::SIGTERM
        } else {
            Signal::SIGQUIT
        };
        let (mut master, _program) =
            start_master(&["-n", "1"], &[example("hyper-hello").as_os_str()]);
        master.wait_serving(1);
        let deaf = (offset % 3 == 0).then(|| deaf_client(&master.socket));
        let _client = reload_async(&master.socket);
        std::thread::sleep(Duration::from_millis(offset));
        master.signal(signal);
        let status = master.wait_exit(WAIT);
        assert!(
            status.is_some(),
            "{signal} {offset} ms after a reload: the master stops\n{}",
            master.output()
        );
        drop(deaf);
    }
}

/// `GET /metrics` on `addr`: whether it answered 200.
fn scrape(addr: std::net::SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    response.starts_with(b"HTTP/1.1 200")
}

#[test]
fn the_metrics_socket_is_handed_over_across_reloads_and_never_free() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let (master, _program) = start_master(
        &["-n", "1", "--metrics", &metrics],
        &[example("hyper-hello").as_os_str()],
    );
    master.wait_serving(1);
    let addr: std::net::SocketAddr = metrics.parse().unwrap();
    assert!(scrape(addr), "{}", master.output());
    // Beside the reloads: a scraper, and another process trying to take the port.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut scrapes, mut failed, mut taken) = (0, 0, 0);
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < deadline
            {
                scrapes += 1;
                if !scrape(addr) {
                    failed += 1;
                }
                if std::net::TcpListener::bind(addr).is_ok() {
                    taken += 1;
                }
            }
            (scrapes, failed, taken)
        })
    };
    for _ in 0..10 {
        let (code, out) = ctl(&master.socket, "reload");
        assert_eq!(code, 0, "{out}\n{}", master.output());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (scrapes, failed, taken) = watcher.join().unwrap();
    eprintln!("10 reloads: {scrapes} scrapes, {failed} failed; the port taken {taken} times");
    assert_eq!(failed, 0, "{}", master.output());
    assert_eq!(taken, 0, "another process bound the metrics port");
    assert!(scrapes >= 10);
    let text = master.output();
    assert!(!text.contains("no metrics are served"), "{text}");
}
