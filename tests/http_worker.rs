//! Each HTTP example (`axum-hello`, `warp-hello`, `hyper-hello`) as a real worker under a
//! fake Einhorn master: it ACKs, serves, runs `on_stop` once, finishes a slow request in
//! flight at SIGUSR2, exits as soon as it has drained, and cuts a hung connection at the
//! drain timeout.

mod http_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use graceful_listener_suite::fake_einhorn::FakeEinhorn;
use graceful_listener_suite::harness::Proc;
use http_support::{WAIT, Worker, get};
use nix::sys::signal::Signal;

for_each_framework!(
    serves_acks_and_drains_a_slow_request,
    a_hung_connection_is_cut_at_the_drain_timeout,
    a_handler_waiting_for_the_stop_sees_it,
    serves_http_on_an_inherited_unix_socket,
);

/// A keep-alive connection that has been accepted and served one request.
fn served_connection(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // Read the head, then the body by its length.
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "closed mid-head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("a content-length")
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    stream
}

fn serves_acks_and_drains_a_slow_request(example: &str) {
    let mut worker = Worker::start(example, &["--drain-timeout", "30"]);
    let answer = get(worker.addr, "/").expect("GET /");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.pid(), Some(worker.pid()), "{answer:?}");

    // A slow request on an accepted keep-alive connection, in flight at the stop.
    let mut conn = served_connection(worker.addr);
    conn.write_all(b"GET /sleep/1500 HTTP/1.1\r\nhost: test\r\n\r\n")
        .unwrap();
    let slow = std::thread::spawn(move || {
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest)
            .map(|_| String::from_utf8_lossy(&rest).to_ascii_lowercase())
    });
    std::thread::sleep(Duration::from_millis(200));
    let stopped = Instant::now();
    worker.proc.signal(Signal::SIGUSR2).unwrap();

    let response = slow
        .join()
        .unwrap()
        .expect("the slow request is answered, not reset");
    assert!(response.starts_with("http/1.1 200"), "{response}");
    assert!(response.contains("connection: close"), "{response}");
    assert!(
        response.contains(&format!("pid={}", worker.pid())),
        "{response}"
    );

    let took = exits_cleanly(&mut worker, stopped);
    // Drained when the slow request was done (1.3 s after the stop), not at the 30 s timeout.
    assert!(
        took >= Duration::from_millis(1000),
        "exited before the slow request was done: {took:?}"
    );
    assert!(
        took < Duration::from_secs(6),
        "exit took {took:?}:\n{}",
        worker.proc.output()
    );
    assert_eq!(
        worker.proc.count_lines("on_stop"),
        1,
        "{}",
        worker.proc.output()
    );
    assert_eq!(
        worker.proc.count_lines("forced connections closed"),
        0,
        "{}",
        worker.proc.output()
    );
}

fn a_hung_connection_is_cut_at_the_drain_timeout(example: &str) {
    let mut worker = Worker::start(example, &["--drain-timeout", "1"]);
    // One connection stuck in the middle of a request head, one in a request that would
    // take a minute.
    let mut half = served_connection(worker.addr);
    half.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    let mut long = served_connection(worker.addr);
    long.write_all(b"GET /sleep/60000 HTTP/1.1\r\nhost: test\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let stopped = Instant::now();
    worker.proc.signal(Signal::SIGUSR2).unwrap();

    let took = exits_cleanly(&mut worker, stopped);
    assert!(
        took >= Duration::from_millis(900),
        "cut before the drain timeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(6),
        "exit took {took:?}:\n{}",
        worker.proc.output()
    );
    let forced = worker
        .proc
        .wait_for_line("forced connections closed", Duration::ZERO)
        .unwrap_or_else(|| panic!("no force logged:\n{}", worker.proc.output()));
    assert!(forced.contains("forced=2"), "{forced}");
    // Both clients see their connection end.
    for mut conn in [half, long] {
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
    }
}

fn a_handler_waiting_for_the_stop_sees_it(example: &str) {
    let mut worker = Worker::start(example, &["--drain-timeout", "30"]);
    let mut waiting = served_connection(worker.addr);
    waiting
        .write_all(b"GET /until-stop HTTP/1.1\r\nhost: test\r\n\r\n")
        .unwrap();
    let waiting = std::thread::spawn(move || {
        let mut rest = Vec::new();
        waiting
            .read_to_end(&mut rest)
            .map(|_| String::from_utf8_lossy(&rest).to_ascii_lowercase())
    });
    // The request is in its handler once the worker has read it; nothing answers it before
    // the stop.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!waiting.is_finished(), "answered before the stop");
    let stopped = Instant::now();
    worker.proc.signal(Signal::SIGUSR2).unwrap();
    let response = waiting
        .join()
        .unwrap()
        .expect("the waiting request is answered");
    assert!(response.starts_with("http/1.1 200"), "{response}");
    assert!(
        response.contains(&format!("stopping pid={}", worker.pid())),
        "{response}"
    );
    assert!(response.contains("connection: close"), "{response}");
    let took = exits_cleanly(&mut worker, stopped);
    assert!(
        took < Duration::from_secs(5),
        "the stream ended itself, no drain timeout: {took:?}\n{}",
        worker.proc.output()
    );
}

fn serves_http_on_an_inherited_unix_socket(example: &str) {
    let mut einhorn = FakeEinhorn::new().unwrap();
    let path = einhorn.dir().join("http.sock");
    einhorn.add_fd(
        std::os::unix::net::UnixListener::bind(&path)
            .unwrap()
            .into(),
    );
    let mut cmd = einhorn.command(graceful_listener_suite::harness::example(example));
    cmd.args(["--drain-timeout", "30"]);
    let mut worker = Proc::spawn(cmd).unwrap();
    einhorn
        .recv_command(WAIT)
        .unwrap_or_else(|e| panic!("no ACK ({e}):\n{}", worker.output()));
    let mut stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains(&format!("pid={}", worker.pid())),
        "{response}"
    );
    let stopped = Instant::now();
    worker.signal(Signal::SIGTERM).unwrap();
    let status = worker.wait_timeout(WAIT).expect("the worker exits");
    assert!(status.success(), "{status:?}\n{}", worker.output());
    assert!(stopped.elapsed() < Duration::from_secs(5));
}

/// Waits for the worker to exit, checks it exited 0, and returns how long after `since`.
fn exits_cleanly(worker: &mut Worker, since: Instant) -> Duration {
    let status = worker
        .proc
        .wait_timeout(WAIT)
        .unwrap_or_else(|| panic!("worker still running:\n{}", worker.proc.output()));
    let took = since.elapsed();
    assert!(status.success(), "{status:?}\n{}", worker.proc.output());
    took
}
