//! The `state` command's reply, as a type: the master produces it, clients parse it.
//!
//! ```no_run
//! use std::time::Duration;
//! use einhorn_master::client::Client;
//!
//! let mut client = Client::connect("/tmp/einhorn.sock")?;
//! let state = client.state(Duration::from_secs(5))?;
//! let port = state.listeners[0].addr.rsplit(':').next().unwrap();
//! let serving = state.workers.iter().filter(|w| w.acked && w.retired.is_none()).count();
//! println!("port {port}, {serving} workers serving");
//! # Ok::<(), einhorn_master::client::ClientError>(())
//! ```

use serde::{Deserialize, Serialize};

use crate::machine::{ListenerInfo, Pid};

/// A snapshot of the master, as `state` reports it (YAML in the reply's `message`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MasterState {
    /// The master's pid.
    pub master_pid: Pid,
    /// Its `-c` name.
    pub command_name: Option<String>,
    /// The current version: 0 at start, one more per upgrade.
    pub version: u64,
    /// The target number of workers.
    pub target_workers: usize,
    /// `manual` or `timer (Ns)`.
    pub ack_mode: String,
    /// `smooth` or `fleet` while an upgrade runs.
    pub upgrading: Option<String>,
    /// Whether the master is stopping.
    pub stopping: bool,
    /// Workers that died before ACKing, in a row (drives the respawn backoff).
    pub consecutive_failures: u32,
    /// The listening sockets, with their real addresses.
    pub listeners: Vec<ListenerInfo>,
    /// Every worker the master has not yet reaped.
    pub workers: Vec<WorkerState>,
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
    /// Pids of the workers of the current version that ACKed and were not told to stop: the
    /// ones serving after an upgrade.
    pub fn serving_pids(&self) -> Vec<Pid> {
        self.workers
            .iter()
            .filter(|w| w.version == self.version && w.acked && w.retired.is_none())
            .filter_map(|w| w.pid)
            .collect()
    }

    /// Pids of every worker the master knows (retired ones included, until reaped).
    pub fn all_pids(&self) -> Vec<Pid> {
        self.workers.iter().filter_map(|w| w.pid).collect()
    }
}
