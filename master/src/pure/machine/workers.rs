//! Workers and their ACKs: a spawn's outcome, exits, manual and timer ACKs, and retiring
//! workers with a signal.

use super::*;

impl Machine {
    pub(super) fn spawned(&mut self, now: Instant, id: SpawnId, pid: Pid) {
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

    pub(super) fn spawn_failed(&mut self, now: Instant, id: SpawnId, error: &str) {
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

    pub(super) fn exited(&mut self, now: Instant, pid: Pid, status: &str) {
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

    /// Logs and answers a change of the target count.
    pub(super) fn count_changed(
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

    pub(super) fn manual_ack(&mut self, now: Instant, pid: Option<i64>) {
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

    pub(super) fn find(&self, pid: Option<i64>) -> Option<usize> {
        let pid = Pid::try_from(pid?).ok()?;
        self.workers.iter().position(|w| w.pid == Some(pid))
    }

    pub(super) fn ack(&mut self, now: Instant, i: usize) {
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

    pub(super) fn timer_acks(&mut self, now: Instant) {
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

    // ----- helpers -----

    /// Whether a worker belongs to the pool (its version is at least the base version).
    pub(super) fn is_current(&self, worker: &Worker) -> bool {
        worker.version >= self.base
    }

    /// Current workers that proved themselves after their ACK and are not retired.
    pub(super) fn proven_count(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| self.is_current(w) && w.retired.is_none() && w.proven)
            .count()
    }

    /// Current workers that ACKed and are not retired.
    pub(super) fn acked_count(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| self.is_current(w) && w.retired.is_none() && w.acked())
            .count()
    }

    /// Old workers not yet retired, oldest first.
    pub(super) fn live_old(&self) -> Vec<usize> {
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
    pub(super) fn retire(&mut self, now: Instant, which: &[usize], signal: Signal) -> Vec<Pid> {
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
}

#[cfg(test)]
mod tests;
