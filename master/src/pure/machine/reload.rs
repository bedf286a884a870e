//! Reloading the master itself: the re-exec asked for, refused, or resumed in the new
//! program.

use super::*;

impl Machine {
    /// `reload`: re-exec the master alone.
    pub(super) fn reload_requested(&mut self, requester: Subscriber) {
        let (conn, id) = requester.clone();
        let refusal = if self.phase != Phase::Running {
            Some(Message::ReloadRefused { stopping: true })
        } else if !self.config.reexec {
            Some(Message::ReloadRefused { stopping: false })
        } else {
            None
        };
        if let Some(message) = refusal {
            self.log(Level::Warn, message.clone());
            self.actions.push(Action::Reply {
                conn,
                reply: Response::failure(message, id),
            });
            return;
        }
        self.actions.push(Action::Reply {
            conn,
            reply: Response::more(Message::ReloadAccepted, id),
        });
        self.requests += 1;
        self.ask_reexec().reloaders.push(requester);
    }

    /// The pending re-exec, asked for now if it was not yet.
    pub(super) fn ask_reexec(&mut self) -> &mut Reexec {
        if self.reexec.is_none() {
            self.log(Level::Info, Message::Reexecing);
            self.actions.push(Action::Reexec);
        }
        self.reexec.get_or_insert_with(Reexec::default)
    }

    pub(super) fn reexec_failed(&mut self, reason: &str) {
        let Some(reexec) = self.reexec.take() else {
            return;
        };
        let message = Message::ReexecFailed {
            reason: reason.to_string(),
            upgrade: reexec.upgrade.is_some(),
        };
        self.log(Level::Error, message.clone());
        for (conn, id) in reexec.upgraders.into_iter().chain(reexec.reloaders) {
            self.actions.push(Action::Reply {
                conn,
                reply: Response::failure(message.clone(), id),
            });
        }
    }

    /// In the new master: the re-exec is done; answer the reloads, start the upgrade.
    pub(super) fn resumed(&mut self, now: Instant) {
        let Some(reexec) = self.reexec.take() else {
            return;
        };
        let message = Message::Reexeced {
            master_pid: self.config.master_pid,
        };
        self.log(Level::Info, message.clone());
        for (conn, id) in reexec.reloaders {
            self.actions.push(Action::Reply {
                conn,
                reply: Response::last(message.clone(), id),
            });
        }
        if let Some(order) = reexec.upgrade {
            for (conn, id) in &reexec.upgraders {
                self.actions.push(Action::Reply {
                    conn: *conn,
                    reply: Response::more(message.clone(), id.clone()),
                });
            }
            if self.phase == Phase::Running {
                self.start_upgrade(now, order, reexec.upgraders);
            }
        }
    }

    /// Gives up a pending re-exec: the master is stopping.
    pub(super) fn abort_reexec(&mut self) {
        let Some(reexec) = self.reexec.take() else {
            return;
        };
        self.actions.push(Action::CancelReexec);
        let message = Message::ReexecFailed {
            reason: "the master is stopping".to_string(),
            upgrade: reexec.upgrade.is_some(),
        };
        for (conn, id) in reexec.upgraders.into_iter().chain(reexec.reloaders) {
            self.actions.push(Action::Reply {
                conn,
                reply: Response::failure(message.clone(), id),
            });
        }
    }
}

#[cfg(test)]
mod tests;
