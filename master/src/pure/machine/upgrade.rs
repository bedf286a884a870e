//! Upgrades: a new version's workers start, each one that ACKs (and proves itself) retires
//! old ones, and an upgrade that stops making progress fails with the old workers serving.

use super::*;

impl Machine {
    /// `upgrade`, `upgrade_fleet` or SIGHUP: re-exec the master first when it can, then
    /// upgrade the workers.
    pub(super) fn upgrade_requested(
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

    pub(super) fn start_upgrade(
        &mut self,
        now: Instant,
        order: UpgradeOrder,
        requesters: Vec<Subscriber>,
    ) {
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

    pub(super) fn check_upgrade_timeout(&mut self, now: Instant) {
        let timeout = self.config.upgrade_timeout;
        let due = matches!(&self.upgrade, Some(up) if now >= up.progress_at + timeout);
        if due {
            self.fail_upgrade(now, UpgradeFailure::Timeout(timeout));
        }
    }

    /// Ends the upgrade in progress in an error: its unACKed workers are retired, and
    /// whatever serves is the pool now.
    pub(super) fn fail_upgrade(&mut self, now: Instant, cause: UpgradeFailure) {
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

    pub(super) fn cull(&mut self, now: Instant) {
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

    /// From now on, workers started outside an upgrade run version `good`'s build.
    pub(super) fn pin(&mut self, good: u64) {
        self.pinned = Some(good);
        self.log(Level::Warn, Message::Pinned { version: good });
    }

    pub(super) fn finish(&mut self, up: Upgrade, last: Response) {
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
}

#[cfg(test)]
mod tests;
