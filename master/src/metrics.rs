//! The master's metrics, through the [`metrics`] facade: what its upgrades did, its workers by
//! generation and state, its respawns and each version's responses. `--metrics HOST:PORT`
//! (and [`SelfHosted::metrics`](crate::self_hosted::SelfHosted::metrics)) serves them in
//! Prometheus' text format at `GET /metrics` ([`serve`]; the endpoint and its limits are
//! [`metrics_http`](crate::metrics_http)'s).
//!
//! Read from the machine from outside, as the [`Observer`](crate::observer::Observer) reads
//! it: after each event, its typed log messages and its state. The counts are kept in a
//! [`Tally`] that a re-exec hands over, so that they never go back to zero while the master
//! lives, however many times it reloads its code (every upgrade does).
//!
//! | metric | kind | labels | what |
//! | --- | --- | --- | --- |
//! | `einhorn_master_upgrades_started_total` | counter | | upgrades begun (a restarted one counts again) |
//! | `einhorn_master_upgrades_done_total` | counter | | upgrades that reached their target |
//! | `einhorn_master_upgrades_failed_total` | counter | | upgrades whose new workers never ACKed in time |
//! | `einhorn_master_upgrades_rolled_back_total` | counter | | canary upgrades rolled back |
//! | `einhorn_master_upgrade_duration_seconds` | histogram | | from an upgrade's start to its end, done or not |
//! | `einhorn_master_last_upgrade_duration_seconds` | gauge | | the same, for the last upgrade |
//! | `einhorn_master_respawns_total` | counter | | workers that exited on their own and were replaced |
//! | `einhorn_master_workers` | gauge | `generation` = `current`, `old`; `state` = `starting`, `serving`, `stopping` | workers now |
//! | `einhorn_master_version` | gauge | | the version new workers get |
//! | `einhorn_master_generation_responses_total` | counter | `version`; `class` = `1xx` ... `5xx` | responses of each version's workers, as they reported them (`worker:stats`) |

use std::time::Instant;

use metrics_exporter_prometheus::PrometheusBuilder;
use serde::{Deserialize, Serialize};

use crate::metrics_http::{Limits, MetricsError, MetricsServer};
use crate::pure::machine::{ExitNote, Log, Machine, Message};

/// Upgrades begun.
pub const UPGRADES_STARTED: &str = "einhorn_master_upgrades_started_total";
/// Upgrades that reached their target.
pub const UPGRADES_DONE: &str = "einhorn_master_upgrades_done_total";
/// Upgrades whose new workers never ACKed in time.
pub const UPGRADES_FAILED: &str = "einhorn_master_upgrades_failed_total";
/// Canary upgrades rolled back.
pub const UPGRADES_ROLLED_BACK: &str = "einhorn_master_upgrades_rolled_back_total";
/// Upgrade durations, in seconds.
pub const UPGRADE_DURATION: &str = "einhorn_master_upgrade_duration_seconds";
/// The last upgrade's duration, in seconds.
pub const LAST_UPGRADE_DURATION: &str = "einhorn_master_last_upgrade_duration_seconds";
/// Workers that exited on their own and were replaced.
pub const RESPAWNS: &str = "einhorn_master_respawns_total";
/// Workers by generation and state.
pub const WORKERS: &str = "einhorn_master_workers";
/// The version new workers get.
pub const VERSION: &str = "einhorn_master_version";
/// Each version's responses by class.
pub const GENERATION_RESPONSES: &str = "einhorn_master_generation_responses_total";

/// The counts that outlive a re-exec (handed over with the machine).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// Upgrades begun.
    pub upgrades_started: u64,
    /// Upgrades done.
    pub upgrades_done: u64,
    /// Upgrades failed.
    pub upgrades_failed: u64,
    /// Upgrades rolled back.
    pub upgrades_rolled_back: u64,
    /// Workers replaced after exiting on their own.
    pub respawns: u64,
    /// Every upgrade's duration in seconds, oldest first (the last [`KEPT_DURATIONS`]): the
    /// histogram is recorded again from them after a re-exec.
    #[serde(default)]
    pub upgrade_durations: Vec<f64>,
}

/// Upgrade durations a [`Tally`] keeps for the histogram across re-execs.
pub const KEPT_DURATIONS: usize = 1024;

/// Makes a Prometheus recorder the process's and serves it at `GET /metrics` on `listener`
/// (bound by [`metrics_http::bind`](crate::metrics_http::bind), or handed over across a
/// re-exec), on its own thread within the [limits](crate::metrics_http) that keep clients
/// from hurting the master. The returned server's socket stays open for the life of the
/// process.
///
/// # Errors
/// A recorder is installed already ([`MetricsError::Install`]), or the server cannot start.
pub fn serve(listener: std::net::TcpListener) -> Result<MetricsServer, MetricsError> {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|source| MetricsError::Install { addr, source })?;
    describe();
    MetricsServer::start(listener, handle, Limits::default())
}

/// Gives each metric its help text.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(UPGRADES_STARTED, "Upgrades begun.");
    describe_counter!(UPGRADES_DONE, "Upgrades that reached their target.");
    describe_counter!(
        UPGRADES_FAILED,
        "Upgrades whose new workers never ACKed in time."
    );
    describe_counter!(UPGRADES_ROLLED_BACK, "Canary upgrades rolled back.");
    describe_histogram!(
        UPGRADE_DURATION,
        metrics::Unit::Seconds,
        "Time from an upgrade's start to its end, done or not."
    );
    describe_gauge!(
        LAST_UPGRADE_DURATION,
        metrics::Unit::Seconds,
        "The last upgrade's duration."
    );
    describe_counter!(
        RESPAWNS,
        "Workers that exited on their own and were replaced."
    );
    describe_gauge!(WORKERS, "Workers by generation and state.");
    describe_gauge!(VERSION, "The version new workers get.");
    describe_counter!(
        GENERATION_RESPONSES,
        "Responses of each version's workers by status class, as they reported them."
    );
}

/// Turns what the machine did into metrics. See the [module documentation](self).
#[derive(Debug, Default)]
pub struct MasterMetrics {
    tally: Tally,
    /// When the upgrade in progress began, in this process.
    upgrade_began: Option<Instant>,
}

impl MasterMetrics {
    /// Metrics that go on from `tally` (a handed-over one, or zeros): the upgrade-duration
    /// histogram and the last duration are recorded again from it.
    pub fn new(tally: Tally) -> MasterMetrics {
        for &took in &tally.upgrade_durations {
            metrics::histogram!(UPGRADE_DURATION).record(took);
        }
        if let Some(&last) = tally.upgrade_durations.last() {
            metrics::gauge!(LAST_UPGRADE_DURATION).set(last);
        }
        MasterMetrics {
            tally,
            upgrade_began: None,
        }
    }

    /// The counts, for a re-exec to hand over.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// Reads the machine after an event: its log messages and its workers.
    pub fn after(&mut self, machine: &Machine, logs: &[Log]) {
        // A canary whose exit rolled its upgrade back is not replaced: no respawn.
        let rolled_back = logs
            .iter()
            .any(|log| matches!(log.message, Message::RolledBack { .. }));
        for log in logs {
            match &log.message {
                Message::UpgradeStarting { .. } | Message::UpgradeRestarting { .. } => {
                    self.tally.upgrades_started += 1;
                    self.upgrade_began.get_or_insert_with(Instant::now);
                }
                Message::Upgraded { .. } => {
                    self.tally.upgrades_done += 1;
                    self.upgrade_ended();
                }
                Message::UpgradeFailed { .. } => {
                    self.tally.upgrades_failed += 1;
                    self.upgrade_ended();
                }
                Message::RolledBack { .. } => {
                    self.tally.upgrades_rolled_back += 1;
                    self.upgrade_ended();
                }
                Message::UpgradeAborted { .. } => self.upgrade_ended(),
                Message::Exited { note, .. }
                    if !matches!(note, ExitNote::Retired)
                        && !machine.is_stopping()
                        && !rolled_back =>
                {
                    self.tally.respawns += 1;
                }
                _ => {}
            }
        }
        self.publish(machine);
    }

    fn upgrade_ended(&mut self) {
        if let Some(began) = self.upgrade_began.take() {
            let took = began.elapsed().as_secs_f64();
            metrics::histogram!(UPGRADE_DURATION).record(took);
            metrics::gauge!(LAST_UPGRADE_DURATION).set(took);
            let kept = &mut self.tally.upgrade_durations;
            if kept.len() == KEPT_DURATIONS {
                kept.remove(0);
            }
            kept.push(took);
        }
    }

    /// Sets every metric from the tally and the machine's state.
    fn publish(&self, machine: &Machine) {
        let tally = &self.tally;
        metrics::counter!(UPGRADES_STARTED).absolute(tally.upgrades_started);
        metrics::counter!(UPGRADES_DONE).absolute(tally.upgrades_done);
        metrics::counter!(UPGRADES_FAILED).absolute(tally.upgrades_failed);
        metrics::counter!(UPGRADES_ROLLED_BACK).absolute(tally.upgrades_rolled_back);
        metrics::counter!(RESPAWNS).absolute(tally.respawns);
        // What a new worker gets: during an upgrade its version, after a failed one the
        // pinned last good version.
        let version = match machine.pinned() {
            Some(good) if !machine.is_upgrading() => good,
            _ => machine.version(),
        };
        metrics::gauge!(VERSION).set(version as f64);
        // [current, old] x [starting, serving, stopping]: current is the base version and
        // newer (after a rollback, the workers that serve on).
        let base = machine.base_version();
        let mut workers = [[0u32; 3]; 2];
        for worker in machine.workers() {
            let generation = usize::from(worker.version < base);
            let state = match (worker.retired, worker.acked) {
                (Some(_), _) => 2,
                (None, false) => 0,
                (None, true) => 1,
            };
            workers[generation][state] += 1;
        }
        for (g, generation) in ["current", "old"].into_iter().enumerate() {
            for (s, state) in ["starting", "serving", "stopping"].into_iter().enumerate() {
                metrics::gauge!(WORKERS, "generation" => generation, "state" => state)
                    .set(f64::from(workers[g][s]));
            }
        }
        for (version, responses) in machine.generation_responses() {
            for (class, count) in graceful_listener::telemetry::STATUS_CLASSES
                .iter()
                .zip(responses)
            {
                metrics::counter!(GENERATION_RESPONSES, "version" => version.to_string(), "class" => *class)
                    .absolute(count);
            }
        }
    }
}
