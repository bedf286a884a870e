//! `--tls-cert`/`--tls-key` on every example that takes the examples' options: served by the
//! ones that speak HTTP (checked here for the two that used to ignore them; the `-hello`
//! ones are served under load in `https_upgrade.rs`), refused as a usage error by the
//! line echoes, never ignored. And a key path that is a FIFO with no writer is named at
//! start, not waited on.

mod http_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use graceful_listener_suite::fake_einhorn::FakeEinhorn;
use graceful_listener_suite::harness::{Proc, example};
use graceful_listener_suite::tls::TestCertificate;
use http_support::WAIT;

/// `GET path` over TLS with `Connection: close`; the whole answer, read to the end.
fn tls_get(addr: SocketAddr, config: Arc<rustls::ClientConfig>, path: &str) -> String {
    let tcp = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    tcp.set_write_timeout(Some(WAIT)).unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let client = rustls::ClientConnection::new(config, name).expect("a TLS client");
    let mut stream = rustls::StreamOwned::new(client, tcp);
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .expect("a TLS handshake and a request");
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .expect("an answer ending with close_notify");
    String::from_utf8_lossy(&answer).into_owned()
}

/// Starts `example_name` under a fake Einhorn with `listeners` TCP listeners and `args`;
/// returns once it has ACKed.
fn start(
    example_name: &str,
    listeners: usize,
    args: &[String],
) -> (Proc, Vec<SocketAddr>, FakeEinhorn) {
    let mut einhorn = FakeEinhorn::new().expect("fake einhorn");
    let addrs: Vec<SocketAddr> = (0..listeners)
        .map(|_| einhorn.add_tcp_listener().expect("listener"))
        .collect();
    let mut cmd = einhorn.command(example(example_name));
    cmd.args(args);
    let proc = Proc::spawn(cmd).expect("spawn the example");
    einhorn
        .recv_command(WAIT)
        .unwrap_or_else(|e| panic!("no ACK ({e}):\n{}", proc.output()));
    (proc, addrs, einhorn)
}

#[test]
fn axum_streams_serves_https_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCertificate::new(dir.path());
    let (proc, addrs, _einhorn) = start("axum-streams", 1, &cert.worker_args());
    let answer = tls_get(addrs[0], cert.client_config(&[b"http/1.1"]), "/");
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{answer}\n{}",
        proc.output()
    );
    assert!(answer.contains(&format!("pid={}", proc.pid())), "{answer}");
}

#[test]
fn two_listeners_serves_https_on_both_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCertificate::new(dir.path());
    let (proc, addrs, _einhorn) = start("two-listeners", 2, &cert.worker_args());
    let config = cert.client_config(&[b"http/1.1"]);
    let app = tls_get(addrs[0], config.clone(), "/");
    assert!(app.starts_with("HTTP/1.1 200"), "{app}\n{}", proc.output());
    assert!(app.contains("hello from two-listeners"), "{app}");
    let admin = tls_get(addrs[1], config, "/metrics");
    assert!(
        admin.starts_with("HTTP/1.1 200"),
        "{admin}\n{}",
        proc.output()
    );
    assert!(admin.contains("requests 1"), "{admin}");
}

/// Runs `example_name` with `args` and nothing else; returns its exit code and output once
/// it exits (within [`WAIT`]).
fn exits(example_name: &str, args: &[String]) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(example(example_name));
    cmd.args(args).args(["--bind", "127.0.0.1:0"]);
    let mut proc = Proc::spawn(cmd).expect("spawn the example");
    let status = proc
        .wait_timeout(WAIT)
        .unwrap_or_else(|| panic!("{example_name} did not exit:\n{}", proc.output()));
    (status.code(), proc.output())
}

#[test]
fn the_line_echoes_refuse_them_as_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCertificate::new(dir.path());
    for name in ["custom-server", "custom-lifecycle"] {
        let (code, out) = exits(name, &cert.worker_args());
        assert_eq!(code, Some(2), "{name}: a usage error\n{out}");
        assert!(
            out.contains("error: unexpected argument '--tls-cert' found"),
            "{name}:\n{out}"
        );
    }
}

#[test]
fn a_key_that_is_a_fifo_with_no_writer_is_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCertificate::new(dir.path());
    let fifo = dir.path().join("key-fifo.pem");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    for name in ["hyper-hello", "actix-hello"] {
        let args = [
            "--tls-cert".to_owned(),
            cert.cert.display().to_string(),
            "--tls-key".to_owned(),
            fifo.display().to_string(),
        ];
        let started = std::time::Instant::now();
        let (code, out) = exits(name, &args);
        assert_eq!(code, Some(2), "{name}: a usage error\n{out}");
        assert!(
            out.contains(&format!(
                "error: cannot read {}: it is a FIFO, not a regular file",
                fifo.display()
            )),
            "{name}:\n{out}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name}: at once"
        );
    }
}
