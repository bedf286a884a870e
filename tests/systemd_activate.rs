//! Under systemd's socket activation, as `systemd-socket-activate` (package systemd) does it:
//! the examples, unchanged, serve on the activated socket (`auto` picks `systemd@0`), pick a
//! named one with `--bind systemd@NAME`, and tell a notify socket made by the test
//! `READY=1` once serving, then `STOPPING=1` at the stop.

mod http_support;

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use graceful_listener_suite::harness::{example, spawn_on_free_ports};
use http_support::{WAIT, get};
use nix::sys::signal::Signal;

for_each_framework!(
    serves_on_the_activated_socket_and_notifies_systemd,
    a_named_socket_is_picked_by_its_fdname,
);

fn loopback(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// `systemd-socket-activate -l ADDR... [--fdname NAMES] [-E VAR=VALUE...] EXAMPLE ARGS`.
/// (It passes its child only `TERM`, `PATH`, `USER`, `HOME`, the `-E` variables and its
/// own `LISTEN_*`: nothing of the test's environment leaks in.)
fn activate(
    addrs: &[SocketAddr],
    fdnames: Option<&str>,
    setenv: &[String],
    example_name: &str,
    args: &[&str],
) -> Command {
    let mut cmd = Command::new("systemd-socket-activate");
    for addr in addrs {
        cmd.arg("-l").arg(addr.to_string());
    }
    if let Some(names) = fdnames {
        cmd.arg(format!("--fdname={names}"));
    }
    for var in setenv {
        cmd.arg("-E").arg(var);
    }
    cmd.arg(example(example_name)).args(args);
    cmd
}

/// Waits for a datagram on `notify` containing `needle`; returns every message seen.
fn notified(notify: &UnixDatagram, needle: &str, seen: &mut Vec<String>) -> bool {
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = notify.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            let found = message.lines().any(|l| l == needle);
            seen.push(message);
            if found {
                return true;
            }
        }
    }
    false
}

fn notify_socket(dir: &Path) -> UnixDatagram {
    let notify = UnixDatagram::bind(dir.join("notify.sock")).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    notify
}

fn serves_on_the_activated_socket_and_notifies_systemd(example_name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let notify = notify_socket(dir.path());
    let notify_var = format!("NOTIFY_SOCKET={}", dir.path().join("notify.sock").display());
    let (mut worker, ports) = spawn_on_free_ports(1, "Listening on", WAIT, |ports| {
        activate(
            &[loopback(ports[0])],
            None,
            std::slice::from_ref(&notify_var),
            example_name,
            &["--drain-timeout", "10"],
        )
    });
    let addr = loopback(ports[0]);

    // The first connection makes systemd-socket-activate exec the example in its place.
    let answer = get(addr, "/").unwrap_or_else(|e| panic!("{e}:\n{}", worker.output()));
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.pid(),
        Some(worker.pid() as u32),
        "same pid: exec'd in place"
    );
    let listening = worker.wait_for_line("listening (auto)", WAIT).unwrap();
    assert!(
        listening.contains("bind=systemd@0")
            && listening.contains("socket-activated by systemd (LISTEN_FDS=1)"),
        "{listening}"
    );
    let mut seen = Vec::new();
    assert!(
        notified(&notify, "READY=1", &mut seen),
        "no READY=1: {seen:?}\n{}",
        worker.output()
    );

    worker.signal(Signal::SIGTERM).unwrap();
    let status = worker.wait_timeout(WAIT).expect("the worker exits");
    assert!(status.success(), "{status:?}\n{}", worker.output());
    assert!(
        notified(&notify, "STOPPING=1", &mut seen),
        "no STOPPING=1 after READY=1: {seen:?}"
    );
}

fn a_named_socket_is_picked_by_its_fdname(example_name: &str) {
    let (mut worker, ports) = spawn_on_free_ports(2, "Listening on", WAIT, |ports| {
        activate(
            &[loopback(ports[0]), loopback(ports[1])],
            Some("web:admin"),
            &[],
            example_name,
            &["--bind", "systemd@admin"],
        )
    });
    let admin = loopback(ports[1]);
    let answer = get(admin, "/").unwrap_or_else(|e| panic!("{e}:\n{}", worker.output()));
    assert_eq!(answer.pid(), Some(worker.pid() as u32), "{answer:?}");
    let listening = worker
        .wait_for_line("graceful_listener::worker: listening", WAIT)
        .unwrap();
    assert!(
        listening.contains("bind=systemd@admin") && listening.contains(&admin.to_string()),
        "{listening}"
    );
    worker.signal(Signal::SIGTERM).unwrap();
    let status = worker.wait_timeout(WAIT).expect("the worker exits");
    assert!(status.success(), "{status:?}\n{}", worker.output());
}
