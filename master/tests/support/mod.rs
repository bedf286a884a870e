//! Helpers for the master's own integration tests: a master process that is always killed and
//! reaped (with its workers), its socket in a temporary directory, and bounded waits.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use einhorn_master::client::{self, Client};
use einhorn_master::state::MasterState;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Generous: the machine is small and shared; waits end as soon as the event happens.
pub const WAIT: Duration = Duration::from_secs(20);

/// A running `einhorn-master` with stderr captured. Dropping it kills the master and every
/// worker it ever reported, and reaps the master.
pub struct Master {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    lines: Arc<(Mutex<Vec<String>>, Condvar)>,
    status: Option<ExitStatus>,
    /// Extra pids to kill on drop (workers orphaned by a test that killed the master).
    pub orphans: Vec<i32>,
}

impl Master {
    /// Starts `einhorn-master -d DIR/master.sock --addr-file DIR/addrs FLAGS -- COMMAND`.
    pub fn start(flags: &[&str], command: &[&str]) -> Master {
        Master::start_with(flags, command, |_| {})
    }

    /// As [`Master::start`], with a chance to adjust the command first.
    pub fn start_with(
        flags: &[&str],
        command: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Master {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("master.sock");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_einhorn-master"));
        cmd.arg("-d")
            .arg(&socket)
            .arg("--addr-file")
            .arg(dir.path().join("addrs"))
            .args(flags)
            .arg("--")
            .args(command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        adjust(&mut cmd);
        let mut child = cmd.spawn().expect("spawn einhorn-master");
        let lines = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.0.lock().unwrap().push(line);
                sink.1.notify_all();
            }
        });
        Master {
            child,
            dir,
            socket,
            lines,
            status: None,
            orphans: Vec::new(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid()), signal).expect("signal the master");
    }

    /// Waits for a stderr line containing `needle`.
    pub fn wait_for_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        let mut lines = self.lines.0.lock().unwrap();
        loop {
            if let Some(line) = lines.iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no stderr line with {needle:?}; stderr so far:\n{}",
                lines.join("\n")
            );
            lines = self.lines.1.wait_timeout(lines, left).unwrap().0;
        }
    }

    pub fn stderr(&self) -> String {
        self.lines.0.lock().unwrap().join("\n")
    }

    /// The bound address of `-b` socket `index`, from the address file.
    pub fn addr(&self, index: usize) -> SocketAddr {
        let path = self.dir.path().join("addrs");
        let mut text = String::new();
        assert!(
            wait_until(WAIT, || {
                text = std::fs::read_to_string(&path).unwrap_or_default();
                !text.is_empty()
            }),
            "no address file; stderr:\n{}",
            self.stderr()
        );
        let line = text.lines().nth(index).expect("a line per socket");
        let (i, addr) = line.split_once(' ').expect("INDEX ADDR");
        assert_eq!(i, index.to_string());
        addr.parse().expect("an address")
    }

    /// Waits for the command socket, then connects.
    pub fn client(&self) -> Client {
        let mut client = None;
        assert!(
            wait_until(WAIT, || {
                client = Client::connect(&self.socket).ok();
                client.is_some()
            }),
            "cannot connect to the command socket; stderr:\n{}",
            self.stderr()
        );
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
                "timed out waiting for {what}; last state: {state:#?}\nstderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the master runs `n` ACKed workers and nothing else; returns their pids.
    pub fn wait_serving(&self, n: usize) -> Vec<i32> {
        let state = self.wait_state(&format!("{n} serving workers"), |s| {
            s.workers.len() == n && s.serving_pids().len() == n
        });
        state.serving_pids()
    }

    /// Waits for the master to exit; `None` if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    pub fn upgrade(&self) -> Result<Vec<einhorn_master::wire::Reply>, client::ClientError> {
        client::upgrade(&self.socket, WAIT)
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let mut victims = self.orphans.clone();
        if self.try_wait().is_none() {
            // Killing the master outright would orphan its workers (zombies where pid 1 does
            // not reap); killing workers first would let it respawn them. So: ask it to stop
            // (it never respawns after that), kill its workers, let it reap them and exit.
            let _ = kill(Pid::from_raw(self.pid()), Signal::SIGINT);
            let stopping = wait_until(Duration::from_secs(5), || {
                self.try_wait().is_some()
                    || Client::connect(&self.socket)
                        .and_then(|mut c| c.state(Duration::from_secs(1)))
                        .is_ok_and(|s| s.stopping)
            });
            if stopping {
                for pid in children(self.pid()) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                let _ = self.wait_exit(Duration::from_secs(5));
            }
        }
        if self.try_wait().is_none() {
            // Frozen first, so it cannot spawn a worker we would then miss.
            let _ = kill(Pid::from_raw(self.pid()), Signal::SIGSTOP);
            victims.extend(children(self.pid()));
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for pid in victims {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if std::thread::panicking() {
            eprintln!("---- master stderr ----\n{}", self.stderr());
        }
    }
}

/// Live children of `parent`, from `/proc`.
pub fn children(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| proc_stat(pid).is_some_and(|(_, ppid)| ppid == parent))
        .collect()
}

/// `(state, ppid)` of a process from `/proc/<pid>/stat`.
pub fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = after.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `pid` exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A line of `/proc/<pid>/status`, e.g. `SigIgn`.
pub fn status_field(pid: i32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

/// Whether `pid` has a handler installed for `signal` (`SigCgt` in `/proc/<pid>/status`).
pub fn catches(pid: i32, signal: Signal) -> bool {
    status_field(pid, "SigCgt")
        .and_then(|mask| u64::from_str_radix(&mask, 16).ok())
        .is_some_and(|mask| mask & (1 << (signal as i32 - 1)) != 0)
}

/// Waits until every pid has a handler for `signal`: a shell worker has run its `trap`.
pub fn wait_catching(pids: &[i32], signal: Signal) {
    assert!(
        wait_until(WAIT, || pids.iter().all(|&p| catches(p, signal))),
        "workers {pids:?} never installed a handler for {signal:?}"
    );
}

/// The fds a process has open, with what they point to.
pub fn open_fds(pid: i32) -> Vec<(i32, String)> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut fds: Vec<(i32, String)> = entries
        .flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some((fd, target.to_string_lossy().into_owned()))
        })
        .collect();
    fds.sort();
    fds
}

/// The environment of a process.
pub fn environ(pid: i32) -> Vec<(String, String)> {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return Vec::new();
    };
    raw.split(|&b| b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}
