//! What the driver tells the world beyond the machine's own log lines: the last stderr lines
//! of a worker that failed (died, or never ACKed), and systemd's notifications.
//!
//! It watches the machine from outside: after each event it reads the machine's typed log
//! messages (an exit before the ACK, a failed upgrade) and its counts, so the machine stays
//! free of both concerns.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::PoisonError;
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::sync::watch;

use crate::notify::{Notifier, Observed, Readiness};
use crate::pure::machine::{ExitNote, Log, Machine, Message};
use crate::pure::render;
use crate::pure::state::Pid;
use crate::stderr::{Forwarding, Tail, Tails, forward, indent};

/// See the [module documentation](self).
#[derive(Debug)]
pub struct Observer {
    /// Lines kept per worker; 0: stderr is not captured.
    tail_lines: usize,
    tails: Tails,
    to: Forwarding,
    detach: watch::Sender<bool>,
    returned: UnboundedReceiver<(Pid, OwnedFd)>,
    /// Workers whose stderr is being forwarded.
    forwarding: HashSet<Pid>,
    /// Workers reaped whose stderr is still open: the report to write at its end, if any.
    exited: HashMap<Pid, Option<String>>,
    /// Workers whose stderr ended before they were reaped.
    closed: HashSet<Pid>,
    readiness: Readiness,
    notifier: Notifier,
    was_upgrading: bool,
    /// The last worker that died before its ACK, during the current upgrade.
    last_exit: Option<String>,
    /// Why the last upgrade failed.
    failure: Option<String>,
    /// The master's metrics, when they are served.
    metrics: Option<crate::metrics::MasterMetrics>,
}

impl Observer {
    /// An observer keeping `tail_lines` stderr lines per worker (0: none captured) and
    /// notifying systemd for master `master_pid` when `NOTIFY_SOCKET` is set. Returns the
    /// receiver of "stderr closed" events, for the driver's loop to pass to
    /// [`Observer::stderr_closed`].
    pub fn new(tail_lines: usize, master_pid: Pid) -> (Observer, UnboundedReceiver<Pid>) {
        let (closed_tx, closed_rx) = unbounded_channel();
        let (returned_tx, returned) = unbounded_channel();
        let (detach, detach_rx) = watch::channel(false);
        let observer = Observer {
            tail_lines,
            tails: Tails::default(),
            to: Forwarding {
                closed: closed_tx,
                detach: detach_rx,
                returned: returned_tx,
            },
            detach,
            returned,
            forwarding: HashSet::new(),
            exited: HashMap::new(),
            closed: HashSet::new(),
            readiness: Readiness::default(),
            notifier: Notifier::from_env(u32::try_from(master_pid).unwrap_or_default()),
            was_upgrading: false,
            last_exit: None,
            failure: None,
            metrics: None,
        };
        (observer, closed_rx)
    }

    /// Whether workers' stderr should be a pipe to the master.
    pub fn captures_stderr(&self) -> bool {
        self.tail_lines > 0
    }

    /// A worker started: forward its stderr, keeping its tail. Call it within the runtime.
    pub fn started(&mut self, pid: Pid, stderr: Option<std::process::ChildStderr>) {
        let Some(stderr) = stderr else { return };
        let pipe = match tokio::process::ChildStderr::from_std(stderr) {
            Ok(pipe) => pipe,
            Err(e) => {
                tracing::warn!("cannot read worker {pid}'s stderr: {e}");
                return;
            }
        };
        self.tails
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pid, Tail::new(self.tail_lines));
        self.forward(pid, pipe);
    }

    fn forward(&mut self, pid: Pid, pipe: tokio::process::ChildStderr) {
        self.forwarding.insert(pid);
        tokio::spawn(forward(pid, pipe, self.tails.clone(), self.to.clone()));
    }

    /// Forwards worker `pid`'s stderr pipe again, carried over (from the master before an
    /// exec, or back after a failed one) with the lines kept so far. Call it within the
    /// runtime.
    pub fn adopt_stderr(&mut self, pid: Pid, pipe: OwnedFd, lines: &[String]) {
        let pipe =
            match tokio::process::ChildStderr::from_std(std::process::ChildStderr::from(pipe)) {
                Ok(pipe) => pipe,
                Err(e) => {
                    tracing::warn!("cannot read worker {pid}'s stderr any more: {e}");
                    return;
                }
            };
        let mut tail = Tail::new(self.tail_lines);
        for line in lines {
            tail.push(line.as_bytes());
            tail.push(b"\n");
        }
        self.tails
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pid, tail);
        self.forward(pid, pipe);
    }

    /// Takes every stderr pipe back from its forwarding task (waiting at most `within`), with
    /// the lines kept of each, to carry them across an exec. Pipes of workers already reaped
    /// are left to close.
    pub async fn detach_stderr(&mut self, within: Duration) -> Vec<(Pid, OwnedFd, Vec<String>)> {
        let mut pipes: Vec<(Pid, OwnedFd)> = Vec::new();
        if self.forwarding.is_empty() {
            return Vec::new();
        }
        let _ = self.detach.send(true);
        let deadline = tokio::time::Instant::now() + within;
        while pipes.len() < self.forwarding.len() {
            match tokio::time::timeout_at(deadline, self.returned.recv()).await {
                Ok(Some(pipe)) => pipes.push(pipe),
                _ => break,
            }
        }
        let _ = self.detach.send(false);
        let mut tails = self.tails.lock().unwrap_or_else(PoisonError::into_inner);
        pipes
            .into_iter()
            .map(|(pid, fd)| {
                self.forwarding.remove(&pid);
                let lines = tails.remove(&pid).map(|t| t.lines()).unwrap_or_default();
                (pid, fd, lines)
            })
            .collect()
    }

    /// Records the master's metrics from now on, going on from `tally`.
    pub fn record_metrics(&mut self, tally: crate::metrics::Tally) {
        self.metrics = Some(crate::metrics::MasterMetrics::new(tally));
    }

    /// The metrics' counts, when recorded: carried across an exec.
    pub fn metrics_tally(&self) -> Option<crate::metrics::Tally> {
        self.metrics.as_ref().map(|m| m.tally().clone())
    }

    /// What systemd was told, and why the last upgrade failed: carried across an exec.
    pub fn notified(&self) -> (crate::notify::Readiness, Option<String>) {
        (self.readiness.clone(), self.failure.clone())
    }

    /// Goes on from what a previous master told systemd.
    pub fn resume_notified(
        &mut self,
        readiness: crate::notify::Readiness,
        failure: Option<String>,
    ) {
        self.readiness = readiness;
        self.failure = failure;
    }

    /// Worker `pid`'s stderr reached its end.
    pub fn stderr_closed(&mut self, pid: Pid) {
        self.forwarding.remove(&pid);
        match self.exited.remove(&pid) {
            Some(report) => self.finish(pid, report),
            None => {
                self.closed.insert(pid);
            }
        }
    }

    /// Looks at the machine after an event, with the log lines that event produced (before
    /// they are written).
    pub fn after(&mut self, machine: &Machine, logs: &[Log]) {
        let upgrading = machine.is_upgrading();
        if upgrading && !self.was_upgrading {
            self.last_exit = None;
        }
        self.was_upgrading = upgrading;
        for log in logs {
            match &log.message {
                Message::Exited { pid, note, status } => self.worker_exited(*pid, *note, status),
                message @ Message::UpgradeFailed { signaled, .. } => {
                    for &pid in signaled {
                        self.report_now(pid, format!("worker {pid} never ACKed"));
                    }
                    let mut why = render::text(message);
                    if let Some(exit) = self.last_exit.take() {
                        why.push_str(&format!("; last new worker: {exit}"));
                    }
                    self.failure = Some(why);
                }
                message @ Message::RolledBack { .. } => {
                    self.failure = Some(render::text(message));
                }
                _ => {}
            }
        }
        if let Some(metrics) = &mut self.metrics {
            metrics.after(machine, logs);
        }
        let observed = observe(machine, self.failure.clone());
        for notice in self.readiness.observe(&observed) {
            self.notifier.send(&notice);
        }
    }

    fn worker_exited(&mut self, pid: Pid, note: ExitNote, status: &str) {
        let report = match note {
            ExitNote::BeforeAck { .. } => {
                self.last_exit = Some(format!("{pid} {status} before it ACKed"));
                Some(format!("worker {pid} exited ({status}) before it ACKed"))
            }
            ExitNote::SoonAfterAck { after, .. } => Some(format!(
                "worker {pid} exited ({status}) {:.3}s after its ACK",
                after.as_secs_f64()
            )),
            ExitNote::Unexpected => Some(format!("worker {pid} exited unexpectedly ({status})")),
            ExitNote::Retired => None,
        };
        if !self.captures_stderr() {
            return;
        }
        if self.closed.remove(&pid) {
            self.finish(pid, report);
        } else {
            self.exited.insert(pid, report);
        }
    }

    /// Logs `report` with the worker's last stderr lines (if any report), and forgets it.
    fn finish(&mut self, pid: Pid, report: Option<String>) {
        let tail = self
            .tails
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&pid);
        if let (Some(report), Some(tail)) = (report, tail) {
            tracing::error!("{report}; its last stderr lines:{}", indent(&tail.lines()));
        }
    }

    /// Logs `report` with what worker `pid` wrote to stderr so far (it is still running).
    fn report_now(&self, pid: Pid, report: String) {
        let lines = self
            .tails
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&pid)
            .map(Tail::lines);
        if let Some(lines) = lines {
            tracing::error!("{report}; its last stderr lines:{}", indent(&lines));
        }
    }
}

/// The machine as systemd's notifications see it.
fn observe(machine: &Machine, failure: Option<String>) -> Observed {
    let base = machine.base_version();
    let serving = machine
        .workers()
        .filter(|w| w.version >= base && w.acked && w.retired.is_none())
        .count();
    Observed {
        serving,
        target: machine.target(),
        version: machine.version(),
        base_version: base,
        upgrading: machine.is_upgrading(),
        reexec: machine.is_upgrading() && !machine.upgrade_running(),
        requests: machine.requests(),
        stopping: machine.is_stopping() || machine.is_done(),
        failure,
    }
}
