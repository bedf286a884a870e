//! Kubernetes' lame duck (`--lame-duck SECS`): after SIGTERM each example keeps accepting and
//! serving for that long while `/readyz` answers 503, then drains and exits 0. SIGUSR2 (an
//! Einhorn upgrade: new workers take over at once) skips it.

mod http_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use graceful_listener_suite::harness::{Proc, example};
use http_support::{WAIT, get};
use nix::sys::signal::Signal;

for_each_framework!(
    serves_not_ready_through_the_lame_duck_then_drains,
    sigusr2_skips_the_lame_duck,
);

/// Starts `example_name` on its own on a loopback port; returns it and its address.
fn standalone(example_name: &str, args: &[&str]) -> (Proc, SocketAddr) {
    let mut cmd = Command::new(example(example_name));
    cmd.args(["--bind", "127.0.0.1:0"]).args(args);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("EINHORN_") || key.starts_with("LISTEN_") {
            cmd.env_remove(key);
        }
    }
    let worker = Proc::spawn(cmd).unwrap();
    let line = worker
        .wait_for_line("graceful_listener::worker: listening", WAIT)
        .unwrap_or_else(|| panic!("not listening:\n{}", worker.output()));
    let addr = line
        .split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (worker, addr)
}

/// `GET /` on a keep-alive connection; returns the response head, lower-cased.
fn keep_alive_head(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "closed mid-head");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap().to_ascii_lowercase()
}

fn serves_not_ready_through_the_lame_duck_then_drains(example_name: &str) {
    let (mut worker, addr) = standalone(
        example_name,
        &["--lame-duck", "1.5", "--drain-timeout", "10"],
    );
    assert_eq!(
        get(addr, "/readyz").unwrap().status,
        200,
        "ready while serving"
    );

    let signaled = Instant::now();
    worker.signal(Signal::SIGTERM).unwrap();
    worker
        .wait_for_line("lame duck: not ready, still serving", WAIT)
        .unwrap_or_else(|| panic!("no lame duck:\n{}", worker.output()));
    // New connections are still accepted and served, as if nothing happened...
    let head = keep_alive_head(addr);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        !head.contains("connection: close"),
        "not draining yet: {head}"
    );
    let hello = get(addr, "/").unwrap();
    assert_eq!(hello.pid(), Some(worker.pid() as u32), "{hello:?}");
    // ...but readiness says no, so the load balancer stops sending.
    let readyz = get(addr, "/readyz").unwrap();
    assert_eq!(readyz.status, 503, "{readyz:?}");
    assert!(
        signaled.elapsed() < Duration::from_millis(1400),
        "checks too slow to mean anything: {:?}",
        signaled.elapsed()
    );

    let status = worker.wait_timeout(WAIT).expect("the worker exits");
    let took = signaled.elapsed();
    assert!(status.success(), "{status:?}\n{}", worker.output());
    assert!(
        took >= Duration::from_millis(1450),
        "exited before the lame duck was over: {took:?}"
    );
    assert!(
        took < Duration::from_secs(6),
        "{took:?}\n{}",
        worker.output()
    );
    let output = worker.output();
    let lame = output.find("lame duck: not ready").unwrap();
    let stopping = output.find("stopping: no longer accepting").unwrap();
    assert!(
        lame < stopping,
        "the drain follows the lame duck:\n{output}"
    );
}

fn sigusr2_skips_the_lame_duck(example_name: &str) {
    let (mut worker, addr) = standalone(example_name, &["--lame-duck", "30"]);
    assert_eq!(get(addr, "/").unwrap().status, 200);
    let signaled = Instant::now();
    worker.signal(Signal::SIGUSR2).unwrap();
    let status = worker.wait_timeout(WAIT).expect("the worker exits");
    assert!(status.success(), "{status:?}\n{}", worker.output());
    assert!(
        signaled.elapsed() < Duration::from_secs(5),
        "{:?}",
        signaled.elapsed()
    );
    assert!(
        !worker.output().contains("lame duck"),
        "{}",
        worker.output()
    );
}
