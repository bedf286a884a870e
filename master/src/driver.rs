//! The driver: processes, signals, the command socket and timers around the pure
//! [`Machine`].
//!
//! It runs on a current-thread tokio runtime on the main thread. That matters for `-k`: the
//! parent-death signal fires when the *thread* that forked the worker exits, and the main thread
//! lives exactly as long as the master.

use std::collections::VecDeque;
use std::ffi::CString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid as NixPid;
use tokio::signal::unix::{SignalKind, signal};

use crate::bind::{BindError, Bound};
use crate::cli::MasterArgs;
pub use crate::conn::MAX_REQUEST_LINE;
use crate::conn::{ConnLimits, Connections, Incoming, sleep_until};
use crate::held_signals::{HeldStops, ProgramCheck};
use crate::machine::{
    Action, Event, Level, ListenerInfo, Log, Machine, MachineConfig, MasterSignal, Pid,
};
use crate::observer::Observer;
use crate::pidfile::{Pidfile, PidfileError, WrittenFile};
use crate::render;
use crate::socket::{CommandSocket, SocketError};
use crate::spawn::{ProgramError, WorkerCommand, check_program};

/// Why the master could not run. Whatever it had created by then (pid file, command socket,
/// lock file, address file) is removed again.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// The worker command cannot be run.
    #[error(transparent)]
    Program(#[from] ProgramError),
    /// The first worker could not be started (the program exists but cannot be executed: a bad
    /// interpreter line, a binary for another system, ...).
    #[error("cannot start worker {program}: {source}")]
    Spawn {
        /// The worker program.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The command socket could not be opened.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// A `-b` socket could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The pid file could not be written.
    #[error(transparent)]
    Pidfile(#[from] PidfileError),
    /// The `--addr-file` could not be written.
    #[error("cannot write address file {path}: {source}")]
    AddrFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A path could not be made absolute.
    #[error("invalid path {path}: {source}")]
    Path {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The event loop (runtime, signal handlers, socket registration) could not be set up.
    #[error("cannot set up the event loop: {0}")]
    EventLoop(std::io::Error),
}

/// Runs a master until it exits; returns its exit status.
///
/// Checks the worker command and binds everything first (so errors are reported before any
/// worker starts), then spawns the workers and serves the command socket. Never exits the
/// process and installs no logger: it logs through `tracing`, to whatever subscriber the
/// caller set up.
///
/// # Errors
/// [`MasterError`] when the setup fails, or when the very first worker cannot be started;
/// once workers run, the master only exits on a signal or `die`.
pub fn run(args: &MasterArgs) -> Result<i32, MasterError> {
    let master_pid = std::process::id() as Pid;
    let (program, rest) = args.command.split_first().expect("clap requires a command");
    // Before anything is created: a typo in the command fails here, not in a respawn loop.
    check_program(program)?;
    if let Err(e) = crate::spawn::cloexec_inherited_fds() {
        tracing::warn!("cannot mark inherited fds close-on-exec; workers may inherit them: {e}");
    }
    if let Some(name) = &args.command_name {
        // Best effort: `ps` shows it; a name with a NUL is just not applied.
        if let Ok(name) = CString::new(name.as_bytes()) {
            let _ = nix::sys::prctl::set_name(&name);
        }
    }
    let pidfile = match &args.pidfile {
        Some(path) => Some(Pidfile::create(path, master_pid)?),
        None => None,
    };
    let absolute = |path: PathBuf| {
        std::path::absolute(&path).map_err(|source| MasterError::Path { path, source })
    };
    let socket_path = absolute(args.socket_path())?;
    let mut command_socket = CommandSocket::open(&socket_path, &absolute(args.lockfile())?)?;
    let bound = args
        .bind
        .iter()
        .map(|spec| spec.bind(args.backlog))
        .collect::<Result<Vec<Bound>, _>>()?;
    let listeners: Vec<ListenerInfo> = bound
        .iter()
        .enumerate()
        .map(|(index, b)| ListenerInfo {
            index,
            addr: b.addr.to_string(),
            fd: b.fd(),
        })
        .collect();
    for l in &listeners {
        tracing::info!("listening on {} (einhorn@{}, fd {})", l.addr, l.index, l.fd);
    }
    // Every file created so far is removed when these guards drop: on return, on error.
    let addr_file = match &args.addr_file {
        Some(path) => {
            let text: String = listeners
                .iter()
                .map(|l| format!("{} {}\n", l.index, l.addr))
                .collect();
            let file =
                WrittenFile::create(path, &text).map_err(|source| MasterError::AddrFile {
                    path: path.clone(),
                    source,
                })?;
            Some(file)
        }
        None => None,
    };
    tracing::info!(
        "einhorn-master {master_pid}: command socket {}",
        socket_path.display()
    );
    let worker = WorkerCommand {
        program: program.clone(),
        args: rest.to_vec(),
        master_pid,
        fds: bound.iter().map(Bound::fd).collect(),
        socket_path: socket_path.clone(),
        kill_on_master_exit: args.kill_children_on_exit,
        capture_stderr: args.stderr_tail > 0,
        // The master speaks to systemd for the service; systemd ignores other pids anyway.
        remove_env: vec![graceful_listener::env::NOTIFY_SOCKET.to_string()],
    };
    let machine = Machine::new(MachineConfig {
        workers: args.number,
        ack_mode: args.ack_mode,
        spawn_spacing: args.seconds,
        signal_timeout: args.signal_timeout,
        upgrade_timeout: args.upgrade_timeout,
        min_uptime: args.min_uptime,
        master_pid,
        command_name: args.command_name.clone(),
        socket_path: socket_path.display().to_string(),
        command: args
            .command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        listeners,
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(MasterError::EventLoop)?;
    let listener = command_socket.take_listener();
    let limits = fit_connection_limits(args.connection_limits());
    let check = ProgramCheck::new(args.block_signals);
    let code = runtime.block_on(drive(
        machine,
        worker,
        check,
        listener,
        limits,
        args.stderr_tail,
    ));
    // Connections and tasks first (a parse still running on a blocking thread gets a moment),
    // then the files (address file, sockets, lock, pid file).
    runtime.shutdown_timeout(Duration::from_secs(1));
    drop(addr_file);
    drop(bound);
    drop(command_socket);
    drop(pidfile);
    code
}

async fn drive(
    mut machine: Machine,
    worker: WorkerCommand,
    mut check: ProgramCheck,
    listener: std::os::unix::net::UnixListener,
    limits: ConnLimits,
    stderr_tail: usize,
) -> Result<i32, MasterError> {
    let setup = MasterError::EventLoop;
    listener.set_nonblocking(true).map_err(setup)?;
    let listener = tokio::net::UnixListener::from_std(listener).map_err(setup)?;
    // Every handler is installed before the first worker exists: no exit is missed and no
    // early signal kills the master.
    let mut sigchld = signal(SignalKind::child()).map_err(setup)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(setup)?;
    let mut sigusr2 = signal(SignalKind::user_defined2()).map_err(setup)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(setup)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(setup)?;
    let mut sigquit = signal(SignalKind::quit()).map_err(setup)?;

    let (mut conns, mut from_conns) = Connections::new(limits);
    // After a failed accept (out of fds), accepting pauses briefly instead of spinning.
    let mut accept_paused: Option<Instant> = None;
    // Until one worker has started, a failed spawn ends the master: nothing would ever work.
    let mut spawned_any = false;
    let (mut observer, mut stderr_closed) = Observer::new(stderr_tail, worker.master_pid);
    let mut held = HeldStops::default();

    let mut todo: VecDeque<Action> = step(&mut machine, &mut observer, Event::Start).into();
    loop {
        while let Some(action) = todo.pop_front() {
            match action {
                Action::Spawn { id, index } => {
                    let block = check.blocks(&worker.program);
                    let event = match worker.spawn(index, block) {
                        Ok(started) => {
                            spawned_any = true;
                            if block {
                                held.started(started.pid, Instant::now());
                            }
                            observer.started(started.pid, started.stderr);
                            Event::Spawned {
                                id,
                                pid: started.pid,
                            }
                        }
                        Err(source) if !spawned_any => {
                            return Err(MasterError::Spawn {
                                program: worker.program.to_string_lossy().into_owned(),
                                source,
                            });
                        }
                        Err(e) => Event::SpawnFailed {
                            id,
                            error: format!("{}: {e}", worker.program.to_string_lossy()),
                        },
                    };
                    todo.extend(step(&mut machine, &mut observer, event));
                }
                Action::Signal { pid, signal } => {
                    send_signal(pid, signal);
                    held.sent(pid, signal);
                }
                Action::Reply { conn, reply } => conns.reply(conn, &render::reply(&reply)),
                Action::Close { conn } => conns.close(conn),
                Action::Exit { code } => {
                    // Let connections flush what they were sent, briefly.
                    conns.shutdown(Duration::from_millis(500)).await;
                    return Ok(code);
                }
            }
        }

        let deadline = machine.next_deadline();
        let recheck = held.next_check(Instant::now());
        let paused = accept_paused.filter(|&until| until > Instant::now());
        let mut events = Vec::new();
        tokio::select! {
            _ = sigchld.recv() => reap(&mut events),
            _ = sleep_until(recheck), if recheck.is_some() => {
                for pid in held.check(Instant::now()) {
                    send_signal(pid, Signal::SIGKILL);
                }
            }
            _ = sighup.recv() => events.push(Event::Signal(MasterSignal::Hup)),
            _ = sigusr2.recv() => events.push(Event::Signal(MasterSignal::Usr2)),
            _ = sigint.recv() => events.push(Event::Signal(MasterSignal::Int)),
            _ = sigterm.recv() => events.push(Event::Signal(MasterSignal::Term)),
            _ = sigquit.recv() => events.push(Event::Signal(MasterSignal::Quit)),
            accepted = listener.accept(), if paused.is_none() => match accepted {
                Ok((stream, _)) => {
                    if let Some((conn, command)) = conns.accept(stream) {
                        events.push(Event::Request { conn, id: None, command });
                    }
                }
                Err(e) => {
                    conns.accept_failed(&e);
                    accept_paused = Some(Instant::now() + Duration::from_millis(100));
                }
            },
            _ = sleep_until(paused), if paused.is_some() => accept_paused = None,
            Some(incoming) = from_conns.recv() => match incoming {
                Incoming::Request { conn, id, command } => {
                    events.push(Event::Request { conn, id, command });
                }
                Incoming::Reply { conn, reply } => conns.reply(conn, &reply),
            },
            done = conns.next_finished() => conns.finished(done),
            Some(pid) = stderr_closed.recv() => observer.stderr_closed(pid),
            _ = sleep_until(deadline), if deadline.is_some() => events.push(Event::Tick),
        }
        for event in events {
            if let Event::Exited { pid, .. } = &event {
                held.exited(*pid);
            }
            todo.extend(step(&mut machine, &mut observer, event));
        }
    }
}

/// Feeds one event to the machine; the observer sees the result before the logs are written.
fn step(machine: &mut Machine, observer: &mut Observer, event: Event) -> Vec<Action> {
    let actions = machine.handle(Instant::now(), event);
    let logs = machine.take_logs();
    observer.after(machine, &logs);
    write_logs(logs);
    actions
}

/// Reaps every child that has exited.
fn reap(events: &mut Vec<Event>) {
    // Bounded: each round reaps one child, and there are only so many.
    for _ in 0..100_000 {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => events.push(Event::Exited {
                pid: pid.as_raw(),
                status: format!("exit status {code}"),
            }),
            Ok(WaitStatus::Signaled(pid, signal, _)) => events.push(Event::Exited {
                pid: pid.as_raw(),
                status: format!("killed by {}", signal.as_str()),
            }),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!("waitpid failed: {e}");
                return;
            }
        }
    }
}

/// The connection limits, shrunk (with a warning) if `ulimit -n` cannot hold them.
fn fit_connection_limits(limits: ConnLimits) -> ConnLimits {
    let mut nofile = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct, which we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut nofile) } != 0 {
        return limits;
    }
    let in_use = std::fs::read_dir("/proc/self/fd").map_or(0, |fds| fds.count());
    let soft = usize::try_from(nofile.rlim_cur).unwrap_or(usize::MAX);
    let (fitted, shrunk) = limits.fit_fds(soft, in_use);
    if shrunk {
        tracing::warn!(
            "the fd limit (ulimit -n {soft}) allows {} command connections and a reserve of {}, not {} and {}",
            fitted.max_connections,
            fitted.reserve,
            limits.max_connections,
            limits.reserve
        );
    }
    fitted
}

/// Writes the machine's log lines.
fn write_logs(logs: Vec<Log>) {
    for Log { level, message } in logs {
        let text = render::text(&message);
        match level {
            Level::Error => tracing::error!("{text}"),
            Level::Warn => tracing::warn!("{text}"),
            Level::Info => tracing::info!("{text}"),
            Level::Debug => tracing::debug!("{text}"),
        }
    }
}

fn send_signal(pid: Pid, signal: Signal) {
    match kill(NixPid::from_raw(pid), signal) {
        Ok(()) => tracing::debug!("sent {} to {pid}", signal.as_str()),
        Err(Errno::ESRCH) => tracing::debug!("{pid} is already gone; {} not sent", signal.as_str()),
        Err(e) => tracing::warn!("cannot send {} to {pid}: {e}", signal.as_str()),
    }
}
