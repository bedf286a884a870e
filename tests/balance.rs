//! Connections spread by load (`graceful_listener::balance`): under `einhorn-master --balance`, workers
//! publish their connection counts in a shared table, and one holding clearly more than its
//! least loaded sibling lets that sibling accept. Checked with real workers (axum-hello) on a
//! real shared socket: connections opened at once are dealt evenly, and the port never goes
//! without an acceptor, across upgrades and with a worker stopped (SIGSTOP).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use graceful_listener_suite::harness::example;
use graceful_listener_suite::load::{self, LoadConfig, parse_pid};
use graceful_listener_suite::master::Master;
use graceful_listener_suite::probe::Probe;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn master(workers: usize, flags: &[&str]) -> Master {
    let n = workers.to_string();
    let mut all = vec!["-b", "127.0.0.1:0", "-m", "manual", "-n", &n];
    all.extend_from_slice(flags);
    let master = Master::start(&all, &[example("axum-hello")]);
    master.wait_serving(workers);
    master
}

/// Opens `n` connections at once, then asks one `GET /` on each; returns how many each
/// worker (by the pid in its answer) took, and the connections, still open.
fn deal(addr: SocketAddr, n: usize) -> (BTreeMap<u32, usize>, Vec<TcpStream>) {
    let mut streams: Vec<TcpStream> = (0..n)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let mut held = BTreeMap::new();
    for stream in &mut streams {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            .unwrap();
    }
    for stream in &mut streams {
        let mut answer = Vec::new();
        let mut buf = [0; 1024];
        // The body is one line ending in a newline; read until it is complete.
        while !(answer.ends_with(b"\n") && parse_pid(&answer).is_some()) {
            let read = stream.read(&mut buf).expect("an answer");
            assert!(read > 0, "closed before answering: {answer:?}");
            answer.extend_from_slice(&buf[..read]);
        }
        *held.entry(parse_pid(&answer).unwrap()).or_default() += 1;
    }
    (held, streams)
}

#[test]
fn connections_opened_at_once_are_dealt_evenly() {
    let master = master(2, &["--balance"]);
    // Without the table the kernel often deals 31/1 (see the book's "Sizing" section); with
    // it, each worker takes about its share (the rule's margin is 2 and a quarter; a
    // sibling's count can be a few milliseconds old).
    // Each round opens 32 more while the earlier ones stay open, as a balancer's pool grows
    // (closing and reopening at once would compare workers on counts a few ms old). After
    // every round each worker holds at least 35% of them: the rule (2 more, and a quarter)
    // keeps the least loaded at about 44%, and a bare shared socket often gives it 3%.
    let mut held: BTreeMap<u32, usize> = BTreeMap::new();
    let mut open = Vec::new();
    let mut shares = Vec::new();
    for _ in 0..4 {
        let (dealt, streams) = deal(master.addr(0), 32);
        open.extend(streams);
        for (pid, n) in dealt {
            *held.entry(pid).or_default() += n;
        }
        let least = held.values().min().copied().unwrap_or(0);
        shares.push((held.clone(), least as f64 / open.len() as f64));
    }
    println!("connections per worker after each round: {shares:?}");
    assert!(
        shares
            .iter()
            .all(|(held, least)| held.len() == 2 && *least >= 0.35),
        "connections dealt unevenly: {shares:?}"
    );
}

#[test]
fn the_port_always_has_an_acceptor_across_upgrades_and_a_stopped_worker() {
    let master = master(2, &["--balance"]);
    let addr = master.addr(0);
    // Uneven keep-alive load, so that some worker always holds back.
    let load = load::start(LoadConfig::new(addr).connections(24));
    let probe = Probe::start(addr, Duration::from_millis(10));
    for _ in 0..2 {
        master.upgrade().expect("upgrade");
    }
    // A worker stopped in its tracks: it accepts nothing, and its entry goes stale. Fresh
    // connections, one after another, are all answered, by the other worker.
    let serving = master.wait_serving(2);
    let (stopped, other) = (serving[0], serving[1]);
    kill(Pid::from_raw(stopped), Signal::SIGSTOP).unwrap();
    let answered: Vec<u32> = (0..20)
        .map(|_| *deal(addr, 1).0.keys().next().unwrap())
        .collect();
    kill(Pid::from_raw(stopped), Signal::SIGCONT).unwrap();
    assert!(
        answered.iter().all(|&pid| pid == other as u32),
        "{answered:?}"
    );
    master.upgrade().expect("upgrade");
    let report = probe.stop();
    let load = load.stop();
    assert!(report.attempts > 50, "{report}");
    assert!(report.failures.is_empty(), "{report}");
    assert_eq!(load.failed(), 0, "{load}");
}
