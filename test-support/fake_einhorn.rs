//! A stand-in for an Einhorn master, for one worker: real inherited fds and a real
//! command socket, so the worker side can be tested byte for byte without a master binary.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};

/// Inherited fds plus a command socket, and the environment Einhorn gives its workers.
pub struct FakeEinhorn {
    dir: tempfile::TempDir,
    command_socket: UnixListener,
    fds: Vec<OwnedFd>,
}

impl FakeEinhorn {
    /// A master with a command socket in a fresh temporary directory and no listeners yet.
    pub fn new() -> std::io::Result<FakeEinhorn> {
        let dir = tempfile::tempdir()?;
        let command_socket = UnixListener::bind(dir.path().join("einhorn.sock"))?;
        command_socket.set_nonblocking(true)?;
        Ok(FakeEinhorn {
            dir,
            command_socket,
            fds: Vec::new(),
        })
    }

    /// Binds a TCP listener on `127.0.0.1:0` for the worker to inherit; returns its address.
    pub fn add_tcp_listener(&mut self) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        self.fds.push(listener.into());
        Ok(addr)
    }

    /// Hands the worker any fd as the next `EINHORN_FD_<i>` (for tests of bad input).
    pub fn add_fd(&mut self, fd: OwnedFd) -> usize {
        self.fds.push(fd);
        self.fds.len() - 1
    }

    /// The fd number the worker sees as `EINHORN_FD_<index>`.
    pub fn fd(&self, index: usize) -> RawFd {
        self.fds[index].as_raw_fd()
    }

    /// Path of the command socket (`EINHORN_SOCK_PATH`).
    pub fn sock_path(&self) -> PathBuf {
        self.dir.path().join("einhorn.sock")
    }

    /// The directory holding the command socket; tests may put other files there.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A command for `program` with Einhorn's worker environment and the fds inherited.
    ///
    /// `EINHORN_MASTER_PID` is this process's pid, which is the worker's parent pid.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("EINHORN_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("EINHORN_MASTER_PID", std::process::id().to_string())
            .env("EINHORN_FD_COUNT", self.fds.len().to_string())
            .env("EINHORN_SOCK_PATH", self.sock_path())
            .env("EINHORN_CHILD_INDEX", "0");
        let raw: Vec<RawFd> = self.fds.iter().map(AsRawFd::as_raw_fd).collect();
        for (i, fd) in raw.iter().enumerate() {
            cmd.env(format!("EINHORN_FD_{i}"), fd.to_string());
        }
        let fds_list: Vec<String> = raw.iter().map(|fd| fd.to_string()).collect();
        cmd.env("EINHORN_FDS", fds_list.join(" "));
        // SAFETY: only fcntl, which is async-signal-safe, runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &raw {
                    if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        cmd
    }

    /// Waits up to `timeout` for one connection on the command socket and returns every
    /// byte the peer wrote before closing it.
    pub fn recv_command(&self, timeout: Duration) -> std::io::Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut stream = loop {
            match self.command_socket.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "no connection on the command socket",
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))?;
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes)?;
        Ok(bytes)
    }
}

/// Makes `cmd` start with `signals` blocked, as a master can do so that a signal sent
/// before the worker has installed its handlers stays pending instead of killing it.
pub fn block_signals_at_exec(cmd: &mut Command, signals: &[Signal]) {
    let mut set = SigSet::empty();
    for &signal in signals {
        set.add(signal);
    }
    // SAFETY: sigprocmask is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
                .map_err(std::io::Error::from)
        });
    }
}

/// Makes `cmd`'s process send itself `signal` just before exec, with it blocked: the signal
/// is pending when the program starts, exactly as one that arrived before `main` could run
/// (a pending signal survives exec). Deterministic, unlike racing a `kill` against startup.
pub fn signal_before_exec(cmd: &mut Command, signal: Signal) {
    block_signals_at_exec(cmd, &[signal]);
    // SAFETY: raise is async-signal-safe; the signal stays pending (blocked just above).
    unsafe {
        cmd.pre_exec(move || nix::sys::signal::raise(signal).map_err(std::io::Error::from));
    }
}
