//! What the machine says, as data: the content of replies and of log lines. No text here:
//! [`crate::pure::render`] writes these as the wire's text and YAML.

use std::time::Duration;

use nix::sys::signal::Signal;

use super::{AckMode, SpawnId};
use crate::pure::state::{ConfigState, MasterState, Pid};
use crate::pure::wire::RequestId;

/// How much a log line matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Something failed.
    Error,
    /// Something is wrong, or unexpected.
    Warn,
    /// Something worth knowing happened.
    Info,
    /// Detail for debugging.
    Debug,
}

/// A log line for the driver to write; see [`Machine::take_logs`](super::Machine::take_logs).
#[derive(Clone, Debug, PartialEq)]
pub struct Log {
    /// How much it matters.
    pub level: Level,
    /// What it says.
    pub message: Message,
}

/// A reply to a request, as data: [`crate::pure::render::reply`] turns it into a wire
/// [`Reply`](crate::pure::wire::Reply).
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    /// The `id` of the request it answers.
    pub request_id: Option<RequestId>,
    /// What it says.
    pub message: Message,
    /// More replies to the same request follow (upgrade progress).
    pub wait: bool,
    /// The request failed.
    pub error: bool,
}

impl Response {
    /// A final reply.
    pub fn last(message: Message, request_id: Option<RequestId>) -> Self {
        Response {
            request_id,
            message,
            wait: false,
            error: false,
        }
    }

    /// A reply announcing more to come.
    pub fn more(message: Message, request_id: Option<RequestId>) -> Self {
        Response {
            wait: true,
            ..Response::last(message, request_id)
        }
    }

    /// A final reply reporting a failure.
    pub fn failure(message: Message, request_id: Option<RequestId>) -> Self {
        Response {
            error: true,
            ..Response::last(message, request_id)
        }
    }
}

/// A signal sent to workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    /// The signal.
    pub signal: Signal,
    /// The workers it was sent to.
    pub pids: Vec<Pid>,
}

/// Why a worker's exit is worth noting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitNote {
    /// It died before it ACKed, without having been told to stop.
    BeforeAck {
        /// Such deaths in a row, this one included.
        failures: u32,
    },
    /// It died soon after its ACK (within `--min-uptime`), without having been told to stop:
    /// a failed start too.
    SoonAfterAck {
        /// How long after its ACK.
        after: Duration,
        /// Failed starts in a row, this one included.
        failures: u32,
    },
    /// It had ACKed, stayed up, and was not told to stop.
    Unexpected,
    /// It had been told to stop.
    Retired,
}

/// The `state` snapshot as the machine reports it: the data, with what still needs words left
/// typed (the renderer fills [`MasterState::canary`] and [`MasterState::last_rollback`]).
#[derive(Clone, Debug, PartialEq)]
pub struct StateReport {
    /// The snapshot; its `canary` and `last_rollback` are left empty.
    pub state: MasterState,
    /// Where a canary upgrade is, if one runs.
    pub canary: Option<CanaryProgress>,
    /// Why the last canary upgrade was rolled back, if one was.
    pub last_rollback: Option<Rollback>,
}

/// Where a canary upgrade is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CanaryProgress {
    /// Its canaries are starting: not all of them have ACKed.
    Starting {
        /// How many canaries it starts.
        workers: usize,
    },
    /// Every canary has ACKed: the soak runs.
    Soaking {
        /// The time left in the soak.
        left: Duration,
    },
}

/// Why a canary upgrade was rolled back.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Rollback {
    /// A new worker exited without having been told to.
    Exited {
        /// Its pid.
        pid: Pid,
        /// How it ended.
        status: String,
    },
    /// The new workers answered too many 5xx, compared with the old ones.
    ServerErrors {
        /// The new workers' responses and 5xx among them.
        new: (u64, u64),
        /// The old workers' responses and 5xx since the soak began.
        old: (u64, u64),
    },
    /// The new workers answered far slower than the old ones (99th percentiles over the
    /// soak).
    Slow {
        /// The new workers' 99th percentile, in milliseconds (a power of two).
        new_p99_ms: u64,
        /// The old workers'.
        old_p99_ms: u64,
    },
    /// A new worker of a plain upgrade exited soon after its ACK (within `--min-uptime`),
    /// before it had proved itself.
    ExitedAfterAck {
        /// Its pid.
        pid: Pid,
        /// How it ended.
        status: String,
        /// How long after its ACK.
        after: Duration,
    },
    /// The soak ended with fewer responses from the new workers than a verdict needs: no
    /// evidence is no pass (clients that keep their connections may never reach them).
    TooFewResponses {
        /// The new workers' responses.
        new: u64,
        /// The old workers' responses since the soak began.
        old: u64,
        /// The responses a verdict needs (`--canary-min-responses`).
        needed: u64,
    },
}

/// Why an upgrade failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpgradeFailure {
    /// No new worker ACKed within this long (`--upgrade-timeout`).
    Timeout(Duration),
    /// This many new workers in a row exited before their ACK.
    FailedStarts {
        /// How many.
        starts: u32,
        /// The last one.
        pid: Pid,
        /// How it ended.
        status: String,
    },
}

/// Which command changed the target number of workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CountChange {
    /// `inc`.
    Inc,
    /// `dec`.
    Dec,
    /// `set_workers`.
    Set,
}

/// Everything the machine has to say. Replies and log lines share these: upgrade progress is
/// both logged and streamed to the upgrade's requesters.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    // ----- replies to commands -----
    /// `ehlo`.
    Welcome {
        /// The client's `user`, if it sent one.
        user: Option<String>,
        /// The master's pid.
        master_pid: Pid,
        /// The master's `-c` name.
        command_name: Option<String>,
    },
    /// `help`.
    Help,
    /// `state`.
    State(Box<StateReport>),
    /// `config`.
    Config(Box<ConfigState>),
    /// `inc`, `dec`, `set_workers` changed the target.
    WorkersChanged {
        /// The command.
        change: CountChange,
        /// The old target.
        from: usize,
        /// The new target.
        to: usize,
    },
    /// `set_workers` to the current target.
    WorkersUnchanged {
        /// The target.
        count: usize,
    },
    /// `dec` refused at one worker.
    CannotDecrease {
        /// The target.
        target: usize,
        /// The master's pid (to suggest `kill`).
        master_pid: Pid,
    },
    /// `signal`: one entry per signal.
    SignalsSent(Vec<Sent>),
    /// `die`.
    GoingDown(Sent),
    /// `upgrade` or `upgrade_fleet` accepted.
    UpgradeAccepted {
        /// `upgrade_fleet`.
        fleet: bool,
    },
    /// An upgrade refused: the master is stopping.
    UpgradeRefused,
    /// `reload` accepted.
    ReloadAccepted,
    /// `reload` refused.
    ReloadRefused {
        /// Because the master is stopping (else: it cannot re-exec itself).
        stopping: bool,
    },
    /// `quieter` or `louder`: the log level now.
    Verbosity {
        /// Steps from `info`.
        offset: i8,
    },
    /// The master re-execs itself: the new program is checked first.
    Reexecing,
    /// The re-exec did not happen; the master runs on, unchanged.
    ReexecFailed {
        /// Why.
        reason: String,
        /// It was for an upgrade, which does not happen either.
        upgrade: bool,
    },
    /// This master was exec'd in place of the previous one.
    Reexeced {
        /// Its pid, unchanged.
        master_pid: Pid,
    },

    // ----- upgrade progress: logged, and streamed to the upgrade's requesters -----
    /// An upgrade starts.
    UpgradeStarting {
        /// `upgrade_fleet`.
        fleet: bool,
        /// The version before it.
        from_version: u64,
    },
    /// An upgrade was asked for while one runs: it starts over with a new version.
    UpgradeRestarting {
        /// New workers ACKed so far.
        acked: usize,
        /// The target.
        target: usize,
    },
    /// A worker was started.
    Launched {
        /// Its pid.
        pid: Pid,
        /// Its `EINHORN_CHILD_INDEX`.
        index: usize,
        /// Its version.
        version: u64,
    },
    /// A worker could not be started.
    SpawnFailed {
        /// The index it would have had.
        index: usize,
        /// Why, as the driver reported it.
        error: String,
    },
    /// A worker exited and was reaped.
    Exited {
        /// Its pid.
        pid: Pid,
        /// Why it is worth noting.
        note: ExitNote,
        /// How it ended, as the driver reported it.
        status: String,
    },
    /// A new worker ACKed during an upgrade.
    AckProgress {
        /// Its pid.
        pid: Pid,
        /// Current workers ACKed now.
        acked: usize,
        /// The target.
        target: usize,
        /// The ACK mode.
        ack_mode: AckMode,
    },
    /// Old workers are being retired at the end of an upgrade.
    KillingOld {
        /// How many.
        count: usize,
    },
    /// Old workers are being retired during a smooth upgrade.
    SmoothKilling {
        /// How many.
        count: usize,
    },
    /// Old workers that never ACKed (a superseded upgrade's) are stopped.
    SupersededStopping {
        /// How many.
        count: usize,
    },
    /// More current workers than the target: the excess is retired.
    TooManyCurrent {
        /// How many are retired.
        count: usize,
    },
    /// A stop signal was sent to workers.
    Sent(Sent),
    /// `--canary N` asked for more workers than the generation has: the canary is all of it.
    CanaryClamped {
        /// The workers asked for.
        asked: usize,
        /// The workers the canary has: the whole generation.
        workers: usize,
    },
    /// A canary upgrade starts its new workers beside every old one.
    CanaryStarting {
        /// How many.
        workers: usize,
        /// The soak that follows their ACKs.
        soak: Duration,
    },
    /// Every canary has ACKed: the soak begins.
    CanarySoaking {
        /// How many canaries.
        workers: usize,
        /// How long.
        soak: Duration,
    },
    /// The soak passed: the upgrade goes on.
    CanaryPassed {
        /// The canaries' responses and 5xx among them.
        new: (u64, u64),
        /// The old workers' responses and 5xx during the soak.
        old: (u64, u64),
    },
    /// The new version was rolled back: its workers stopped, the old ones serve on.
    RolledBack {
        /// Why.
        why: Rollback,
    },
    /// An upgrade reached its target.
    Upgraded {
        /// The new version.
        version: u64,
    },
    /// An upgrade's final reply.
    UpgradeDone,
    /// No new worker ACKed within the upgrade timeout.
    UpgradeFailed {
        /// Why.
        cause: UpgradeFailure,
        /// Workers that keep serving.
        serving: usize,
        /// UnACKed new workers, sent SIGUSR2.
        signaled: Vec<Pid>,
    },
    /// The answer to a `worker:stats`: the share (thousandths) of its keep-alive connections
    /// the worker should end, if any (`worker:shed`).
    StatsAnswer {
        /// The share, in thousandths.
        shed: Option<u64>,
    },
    /// After a failed upgrade: workers started from now on run this version's build.
    Pinned {
        /// The last good version.
        version: u64,
    },
    /// The master stops or quits during an upgrade.
    UpgradeAborted {
        /// SIGQUIT rather than a graceful stop.
        quitting: bool,
    },

    // ----- log only -----
    /// The first workers are started.
    Starting {
        /// How many.
        workers: usize,
        /// Their version.
        version: u64,
    },
    /// A spawn result for a request the machine does not know.
    UnknownSpawn {
        /// The request.
        id: SpawnId,
        /// The pid reported.
        pid: Pid,
    },
    /// A child that is not a worker was reaped.
    ReapedStranger {
        /// Its pid.
        pid: Pid,
        /// How it ended.
        status: String,
    },
    /// A `worker:ack` without a pid.
    AckWithoutPid,
    /// A `worker:ack` while the ACK mode is a timer: the workers ACK, so the master was
    /// most likely meant to run with `-m manual`. Logged as a warning once, then at debug.
    AckIgnored {
        /// The pid it named.
        pid: i64,
        /// The ACK mode.
        ack_mode: AckMode,
    },
    /// A `worker:ack` naming no known worker.
    AckFromUnknown {
        /// The pid it named.
        pid: i64,
    },
    /// A second `worker:ack` from the same worker.
    AckedAgain {
        /// The pid.
        pid: i64,
    },
    /// A worker ACKed, outside an upgrade.
    Acked {
        /// Its pid.
        pid: Pid,
        /// Its index.
        index: usize,
    },
    /// A `worker:stats` naming no known worker.
    StatsFromUnknown {
        /// The pid it named.
        pid: i64,
    },
    /// A `worker:ping` naming no known worker.
    PingFromUnknown {
        /// The pid it named.
        pid: Option<i64>,
    },
    /// A worker started after the last failed start stayed up: spawns no longer back off.
    BackoffEnded {
        /// The failed starts in a row that are forgiven.
        failures: u32,
        /// How long the worker stayed up after its ACK.
        uptime: Duration,
    },
    /// The master starts stopping.
    Stopping {
        /// The signal every worker gets.
        signal: Signal,
    },
    /// A stop signal while already stopping: sent again to every worker still running, which
    /// workers on graceful-listener take as "stop now".
    StopNow(Sent),
    /// SIGQUIT: the master exits now.
    Quitting,
    /// The master stopped and every worker is gone.
    AllGone,
    /// A retired worker outlived `-t`.
    Killing {
        /// Its pid.
        pid: Pid,
        /// The `-t` timeout.
        after: Duration,
        /// The signal it ignored.
        signal: Signal,
    },
}
