//! Keeping the pool full: the first fill, spawns paced by `-s`, and the backoff after
//! failed starts.

use super::*;

impl Machine {
    // ----- events -----

    pub(super) fn start(&mut self, now: Instant) {
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

    // ----- convergence -----

    pub(super) fn converge(&mut self, now: Instant) {
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

    /// A failed start: the next spawns back off.
    pub(super) fn failed(&mut self, now: Instant) {
        self.failures += 1;
        self.last_failure = Some(now);
    }

    /// When the backoff ends: the first time a worker started after the last failure has
    /// been up for `min_uptime` since its ACK.
    pub(super) fn backoff_ends_at(&self) -> Option<Instant> {
        let since = self.last_failure.filter(|_| self.failures > 0)?;
        self.workers
            .iter()
            .filter(|w| w.pid.is_some() && w.retired.is_none() && w.spawned_at >= since)
            .filter_map(|w| w.acked_at)
            .map(|at| at + self.config.min_uptime)
            .min()
    }

    pub(super) fn end_backoff(&mut self, now: Instant) {
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

    pub(super) fn replenish(&mut self, now: Instant) {
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
    pub(super) fn wants_spawn(&self) -> bool {
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

    pub(super) fn spawn_ready_at(&self) -> Option<Instant> {
        self.last_spawn.map(|at| at + self.spawn_interval())
    }

    pub(super) fn spawn(&mut self, now: Instant) {
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
}

#[cfg(test)]
mod tests;
