//! `Start::run` from a plain `fn main` (no runtime of the caller's): it serves, and a stop
//! signal ends it with a report. One test in this binary: it signals its own process.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::IntoRawFd;
use std::time::{Duration, Instant};

use actix_web::{App, web};
use einhorn_actix::{Bind, StopCause};

/// `GET /` on a fresh connection; the whole response.
fn get(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

#[test]
fn run_serves_from_a_plain_fn_main_and_stops_on_a_signal() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fd = listener.into_raw_fd();
    let worker = std::thread::spawn(move || {
        einhorn_actix::serve(|| App::new().route("/", web::get().to(|| async { "plain\n" })))
            .bind(Bind::Fd(fd))
            .configure(|server| server.workers(1))
            .run()
    });
    // The socket is bound, so a connection waits in the backlog until actix accepts it.
    let response = get(addr).expect("an answer");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("plain\n"), "{response}");

    // Serving means the worker's handlers are installed: the signal asks it to stop.
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !worker.is_finished() {
        assert!(
            Instant::now() < deadline,
            "run did not return after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let report = worker.join().unwrap().expect("a report");
    assert_eq!(report.cause, StopCause::Signal("SIGTERM"));
    assert_eq!(report.served, 1);
    assert_eq!(report.forced, 0);
}
