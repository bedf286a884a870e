//! Canary upgrades: the soak, the workers' statistics it judges, the share of clients moved
//! to the canaries, and the rollback.

use super::*;

impl Machine {
    // ----- canaries -----

    /// A worker's response counts (`worker:stats`); during a soak, the canaries' are
    /// compared with the old workers'.
    pub(super) fn worker_stats(
        &mut self,
        now: Instant,
        pid: i64,
        responses: [u64; 5],
        latency: Option<[u64; LATENCY_BUCKETS]>,
    ) {
        let Some(i) = self.find(Some(pid)) else {
            self.log(Level::Debug, Message::StatsFromUnknown { pid });
            return;
        };
        let worker = &mut self.workers[i];
        // Cumulative: only growth counts (a count going down is a confused sender).
        let grow = |totals: &mut [u64], last: &mut [u64], now: &[u64]| {
            for ((total, last), count) in totals.iter_mut().zip(last.iter_mut()).zip(now) {
                *total += count.saturating_sub(*last);
                *last = (*last).max(*count);
            }
        };
        let totals = self.generations.entry(worker.version).or_default();
        grow(totals, &mut worker.responses, &responses);
        if let Some(latency) = latency {
            let totals = self.generation_latency.entry(worker.version).or_default();
            grow(totals, &mut worker.latency, &latency);
        }
        self.judge_canary(now, false);
    }

    /// During a soak, the share (thousandths) of its keep-alive connections old worker
    /// `pid` should end, so that their clients reconnect and some reach the canaries: the
    /// canaries' share of the serving workers, until they have answered enough for a verdict
    /// and at least half their share of the responses. `None` for anyone else, or once that
    /// holds.
    pub(super) fn shed_for(&self, pid: i64) -> Option<u64> {
        let up = self.upgrade.as_ref()?;
        up.canary.as_ref()?.soaking?;
        let worker = self
            .workers
            .iter()
            .find(|w| w.pid.map(i64::from) == Some(pid))?;
        if worker.version >= self.version || worker.retired.is_some() {
            return None;
        }
        let serving = |new: bool| {
            self.workers
                .iter()
                .filter(|w| (w.version == self.version) == new && w.acked() && w.retired.is_none())
                .count() as u64
        };
        let (canaries, old) = (serving(true), serving(false));
        if canaries == 0 || old == 0 {
            return None;
        }
        let share = canaries * 1000 / (canaries + old);
        let ((new_responses, _), (old_responses, _)) = self.soak_counts()?;
        let enough = new_responses >= self.config.canary_min_responses.max(1);
        let served_share = new_responses * 1000 * 2 >= share * (new_responses + old_responses);
        (!(enough && served_share)).then_some(share)
    }

    /// Responses and 5xx among them: the canaries' (the newest version's) and the other
    /// workers' since the soak began; `None` outside a soak.
    pub(super) fn soak_counts(&self) -> Option<((u64, u64), (u64, u64))> {
        let up = self.upgrade.as_ref()?;
        let (_, old_then) = up.canary.as_ref()?.soaking?;
        let mut new = [0u64; 5];
        let mut old = [0u64; 5];
        for (&version, counts) in &self.generations {
            let into = if version == self.version {
                &mut new
            } else {
                &mut old
            };
            for class in 0..5 {
                into[class] += counts[class];
            }
        }
        let sum = |c: &[u64; 5]| c.iter().sum::<u64>();
        let old_since: [u64; 5] = std::array::from_fn(|c| old[c].saturating_sub(old_then[c]));
        Some(((sum(&new), new[4]), (sum(&old_since), old_since[4])))
    }

    /// The response times of every version but the newest (the canaries'), now.
    pub(super) fn old_latency(&self) -> [u64; LATENCY_BUCKETS] {
        let mut old = [0u64; LATENCY_BUCKETS];
        for times in self
            .generation_latency
            .range(..self.version)
            .map(|(_, t)| t)
        {
            for (sum, count) in old.iter_mut().zip(times) {
                *sum += count;
            }
        }
        old
    }

    /// The 99th percentiles, in milliseconds, of the canaries' response times and of the old
    /// workers' since the soak began; `None` until both have some.
    pub(super) fn soak_p99s(&self) -> Option<(u64, u64)> {
        let canary = self.upgrade.as_ref()?.canary.as_ref()?;
        canary.soaking?;
        let new = self.generation_latency.get(&self.version)?;
        let now = self.old_latency();
        let old: [u64; LATENCY_BUCKETS] =
            std::array::from_fn(|b| now[b].saturating_sub(canary.old_latency_then[b]));
        Some((
            graceful_listener::telemetry::p99_ms(new)?,
            graceful_listener::telemetry::p99_ms(&old)?,
        ))
    }

    /// The counts of every version but the newest (the canaries'), now.
    pub(super) fn old_counts(&self) -> [u64; 5] {
        let mut old = [0u64; 5];
        for counts in self.generations.range(..self.version).map(|(_, c)| c) {
            for class in 0..5 {
                old[class] += counts[class];
            }
        }
        old
    }

    /// During a soak: rolls back when the canaries' 5xx share exceeds the old workers' by
    /// more than [`CANARY_MAX_5XX_EXCESS`] (once they have answered
    /// [`MachineConfig::canary_min_responses`], or [`CANARY_MIN_RESPONSES`] when that is 0);
    /// at the soak's end (`end`), rolls back a canary that answered fewer than
    /// `canary_min_responses` (no evidence is no pass), and lets the upgrade go on otherwise.
    pub(super) fn judge_canary(&mut self, now: Instant, end: bool) {
        let Some((new, old)) = self.soak_counts() else {
            return;
        };
        let share = |(total, errors): (u64, u64)| {
            if total == 0 {
                0.0
            } else {
                errors as f64 / total as f64
            }
        };
        let needed = self.config.canary_min_responses;
        let compare_from = if needed == 0 {
            CANARY_MIN_RESPONSES
        } else {
            needed
        };
        if new.0 >= compare_from && share(new) > share(old) + CANARY_MAX_5XX_EXCESS {
            self.roll_back(now, Rollback::ServerErrors { new, old });
            return;
        }
        if new.0 >= compare_from
            && let Some((new_p99, old_p99)) = self.soak_p99s()
            && new_p99 >= old_p99.saturating_mul(CANARY_SLOW_FACTOR)
            && new_p99 >= old_p99 + CANARY_SLOW_MARGIN_MS
        {
            self.roll_back(
                now,
                Rollback::Slow {
                    new_p99_ms: new_p99,
                    old_p99_ms: old_p99,
                },
            );
            return;
        }
        if end && new.0 < needed {
            self.roll_back(
                now,
                Rollback::TooFewResponses {
                    new: new.0,
                    old: old.0,
                    needed,
                },
            );
            return;
        }
        if end {
            if let Some(up) = &mut self.upgrade {
                up.canary = None;
                up.progress_at = now;
            }
            self.progress(Message::CanaryPassed { new, old });
        }
    }

    pub(super) fn soak_ends_at(&self) -> Option<Instant> {
        let canary = self.upgrade.as_ref()?.canary.as_ref()?;
        let (since, _) = canary.soaking?;
        Some(since + canary.plan.soak)
    }

    /// Starts the soak once every canary has ACKed; ends it when its time is up.
    pub(super) fn soak(&mut self, now: Instant) {
        let acked = self.acked_count();
        let Some(up) = &self.upgrade else { return };
        let Some(canary) = &up.canary else { return };
        match canary.soaking {
            None if acked >= canary.plan.workers => {
                let (workers, soak) = (canary.plan.workers, canary.plan.soak);
                let old = self.old_counts();
                let old_latency = self.old_latency();
                if let Some(c) = self.upgrade.as_mut().and_then(|up| up.canary.as_mut()) {
                    c.soaking = Some((now, old));
                    c.old_latency_then = old_latency;
                }
                self.progress(Message::CanarySoaking { workers, soak });
                if soak.is_zero() {
                    self.judge_canary(now, true);
                }
            }
            Some((since, _)) if now >= since + canary.plan.soak => self.judge_canary(now, true),
            _ => {}
        }
    }

    /// Stops the canaries (the newest version's workers, gracefully) and keeps every other
    /// worker: the upgrade ends in an error.
    pub(super) fn roll_back(&mut self, now: Instant, why: Rollback) {
        let Some(up) = self.upgrade.take() else {
            return;
        };
        let others_serve = self
            .workers
            .iter()
            .any(|w| w.version != self.version && w.acked() && w.retired.is_none());
        // Never a gap: canaries that serve alone (every old worker died meanwhile) are kept.
        let new: Vec<usize> = (0..self.workers.len())
            .filter(|&i| {
                let w = &self.workers[i];
                w.version == self.version && w.retired.is_none() && (others_serve || !w.acked())
            })
            .collect();
        self.retire(now, &new, Signal::SIGUSR2);
        self.base = up.base;
        self.pin(up.good);
        let message = Message::RolledBack { why: why.clone() };
        self.log(Level::Error, message.clone());
        self.last_rollback = Some(why);
        self.finish(up, Response::failure(message, None));
    }
}

#[cfg(test)]
mod tests;
