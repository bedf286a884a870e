//! Helpers for the `master_*` tests: the real `einhorn-master` running the `custom-server`
//! example, a line-echo client, and waits on the master's `state`.

#![allow(dead_code, unreachable_pub, unused_imports)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use einhorn_master::client::{self, Client};
use einhorn_master::state::MasterState;
use graceful_listener_suite::harness::{Proc, binary, example};
use nix::sys::signal::Signal;

/// Generous: the machine is small and shared; waits end as soon as the event happens.
pub const WAIT: Duration = Duration::from_secs(30);

/// `einhorn-master -b 127.0.0.1:0 -m manual FLAGS -- custom-server WORKER_ARGS`, with its
/// socket in a temporary directory. The `Proc` kills and reaps it, and its workers, on drop.
pub struct Master {
    pub proc: Proc,
    pub socket: PathBuf,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Master {
    pub fn start(flags: &[&str], worker_args: &[&str]) -> Master {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("master.sock");
        let mut cmd = Command::new(binary("einhorn-master"));
        cmd.arg("-d")
            .arg(&socket)
            .args(["-b", "127.0.0.1:0", "-m", "manual"])
            .args(flags)
            .arg("--")
            .arg(example("custom-server"))
            .args(worker_args);
        let proc = Proc::spawn(cmd).expect("spawn einhorn-master");
        // The master logs every bound socket before it starts a worker.
        let line = proc
            .wait_for_line("listening on ", WAIT)
            .unwrap_or_else(|| panic!("no address line:\n{}", proc.output()));
        let addr = parse_listening_line(&line);
        Master {
            proc,
            socket,
            addr,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    pub fn client(&self) -> Client {
        let mut client = None;
        let connected = wait_until(WAIT, || {
            client = Client::connect(&self.socket).ok();
            client.is_some()
        });
        assert!(connected, "no command socket:\n{}", self.proc.output());
        client.expect("connected")
    }

    pub fn state(&self) -> MasterState {
        self.client().state(WAIT).expect("state")
    }

    /// Waits until `cond` holds for the master's state; returns that state.
    pub fn wait_state(
        &self,
        what: &str,
        mut cond: impl FnMut(&MasterState) -> bool,
    ) -> MasterState {
        let deadline = Instant::now() + WAIT;
        loop {
            let state = self.state();
            if cond(&state) {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; state: {state:#?}\noutput:\n{}",
                self.proc.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until exactly `n` workers run, all ACKed and current (so no old worker is still
    /// draining); returns their pids, sorted.
    pub fn wait_serving(&self, n: usize) -> Vec<i32> {
        let state = self.wait_state(&format!("{n} serving workers"), |s| {
            s.workers.len() == n && s.serving_pids().len() == n
        });
        let mut pids = state.serving_pids();
        pids.sort_unstable();
        pids
    }

    pub fn upgrade(&self) -> Vec<einhorn_master::wire::Reply> {
        client::upgrade(&self.socket, WAIT)
            .unwrap_or_else(|e| panic!("upgrade failed: {e}\noutput:\n{}", self.proc.output()))
    }

    /// Pids that answer `tries` fresh connections.
    pub fn answering_pids(&self, tries: usize) -> Vec<i32> {
        let mut pids: Vec<i32> = (0..tries)
            .map(|i| EchoClient::connect(self.addr).echo(&format!("probe {i}")))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

/// The address in `... listening on 127.0.0.1:PORT (einhorn@0, fd N)`.
pub fn parse_listening_line(line: &str) -> SocketAddr {
    let rest = &line[line.find("listening on ").expect("marker") + "listening on ".len()..];
    rest.split_whitespace()
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

/// A line-echo client on one connection.
pub struct EchoClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl EchoClient {
    pub fn connect(addr: SocketAddr) -> EchoClient {
        let stream = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        EchoClient {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    /// Sends `line`; returns the pid that echoed it.
    pub fn echo(&mut self, line: &str) -> i32 {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .expect("write");
        let mut reply = String::new();
        self.reader.read_line(&mut reply).expect("read echo");
        let rest = reply
            .strip_prefix("pid=")
            .unwrap_or_else(|| panic!("bad echo {reply:?}"));
        let (pid, echoed) = rest.trim_end().split_once(' ').expect("pid and line");
        assert_eq!(echoed, line);
        pid.parse().expect("numeric pid")
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        teardown(&mut self.proc, &self.socket);
    }
}

/// Ends a master without leaving anything behind. Killing a master outright orphans its
/// workers (and, where pid 1 does not reap, leaves zombies); killing workers first lets a
/// live master respawn them. So: ask it to stop (after which it never respawns), kill its
/// workers, and let it reap them and exit. If that fails, freeze it so `Proc`'s drop can
/// kill everything without a respawn racing it.
fn teardown(proc: &mut Proc, socket: &std::path::Path) {
    if proc.try_wait().is_some() {
        return;
    }
    let _ = proc.signal(Signal::SIGINT);
    let stopping = wait_until(Duration::from_secs(5), || {
        proc.try_wait().is_some()
            || Client::connect(socket)
                .and_then(|mut c| c.state(Duration::from_secs(1)))
                .is_ok_and(|s| s.stopping)
    });
    if stopping {
        for pid in graceful_listener_suite::harness::descendants(proc.pid()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
        if proc.wait_timeout(Duration::from_secs(5)).is_some() {
            return;
        }
    }
    let _ = proc.signal(Signal::SIGSTOP);
}

/// Children of `parent` that have exited and were not reaped (zombies).
pub fn zombie_children(parent: i32) -> Vec<i32> {
    graceful_listener_suite::harness::descendants(parent)
        .into_iter()
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rfind(')')
                    .and_then(|i| stat.get(i + 2..i + 3))
                    .is_some_and(|s| s == "Z")
            })
        })
        .collect()
}

pub use graceful_listener_suite::harness::{is_alive, wait_until};
