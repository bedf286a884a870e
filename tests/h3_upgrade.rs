//! HTTP/3 under einhorn-master (`-b 127.0.0.1:0,udp`, the `h3-hello` example): upgrades that
//! no HTTP/3 client notices, with pooled clients that never retry a request they sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Each old worker's end line: `... stopped served=N drained=N forced=N drain_ms=N`.
fn field(line: &str, name: &str) -> u64 {
    line.split(&format!("{name}="))
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
}

use graceful_listener_suite::h3::{H3Clients, H3Counts};
use graceful_listener_suite::harness::example;
use graceful_listener_suite::master::Master;
use graceful_listener_suite::tls::TestCertificate;

fn start(dir: &std::path::Path, flags: &[&str], drain_timeout: &str) -> (Master, TestCertificate) {
    let cert = TestCertificate::new(dir);
    let mut command = vec![example("h3-hello").display().to_string()];
    command.extend(cert.worker_args());
    command.extend(["--drain-timeout".to_owned(), drain_timeout.to_owned()]);
    let mut master_flags = vec!["-b", "127.0.0.1:0,udp", "-m", "manual"];
    master_flags.extend_from_slice(flags);
    let master = Master::start(&master_flags, &command);
    (master, cert)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

#[test]
fn a_request_in_flight_crosses_an_upgrade_through_the_relay_and_a_pooled_client_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let (master, cert) = start(dir.path(), &["-n", "1"], "10");
    let old = master.wait_serving(1);
    let addr = master.addr(0);
    let rt = runtime();
    rt.block_on(async {
        let clients = H3Clients::new(addr, cert.client_config(&[b"h3"]), 0);
        let mut client = clients.client();
        let body = client
            .get("/")
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", master.output()));
        let first = String::from_utf8_lossy(&body).into_owned();
        assert!(first.contains(&format!("pid={}", old[0])), "{first}");
        // A request that outlives the upgrade: its first round trip shows it in flight on
        // the old worker (the only one yet).
        let mut streamer = clients.client();
        let mut echo = streamer
            .echo_stream("/echo")
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", master.output()));
        echo.round(1024)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", master.output()));
        let replies = tokio::task::spawn_blocking({
            let socket = master.socket.clone();
            move || einhorn_master::client::upgrade(&socket, Duration::from_secs(30))
        })
        .await
        .unwrap();
        replies.unwrap_or_else(|e| panic!("upgrade: {e}\n{}", master.output()));
        // Once the old worker has left the socket to the new one, every datagram of this
        // request reaches it through the new worker's relay.
        let handed_over = tokio::task::block_in_place(|| {
            graceful_listener_suite::harness::wait_until(Duration::from_secs(30), || {
                master.output().contains("another worker reads the socket")
            })
        });
        assert!(
            handed_over,
            "the old worker never left the socket:\n{}",
            master.output()
        );
        for round in 0..50 {
            echo.round(1024)
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", master.output()));
        }
        echo.finish()
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", master.output()));
        // The pooled client goes on: GOAWAY, then a new connection to the new worker.
        let mut seen_new = false;
        for _ in 0..50 {
            let body = client
                .get("/")
                .await
                .unwrap_or_else(|e| panic!("{e}\n{}", master.output()));
            if !String::from_utf8_lossy(&body).contains(&format!("pid={}", old[0])) {
                seen_new = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            seen_new,
            "the new worker never answered:\n{}",
            master.output()
        );
        let counts = &clients.counts;
        assert_eq!(H3Counts::get(&counts.failed), 0);
        assert_eq!(H3Counts::get(&counts.resets), 0);
    });
    master.wait_exited(old[0]);
    // The request's datagrams reached the old worker through the new one's relay.
    let output = master.output();
    let done = output
        .lines()
        .find(|l| l.contains(&format!("pid={}", old[0])) && l.contains("HTTP/3 worker done"))
        .unwrap_or_else(|| panic!("no end line for the old worker:\n{output}"));
    let relayed_in = field(done, "relayed_in");
    assert!(
        relayed_in > 0,
        "nothing was relayed to the old worker: {done}"
    );
    let new = master.wait_serving(1);
    assert_ne!(new, old);
}

/// Clients downloading while a new generation starts each second.
const DOWNLOADERS: usize = 200;
/// Each download: 60 chunks, one per 100 ms (6 s), so that a generation's drain spans the
/// next five upgrades.
const DOWNLOAD: &str = "/download?chunks=60&every_ms=100";
const UPGRADES: usize = 20;
/// A new connection this often, each with one request.
const NEW_CONNECTION_EVERY: Duration = Duration::from_millis(25);
const DRAIN_TIMEOUT_SECS: u64 = 20;

#[test]
fn downloads_and_new_connections_through_twenty_upgrades_with_one_percent_loss() {
    let dir = tempfile::tempdir().unwrap();
    let (master, cert) = start(dir.path(), &["-n", "1"], &DRAIN_TIMEOUT_SECS.to_string());
    let first = master.wait_serving(1);
    let addr = master.addr(0);
    let rt = runtime();
    let clients = rt.block_on(async { H3Clients::new(addr, cert.client_config(&[b"h3"]), 10) });
    let stop = Arc::new(AtomicBool::new(false));
    let began = Instant::now();
    let mut tasks = Vec::new();
    for downloader in 0..DOWNLOADERS {
        let (clients, stop, began) = (clients.clone(), stop.clone(), began);
        tasks.push(rt.spawn(async move {
            let mut client = clients.client();
            let mut failures = Vec::new();
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                match client
                    .get(&format!("{DOWNLOAD}&client={downloader}&seq={seq}"))
                    .await
                {
                    Ok(body) if body.len() == 60 * 1024 => {}
                    Ok(body) => failures.push(format!("download of {} bytes", body.len())),
                    Err(e) => failures.push(format!(
                        "download client={downloader}&seq={seq}: {e} at {:?}",
                        began.elapsed()
                    )),
                }
            }
            failures
        }));
    }
    let probes = {
        let (clients, stop) = (clients.clone(), stop.clone());
        rt.spawn(async move {
            let mut failures = Vec::new();
            let mut running = tokio::task::JoinSet::new();
            let mut tick = tokio::time::interval(NEW_CONNECTION_EVERY);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let mut client = clients.client();
                running.spawn(async move {
                    client
                        .get("/")
                        .await
                        .err()
                        .map(|e| format!("new connection: {e}"))
                });
                while let Some(done) = running.try_join_next() {
                    failures.extend(done.expect("a probe task"));
                }
            }
            while let Some(done) = running.join_next().await {
                failures.extend(done.expect("a probe task"));
            }
            failures
        })
    };
    // Every download is under way before the first upgrade.
    assert!(
        graceful_listener_suite::harness::wait_until(Duration::from_secs(60), || {
            H3Counts::get(&clients.counts.connections) >= DOWNLOADERS as u64
        }),
        "the downloads did not start:\n{}",
        master.output()
    );
    eprintln!("{DOWNLOADERS} downloads connected in {:?}", began.elapsed());
    let mut old = first;
    let mut retired = Vec::new();
    for n in 0..UPGRADES {
        master
            .upgrade()
            .unwrap_or_else(|e| panic!("upgrade {n}: {e}\n{}", master.output()));
        let serving = master.wait_state("the new worker serving", |s| s.serving_pids().len() == 1);
        let new = serving.serving_pids();
        assert_ne!(new, old, "upgrade {n} left the same worker serving");
        retired.extend(old);
        old = new;
    }
    // Let every generation's downloads run to their end, then stop the clients.
    let upgraded = Instant::now();
    for pid in &retired {
        master.wait_exited(*pid);
    }
    eprintln!(
        "the old workers were gone {:?} after the last upgrade",
        upgraded.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    rt.block_on(async {
        for task in tasks {
            failures.extend(task.await.expect("a download task"));
        }
        failures.extend(probes.await.expect("the probe task"));
    });
    let counts = &clients.counts;
    let output = master.output();
    eprintln!(
        "ok={} failed={} connections={} resets={} goaways={} dropped={}",
        H3Counts::get(&counts.ok),
        H3Counts::get(&counts.failed),
        H3Counts::get(&counts.connections),
        H3Counts::get(&counts.resets),
        H3Counts::get(&counts.goaways),
        H3Counts::get(&counts.dropped),
    );
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for failure in &failures {
        eprintln!("{failure}");
        let kind: String = failure.chars().filter(|c| !c.is_ascii_digit()).collect();
        *kinds.entry(kind).or_default() += 1;
    }
    eprintln!("failures by kind: {kinds:#?}");
    let mut relayed = 0;
    for pid in &retired {
        let stopped = output
            .lines()
            .find(|l| l.contains(&format!("pid={pid}")) && l.contains(" stopped served="))
            .unwrap_or_else(|| panic!("no stopped line for {pid}:\n{output}"));
        assert_eq!(
            field(stopped, "forced"),
            0,
            "worker {pid} was cut at its deadline: {stopped}"
        );
        assert!(
            field(stopped, "drain_ms") < DRAIN_TIMEOUT_SECS * 1000,
            "worker {pid} drained past its deadline: {stopped}"
        );
        let done = output
            .lines()
            .find(|l| l.contains(&format!("pid={pid}")) && l.contains("HTTP/3 worker done"))
            .unwrap_or_else(|| panic!("no end line for {pid}"));
        relayed += field(done, "relayed_in");
    }
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert_eq!(H3Counts::get(&counts.failed), 0);
    assert_eq!(
        H3Counts::get(&counts.resets),
        0,
        "live connections received stateless resets"
    );
    assert!(
        H3Counts::get(&counts.dropped) > 0,
        "the lossy socket dropped nothing"
    );
    assert!(relayed > 0, "no datagram was relayed to an old worker");
    assert!(
        H3Counts::get(&counts.ok) >= 2 * DOWNLOADERS as u64,
        "too few requests: {counts:?}"
    );
}

/// The relay counts a worker logs as it exits: `HTTP/3 worker done relayed_out=N ...`.
fn relay_counts(output: &str, pid: i32) -> (u64, u64) {
    let done = output
        .lines()
        .find(|l| l.contains(&format!("pid={pid}")) && l.contains("HTTP/3 worker done"))
        .unwrap_or_else(|| panic!("no end line for {pid}:\n{output}"));
    (field(done, "relayed_out"), field(done, "relayed_in"))
}

#[test]
fn two_workers_on_one_socket_hand_each_other_their_datagrams() {
    let dir = tempfile::tempdir().unwrap();
    let (mut master, cert) = start(dir.path(), &["-n", "2"], "10");
    let pids = master.wait_serving(2);
    let addr = master.addr(0);
    let rt = runtime();
    let counts = rt.block_on(async {
        let clients = H3Clients::new(addr, cert.client_config(&[b"h3"]), 0);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let mut client = clients.client();
            tasks.spawn(async move {
                let mut answered_by = std::collections::BTreeSet::new();
                for _ in 0..20 {
                    let body = client.get("/").await?;
                    let text = String::from_utf8_lossy(&body).into_owned();
                    answered_by.insert(text.split("pid=").nth(1).unwrap_or("").trim().to_owned());
                }
                Ok::<_, graceful_listener_suite::h3::H3Failure>(answered_by)
            });
        }
        let mut answered_by = std::collections::BTreeSet::new();
        while let Some(done) = tasks.join_next().await {
            let pids = done
                .unwrap()
                .unwrap_or_else(|e| panic!("{e}\n{}", master.output()));
            // One connection, one worker: its datagrams all reach the worker that owns it.
            assert_eq!(
                pids.len(),
                1,
                "a connection was answered by two workers: {pids:?}"
            );
            answered_by.extend(pids);
        }
        (clients.counts.clone(), answered_by)
    });
    let (counts, answered_by) = counts;
    assert_eq!(H3Counts::get(&counts.ok), 400);
    assert_eq!(H3Counts::get(&counts.failed), 0);
    assert_eq!(H3Counts::get(&counts.resets), 0);
    master
        .stop(Duration::from_secs(30))
        .expect("the master stops");
    let output = master.output();
    let (mut relayed_out, mut relayed_in) = (0, 0);
    for pid in &pids {
        let (out, r#in) = relay_counts(&output, *pid);
        relayed_out += out;
        relayed_in += r#in;
    }
    eprintln!(
        "connections answered by {answered_by:?}; relayed out {relayed_out}, in {relayed_in}"
    );
    assert!(
        relayed_out > 0 && relayed_in > 0,
        "no datagram went through the relay:\n{output}"
    );
}

#[test]
fn serves_on_a_datagram_socket_systemd_activated() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCertificate::new(dir.path());
    let port = {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let mut command = std::process::Command::new("systemd-socket-activate");
    command
        .arg("--datagram")
        .arg("-l")
        .arg(addr.to_string())
        .arg(example("h3-hello"))
        .args(cert.worker_args());
    let worker =
        graceful_listener_suite::harness::Proc::spawn(command).expect("systemd-socket-activate");
    let rt = runtime();
    rt.block_on(async {
        let clients = H3Clients::new(addr, cert.client_config(&[b"h3"]), 0);
        // The first datagram makes systemd-socket-activate exec the example, which finds it
        // still queued on the socket.
        let mut client = clients.client();
        let body = client
            .get("/")
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", worker.output()));
        assert!(String::from_utf8_lossy(&body).starts_with("hello from h3-hello pid="));
    });
    let line = worker
        .wait_for_line(
            "listening (datagram, auto) bind=systemd@0",
            Duration::from_secs(5),
        )
        .unwrap_or_else(|| panic!("not on the activated socket:\n{}", worker.output()));
    assert!(line.contains(&format!("addr={addr}")), "{line}");
}

#[test]
fn bad_sockets_and_missing_tls_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCertificate::new(dir.path());
    let run = |args: &[&str]| {
        let output = std::process::Command::new(example("h3-hello"))
            .args(args)
            .env_remove("EINHORN_FD_COUNT")
            .env_remove("LISTEN_FDS")
            .output()
            .expect("run h3-hello");
        (
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let tls: Vec<String> = cert.worker_args();
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    // A stream socket's spec is not a datagram one.
    let mut args = vec!["--bind", "unix:/tmp/h3-not-a-datagram.sock"];
    args.extend(&tls);
    let (status, stderr) = run(&args);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot bind unix:/tmp/h3-not-a-datagram.sock")
            && stderr.contains("not a datagram socket spec"),
        "{stderr}"
    );
    // A TCP listener passed where a UDP socket is expected.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&tcp);
    // SAFETY: clearing FD_CLOEXEC on a socket this test owns, so that the child inherits it.
    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    let spec = format!("fd@{fd}");
    let mut args = vec!["--bind", spec.as_str()];
    args.extend(&tls);
    let (status, stderr) = run(&args);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "fd {fd} is a stream socket, not a datagram (UDP) socket"
        )),
        "{stderr}"
    );
    // No TLS: said, with what to give.
    let (status, stderr) = run(&["--bind", "127.0.0.1:0"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("HTTP/3 needs --tls-cert and --tls-key"),
        "{stderr}"
    );
}
