//! The master execs a new copy of itself in place: same pid, so its workers stay its
//! children; its sockets, connections and workers' stderr pipes stay open across the exec,
//! and a [`Handover`](crate::handover::Handover) on an inherited fd tells the new program
//! what they are.
//!
//! First a preflight: the new program runs in a check mode on the very state it would get
//! (Einhorn's `--upgrade-check`); only if it exits 0 does the master exec it. A missing or
//! broken program, or one that cannot read the state, leaves the master running as it was.
//!
//! How the state is passed depends on who the master is ([`StateVia`]): `einhorn-master`
//! takes Einhorn's internal options `--with-state-fd N` and `--upgrade-check`; a
//! [self-hosted](crate::self_hosted) master is the application, whose command line is its own,
//! so it gets the environment variables [`STATE_FD_ENV`] and [`UPGRADE_CHECK_ENV`].

use std::ffi::{CString, OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

use crate::pure::state::Pid;
use crate::stderr::Tail;

/// The fd of the state handed over, for a self-hosted master.
pub const STATE_FD_ENV: &str = "EINHORN_MASTER_STATE_FD";
/// Set (to `1`) when a self-hosted master runs only to check that it could take over.
pub const UPGRADE_CHECK_ENV: &str = "EINHORN_MASTER_UPGRADE_CHECK";
/// How long the preflight check may take.
pub const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of the preflight's output kept for the error message.
const PREFLIGHT_LINES: usize = 10;

/// The signals the master handles: blocked across its exec, so that one arriving before the
/// new program's handlers exist waits for them instead of killing it (or being lost).
pub const MASTER_SIGNALS: [Signal; 6] = [
    Signal::SIGHUP,
    Signal::SIGUSR2,
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGQUIT,
    Signal::SIGCHLD,
];

/// How the new program learns where the state is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateVia {
    /// `--with-state-fd N` (and `--upgrade-check`) before the other arguments: the
    /// `einhorn-master` binary, as Einhorn re-execs itself.
    Flags,
    /// [`STATE_FD_ENV`] (and [`UPGRADE_CHECK_ENV`]): a self-hosted master, whose arguments
    /// are the application's.
    Environment,
}

/// How this master execs a new copy of itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelfExec {
    /// The program: the path it was started as, made absolute but not resolved through
    /// links (a `current -> release-N` link switched before the reload is followed), or a
    /// name looked up in `PATH`.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// How the state is passed.
    pub via: StateVia,
}

impl SelfExec {
    /// The `einhorn-master` binary started with `argv`: the same arguments, without an
    /// earlier master's `--with-state-fd N` and `--upgrade-check`; with `reexec_as`
    /// (`--reexec-as CMDLINE`, split at whitespace) in place of the program.
    ///
    /// ```
    /// use std::path::PathBuf;
    /// use einhorn_master::reexec::SelfExec;
    ///
    /// let argv = ["einhorn-master", "--with-state-fd", "9", "-n", "2", "--", "srv"];
    /// let exec = SelfExec::einhorn_master("/usr/bin/einhorn-master".into(), argv, None);
    /// assert_eq!(exec.program, PathBuf::from("/usr/bin/einhorn-master"));
    /// assert_eq!(exec.args, ["-n", "2", "--", "srv"]);
    ///
    /// let exec = SelfExec::einhorn_master("/x".into(), ["em", "srv"], Some("bundle exec einhorn-master"));
    /// assert_eq!(exec.program, PathBuf::from("bundle"));
    /// assert_eq!(exec.args, ["exec", "einhorn-master", "srv"]);
    /// ```
    pub fn einhorn_master<I, T>(program: PathBuf, argv: I, reexec_as: Option<&str>) -> SelfExec
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let mut args = Vec::new();
        let mut rest = argv.into_iter().map(Into::into).skip(1);
        while let Some(arg) = rest.next() {
            if arg == "--" {
                args.push(arg);
                args.extend(rest.by_ref());
                break;
            }
            if arg == "--with-state-fd" {
                rest.next();
                continue;
            }
            let text = arg.to_string_lossy();
            if text.starts_with("--with-state-fd=") || text == "--upgrade-check" {
                continue;
            }
            args.push(arg);
        }
        let (program, args) = match reexec_as.map(str::split_whitespace) {
            Some(mut words) => match words.next() {
                Some(first) => {
                    let mut all: Vec<OsString> = words.map(OsString::from).collect();
                    all.extend(args);
                    (PathBuf::from(first), all)
                }
                None => (program, args),
            },
            None => (program, args),
        };
        SelfExec {
            program,
            args,
            via: StateVia::Flags,
        }
    }

    /// The arguments and added environment for the new program, with the state on
    /// `state_fd`; `check`: only check that it could take over.
    fn invocation(&self, state_fd: RawFd, check: bool) -> (Vec<OsString>, Vec<(String, String)>) {
        match self.via {
            StateVia::Flags => {
                let mut args: Vec<OsString> = Vec::new();
                if check {
                    args.push("--upgrade-check".into());
                }
                args.push("--with-state-fd".into());
                args.push(state_fd.to_string().into());
                args.extend(self.args.iter().cloned());
                (args, Vec::new())
            }
            StateVia::Environment => {
                let mut env = vec![(STATE_FD_ENV.to_string(), state_fd.to_string())];
                if check {
                    env.push((UPGRADE_CHECK_ENV.to_string(), "1".to_string()));
                }
                (self.args.clone(), env)
            }
        }
    }
}

/// The state in a memory file (close-on-exec until the exec), ready to be inherited.
///
/// # Errors
/// The OS error.
pub fn state_file(bytes: &[u8]) -> std::io::Result<OwnedFd> {
    let fd = nix::sys::memfd::memfd_create(
        c"einhorn-master-state",
        nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
    )?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    Ok(OwnedFd::from(file))
}

/// Reads the whole state on `fd` from its start (whatever its offset), then closes it.
///
/// # Errors
/// The OS error.
pub fn read_state(fd: RawFd) -> std::io::Result<Vec<u8>> {
    if fd < 3 {
        return Err(std::io::Error::other(format!(
            "fd {fd} is stdio, not a state"
        )));
    }
    // SAFETY: the fd was handed over to this process to be taken, once.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut bytes = Vec::new();
    let mut offset = 0u64;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = file.read_at(&mut chunk, offset)?;
        if n == 0 {
            return Ok(bytes);
        }
        bytes.extend_from_slice(&chunk[..n]);
        offset += n as u64;
    }
}

/// Blocks ([`SigmaskHow::SIG_BLOCK`]) or unblocks the [`MASTER_SIGNALS`] in this thread.
///
/// # Errors
/// The OS error.
pub fn mask_master_signals(how: SigmaskHow) -> std::io::Result<()> {
    let set: SigSet = MASTER_SIGNALS.into_iter().collect();
    pthread_sigmask(how, Some(&set), None)?;
    Ok(())
}

/// The line a new master's check prints, followed by a space and the nonce the state it
/// was given carries ([`Handover::check_nonce`](crate::handover::Handover::check_nonce)):
/// only a program that read that state and passed every check can print it. A program that
/// merely exits 0 at the master's path (`/bin/true`, a wrong build) is refused.
pub const HANDSHAKE: &str = "einhorn-master upgrade-check handshake";

/// How long, after the check exited, its output pipes get to reach their end.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// A fresh nonce for a check's handshake: 128 bits from the kernel's random source, in hex.
///
/// # Errors
/// The OS error reading `/dev/urandom`.
pub fn nonce() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Runs `spawn` with the master's signals blocked in the calling thread, so that a thread it
/// starts inherits them blocked; the calling thread's mask is restored after.
///
/// Every thread of the master but the main one must block them: a process-directed signal
/// goes to any thread that does not, and one taken by a helper thread in the instant before
/// the main thread execs the new master would be lost with it.
///
/// # Errors
/// The OS error setting the mask (then `spawn` is not run).
pub fn with_master_signals_blocked<T>(spawn: impl FnOnce() -> T) -> std::io::Result<T> {
    let set: SigSet = MASTER_SIGNALS.into_iter().collect();
    let mut old = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old))?;
    let result = spawn();
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None)?;
    Ok(result)
}

/// The new program running in its check mode, in a process group of its own (so that a
/// check that hangs is killed with every process it started).
#[derive(Debug)]
pub struct Preflight {
    /// Its pid, and its process group's (the driver reaps it, and hands its status to
    /// [`Preflight::verdict`]).
    pub pid: Pid,
    nonce: String,
    output: Arc<Mutex<Tail>>,
    /// One message per output pipe that reached its end.
    ended: std::sync::mpsc::Receiver<()>,
    pipes: usize,
}

impl Preflight {
    /// Starts `exec`'s program in its check mode on the state in `state` (which carries
    /// `nonce`), with the environment less `drop_env`.
    ///
    /// # Errors
    /// The OS error when it cannot be started (missing, not executable, ...).
    pub fn start(
        exec: &SelfExec,
        state: &OwnedFd,
        nonce: String,
        drop_env: &[String],
    ) -> std::io::Result<Preflight> {
        let fd = state.as_raw_fd();
        let (args, env) = exec.invocation(fd, true);
        let mut command = Command::new(&exec.program);
        command
            .args(args)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        for var in drop_env {
            command.env_remove(var);
        }
        // SAFETY: between fork and exec, only fcntl on an fd we own: async-signal-safe.
        unsafe {
            command.pre_exec(move || crate::exec::set_cloexec(fd, false));
        }
        let mut child = command.spawn()?;
        let output = Arc::new(Mutex::new(Tail::new(PREFLIGHT_LINES)));
        let (ended_tx, ended) = std::sync::mpsc::channel();
        let mut pipes = 0;
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = output.clone();
            let ended_tx = ended_tx.clone();
            // A thread per pipe: the check is short, and its output small.
            let reader = move || {
                let mut pipe = pipe;
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                    output
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(&chunk[..n]);
                }
                let _ = ended_tx.send(());
            };
            with_master_signals_blocked(|| std::thread::spawn(reader))?;
            pipes += 1;
        }
        let pid = Pid::try_from(child.id()).map_err(std::io::Error::other)?;
        // Reaped by the driver's waitpid, by pid.
        drop(child);
        Ok(Preflight {
            pid,
            nonce,
            output,
            ended,
            pipes,
        })
    }

    /// Kills the check and every process it started (its process group).
    pub fn kill(&self) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.pid), Signal::SIGKILL);
    }

    /// The check's result, from how the program ended (`status`, as the driver reports it):
    /// it passed when it exited 0 *and* printed the [`HANDSHAKE`] with this check's nonce.
    /// Whatever the check left running in its process group is killed first.
    ///
    /// # Errors
    /// Why it failed: its status and the last lines it wrote, or the missing handshake.
    pub fn verdict(&self, success: bool, status: &str) -> Result<(), String> {
        self.kill();
        // The pipes close when the check's group is gone; their threads end then.
        let deadline = std::time::Instant::now() + OUTPUT_GRACE;
        for _ in 0..self.pipes {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if self.ended.recv_timeout(left).is_err() {
                break;
            }
        }
        let lines = self
            .output
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lines();
        let expected = format!("{HANDSHAKE} {}", self.nonce);
        let shook = lines.iter().any(|line| line.trim_end() == expected);
        let said = lines
            .iter()
            .filter(|line| !line.starts_with(HANDSHAKE))
            .cloned()
            .collect::<Vec<_>>();
        let said = if said.is_empty() {
            String::new()
        } else {
            format!(": {}", said.join(" | "))
        };
        match (success, shook) {
            (true, true) => Ok(()),
            (true, false) => Err(format!(
                "its check exited 0 without the handshake of a master that read the state (not an einhorn-master, or one too old to take over){said}"
            )),
            (false, _) => Err(format!("its check exited with {status}{said}")),
        }
    }
}

/// Execs `exec`'s program with the state on `state_fd` (inheritable by now), the
/// environment less `drop_env`. Returns only on failure.
pub fn exec(exec: &SelfExec, state_fd: RawFd, drop_env: &[String]) -> std::io::Error {
    let (args, added) = exec.invocation(state_fd, false);
    let cstring = |s: &OsStr| CString::new(s.as_bytes()).map_err(std::io::Error::other);
    let program = match crate::exec::check_program(exec.program.as_os_str()) {
        Ok(found) => found,
        Err(e) => return std::io::Error::other(e.to_string()),
    };
    let build = || -> std::io::Result<(CString, Vec<CString>, Vec<CString>)> {
        let path = cstring(program.as_os_str())?;
        let mut argv = vec![cstring(exec.program.as_os_str())?];
        for arg in &args {
            argv.push(cstring(arg)?);
        }
        let mut envp = Vec::new();
        for (key, value) in std::env::vars_os() {
            let name = key.to_string_lossy();
            if drop_env.iter().any(|d| *d == name) || added.iter().any(|(k, _)| *k == name) {
                continue;
            }
            let mut pair = key.clone();
            pair.push("=");
            pair.push(&value);
            envp.push(cstring(&pair)?);
        }
        for (key, value) in &added {
            envp.push(cstring(OsStr::new(&format!("{key}={value}")))?);
        }
        Ok((path, argv, envp))
    };
    match build() {
        Ok((path, argv, envp)) => match nix::unistd::execve(&path, &argv, &envp) {
            Ok(never) => match never {},
            Err(e) => std::io::Error::from(e),
        },
        Err(e) => e,
    }
}
