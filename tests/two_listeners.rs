//! One worker serving two listeners (an app on `einhorn@0`, an admin router on `einhorn@1`):
//! one ACK once both serve, both answer their own routes, one stop drains both, and one
//! report counts every connection.

mod http_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use graceful_listener_suite::fake_einhorn::FakeEinhorn;
use graceful_listener_suite::harness::{Proc, example};
use http_support::{WAIT, get};
use nix::sys::signal::Signal;

#[test]
fn one_ack_one_drain_one_report_for_two_listeners() {
    let mut einhorn = FakeEinhorn::new().unwrap();
    let app = einhorn.add_tcp_listener().unwrap();
    let admin = einhorn.add_tcp_listener().unwrap();
    let mut cmd = einhorn.command(example("two-listeners"));
    cmd.args(["--drain-timeout", "30"]);
    let mut worker = Proc::spawn(cmd).unwrap();
    let ack = einhorn
        .recv_command(WAIT)
        .unwrap_or_else(|e| panic!("no ACK ({e}):\n{}", worker.output()));
    assert_eq!(
        String::from_utf8(ack).unwrap(),
        format!("{{\"command\":\"worker:ack\",\"pid\":{}}}\n", worker.pid())
    );

    let hello = get(app, "/").unwrap();
    assert_eq!(hello.status, 200, "{hello:?}");
    assert_eq!(hello.pid(), Some(worker.pid() as u32));
    let metrics = get(admin, "/metrics").unwrap();
    assert_eq!(metrics.status, 200, "{metrics:?}");
    assert!(metrics.body.starts_with("requests 1 "), "{metrics:?}");
    assert_eq!(
        get(admin, "/").unwrap().status,
        404,
        "the app is not on the admin listener"
    );
    assert_eq!(
        get(app, "/metrics").unwrap().status,
        404,
        "nor the admin on the app's"
    );
    assert!(
        einhorn.recv_command(Duration::from_millis(500)).is_err(),
        "one ACK for the worker, not one per listener"
    );

    // A slow request in flight at the stop, on the app's listener.
    let mut slow = TcpStream::connect_timeout(&app, WAIT).unwrap();
    slow.set_read_timeout(Some(WAIT)).unwrap();
    slow.write_all(b"GET /sleep/1000 HTTP/1.1\r\nhost: test\r\n\r\n")
        .unwrap();
    let slow = std::thread::spawn(move || {
        let mut response = Vec::new();
        slow.read_to_end(&mut response)
            .map(|_| String::from_utf8_lossy(&response).to_ascii_lowercase())
    });
    std::thread::sleep(Duration::from_millis(200));
    let stopped = Instant::now();
    worker.signal(Signal::SIGUSR2).unwrap();
    let response = slow.join().unwrap().expect("the slow request is answered");
    assert!(response.starts_with("http/1.1 200"), "{response}");
    assert!(response.contains("connection: close"), "{response}");
    let status = worker.wait_timeout(WAIT).expect("the worker exits");
    assert!(status.success(), "{status:?}\n{}", worker.output());
    assert!(stopped.elapsed() < Duration::from_secs(10));
    let output = worker.output();
    assert_eq!(output.matches("on_stop").count(), 1, "{output}");
    let stopped_line = worker
        .wait_for_line("stopped", Duration::ZERO)
        .unwrap_or_else(|| panic!("no report:\n{output}"));
    // Five connections in all, on both listeners; the slow one was live at the stop.
    assert!(stopped_line.contains("served=5"), "{stopped_line}");
    assert!(stopped_line.contains("drained=1"), "{stopped_line}");
    assert!(stopped_line.contains("forced=0"), "{stopped_line}");
}
