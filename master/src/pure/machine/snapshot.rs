//! The machine as data that a new master process can resume from: what a re-exec hands
//! over. Times are ages (seconds before the snapshot), since an `Instant` means nothing in
//! another process; everything else is kept as it was. Pure.
//!
//! Fields added later must have `#[serde(default)]`, so that a newer master reads an older
//! snapshot; a snapshot from a newer master with fields this one does not know is refused
//! by the format number (see [`crate::handover`]), not here.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::{
    Canary, CanaryPlan, ConnId, Machine, MachineConfig, Phase, Reexec, Rollback, SpawnId,
    Subscriber, Upgrade, UpgradeOrder, Worker,
};
use crate::pure::command::{parse_signal, signal_name};
use crate::pure::state::Pid;
use crate::pure::wire::RequestId;

/// The machine at one moment, as data a new master process resumes from: times as ages,
/// everything else as it was.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MachineSnapshot {
    /// The target number of workers.
    pub target: usize,
    /// The workers count this master was configured with (`-n`, `.workers(N)`): a new
    /// master configured with another count takes its own; else it keeps `target`, which
    /// `inc`, `dec` and `set_workers` may have changed.
    pub configured_workers: usize,
    /// The version new workers get.
    pub version: u64,
    /// The oldest version still current.
    pub base: u64,
    /// The next spawn request's id.
    pub next_spawn: u64,
    /// Seconds since the last spawn.
    pub last_spawn_ago: Option<f64>,
    /// Failed starts in a row.
    pub failures: u32,
    /// Seconds since the last failed start.
    pub last_failure_ago: Option<f64>,
    /// Upgrade and reload requests accepted so far.
    pub requests: u64,
    /// Log level offset from `info`.
    pub verbosity: i8,
    /// A manual ACK in timer mode was warned about.
    #[serde(default)]
    pub warned_ack_mode: bool,
    /// Every worker not reaped yet.
    pub workers: Vec<WorkerSnapshot>,
    /// The upgrade in progress.
    pub upgrade: Option<UpgradeSnapshot>,
    /// What the re-exec that took this snapshot is for.
    pub reexec: Option<ReexecSnapshot>,
    /// Responses by status class of each version, as workers reported them.
    #[serde(default)]
    pub generations: Vec<(u64, [u64; 5])>,
    /// Why the last canary upgrade was rolled back.
    #[serde(default)]
    pub last_rollback: Option<Rollback>,
    /// The last good version, whose build workers run after a failed upgrade.
    #[serde(default)]
    pub pinned: Option<u64>,
}

/// One worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerSnapshot {
    /// Its spawn request.
    pub spawn: u64,
    /// Its pid (a spawn still pending is not handed over).
    pub pid: Pid,
    /// Its `EINHORN_CHILD_INDEX`.
    pub index: usize,
    /// Its version.
    pub version: u64,
    /// Seconds since it was started.
    pub age: f64,
    /// Seconds since it ACKed.
    pub acked_ago: Option<f64>,
    /// The stop signal it was sent, and seconds since.
    pub retired: Option<(String, f64)>,
    /// Whether it was sent SIGKILL.
    pub killed: bool,
    /// Seconds since its last `worker:ping`.
    pub last_ping_ago: Option<f64>,
    /// Its responses by status class, as it last reported them.
    #[serde(default)]
    pub responses: [u64; 5],
    /// Whether it has proved itself after its ACK (absent: as ACKed, as before `--prove`).
    #[serde(default)]
    pub proven: Option<bool>,
}

/// A canary upgrade's plan and progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanarySnapshot {
    /// Canary workers.
    pub workers: usize,
    /// The soak, in seconds.
    pub soak: f64,
    /// Seconds since the soak began, and the old generation's counts then.
    pub soaking: Option<(f64, [u64; 5])>,
}

/// A command-socket client waiting for replies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubscriberSnapshot {
    /// Its connection.
    pub conn: u64,
    /// Its request's `id`.
    pub request_id: Option<RequestId>,
}

/// The upgrade in progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpgradeSnapshot {
    /// `upgrade_fleet`.
    pub fleet: bool,
    /// The base version before it.
    pub base: u64,
    /// Seconds since its start or its last new ACK.
    pub progress_ago: f64,
    /// Who waits for `Upgrade done`.
    pub subscribers: Vec<SubscriberSnapshot>,
    /// Its canary, until passed.
    #[serde(default)]
    pub canary: Option<CanarySnapshot>,
    /// New workers that exited before their ACK since the last new ACK.
    #[serde(default)]
    pub failed_starts: u32,
    /// The version serving before it (its base when absent).
    #[serde(default)]
    pub good: Option<u64>,
}

/// What a re-exec is for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReexecSnapshot {
    /// Upgrade the workers afterwards: `Some(fleet)`.
    pub upgrade: Option<bool>,
    /// That upgrade's canary: workers, and soak in seconds.
    #[serde(default)]
    pub canary: Option<(usize, f64)>,
    /// Who asked for that upgrade.
    pub upgraders: Vec<SubscriberSnapshot>,
    /// Who asked for a reload alone.
    pub reloaders: Vec<SubscriberSnapshot>,
}

/// Why a snapshot cannot be resumed from.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SnapshotError {
    /// A retired worker's signal is not a signal name.
    #[error("worker {pid}: unknown signal {signal:?}")]
    Signal {
        /// The worker.
        pid: Pid,
        /// The name found.
        signal: String,
    },
    /// A time that is not a number of seconds.
    #[error("{what}: {value} is not a number of seconds")]
    Age {
        /// Which time.
        what: &'static str,
        /// The value found.
        value: f64,
    },
    /// Two workers with the same pid or index.
    #[error("worker {pid} (index {index}) appears twice")]
    Duplicate {
        /// Its pid.
        pid: Pid,
        /// Its index.
        index: usize,
    },
}

fn ago(now: Instant, at: Instant) -> f64 {
    now.saturating_duration_since(at).as_secs_f64()
}

fn seconds(what: &'static str, value: f64) -> Result<Duration, SnapshotError> {
    Duration::try_from_secs_f64(value).map_err(|_| SnapshotError::Age { what, value })
}

fn at(now: Instant, what: &'static str, ago: f64) -> Result<Instant, SnapshotError> {
    let age = seconds(what, ago)?;
    // Monotonic time starts at boot: an age beyond it is clamped, not an error.
    Ok(now.checked_sub(age).unwrap_or(now))
}

fn subscriber(s: &Subscriber) -> SubscriberSnapshot {
    SubscriberSnapshot {
        conn: s.0.0,
        request_id: s.1.clone(),
    }
}

fn subscribers(all: &[SubscriberSnapshot]) -> Vec<Subscriber> {
    all.iter()
        .map(|s| (ConnId(s.conn), s.request_id.clone()))
        .collect()
}

impl MachineSnapshot {
    /// The connections that wait for replies: a re-exec carries them over.
    pub fn waiting_connections(&self) -> Vec<u64> {
        let upgrade = self.upgrade.iter().flat_map(|u| &u.subscribers);
        let reexec = self
            .reexec
            .iter()
            .flat_map(|r| r.upgraders.iter().chain(&r.reloaders));
        upgrade.chain(reexec).map(|s| s.conn).collect()
    }
}

impl Machine {
    /// The machine as data, at `now`; see [`MachineSnapshot`]. Workers whose spawn is still
    /// pending are left out (there is none between events: the driver spawns at once).
    pub fn snapshot(&self, now: Instant) -> MachineSnapshot {
        MachineSnapshot {
            target: self.target,
            configured_workers: self.config.workers,
            version: self.version,
            base: self.base,
            next_spawn: self.next_spawn,
            last_spawn_ago: self.last_spawn.map(|t| ago(now, t)),
            failures: self.failures,
            last_failure_ago: self.last_failure.map(|t| ago(now, t)),
            requests: self.requests,
            verbosity: self.verbosity,
            warned_ack_mode: self.warned_ack_mode,
            workers: self
                .workers
                .iter()
                .filter_map(|w| {
                    Some(WorkerSnapshot {
                        spawn: w.spawn.0,
                        pid: w.pid?,
                        index: w.index,
                        version: w.version,
                        age: ago(now, w.spawned_at),
                        acked_ago: w.acked_at.map(|t| ago(now, t)),
                        retired: w
                            .retired
                            .map(|(s, t)| (signal_name(s).to_string(), ago(now, t))),
                        killed: w.killed,
                        last_ping_ago: w.last_ping.map(|t| ago(now, t)),
                        responses: w.responses,
                        proven: Some(w.proven),
                    })
                })
                .collect(),
            upgrade: self.upgrade.as_ref().map(|up| UpgradeSnapshot {
                fleet: up.fleet,
                base: up.base,
                progress_ago: ago(now, up.progress_at),
                subscribers: up.subscribers.iter().map(subscriber).collect(),
                canary: up.canary.as_ref().map(|c| CanarySnapshot {
                    workers: c.plan.workers,
                    soak: c.plan.soak.as_secs_f64(),
                    soaking: c.soaking.map(|(at, old)| (ago(now, at), old)),
                }),
                failed_starts: up.failed_starts,
                good: Some(up.good),
            }),
            reexec: self.reexec.as_ref().map(|r| ReexecSnapshot {
                upgrade: r.upgrade.map(|o| o.fleet),
                canary: r
                    .upgrade
                    .and_then(|o| o.canary)
                    .map(|c| (c.workers, c.soak.as_secs_f64())),
                upgraders: r.upgraders.iter().map(subscriber).collect(),
                reloaders: r.reloaders.iter().map(subscriber).collect(),
            }),
            generations: self.generations.iter().map(|(&v, &c)| (v, c)).collect(),
            last_rollback: self.last_rollback.clone(),
            pinned: self.pinned,
        }
    }

    /// A machine that goes on from `snapshot` at `now`, with `config` (the new master's own
    /// settings). It has started already: feed [`Event::Resumed`](super::Event::Resumed)
    /// first, which finishes what the re-exec was for.
    ///
    /// # Errors
    /// A [`SnapshotError`] when the snapshot is not one a running master could have taken.
    pub fn resume(
        config: MachineConfig,
        snapshot: &MachineSnapshot,
        now: Instant,
    ) -> Result<Machine, SnapshotError> {
        let mut workers = Vec::with_capacity(snapshot.workers.len());
        for w in &snapshot.workers {
            if workers
                .iter()
                .any(|o: &Worker| o.pid == Some(w.pid) || o.index == w.index)
            {
                return Err(SnapshotError::Duplicate {
                    pid: w.pid,
                    index: w.index,
                });
            }
            let retired = match &w.retired {
                Some((name, ago)) => {
                    let signal: Signal = parse_signal(name).map_err(|_| SnapshotError::Signal {
                        pid: w.pid,
                        signal: name.clone(),
                    })?;
                    Some((signal, at(now, "retired", *ago)?))
                }
                None => None,
            };
            workers.push(Worker {
                spawn: SpawnId(w.spawn),
                pid: Some(w.pid),
                index: w.index,
                version: w.version,
                spawned_at: at(now, "age", w.age)?,
                acked_at: w.acked_ago.map(|a| at(now, "acked", a)).transpose()?,
                retired,
                killed: w.killed,
                last_ping: w.last_ping_ago.map(|a| at(now, "ping", a)).transpose()?,
                responses: w.responses,
                proven: w.proven.unwrap_or(w.acked_ago.is_some()),
                latency: [0; graceful_listener::telemetry::LATENCY_BUCKETS],
            });
        }
        let target = if config.workers == snapshot.configured_workers {
            snapshot.target
        } else {
            config.workers
        };
        let upgrade = match &snapshot.upgrade {
            Some(up) => Some(Upgrade {
                fleet: up.fleet,
                canary: match &up.canary {
                    Some(c) => Some(Canary {
                        plan: CanaryPlan {
                            workers: c.workers,
                            soak: seconds("canary soak", c.soak)?,
                        },
                        soaking: match c.soaking {
                            Some((ago, old)) => Some((at(now, "soak", ago)?, old)),
                            None => None,
                        },
                        // Not handed over: after a reload mid-soak the old workers' times
                        // count from their start, which can only hide a slow canary.
                        old_latency_then: [0; graceful_listener::telemetry::LATENCY_BUCKETS],
                    }),
                    None => None,
                },
                base: up.base,
                progress_at: at(now, "upgrade progress", up.progress_ago)?,
                subscribers: subscribers(&up.subscribers),
                failed_starts: up.failed_starts,
                good: up.good.unwrap_or(up.base),
            }),
            None => None,
        };
        let mut machine = Machine::new(config);
        machine.target = target;
        machine.version = snapshot.version;
        machine.base = snapshot.base;
        machine.workers = workers;
        machine.next_spawn = snapshot.next_spawn;
        machine.last_spawn = snapshot
            .last_spawn_ago
            .map(|a| at(now, "last spawn", a))
            .transpose()?;
        machine.failures = snapshot.failures;
        machine.last_failure = snapshot
            .last_failure_ago
            .map(|a| at(now, "last failure", a))
            .transpose()?;
        machine.requests = snapshot.requests;
        machine.set_verbosity(snapshot.verbosity);
        machine.warned_ack_mode = snapshot.warned_ack_mode;
        machine.upgrade = upgrade;
        machine.reexec = match &snapshot.reexec {
            Some(r) => Some(Reexec {
                upgrade: match r.upgrade {
                    Some(fleet) => Some(UpgradeOrder {
                        fleet,
                        canary: match r.canary {
                            Some((workers, soak)) => Some(CanaryPlan {
                                workers,
                                soak: seconds("canary soak", soak)?,
                            }),
                            None => None,
                        },
                    }),
                    None => None,
                },
                upgraders: subscribers(&r.upgraders),
                reloaders: subscribers(&r.reloaders),
            }),
            None => None,
        };
        machine.generations = snapshot.generations.iter().copied().collect();
        machine.last_rollback = snapshot.last_rollback.clone();
        machine.pinned = snapshot.pinned;
        machine.started = true;
        machine.phase = Phase::Running;
        Ok(machine)
    }
}
