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
//! # Files
//! [`Machine`] and its types are here; its methods are grouped by what they are about, one
//! file each: `workers.rs` (a spawn's outcome, exits, ACKs, retiring), `respawn.rs` (the
//! first fill, pacing, backoff), `upgrade.rs`, `canary.rs` (the soak, the judgement, the
//! rollback), `reload.rs` (the master's own re-exec), `commands.rs` (the command socket's
//! requests), `stopping.rs` (signals, `-t`, the exit); `message.rs` holds what it says and
//! `snapshot.rs` what a re-exec hands over. Each file's tests are beside it
//! (`workers/tests.rs`, ...); `tests.rs` holds the simulated driver they share and the
//! property test of the whole machine.
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

mod canary;
mod commands;
mod message;
mod reload;
mod respawn;
mod snapshot;
mod stopping;
mod upgrade;
mod workers;

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
