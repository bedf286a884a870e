//! The master's worker-set and upgrade logic: a pure state machine.
//!
//! No processes, no sockets, no clock, no text. The driver feeds [`Event`]s in with the current
//! time, carries out the [`Action`]s that come out, writes the [`Log`]s of
//! [`Machine::take_logs`], and calls [`Machine::handle`] with [`Event::Tick`] when
//! [`Machine::next_deadline`] is reached. Everything that depends on time (timer ACKs, spawn
//! spacing and backoff, `-t` escalation, the upgrade timeout) is a deadline here, so tests step
//! time by hand. Replies and log lines are typed [`Message`]s and snapshots
//! ([`MasterState`]); [`crate::pure::render`] turns them into text.
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
//!   workers are retired, every worker still serving stays in the pool under its own version
//!   (the *base version* goes back to what it was before the upgrade), and the requester gets an
//!   error reply. New workers always get the newest version: they run whatever is at the
//!   command's path now.
//! - A worker that dies before it ACKs, without having been retired, counts as a consecutive
//!   failure: the next spawn waits `min(30 s, max(-s, 1 s) x 1.5^(failures - 1))`. An ACK resets
//!   the count.
//! - With a signal timeout, a retired worker still alive that long after its signal gets SIGKILL.
//! - A stop signal (or `die`) while already stopping sends the stop signal again to every
//!   worker still running, as Einhorn does; workers on graceful-listener take a second signal as
//!   "stop now".
//!
//! # Example
//! ```
//! use std::time::{Duration, Instant};
//! use einhorn_master::pure::machine::{Action, AckMode, Event, Machine, MachineConfig, SpawnId};
//!
//! let mut machine = Machine::new(MachineConfig {
//!     ack_mode: AckMode::Manual,
//!     ..MachineConfig::new(1)
//! });
//! let now = Instant::now();
//! let actions = machine.handle(now, Event::Start);
//! assert_eq!(actions, vec![Action::Spawn { id: SpawnId(0), index: 0, version: 0 }]);
//! assert!(machine.handle(now, Event::Spawned { id: SpawnId(0), pid: 100 }).is_empty());
//! ```

mod message;
mod snapshot;

use std::time::{Duration, Instant};

use graceful_listener::telemetry::LATENCY_BUCKETS;
use nix::sys::signal::Signal;

pub use self::message::{
    CanaryProgress, CountChange, ExitNote, Level, Log, Message, Response, Rollback, Sent,
    StateReport, UpgradeFailure,
};
pub use self::snapshot::{
    MachineSnapshot, ReexecSnapshot, SnapshotError, SubscriberSnapshot, UpgradeSnapshot,
    WorkerSnapshot,
};
pub use crate::pure::command::CanaryPlan;
use crate::pure::command::{Command, signal_name};
use crate::pure::state::{ConfigState, MasterState, WorkerState};
pub use crate::pure::state::{ListenerInfo, Pid};
use crate::pure::wire::RequestId;

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
    /// A worker that dies this soon after its ACK counts as a failed start, as one that dies
    /// before it (`--min-uptime`); one that stays up this long after its ACK ends the
    /// backoff.
    pub min_uptime: Duration,
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
    /// Whether the master can re-exec itself: then `upgrade`, `upgrade_fleet` and SIGHUP
    /// re-exec it first ([`Action::Reexec`]), and `reload` re-execs it alone.
    pub reexec: bool,
    /// At most this many new workers unACKed at once during a smooth upgrade
    /// (`--max-unacked`).
    pub max_unacked: usize,
    /// At most this many workers beyond the target during an upgrade, draining ones
    /// included (`--max-upgrade-additional`); `None`: no limit.
    pub max_upgrade_additional: Option<usize>,
    /// The canary of every upgrade that does not name its own (`--canary N --soak SECS`).
    pub canary: Option<CanaryPlan>,
    /// During an upgrade, a new worker counts in place of an old one (which is then retired)
    /// only once it has stayed up this long after its ACK (`--prove`); one that exits sooner
    /// rolls the upgrade back. Zero: at its ACK.
    pub prove: Duration,
    /// Responses the canaries must have answered by the soak's end for a verdict
    /// (`--canary-min-responses`): fewer roll the upgrade back ("too few to judge"); 0 lets
    /// a canary pass on its exits alone.
    pub canary_min_responses: u64,
}

impl MachineConfig {
    /// A configuration for `workers` workers with Einhorn's defaults: timer ACK of 1 s, no
    /// spacing, no signal timeout; and ours: a 60 s upgrade timeout, a
    /// [`DEFAULT_MIN_UPTIME`].
    pub fn new(workers: usize) -> Self {
        MachineConfig {
            workers,
            ack_mode: AckMode::Timer(Duration::from_secs(1)),
            spawn_spacing: Duration::ZERO,
            signal_timeout: None,
            upgrade_timeout: Duration::from_secs(60),
            min_uptime: DEFAULT_MIN_UPTIME,
            master_pid: 0,
            command_name: None,
            socket_path: String::new(),
            command: Vec::new(),
            listeners: Vec::new(),
            reexec: false,
            max_unacked: 1,
            max_upgrade_additional: None,
            canary: None,
            canary_min_responses: CANARY_MIN_RESPONSES,
            prove: Duration::ZERO,
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

impl MasterSignal {
    /// The signal itself.
    ///
    /// ```
    /// use einhorn_master::pure::machine::MasterSignal;
    /// assert_eq!(MasterSignal::Term.signal(), nix::sys::signal::Signal::SIGTERM);
    /// ```
    pub fn signal(self) -> Signal {
        match self {
            MasterSignal::Hup => Signal::SIGHUP,
            MasterSignal::Usr2 => Signal::SIGUSR2,
            MasterSignal::Int => Signal::SIGINT,
            MasterSignal::Term => Signal::SIGTERM,
            MasterSignal::Quit => Signal::SIGQUIT,
        }
    }
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
    /// The re-exec asked for by [`Action::Reexec`] could not happen: the new program failed
    /// its check, or the exec failed. Everything goes on as it was.
    ReexecFailed {
        /// Why, for the log and the requesters.
        reason: String,
    },
    /// This master was just exec'd in place of the one that asked for [`Action::Reexec`],
    /// and resumed from its snapshot: finish what the re-exec was for.
    Resumed,
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
        /// The worker's version: the build to start is the one this version's first worker
        /// ran (after a failed upgrade, the last good one), not whatever is at the program's
        /// path now.
        version: u64,
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
        /// The reply, as data ([`crate::pure::render::reply`] makes the wire line).
        reply: Response,
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
    /// Check the new program, then exec it in place of this master, handing over a
    /// [snapshot](Machine::snapshot) taken then; report [`Event::ReexecFailed`] if it cannot
    /// be done. The snapshot says what to do once the new master runs ([`Event::Resumed`]).
    Reexec,
    /// A re-exec asked for is no longer wanted (the master is stopping): give it up, and do
    /// not report back.
    CancelReexec,
    /// Set the master's log level: `offset` steps from `info`, up (`> 0`: debug, trace) or
    /// down (`< 0`: warn, error, off), as `-v` and `-q` count them.
    SetLogLevel {
        /// Steps from `info`.
        offset: i8,
    },
}

/// What the machine knows about one worker, as [`Machine::workers`] shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerView {
    /// Its spawn request: workers started later have higher ones.
    pub spawn: SpawnId,
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
    /// When it ACKed.
    acked_at: Option<Instant>,
    retired: Option<(Signal, Instant)>,
    killed: bool,
    last_ping: Option<Instant>,
    /// Its responses so far by status class, as it last reported them (`worker:stats`).
    responses: [u64; 5],
    /// Up for [`MachineConfig::prove`] since its ACK: it counts in an old worker's place.
    proven: bool,
    /// Its response times so far by bucket, as it last reported them.
    latency: [u64; LATENCY_BUCKETS],
}

impl Worker {
    fn acked(&self) -> bool {
        self.acked_at.is_some()
    }
}

type Subscriber = (ConnId, Option<RequestId>);

/// A re-exec of the master asked for and not carried out yet.
#[derive(Clone, Debug, Default)]
struct Reexec {
    /// Upgrade the workers once the new master runs.
    upgrade: Option<UpgradeOrder>,
    /// Who asked for that upgrade: they get its replies.
    upgraders: Vec<Subscriber>,
    /// Who asked for a reload of the master alone.
    reloaders: Vec<Subscriber>,
}

/// A canary upgrade's progress.
#[derive(Clone, Debug)]
struct Canary {
    plan: CanaryPlan,
    /// Since when every canary has ACKed, with the old generation's counts then.
    soaking: Option<(Instant, [u64; 5])>,
    /// The old generation's response times when the soak began.
    old_latency_then: [u64; LATENCY_BUCKETS],
}

/// What an upgrade request asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct UpgradeOrder {
    fleet: bool,
    canary: Option<CanaryPlan>,
}

#[derive(Clone, Debug)]
struct Upgrade {
    fleet: bool,
    /// Until the canaries have soaked and passed.
    canary: Option<Canary>,
    /// The base version before this upgrade (or the first of a chain of restarted ones): what
    /// counts as current again if it fails.
    base: u64,
    /// Start of the upgrade, or the last new ACK.
    progress_at: Instant,
    subscribers: Vec<Subscriber>,
    /// The version serving before it (the last good build): what later workers run if it
    /// fails.
    good: u64,
    /// New workers that exited before their ACK since the last new ACK: at
    /// [`UPGRADE_MAX_FAILED_STARTS`] the upgrade fails.
    failed_starts: u32,
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
/// By default, a canary generation needs at least this many responses before its 5xx share
/// is compared, and by the soak's end for a verdict at all
/// ([`MachineConfig::canary_min_responses`]).
pub const CANARY_MIN_RESPONSES: u64 = 20;
/// The faults `state` lists, at most (the newest).
pub const MAX_FAULTS: usize = 16;

/// A canary generation is rolled back when the 99th percentile of its response times is at
/// least this many times the old generation's over the soak...
pub const CANARY_SLOW_FACTOR: u64 = 4;
/// ... and at least this many milliseconds above it (both measured to a power of two).
pub const CANARY_SLOW_MARGIN_MS: u64 = 100;

/// How long a new worker must stay up after its ACK before it replaces an old one during an
/// upgrade, by default (`--prove`).
pub const DEFAULT_PROVE: Duration = Duration::from_secs(1);

/// An upgrade fails once this many of its new workers in a row exit before their ACK (a
/// warm-up that fails, a build that crashes at start): the old workers serve on, and the
/// operator hears of it in seconds rather than at the upgrade timeout.
pub const UPGRADE_MAX_FAILED_STARTS: u32 = 3;

/// A canary generation is rolled back when its share of 5xx responses exceeds the old
/// generation's (over the soak) by more than this, in points of share (0.05: 5 percentage
/// points, e.g. 6% against 0.5%).
pub const CANARY_MAX_5XX_EXCESS: f64 = 0.05;

/// The quietest log level offset: off.
pub const MIN_VERBOSITY: i8 = -3;
/// The loudest log level offset: trace.
pub const MAX_VERBOSITY: i8 = 2;

/// How long after its ACK a worker must stay up before its death stops counting as a failed
/// start (`--min-uptime`).
pub const DEFAULT_MIN_UPTIME: Duration = Duration::from_secs(10);

/// The state machine. See the [module documentation](self) for the rules.
#[derive(Debug)]
pub struct Machine {
    config: MachineConfig,
    target: usize,
    version: u64,
    /// Workers of this version or newer are current; see [`Machine::base_version`].
    base: u64,
    workers: Vec<Worker>,
    next_spawn: u64,
    last_spawn: Option<Instant>,
    failures: u32,
    /// When the last failure counted in `failures` happened: only a worker started after it
    /// can end the backoff by staying up.
    last_failure: Option<Instant>,
    upgrade: Option<Upgrade>,
    reexec: Option<Reexec>,
    /// Upgrade and reload requests accepted so far (restarts included): what systemd is told
    /// about (each gets `RELOADING=1`). Not bumped by an upgrade resumed after a re-exec.
    requests: u64,
    /// Log level offset from `info` (`-v` minus `-q`, then `louder` and `quieter`).
    verbosity: i8,
    /// A manual ACK in timer mode was already warned about.
    warned_ack_mode: bool,
    /// Responses by status class of every version that had workers, as they reported them
    /// (`worker:stats`): cumulative, workers that exited included.
    generations: std::collections::BTreeMap<u64, [u64; 5]>,
    /// Response times by bucket of every version, as its workers reported them.
    generation_latency: std::collections::BTreeMap<u64, [u64; LATENCY_BUCKETS]>,
    /// Why the last canary upgrade was rolled back.
    last_rollback: Option<Rollback>,
    /// After an upgrade failed or was rolled back: the last good version, whose build every
    /// later worker runs until an upgrade succeeds.
    pinned: Option<u64>,
    /// Faults the master lives with (after an exec: a program gone, a file it cannot write,
    /// a listener it could not bind), the last [`MAX_FAULTS`], for `state`.
    faults: Vec<String>,
    phase: Phase,
    started: bool,
    actions: Vec<Action>,
    logs: Vec<Log>,
}

impl Machine {
    /// A machine with no workers yet; [`Event::Start`] spawns the first ones.
    pub fn new(config: MachineConfig) -> Self {
        Machine {
            target: config.workers,
            config,
            version: 0,
            base: 0,
            workers: Vec::new(),
            next_spawn: 0,
            last_spawn: None,
            failures: 0,
            last_failure: None,
            upgrade: None,
            reexec: None,
            requests: 0,
            verbosity: 0,
            warned_ack_mode: false,
            generations: Default::default(),
            generation_latency: Default::default(),
            last_rollback: None,
            pinned: None,
            faults: Vec::new(),
            phase: Phase::Running,
            started: false,
            actions: Vec::new(),
            logs: Vec::new(),
        }
    }

    /// The log lines produced since the last call, in order. Logs are not [`Action`]s: nothing
    /// depends on them being written.
    pub fn take_logs(&mut self) -> Vec<Log> {
        std::mem::take(&mut self.logs)
    }

    /// Feeds one event in at time `now`; returns what to do, in order.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        if self.phase == Phase::Done {
            return Vec::new();
        }
        match event {
            Event::Start => self.start(now),
            Event::Spawned { id, pid } => self.spawned(now, id, pid),
            Event::SpawnFailed { id, error } => self.spawn_failed(now, id, &error),
            Event::Exited { pid, status } => self.exited(now, pid, &status),
            Event::Request { conn, id, command } => self.request(now, conn, id, command),
            Event::Signal(signal) => self.master_signal(now, signal),
            Event::Tick => {}
            Event::ReexecFailed { reason } => self.reexec_failed(&reason),
            Event::Resumed => self.resumed(now),
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
                    .filter(|w| w.pid.is_some() && !w.acked() && w.retired.is_none())
                    .map(|w| w.spawned_at + after),
            );
        }
        if let Some(up) = &self.upgrade {
            deadlines.push(up.progress_at + self.config.upgrade_timeout);
            // New workers that will have proved themselves.
            let prove = self.config.prove;
            deadlines.extend(
                self.workers
                    .iter()
                    .filter(|w| !w.proven && w.retired.is_none())
                    .filter_map(|w| w.acked_at)
                    .map(|at| at + prove),
            );
        }
        deadlines.extend(self.backoff_ends_at());
        deadlines.extend(self.soak_ends_at());
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
            spawn: w.spawn,
            pid: w.pid,
            index: w.index,
            version: w.version,
            acked: w.acked(),
            retired: w.retired.map(|(s, _)| s),
        })
    }

    /// The current target number of workers.
    pub fn target(&self) -> usize {
        self.target
    }

    /// The current version (0 before the first upgrade): the version new workers get.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The oldest version that counts as current: workers of this version or newer make up the
    /// pool. Equal to [`version`](Self::version), except after a failed upgrade, when the old
    /// workers that kept serving keep their own version.
    pub fn base_version(&self) -> u64 {
        self.base
    }

    /// Each version's responses by status class, as its workers reported them
    /// (`worker:stats`): cumulative, workers that exited included.
    pub fn generation_responses(&self) -> impl Iterator<Item = (u64, [u64; 5])> + '_ {
        self.generations.iter().map(|(&v, &r)| (v, r))
    }

    /// Whether an upgrade is in progress, or a re-exec of the master asked for.
    pub fn is_upgrading(&self) -> bool {
        self.upgrade.is_some() || self.reexec.is_some()
    }

    /// Whether an upgrade of the workers runs (not only a re-exec asked for).
    pub fn upgrade_running(&self) -> bool {
        self.upgrade.is_some()
    }

    /// Upgrade and reload requests accepted so far: a new one is something to tell systemd
    /// (`RELOADING=1`).
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// The log level offset from `info` (`-v` minus `-q`, then `louder` and `quieter`).
    pub fn verbosity(&self) -> i8 {
        self.verbosity
    }

    /// Sets the log level offset (from `-v` and `-q`, at start).
    pub fn set_verbosity(&mut self, offset: i8) {
        self.verbosity = offset.clamp(MIN_VERBOSITY, MAX_VERBOSITY);
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
        self.log(
            Level::Info,
            Message::Starting {
                workers: self.target,
                version: self.version,
            },
        );
        // The first fill ignores `-s`, as Einhorn's does.
        for _ in 0..self.target {
            self.spawn(now);
        }
    }

    fn spawned(&mut self, now: Instant, id: SpawnId, pid: Pid) {
        let Some(i) = self.workers.iter().position(|w| w.spawn == id) else {
            self.log(Level::Warn, Message::UnknownSpawn { id, pid });
            return;
        };
        let worker = &mut self.workers[i];
        worker.pid = Some(pid);
        worker.spawned_at = now;
        let (index, version, retired) = (worker.index, worker.version, worker.retired);
        self.progress(Message::Launched {
            pid,
            index,
            version,
        });
        // Retired while its spawn was pending (the master began stopping): tell it now.
        if let Some((signal, _)) = retired {
            self.actions.push(Action::Signal { pid, signal });
        }
    }

    fn spawn_failed(&mut self, now: Instant, id: SpawnId, error: &str) {
        let Some(i) = self.workers.iter().position(|w| w.spawn == id) else {
            return;
        };
        let worker = self.workers.remove(i);
        if worker.retired.is_none() {
            self.failed(now);
        }
        self.progress_level(
            Level::Error,
            Message::SpawnFailed {
                index: worker.index,
                error: error.to_string(),
            },
        );
    }

    fn exited(&mut self, now: Instant, pid: Pid, status: &str) {
        let Some(i) = self.workers.iter().position(|w| w.pid == Some(pid)) else {
            self.log(
                Level::Debug,
                Message::ReapedStranger {
                    pid,
                    status: status.to_string(),
                },
            );
            return;
        };
        let worker = self.workers.remove(i);
        let note = match (worker.retired, worker.acked_at) {
            (Some(_), _) => ExitNote::Retired,
            (None, None) => {
                self.failed(now);
                if let Some(up) = &mut self.upgrade
                    && worker.version > up.base
                {
                    up.failed_starts += 1;
                }
                ExitNote::BeforeAck {
                    failures: self.failures,
                }
            }
            (None, Some(at)) if now < at + self.config.min_uptime => {
                self.failed(now);
                ExitNote::SoonAfterAck {
                    after: now.saturating_duration_since(at),
                    failures: self.failures,
                }
            }
            (None, Some(_)) => ExitNote::Unexpected,
        };
        let canary_died = worker.retired.is_none()
            && worker.version == self.version
            && self.upgrade.as_ref().is_some_and(|up| up.canary.is_some());
        // A new worker of a plain upgrade dying soon after its ACK: the build is bad.
        let new_died_after_ack = worker.retired.is_none()
            && worker.version == self.version
            && self.upgrade.is_some()
            && !canary_died
            && matches!(note, ExitNote::SoonAfterAck { .. });
        let level = if worker.retired.is_none() && self.phase == Phase::Running {
            Level::Warn
        } else {
            Level::Info
        };
        self.progress_level(
            level,
            Message::Exited {
                pid,
                note,
                status: status.to_string(),
            },
        );
        if canary_died {
            let status = status.to_string();
            self.roll_back(now, Rollback::Exited { pid, status });
        } else if new_died_after_ack {
            let after = worker
                .acked_at
                .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
            let status = status.to_string();
            self.roll_back(now, Rollback::ExitedAfterAck { pid, status, after });
        } else if self
            .upgrade
            .as_ref()
            .is_some_and(|up| up.failed_starts >= UPGRADE_MAX_FAILED_STARTS)
        {
            let cause = UpgradeFailure::FailedStarts {
                starts: UPGRADE_MAX_FAILED_STARTS,
                pid,
                status: status.to_string(),
            };
            self.fail_upgrade(now, cause);
        }
    }

    fn master_signal(&mut self, now: Instant, signal: MasterSignal) {
        match signal {
            MasterSignal::Hup => {
                let order = UpgradeOrder {
                    fleet: false,
                    canary: self.config.canary,
                };
                self.upgrade_requested(now, order, None);
            }
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
        let reply = |message: Message| Action::Reply {
            conn,
            reply: Response::last(message, id.clone()),
        };
        match command {
            Command::Ehlo { user } => {
                self.actions.push(reply(Message::Welcome {
                    user,
                    master_pid: self.config.master_pid,
                    command_name: self.config.command_name.clone(),
                }));
            }
            Command::Help => self.actions.push(reply(Message::Help)),
            Command::State => {
                let report = self.state(now);
                self.actions.push(reply(Message::State(Box::new(report))));
            }
            Command::Config => {
                let config = self.config_state();
                self.actions.push(reply(Message::Config(Box::new(config))));
            }
            Command::Upgrade { fleet, canary } => {
                let canary = canary.or(self.config.canary);
                self.upgrade_requested(now, UpgradeOrder { fleet, canary }, Some((conn, id)));
            }
            Command::WorkerStats {
                pid,
                responses,
                latency,
            } => {
                self.worker_stats(now, pid, responses, latency.map(|l| *l));
                // A worker that understands `worker:shed` reads this answer; others ignore it.
                let shed = self.shed_for(pid);
                self.actions.push(reply(Message::StatsAnswer { shed }));
                self.actions.push(Action::Close { conn });
            }
            Command::Reload => self.reload_requested((conn, id)),
            Command::Quieter | Command::Louder => {
                let step = if command == Command::Louder { 1 } else { -1 };
                self.set_verbosity(self.verbosity.saturating_add(step));
                self.actions.push(Action::SetLogLevel {
                    offset: self.verbosity,
                });
                let message = Message::Verbosity {
                    offset: self.verbosity,
                };
                self.log(Level::Info, message.clone());
                self.actions.push(reply(message));
            }
            Command::Inc => {
                let from = self.target;
                self.target += 1;
                self.count_changed(conn, id, CountChange::Inc, from);
            }
            Command::Dec => {
                if self.target <= 1 {
                    let message = Message::CannotDecrease {
                        target: self.target,
                        master_pid: self.config.master_pid,
                    };
                    self.actions.push(Action::Reply {
                        conn,
                        reply: Response::failure(message, id),
                    });
                    return;
                }
                let from = self.target;
                self.target -= 1;
                self.count_changed(conn, id, CountChange::Dec, from);
            }
            Command::SetWorkers(count) => {
                if count == self.target {
                    self.log(Level::Info, Message::WorkersUnchanged { count });
                    self.actions
                        .push(reply(Message::WorkersUnchanged { count }));
                } else {
                    let from = self.target;
                    self.target = count;
                    self.count_changed(conn, id, CountChange::Set, from);
                }
            }
            Command::Signal(signals) => {
                let sent: Vec<Sent> = signals
                    .into_iter()
                    .map(|signal| {
                        let pids: Vec<Pid> = self.workers.iter().filter_map(|w| w.pid).collect();
                        for &pid in &pids {
                            self.actions.push(Action::Signal { pid, signal });
                        }
                        Sent { signal, pids }
                    })
                    .collect();
                self.actions.push(reply(Message::SignalsSent(sent)));
            }
            Command::Die(signal) => {
                let pids = self.stop(now, signal);
                self.actions
                    .push(reply(Message::GoingDown(Sent { signal, pids })));
            }
            Command::WorkerAck { pid } => {
                self.actions.push(Action::Close { conn });
                self.manual_ack(now, pid);
            }
            Command::WorkerPing { pid } => {
                self.actions.push(Action::Close { conn });
                match self.find(pid) {
                    Some(i) => self.workers[i].last_ping = Some(now),
                    None => self.log(Level::Warn, Message::PingFromUnknown { pid }),
                }
            }
        }
    }

    /// Logs and answers a change of the target count.
    fn count_changed(
        &mut self,
        conn: ConnId,
        id: Option<RequestId>,
        change: CountChange,
        from: usize,
    ) {
        let message = Message::WorkersChanged {
            change,
            from,
            to: self.target,
        };
        self.log(Level::Info, message.clone());
        self.actions.push(Action::Reply {
            conn,
            reply: Response::last(message, id),
        });
    }

    // ----- commands and signals -----

    fn manual_ack(&mut self, now: Instant, pid: Option<i64>) {
        let Some(pid) = pid else {
            self.log(Level::Error, Message::AckWithoutPid);
            return;
        };
        if let AckMode::Timer(_) = self.config.ack_mode {
            let ack_mode = self.config.ack_mode;
            // Once a warning (a forgotten `-m manual`), then quietly.
            let level = if self.warned_ack_mode {
                Level::Debug
            } else {
                Level::Warn
            };
            self.warned_ack_mode = true;
            self.log(level, Message::AckIgnored { pid, ack_mode });
            return;
        }
        match self.find(Some(pid)) {
            None => self.log(Level::Warn, Message::AckFromUnknown { pid }),
            Some(i) if self.workers[i].acked() => {
                self.log(Level::Debug, Message::AckedAgain { pid });
            }
            Some(i) => self.ack(now, i),
        }
    }

    fn find(&self, pid: Option<i64>) -> Option<usize> {
        let pid = Pid::try_from(pid?).ok()?;
        self.workers.iter().position(|w| w.pid == Some(pid))
    }

    fn ack(&mut self, now: Instant, i: usize) {
        self.workers[i].acked_at = Some(now);
        let worker = self.workers[i].clone();
        let pid = worker.pid.unwrap_or_default();
        let counts = self.is_current(&worker) && worker.retired.is_none();
        match &mut self.upgrade {
            Some(up) if counts => {
                up.progress_at = now;
                up.failed_starts = 0;
                let acked = self.acked_count();
                self.progress(Message::AckProgress {
                    pid,
                    acked,
                    target: self.target,
                    ack_mode: self.config.ack_mode,
                });
            }
            _ => self.log(
                Level::Info,
                Message::Acked {
                    pid,
                    index: worker.index,
                },
            ),
        }
    }

    /// `upgrade`, `upgrade_fleet` or SIGHUP: re-exec the master first when it can, then
    /// upgrade the workers.
    fn upgrade_requested(
        &mut self,
        now: Instant,
        order: UpgradeOrder,
        requester: Option<Subscriber>,
    ) {
        let fleet = order.fleet;
        if self.phase != Phase::Running {
            self.log(Level::Warn, Message::UpgradeRefused);
            if let Some((conn, id)) = requester {
                self.actions.push(Action::Reply {
                    conn,
                    reply: Response::failure(Message::UpgradeRefused, id),
                });
            }
            return;
        }
        if let Some((conn, id)) = &requester {
            self.actions.push(Action::Reply {
                conn: *conn,
                reply: Response::more(Message::UpgradeAccepted { fleet }, id.clone()),
            });
        }
        self.requests += 1;
        if !self.config.reexec {
            self.start_upgrade(now, order, requester.into_iter().collect());
            return;
        }
        let reexec = self.ask_reexec();
        reexec.upgrade = Some(order);
        reexec.upgraders.extend(requester);
    }

    /// `reload`: re-exec the master alone.
    fn reload_requested(&mut self, requester: Subscriber) {
        let (conn, id) = requester.clone();
        let refusal = if self.phase != Phase::Running {
            Some(Message::ReloadRefused { stopping: true })
        } else if !self.config.reexec {
            Some(Message::ReloadRefused { stopping: false })
        } else {
            None
        };
        if let Some(message) = refusal {
            self.log(Level::Warn, message.clone());
            self.actions.push(Action::Reply {
                conn,
                reply: Response::failure(message, id),
            });
            return;
        }
        self.actions.push(Action::Reply {
            conn,
            reply: Response::more(Message::ReloadAccepted, id),
        });
        self.requests += 1;
        self.ask_reexec().reloaders.push(requester);
    }

    /// The pending re-exec, asked for now if it was not yet.
    fn ask_reexec(&mut self) -> &mut Reexec {
        if self.reexec.is_none() {
            self.log(Level::Info, Message::Reexecing);
            self.actions.push(Action::Reexec);
        }
        self.reexec.get_or_insert_with(Reexec::default)
    }

    fn reexec_failed(&mut self, reason: &str) {
        let Some(reexec) = self.reexec.take() else {
            return;
        };
        let message = Message::ReexecFailed {
            reason: reason.to_string(),
            upgrade: reexec.upgrade.is_some(),
        };
        self.log(Level::Error, message.clone());
        for (conn, id) in reexec.upgraders.into_iter().chain(reexec.reloaders) {
            self.actions.push(Action::Reply {
                conn,
                reply: Response::failure(message.clone(), id),
            });
        }
    }

    /// In the new master: the re-exec is done; answer the reloads, start the upgrade.
    fn resumed(&mut self, now: Instant) {
        let Some(reexec) = self.reexec.take() else {
            return;
        };
        let message = Message::Reexeced {
            master_pid: self.config.master_pid,
        };
        self.log(Level::Info, message.clone());
        for (conn, id) in reexec.reloaders {
            self.actions.push(Action::Reply {
                conn,
                reply: Response::last(message.clone(), id),
            });
        }
        if let Some(order) = reexec.upgrade {
            for (conn, id) in &reexec.upgraders {
                self.actions.push(Action::Reply {
                    conn: *conn,
                    reply: Response::more(message.clone(), id.clone()),
                });
            }
            if self.phase == Phase::Running {
                self.start_upgrade(now, order, reexec.upgraders);
            }
        }
    }

    fn start_upgrade(&mut self, now: Instant, order: UpgradeOrder, requesters: Vec<Subscriber>) {
        let acked = self.acked_count();
        let asked = order.canary.as_ref().map(|plan| plan.workers);
        // A canary is at most the whole generation; it makes the upgrade smooth.
        let canary = order.canary.map(|plan| Canary {
            plan: CanaryPlan {
                workers: plan.workers.min(self.target).max(1),
                ..plan
            },
            soaking: None,
            old_latency_then: [0; LATENCY_BUCKETS],
        });
        let fleet = order.fleet && canary.is_none();
        match &mut self.upgrade {
            Some(up) => {
                up.fleet = fleet;
                up.canary = canary.clone();
                up.progress_at = now;
                up.subscribers.extend(requesters);
                self.progress(Message::UpgradeRestarting {
                    acked,
                    target: self.target,
                });
            }
            None => {
                self.upgrade = Some(Upgrade {
                    fleet,
                    canary: canary.clone(),
                    base: self.base,
                    progress_at: now,
                    subscribers: requesters,
                    good: self.pinned.unwrap_or(self.version),
                    failed_starts: 0,
                });
                self.progress(Message::UpgradeStarting {
                    fleet,
                    from_version: self.version,
                });
            }
        }
        self.version += 1;
        self.base = self.version;
        self.failures = 0;
        if let Some(c) = canary {
            if let Some(asked) = asked.filter(|&asked| asked > c.plan.workers) {
                let workers = c.plan.workers;
                self.progress_level(Level::Warn, Message::CanaryClamped { asked, workers });
            }
            self.progress(Message::CanaryStarting {
                workers: c.plan.workers,
                soak: c.plan.soak,
            });
        }
    }

    // ----- canaries -----

    /// A worker's response counts (`worker:stats`); during a soak, the canaries' are
    /// compared with the old workers'.
    fn worker_stats(
        &mut self,
        now: Instant,
        pid: i64,
        responses: [u64; 5],
        latency: Option<[u64; LATENCY_BUCKETS]>,
    ) {
        let Some(i) = self.find(Some(pid)) else {
            self.log(Level::Debug, Message::StatsFromUnknown { pid });
            return;
        };
        let worker = &mut self.workers[i];
        // Cumulative: only growth counts (a count going down is a confused sender).
        let grow = |totals: &mut [u64], last: &mut [u64], now: &[u64]| {
            for ((total, last), count) in totals.iter_mut().zip(last.iter_mut()).zip(now) {
                *total += count.saturating_sub(*last);
                *last = (*last).max(*count);
            }
        };
        let totals = self.generations.entry(worker.version).or_default();
        grow(totals, &mut worker.responses, &responses);
        if let Some(latency) = latency {
            let totals = self.generation_latency.entry(worker.version).or_default();
            grow(totals, &mut worker.latency, &latency);
        }
        self.judge_canary(now, false);
    }

    /// During a soak, the share (thousandths) of its keep-alive connections old worker
    /// `pid` should end, so that their clients reconnect and some reach the canaries: the
    /// canaries' share of the serving workers, until they have answered enough for a verdict
    /// and at least half their share of the responses. `None` for anyone else, or once that
    /// holds.
    fn shed_for(&self, pid: i64) -> Option<u64> {
        let up = self.upgrade.as_ref()?;
        up.canary.as_ref()?.soaking?;
        let worker = self
            .workers
            .iter()
            .find(|w| w.pid.map(i64::from) == Some(pid))?;
        if worker.version >= self.version || worker.retired.is_some() {
            return None;
        }
        let serving = |new: bool| {
            self.workers
                .iter()
                .filter(|w| (w.version == self.version) == new && w.acked() && w.retired.is_none())
                .count() as u64
        };
        let (canaries, old) = (serving(true), serving(false));
        if canaries == 0 || old == 0 {
            return None;
        }
        let share = canaries * 1000 / (canaries + old);
        let ((new_responses, _), (old_responses, _)) = self.soak_counts()?;
        let enough = new_responses >= self.config.canary_min_responses.max(1);
        let served_share = new_responses * 1000 * 2 >= share * (new_responses + old_responses);
        (!(enough && served_share)).then_some(share)
    }

    /// Responses and 5xx among them: the canaries' (the newest version's) and the other
    /// workers' since the soak began; `None` outside a soak.
    fn soak_counts(&self) -> Option<((u64, u64), (u64, u64))> {
        let up = self.upgrade.as_ref()?;
        let (_, old_then) = up.canary.as_ref()?.soaking?;
        let mut new = [0u64; 5];
        let mut old = [0u64; 5];
        for (&version, counts) in &self.generations {
            let into = if version == self.version {
                &mut new
            } else {
                &mut old
            };
            for class in 0..5 {
                into[class] += counts[class];
            }
        }
        let sum = |c: &[u64; 5]| c.iter().sum::<u64>();
        let old_since: [u64; 5] = std::array::from_fn(|c| old[c].saturating_sub(old_then[c]));
        Some(((sum(&new), new[4]), (sum(&old_since), old_since[4])))
    }

    /// The response times of every version but the newest (the canaries'), now.
    fn old_latency(&self) -> [u64; LATENCY_BUCKETS] {
        let mut old = [0u64; LATENCY_BUCKETS];
        for times in self
            .generation_latency
            .range(..self.version)
            .map(|(_, t)| t)
        {
            for (sum, count) in old.iter_mut().zip(times) {
                *sum += count;
            }
        }
        old
    }

    /// The 99th percentiles, in milliseconds, of the canaries' response times and of the old
    /// workers' since the soak began; `None` until both have some.
    fn soak_p99s(&self) -> Option<(u64, u64)> {
        let canary = self.upgrade.as_ref()?.canary.as_ref()?;
        canary.soaking?;
        let new = self.generation_latency.get(&self.version)?;
        let now = self.old_latency();
        let old: [u64; LATENCY_BUCKETS] =
            std::array::from_fn(|b| now[b].saturating_sub(canary.old_latency_then[b]));
        Some((
            graceful_listener::telemetry::p99_ms(new)?,
            graceful_listener::telemetry::p99_ms(&old)?,
        ))
    }

    /// The counts of every version but the newest (the canaries'), now.
    fn old_counts(&self) -> [u64; 5] {
        let mut old = [0u64; 5];
        for counts in self.generations.range(..self.version).map(|(_, c)| c) {
            for class in 0..5 {
                old[class] += counts[class];
            }
        }
        old
    }

    /// During a soak: rolls back when the canaries' 5xx share exceeds the old workers' by
    /// more than [`CANARY_MAX_5XX_EXCESS`] (once they have answered
    /// [`MachineConfig::canary_min_responses`], or [`CANARY_MIN_RESPONSES`] when that is 0);
    /// at the soak's end (`end`), rolls back a canary that answered fewer than
    /// `canary_min_responses` (no evidence is no pass), and lets the upgrade go on otherwise.
    fn judge_canary(&mut self, now: Instant, end: bool) {
        let Some((new, old)) = self.soak_counts() else {
            return;
        };
        let share = |(total, errors): (u64, u64)| {
            if total == 0 {
                0.0
            } else {
                errors as f64 / total as f64
            }
        };
        let needed = self.config.canary_min_responses;
        let compare_from = if needed == 0 {
            CANARY_MIN_RESPONSES
        } else {
            needed
        };
        if new.0 >= compare_from && share(new) > share(old) + CANARY_MAX_5XX_EXCESS {
            self.roll_back(now, Rollback::ServerErrors { new, old });
            return;
        }
        if new.0 >= compare_from
            && let Some((new_p99, old_p99)) = self.soak_p99s()
            && new_p99 >= old_p99.saturating_mul(CANARY_SLOW_FACTOR)
            && new_p99 >= old_p99 + CANARY_SLOW_MARGIN_MS
        {
            self.roll_back(
                now,
                Rollback::Slow {
                    new_p99_ms: new_p99,
                    old_p99_ms: old_p99,
                },
            );
            return;
        }
        if end && new.0 < needed {
            self.roll_back(
                now,
                Rollback::TooFewResponses {
                    new: new.0,
                    old: old.0,
                    needed,
                },
            );
            return;
        }
        if end {
            if let Some(up) = &mut self.upgrade {
                up.canary = None;
                up.progress_at = now;
            }
            self.progress(Message::CanaryPassed { new, old });
        }
    }

    fn soak_ends_at(&self) -> Option<Instant> {
        let canary = self.upgrade.as_ref()?.canary.as_ref()?;
        let (since, _) = canary.soaking?;
        Some(since + canary.plan.soak)
    }

    /// Starts the soak once every canary has ACKed; ends it when its time is up.
    fn soak(&mut self, now: Instant) {
        let acked = self.acked_count();
        let Some(up) = &self.upgrade else { return };
        let Some(canary) = &up.canary else { return };
        match canary.soaking {
            None if acked >= canary.plan.workers => {
                let (workers, soak) = (canary.plan.workers, canary.plan.soak);
                let old = self.old_counts();
                let old_latency = self.old_latency();
                if let Some(c) = self.upgrade.as_mut().and_then(|up| up.canary.as_mut()) {
                    c.soaking = Some((now, old));
                    c.old_latency_then = old_latency;
                }
                self.progress(Message::CanarySoaking { workers, soak });
                if soak.is_zero() {
                    self.judge_canary(now, true);
                }
            }
            Some((since, _)) if now >= since + canary.plan.soak => self.judge_canary(now, true),
            _ => {}
        }
    }

    /// Stops the canaries (the newest version's workers, gracefully) and keeps every other
    /// worker: the upgrade ends in an error.
    fn roll_back(&mut self, now: Instant, why: Rollback) {
        let Some(up) = self.upgrade.take() else {
            return;
        };
        let others_serve = self
            .workers
            .iter()
            .any(|w| w.version != self.version && w.acked() && w.retired.is_none());
        // Never a gap: canaries that serve alone (every old worker died meanwhile) are kept.
        let new: Vec<usize> = (0..self.workers.len())
            .filter(|&i| {
                let w = &self.workers[i];
                w.version == self.version && w.retired.is_none() && (others_serve || !w.acked())
            })
            .collect();
        self.retire(now, &new, Signal::SIGUSR2);
        self.base = up.base;
        self.pin(up.good);
        let message = Message::RolledBack { why: why.clone() };
        self.log(Level::Error, message.clone());
        self.last_rollback = Some(why);
        self.finish(up, Response::failure(message, None));
    }

    /// Retires every worker with `signal`, stops respawning, aborts an upgrade. Returns the pids
    /// signaled.
    ///
    /// The first time, workers already sent `signal` (old ones draining after an upgrade) are
    /// left alone. Once stopping, every worker still running gets `signal` again, as Einhorn
    /// re-sends it: workers on graceful-listener take a second signal as "stop now".
    fn stop(&mut self, now: Instant, signal: Signal) -> Vec<Pid> {
        self.abort_reexec();
        if let Some(up) = self.upgrade.take() {
            self.finish(
                up,
                Response::failure(Message::UpgradeAborted { quitting: false }, None),
            );
        }
        let again = matches!(self.phase, Phase::Stopping(_));
        if !again {
            self.log(Level::Info, Message::Stopping { signal });
        }
        self.phase = Phase::Stopping(signal);
        let targets: Vec<usize> = (0..self.workers.len())
            .filter(|&i| again || self.workers[i].retired.map(|(s, _)| s) != Some(signal))
            .collect();
        let pids = self.retire(now, &targets, signal);
        if again {
            self.log(
                Level::Warn,
                Message::StopNow(Sent {
                    signal,
                    pids: pids.clone(),
                }),
            );
        }
        pids
    }

    /// Gives up a pending re-exec: the master is stopping.
    fn abort_reexec(&mut self) {
        let Some(reexec) = self.reexec.take() else {
            return;
        };
        self.actions.push(Action::CancelReexec);
        let message = Message::ReexecFailed {
            reason: "the master is stopping".to_string(),
            upgrade: reexec.upgrade.is_some(),
        };
        for (conn, id) in reexec.upgraders.into_iter().chain(reexec.reloaders) {
            self.actions.push(Action::Reply {
                conn,
                reply: Response::failure(message.clone(), id),
            });
        }
    }

    fn quit(&mut self) {
        self.abort_reexec();
        if let Some(up) = self.upgrade.take() {
            self.finish(
                up,
                Response::failure(Message::UpgradeAborted { quitting: true }, None),
            );
        }
        self.log(Level::Info, Message::Quitting);
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
        self.soak(now);
        self.end_backoff(now);
        self.check_upgrade_timeout(now);
        if self.phase == Phase::Running {
            self.cull(now);
        }
        self.escalate(now);
        if self.phase == Phase::Running && self.started {
            self.replenish(now);
        }
        if matches!(self.phase, Phase::Stopping(_)) && self.workers.is_empty() {
            self.log(Level::Info, Message::AllGone);
            self.exit(0);
        }
    }

    fn timer_acks(&mut self, now: Instant) {
        let AckMode::Timer(after) = self.config.ack_mode else {
            return;
        };
        for i in 0..self.workers.len() {
            let w = &self.workers[i];
            if w.pid.is_some() && !w.acked() && w.retired.is_none() && now >= w.spawned_at + after {
                self.ack(now, i);
            }
        }
    }

    /// A failed start: the next spawns back off.
    fn failed(&mut self, now: Instant) {
        self.failures += 1;
        self.last_failure = Some(now);
    }

    /// When the backoff ends: the first time a worker started after the last failure has
    /// been up for `min_uptime` since its ACK.
    fn backoff_ends_at(&self) -> Option<Instant> {
        let since = self.last_failure.filter(|_| self.failures > 0)?;
        self.workers
            .iter()
            .filter(|w| w.pid.is_some() && w.retired.is_none() && w.spawned_at >= since)
            .filter_map(|w| w.acked_at)
            .map(|at| at + self.config.min_uptime)
            .min()
    }

    fn end_backoff(&mut self, now: Instant) {
        if self.backoff_ends_at().is_some_and(|at| now >= at) {
            self.log(
                Level::Info,
                Message::BackoffEnded {
                    failures: self.failures,
                    uptime: self.config.min_uptime,
                },
            );
            self.failures = 0;
            self.last_failure = None;
        }
    }

    fn check_upgrade_timeout(&mut self, now: Instant) {
        let timeout = self.config.upgrade_timeout;
        let due = matches!(&self.upgrade, Some(up) if now >= up.progress_at + timeout);
        if due {
            self.fail_upgrade(now, UpgradeFailure::Timeout(timeout));
        }
    }

    /// Ends the upgrade in progress in an error: its unACKed workers are retired, and
    /// whatever serves is the pool now.
    fn fail_upgrade(&mut self, now: Instant, cause: UpgradeFailure) {
        let Some(up) = self.upgrade.take() else {
            return;
        };
        // Every unACKed worker this upgrade started (a restarted upgrade included) is retired.
        let unacked: Vec<usize> = (0..self.workers.len())
            .filter(|&i| {
                let w = &self.workers[i];
                w.version > up.base && w.retired.is_none() && !w.acked()
            })
            .collect();
        let signaled = self.retire(now, &unacked, Signal::SIGUSR2);
        // Whatever still serves is the pool now: no more old workers to replace. Each keeps its
        // own version; the base goes back, so the old ones count as current again.
        self.base = up.base;
        self.pin(up.good);
        let serving = self.workers.iter().filter(|w| w.retired.is_none()).count();
        let message = Message::UpgradeFailed {
            cause,
            serving,
            signaled,
        };
        self.log(Level::Error, message.clone());
        self.finish(up, Response::failure(message, None));
    }

    fn cull(&mut self, now: Instant) {
        // Old workers that never ACKed belong to a superseded upgrade (or were still
        // starting when the upgrade began): they serve nobody, so they are the ones stopped,
        // at once. Old workers that serve are retired only as new ones ACK in their place.
        let superseded: Vec<usize> = self
            .live_old()
            .into_iter()
            .filter(|&i| !self.workers[i].acked())
            .collect();
        if !superseded.is_empty() {
            self.progress(Message::SupersededStopping {
                count: superseded.len(),
            });
            let pids = self.retire(now, &superseded, Signal::SIGUSR2);
            self.progress(usr2_sent(pids));
        }
        // A new worker counts in an old one's place once it has stayed up `prove` after its
        // ACK: a build that crashes right after its ACK is caught while the old workers serve.
        let prove = self.config.prove;
        for w in &mut self.workers {
            if !w.proven && w.acked_at.is_some_and(|at| now >= at + prove) {
                w.proven = true;
            }
        }
        let acked = self.proven_count();
        let mut finished = None;
        let canary = self.upgrade.as_ref().is_some_and(|up| up.canary.is_some());
        if self.upgrade.is_some() && !canary && acked >= self.target {
            finished = self.upgrade.take();
        }
        let old = self.live_old();
        match &self.upgrade {
            // Canaries serve beside every old worker until they have passed.
            Some(up) if up.canary.is_some() => {}
            None if !old.is_empty() => {
                let message = Message::KillingOld { count: old.len() };
                self.notify(finished.as_ref(), message);
                let pids = self.retire(now, &old, Signal::SIGUSR2);
                self.notify(finished.as_ref(), usr2_sent(pids));
            }
            Some(up) if !up.fleet => {
                let excess = (old.len() + acked).saturating_sub(self.target);
                if excess > 0 {
                    let take: Vec<usize> = old.into_iter().take(excess).collect();
                    self.progress(Message::SmoothKilling { count: excess });
                    let pids = self.retire(now, &take, Signal::SIGUSR2);
                    self.progress(usr2_sent(pids));
                }
            }
            _ => {}
        }
        if let Some(up) = finished {
            self.notify(
                Some(&up),
                Message::Upgraded {
                    version: self.version,
                },
            );
            self.pinned = None;
            self.finish(up, Response::last(Message::UpgradeDone, None));
        }
        let mut current: Vec<usize> = (0..self.workers.len())
            .filter(|&i| {
                let w = &self.workers[i];
                self.is_current(w) && w.retired.is_none()
            })
            .collect();
        if current.len() > self.target {
            // Retire unACKed workers first, then the highest indexes.
            current.sort_by_key(|&i| {
                (
                    self.workers[i].acked(),
                    std::cmp::Reverse(self.workers[i].index),
                )
            });
            let excess: Vec<usize> = current[..current.len() - self.target].to_vec();
            self.progress(Message::TooManyCurrent {
                count: excess.len(),
            });
            let pids = self.retire(now, &excess, Signal::SIGUSR2);
            self.progress(usr2_sent(pids));
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
                self.logs.push(Log {
                    level: Level::Warn,
                    message: Message::Killing { pid, after, signal },
                });
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
            .filter(|w| self.is_current(w) && w.retired.is_none());
        let (count, unacked) =
            current.fold((0, 0), |(c, u), w| (c + 1, u + usize::from(!w.acked())));
        let wanted = match self.upgrade.as_ref().and_then(|up| up.canary.as_ref()) {
            Some(canary) => canary.plan.workers.min(self.target),
            None => self.target,
        };
        if count >= wanted {
            return false;
        }
        let max_unacked = match &self.upgrade {
            Some(up) if !up.fleet => self.config.max_unacked.max(1),
            _ => usize::MAX,
        };
        if unacked >= max_unacked {
            return false;
        }
        // During an upgrade, within --max-upgrade-additional: draining workers count.
        match (self.upgrade.is_some(), self.config.max_upgrade_additional) {
            (true, Some(additional)) => self.workers.len() < self.target + additional,
            _ => true,
        }
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
        // Outside an upgrade, a worker replaced after a failed one runs the last good build.
        let version = match (&self.upgrade, self.pinned) {
            (None, Some(good)) => good,
            _ => self.version,
        };
        self.workers.push(Worker {
            spawn: id,
            pid: None,
            index,
            version,
            spawned_at: now,
            acked_at: None,
            retired: None,
            killed: false,
            last_ping: None,
            responses: [0; 5],
            proven: false,
            latency: [0; LATENCY_BUCKETS],
        });
        self.last_spawn = Some(now);
        self.actions.push(Action::Spawn { id, index, version });
    }

    // ----- helpers -----

    /// Whether a worker belongs to the pool (its version is at least the base version).
    fn is_current(&self, worker: &Worker) -> bool {
        worker.version >= self.base
    }

    /// Current workers that proved themselves after their ACK and are not retired.
    fn proven_count(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| self.is_current(w) && w.retired.is_none() && w.proven)
            .count()
    }

    /// Current workers that ACKed and are not retired.
    fn acked_count(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| self.is_current(w) && w.retired.is_none() && w.acked())
            .count()
    }

    /// Old workers not yet retired, oldest first.
    fn live_old(&self) -> Vec<usize> {
        let mut old: Vec<usize> = (0..self.workers.len())
            .filter(|&i| {
                let w = &self.workers[i];
                !self.is_current(w) && w.retired.is_none()
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

    fn log(&mut self, level: Level, message: Message) {
        self.logs.push(Log { level, message });
    }

    /// Logs a line and streams it to the upgrade's subscribers.
    fn progress(&mut self, message: Message) {
        self.progress_level(Level::Info, message);
    }

    fn progress_level(&mut self, level: Level, message: Message) {
        if let Some(up) = &self.upgrade {
            for (conn, id) in &up.subscribers {
                self.actions.push(Action::Reply {
                    conn: *conn,
                    reply: Response::more(message.clone(), id.clone()),
                });
            }
        }
        self.log(level, message);
    }

    /// Streams a line to a finished upgrade's subscribers (or the running one's).
    fn notify(&mut self, finished: Option<&Upgrade>, message: Message) {
        match finished {
            Some(up) => {
                for (conn, id) in &up.subscribers {
                    self.actions.push(Action::Reply {
                        conn: *conn,
                        reply: Response::more(message.clone(), id.clone()),
                    });
                }
                self.log(Level::Info, message);
            }
            None => self.progress(message),
        }
    }

    /// Sends an upgrade's final reply to each of its subscribers.
    /// Records a fault the master lives with (the driver logs it): `state` lists it.
    pub fn note_fault(&mut self, text: String) {
        if self.faults.len() == MAX_FAULTS {
            self.faults.remove(0);
        }
        self.faults.push(text);
    }

    /// After a failed upgrade, the last good version, whose build workers started outside
    /// an upgrade run until an upgrade succeeds.
    pub fn pinned(&self) -> Option<u64> {
        self.pinned
    }

    /// From now on, workers started outside an upgrade run version `good`'s build.
    fn pin(&mut self, good: u64) {
        self.pinned = Some(good);
        self.log(Level::Warn, Message::Pinned { version: good });
    }

    fn finish(&mut self, up: Upgrade, last: Response) {
        for (conn, id) in up.subscribers {
            self.actions.push(Action::Reply {
                conn,
                reply: Response {
                    request_id: id,
                    ..last.clone()
                },
            });
        }
    }

    /// The `state` snapshot.
    fn state(&self, now: Instant) -> StateReport {
        let canary = self
            .upgrade
            .as_ref()
            .and_then(|up| up.canary.as_ref())
            .map(|c| match c.soaking {
                None => CanaryProgress::Starting {
                    workers: c.plan.workers,
                },
                Some((since, _)) => CanaryProgress::Soaking {
                    left: (since + c.plan.soak).saturating_duration_since(now),
                },
            });
        let state = MasterState {
            master_pid: self.config.master_pid,
            command_name: self.config.command_name.clone(),
            version: self.version,
            base_version: self.base,
            target_workers: self.target,
            ack_mode: self.config.ack_mode.to_string(),
            upgrading: self
                .upgrade
                .as_ref()
                .map(|up| if up.fleet { "fleet" } else { "smooth" }.to_string()),
            stopping: self.phase != Phase::Running,
            consecutive_failures: self.failures,
            respawn_backoff_seconds: (self.failures > 0)
                .then(|| self.spawn_interval().as_secs_f64()),
            canary: None,
            last_rollback: None,
            pinned_version: self.pinned,
            faults: self.faults.clone(),
            generations: self
                .generations
                .iter()
                .map(
                    |(&version, &responses)| crate::pure::state::GenerationState {
                        version,
                        responses,
                    },
                )
                .collect(),
            listeners: self.config.listeners.clone(),
            workers: self
                .workers
                .iter()
                .map(|w| WorkerState {
                    pid: w.pid,
                    index: w.index,
                    version: w.version,
                    acked: w.acked(),
                    retired: w.retired.map(|(s, _)| signal_name(s).to_string()),
                    age_seconds: now.saturating_duration_since(w.spawned_at).as_secs_f64(),
                    last_ping_seconds_ago: w
                        .last_ping
                        .map(|at| now.saturating_duration_since(at).as_secs_f64()),
                })
                .collect(),
        };
        StateReport {
            state,
            canary,
            last_rollback: self.last_rollback.clone(),
        }
    }

    /// The `config` snapshot.
    fn config_state(&self) -> ConfigState {
        let c = &self.config;
        ConfigState {
            command: c.command.clone(),
            workers: self.target,
            ack_mode: c.ack_mode.to_string(),
            spawn_spacing_seconds: c.spawn_spacing.as_secs_f64(),
            signal_timeout_seconds: c.signal_timeout.map(|d| d.as_secs_f64()),
            upgrade_timeout_seconds: c.upgrade_timeout.as_secs_f64(),
            min_uptime_seconds: c.min_uptime.as_secs_f64(),
            socket_path: c.socket_path.clone(),
            command_name: c.command_name.clone(),
            listeners: c.listeners.clone(),
        }
    }
}

/// SIGUSR2 sent to `pids`.
fn usr2_sent(pids: Vec<Pid>) -> Message {
    Message::Sent(Sent {
        signal: Signal::SIGUSR2,
        pids,
    })
}

#[cfg(test)]
mod tests;
