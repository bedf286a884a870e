//! Starting a worker: Einhorn's environment, its own process group, default signal
//! dispositions, the stop signals blocked until the worker has handlers for them, and
//! optionally a parent-death signal.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use graceful_listener::env as einhorn_env;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};

use crate::pure::state::Pid;

/// Everything needed to start workers, fixed for the master's life.
#[derive(Clone, Debug)]
pub struct WorkerCommand {
    /// The program, looked up through `PATH` at each spawn (so "new code" is whatever is at
    /// that path at upgrade time).
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// The master's pid (`EINHORN_MASTER_PID`).
    pub master_pid: Pid,
    /// The listening fds, in `-b` order.
    pub fds: Vec<RawFd>,
    /// The command socket's path (`EINHORN_SOCK_PATH`).
    pub socket_path: PathBuf,
    /// Give workers SIGUSR2 when the master dies (`-k`).
    pub kill_on_master_exit: bool,
    /// Give workers a pipe as stderr (the driver forwards it and keeps its last lines)
    /// instead of the master's own stderr.
    pub capture_stderr: bool,
    /// Variables removed from the workers' environment (the master's `NOTIFY_SOCKET`: the
    /// master speaks to systemd for the service, and systemd refuses any other pid's word).
    pub remove_env: Vec<String>,
    /// Give each worker an fd connected to the command socket, as `EINHORN_SOCK_FD` (`-g`);
    /// the master's end comes back in [`Started::command_connection`].
    pub command_socket_as_fd: bool,
    /// The workers' nice level (`--nice M:W`); `None`: as the master's.
    pub nice: Option<i32>,
    /// How many runtime threads each worker gets (`--worker-threads`).
    pub threads: WorkerThreads,
    /// The load table every worker inherits (`EINHORN_LOAD_FD`; see [`load_table`]), with
    /// `--balance`.
    pub load_table: Option<RawFd>,
    /// The read-only fd of the key ring every worker inherits (`EINHORN_KEYS_FD`; see
    /// [`crate::keys`]).
    pub keys_fd: Option<RawFd>,
}

/// A new load table for the workers: [`graceful_listener::balance::TABLE_BYTES`] of zeroes in
/// memory (a memfd, close-on-exec in the master; each worker inherits it), in which every
/// worker publishes how many connections it holds, so that one holding clearly more lets
/// its siblings accept (see [`graceful_listener::balance`]).
///
/// # Errors
/// The OS error.
pub fn load_table() -> std::io::Result<std::os::fd::OwnedFd> {
    let fd = nix::sys::memfd::memfd_create(
        c"einhorn-load-table",
        nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
    )?;
    let file = std::fs::File::from(fd);
    file.set_len(graceful_listener::balance::TABLE_BYTES as u64)?;
    Ok(std::os::fd::OwnedFd::from(file))
}

pub use graceful_listener::env::TOKIO_WORKER_THREADS;

/// How many runtime threads each worker gets, as [`TOKIO_WORKER_THREADS`] in its environment
/// (`--worker-threads auto|off|N`). A variable the master itself was given wins: it reaches
/// the workers unchanged. An application that sizes its runtime in code wins over both.
///
/// ```
/// use einhorn_master::spawn::WorkerThreads;
/// assert_eq!("auto".parse::<WorkerThreads>().unwrap(), WorkerThreads::Auto);
/// assert_eq!("3".parse::<WorkerThreads>().unwrap().for_workers(2, 8), Some(3));
/// assert_eq!(WorkerThreads::Auto.for_workers(2, 2), Some(1));
/// assert_eq!(WorkerThreads::Off.for_workers(2, 2), None);
/// assert!("0".parse::<WorkerThreads>().unwrap_err().to_string().contains("\"0\""));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WorkerThreads {
    /// Each worker gets its share of the cores: `ceil(cores / workers)`, at least one. N
    /// workers together run about as many threads as the machine has cores, as one process
    /// sized to the machine would.
    #[default]
    Auto,
    /// Each worker gets this many.
    Fixed(std::num::NonZeroUsize),
    /// Nothing is set: each worker's runtime sizes itself to the whole machine (N workers
    /// run N times as many threads as there are cores).
    Off,
}

impl WorkerThreads {
    /// The threads each of `workers` workers gets on a machine of `cores` cores; `None`:
    /// none set.
    pub fn for_workers(self, workers: usize, cores: usize) -> Option<usize> {
        match self {
            WorkerThreads::Auto => Some(cores.div_ceil(workers.max(1)).max(1)),
            WorkerThreads::Fixed(n) => Some(n.get()),
            WorkerThreads::Off => None,
        }
    }
}

/// A `--worker-threads` value that is not `auto`, `off` or a number of at least 1.
#[derive(Debug, thiserror::Error)]
#[error("invalid --worker-threads {0:?}: expected auto, off, or a number of threads of at least 1")]
pub struct WorkerThreadsError(String);

impl std::str::FromStr for WorkerThreads {
    type Err = WorkerThreadsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(WorkerThreads::Auto),
            "off" => Ok(WorkerThreads::Off),
            n => n
                .parse()
                .map(WorkerThreads::Fixed)
                .map_err(|_| WorkerThreadsError(text.to_owned())),
        }
    }
}

/// A worker just started.
#[derive(Debug)]
pub struct Started {
    /// Its pid.
    pub pid: Pid,
    /// The read end of its stderr, with [`WorkerCommand::capture_stderr`].
    pub stderr: Option<std::process::ChildStderr>,
    /// The master's end of its command connection, with
    /// [`WorkerCommand::command_socket_as_fd`].
    pub command_connection: Option<std::os::unix::net::UnixStream>,
}

impl WorkerCommand {
    /// The `EINHORN_*` variables a worker with `index` gets, in a fixed order. Pure.
    ///
    /// ```
    /// use einhorn_master::spawn::WorkerCommand;
    ///
    /// let command = WorkerCommand {
    ///     program: "srv".into(),
    ///     args: vec![],
    ///     master_pid: 10,
    ///     fds: vec![3, 7],
    ///     socket_path: "/tmp/e.sock".into(),
    ///     kill_on_master_exit: false,
    ///     capture_stderr: false,
    ///     remove_env: vec![],
    ///     command_socket_as_fd: false,
    ///     nice: None,
    ///     threads: einhorn_master::spawn::WorkerThreads::Auto,
    ///     load_table: None,
    ///     keys_fd: None,
    /// };
    /// let env = command.env(2);
    /// assert!(env.contains(&("EINHORN_FD_1".to_string(), "7".to_string())));
    /// assert!(env.contains(&("EINHORN_FDS".to_string(), "3 7".to_string())));
    /// assert!(env.contains(&("EINHORN_CHILD_INDEX".to_string(), "2".to_string())));
    /// assert!(env.contains(&(
    ///     "EINHORN_MASTER_EXTENSIONS".to_string(),
    ///     "worker:stats worker:shed".to_string()
    /// )));
    /// ```
    pub fn env(&self, index: usize) -> Vec<(String, String)> {
        let mut env = vec![
            (
                einhorn_env::MASTER_PID.to_string(),
                self.master_pid.to_string(),
            ),
            (
                einhorn_env::FD_COUNT.to_string(),
                self.fds.len().to_string(),
            ),
        ];
        for (i, fd) in self.fds.iter().enumerate() {
            env.push((einhorn_env::fd_var(i), fd.to_string()));
        }
        env.push((
            einhorn_env::SOCK_PATH.to_string(),
            self.socket_path.to_string_lossy().into_owned(),
        ));
        env.push((einhorn_env::CHILD_INDEX.to_string(), index.to_string()));
        let fds: Vec<String> = self.fds.iter().map(|fd| fd.to_string()).collect();
        env.push((einhorn_env::FDS.to_string(), fds.join(" ")));
        // What this master understands beyond Einhorn's protocol: a worker of ours reports
        // its responses only when told so (Stripe's Einhorn sets nothing).
        env.push((
            einhorn_env::MASTER_EXTENSIONS.to_string(),
            format!(
                "{} {}",
                graceful_listener::einhorn::WORKER_STATS,
                graceful_listener::einhorn::WORKER_SHED
            ),
        ));
        env
    }

    /// Starts worker `index` of `workers` (its share of the cores, with
    /// [`WorkerThreads::Auto`]); returns its pid (and its stderr pipe, when captured). With
    /// `block_stop_signals`, it starts with [`graceful_listener::STOP_SIGNALS`] blocked: one
    /// sent before its handlers exist waits for them instead of killing it (see
    /// [`crate::held_signals`]). The child is not waited for here: the driver reaps every
    /// child with `waitpid`.
    ///
    /// # Errors
    /// The OS error when the program cannot be started (not found, not executable, ...).
    pub fn spawn(
        &self,
        index: usize,
        workers: usize,
        block_stop_signals: bool,
        from: &crate::builds::StartFrom,
    ) -> std::io::Result<Started> {
        let held = match from {
            crate::builds::StartFrom::Path => None,
            crate::builds::StartFrom::Held(fd) => Some(*fd),
        };
        let mut command = match held {
            // The worker's argv[0] stays the program's name; the kernel runs the held file.
            Some(fd) => {
                let mut command = Command::new(crate::builds::held_path(fd));
                command.arg0(&self.program);
                command
            }
            None => Command::new(&self.program),
        };
        command.args(&self.args);
        // Einhorn variables inherited from an outer master would only confuse the worker.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with(einhorn_env::PREFIX) {
                command.env_remove(key);
            }
        }
        for key in &self.remove_env {
            command.env_remove(key);
        }
        command.envs(self.env(index));
        // The operator's own TOKIO_WORKER_THREADS (inherited) wins over the share.
        if std::env::var_os(TOKIO_WORKER_THREADS).is_none() {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            if let Some(threads) = self.threads.for_workers(workers, cores) {
                command.env(TOKIO_WORKER_THREADS, threads.to_string());
            }
        }
        // -g: a connected pair; the worker's end is inherited (made so in the child only).
        let pair = if self.command_socket_as_fd {
            Some(std::os::unix::net::UnixStream::pair()?)
        } else {
            None
        };
        let worker_end = pair.as_ref().map(|(_, theirs)| theirs.as_raw_fd());
        if let Some(fd) = worker_end {
            command.env(einhorn_env::SOCK_FD, fd.to_string());
        }
        let load_table = self.load_table;
        if let Some(fd) = load_table {
            command.env(einhorn_env::LOAD_FD, fd.to_string());
        }
        let keys_fd = self.keys_fd;
        if let Some(fd) = keys_fd {
            command.env(einhorn_env::KEYS_FD, fd.to_string());
        }
        let nice = self.nice;
        if self.capture_stderr {
            command.stderr(std::process::Stdio::piped());
        }
        command.process_group(0);
        let kill_on_master_exit = self.kill_on_master_exit;
        let master_pid = self.master_pid;
        let mask: SigSet = if block_stop_signals {
            graceful_listener::STOP_SIGNALS.into_iter().collect()
        } else {
            SigSet::empty()
        };
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe calls (sigaction, sigprocmask, prctl, getppid, kill); it
        // allocates nothing (the mask is built here, in the parent).
        unsafe {
            command.pre_exec(move || {
                if let Some(fd) = worker_end {
                    crate::exec::set_cloexec(fd, false)?;
                }
                if let Some(fd) = load_table {
                    crate::exec::set_cloexec(fd, false)?;
                }
                if let Some(fd) = keys_fd {
                    crate::exec::set_cloexec(fd, false)?;
                }
                // A script's interpreter opens the held file after the exec: it must stay.
                if let Some(fd) = held {
                    crate::exec::set_cloexec(fd, false)?;
                }
                if let Some(level) = nice {
                    // Best effort: lowering the level needs privileges.
                    libc::setpriority(libc::PRIO_PROCESS, 0, level);
                }
                child_setup(kill_on_master_exit, master_pid, &mask)
            });
        }
        let mut child = command.spawn()?;
        let stderr = child.stderr.take();
        // Dropping `Child` neither waits nor kills; the driver reaps by pid.
        let pid = Pid::try_from(child.id()).map_err(std::io::Error::other)?;
        Ok(Started {
            pid,
            stderr,
            command_connection: pair.map(|(ours, _)| ours),
        })
    }
}

/// Marks every fd above stderr that this process inherited close-on-exec, so workers get
/// stdio and the `-b` sockets and nothing else (a build tool's jobserver pipe, a supervisor's
/// stray fds). Einhorn passes such fds through; we do not. Call it before binding anything.
///
/// # Errors
/// When `/proc/self/fd` cannot be read.
pub fn cloexec_inherited_fds() -> std::io::Result<()> {
    // Collect first: the directory handle is itself an fd (close-on-exec already).
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_GETFD/F_SETFD only touch the descriptor flags; a number that is no longer
        // open (the directory handle) just fails with EBADF, which is ignored.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}

/// In the child, between fork and exec: default signal dispositions, exactly `mask` blocked,
/// and the parent-death signal (it stays pending, if blocked, until the worker unblocks it).
fn child_setup(kill_on_master_exit: bool, master_pid: Pid, mask: &SigSet) -> std::io::Result<()> {
    // Handlers are reset by exec anyway; ignored signals are not. The master (or whatever
    // started it, like `nohup`) may ignore some: give the worker the defaults, real-time
    // signals included.
    for signal in 1..=64 {
        if signal != libc::SIGKILL && signal != libc::SIGSTOP {
            reset_to_default(signal);
        }
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(mask), None)?;
    if kill_on_master_exit {
        // Delivered when the thread that forked us exits: the driver spawns from the main
        // thread, which lives as long as the master.
        nix::sys::prctl::set_pdeathsig(Signal::SIGUSR2)?;
        // The master may have died between fork and prctl: then no signal would ever come.
        if nix::unistd::getppid().as_raw() != master_pid {
            nix::sys::signal::raise(Signal::SIGUSR2)?;
        }
    }
    Ok(())
}

/// The kernel's `struct sigaction` (handler, flags, restorer, mask) on x86_64 and aarch64.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
#[repr(C)]
struct KernelSigaction {
    handler: libc::c_ulong,
    flags: libc::c_ulong,
    restorer: libc::c_ulong,
    mask: u64,
}

/// Sets `signal` to its default action. Through the raw system call where we know its layout,
/// because the C library refuses to touch the signals it reserves for itself (32 and 33 in
/// glibc), and those can be inherited ignored too.
fn reset_to_default(signal: libc::c_int) {
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    {
        let action = KernelSigaction {
            handler: libc::SIG_DFL as libc::c_ulong,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        // SAFETY: rt_sigaction with a valid action, no old action, and the kernel's sigset
        // size; async-signal-safe. Errors (invalid numbers) are harmless and ignored.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                libc::c_long::from(signal),
                &action as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                std::mem::size_of::<u64>(),
            );
        }
    }
    #[cfg(not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )))]
    // SAFETY: async-signal-safe; failures are harmless.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_has_exactly_einhorns_variables_and_our_extensions() {
        let command = WorkerCommand {
            program: "true".into(),
            args: vec![],
            master_pid: 42,
            fds: vec![5],
            socket_path: "/run/e.sock".into(),
            kill_on_master_exit: false,
            capture_stderr: false,
            remove_env: vec![],
            command_socket_as_fd: false,
            nice: None,
            threads: WorkerThreads::Auto,
            load_table: None,
            keys_fd: None,
        };
        assert_eq!(
            command.env(0),
            vec![
                ("EINHORN_MASTER_PID".into(), "42".into()),
                ("EINHORN_FD_COUNT".into(), "1".into()),
                ("EINHORN_FD_0".into(), "5".into()),
                ("EINHORN_SOCK_PATH".into(), "/run/e.sock".into()),
                ("EINHORN_CHILD_INDEX".into(), "0".into()),
                ("EINHORN_FDS".into(), "5".into()),
                // Ours alone: the worker messages beyond Einhorn's that this master reads.
                (
                    "EINHORN_MASTER_EXTENSIONS".into(),
                    "worker:stats worker:shed".into(),
                ),
            ]
        );
        let none = WorkerCommand {
            fds: vec![],
            ..command
        };
        let env = none.env(3);
        assert!(env.contains(&("EINHORN_FD_COUNT".into(), "0".into())));
        assert!(env.contains(&("EINHORN_FDS".into(), String::new())));
    }

    #[test]
    fn a_missing_program_is_an_error() {
        let command = WorkerCommand {
            program: "/nonexistent/einhorn-master-test".into(),
            args: vec![],
            master_pid: std::process::id() as Pid,
            fds: vec![],
            socket_path: "/tmp/x".into(),
            kill_on_master_exit: false,
            capture_stderr: false,
            remove_env: vec![],
            command_socket_as_fd: false,
            nice: None,
            threads: WorkerThreads::Auto,
            load_table: None,
            keys_fd: None,
        };
        assert!(
            command
                .spawn(0, 1, false, &crate::builds::StartFrom::Path)
                .is_err()
        );
    }
}
