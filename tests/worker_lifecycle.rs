//! The worker's life under a master, with the custom servers as real child processes: real
//! inherited fds, a real command socket, real signals. Every case runs twice: with
//! `custom-server` (a `Server` that `run` spawns on tokio) and with `custom-lifecycle` (plain
//! threads driven by the core's `Worker` pieces).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

use graceful_listener_suite::echo::EchoClient;
use graceful_listener_suite::fake_einhorn::{
    FakeEinhorn, block_signals_at_exec, signal_before_exec,
};
use graceful_listener_suite::harness::{Proc, example};
use nix::sys::signal::Signal;

const WAIT: Duration = Duration::from_secs(10);

/// One `#[test]` per custom server for each listed function `fn(server: &str)`, in a module
/// named after the function: `sigquit_stops_at_once::run`, `sigquit_stops_at_once::pieces`.
macro_rules! for_each_server {
    ($($test:ident),* $(,)?) => {
        $(
            mod $test {
                #[test]
                fn run() {
                    super::$test("custom-server")
                }
                #[test]
                fn pieces() {
                    super::$test("custom-lifecycle")
                }
            }
        )*
    };
}

for_each_server!(
    acks_with_the_exact_line_and_serves_the_inherited_socket,
    an_upgrade_finishes_in_flight_work_and_new_connections_go_to_the_new_worker,
    a_hung_connection_is_cut_at_the_drain_timeout,
    a_second_signal_cuts_the_drain_short,
    sigquit_stops_at_once,
    sigusr2_before_main_stops_the_worker_cleanly_without_an_ack,
    sigusr2_right_after_spawn_is_never_fatal,
    sigusr2_while_the_ack_is_retrying_stops_cleanly,
    a_unix_listener_can_be_inherited_too,
    runs_without_a_master_on_its_own_address,
);

fn start_worker(server: &str, master: &FakeEinhorn, args: &[&str]) -> Proc {
    let mut cmd = master.command(example(server));
    cmd.args(args);
    Proc::spawn(cmd).expect("spawn custom-server")
}

/// A fake master with one TCP listener and an ACKed `server` worker on it.
fn serving(server: &str, args: &[&str]) -> (FakeEinhorn, SocketAddr, Proc) {
    let mut master = FakeEinhorn::new().unwrap();
    let addr = master.add_tcp_listener().unwrap();
    let worker = start_worker(server, &master, args);
    acked(&master, &worker);
    (master, addr, worker)
}

fn acked(master: &FakeEinhorn, worker: &Proc) {
    let ack = master
        .recv_command(WAIT)
        .expect("an ACK on the command socket");
    assert_eq!(
        String::from_utf8(ack).unwrap(),
        format!("{{\"command\":\"worker:ack\",\"pid\":{}}}\n", worker.pid()),
        "the ACK is exactly one line naming the worker's pid"
    );
}

fn acks_with_the_exact_line_and_serves_the_inherited_socket(server: &str) {
    let (_master, addr, worker) = serving(server, &[]);
    assert_eq!(EchoClient::connect(addr).echo("hello"), worker.pid());
    let listening = worker.wait_for_line("listening", WAIT).unwrap();
    assert!(
        listening.contains("bind=einhorn@0"),
        "auto picks einhorn@0 under a master: {listening}"
    );
}

fn an_upgrade_finishes_in_flight_work_and_new_connections_go_to_the_new_worker(server: &str) {
    let (master, addr, mut old) = serving(server, &["--drain-timeout", "30"]);
    let mut in_flight = EchoClient::connect(addr);
    assert_eq!(in_flight.echo("before"), old.pid());

    let new = start_worker(server, &master, &["--drain-timeout", "30"]);
    acked(&master, &new);
    old.signal(Signal::SIGUSR2).unwrap();
    old.wait_for_line("on_stop", WAIT)
        .expect("on_stop runs once accepting stopped");

    // The connection that was open at the signal is still served by the old worker...
    assert_eq!(in_flight.echo("during drain"), old.pid());
    // ...while every new connection reaches the new one (the shared socket stays open).
    for i in 0..20 {
        assert_eq!(
            EchoClient::connect(addr).echo(&format!("new {i}")),
            new.pid()
        );
    }
    assert!(
        old.try_wait().is_none(),
        "the old worker waits for its open connection"
    );

    // Closing the last connection ends the drain: the worker exits at once, not at 30 s.
    let closed_at = Instant::now();
    drop(in_flight);
    let status = old
        .wait_timeout(Duration::from_secs(5))
        .expect("old worker exits once drained");
    assert!(status.success(), "graceful exit is status 0: {status:?}");
    assert!(closed_at.elapsed() < Duration::from_secs(5));
    assert_eq!(old.count_lines("on_stop"), 1, "on_stop runs exactly once");
    let stopped = old.wait_for_line("stopped", WAIT).unwrap();
    assert!(
        stopped.contains("drained=1") && stopped.contains("forced=0"),
        "{stopped}"
    );
}

fn a_hung_connection_is_cut_at_the_drain_timeout(server: &str) {
    let (_master, addr, mut worker) = serving(server, &["--drain-timeout", "1"]);
    let mut hung = EchoClient::connect(addr);
    assert_eq!(hung.echo("then silence"), worker.pid());

    let signaled_at = Instant::now();
    worker.signal(Signal::SIGUSR2).unwrap();
    let status = worker
        .wait_timeout(WAIT)
        .expect("worker exits after the drain timeout");
    let took = signaled_at.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took >= Duration::from_millis(900),
        "the drain timeout is an upper bound, not cut short: {took:?}"
    );
    assert!(
        hung.sees_close(),
        "the hung client sees its connection closed"
    );
    let forced = worker
        .wait_for_line("forced connections closed", WAIT)
        .expect("the force is logged");
    assert!(forced.contains("forced=1"), "{forced}");
}

fn a_second_signal_cuts_the_drain_short(server: &str) {
    let (_master, addr, mut worker) = serving(server, &["--drain-timeout", "60"]);
    let mut hung = EchoClient::connect(addr);
    hung.echo("hold");
    worker.signal(Signal::SIGTERM).unwrap();
    worker.wait_for_line("on_stop", WAIT).unwrap();
    worker.signal(Signal::SIGINT).unwrap();
    let status = worker
        .wait_timeout(WAIT)
        .expect("a second signal means now");
    assert!(status.success(), "{status:?}");
    assert!(worker.wait_for_line("second stop signal", WAIT).is_some());
    assert!(hung.sees_close());
}

fn sigquit_stops_at_once(server: &str) {
    let (_master, addr, mut worker) = serving(server, &["--drain-timeout", "60"]);
    let mut hung = EchoClient::connect(addr);
    hung.echo("hold");
    worker.signal(Signal::SIGQUIT).unwrap();
    let status = worker.wait_timeout(WAIT).expect("SIGQUIT stops at once");
    assert!(status.success(), "{status:?}");
    assert!(hung.sees_close());
}

/// Runs `server` under a fresh fake master, `prepare`d before and `poke`d right after spawn;
/// checks it exited cleanly (status 0, not killed by a signal).
fn exits_cleanly(
    server: &str,
    prepare: impl FnOnce(&mut Command),
    poke: impl FnOnce(&Proc),
) -> (FakeEinhorn, Proc) {
    let mut master = FakeEinhorn::new().unwrap();
    master.add_tcp_listener().unwrap();
    let mut cmd = master.command(example(server));
    prepare(&mut cmd);
    let mut worker = Proc::spawn(cmd).unwrap();
    poke(&worker);
    let status = worker.wait_timeout(WAIT).expect("the worker exits");
    assert_eq!(
        status.signal(),
        None,
        "not killed by the signal: {status:?}"
    );
    assert!(status.success(), "{status:?}\n{}", worker.output());
    (master, worker)
}

fn sigusr2_before_main_stops_the_worker_cleanly_without_an_ack(server: &str) {
    // A SIGUSR2 that arrived before the worker could install its handlers (a master started
    // it blocked, so it stayed pending instead of killing): it reaches our handler once it
    // exists, and the worker stops cleanly without ACKing a readiness it is giving up.
    for _ in 0..3 {
        let (master, worker) = exits_cleanly(
            server,
            |cmd| signal_before_exec(cmd, Signal::SIGUSR2),
            |_| {},
        );
        assert!(
            worker
                .output()
                .contains("stop requested before ready: not acking")
        );
        assert!(
            master.recv_command(Duration::from_millis(100)).is_err(),
            "no ACK after a stop"
        );
    }
}

fn sigusr2_right_after_spawn_is_never_fatal(server: &str) {
    // Sent as soon as the process exists: depending on scheduling it lands before the
    // handlers (pending, then handled) or after the ACK (a normal stop). Either way the
    // worker exits cleanly.
    for _ in 0..5 {
        exits_cleanly(
            server,
            |cmd| block_signals_at_exec(cmd, &[Signal::SIGUSR2]),
            |worker| worker.signal(Signal::SIGUSR2).unwrap(),
        );
    }
}

fn sigusr2_while_the_ack_is_retrying_stops_cleanly(server: &str) {
    // The command socket does not exist yet (as while a master re-execs): the worker keeps
    // retrying its ACK, and a stop signal in that window ends it cleanly.
    let mut master = FakeEinhorn::new().unwrap();
    master.add_tcp_listener().unwrap();
    let mut cmd = master.command(example(server));
    cmd.env("EINHORN_SOCK_PATH", master.dir().join("not-yet.sock"));
    let mut worker = Proc::spawn(cmd).unwrap();
    worker
        .wait_for_line("listening", WAIT)
        .expect("the worker is up");
    worker.signal(Signal::SIGUSR2).unwrap();
    let status = worker.wait_timeout(WAIT).expect("the worker exits");
    assert!(status.success(), "{status:?}");
    assert!(worker.output().contains("stop requested before ready"));
}

fn a_unix_listener_can_be_inherited_too(server: &str) {
    let mut master = FakeEinhorn::new().unwrap();
    let path = master.dir().join("app.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    master.add_fd(listener.into());
    let mut worker = start_worker(server, &master, &[]);
    acked(&master, &worker);
    let stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    writer.write_all(b"over unix\n").unwrap();
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).unwrap();
    assert_eq!(reply, format!("pid={} over unix\n", worker.pid()));
    drop(writer);
    worker.signal(Signal::SIGTERM).unwrap();
    assert!(worker.wait_timeout(WAIT).expect("exits").success());
}

fn runs_without_a_master_on_its_own_address(server: &str) {
    let mut cmd = Command::new(example(server));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("EINHORN_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(["--bind", "127.0.0.1:0"]);
    let mut worker = Proc::spawn(cmd).unwrap();
    let line = worker.wait_for_line("listening", WAIT).unwrap();
    let addr: SocketAddr = line.split("addr=").nth(1).unwrap().trim().parse().unwrap();
    assert_eq!(EchoClient::connect(addr).echo("solo"), worker.pid());
    assert!(!worker.output().contains("acked"), "no master, no ACK");
    worker.signal(Signal::SIGINT).unwrap();
    assert!(worker.wait_timeout(WAIT).expect("exits").success());
}
