//! `auto` and explicit specs through the examples, unchanged: variables meant for another
//! process are skipped (and the start line says so), the explicit override wins over any
//! manager, a Unix socket gets the mode its spec asks for, and IPv6 loopback works.

mod http_support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use graceful_listener_suite::fake_einhorn::FakeEinhorn;
use graceful_listener_suite::harness::{Proc, example};
use http_support::{WAIT, get};
use nix::sys::signal::Signal;

for_each_framework!(
    variables_meant_for_another_process_are_skipped_and_said,
    the_override_wins_and_a_unix_socket_gets_its_mode,
    serves_on_ipv6_loopback,
);

fn stops_cleanly(worker: &mut Proc) {
    worker.signal(Signal::SIGTERM).unwrap();
    let status = worker.wait_timeout(WAIT).expect("the worker exits");
    assert!(status.success(), "{status:?}\n{}", worker.output());
}

fn variables_meant_for_another_process_are_skipped_and_said(example_name: &str) {
    // A socket handed down as Server::Starter would, beside systemd variables for pid 1 and
    // Einhorn variables without a master pid (as a grandchild of a worker would see them).
    let mut holder = FakeEinhorn::new().unwrap();
    let addr = holder.add_tcp_listener().unwrap();
    let fd = holder.fd(0);
    let mut cmd = holder.command(example(example_name));
    cmd.env_remove("EINHORN_MASTER_PID")
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDS", "1")
        .env("SERVER_STARTER_PORT", format!("{addr}={fd}"));
    let mut worker = Proc::spawn(cmd).unwrap();
    let line = worker
        .wait_for_line("listening (auto)", WAIT)
        .unwrap_or_else(|| panic!("no start line:\n{}", worker.output()));
    assert!(line.contains("bind=starter@0"), "{line}");
    assert!(
        line.contains("skipped: LISTEN_PID=1 is not this process"),
        "says why systemd's variables were not used: {line}"
    );
    let answer = get(addr, "/").unwrap();
    assert_eq!(answer.pid(), Some(worker.pid() as u32), "{answer:?}");
    stops_cleanly(&mut worker);
}

fn the_override_wins_and_a_unix_socket_gets_its_mode(example_name: &str) {
    // Under Einhorn, with a socket passed: the explicit override still wins.
    let mut einhorn = FakeEinhorn::new().unwrap();
    einhorn.add_tcp_listener().unwrap();
    let path = einhorn.dir().join("override.sock");
    let spec = format!("unix:{},mode=0600", path.display());
    let mut cmd = einhorn.command(example(example_name));
    cmd.env("GRACEFUL_LISTENER_BIND", &spec);
    let mut worker = Proc::spawn(cmd).unwrap();
    einhorn
        .recv_command(WAIT)
        .unwrap_or_else(|e| panic!("no ACK ({e}):\n{}", worker.output()));
    let line = worker.wait_for_line("listening (auto)", WAIT).unwrap();
    assert!(
        line.contains(&format!("why=GRACEFUL_LISTENER_BIND={spec}")),
        "{line}"
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket file's permissions");
    let mut stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    stops_cleanly(&mut worker);
}

fn serves_on_ipv6_loopback(example_name: &str) {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here: skipped");
        return;
    }
    let mut cmd = Command::new(example(example_name));
    cmd.args(["--bind", "[::1]:0"]);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("EINHORN_") || key.starts_with("LISTEN_") {
            cmd.env_remove(key);
        }
    }
    let mut worker = Proc::spawn(cmd).unwrap();
    let line = worker
        .wait_for_line("graceful_listener::worker: listening", WAIT)
        .unwrap();
    let addr: SocketAddr = line
        .split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    assert!(addr.is_ipv6(), "{addr}");
    let answer = get(addr, "/").unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.pid(), Some(worker.pid() as u32));
    stops_cleanly(&mut worker);
}
