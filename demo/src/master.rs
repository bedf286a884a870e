//! A real `einhorn-master` process for tests and the demo: its command socket in a temporary
//! directory, its bound addresses read from `--addr-file`, waits on its `state`, and a
//! teardown that leaves no worker behind.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use einhorn_master::client::{self, Client, ClientError};
use einhorn_master::pure::state::MasterState;
use einhorn_master::pure::wire::Reply;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::{Proc, binary, descendants, wait_until};

/// Generous: the machine is small and shared; waits end as soon as the event happens.
pub const WAIT: Duration = Duration::from_secs(30);

/// A running `einhorn-master`, output captured. Dropping it stops the master and every
/// worker it runs, and reaps the master.
pub struct Master {
    /// The master process.
    pub proc: Proc,
    /// Its command socket.
    pub socket: PathBuf,
    /// The temporary directory holding the socket and the address file; tests may put
    /// their own files there.
    pub dir: tempfile::TempDir,
    /// Extra pids to kill on drop (workers orphaned by a test that killed the master).
    pub orphans: Vec<i32>,
}

impl Master {
    /// Starts `einhorn-master -d DIR/master.sock --addr-file DIR/addrs FLAGS -- COMMAND`.
    ///
    /// # Panics
    /// When the binary is not built or cannot be started.
    pub fn start(flags: &[&str], command: &[impl AsRef<OsStr>]) -> Master {
        Master::start_with(flags, command, |_| {})
    }

    /// As [`Master::start`], with a chance to adjust the command first.
    ///
    /// # Panics
    /// As [`Master::start`].
    pub fn start_with(
        flags: &[&str],
        command: &[impl AsRef<OsStr>],
        adjust: impl FnOnce(&mut Command),
    ) -> Master {
        Master::start_program(&binary("einhorn-master"), flags, command, adjust)
    }

    /// As [`Master::start_with`], with the master's program at `program` (the demo's own
    /// build of it) rather than the workspace's `einhorn-master`.
    ///
    /// # Panics
    /// As [`Master::start`].
    pub fn start_program(
        program: &Path,
        flags: &[&str],
        command: &[impl AsRef<OsStr>],
        adjust: impl FnOnce(&mut Command),
    ) -> Master {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("master.sock");
        let mut cmd = Command::new(program);
        cmd.arg("-d")
            .arg(&socket)
            .arg("--addr-file")
            .arg(dir.path().join("addrs"))
            .args(flags)
            .arg("--")
            .args(command);
        adjust(&mut cmd);
        let proc = Proc::spawn(cmd).expect("spawn einhorn-master");
        Master {
            proc,
            socket,
            dir,
            orphans: Vec::new(),
        }
    }

    /// The master's pid.
    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// Sends `signal` to the master.
    ///
    /// # Panics
    /// When the master is gone.
    pub fn signal(&self, signal: Signal) {
        self.proc.signal(signal).expect("signal the master");
    }

    /// Waits for an output line (the master's, or a worker's: they share its stdio)
    /// containing `needle`.
    ///
    /// # Panics
    /// When none comes within [`WAIT`].
    pub fn wait_for_line(&self, needle: &str) -> String {
        self.proc
            .wait_for_line(needle, WAIT)
            .unwrap_or_else(|| panic!("no line with {needle:?}; output so far:\n{}", self.output()))
    }

    /// Everything the master and its workers have written so far.
    pub fn output(&self) -> String {
        self.proc.output()
    }

    /// The bound address of `-b` socket `index`, from the address file.
    ///
    /// # Panics
    /// When the master writes no address within [`WAIT`].
    pub fn addr(&self, index: usize) -> SocketAddr {
        let path = self.dir.path().join("addrs");
        let mut text = String::new();
        let written = wait_until(WAIT, || {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            !text.is_empty()
        });
        assert!(written, "no address file:\n{}", self.output());
        let line = text.lines().nth(index).expect("a line per socket");
        let (i, addr) = line.split_once(' ').expect("INDEX ADDR");
        assert_eq!(i, index.to_string());
        addr.parse().expect("an address")
    }

    /// Waits for the command socket, then connects.
    ///
    /// # Panics
    /// When the socket does not accept within [`WAIT`].
    pub fn client(&self) -> Client {
        let mut client = None;
        let connected = wait_until(WAIT, || {
            client = Client::connect(&self.socket).ok();
            client.is_some()
        });
        assert!(
            connected,
            "cannot connect to the command socket:\n{}",
            self.output()
        );
        client.expect("connected")
    }

    /// The master's `state`.
    ///
    /// # Panics
    /// When the master does not answer.
    pub fn state(&self) -> MasterState {
        self.client().state(WAIT).expect("state")
    }

    /// Waits until `cond` holds for the master's state; returns that state.
    ///
    /// # Panics
    /// When it does not hold within [`WAIT`]; the message names `what`.
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
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until exactly `n` workers run, all ACKed and current (no old worker still
    /// draining); returns their pids, sorted.
    ///
    /// # Panics
    /// As [`Master::wait_state`].
    pub fn wait_serving(&self, n: usize) -> Vec<i32> {
        let state = self.wait_state(&format!("{n} serving workers"), |s| {
            s.workers.len() == n && s.serving_pids().len() == n
        });
        let mut pids = state.serving_pids();
        pids.sort_unstable();
        pids
    }

    /// A smooth upgrade; returns the replies once the master says `Upgrade done`.
    ///
    /// # Errors
    /// As [`einhorn_master::client::upgrade`].
    pub fn upgrade(&self) -> Result<Vec<Reply>, ClientError> {
        client::upgrade(&self.socket, WAIT)
    }

    /// Waits until the master has reaped worker `pid`; returns its log line about it.
    ///
    /// # Panics
    /// When that does not happen within [`WAIT`].
    pub fn wait_exited(&self, pid: i32) -> String {
        self.wait_for_line(&format!("Exited worker {pid} "))
    }

    /// Waits up to `timeout` for the master to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.wait_timeout(timeout)
    }

    /// The master's exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.proc.try_wait()
    }

    /// Stops the master gracefully (SIGINT: every worker gets SIGUSR2 and drains) and waits
    /// up to `timeout` for it to exit.
    pub fn stop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.try_wait().is_none() {
            let _ = self.proc.signal(Signal::SIGINT);
        }
        self.wait_exit(timeout)
    }
}

impl Drop for Master {
    /// Killing a master outright orphans its workers (zombies where pid 1 does not reap);
    /// killing the workers first lets a live master respawn them. So: ask it to stop (after
    /// which it never respawns), kill its workers, and let it reap them and exit. If that
    /// fails, `Proc`'s drop freezes it and kills everything.
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.proc.signal(Signal::SIGINT);
            let socket = self.socket.clone();
            let stopping = wait_until(Duration::from_secs(5), || {
                self.proc.try_wait().is_some()
                    || Client::connect(&socket)
                        .and_then(|mut c| c.state(Duration::from_secs(1)))
                        .is_ok_and(|s| s.stopping)
            });
            if stopping {
                for pid in descendants(self.pid()) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                let _ = self.wait_exit(Duration::from_secs(5));
            }
        }
        for &pid in &self.orphans {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}
