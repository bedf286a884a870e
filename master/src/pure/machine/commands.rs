//! The command socket's requests, carried out.

use super::*;

impl Machine {
    pub(super) fn request(
        &mut self,
        now: Instant,
        conn: ConnId,
        id: Option<RequestId>,
        command: Command,
    ) {
        let reply = |message: Message| Action::Reply {
            conn,
            reply: Response::last(message, id.clone()),
        };
        match command {
            Command::Ehlo { user } => {
                self.actions.push(reply(Message::Welcome {
                    user,
                    master_pid: self.config.master_pid,
                    command_name: self.config.command_name.clone(),
                }));
            }
            Command::Help => self.actions.push(reply(Message::Help)),
            Command::State => {
                let report = self.state(now);
                self.actions.push(reply(Message::State(Box::new(report))));
            }
            Command::Config => {
                let config = self.config_state();
                self.actions.push(reply(Message::Config(Box::new(config))));
            }
            Command::Upgrade { fleet, canary } => {
                let canary = canary.or(self.config.canary);
                self.upgrade_requested(now, UpgradeOrder { fleet, canary }, Some((conn, id)));
            }
            Command::WorkerStats {
                pid,
                responses,
                latency,
            } => {
                self.worker_stats(now, pid, responses, latency.map(|l| *l));
                // A worker that understands `worker:shed` reads this answer; others ignore it.
                let shed = self.shed_for(pid);
                self.actions.push(reply(Message::StatsAnswer { shed }));
                self.actions.push(Action::Close { conn });
            }
            Command::Reload => self.reload_requested((conn, id)),
            Command::Quieter | Command::Louder => {
                let step = if command == Command::Louder { 1 } else { -1 };
                self.set_verbosity(self.verbosity.saturating_add(step));
                self.actions.push(Action::SetLogLevel {
                    offset: self.verbosity,
                });
                let message = Message::Verbosity {
                    offset: self.verbosity,
                };
                self.log(Level::Info, message.clone());
                self.actions.push(reply(message));
            }
            Command::Inc => {
                let from = self.target;
                self.target += 1;
                self.count_changed(conn, id, CountChange::Inc, from);
            }
            Command::Dec => {
                if self.target <= 1 {
                    let message = Message::CannotDecrease {
                        target: self.target,
                        master_pid: self.config.master_pid,
                    };
                    self.actions.push(Action::Reply {
                        conn,
                        reply: Response::failure(message, id),
                    });
                    return;
                }
                let from = self.target;
                self.target -= 1;
                self.count_changed(conn, id, CountChange::Dec, from);
            }
            Command::SetWorkers(count) => {
                if count == self.target {
                    self.log(Level::Info, Message::WorkersUnchanged { count });
                    self.actions
                        .push(reply(Message::WorkersUnchanged { count }));
                } else {
                    let from = self.target;
                    self.target = count;
                    self.count_changed(conn, id, CountChange::Set, from);
                }
            }
            Command::Signal(signals) => {
                let sent: Vec<Sent> = signals
                    .into_iter()
                    .map(|signal| {
                        let pids: Vec<Pid> = self.workers.iter().filter_map(|w| w.pid).collect();
                        for &pid in &pids {
                            self.actions.push(Action::Signal { pid, signal });
                        }
                        Sent { signal, pids }
                    })
                    .collect();
                self.actions.push(reply(Message::SignalsSent(sent)));
            }
            Command::Die(signal) => {
                let pids = self.stop(now, signal);
                self.actions
                    .push(reply(Message::GoingDown(Sent { signal, pids })));
            }
            Command::WorkerAck { pid } => {
                self.actions.push(Action::Close { conn });
                self.manual_ack(now, pid);
            }
            Command::WorkerPing { pid } => {
                self.actions.push(Action::Close { conn });
                match self.find(pid) {
                    Some(i) => self.workers[i].last_ping = Some(now),
                    None => self.log(Level::Warn, Message::PingFromUnknown { pid }),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
