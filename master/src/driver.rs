//! The driver: processes, signals, the command socket and timers around the pure
//! [`Machine`].
//!
//! It runs on a current-thread tokio runtime on the main thread. That matters for `-k`: the
//! parent-death signal fires when the *thread* that forked the worker exits, and the main thread
//! lives exactly as long as the master.

use std::collections::VecDeque;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{SigmaskHow, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid as NixPid;
use tokio::signal::unix::{SignalKind, signal};

use crate::bind::{BindError, Bound};
use crate::cli::MasterArgs;
pub use crate::conn::MAX_REQUEST_LINE;
use crate::conn::{ConnLimits, Connections, Detached, Incoming, sleep_until};
use crate::handover::{
    BuildHandover, CommandSocketHandover, ConnectionHandover, Handover, HandoverError,
    ListenerHandover, MetricsListenerHandover, QueuedHandover, RetiredListener, StderrHandover,
};
use crate::held_signals::{HeldStops, ProgramCheck};
use crate::observer::Observer;
use crate::pidfile::{Pidfile, PidfileError, WrittenFile};
use crate::pure::command::decode;
use crate::pure::machine::{
    Action, ConnId, Event, Level, ListenerInfo, Log, Machine, MachineConfig, MasterSignal, Pid,
};
use crate::reexec::{PREFLIGHT_TIMEOUT, Preflight};

/// How long connections and stderr pipes get to be handed back before an exec.
const DETACH_WITHIN: Duration = Duration::from_millis(500);
use crate::exec::{ProgramError, check_program};
use crate::pure::render;
use crate::socket::{CommandSocket, SocketError};
use crate::spawn::WorkerCommand;

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
    /// The state handed over by the master that exec'd this one cannot be taken over.
    #[error(transparent)]
    Handover(#[from] HandoverError),
    /// The event loop (runtime, signal handlers, socket registration) could not be set up.
    #[error("cannot set up the event loop: {0}")]
    EventLoop(std::io::Error),
    /// `-n 0`: a master with no worker would hold the port with nothing accepting.
    #[error("invalid number of workers 0: expected 1 or more")]
    NoWorkers,
    /// The `--metrics` endpoint could not be served.
    #[error("{0}")]
    Metrics(String),
}

/// Runs a master until it exits; returns its exit status.
///
/// Checks the worker command and binds everything first (so errors are reported before any
/// worker starts), then spawns the workers and serves the command socket. With
/// [`MasterArgs::with_state_fd`], it goes on from the master that exec'd it instead: same
/// sockets, workers and connections. Never exits the process and installs no logger: it
/// logs through `tracing`, to whatever subscriber the caller set up.
///
/// # Errors
/// [`MasterError`] when the setup fails, or when the very first worker cannot be started;
/// once workers run, the master only exits on a signal or `die`.
pub fn run(args: &MasterArgs) -> Result<i32, MasterError> {
    let master_pid = std::process::id() as Pid;
    let handover = match args.with_state_fd {
        Some(fd) => Some(read_handover(fd)?),
        None => None,
    };
    if args.upgrade_check {
        return upgrade_check(args, handover.as_ref());
    }
    if args.number == 0 {
        return Err(MasterError::NoWorkers);
    }
    let (program, rest) = args.command.split_first().expect("clap requires a command");
    // Faults a master lives with after an exec (its workers and sockets are its to keep):
    // logged, and kept for `state`.
    let mut faults: Vec<String> = Vec::new();
    let mut fault = |text: String| {
        tracing::error!("{text}");
        faults.push(text);
    };
    // Before anything is created: a typo in the command fails here, not in a respawn loop.
    // After an exec, a program gone meanwhile (its check passed a moment ago) is a fault:
    // the held builds still start workers of the versions that ran.
    match (check_program(program), &handover) {
        (Ok(_), _) => {}
        (Err(e), None) => return Err(e.into()),
        (Err(e), Some(_)) => fault(format!("{e}: workers cannot be started until it is fixed")),
    }
    if let Err(e) = crate::spawn::cloexec_inherited_fds() {
        tracing::warn!("cannot mark inherited fds close-on-exec; workers may inherit them: {e}");
    }
    if let Some(name) = &args.command_name {
        // Best effort: `ps` shows it; a name with a NUL is just not applied.
        if let Ok(name) = CString::new(name.as_bytes()) {
            let _ = nix::sys::prctl::set_name(&name);
        }
    }
    if let Some(nice) = args.nice {
        // SAFETY: setpriority on this process only.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice.master) } != 0 {
            tracing::warn!(
                "cannot set the master's nice level to {}: {}",
                nice.master,
                std::io::Error::last_os_error()
            );
        }
    }
    let pidfile = match (&args.pidfile, &handover) {
        (Some(path), None) => Some(Pidfile::create(path, master_pid)?),
        // The pid is unchanged across the exec: the file is this master's, whatever was
        // written into it meanwhile; a failure to write it ends nothing.
        (Some(path), Some(_)) => Pidfile::overwrite(path, master_pid)
            .inspect_err(|e| fault(e.to_string()))
            .ok(),
        (None, _) => None,
    };
    let absolute = |path: PathBuf| {
        std::path::absolute(&path).map_err(|source| MasterError::Path { path, source })
    };
    let mut command_socket = match &handover {
        Some(h) => CommandSocket::adopt(
            &h.command_socket.path,
            h.command_socket.fd,
            &h.command_socket.lock_path,
            h.command_socket.lock_fd,
        )?,
        // The socket path (and its runtime directory) is made only by a master that starts:
        // one that took over keeps the handed-over socket, wherever it is.
        None => CommandSocket::open(
            &absolute(args.prepare_socket_path()?)?,
            &absolute(args.lockfile())?,
        )?,
    };
    let socket_path = command_socket.path().to_path_buf();
    let (bound, retired) = bind_listeners(args, handover.as_ref(), &mut fault)?;
    let listeners = listener_infos(&bound);
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
            match WrittenFile::create(path, &text) {
                Ok(file) => Some(file),
                Err(source) => {
                    let error = MasterError::AddrFile {
                        path: path.clone(),
                        source,
                    };
                    if handover.is_none() {
                        return Err(error);
                    }
                    fault(error.to_string());
                    None
                }
            }
        }
        None => None,
    };
    tracing::info!(
        "einhorn-master {master_pid}: command socket {}",
        socket_path.display()
    );
    // Kept open for the master's life (a re-exec makes a new one: old workers keep theirs).
    let load_table = if !args.balance {
        None
    } else {
        match crate::spawn::load_table() {
            Ok(fd) => Some(std::os::fd::IntoRawFd::into_raw_fd(fd)),
            Err(e) => {
                tracing::warn!("cannot make the workers' load table ({e}): not balancing");
                None
            }
        }
    };
    // Made once; after an exec, the one handed over: the workers' TLS sessions resume across
    // upgrades of the workers and of the master. Without one (no memory file), workers make
    // their own keys, as under Stripe's Einhorn.
    let handed_keys = handover.as_ref().and_then(|h| h.key_ring.as_ref());
    let keys = match handed_keys {
        // SAFETY: handed over to this process to be taken, once.
        Some(k) => match unsafe { crate::keys::KeyRingFile::adopt(k.fd, args.key_rotation) } {
            Ok(keys) => Some(keys),
            Err(e) => {
                fault(format!(
                    "cannot take over the key ring ({e}): new workers get a new one, and sessions from the old keys make full handshakes"
                ));
                crate::keys::KeyRingFile::create(args.key_rotation).ok()
            }
        },
        None => crate::keys::KeyRingFile::create(args.key_rotation)
            .inspect_err(|e| {
                tracing::warn!(
                    "cannot make the workers' key ring ({e}): each worker makes its own TLS ticket keys"
                )
            })
            .ok(),
    };
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
        command_socket_as_fd: args.command_socket_as_fd,
        nice: args.nice.and_then(|n| n.worker),
        threads: args.worker_threads,
        load_table,
        keys_fd: keys.as_ref().map(crate::keys::KeyRingFile::worker_fd),
    };
    let config = MachineConfig {
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
        reexec: args.self_exec.is_some(),
        max_unacked: args.max_unacked as usize,
        max_upgrade_additional: args.max_upgrade_additional,
        canary: args.canary(),
        canary_min_responses: args.canary_min_responses,
        prove: args.prove,
    };
    let mut machine = match &handover {
        Some(h) => Machine::resume(config, &h.machine, Instant::now())
            .map_err(|e| MasterError::Handover(HandoverError::Malformed(e.to_string())))?,
        None => Machine::new(config),
    };
    if handover.is_none() {
        machine.set_verbosity(args.verbosity());
    }
    for text in faults {
        machine.note_fault(text);
    }
    crate::log_level::apply(machine.verbosity());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Only the main thread takes the master's signals (see
        // `reexec::with_master_signals_blocked`): the blocking pool's threads block them.
        .on_thread_start(|| {
            let _ = crate::reexec::mask_master_signals(SigmaskHow::SIG_BLOCK);
        })
        .build()
        .map_err(MasterError::EventLoop)?;
    let listener = command_socket.take_listener();
    let limits = fit_connection_limits(args.connection_limits());
    let check = ProgramCheck::new(args.block_signals);
    let code = runtime.block_on(async {
        let mut driver = Driver::new(
            machine,
            worker,
            check,
            listener,
            limits,
            args,
            Resources {
                command_socket,
                bound,
                retired,
                _pidfile: pidfile,
                _addr_file: addr_file,
                keys,
            },
        )?;
        driver.drive(handover).await
    });
    // Connections and tasks first (a parse still running on a blocking thread gets a moment),
    // then the files (address file, sockets, lock, pid file): dropped with the driver.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

/// Reads the state an earlier master handed over on `fd`.
fn read_handover(fd: i32) -> Result<Handover, MasterError> {
    let bytes = crate::reexec::read_state(fd)
        .map_err(|source| MasterError::Handover(HandoverError::Read { fd, source }))?;
    Handover::decode(&bytes).map_err(MasterError::Handover)
}

/// `--upgrade-check`: could this program take over from the master that runs it, with
/// these arguments and that state? Checks, against the real state and configuration,
/// everything this program would do at its start: read the state, run the worker program,
/// bind the listeners the state does not hold (a self-hosted build may add one), serve
/// `--metrics`. Prints the verdict, and on success the [`HANDSHAKE`](crate::reexec::HANDSHAKE)
/// with the state's nonce; the exit status says it.
fn upgrade_check(args: &MasterArgs, handover: Option<&Handover>) -> Result<i32, MasterError> {
    let Some(handover) = handover else {
        return Err(MasterError::Handover(HandoverError::Malformed(
            "--upgrade-check needs the state (--with-state-fd)".to_string(),
        )));
    };
    let config = MachineConfig::new(args.number.max(1));
    Machine::resume(config, &handover.machine, Instant::now())
        .map_err(|e| MasterError::Handover(HandoverError::Malformed(e.to_string())))?;
    let problems = upgrade_problems(args, handover);
    if !problems.is_empty() {
        eprintln!("upgrade check failed: {}", problems.join("; "));
        return Ok(1);
    }
    println!(
        "upgrade check passed: {} reads the state of {} (format {}, {} workers)",
        crate::handover::writer(),
        handover.writer,
        handover.format,
        handover.machine.workers.len()
    );
    if let Some(nonce) = &handover.check_nonce {
        println!("{} {nonce}", crate::reexec::HANDSHAKE);
    }
    Ok(0)
}

/// What would go wrong if this program took over with `args` from the master that handed
/// over `handover`: each a sentence naming the value at fault.
fn upgrade_problems(args: &MasterArgs, handover: &Handover) -> Vec<String> {
    let mut problems = Vec::new();
    if args.number == 0 {
        problems.push(MasterError::NoWorkers.to_string());
    }
    match args.command.first() {
        Some(program) => {
            if let Err(e) = check_program(program) {
                problems.push(e.to_string());
            }
        }
        None => problems.push("no worker command".to_string()),
    }
    for spec in &args.bind {
        let text = spec.to_string();
        if handover.listeners.iter().any(|l| l.spec == text) {
            continue;
        }
        // Bound and closed again: the port is free now (the real start binds it for good;
        // should it be taken in between, the master keeps its old listeners).
        if let Err(e) = spec.bind(args.backlog) {
            problems.push(format!("new listener {text}: {e}"));
        }
    }
    if let Some(addr) = args.metrics
        && handed_metrics(addr, Some(handover)).is_none()
        && let Err(e) = std::net::TcpListener::bind(addr)
    {
        problems.push(format!("--metrics {addr}: {e}"));
    }
    problems
}

/// The metrics listener handed over, if it serves `configured` (the same address, or the
/// same IP when the configured port is 0): kept, never closed and bound again.
fn handed_metrics(
    configured: std::net::SocketAddr,
    handover: Option<&Handover>,
) -> Option<&crate::handover::MetricsListenerHandover> {
    handover?.metrics_listener.as_ref().filter(|m| {
        m.addr == configured || (configured.port() == 0 && configured.ip() == m.addr.ip())
    })
}

/// Sockets no longer configured, each with the spawn number below which workers may still
/// use it: closed once no such worker runs.
type RetiredListeners = Vec<(Bound, u64)>;

/// The `-b` sockets: those handed over whose spec is still configured are kept, new ones
/// bound; those no longer configured stay open (retired) while workers started with them
/// run. After an exec, a new socket that cannot be bound (its port taken since the check)
/// ends nothing: the master keeps the sockets it had, as they were, and says so.
fn bind_listeners(
    args: &MasterArgs,
    handover: Option<&Handover>,
    fault: &mut impl FnMut(String),
) -> Result<(Vec<Bound>, RetiredListeners), MasterError> {
    let Some(h) = handover else {
        let bound = args
            .bind
            .iter()
            .map(|spec| spec.bind(args.backlog))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok((bound, Vec::new()));
    };
    let mut handed: Vec<(String, i32)> =
        h.listeners.iter().map(|l| (l.spec.clone(), l.fd)).collect();
    // Every new socket is bound before any handed-over fd is taken: on a failure, the
    // handed-over ones are all still there to keep.
    let mut plan = Vec::new();
    for spec in &args.bind {
        let text = spec.to_string();
        match handed.iter().position(|(s, _)| *s == text) {
            Some(i) => plan.push(Err(handed.remove(i).1)),
            None => match spec.bind(args.backlog) {
                Ok(bound) => plan.push(Ok(bound)),
                Err(e) => {
                    fault(format!(
                        "{e}: keeping the listeners this master had before its exec ({})",
                        h.listeners
                            .iter()
                            .map(|l| l.spec.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    let kept = h
                        .listeners
                        .iter()
                        .filter_map(|l| adopt_handed(&l.spec, l.fd))
                        .collect();
                    return Ok((kept, adopt_retired(h, Vec::new())));
                }
            },
        }
    }
    let bound = plan
        .into_iter()
        .zip(&args.bind)
        .filter_map(|(planned, spec)| match planned {
            Ok(bound) => Some(bound),
            Err(fd) => adopt_handed(&spec.to_string(), fd),
        })
        .collect();
    Ok((bound, adopt_retired(h, handed)))
}

/// A listening socket handed over on `fd` for `spec`; `None` (logged) when it is not one.
fn adopt_handed(spec: &str, fd: i32) -> Option<Bound> {
    let adopted = spec
        .parse::<crate::bind::BindSpec>()
        .map_err(|e| e.to_string())
        .and_then(|s| Bound::adopt(s, fd).map_err(|e| e.to_string()));
    adopted
        .inspect_err(|e| tracing::error!("cannot keep listener {spec} (fd {fd}): {e}"))
        .ok()
}

/// The retired sockets: those handed over as retired, and `unconfigured` (handed over as
/// configured, no longer in the configuration), each closed once the workers started with
/// it are gone.
fn adopt_retired(h: &Handover, unconfigured: Vec<(String, i32)>) -> RetiredListeners {
    let mut retired = Vec::new();
    let used_below = h.machine.next_spawn;
    for (spec, fd) in unconfigured {
        if let Some(b) = adopt_handed(&spec, fd) {
            tracing::info!(
                "{spec} is no longer configured: closing it once the workers started with it are gone"
            );
            retired.push((b, used_below));
        }
    }
    for r in &h.retired_listeners {
        if let Some(b) = adopt_handed(&r.listener.spec, r.listener.fd) {
            retired.push((b, r.used_below_spawn));
        }
    }
    for (b, _) in &retired {
        // Workers started from now on do not get it.
        let _ = crate::exec::set_cloexec(b.fd(), true);
    }
    retired
}

fn listener_infos(bound: &[Bound]) -> Vec<ListenerInfo> {
    bound
        .iter()
        .enumerate()
        .map(|(index, b)| ListenerInfo {
            index,
            addr: b.addr.to_string(),
            fd: b.fd(),
        })
        .collect()
}

/// What the master holds open for its whole life, and hands over across an exec.
struct Resources {
    command_socket: CommandSocket,
    bound: Vec<Bound>,
    /// Sockets no longer configured, with the spawn below which workers use them.
    retired: RetiredListeners,
    _pidfile: Option<Pidfile>,
    _addr_file: Option<WrittenFile>,
    /// The key ring every worker reads.
    keys: Option<crate::keys::KeyRingFile>,
}

/// The event loop's state.
struct Driver<'a> {
    machine: Machine,
    worker: WorkerCommand,
    check: ProgramCheck,
    listener: tokio::net::UnixListener,
    conns: Connections,
    from_conns: tokio::sync::mpsc::Receiver<Incoming>,
    observer: Observer,
    stderr_closed: tokio::sync::mpsc::UnboundedReceiver<Pid>,
    held: HeldStops,
    args: &'a MasterArgs,
    resources: Resources,
    /// The new program checking that it can take over.
    preflight: Option<(Preflight, OwnedFd, Instant)>,
    /// Until one worker has started, a failed spawn ends the master: nothing would ever work.
    spawned_any: bool,
    /// Requests handed over but not handled when an exec was tried: handled next.
    requeued: Vec<Event>,
    signals: SignalStreams,
    /// The `--metrics` endpoint, once served.
    metrics: Option<crate::metrics_http::MetricsServer>,
    /// Each version's build, held open.
    builds: crate::builds::Builds,
    /// After a failed key rotation: not tried again before this.
    retry_rotation_at: Option<Instant>,
}

/// The master's signal handlers, as streams.
struct SignalStreams {
    chld: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl SignalStreams {
    /// Installs the handlers (a master exec'd by another starts with the signals blocked:
    /// they wait, pending, until [`Driver::drive`] unblocks them).
    fn install() -> std::io::Result<SignalStreams> {
        Ok(SignalStreams {
            chld: signal(SignalKind::child())?,
            hup: signal(SignalKind::hangup())?,
            usr2: signal(SignalKind::user_defined2())?,
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    /// The stop and upgrade signals the handlers took and the loop has not seen yet, taken.
    /// Their handlers have run, so they are no longer pending in the kernel: an exec now
    /// would lose them.
    fn caught(&mut self) -> Vec<MasterSignal> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut caught = Vec::new();
        for (stream, signal) in [
            (&mut self.hup, MasterSignal::Hup),
            (&mut self.usr2, MasterSignal::Usr2),
            (&mut self.int, MasterSignal::Int),
            (&mut self.term, MasterSignal::Term),
            (&mut self.quit, MasterSignal::Quit),
        ] {
            if stream.poll_recv(&mut cx).is_ready() {
                caught.push(signal);
            }
        }
        caught
    }
}

impl<'a> Driver<'a> {
    fn new(
        machine: Machine,
        worker: WorkerCommand,
        check: ProgramCheck,
        listener: std::os::unix::net::UnixListener,
        limits: ConnLimits,
        args: &'a MasterArgs,
        resources: Resources,
    ) -> Result<Driver<'a>, MasterError> {
        let setup = MasterError::EventLoop;
        listener.set_nonblocking(true).map_err(setup)?;
        let listener = tokio::net::UnixListener::from_std(listener).map_err(setup)?;
        let (conns, from_conns) = Connections::new(limits);
        let (observer, stderr_closed) = Observer::new(args.stderr_tail, worker.master_pid);
        // Every handler is installed before the first worker exists: no exit is missed and no
        // early signal kills the master.
        let signals = SignalStreams::install().map_err(setup)?;
        Ok(Driver {
            machine,
            worker,
            check,
            listener,
            conns,
            from_conns,
            observer,
            stderr_closed,
            held: HeldStops::default(),
            args,
            resources,
            preflight: None,
            spawned_any: false,
            requeued: Vec::new(),
            signals,
            metrics: None,
            builds: Default::default(),
            retry_rotation_at: None,
        })
    }

    async fn drive(&mut self, handover: Option<Handover>) -> Result<i32, MasterError> {
        let setup = MasterError::EventLoop;
        // A master exec'd by another starts with its signals blocked (so none is lost in
        // between): unblocked once the handlers are in place (`Driver::new`).
        crate::reexec::mask_master_signals(SigmaskHow::SIG_UNBLOCK).map_err(setup)?;

        self.serve_metrics(handover.as_ref())?;

        // After a failed accept (out of fds), accepting pauses briefly instead of spinning.
        let mut accept_paused: Option<Instant> = None;
        let first = match handover {
            Some(handover) => {
                self.spawned_any = true;
                self.adopt(handover);
                // Workers that exited while the master was exec'ing.
                let mut events = vec![Event::Resumed];
                events.append(&mut self.requeued);
                reap(&mut events);
                events
            }
            None => vec![Event::Start],
        };
        let mut todo: VecDeque<Action> = VecDeque::new();
        for event in first {
            let actions = self.step(event);
            todo.extend(actions);
        }
        loop {
            while let Some(action) = todo.pop_front() {
                if let Some(code) = self.act(action, &mut todo).await? {
                    return Ok(code);
                }
            }
            self.close_unused_listeners();
            self.release_unused_builds();

            let deadline = self.machine.next_deadline();
            let recheck = self.held.next_check(Instant::now());
            let preflight_due = self
                .preflight
                .as_ref()
                .map(|(_, _, at)| *at + PREFLIGHT_TIMEOUT);
            let paused = accept_paused.filter(|&until| until > Instant::now());
            let preflight_pid = self.preflight.as_ref().map(|(p, _, _)| p.pid);
            let rotate_at = self
                .resources
                .keys
                .as_ref()
                .map(|k| Instant::now() + k.due_in())
                .map(|due| self.retry_rotation_at.map_or(due, |retry| retry.max(due)));
            let mut events = Vec::new();
            tokio::select! {
                _ = self.signals.chld.recv() => reap(&mut events),
                _ = self.signals.hup.recv() => events.push(Event::Signal(MasterSignal::Hup)),
                _ = self.signals.usr2.recv() => events.push(Event::Signal(MasterSignal::Usr2)),
                _ = self.signals.int.recv() => events.push(Event::Signal(MasterSignal::Int)),
                _ = self.signals.term.recv() => events.push(Event::Signal(MasterSignal::Term)),
                _ = self.signals.quit.recv() => events.push(Event::Signal(MasterSignal::Quit)),
                _ = sleep_until(recheck), if recheck.is_some() => {
                    for pid in self.held.check(Instant::now()) {
                        send_signal(pid, Signal::SIGKILL);
                    }
                }
                _ = sleep_until(preflight_due), if preflight_due.is_some() => {
                    if let Some((preflight, _, _)) = &self.preflight {
                        tracing::warn!("the new master's check takes longer than {}s: killing it and what it started", PREFLIGHT_TIMEOUT.as_secs());
                        preflight.kill();
                    }
                }
                accepted = self.listener.accept(), if paused.is_none() => match accepted {
                    Ok((stream, _)) => {
                        if let Some((conn, command)) = self.conns.accept(stream) {
                            events.push(Event::Request { conn, id: None, command });
                        }
                    }
                    Err(e) => {
                        self.conns.accept_failed(&e);
                        accept_paused = Some(Instant::now() + Duration::from_millis(100));
                    }
                },
                _ = sleep_until(paused), if paused.is_some() => accept_paused = None,
                _ = sleep_until(rotate_at), if rotate_at.is_some() => self.rotate_keys(),
                Some(incoming) = self.from_conns.recv() => match incoming {
                    Incoming::Request { conn, id, command, .. } => {
                        events.push(Event::Request { conn, id, command });
                    }
                    Incoming::Reply { conn, reply } => self.conns.reply(conn, &reply),
                },
                done = self.conns.next_finished() => self.conns.finished(done),
                Some(pid) = self.stderr_closed.recv() => self.observer.stderr_closed(pid),
                _ = sleep_until(deadline), if deadline.is_some() => events.push(Event::Tick),
            }
            for event in events {
                if let Event::Exited { pid, status } = &event {
                    if preflight_pid == Some(*pid) {
                        // Returns only if the new master could not take over.
                        if let Err(reason) = self.preflight_done(status).await {
                            todo.extend(self.step(Event::ReexecFailed { reason }));
                            for event in std::mem::take(&mut self.requeued) {
                                todo.extend(self.step(event));
                            }
                        }
                        continue;
                    }
                    self.held.exited(*pid);
                    if !self.args.keep_orphans
                        && self.machine.workers().any(|w| w.pid == Some(*pid))
                    {
                        kill_orphans(*pid);
                    }
                }
                let actions = self.step(event);
                todo.extend(actions);
            }
        }
    }

    /// Carries out one action; `Some(code)` when the master exits.
    async fn act(
        &mut self,
        action: Action,
        todo: &mut VecDeque<Action>,
    ) -> Result<Option<i32>, MasterError> {
        match action {
            Action::Spawn { id, index, version } => {
                let block = self.check.blocks(&self.worker.program);
                let started = self.start_from(version).and_then(|from| {
                    self.worker
                        .spawn(index, self.machine.target(), block, &from)
                });
                let event = match started {
                    Ok(started) => {
                        self.spawned_any = true;
                        if block {
                            self.held.started(started.pid, Instant::now());
                        }
                        if let Some(connection) = started.command_connection {
                            self.conns.adopt_new(connection);
                        }
                        self.observer.started(started.pid, started.stderr);
                        Event::Spawned {
                            id,
                            pid: started.pid,
                        }
                    }
                    Err(source) if !self.spawned_any => {
                        return Err(MasterError::Spawn {
                            program: self.worker.program.to_string_lossy().into_owned(),
                            source,
                        });
                    }
                    Err(e) => Event::SpawnFailed {
                        id,
                        error: format!("{}: {e}", self.worker.program.to_string_lossy()),
                    },
                };
                todo.extend(self.step(event));
            }
            Action::Signal { pid, signal } => {
                send_signal(pid, signal);
                self.held.sent(pid, signal);
            }
            Action::Reply { conn, reply } => self.conns.reply(conn, &render::reply(&reply)),
            Action::Close { conn } => self.conns.close(conn),
            Action::Exit { code } => {
                // Let connections flush what they were sent, briefly.
                self.conns.shutdown(Duration::from_millis(500)).await;
                return Ok(Some(code));
            }
            Action::SetLogLevel { offset } => {
                if !crate::log_level::apply(offset) {
                    tracing::warn!(
                        "the log level cannot be changed: the program running this master did not register its logger (einhorn_master::log_level::set_control)"
                    );
                }
            }
            Action::Reexec => {
                if let Err(reason) = self.start_preflight() {
                    todo.extend(self.step(Event::ReexecFailed { reason }));
                }
            }
            Action::CancelReexec => {
                if let Some((preflight, _, _)) = self.preflight.take() {
                    preflight.kill();
                }
            }
        }
        Ok(None)
    }

    /// Serves `--metrics`: on the socket handed over across the exec when it is the
    /// configured one (never closed and bound again, so no one can take its port in
    /// between), else on a new one. After an exec, a failure ends nothing: logged, no metrics.
    fn serve_metrics(&mut self, handover: Option<&Handover>) -> Result<(), MasterError> {
        let handed = handover.and_then(|h| h.metrics_listener.as_ref());
        let Some(addr) = self.args.metrics else {
            if let Some(m) = handed {
                tracing::info!("--metrics is no longer configured: closing {}", m.addr);
                // SAFETY: handed over to this process to be taken, once.
                drop(unsafe { OwnedFd::from_raw_fd(m.fd) });
            }
            return Ok(());
        };
        let kept = handed_metrics(addr, handover);
        if let (Some(m), None) = (handed, kept) {
            tracing::info!(
                "metrics move from {} to {addr}: closing the old socket",
                m.addr
            );
            // SAFETY: as below.
            drop(unsafe { OwnedFd::from_raw_fd(m.fd) });
        }
        let listener = match kept {
            Some(m) => {
                // SAFETY: handed over to this process to be taken, once.
                let listener = unsafe { std::net::TcpListener::from_raw_fd(m.fd) };
                // Workers never get it.
                crate::exec::set_cloexec(m.fd, true)
                    .map(|()| listener)
                    .map_err(|e| e.to_string())
            }
            None => crate::metrics_http::bind(addr).map_err(|e| e.to_string()),
        };
        match listener.and_then(|l| crate::metrics::serve(l).map_err(|e| e.to_string())) {
            Ok(server) => {
                self.metrics = Some(server);
                let tally = handover.and_then(|h| h.metrics.clone());
                self.observer.record_metrics(tally.unwrap_or_default());
                Ok(())
            }
            Err(e) if handover.is_none() => Err(MasterError::Metrics(e)),
            Err(e) => {
                let text = format!("{e}: no metrics are served until the next reload");
                tracing::error!("{text}");
                self.machine.note_fault(text);
                Ok(())
            }
        }
    }

    /// How to start a worker of `version`: from the program's path, or from the build that
    /// version's first worker ran when the path names another file now (or none).
    fn start_from(&mut self, version: u64) -> std::io::Result<crate::builds::StartFrom> {
        let from = match check_program(&self.worker.program) {
            Ok(found) => self.builds.start_from(version, &found)?,
            Err(e) => self
                .builds
                .held(version)
                .ok_or_else(|| std::io::Error::other(e.to_string()))?,
        };
        if from != crate::builds::StartFrom::Path {
            tracing::info!(
                "starting version {version}'s build as held since its first worker ({} names another file now, or none)",
                self.worker.program.to_string_lossy()
            );
        }
        Ok(from)
    }

    /// Starts the new program's check on the state as it is now.
    fn start_preflight(&mut self) -> Result<(), String> {
        let exec = self
            .args
            .self_exec
            .as_ref()
            .ok_or_else(|| "this master cannot re-exec itself".to_string())?;
        self.resources.command_socket.keep_lock()?;
        let mut handover = self.handover_now(Vec::new(), Vec::new());
        let nonce = crate::reexec::nonce()
            .map_err(|e| format!("cannot make a nonce for the new master's check: {e}"))?;
        handover.check_nonce = Some(nonce.clone());
        let state = crate::reexec::state_file(&handover.encode())
            .map_err(|e| format!("cannot write the state for the new master: {e}"))?;
        let preflight = Preflight::start(exec, &state, nonce, &self.args.drop_env_var)
            .map_err(|e| format!("cannot start {}: {e}", exec.program.display()))?;
        tracing::info!(
            "checking that {} can take over (pid {})",
            exec.program.display(),
            preflight.pid
        );
        self.preflight = Some((preflight, state, Instant::now()));
        Ok(())
    }

    /// The check ended with `status`: exec the new program (never returning), or say why
    /// not.
    async fn preflight_done(&mut self, status: &str) -> Result<(), String> {
        let Some((preflight, _, _)) = self.preflight.take() else {
            return Ok(());
        };
        preflight.verdict(status == "exit status 0", status)?;
        tracing::info!("the new master passed its check; handing over");
        self.reexec().await
    }

    /// Hands everything over to the new program and execs it. Returns only if the exec
    /// failed, with everything taken back as it was.
    async fn reexec(&mut self) -> Result<(), String> {
        let exec = self
            .args
            .self_exec
            .clone()
            .ok_or_else(|| "this master cannot re-exec itself".to_string())?;
        // From here on, the stop and upgrade signals stay pending in the kernel (every other
        // thread blocks them too): a pending signal survives the exec, and the new master's
        // handlers take it. One the handlers took before is looked for below.
        crate::reexec::mask_master_signals(SigmaskHow::SIG_BLOCK)
            .map_err(|e| format!("cannot block the master's signals for the exec: {e}"))?;
        // Scrapes in progress end first; those that come meanwhile wait in the backlog for
        // the new master.
        if let Some(metrics) = &self.metrics {
            let open = metrics.pause(DETACH_WITHIN).await;
            if open > 0 {
                tracing::debug!("{open} metrics connections still open: cut by the exec");
            }
        }
        // A healthy connection answers within a turn of its task; a flood's may not: those
        // are left to close.
        let mut queued = Vec::new();
        let connections = self
            .conns
            .detach_all(DETACH_WITHIN, &mut self.from_conns, &mut queued)
            .await;
        let pipes = self.observer.detach_stderr(DETACH_WITHIN).await;
        let mut handover = self.handover_now(
            connections
                .iter()
                .map(|c| ConnectionHandover {
                    conn: c.conn.0,
                    fd: c.stream.as_raw_fd(),
                    unread: c.unread.clone(),
                    owed: c.owed,
                })
                .collect(),
            pipes
                .iter()
                .map(|(pid, fd, lines)| StderrHandover {
                    pid: *pid,
                    fd: fd.as_raw_fd(),
                    lines: lines.clone(),
                })
                .collect(),
        );
        handover.queued = queued
            .iter()
            .map(|incoming| match incoming {
                Incoming::Request { conn, line, .. } => QueuedHandover::Request {
                    conn: conn.0,
                    line: line.clone(),
                },
                Incoming::Reply { conn, reply } => QueuedHandover::Reply {
                    conn: conn.0,
                    line: crate::pure::wire::encode_reply(reply),
                },
            })
            .collect();
        // A signal whose handler ran before the mask was set is in the handlers' pipe, no
        // longer pending in the kernel: let the event loop read the pipe, then look.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        let caught = self.signals.caught();
        let state = match caught.first() {
            Some(signal) => Err(std::io::Error::other(format!(
                "{} came during the hand-over: this master acts on it instead",
                signal.signal().as_str()
            ))),
            None => crate::reexec::state_file(&handover.encode()),
        };
        let error = match state {
            Ok(state) => {
                let mut fds = handover.fds();
                fds.push(state.as_raw_fd());
                let ready = fds
                    .iter()
                    .try_for_each(|&fd| crate::exec::set_cloexec(fd, false));
                let error = match ready {
                    Ok(()) => {
                        tracing::info!(
                            "exec'ing {} (pid {} stays)",
                            exec.program.display(),
                            self.worker.master_pid
                        );
                        crate::reexec::exec(&exec, state.as_raw_fd(), &self.args.drop_env_var)
                    }
                    Err(e) => e,
                };
                // Still here: the exec failed. Back as it was.
                for &fd in &handover.fds() {
                    // The listening sockets stay inheritable: workers get them.
                    let listening = self.resources.bound.iter().any(|b| b.fd() == fd);
                    let _ = crate::exec::set_cloexec(fd, !listening);
                }
                error
            }
            Err(e) => e,
        };
        // Signals sent meanwhile, pending, are delivered now, to this master.
        let _ = crate::reexec::mask_master_signals(SigmaskHow::SIG_UNBLOCK);
        if let Some(metrics) = &self.metrics {
            metrics.resume();
        }
        for connection in connections {
            self.conns.adopt(connection);
        }
        for (pid, fd, lines) in pipes {
            self.observer.adopt_stderr(pid, fd, &lines);
        }
        // What was queued is handled now, as if it had just come; the signals first.
        let mut events: Vec<Event> = caught.iter().copied().map(Event::Signal).collect();
        for incoming in queued {
            match incoming {
                Incoming::Request {
                    conn, id, command, ..
                } => events.push(Event::Request { conn, id, command }),
                Incoming::Reply { conn, reply } => self.conns.reply(conn, &reply),
            }
        }
        let abandoned = !caught.is_empty();
        self.requeued = events;
        Err(if abandoned {
            format!(
                "the hand-over to {} was abandoned: {error}",
                exec.program.display()
            )
        } else {
            format!("cannot exec {}: {error}", exec.program.display())
        })
    }

    /// Everything this master would hand over now, with these connections and pipes.
    fn handover_now(
        &self,
        connections: Vec<ConnectionHandover>,
        stderr: Vec<StderrHandover>,
    ) -> Handover {
        let listener = |b: &Bound| ListenerHandover {
            spec: b.spec.to_string(),
            addr: b.addr.to_string(),
            fd: b.fd(),
        };
        let (readiness, failure) = self.observer.notified();
        Handover {
            format: crate::handover::FORMAT,
            writer: crate::handover::writer(),
            machine: self.machine.snapshot(Instant::now()),
            listeners: self.resources.bound.iter().map(listener).collect(),
            retired_listeners: self
                .resources
                .retired
                .iter()
                .map(|(b, below)| RetiredListener {
                    listener: listener(b),
                    used_below_spawn: *below,
                })
                .collect(),
            command_socket: CommandSocketHandover {
                path: self.resources.command_socket.path().to_path_buf(),
                fd: self.listener.as_raw_fd(),
                lock_path: self.resources.command_socket.lock_path().to_path_buf(),
                lock_fd: self.resources.command_socket.lock_fd(),
            },
            pidfile: self.args.pidfile.clone(),
            addr_file: self.args.addr_file.clone(),
            connections,
            stderr,
            queued: Vec::new(),
            readiness,
            failure,
            metrics: self.observer.metrics_tally(),
            builds: self
                .builds
                .fds()
                .into_iter()
                .map(|(version, fd)| BuildHandover { version, fd })
                .collect(),
            key_ring: self
                .resources
                .keys
                .as_ref()
                .map(|k| crate::handover::KeyRingHandover { fd: k.fd() }),
            metrics_listener: self.metrics.as_ref().map(|m| MetricsListenerHandover {
                addr: m.addr(),
                fd: m.fd(),
            }),
            check_nonce: None,
        }
    }

    /// Takes over what the master before the exec handed over: its connections and its
    /// workers' stderr pipes, and what systemd was told.
    fn adopt(&mut self, handover: Handover) {
        let builds: Vec<(u64, i32)> = handover.builds.iter().map(|b| (b.version, b.fd)).collect();
        // SAFETY: handed over to this process to be taken, once.
        unsafe { self.builds.adopt(&builds) };
        for c in handover.connections {
            // SAFETY: handed over to this process to be taken, once.
            let stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(c.fd) };
            self.conns.adopt(Detached {
                conn: ConnId(c.conn),
                stream,
                unread: c.unread,
                owed: c.owed,
            });
        }
        for s in handover.stderr {
            // SAFETY: as above.
            let fd = unsafe { OwnedFd::from_raw_fd(s.fd) };
            self.observer.adopt_stderr(s.pid, fd, &s.lines);
        }
        for w in &handover.machine.workers {
            if self.check.blocks(&self.worker.program) {
                // Its age, not now: the grace for holding a stop signal runs from its start.
                let age = Duration::try_from_secs_f64(w.age).unwrap_or_default();
                self.held.started(
                    w.pid,
                    Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
                );
            }
        }
        self.observer
            .resume_notified(handover.readiness, handover.failure);
        for queued in handover.queued {
            match queued {
                QueuedHandover::Request { conn, line } => match decode(&line) {
                    Ok((id, command)) => self.requeued.push(Event::Request {
                        conn: ConnId(conn),
                        id,
                        command,
                    }),
                    Err(e) => self.conns.reply_line(
                        ConnId(conn),
                        crate::pure::wire::encode_reply(&render::decode_error(&e)),
                    ),
                },
                QueuedHandover::Reply { conn, line } => self.conns.reply_line(ConnId(conn), line),
            }
        }
        tracing::info!(
            "took over from {} (state format {}): {} workers, {} connections",
            handover.writer,
            handover.format,
            handover.machine.workers.len(),
            self.conns_count()
        );
    }

    /// Rotates the workers' ticket key; a failure is logged, and tried again a minute later.
    fn rotate_keys(&mut self) {
        let Some(keys) = &mut self.resources.keys else {
            return;
        };
        match keys.rotate() {
            Ok(()) => self.retry_rotation_at = None,
            Err(e) => {
                tracing::error!("cannot rotate the workers' ticket keys: {e}");
                self.retry_rotation_at = Some(Instant::now() + Duration::from_secs(60));
            }
        }
    }

    fn conns_count(&self) -> usize {
        self.conns.open_count()
    }

    /// Lets go of the builds no worker runs and no later worker will: those of versions
    /// with no worker, but the newest and the pinned one.
    fn release_unused_builds(&mut self) {
        let running: std::collections::BTreeSet<u64> =
            self.machine.workers().map(|w| w.version).collect();
        let (newest, pinned) = (self.machine.version(), self.machine.pinned());
        self.builds
            .retain(|v| running.contains(&v) || v == newest || Some(v) == pinned);
    }

    /// Closes the retired listening sockets that no worker uses any more.
    fn close_unused_listeners(&mut self) {
        if self.resources.retired.is_empty() {
            return;
        }
        let oldest = self.machine.workers().map(|w| w.spawn.0).min();
        self.resources.retired.retain(|(b, below)| {
            let used = oldest.is_some_and(|spawn| spawn < *below);
            if !used {
                tracing::info!(
                    "closing {} ({}): no worker uses it any more",
                    b.spec,
                    b.addr
                );
            }
            used
        });
    }

    /// Feeds one event to the machine; the observer sees the result before the logs are
    /// written.
    fn step(&mut self, event: Event) -> Vec<Action> {
        step(&mut self.machine, &mut self.observer, event)
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

/// Kills what worker `pid`, just reaped, left in its process group (workers start in one of
/// their own). Its pid cannot name another group yet: the kernel reuses no pid still in use
/// as a group id, and none is spawned between the reaping and this.
fn kill_orphans(pid: Pid) {
    match nix::sys::signal::killpg(NixPid::from_raw(pid), Signal::SIGKILL) {
        Ok(()) => tracing::warn!(
            "worker {pid} left processes running in its process group: killed them (--keep-orphans leaves them)"
        ),
        Err(Errno::ESRCH) => {}
        Err(e) => tracing::debug!("cannot kill worker {pid}'s process group: {e}"),
    }
}

fn send_signal(pid: Pid, signal: Signal) {
    match kill(NixPid::from_raw(pid), signal) {
        Ok(()) => tracing::debug!("sent {} to {pid}", signal.as_str()),
        Err(Errno::ESRCH) => tracing::debug!("{pid} is already gone; {} not sent", signal.as_str()),
        Err(e) => tracing::warn!("cannot send {} to {pid}: {e}", signal.as_str()),
    }
}
