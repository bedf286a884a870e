//! The master's worker-set and upgrade logic: a pure state machine.
//!
//! No processes, no sockets, no clock. The driver feeds [`Event`]s in with the current time,
//! carries out the [`Action`]s that come out, and calls [`Machine::handle`] with [`Event::Tick`]
//! when [`Machine::next_deadline`] is reached. Everything that depends on time (timer ACKs,
//! spawn spacing and backoff, `-t` escalation, the upgrade timeout) is a deadline here, so tests
//! step time by hand.
//!
//! # Rules
//! - Workers belong to a *version*; `upgrade` starts a new one. Workers of older versions are
//!   *old*. A worker is *retired* once the master has sent it a stop signal.
//! - Missing workers of the current version are spawned, at most one per
//!   [`spawn_interval`](Machine::spawn_interval) after the first fill. During a smooth upgrade at
//!   most one new worker is unACKed at a time, so the upgrade is paced by ACKs.
//! - During a smooth upgrade each ACK retires one old worker (SIGUSR2). When as many new workers
//!   have ACKed as the target count, every remaining old worker is retired and `Upgrade done` is
//!   sent. A fleet upgrade (`upgrade_fleet`) spawns every new worker at once and retires the old
//!   ones when all have ACKed.
//! - An upgrade during which no new worker ACKs for `upgrade_timeout` fails: its unACKed new
//!   workers are retired, every worker still serving is adopted into the current version, and
//!   the requester gets an error reply.
//! - A worker that dies before it ACKs, without having been retired, counts as a consecutive
//!   failure: the next spawn waits `min(30 s, max(-s, 1 s) x 1.5^(failures - 1))`. An ACK resets
//!   the count.
//! - With a signal timeout, a retired worker still alive that long after its signal gets SIGKILL.
//!
//! # Example
//! ```
//! use std::time::{Duration, Instant};
//! use einhorn_master::machine::{Action, AckMode, Event, Machine, MachineConfig, SpawnId};
//!
//! let mut machine = Machine::new(MachineConfig {
//!     ack_mode: AckMode::Manual,
//!     ..MachineConfig::new(1)
//! });
//! let now = Instant::now();
//! let actions = machine.handle(now, Event::Start);
//! assert_eq!(actions, vec![Action::Spawn { id: SpawnId(0), index: 0 }]);
//! assert!(machine.handle(now, Event::Spawned { id: SpawnId(0), pid: 100 }).is_empty());
//! ```

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::command::{Command, help_text, signal_name};
use crate::state::{MasterState, WorkerState};
use crate::wire::{Reply, RequestId};

/// A process id.
pub type Pid = i32;

/// Names one command-socket connection, chosen by the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Names one spawn request, chosen by the machine, so its result can be matched to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpawnId(pub u64);

/// How a worker tells the master it is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckMode {
    /// The worker sends `worker:ack` itself (`-m manual`).
    Manual,
    /// A worker still alive after this long counts as up (`-m SECONDS`, 1 s by default).
    Timer(Duration),
}

impl std::fmt::Display for AckMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AckMode::Manual => f.write_str("manual"),
            AckMode::Timer(d) => write!(f, "timer ({}s)", d.as_secs_f64()),
        }
    }
}

/// A listening socket, as `state` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerInfo {
    /// Position among the `-b` options (`EINHORN_FD_<index>`).
    pub index: usize,
    /// The bound address, with the real port when `:0` was asked for.
    pub addr: String,
    /// The fd number workers inherit.
    pub fd: i32,
}

/// What the machine needs to know about its setting.
#[derive(Clone, Debug, PartialEq)]
pub struct MachineConfig {
    /// Target number of workers (`-n`).
    pub workers: usize,
    /// How workers ACK (`-m`).
    pub ack_mode: AckMode,
    /// Minimum time between two spawns after the first fill (`-s`).
    pub spawn_spacing: Duration,
    /// SIGKILL a retired worker still alive after this long (`-t`).
    pub signal_timeout: Option<Duration>,
    /// Fail an upgrade when no new worker ACKs for this long (`--upgrade-timeout`).
    pub upgrade_timeout: Duration,
    /// The master's pid (for `ehlo` and `state`).
    pub master_pid: Pid,
    /// The `-c` name, if any.
    pub command_name: Option<String>,
    /// The command socket's path (for `config`).
    pub socket_path: String,
    /// The worker command line (for `config`).
    pub command: Vec<String>,
    /// The listening sockets (for `state`).
    pub listeners: Vec<ListenerInfo>,
}

impl MachineConfig {
    /// A configuration for `workers` workers with Einhorn's defaults: timer ACK of 1 s, no
    /// spacing, no signal timeout, a 60 s upgrade timeout.
    pub fn new(workers: usize) -> Self {
        MachineConfig {
            workers,
            ack_mode: AckMode::Timer(Duration::from_secs(1)),
            spawn_spacing: Duration::ZERO,
            signal_timeout: None,
            upgrade_timeout: Duration::from_secs(60),
            master_pid: 0,
            command_name: None,
            socket_path: String::new(),
            command: Vec::new(),
            listeners: Vec::new(),
        }
    }
}

/// A signal the master process itself received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MasterSignal {
    /// SIGHUP: smooth upgrade.
    Hup,
    /// SIGUSR2: graceful stop (SIGUSR2 to every worker, exit once they are gone).
    Usr2,
    /// SIGINT: same as SIGUSR2.
    Int,
    /// SIGTERM: SIGTERM to every worker, exit once they are gone.
    Term,
    /// SIGQUIT: SIGQUIT to every worker and exit at once.
    Quit,
}

/// Something that happened, fed to [`Machine::handle`].
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The master is ready: spawn the first workers.
    Start,
    /// The worker asked for by [`Action::Spawn`] runs as `pid`.
    Spawned {
        /// The spawn request.
        id: SpawnId,
        /// The new worker's pid.
        pid: Pid,
    },
    /// The worker asked for by [`Action::Spawn`] could not be started.
    SpawnFailed {
        /// The spawn request.
        id: SpawnId,
        /// Why, for the log.
        error: String,
    },
    /// A child exited and was reaped.
    Exited {
        /// Its pid.
        pid: Pid,
        /// How it ended, for the log (`exit status 0`, `signal SIGKILL`).
        status: String,
    },
    /// A checked request arrived on a command-socket connection.
    Request {
        /// The connection, to reply on.
        conn: ConnId,
        /// The request's `id`, echoed in replies.
        id: Option<RequestId>,
        /// The command.
        command: Command,
    },
    /// The master received a signal.
    Signal(MasterSignal),
    /// Time passed: handle whatever deadline is due.
    Tick,
}

/// Something the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Start a worker with `EINHORN_CHILD_INDEX=index`, then report [`Event::Spawned`] or
    /// [`Event::SpawnFailed`] with the same `id`.
    Spawn {
        /// Matches the result to this request.
        id: SpawnId,
        /// The worker's index.
        index: usize,
    },
    /// Send `signal` to `pid`.
    Signal {
        /// The worker.
        pid: Pid,
        /// The signal.
        signal: Signal,
    },
    /// Write a reply line on a connection (if it is still open).
    Reply {
        /// The connection.
        conn: ConnId,
        /// The reply.
        reply: Reply,
    },
    /// Close a connection (after `worker:ack`, as Einhorn does).
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Exit the master with this status. Nothing else happens after it.
    Exit {
        /// The exit status.
        code: i32,
    },
}

/// What the machine knows about one worker, as [`Machine::workers`] shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerView {
    /// The pid (`None` while its spawn is pending).
    pub pid: Option<Pid>,
    /// Its `EINHORN_CHILD_INDEX`.
    pub index: usize,
    /// The version it belongs to.
    pub version: u64,
    /// Whether it has ACKed.
    pub acked: bool,
    /// The stop signal the master sent it, if any.
    pub retired: Option<Signal>,
}

#[derive(Clone, Debug)]
struct Worker {
    spawn: SpawnId,
    pid: Option<Pid>,
    index: usize,
    version: u64,
    spawned_at: Instant,
    acked: bool,
    retired: Option<(Signal, Instant)>,
    killed: bool,
    last_ping: Option<Instant>,
}

type Subscriber = (ConnId, Option<RequestId>);

#[derive(Clone, Debug)]
struct Upgrade {
    fleet: bool,
    /// Start of the upgrade, or the last new ACK.
    progress_at: Instant,
    subscribers: Vec<Subscriber>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    Stopping(Signal),
    Done,
}

/// Longest wait between two spawns after consecutive failures.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Wait before the first respawn after a failure, when `-s` is shorter.
pub const BASE_BACKOFF: Duration = Duration::from_secs(1);

/// The state machine. See the [module documentation](self) for the rules.
#[derive(Debug)]
pub struct Machine {
    config: MachineConfig,
    target: usize,
    version: u64,
    workers: Vec<Worker>,
    next_spawn: u64,
    last_spawn: Option<Instant>,
    failures: u32,
    upgrade: Option<Upgrade>,
    phase: Phase,
    started: bool,
    actions: Vec<Action>,
}

impl Machine {
    /// A machine with no workers yet; [`Event::Start`] spawns the first ones.
    pub fn new(config: MachineConfig) -> Self {
        Machine {
            target: config.workers,
            config,
            version: 0,
            workers: Vec::new(),
            next_spawn: 0,
            last_spawn: None,
            failures: 0,
            upgrade: None,
            phase: Phase::Running,
            started: false,
            actions: Vec::new(),
        }
    }

    /// Feeds one event in at time `now`; returns what to do, in order.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        if self.phase == Phase::Done {
            return Vec::new();
        }
        match event {
            Event::Start => self.start(now),
            Event::Spawned { id, pid } => self.spawned(now, id, pid),
            Event::SpawnFailed { id, error } => self.spawn_failed(id, &error),
            Event::Exited { pid, status } => self.exited(pid, &status),
            Event::Request { conn, id, command } => self.request(now, conn, id, command),
            Event::Signal(signal) => self.master_signal(now, signal),
            Event::Tick => {}
        }
        self.converge(now);
        std::mem::take(&mut self.actions)
    }

    /// The earliest time at which [`Event::Tick`] has something to do, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.phase == Phase::Done {
            return None;
        }
        let mut deadlines = Vec::new();
        if let AckMode::Timer(after) = self.config.ack_mode {
            deadlines.extend(
                self.workers
                    .iter()
                    .filter(|w| w.pid.is_some() && !w.acked && w.retired.is_none())
                    .map(|w| w.spawned_at + after),
            );
        }
        if let Some(up) = &self.upgrade {
            deadlines.push(up.progress_at + self.config.upgrade_timeout);
        }
        if let Some(after) = self.config.signal_timeout {
            deadlines.extend(
                self.workers
                    .iter()
                    .filter(|w| w.pid.is_some() && !w.killed)
                    .filter_map(|w| w.retired.map(|(_, at)| at + after)),
            );
        }
        if self.phase == Phase::Running
            && self.started
            && self.wants_spawn()
            && let Some(ready) = self.spawn_ready_at()
        {
            deadlines.push(ready);
        }
        deadlines.into_iter().min()
    }

    /// The workers the machine knows about, in spawn order.
    pub fn workers(&self) -> impl Iterator<Item = WorkerView> + '_ {
        self.workers.iter().map(|w| WorkerView {
            pid: w.pid,
            index: w.index,
            version: w.version,
            acked: w.acked,
            retired: w.retired.map(|(s, _)| s),
        })
    }

    /// The current target number of workers.
    pub fn target(&self) -> usize {
        self.target
    }

    /// The current version (0 before the first upgrade).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether an upgrade is in progress.
    pub fn is_upgrading(&self) -> bool {
        self.upgrade.is_some()
    }

    /// Whether the master is stopping (no more spawns; exits once the workers are gone).
    pub fn is_stopping(&self) -> bool {
        matches!(self.phase, Phase::Stopping(_))
    }

    /// Whether [`Action::Exit`] has been issued.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The wait between spawns now: `-s`, or the failure backoff when workers keep dying before
    /// they ACK.
    pub fn spawn_interval(&self) -> Duration {
        let spacing = self.config.spawn_spacing;
        if self.failures == 0 {
            return spacing;
        }
        let base = spacing.max(BASE_BACKOFF).as_secs_f64();
        let exponent = i32::try_from(self.failures - 1).unwrap_or(i32::MAX).min(64);
        let backoff = (base * 1.5f64.powi(exponent)).min(MAX_BACKOFF.as_secs_f64());
        spacing.max(Duration::from_secs_f64(backoff))
    }

    // ----- events -----

    fn start(&mut self, now: Instant) {
        if self.started {
            return;
        }
        self.started = true;
        tracing::info!(
            "starting {} workers (version {})",
            self.target,
            self.version
        );
        // The first fill ignores `-s`, as Einhorn's does.
        for _ in 0..self.target {
            self.spawn(now);
        }
    }

    fn spawned(&mut self, now: Instant, id: SpawnId, pid: Pid) {
        let Some(i) = self.workers.iter().position(|w| w.spawn == id) else {
            tracing::warn!("spawn result for unknown request {id:?} (pid {pid})");
            return;
        };
        let worker = &mut self.workers[i];
        worker.pid = Some(pid);
        worker.spawned_at = now;
        let (index, version, retired) = (worker.index, worker.version, worker.retired);
        self.progress(format!(
            "===> Launched {pid} (index: {index}, version {version})"
        ));
        // Retired while its spawn was pending (the master began stopping): tell it now.
        if let Some((signal, _)) = retired {
            self.actions.push(Action::Signal { pid, signal });
        }
    }

    fn spawn_failed(&mut self, id: SpawnId, error: &str) {
        let Some(i) = self.workers.iter().position(|w| w.spawn == id) else {
            return;
        };
        let worker = self.workers.remove(i);
        if worker.retired.is_none() {
            self.failures += 1;
        }
        self.progress_level(
            tracing::Level::ERROR,
            format!("could not start worker (index {}): {error}", worker.index),
        );
    }

    fn exited(&mut self, pid: Pid, status: &str) {
        let Some(i) = self.workers.iter().position(|w| w.pid == Some(pid)) else {
            tracing::debug!("reaped {pid}, not a worker ({status})");
            return;
        };
        let worker = self.workers.remove(i);
        let note = if worker.retired.is_none() && !worker.acked {
            self.failures += 1;
            format!(" before it ACKed ({} consecutive failures)", self.failures)
        } else if worker.retired.is_none() {
            " unexpectedly".to_string()
        } else {
            String::new()
        };
        let level = if worker.retired.is_none() && self.phase == Phase::Running {
            tracing::Level::WARN
        } else {
            tracing::Level::INFO
        };
        self.progress_level(level, format!("===> Exited worker {pid}{note} ({status})"));
    }

    fn master_signal(&mut self, now: Instant, signal: MasterSignal) {
        match signal {
            MasterSignal::Hup => self.start_upgrade(now, false, None),
            MasterSignal::Usr2 | MasterSignal::Int => {
                self.stop(now, Signal::SIGUSR2);
            }
            MasterSignal::Term => {
                self.stop(now, Signal::SIGTERM);
            }
            MasterSignal::Quit => self.quit(),
        }
    }

    fn request(&mut self, now: Instant, conn: ConnId, id: Option<RequestId>, command: Command) {
        let reply = |message: String| Action::Reply {
            conn,
            reply: Reply::last(message, id.clone()),
        };
        match command {
            Command::Ehlo { user } => {
                let name = match &self.config.command_name {
                    Some(name) => format!(" ({name})"),
                    None => String::new(),
                };
                let message = format!(
                    "Welcome, {}! You are speaking to Einhorn Master Process {}{name}.\nThis is einhorn-master {}.\n",
                    user.as_deref().unwrap_or("friend"),
                    self.config.master_pid,
                    env!("CARGO_PKG_VERSION"),
                );
                self.actions.push(reply(message));
            }
            Command::Help => self.actions.push(reply(help_text())),
            Command::State => {
                let message = self.state_yaml(now);
                self.actions.push(reply(message));
            }
            Command::Config => {
                let message = self.config_yaml();
                self.actions.push(reply(message));
            }
            Command::Upgrade { fleet } => self.start_upgrade(now, fleet, Some((conn, id))),
            Command::Inc => {
                let old = self.target;
                self.target += 1;
                let message = format!(
                    "Incrementing number of workers from {old} -> {}",
                    self.target
                );
                tracing::info!("{message}");
                self.actions.push(reply(message));
            }
            Command::Dec => {
                if self.target <= 1 {
                    let message = format!(
                        "Can't decrease number of workers (already at {}). Run kill {} if you really want to kill einhorn.",
                        self.target, self.config.master_pid
                    );
                    self.actions.push(Action::Reply {
                        conn,
                        reply: Reply::failure(message, id),
                    });
                    return;
                }
                let old = self.target;
                self.target -= 1;
                let message = format!(
                    "Decrementing number of workers from {old} -> {}",
                    self.target
                );
                tracing::info!("{message}");
                self.actions.push(reply(message));
            }
            Command::SetWorkers(count) => {
                let old = self.target;
                let message = if count == old {
                    format!("Worker count is already {count}")
                } else {
                    self.target = count;
                    let what = if count > old {
                        "spin up additional workers."
                    } else {
                        "gracefully terminate workers."
                    };
                    format!("Altering worker count, {old} -> {count}. Will {what}")
                };
                tracing::info!("{message}");
                self.actions.push(reply(message));
            }
            Command::Signal(signals) => {
                let lines: Vec<String> = signals
                    .into_iter()
                    .map(|signal| {
                        let pids: Vec<Pid> = self.workers.iter().filter_map(|w| w.pid).collect();
                        for &pid in &pids {
                            self.actions.push(Action::Signal { pid, signal });
                        }
                        sent_message(signal, &pids)
                    })
                    .collect();
                self.actions.push(reply(lines.join("\n")));
            }
            Command::Die(signal) => {
                let pids = self.stop(now, signal);
                let message = format!("Einhorn is going down! {}", sent_message(signal, &pids));
                self.actions.push(reply(message));
            }
            Command::WorkerAck { pid } => {
                self.actions.push(Action::Close { conn });
                self.manual_ack(now, pid);
            }
            Command::WorkerPing { pid } => {
                self.actions.push(Action::Close { conn });
                match self.find(pid) {
                    Some(i) => self.workers[i].last_ping = Some(now),
                    None => tracing::warn!("ping from unknown pid {pid:?}"),
                }
            }
        }
    }

    // ----- commands and signals -----

    fn manual_ack(&mut self, now: Instant, pid: Option<i64>) {
        let Some(pid) = pid else {
            tracing::error!("invalid worker:ack (no pid)");
            return;
        };
        if let AckMode::Timer(_) = self.config.ack_mode {
            tracing::info!(
                "received a manual ACK from {pid}, but the ACK mode is {}; ignoring it",
                self.config.ack_mode
            );
            return;
        }
        match self.find(Some(pid)) {
            None => tracing::warn!("received an ACK from unknown pid {pid}"),
            Some(i) if self.workers[i].acked => {
                tracing::debug!("worker {pid} ACKed again; ignoring it");
            }
            Some(i) => self.ack(now, i),
        }
    }

    fn find(&self, pid: Option<i64>) -> Option<usize> {
        let pid = Pid::try_from(pid?).ok()?;
        self.workers.iter().position(|w| w.pid == Some(pid))
    }

    fn ack(&mut self, now: Instant, i: usize) {
        self.workers[i].acked = true;
        self.failures = 0;
        let worker = self.workers[i].clone();
        let pid = worker.pid.unwrap_or_default();
        let counts = worker.version == self.version && worker.retired.is_none();
        match &mut self.upgrade {
            Some(up) if counts => {
                up.progress_at = now;
                let acked = self.acked_count();
                self.progress(format!(
                    "Worker {pid} ACKed: up to {acked} / {} {} ACKs",
                    self.target, self.config.ack_mode
                ));
            }
            _ => tracing::info!("worker {pid} ACKed (index {})", worker.index),
        }
    }

    fn start_upgrade(&mut self, now: Instant, fleet: bool, requester: Option<Subscriber>) {
        let kind = if fleet { "fleet" } else { "smooth" };
        if self.phase != Phase::Running {
            let message = "Not upgrading: the master is stopping";
            tracing::warn!("{message}");
            if let Some((conn, id)) = requester {
                self.actions.push(Action::Reply {
                    conn,
                    reply: Reply::failure(message, id),
                });
            }
            return;
        }
        if let Some((conn, id)) = &requester {
            let message = if fleet {
                "Upgrading fleet, as commanded"
            } else {
                "Upgrading smoothly, as commanded"
            };
            self.actions.push(Action::Reply {
                conn: *conn,
                reply: Reply::more(message, id.clone()),
            });
        }
        let acked = self.acked_count();
        match &mut self.upgrade {
            Some(up) => {
                up.fleet = fleet;
                up.progress_at = now;
                up.subscribers.extend(requester);
                self.progress(format!(
                    "Currently upgrading ({acked} / {} ACKs; bumping version and starting over)...",
                    self.target
                ));
            }
            None => {
                self.upgrade = Some(Upgrade {
                    fleet,
                    progress_at: now,
                    subscribers: requester.into_iter().collect(),
                });
                self.progress(format!(
                    "Starting {kind} upgrade from version {}...",
                    self.version
                ));
            }
        }
        self.version += 1;
        self.failures = 0;
    }

    /// Retires every worker with `signal`, stops respawning, aborts an upgrade. Returns the pids
    /// signaled.
    fn stop(&mut self, now: Instant, signal: Signal) -> Vec<Pid> {
        if let Some(up) = self.upgrade.take() {
            self.finish(
                up,
                Reply::failure("Upgrade aborted: the master is stopping", None),
            );
        }
        if self.phase == Phase::Running {
            tracing::info!(
                "stopping: sending {} to every worker, exiting once they are gone",
                signal_name(signal)
            );
        }
        self.phase = Phase::Stopping(signal);
        let targets: Vec<usize> = (0..self.workers.len())
            .filter(|&i| self.workers[i].retired.map(|(s, _)| s) != Some(signal))
            .collect();
        self.retire(now, &targets, signal)
    }

    fn quit(&mut self) {
        if let Some(up) = self.upgrade.take() {
            self.finish(
                up,
                Reply::failure("Upgrade aborted: the master is quitting", None),
            );
        }
        tracing::info!("quitting: sending QUIT to every worker and exiting now");
        let pids: Vec<Pid> = self.workers.iter().filter_map(|w| w.pid).collect();
        for pid in pids {
            self.actions.push(Action::Signal {
                pid,
                signal: Signal::SIGQUIT,
            });
        }
        self.exit(0);
    }

    fn exit(&mut self, code: i32) {
        self.phase = Phase::Done;
        self.actions.push(Action::Exit { code });
    }

    // ----- convergence -----

    fn converge(&mut self, now: Instant) {
        if self.phase == Phase::Done {
            return;
        }
        self.timer_acks(now);
        self.check_upgrade_timeout(now);
        if self.phase == Phase::Running {
            self.cull(now);
        }
        self.escalate(now);
        if self.phase == Phase::Running && self.started {
            self.replenish(now);
        }
        if matches!(self.phase, Phase::Stopping(_)) && self.workers.is_empty() {
            tracing::info!("all workers are gone; exiting");
            self.exit(0);
        }
    }

    fn timer_acks(&mut self, now: Instant) {
        let AckMode::Timer(after) = self.config.ack_mode else {
            return;
        };
        for i in 0..self.workers.len() {
            let w = &self.workers[i];
            if w.pid.is_some() && !w.acked && w.retired.is_none() && now >= w.spawned_at + after {
                self.ack(now, i);
            }
        }
    }

    fn check_upgrade_timeout(&mut self, now: Instant) {
        let timeout = self.config.upgrade_timeout;
        let due = matches!(&self.upgrade, Some(up) if now >= up.progress_at + timeout);
        if !due {
            return;
        }
        let up = self.upgrade.take().expect("checked above");
        let unacked: Vec<usize> = (0..self.workers.len())
            .filter(|&i| {
                let w = &self.workers[i];
                w.version == self.version && w.retired.is_none() && !w.acked
            })
            .collect();
        let retired = self.retire(now, &unacked, Signal::SIGUSR2);
        // Whatever still serves is the pool now: no more old workers to replace.
        let mut serving = 0;
        for w in self.workers.iter_mut().filter(|w| w.retired.is_none()) {
            w.version = self.version;
            serving += 1;
        }
        let message = format!(
            "Upgrade failed: no new worker ACKed within {}s; {serving} workers keep serving, {} unACKed new workers were sent USR2 {retired:?}",
            timeout.as_secs_f64(),
            unacked.len(),
        );
        tracing::error!("{message}");
        self.finish(up, Reply::failure(message, None));
    }

    fn cull(&mut self, now: Instant) {
        let acked = self.acked_count();
        let mut finished = None;
        if self.upgrade.is_some() && acked >= self.target {
            finished = self.upgrade.take();
        }
        let old = self.live_old();
        match &self.upgrade {
            None if !old.is_empty() => {
                let message = format!("Killing off {} old workers.", old.len());
                self.notify(finished.as_ref(), message);
                let pids = self.retire(now, &old, Signal::SIGUSR2);
                self.notify(finished.as_ref(), sent_message(Signal::SIGUSR2, &pids));
            }
            Some(up) if !up.fleet => {
                let excess = (old.len() + acked).saturating_sub(self.target);
                if excess > 0 {
                    let take: Vec<usize> = old.into_iter().take(excess).collect();
                    self.progress(format!("Smooth upgrade: killing off {excess} old workers."));
                    let pids = self.retire(now, &take, Signal::SIGUSR2);
                    self.progress(sent_message(Signal::SIGUSR2, &pids));
                }
            }
            _ => {}
        }
        if let Some(up) = finished {
            self.notify(
                Some(&up),
                format!("Upgraded successfully to version {}.", self.version),
            );
            self.finish(up, Reply::last("Upgrade done", None));
        }
        let mut current: Vec<usize> = (0..self.workers.len())
            .filter(|&i| {
                let w = &self.workers[i];
                w.version == self.version && w.retired.is_none()
            })
            .collect();
        if current.len() > self.target {
            // Retire unACKed workers first, then the highest indexes.
            current.sort_by_key(|&i| {
                (
                    self.workers[i].acked,
                    std::cmp::Reverse(self.workers[i].index),
                )
            });
            let excess: Vec<usize> = current[..current.len() - self.target].to_vec();
            self.progress(format!(
                "Have too many workers at the current version, so killing off {} of them.",
                excess.len()
            ));
            let pids = self.retire(now, &excess, Signal::SIGUSR2);
            self.progress(sent_message(Signal::SIGUSR2, &pids));
        }
    }

    fn escalate(&mut self, now: Instant) {
        let Some(after) = self.config.signal_timeout else {
            return;
        };
        for w in &mut self.workers {
            let (Some(pid), Some((signal, at))) = (w.pid, w.retired) else {
                continue;
            };
            if !w.killed && now >= at + after {
                w.killed = true;
                tracing::warn!(
                    "worker {pid} is still alive {}s after {}; sending KILL",
                    after.as_secs_f64(),
                    signal_name(signal)
                );
                self.actions.push(Action::Signal {
                    pid,
                    signal: Signal::SIGKILL,
                });
            }
        }
    }

    fn replenish(&mut self, now: Instant) {
        // Bounded: each round spawns one worker and there are at most `target` missing.
        for _ in 0..=self.target {
            if !self.wants_spawn() {
                return;
            }
            if self.spawn_ready_at().is_some_and(|ready| now < ready) {
                return;
            }
            self.spawn(now);
        }
    }

    /// Whether a worker is missing and the pacing rules allow one more unACKed worker.
    fn wants_spawn(&self) -> bool {
        let current = self
            .workers
            .iter()
            .filter(|w| w.version == self.version && w.retired.is_none());
        let (count, unacked) = current.fold((0, 0), |(c, u), w| (c + 1, u + usize::from(!w.acked)));
        if count >= self.target {
            return false;
        }
        let max_unacked = match &self.upgrade {
            Some(up) if !up.fleet => 1,
            _ => usize::MAX,
        };
        unacked < max_unacked
    }

    fn spawn_ready_at(&self) -> Option<Instant> {
        self.last_spawn.map(|at| at + self.spawn_interval())
    }

    fn spawn(&mut self, now: Instant) {
        let id = SpawnId(self.next_spawn);
        self.next_spawn += 1;
        let mut index = 0;
        while self.workers.iter().any(|w| w.index == index) {
            index += 1;
        }
        self.workers.push(Worker {
            spawn: id,
            pid: None,
            index,
            version: self.version,
            spawned_at: now,
            acked: false,
            retired: None,
            killed: false,
            last_ping: None,
        });
        self.last_spawn = Some(now);
        self.actions.push(Action::Spawn { id, index });
    }

    // ----- helpers -----

    /// Current-version workers that ACKed and are not retired.
    fn acked_count(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| w.version == self.version && w.retired.is_none() && w.acked)
            .count()
    }

    /// Old workers not yet retired, oldest first.
    fn live_old(&self) -> Vec<usize> {
        let mut old: Vec<usize> = (0..self.workers.len())
            .filter(|&i| {
                let w = &self.workers[i];
                w.version < self.version && w.retired.is_none()
            })
            .collect();
        old.sort_by_key(|&i| (self.workers[i].version, self.workers[i].spawn));
        old
    }

    /// Sends `signal` to the given workers and records it (for `-t`). Returns the pids.
    fn retire(&mut self, now: Instant, which: &[usize], signal: Signal) -> Vec<Pid> {
        let mut pids = Vec::new();
        for &i in which {
            let w = &mut self.workers[i];
            if w.retired.is_none() {
                w.retired = Some((signal, now));
            } else if let Some((_, at)) = w.retired {
                w.retired = Some((signal, at));
            }
            if let Some(pid) = w.pid {
                pids.push(pid);
                self.actions.push(Action::Signal { pid, signal });
            }
        }
        pids
    }

    /// Logs a line and streams it to the upgrade's subscribers.
    fn progress(&mut self, message: String) {
        self.progress_level(tracing::Level::INFO, message);
    }

    fn progress_level(&mut self, level: tracing::Level, message: String) {
        match level {
            tracing::Level::ERROR => tracing::error!("{message}"),
            tracing::Level::WARN => tracing::warn!("{message}"),
            _ => tracing::info!("{message}"),
        }
        if let Some(up) = &self.upgrade {
            for (conn, id) in &up.subscribers {
                self.actions.push(Action::Reply {
                    conn: *conn,
                    reply: Reply::more(message.clone(), id.clone()),
                });
            }
        }
    }

    /// Streams a line to a finished upgrade's subscribers (or the running one's).
    fn notify(&mut self, finished: Option<&Upgrade>, message: String) {
        match finished {
            Some(up) => {
                tracing::info!("{message}");
                for (conn, id) in &up.subscribers {
                    self.actions.push(Action::Reply {
                        conn: *conn,
                        reply: Reply::more(message.clone(), id.clone()),
                    });
                }
            }
            None => self.progress(message),
        }
    }

    /// Sends an upgrade's final reply to each of its subscribers.
    fn finish(&mut self, up: Upgrade, last: Reply) {
        for (conn, id) in up.subscribers {
            self.actions.push(Action::Reply {
                conn,
                reply: Reply {
                    request_id: id,
                    ..last.clone()
                },
            });
        }
    }

    fn state_yaml(&self, now: Instant) -> String {
        let dump = MasterState {
            master_pid: self.config.master_pid,
            command_name: self.config.command_name.clone(),
            version: self.version,
            target_workers: self.target,
            ack_mode: self.config.ack_mode.to_string(),
            upgrading: self
                .upgrade
                .as_ref()
                .map(|up| if up.fleet { "fleet" } else { "smooth" }.to_string()),
            stopping: self.phase != Phase::Running,
            consecutive_failures: self.failures,
            listeners: self.config.listeners.clone(),
            workers: self
                .workers
                .iter()
                .map(|w| WorkerState {
                    pid: w.pid,
                    index: w.index,
                    version: w.version,
                    acked: w.acked,
                    retired: w.retired.map(|(s, _)| signal_name(s).to_string()),
                    age_seconds: now.saturating_duration_since(w.spawned_at).as_secs_f64(),
                    last_ping_seconds_ago: w
                        .last_ping
                        .map(|at| now.saturating_duration_since(at).as_secs_f64()),
                })
                .collect(),
        };
        serde_norway::to_string(&dump).unwrap_or_else(|e| format!("state unavailable: {e}"))
    }

    fn config_yaml(&self) -> String {
        #[derive(Serialize)]
        struct ConfigDump<'a> {
            command: &'a [String],
            workers: usize,
            ack_mode: String,
            spawn_spacing_seconds: f64,
            signal_timeout_seconds: Option<f64>,
            upgrade_timeout_seconds: f64,
            socket_path: &'a str,
            command_name: Option<&'a str>,
            listeners: &'a [ListenerInfo],
        }
        let c = &self.config;
        let dump = ConfigDump {
            command: &c.command,
            workers: self.target,
            ack_mode: c.ack_mode.to_string(),
            spawn_spacing_seconds: c.spawn_spacing.as_secs_f64(),
            signal_timeout_seconds: c.signal_timeout.map(|d| d.as_secs_f64()),
            upgrade_timeout_seconds: c.upgrade_timeout.as_secs_f64(),
            socket_path: &c.socket_path,
            command_name: c.command_name.as_deref(),
            listeners: &c.listeners,
        };
        serde_norway::to_string(&dump).unwrap_or_else(|e| format!("config unavailable: {e}"))
    }
}

/// Einhorn's report of a signal sent to workers.
fn sent_message(signal: Signal, pids: &[Pid]) -> String {
    format!(
        "Successfully sent {}s to {} processes: {pids:?}",
        signal_name(signal),
        pids.len()
    )
}

#[cfg(test)]
mod tests;
