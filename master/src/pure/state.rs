//! Snapshots of the master, as data: the `state` and `config` replies (the state machine
//! produces them, [`crate::pure::render`] writes them as YAML, clients parse them), and the plain
//! types they are made of. This module depends on no other module of the crate.
//!
//! ```no_run
//! use std::time::Duration;
//! use einhorn_master::client::Client;
//!
//! let mut client = Client::connect(einhorn_master::cli::default_socket_path(None))?;
//! let state = client.state(Duration::from_secs(5))?;
//! let port = state.listeners[0].addr.rsplit(':').next().unwrap();
//! let serving = state.workers.iter().filter(|w| w.acked && w.retired.is_none()).count();
//! println!("port {port}, {serving} workers serving");
//! # Ok::<(), einhorn_master::client::ClientError>(())
//! ```

use serde::{Deserialize, Serialize};

/// A process id.
pub type Pid = i32;

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

/// A snapshot of the master, as `state` reports it (YAML in the reply's `message`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MasterState {
    /// The master's pid.
    pub master_pid: Pid,
    /// Its `-c` name.
    pub command_name: Option<String>,
    /// The current version: 0 at start, one more per upgrade. New workers get it.
    pub version: u64,
    /// The oldest version that still counts as current: workers of this version or newer make
    /// up the pool, older ones are being replaced. Equal to `version`, except after a failed
    /// upgrade: the workers that kept serving then keep their own, older, version.
    #[serde(default)]
    pub base_version: u64,
    /// The target number of workers.
    pub target_workers: usize,
    /// `manual` or `timer (Ns)`.
    pub ack_mode: String,
    /// `smooth` or `fleet` while an upgrade runs.
    pub upgrading: Option<String>,
    /// Whether the master is stopping.
    pub stopping: bool,
    /// Failed starts in a row: workers that died before their ACK or within `--min-uptime`
    /// of it (drives the respawn backoff).
    pub consecutive_failures: u32,
    /// The wait between spawns while failed starts back them off (`None`: no backoff).
    #[serde(default)]
    pub respawn_backoff_seconds: Option<f64>,
    /// During a canary upgrade: `starting N` until the N canaries have ACKed, then
    /// `soaking (S s left)`.
    #[serde(default)]
    pub canary: Option<String>,
    /// Why the last canary upgrade was rolled back (`rolled back: ...`), if one was.
    #[serde(default)]
    pub last_rollback: Option<String>,
    /// After a failed or rolled-back upgrade: the last good version, whose build every
    /// worker started since runs (whatever is at the program's path) until an upgrade
    /// succeeds.
    #[serde(default)]
    pub pinned_version: Option<u64>,
    /// Faults the master lives with since it last started or reloaded (a worker program gone
    /// since its check, a pid or address file it cannot write, a listener it could not bind):
    /// each also logged when it happened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<String>,
    /// Responses by status class (`1xx` ... `5xx`) of each version, as its workers reported
    /// them (`worker:stats`), workers that exited included.
    #[serde(default)]
    pub generations: Vec<GenerationState>,
    /// The listening sockets, with their real addresses.
    pub listeners: Vec<ListenerInfo>,
    /// Every worker the master has not yet reaped.
    pub workers: Vec<WorkerState>,
}

/// One version's responses, in [`MasterState`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationState {
    /// The version.
    pub version: u64,
    /// Its responses by class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub responses: [u64; 5],
}

/// One worker in [`MasterState`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerState {
    /// Its pid (`None` only while a spawn is pending).
    pub pid: Option<Pid>,
    /// Its `EINHORN_CHILD_INDEX`.
    pub index: usize,
    /// The version it belongs to.
    pub version: u64,
    /// Whether it has ACKed.
    pub acked: bool,
    /// The stop signal the master sent it (`USR2`, `TERM`), if any.
    pub retired: Option<String>,
    /// Seconds since it was started.
    pub age_seconds: f64,
    /// Seconds since its last `worker:ping`.
    pub last_ping_seconds_ago: Option<f64>,
}

impl MasterState {
    /// Pids of the current workers (version at least [`base_version`](Self::base_version))
    /// that ACKed and were not told to stop: the ones serving after an upgrade.
    pub fn serving_pids(&self) -> Vec<Pid> {
        self.workers
            .iter()
            .filter(|w| w.version >= self.base_version && w.acked && w.retired.is_none())
            .filter_map(|w| w.pid)
            .collect()
    }

    /// Pids of every worker the master knows (retired ones included, until reaped).
    pub fn all_pids(&self) -> Vec<Pid> {
        self.workers.iter().filter_map(|w| w.pid).collect()
    }
}

/// The master's configuration, as `config` reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigState {
    /// The worker command line.
    pub command: Vec<String>,
    /// The target number of workers now.
    pub workers: usize,
    /// `manual` or `timer (Ns)`.
    pub ack_mode: String,
    /// `-s`.
    pub spawn_spacing_seconds: f64,
    /// `-t`, if given.
    pub signal_timeout_seconds: Option<f64>,
    /// `--upgrade-timeout`.
    pub upgrade_timeout_seconds: f64,
    /// `--min-uptime`.
    #[serde(default)]
    pub min_uptime_seconds: f64,
    /// The command socket's path.
    pub socket_path: String,
    /// The `-c` name, if any.
    pub command_name: Option<String>,
    /// The listening sockets.
    pub listeners: Vec<ListenerInfo>,
}
