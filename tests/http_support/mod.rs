//! Helpers for the `http_*` tests: the four framework examples (`axum-hello`, `warp-hello`,
//! `hyper-hello`, `actix-hello`) as real workers, under a fake master or the real `einhorn-master`, and a
//! one-shot HTTP client.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use graceful_listener_suite::fake_einhorn::FakeEinhorn;
use graceful_listener_suite::harness::{Proc, example, wait_until};
use graceful_listener_suite::load::{self, LoadConfig, LoadReport};
use graceful_listener_suite::master::Master;

/// Generous: the machine is small and shared; waits end as soon as the event happens.
pub const WAIT: Duration = Duration::from_secs(30);

/// One `#[test]` per framework example for each listed function `fn(example: &str)`, in a
/// module named after the function: `serves::axum`, `serves::warp`, `serves::hyper`,
/// `serves::actix`.
#[macro_export]
macro_rules! for_each_framework {
    ($($test:ident),* $(,)?) => {
        $(
            mod $test {
                #[test]
                fn axum() {
                    super::$test("axum-hello")
                }
                #[test]
                fn warp() {
                    super::$test("warp-hello")
                }
                #[test]
                fn hyper() {
                    super::$test("hyper-hello")
                }
                #[test]
                fn actix() {
                    super::$test("actix-hello")
                }
            }
        )*
    };
}

/// As [`for_each_framework!`], for the frameworks served by this project's HTTP engine
/// (`einhorn-hyper`): axum, warp, hyper. (actix-web has its own.)
#[macro_export]
macro_rules! for_each_engine_framework {
    ($($test:ident),* $(,)?) => {
        $(
            mod $test {
                #[test]
                fn axum() {
                    super::$test("axum-hello")
                }
                #[test]
                fn warp() {
                    super::$test("warp-hello")
                }
                #[test]
                fn hyper() {
                    super::$test("hyper-hello")
                }
            }
        )*
    };
}

/// A worker example run by a [`FakeEinhorn`] (one inherited listener, a command socket).
pub struct Worker {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub einhorn: FakeEinhorn,
}

impl Worker {
    /// Starts `example_name` with `args`; returns once it has ACKed with exactly the line
    /// Einhorn expects.
    pub fn start(example_name: &str, args: &[&str]) -> Worker {
        let mut einhorn = FakeEinhorn::new().expect("fake einhorn");
        let addr = einhorn.add_tcp_listener().expect("listener");
        let mut cmd = einhorn.command(example(example_name));
        cmd.args(args);
        let proc = Proc::spawn(cmd).expect("spawn worker");
        let ack = einhorn
            .recv_command(WAIT)
            .unwrap_or_else(|e| panic!("no ACK ({e}):\n{}", proc.output()));
        assert_eq!(
            String::from_utf8(ack).unwrap(),
            format!("{{\"command\":\"worker:ack\",\"pid\":{}}}\n", proc.pid()),
            "the ACK is exactly one line naming the worker's pid"
        );
        Worker {
            proc,
            addr,
            einhorn,
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid() as u32
    }
}

/// A response, as the tests look at it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The head, lower-cased.
    pub head: String,
    pub body: String,
}

impl Answer {
    pub fn pid(&self) -> Option<u32> {
        graceful_listener_suite::load::parse_pid(self.body.as_bytes())
    }
}

/// `GET path` on a fresh connection with `Connection: close`; reads to the end.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect_timeout(&addr, WAIT)?;
    stream.set_read_timeout(Some(WAIT))?;
    stream.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no response head in {text:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    Ok(Answer {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    })
}

/// `einhorn-master -b 127.0.0.1:0 -m manual -n WORKERS -- EXAMPLE WORKER_ARGS` (the master
/// process is the test bench's [`Master`]).
pub struct HttpMaster {
    pub master: Master,
    pub addr: SocketAddr,
}

impl HttpMaster {
    pub fn start(example_name: &str, workers: usize, worker_args: &[&str]) -> HttpMaster {
        let workers = workers.to_string();
        let flags = ["-b", "127.0.0.1:0", "-m", "manual", "-n", &workers];
        let mut command = vec![example(example_name).into_os_string()];
        command.extend(worker_args.iter().map(Into::into));
        let master = Master::start(&flags, &command);
        let addr = master.addr(0);
        HttpMaster { master, addr }
    }

    /// Waits until exactly `n` workers run, all ACKed and current; returns their pids, sorted.
    pub fn wait_serving(&self, n: usize) -> Vec<u32> {
        self.master
            .wait_serving(n)
            .into_iter()
            .map(|p| p as u32)
            .collect()
    }

    /// A smooth upgrade; returns when the master says `Upgrade done`.
    pub fn upgrade(&self) {
        let replies = self
            .master
            .upgrade()
            .unwrap_or_else(|e| panic!("upgrade failed: {e}\n{}", self.master.output()));
        assert_eq!(
            replies.last().map(|r| r.message.as_str()),
            Some("Upgrade done"),
            "{replies:#?}"
        );
    }

    /// Waits until the master has reaped `pid`; returns its exit line.
    pub fn wait_exited(&self, pid: u32) -> String {
        self.master.wait_exited(pid as i32)
    }

    /// Waits for worker `pid`'s last report, its line
    /// `stopped served=.. drained=.. forced=.. drain_ms=..`.
    pub fn wait_stopped(&self, pid: u32) -> Stopped {
        let tag = format!("{{pid={pid}}}");
        let mut found = None;
        let seen = wait_until(WAIT, || {
            found = self
                .master
                .output()
                .lines()
                .find(|l| l.contains(&tag) && l.contains(" stopped served="))
                .map(Stopped::parse);
            found.is_some()
        });
        assert!(
            seen,
            "no report from worker {pid}:\n{}",
            self.master.output()
        );
        found.expect("seen")
    }
}

/// A worker's last report, as its `stopped` line gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    pub served: u64,
    pub drained: u64,
    pub forced: u64,
    pub drain_ms: u64,
}

impl Stopped {
    fn parse(line: &str) -> Stopped {
        let field = |name: &str| -> u64 {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
                .and_then(|value| value.parse().ok())
                .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
        };
        Stopped {
            served: field("served"),
            drained: field("drained"),
            forced: field("forced"),
            drain_ms: field("drain_ms"),
        }
    }
}

/// Upgrades under load: what to run.
#[derive(Debug, Clone)]
pub struct UpgradePlan {
    pub workers: usize,
    pub upgrades: usize,
    /// Keep-alive connections of the load client.
    pub connections: usize,
    /// Load time before each upgrade, and after the last.
    pub pause: Duration,
    /// Send a `/sleep/1500` request just before the first upgrade and check it is answered
    /// by an old worker (plain HTTP only).
    pub slow_request: bool,
    /// More arguments for the workers.
    pub worker_args: Vec<String>,
    /// Load over TLS with this client configuration.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl UpgradePlan {
    /// `upgrades` upgrades of `workers` workers under `connections` keep-alive connections,
    /// 300 ms apart, plain HTTP, no slow request.
    pub fn new(workers: usize, upgrades: usize, connections: usize) -> UpgradePlan {
        UpgradePlan {
            workers,
            upgrades,
            connections,
            pause: Duration::from_millis(300),
            slow_request: false,
            worker_args: Vec::new(),
            tls: None,
        }
    }
}

/// What [`upgrades_under_load`] saw.
pub struct UpgradeOutcome {
    pub report: LoadReport,
    /// The serving pids of each generation, the first one included.
    pub generations: Vec<Vec<u32>>,
    pub master: HttpMaster,
}

/// Runs `example` under `einhorn-master` and upgrades it `plan.upgrades` times while the
/// load client runs; checks that every upgrade replaced every pid, that the new workers
/// answer, and that the old ones exit 0.
pub fn upgrades_under_load(example: &str, plan: &UpgradePlan) -> UpgradeOutcome {
    let master = HttpMaster::start(example, plan.workers, &["--drain-timeout", "10"]);
    let mut current = master.wait_serving(plan.workers);
    let mut generations = vec![current.clone()];
    // Bounded in time in any case; stopped as soon as the upgrades are done.
    let load = load::start(
        LoadConfig::new(master.addr)
            .connections(plan.connections)
            .duration(Duration::from_secs(300))
            .timeout(Duration::from_secs(10)),
    );
    let answered = |pids: &[u32]| {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if load.snapshot().pids.keys().any(|p| pids.contains(p)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    };
    assert!(
        answered(&current),
        "the first workers never answered:\n{}",
        master.master.output()
    );

    for round in 1..=plan.upgrades {
        // A slow request on an accepted keep-alive connection, in flight at the upgrade.
        let slow = (plan.slow_request && round == 1).then(|| {
            let mut conn = TcpStream::connect_timeout(&master.addr, WAIT).unwrap();
            conn.set_read_timeout(Some(WAIT)).unwrap();
            conn.write_all(b"GET /sleep/1500 HTTP/1.1\r\nhost: test\r\n\r\n")
                .unwrap();
            std::thread::spawn(move || {
                let mut response = Vec::new();
                conn.read_to_end(&mut response)
                    .map(|_| String::from_utf8_lossy(&response).into_owned())
            })
        });
        std::thread::sleep(plan.pause);
        master.upgrade();
        let new = master.wait_serving(plan.workers);
        assert!(
            new.iter().all(|p| !current.contains(p)),
            "round {round}: old {current:?}, new {new:?}"
        );
        assert!(
            answered(&new),
            "round {round}: no new worker answered:\n{}",
            master.master.output()
        );
        for pid in &current {
            let exit = master.wait_exited(*pid);
            assert!(
                exit.contains("(exit status 0)"),
                "round {round}: {exit}\n{}",
                master.master.output()
            );
        }
        if let Some(slow) = slow {
            let response = slow.join().unwrap().expect("the slow request is answered");
            assert!(response.starts_with("HTTP/1.1 200"), "{response}");
            let pid = load::parse_pid(response.as_bytes()).unwrap();
            assert!(
                current.contains(&pid),
                "answered by {pid}, not an old worker {current:?}"
            );
        }
        current = new;
        generations.push(current.clone());
    }
    std::thread::sleep(plan.pause);
    let report = load.stop();
    let all: BTreeSet<u32> = generations.iter().flatten().copied().collect();
    for pid in report.pids.keys() {
        assert!(all.contains(pid), "answer from unknown pid {pid}: {report}");
    }
    UpgradeOutcome {
        report,
        generations,
        master,
    }
}
