//! Stopping: the master's signals, the workers' stop signals, `-t`'s escalation to SIGKILL,
//! and the exit.

use super::*;

impl Machine {
    pub(super) fn master_signal(&mut self, now: Instant, signal: MasterSignal) {
        match signal {
            MasterSignal::Hup => {
                let order = UpgradeOrder {
                    fleet: false,
                    canary: self.config.canary,
                };
                self.upgrade_requested(now, order, None);
            }
            MasterSignal::Usr2 | MasterSignal::Int => {
                self.stop(now, Signal::SIGUSR2);
            }
            MasterSignal::Term => {
                self.stop(now, Signal::SIGTERM);
            }
            MasterSignal::Quit => self.quit(),
        }
    }

    /// Retires every worker with `signal`, stops respawning, aborts an upgrade. Returns the pids
    /// signaled.
    ///
    /// The first time, workers already sent `signal` (old ones draining after an upgrade) are
    /// left alone. Once stopping, every worker still running gets `signal` again, as Einhorn
    /// re-sends it: workers on graceful-listener take a second signal as "stop now".
    pub(super) fn stop(&mut self, now: Instant, signal: Signal) -> Vec<Pid> {
        self.abort_reexec();
        if let Some(up) = self.upgrade.take() {
            self.finish(
                up,
                Response::failure(Message::UpgradeAborted { quitting: false }, None),
            );
        }
        let again = matches!(self.phase, Phase::Stopping(_));
        if !again {
            self.log(Level::Info, Message::Stopping { signal });
        }
        self.phase = Phase::Stopping(signal);
        let targets: Vec<usize> = (0..self.workers.len())
            .filter(|&i| again || self.workers[i].retired.map(|(s, _)| s) != Some(signal))
            .collect();
        let pids = self.retire(now, &targets, signal);
        if again {
            self.log(
                Level::Warn,
                Message::StopNow(Sent {
                    signal,
                    pids: pids.clone(),
                }),
            );
        }
        pids
    }

    pub(super) fn quit(&mut self) {
        self.abort_reexec();
        if let Some(up) = self.upgrade.take() {
            self.finish(
                up,
                Response::failure(Message::UpgradeAborted { quitting: true }, None),
            );
        }
        self.log(Level::Info, Message::Quitting);
        let pids: Vec<Pid> = self.workers.iter().filter_map(|w| w.pid).collect();
        for pid in pids {
            self.actions.push(Action::Signal {
                pid,
                signal: Signal::SIGQUIT,
            });
        }
        self.exit(0);
    }

    pub(super) fn exit(&mut self, code: i32) {
        self.phase = Phase::Done;
        self.actions.push(Action::Exit { code });
    }

    pub(super) fn escalate(&mut self, now: Instant) {
        let Some(after) = self.config.signal_timeout else {
            return;
        };
        for w in &mut self.workers {
            let (Some(pid), Some((signal, at))) = (w.pid, w.retired) else {
                continue;
            };
            if !w.killed && now >= at + after {
                w.killed = true;
                self.logs.push(Log {
                    level: Level::Warn,
                    message: Message::Killing { pid, after, signal },
                });
                self.actions.push(Action::Signal {
                    pid,
                    signal: Signal::SIGKILL,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
