//! Unit tests for the state machine, stepping virtual time.

use std::collections::BTreeSet;

use super::*;
use crate::pure::render;
use crate::pure::wire::Reply;
use graceful_listener::telemetry::LATENCY_BUCKETS;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// A simulated driver: it starts a process for every spawn, with made-up pids, and keeps
/// everything that came out.
struct Sim {
    m: Machine,
    now: Instant,
    next_pid: Pid,
    live: BTreeSet<Pid>,
    actions: Vec<Action>,
}

impl Sim {
    fn new(config: MachineConfig) -> Sim {
        Sim {
            m: Machine::new(config),
            now: Instant::now(),
            next_pid: 100,
            live: BTreeSet::new(),
            actions: Vec::new(),
        }
    }

    fn manual(workers: usize) -> Sim {
        Sim::new(MachineConfig {
            ack_mode: AckMode::Manual,
            ..MachineConfig::new(workers)
        })
    }

    /// Starts and ACKs every worker; returns their pids.
    fn started(workers: usize) -> (Sim, Vec<Pid>) {
        Sim::started_with(MachineConfig {
            ack_mode: AckMode::Manual,
            ..MachineConfig::new(workers)
        })
    }

    /// A machine of `config` whose first workers have all ACKed.
    fn started_with(config: MachineConfig) -> (Sim, Vec<Pid>) {
        let mut sim = Sim::new(config);
        let pids = sim.start();
        for &pid in &pids {
            sim.ack(pid);
        }
        (sim, pids)
    }

    /// The workers serving: ACKed and not told to stop.
    fn serving(&self) -> BTreeSet<Pid> {
        self.m
            .workers()
            .filter(|w| w.acked && w.retired.is_none())
            .filter_map(|w| w.pid)
            .collect()
    }

    /// Feeds an event; spawns get pids at once, as the real driver does. Returns every action.
    ///
    /// Checks the rule "never a gap": unless the event stops the master, the workers serving
    /// after it are at least as many as before (the one that exited aside), up to the
    /// target; a serving worker is retired only once another serves in its place.
    fn feed(&mut self, event: Event) -> Vec<Action> {
        let mut serving_before = self.serving();
        if let Event::Exited { pid, .. } = &event {
            serving_before.remove(pid);
        }
        let stops = match &event {
            Event::Signal(signal) => *signal != MasterSignal::Hup,
            Event::Request { command, .. } => matches!(command, Command::Die(_)),
            _ => false,
        };
        let rollbacks = |m: &Machine| {
            m.logs
                .iter()
                .filter(|log| matches!(log.message, Message::RolledBack { .. }))
                .count()
        };
        let before = rollbacks(&self.m);
        let out = self.feed_unchecked(event.clone());
        // A rollback stops serving canaries by design, as long as others serve.
        let rolled_back = rollbacks(&self.m) > before;
        if !stops && !self.m.is_stopping() {
            let floor = if rolled_back {
                serving_before.len().min(1)
            } else {
                serving_before.len().min(self.m.target())
            };
            let after = self.serving();
            assert!(
                after.len() >= floor,
                "a gap: {} serving after {event:?}, {floor} before ({serving_before:?} -> {after:?})",
                after.len()
            );
        }
        out
    }

    fn feed_unchecked(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        let mut queue = vec![event];
        let mut rounds = 0;
        while let Some(event) = queue.pop() {
            rounds += 1;
            assert!(rounds < 10_000, "runaway feed");
            for action in self.m.handle(self.now, event) {
                match &action {
                    Action::Spawn { id, .. } => {
                        let pid = self.next_pid;
                        self.next_pid += 1;
                        self.live.insert(pid);
                        queue.insert(0, Event::Spawned { id: *id, pid });
                    }
                    Action::Signal { pid, .. } => {
                        assert!(
                            self.live.contains(pid),
                            "signal to dead pid {pid}: {action:?}"
                        );
                    }
                    _ => {}
                }
                out.push(action);
            }
        }
        self.actions.extend(out.iter().cloned());
        self.check_invariants();
        out
    }

    fn check_invariants(&self) {
        let current_serving = self
            .m
            .workers()
            .filter(|w| w.version == self.m.version() && w.retired.is_none())
            .count();
        assert!(
            current_serving <= self.m.target(),
            "{current_serving} current workers > target {}",
            self.m.target()
        );
        let mut indexes: Vec<usize> = self.m.workers().map(|w| w.index).collect();
        let len = indexes.len();
        indexes.sort_unstable();
        indexes.dedup();
        assert_eq!(indexes.len(), len, "duplicate worker index");
        for w in self.m.workers() {
            if let Some(pid) = w.pid {
                assert!(self.live.contains(&pid), "machine knows dead pid {pid}");
            }
        }
    }

    /// Carries out a re-exec: a snapshot, a new machine with `config` resumed from it (which
    /// takes the same snapshot again), then [`Event::Resumed`].
    fn reexec(&mut self, config: MachineConfig) -> Vec<Action> {
        let snapshot = self.m.snapshot(self.now);
        let encoded = serde_json::to_string(&snapshot).unwrap();
        let decoded: MachineSnapshot = serde_json::from_str(&encoded).unwrap();
        let same_config = config.workers == snapshot.configured_workers;
        self.m = Machine::resume(config, &decoded, self.now).expect("resumes");
        if same_config {
            assert_eq!(
                self.m.snapshot(self.now),
                snapshot,
                "a resumed machine is the same"
            );
        }
        self.feed(Event::Resumed)
    }

    /// Starts the machine; returns the pids of the first workers.
    fn start(&mut self) -> Vec<Pid> {
        let first = self.next_pid;
        self.feed(Event::Start);
        (first..self.next_pid).collect()
    }

    fn ack(&mut self, pid: Pid) -> Vec<Action> {
        self.feed(Event::Request {
            conn: ConnId(pid as u64 + 10_000),
            id: None,
            command: Command::WorkerAck {
                pid: Some(pid.into()),
            },
        })
    }

    fn exit(&mut self, pid: Pid) -> Vec<Action> {
        assert!(self.live.remove(&pid), "{pid} is not alive");
        self.feed(Event::Exited {
            pid,
            status: "exit status 0".into(),
        })
    }

    fn command(&mut self, conn: u64, command: Command) -> Vec<Action> {
        self.feed(Event::Request {
            conn: ConnId(conn),
            id: Some(RequestId::from(conn as i64)),
            command,
        })
    }

    /// Lets `d` pass, handling every deadline on the way.
    fn advance(&mut self, d: Duration) -> Vec<Action> {
        let end = self.now + d;
        let mut out = Vec::new();
        for _ in 0..10_000 {
            match self.m.next_deadline() {
                Some(at) if at <= end => {
                    self.now = self.now.max(at);
                    out.extend(self.feed(Event::Tick));
                }
                _ => break,
            }
        }
        self.now = end;
        out
    }

    fn pids(&self, version: u64) -> Vec<Pid> {
        self.m
            .workers()
            .filter(|w| w.version == version && w.retired.is_none())
            .filter_map(|w| w.pid)
            .collect()
    }

    fn retired(&self) -> Vec<Pid> {
        self.m
            .workers()
            .filter(|w| w.retired.is_some())
            .filter_map(|w| w.pid)
            .collect()
    }
}

fn spawns(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Spawn { .. }))
        .count()
}

fn signals(actions: &[Action]) -> Vec<(Pid, Signal)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Signal { pid, signal } => Some((*pid, *signal)),
            _ => None,
        })
        .collect()
}

/// The replies to connection `to`, as the wire carries them.
fn replies(actions: &[Action], to: u64) -> Vec<Reply> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Reply { conn, reply } if conn.0 == to => Some(render::reply(reply)),
            _ => None,
        })
        .collect()
}

fn exit_code(actions: &[Action]) -> Option<i32> {
    actions.iter().find_map(|a| match a {
        Action::Exit { code } => Some(*code),
        _ => None,
    })
}

// ----- start and ACK -----

#[test]
fn start_spawns_every_worker_at_once_with_distinct_indexes() {
    let mut sim = Sim::new(MachineConfig {
        spawn_spacing: secs(5.0),
        ..MachineConfig::new(3)
    });
    let actions = sim.feed(Event::Start);
    let indexes: Vec<usize> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Spawn { index, .. } => Some(*index),
            _ => None,
        })
        .collect();
    assert_eq!(indexes, vec![0, 1, 2]);
    assert!(
        sim.feed(Event::Start).is_empty(),
        "a second start does nothing"
    );
}

#[test]
fn timer_ack_counts_a_worker_alive_after_the_timer() {
    let mut sim = Sim::new(MachineConfig::new(2));
    sim.feed(Event::Start);
    assert!(sim.m.workers().all(|w| !w.acked));
    assert_eq!(sim.m.next_deadline(), Some(sim.now + secs(1.0)));
    sim.advance(secs(0.5));
    assert!(sim.m.workers().all(|w| !w.acked));
    sim.advance(secs(0.5));
    assert!(sim.m.workers().all(|w| w.acked));
    assert_eq!(sim.m.next_deadline(), None);
}

#[test]
fn timer_ack_of_zero_acks_at_once() {
    let mut sim = Sim::new(MachineConfig {
        ack_mode: AckMode::Timer(Duration::ZERO),
        ..MachineConfig::new(2)
    });
    sim.feed(Event::Start);
    assert!(sim.m.workers().all(|w| w.acked));
}

#[test]
fn manual_ack_in_timer_mode_is_ignored_and_closes_the_connection() {
    let mut sim = Sim::new(MachineConfig::new(1));
    let pid = sim.start()[0];
    let actions = sim.ack(pid);
    assert_eq!(
        actions,
        vec![Action::Close {
            conn: ConnId(pid as u64 + 10_000)
        }]
    );
    assert!(!sim.m.workers().next().unwrap().acked);
}

#[test]
fn manual_acks_count_and_unknown_or_repeated_acks_are_harmless() {
    let mut sim = Sim::manual(2);
    let pids = sim.start();
    assert_eq!(sim.m.next_deadline(), None, "manual mode has no timer");
    sim.ack(pids[0]);
    sim.ack(pids[0]);
    sim.ack(99_999);
    let actions = sim.feed(Event::Request {
        conn: ConnId(1),
        id: None,
        command: Command::WorkerAck { pid: None },
    });
    assert_eq!(actions, vec![Action::Close { conn: ConnId(1) }]);
    let acked: Vec<bool> = sim.m.workers().map(|w| w.acked).collect();
    assert_eq!(acked, vec![true, false]);
}

#[test]
fn worker_ping_closes_and_is_recorded() {
    let (mut sim, pids) = Sim::started(1);
    let actions = sim.feed(Event::Request {
        conn: ConnId(7),
        id: None,
        command: Command::WorkerPing {
            pid: Some(pids[0].into()),
        },
    });
    assert_eq!(actions, vec![Action::Close { conn: ConnId(7) }]);
    let state = sim.command(8, Command::State);
    let message = &replies(&state, 8)[0].message;
    assert!(message.contains("last_ping_seconds_ago: 0"), "{message}");
}

// ----- smooth upgrade -----

#[test]
fn smooth_upgrade_retires_one_old_worker_per_new_ack() {
    let (mut sim, old) = Sim::started(4);
    let actions = sim.command(
        1,
        Command::Upgrade {
            fleet: false,
            canary: None,
        },
    );
    let first = replies(&actions, 1);
    assert_eq!(first[0].message, "Upgrading smoothly, as commanded");
    assert!(
        first
            .iter()
            .all(|r| r.wait && r.request_id == Some(RequestId::from(1)))
    );
    assert_eq!(spawns(&actions), 1, "one new worker at a time");
    assert!(signals(&actions).is_empty());
    assert_eq!(sim.m.version(), 1);

    let mut retired = Vec::new();
    for round in 0..4 {
        let new = sim.pids(1);
        let unacked: Vec<Pid> = sim
            .m
            .workers()
            .filter(|w| w.version == 1 && !w.acked)
            .filter_map(|w| w.pid)
            .collect();
        assert_eq!(unacked.len(), 1, "round {round}: one unACKed new worker");
        assert_eq!(new.len(), round + 1);
        let actions = sim.ack(unacked[0]);
        let sent = signals(&actions);
        if round < 3 {
            assert_eq!(sent.len(), 1, "round {round}: {actions:?}");
            assert_eq!(spawns(&actions), 1);
            assert!(replies(&actions, 1).iter().all(|r| r.wait));
        } else {
            let last = replies(&actions, 1);
            let done = last.last().unwrap();
            assert_eq!(done.message, "Upgrade done");
            assert!(!done.wait && !done.error);
            assert_eq!(done.request_id, Some(RequestId::from(1)));
            assert!(last[..last.len() - 1].iter().all(|r| r.wait));
            assert_eq!(spawns(&actions), 0);
        }
        for (pid, signal) in sent {
            assert_eq!(signal, Signal::SIGUSR2);
            assert!(old.contains(&pid));
            retired.push(pid);
        }
    }
    retired.sort_unstable();
    assert_eq!(retired, old, "every old worker retired exactly once");
    assert!(!sim.m.is_upgrading());
    // New workers' indexes are past the old ones while those still run.
    let new_indexes: Vec<usize> = sim
        .m
        .workers()
        .filter(|w| w.version == 1)
        .map(|w| w.index)
        .collect();
    assert_eq!(new_indexes, vec![4, 5, 6, 7]);
    for pid in old {
        sim.exit(pid);
    }
    assert!(
        sim.advance(secs(100.0)).is_empty(),
        "steady: nothing more to do"
    );
}

#[test]
fn upgrade_done_comes_after_every_old_worker_is_signaled() {
    let (mut sim, old) = Sim::started(2);
    sim.command(
        1,
        Command::Upgrade {
            fleet: false,
            canary: None,
        },
    );
    let new = sim.pids(1)[0];
    sim.ack(new);
    let new = sim.pids(1)[1];
    let actions = sim.ack(new);
    let done_at = actions
        .iter()
        .position(
            |a| matches!(a, Action::Reply { reply, .. } if reply.message == Message::UpgradeDone),
        )
        .unwrap();
    let last_signal = actions
        .iter()
        .rposition(|a| matches!(a, Action::Signal { .. }))
        .unwrap();
    assert!(last_signal < done_at);
    assert_eq!(sim.retired().len(), old.len());
}

#[test]
fn spacing_is_a_minimum_between_spawns() {
    let mut sim = Sim::new(MachineConfig {
        ack_mode: AckMode::Manual,
        spawn_spacing: secs(2.0),
        ..MachineConfig::new(2)
    });
    for pid in sim.start() {
        sim.ack(pid);
    }
    sim.advance(secs(10.0));
    let actions = sim.command(
        1,
        Command::Upgrade {
            fleet: false,
            canary: None,
        },
    );
    assert_eq!(spawns(&actions), 1, "the last spawn was long ago");
    sim.advance(secs(0.5));
    let actions = sim.ack(sim.pids(1)[0]);
    assert_eq!(spawns(&actions), 0, "acked, but spacing not over");
    assert_eq!(sim.m.next_deadline(), Some(sim.now + secs(1.5)));
    let actions = sim.advance(secs(1.5));
    assert_eq!(spawns(&actions), 1);
}

#[test]
fn fleet_upgrade_spawns_all_and_retires_old_ones_when_all_acked() {
    let (mut sim, old) = Sim::started(3);
    let actions = sim.command(
        1,
        Command::Upgrade {
            fleet: true,
            canary: None,
        },
    );
    assert_eq!(
        replies(&actions, 1)[0].message,
        "Upgrading fleet, as commanded"
    );
    assert_eq!(spawns(&actions), 3);
    let new = sim.pids(1);
    assert!(signals(&sim.ack(new[0])).is_empty());
    assert!(signals(&sim.ack(new[1])).is_empty());
    let actions = sim.ack(new[2]);
    let mut sent: Vec<Pid> = signals(&actions).into_iter().map(|(p, _)| p).collect();
    sent.sort_unstable();
    assert_eq!(sent, old);
    assert_eq!(replies(&actions, 1).last().unwrap().message, "Upgrade done");
}

#[test]
fn sighup_upgrades_without_a_requester() {
    let (mut sim, old) = Sim::started(1);
    let actions = sim.feed(Event::Signal(MasterSignal::Hup));
    assert_eq!(spawns(&actions), 1);
    let actions = sim.ack(sim.pids(1)[0]);
    assert_eq!(signals(&actions), vec![(old[0], Signal::SIGUSR2)]);
    assert!(!sim.m.is_upgrading());
}

#[test]
fn overlapping_upgrades_stop_the_superseded_unacked_workers_never_the_serving_ones() {
    let (mut sim, old) = Sim::started(2);
    // Three upgrades before any new worker ACKs: each supersedes the last one's unACKed
    // worker, which is stopped; the old workers keep serving throughout.
    let mut superseded = Vec::new();
    for conn in 1..=3 {
        let actions = sim.command(
            conn,
            Command::Upgrade {
                fleet: false,
                canary: None,
            },
        );
        superseded.extend(signals(&actions).into_iter().map(|(pid, _)| pid));
        assert!(old.iter().all(|p| sim.serving().contains(p)), "{conn}");
        assert_eq!(sim.pids(conn).len(), 1, "one new worker at a time");
    }
    assert_eq!(superseded.len(), 2, "{superseded:?}");
    assert!(superseded.iter().all(|p| !old.contains(p)));
    // A SIGHUP too, with the newest worker half way.
    sim.feed(Event::Signal(MasterSignal::Hup));
    assert!(old.iter().all(|p| sim.serving().contains(p)));
    for _ in 0..2 {
        let unacked = sim.m.workers().find(|w| w.version == 4 && !w.acked);
        sim.ack(
            unacked
                .and_then(|w| w.pid)
                .expect("an unACKed version-4 worker"),
        );
    }
    assert!(!sim.m.is_upgrading());
    assert_eq!(sim.serving().len(), 2);
    assert!(
        sim.m
            .workers()
            .filter(|w| w.retired.is_none())
            .all(|w| w.version == 4)
    );
    for conn in 1..=3 {
        let all = replies(&sim.actions, conn);
        assert_eq!(all.last().unwrap().message, "Upgrade done", "conn {conn}");
    }
}

#[test]
fn upgrade_during_upgrade_starts_over_and_answers_both() {
    let (mut sim, old) = Sim::started(2);
    sim.command(
        1,
        Command::Upgrade {
            fleet: false,
            canary: None,
        },
    );
    let first_new = sim.pids(1)[0];
    sim.ack(first_new);
    assert_eq!(sim.retired().len(), 1);
    let actions = sim.command(
        2,
        Command::Upgrade {
            fleet: false,
            canary: None,
        },
    );
    assert!(
        replies(&actions, 1)
            .iter()
            .any(|r| r.message.contains("starting over"))
    );
    assert_eq!(sim.m.version(), 2);
    for _ in 0..2 {
        let pid = sim
            .pids(2)
            .into_iter()
            .find(|p| sim.m.workers().any(|w| w.pid == Some(*p) && !w.acked));
        sim.ack(pid.expect("an unacked version-2 worker"));
    }
    for conn in [1, 2] {
        let all = replies(&sim.actions, conn);
        assert_eq!(all.last().unwrap().message, "Upgrade done", "conn {conn}");
    }
    // Every worker of versions 0 and 1 is retired, the ACKed version-1 worker included.
    let mut retired = sim.retired();
    retired.sort_unstable();
    let mut expected: Vec<Pid> = sim
        .m
        .workers()
        .filter(|w| w.version < 2)
        .filter_map(|w| w.pid)
        .collect();
    expected.sort_unstable();
    assert_eq!(retired, expected);
    assert!(retired.contains(&first_new) && old.iter().all(|p| retired.contains(p)));
}

// ----- upgrade timeout -----

#[test]
fn an_upgrade_whose_workers_never_ack_fails_and_leaves_old_workers_serving() {
    let (mut sim, old) = Sim::started(2);
    sim.command(
        1,
        Command::Upgrade {
            fleet: false,
            canary: None,
        },
    );
    let new = sim.pids(1)[0];
    let actions = sim.advance(secs(59.0));
    assert!(actions.is_empty());
    let actions = sim.advance(secs(1.0));
    let last = replies(&actions, 1);
    let last = last.last().unwrap();
    assert!(last.error && !last.wait, "{last:?}");
    assert!(last.message.contains("Upgrade failed"), "{}", last.message);
    assert_eq!(signals(&actions), vec![(new, Signal::SIGUSR2)]);
    assert!(!sim.m.is_upgrading());
    let serving: Vec<Pid> = sim
        .m
        .workers()
        .filter(|w| w.retired.is_none())
        .filter_map(|w| w.pid)
        .collect();
    assert_eq!(serving, old);
    // Versions stay truthful: the old workers keep version 0, and they are the pool again.
    assert_eq!(sim.pids(0), old);
    assert_eq!((sim.m.version(), sim.m.base_version()), (1, 0));
    let state = sim.command(2, Command::State);
    let state: crate::pure::state::MasterState =
        serde_norway::from_str(&replies(&state, 2)[0].message).unwrap();
    assert_eq!((state.version, state.base_version), (1, 0));
    let mut serving = state.serving_pids();
    serving.sort_unstable();
    assert_eq!(serving, old);
    assert!(
        state
            .workers
            .iter()
            .all(|w| (w.pid == Some(new)) == (w.version == 1)),
        "{state:?}"
    );
    sim.exit(new);
    assert!(
        sim.advance(secs(120.0)).is_empty(),
        "no respawn, no retirement"
    );
    // A worker that dies now is replaced by one of the last good version (its build, not the
    // failed one at the path now), and the next upgrade replaces them all.
    let respawned = sim.exit(old[0]);
    assert_eq!(spawned_versions(&respawned), [0]);
    assert!(sim.pids(1).is_empty());
    let fresh = *sim.pids(0).iter().find(|p| !old.contains(p)).unwrap();
    sim.ack(fresh);
    sim.command(
        3,
        Command::Upgrade {
            fleet: true,
            canary: None,
        },
    );
    assert_eq!(sim.m.base_version(), 2);
    for pid in sim.pids(2) {
        sim.ack(pid);
    }
    let mut retired = sim.retired();
    retired.sort_unstable();
    let mut expected = [old[1], fresh];
    expected.sort_unstable();
    assert!(expected.iter().all(|p| retired.contains(p)), "{retired:?}");
}

#[test]
fn each_new_ack_restarts_the_upgrade_timeout() {
    let (mut sim, old) = Sim::started(2);
    sim.command(
        1,
        Command::Upgrade {
            fleet: false,
            canary: None,
        },
    );
    sim.advance(secs(50.0));
    let first = sim.pids(1)[0];
    sim.ack(first);
    sim.advance(secs(50.0));
    assert!(sim.m.is_upgrading(), "50 s since the last ACK only");
    let actions = sim.advance(secs(10.0));
    let last = replies(&actions, 1);
    assert!(last.last().unwrap().error);
    // The acked new worker and the remaining old one keep serving.
    let mut serving: Vec<Pid> = sim
        .m
        .workers()
        .filter(|w| w.retired.is_none())
        .filter_map(|w| w.pid)
        .collect();
    serving.sort_unstable();
    assert_eq!(serving.len(), 2);
    assert!(serving.contains(&first));
    assert!(old.iter().any(|p| serving.contains(p)));
}

#[test]
fn new_workers_crashing_before_ack_are_respawned_with_backoff_then_fail_the_upgrade() {
    let mut sim = Sim::new(MachineConfig {
        ack_mode: AckMode::Manual,
        upgrade_timeout: secs(3600.0),
        ..MachineConfig::new(1)
    });
    let old = sim.start();
    sim.ack(old[0]);
    sim.command(
        1,
        Command::Upgrade {
            fleet: false,
            canary: None,
        },
    );
    let mut delays = Vec::new();
    for _ in 1..UPGRADE_MAX_FAILED_STARTS {
        let pid = sim.pids(1)[0];
        sim.exit(pid);
        let wait = sim.m.next_deadline().unwrap() - sim.now;
        delays.push(wait.as_secs_f64());
        let actions = sim.advance(wait);
        assert_eq!(spawns(&actions), 1);
    }
    assert_eq!(delays, [1.0, 1.5]);
    // The third in a row fails the upgrade at once, not at the upgrade timeout (an hour).
    let last = sim.pids(1)[0];
    let actions = sim.exit(last);
    let said = replies(&actions, 1);
    let said = said.last().unwrap();
    assert!(said.error, "{said:?}");
    assert_eq!(
        said.message,
        format!(
            "Upgrade failed: 3 new workers in a row exited before their ACK (the last, {last}: \
             exit status 0); 1 workers keep serving, 0 unACKed new workers were sent USR2 []"
        )
    );
    assert!(!sim.m.is_upgrading());
    assert_eq!(sim.serving(), old.iter().copied().collect());
    assert_eq!(
        spawns(&sim.advance(secs(120.0))),
        0,
        "no new build started again"
    );
}

#[test]
fn a_new_ack_between_failed_starts_starts_the_count_again() {
    let (mut sim, _) = Sim::started_with(MachineConfig {
        ack_mode: AckMode::Manual,
        upgrade_timeout: secs(3600.0),
        ..MachineConfig::new(3)
    });
    sim.command(
        1,
        Command::Upgrade {
            fleet: false,
            canary: None,
        },
    );
    // Two fail, one ACKs, two fail again: still upgrading (never three in a row).
    // The new worker starting now, once the respawn backoff has passed.
    let unacked = |sim: &mut Sim| {
        for _ in 0..5 {
            let starting = sim
                .m
                .workers()
                .find(|w| w.version == 1 && !w.acked && w.retired.is_none())
                .and_then(|w| w.pid);
            if let Some(pid) = starting {
                return pid;
            }
            let wait = sim.m.next_deadline().unwrap() - sim.now;
            sim.advance(wait);
        }
        panic!("no new worker starting");
    };
    for round in 0..2 {
        for _ in 0..2 {
            let pid = unacked(&mut sim);
            sim.exit(pid);
        }
        if round == 0 {
            let pid = unacked(&mut sim);
            sim.ack(pid);
        }
    }
    assert!(sim.m.is_upgrading());
}

// ----- crashes and backoff -----

#[test]
fn an_acked_worker_that_crashes_after_its_min_uptime_is_respawned_at_once() {
    let (mut sim, pids) = Sim::started(2);
    sim.advance(DEFAULT_MIN_UPTIME);
    let actions = sim.exit(pids[0]);
    assert_eq!(
        spawns(&actions),
        1,
        "no backoff after a crash of a worker that had ACKed"
    );
    let respawned: Vec<usize> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Spawn { index, .. } => Some(*index),
            _ => None,
        })
        .collect();
    assert_eq!(respawned, vec![0], "the freed index is reused");
}

#[test]
fn workers_dying_before_ack_back_off_by_half_each_time_up_to_30s() {
    let mut sim = Sim::manual(1);
    sim.feed(Event::Start);
    let mut expected = 1.0f64;
    for _ in 0..15 {
        let pid = sim.pids(0)[0];
        let actions = sim.exit(pid);
        assert_eq!(spawns(&actions), 0, "backoff first");
        assert!((sim.m.spawn_interval().as_secs_f64() - expected).abs() < 1e-6);
        sim.advance(sim.m.spawn_interval() - secs(0.001));
        assert!(sim.pids(0).is_empty(), "not before the backoff");
        assert_eq!(spawns(&sim.advance(secs(0.001))), 1);
        expected = (expected * 1.5).min(30.0);
    }
    // An ACK alone does not end the backoff; staying up for --min-uptime after it does.
    let pid = sim.pids(0)[0];
    sim.ack(pid);
    assert_eq!(sim.m.spawn_interval(), secs(30.0));
    sim.advance(DEFAULT_MIN_UPTIME - secs(0.001));
    assert_eq!(sim.m.spawn_interval(), secs(30.0));
    sim.advance(secs(0.001));
    assert_eq!(sim.m.spawn_interval(), Duration::ZERO);
    assert_eq!(spawns(&sim.exit(pid)), 1);
}

/// The delays between the spawns of a worker that keeps dying `after` its start (ACKing
/// first when `ack` is `Some(delay)`), over `rounds` deaths.
fn crash_loop_delays(ack_mode: AckMode, ack: Option<f64>, after: f64, rounds: usize) -> Vec<f64> {
    let mut sim = Sim::new(MachineConfig {
        ack_mode,
        ..MachineConfig::new(1)
    });
    sim.feed(Event::Start);
    let mut spawned_at = sim.now;
    let mut delays = Vec::new();
    for _ in 0..rounds {
        if let Some(delay) = ack {
            sim.advance(secs(delay));
            let pid = sim.pids(0)[0];
            if ack_mode == AckMode::Manual {
                sim.ack(pid);
            }
            assert!(sim.m.workers().all(|w| w.acked), "ACKed by now");
        }
        sim.advance(secs(after));
        let pid = sim.pids(0)[0];
        let mut respawned = spawns(&sim.exit(pid)) == 1;
        for _ in 0..10 {
            if respawned {
                break;
            }
            let wait = sim.m.next_deadline().expect("a respawn is due");
            respawned = spawns(&sim.advance(wait - sim.now)) == 1;
        }
        assert!(respawned, "{ack_mode}: respawned");
        delays.push((sim.now - spawned_at).as_secs_f64());
        spawned_at = sim.now;
    }
    delays
}

#[test]
fn crash_loops_after_the_ack_back_off_in_every_ack_mode() {
    // -m manual: ACK at once, die 0.3 s later. -m 1: timer ACK, die 0.3 s after it. -m 0:
    // ACKed at once, die at once.
    let cases = [
        (AckMode::Manual, Some(0.0), 0.3),
        (AckMode::Timer(secs(1.0)), Some(1.0), 0.3),
        (AckMode::Timer(Duration::ZERO), Some(0.0), 0.0),
        (AckMode::Manual, None, 0.2),
    ];
    for (mode, ack, after) in cases {
        let delays = crash_loop_delays(mode, ack, after, 12);
        assert!(
            delays.windows(2).all(|w| w[1] >= w[0]),
            "{mode}: launches grow apart: {delays:?}"
        );
        assert!(delays[3] > 2.0 * delays[0], "{mode}: backs off: {delays:?}");
        assert!(
            (delays[11] - delays[10]).abs() < 1e-6 && delays[11] >= 30.0,
            "{mode}: capped at 30 s: {delays:?}"
        );
    }
}

#[test]
fn state_shows_the_backoff_and_a_worker_that_stays_up_ends_it() {
    let (mut sim, pids) = Sim::started(2);
    sim.advance(secs(0.5));
    sim.exit(pids[0]);
    let state = |sim: &mut Sim| {
        let actions = sim.command(9, Command::State);
        serde_norway::from_str::<crate::pure::state::MasterState>(&replies(&actions, 9)[0].message)
            .unwrap()
    };
    let seen = state(&mut sim);
    assert_eq!(seen.consecutive_failures, 1);
    assert_eq!(seen.respawn_backoff_seconds, Some(1.0));
    // The worker that kept running since before the failure does not end the backoff...
    sim.advance(secs(60.0));
    let respawned = sim.pids(0).into_iter().find(|p| !pids.contains(p)).unwrap();
    assert_eq!(state(&mut sim).consecutive_failures, 1);
    // ... the one started after it does, once up for --min-uptime after its ACK.
    sim.ack(respawned);
    sim.advance(DEFAULT_MIN_UPTIME);
    let seen = state(&mut sim);
    assert_eq!(seen.consecutive_failures, 0);
    assert_eq!(seen.respawn_backoff_seconds, None);
}

#[test]
fn a_failed_spawn_counts_as_a_failure() {
    let mut m = Machine::new(MachineConfig {
        ack_mode: AckMode::Manual,
        ..MachineConfig::new(1)
    });
    let t0 = Instant::now();
    let actions = m.handle(t0, Event::Start);
    let Action::Spawn { id, .. } = actions[0] else {
        panic!("{actions:?}")
    };
    let actions = m.handle(
        t0,
        Event::SpawnFailed {
            id,
            error: "no such file".into(),
        },
    );
    assert!(actions.is_empty());
    assert_eq!(m.next_deadline(), Some(t0 + secs(1.0)));
    let actions = m.handle(t0 + secs(1.0), Event::Tick);
    assert!(matches!(actions[..], [Action::Spawn { .. }]));
}

// ----- signal timeout -----

#[test]
fn signal_timeout_escalates_to_kill_once() {
    let mut sim = Sim::new(MachineConfig {
        ack_mode: AckMode::Manual,
        signal_timeout: Some(secs(3.0)),
        ..MachineConfig::new(1)
    });
    let old = sim.start()[0];
    sim.ack(old);
    sim.command(
        1,
        Command::Upgrade {
            fleet: false,
            canary: None,
        },
    );
    let actions = sim.ack(sim.pids(1)[0]);
    assert_eq!(signals(&actions), vec![(old, Signal::SIGUSR2)]);
    assert!(signals(&sim.advance(secs(2.9))).is_empty());
    let actions = sim.advance(secs(0.1));
    assert_eq!(signals(&actions), vec![(old, Signal::SIGKILL)]);
    assert!(
        signals(&sim.advance(secs(100.0))).is_empty(),
        "KILL only once"
    );
    sim.exit(old);
}

#[test]
fn without_signal_timeout_nothing_is_ever_killed() {
    let (mut sim, pids) = Sim::started(1);
    sim.feed(Event::Signal(MasterSignal::Usr2));
    assert!(signals(&sim.advance(secs(3600.0))).is_empty());
    assert!(!sim.m.is_done());
    assert_eq!(exit_code(&sim.exit(pids[0])), Some(0));
}

// ----- stopping -----

#[test]
fn usr2_and_int_stop_gracefully_and_exit_when_workers_are_gone() {
    for signal in [MasterSignal::Usr2, MasterSignal::Int] {
        let (mut sim, pids) = Sim::started(3);
        let actions = sim.feed(Event::Signal(signal));
        let sent: Vec<(Pid, Signal)> = pids.iter().map(|&p| (p, Signal::SIGUSR2)).collect();
        assert_eq!(signals(&actions), sent);
        assert!(sim.m.is_stopping());
        assert!(sim.m.next_deadline().is_none());
        // A second signal is sent again to every worker, as Einhorn does: "stop now".
        assert_eq!(signals(&sim.feed(Event::Signal(signal))), sent);
        assert!(sim.m.take_logs().iter().any(|log| matches!(
            &log.message,
            Message::StopNow(again) if again.pids == pids && again.signal == Signal::SIGUSR2
        )));
        let actions = sim.exit(pids[0]);
        assert_eq!(spawns(&actions), 0, "no respawn while stopping");
        assert_eq!(exit_code(&actions), None);
        sim.exit(pids[1]);
        let actions = sim.exit(pids[2]);
        assert_eq!(exit_code(&actions), Some(0));
        assert!(sim.m.is_done());
        assert!(sim.feed(Event::Signal(MasterSignal::Hup)).is_empty());
    }
}

#[test]
fn a_second_stop_reaches_draining_workers_and_keeps_the_first_kill_deadline() {
    let (mut sim, old) = Sim::started_with(MachineConfig {
        ack_mode: AckMode::Manual,
        signal_timeout: Some(secs(5.0)),
        ..MachineConfig::new(2)
    });
    sim.command(
        1,
        Command::Upgrade {
            fleet: true,
            canary: None,
        },
    );
    let new = sim.pids(1);
    for &pid in &new {
        sim.ack(pid);
    }
    assert_eq!(sim.retired(), old, "old workers drain after the upgrade");
    sim.advance(secs(1.0));
    // The first stop leaves the draining workers alone: they already have their USR2.
    let first = sim.feed(Event::Signal(MasterSignal::Int));
    let first: Vec<Pid> = signals(&first).into_iter().map(|(pid, _)| pid).collect();
    assert_eq!(first, new);
    sim.advance(secs(2.0));
    // The second reaches every worker still running.
    let second = sim.feed(Event::Signal(MasterSignal::Int));
    let mut second: Vec<Pid> = signals(&second).into_iter().map(|(pid, _)| pid).collect();
    second.sort_unstable();
    let mut all: Vec<Pid> = old.iter().chain(&new).copied().collect();
    all.sort_unstable();
    assert_eq!(second, all);
    // `-t` still counts from each worker's first signal: the old ones at 5 s after the
    // upgrade, the new ones 5 s after the first stop, not after the second.
    let kills = |actions: &[Action]| -> Vec<Pid> {
        signals(actions)
            .into_iter()
            .filter(|&(_, s)| s == Signal::SIGKILL)
            .map(|(pid, _)| pid)
            .collect()
    };
    assert_eq!(kills(&sim.advance(secs(2.0))), old);
    assert!(kills(&sim.advance(secs(0.9))).is_empty());
    assert_eq!(kills(&sim.advance(secs(0.2))), new);
}

#[test]
fn term_is_forwarded_and_quit_exits_at_once() {
    let (mut sim, pids) = Sim::started(2);
    let actions = sim.feed(Event::Signal(MasterSignal::Term));
    assert!(signals(&actions).iter().all(|&(_, s)| s == Signal::SIGTERM));
    assert_eq!(signals(&actions).len(), 2);

    let (mut sim, _) = Sim::started(2);
    let actions = sim.feed(Event::Signal(MasterSignal::Quit));
    assert!(signals(&actions).iter().all(|&(_, s)| s == Signal::SIGQUIT));
    assert_eq!(exit_code(&actions), Some(0));
    assert!(sim.m.is_done());
    assert_eq!(sim.m.next_deadline(), None);
    let _ = pids;
}

#[test]
fn stopping_with_no_workers_exits_at_once() {
    let mut sim = Sim::manual(0);
    sim.feed(Event::Start);
    assert_eq!(
        exit_code(&sim.feed(Event::Signal(MasterSignal::Int))),
        Some(0)
    );
}

#[test]
fn stopping_aborts_an_upgrade_and_refuses_new_ones() {
    let (mut sim, _) = Sim::started(2);
    sim.command(
        1,
        Command::Upgrade {
            fleet: false,
            canary: None,
        },
    );
    let actions = sim.feed(Event::Signal(MasterSignal::Usr2));
    let last = replies(&actions, 1);
    assert!(last.last().unwrap().error);
    assert_eq!(signals(&actions).len(), 3, "two old and one new worker");
    let actions = sim.command(
        2,
        Command::Upgrade {
            fleet: false,
            canary: None,
        },
    );
    let reply = &replies(&actions, 2)[0];
    assert!(reply.error && reply.message.contains("stopping"));
    assert_eq!(spawns(&actions), 0);
}

#[test]
fn die_signals_every_worker_and_exits_when_they_are_gone() {
    let (mut sim, pids) = Sim::started(2);
    let actions = sim.command(1, Command::Die(Signal::SIGTERM));
    let reply = &replies(&actions, 1)[0];
    assert!(
        reply
            .message
            .starts_with("Einhorn is going down! Successfully sent TERMs to 2 processes")
    );
    assert_eq!(signals(&actions).len(), 2);
    sim.exit(pids[0]);
    assert_eq!(exit_code(&sim.exit(pids[1])), Some(0));
}

// ----- worker count -----

#[test]
fn inc_dec_and_set_workers_change_the_pool() {
    let (mut sim, pids) = Sim::started(2);
    let actions = sim.command(1, Command::Inc);
    assert_eq!(
        replies(&actions, 1)[0].message,
        "Incrementing number of workers from 2 -> 3"
    );
    assert_eq!(spawns(&actions), 1);
    let newest = sim.pids(0)[2];

    // dec retires the unACKed worker first.
    let actions = sim.command(2, Command::Dec);
    assert_eq!(
        replies(&actions, 2)[0].message,
        "Decrementing number of workers from 3 -> 2"
    );
    assert_eq!(signals(&actions), vec![(newest, Signal::SIGUSR2)]);
    sim.exit(newest);

    // Then the highest index.
    let actions = sim.command(3, Command::SetWorkers(1));
    assert!(replies(&actions, 3)[0].message.contains("2 -> 1"));
    assert_eq!(signals(&actions), vec![(pids[1], Signal::SIGUSR2)]);
    sim.exit(pids[1]);

    let actions = sim.command(4, Command::Dec);
    let reply = &replies(&actions, 4)[0];
    assert!(reply.error && reply.message.starts_with("Can't decrease"));
    assert_eq!(sim.m.target(), 1);

    let actions = sim.command(5, Command::SetWorkers(1));
    assert!(!replies(&actions, 5)[0].error);
    let actions = sim.command(6, Command::SetWorkers(3));
    assert_eq!(spawns(&actions), 2);
}

#[test]
fn signal_command_sends_to_all_without_retiring() {
    let (mut sim, pids) = Sim::started(2);
    let actions = sim.command(1, Command::Signal(vec![Signal::SIGUSR1, Signal::SIGWINCH]));
    assert_eq!(signals(&actions).len(), 4);
    let message = &replies(&actions, 1)[0].message;
    assert_eq!(
        message,
        &format!(
            "Successfully sent USR1s to 2 processes: {pids:?}\nSuccessfully sent WINCHs to 2 processes: {pids:?}"
        )
    );
    assert!(sim.retired().is_empty());
    // A worker that exits on such a signal is replaced (at once, past --min-uptime).
    sim.advance(DEFAULT_MIN_UPTIME);
    assert_eq!(spawns(&sim.exit(pids[0])), 1);
}

// ----- informational commands -----

#[test]
fn ehlo_help_state_and_config_answer() {
    let mut sim = Sim::new(MachineConfig {
        master_pid: 4242,
        command_name: Some("web".into()),
        listeners: vec![ListenerInfo {
            index: 0,
            addr: "127.0.0.1:8080".into(),
            fd: 3,
        }],
        ..MachineConfig::new(1)
    });
    sim.feed(Event::Start);
    let ehlo = sim.command(
        1,
        Command::Ehlo {
            user: Some("gdb".into()),
        },
    );
    assert!(
        replies(&ehlo, 1)[0]
            .message
            .starts_with("Welcome, gdb! You are speaking to Einhorn Master Process 4242 (web).")
    );
    let help = sim.command(2, Command::Help);
    assert!(replies(&help, 2)[0].message.contains("upgrade_fleet"));
    let state = sim.command(3, Command::State);
    let state = &replies(&state, 3)[0].message;
    let parsed: crate::pure::state::MasterState = serde_norway::from_str(state).unwrap();
    assert_eq!(parsed.master_pid, 4242);
    assert_eq!(parsed.listeners[0].addr, "127.0.0.1:8080");
    assert_eq!(parsed.listeners[0].fd, 3);
    assert_eq!(parsed.workers[0].pid, Some(100));
    assert!(!parsed.workers[0].acked);
    assert_eq!(parsed.target_workers, 1);
    assert_eq!(parsed.ack_mode, "timer (1s)");
    assert!(parsed.serving_pids().is_empty());
    assert_eq!(parsed.all_pids(), vec![100]);
    let config = sim.command(4, Command::Config);
    assert!(
        replies(&config, 4)[0]
            .message
            .contains("upgrade_timeout_seconds: 60")
    );
}

// ----- pending spawns -----

#[test]
fn a_worker_retired_while_its_spawn_is_pending_is_signaled_once_it_runs() {
    let mut m = Machine::new(MachineConfig {
        ack_mode: AckMode::Manual,
        ..MachineConfig::new(1)
    });
    let t0 = Instant::now();
    let actions = m.handle(t0, Event::Start);
    let Action::Spawn { id, .. } = actions[0] else {
        panic!()
    };
    let actions = m.handle(t0, Event::Signal(MasterSignal::Usr2));
    assert!(actions.is_empty(), "nothing to signal yet: {actions:?}");
    let actions = m.handle(t0, Event::Spawned { id, pid: 55 });
    assert_eq!(
        actions,
        vec![Action::Signal {
            pid: 55,
            signal: Signal::SIGUSR2
        }]
    );
    let actions = m.handle(
        t0,
        Event::Exited {
            pid: 55,
            status: "signal SIGUSR2".into(),
        },
    );
    assert_eq!(actions, vec![Action::Exit { code: 0 }]);
}

// ----- reloading the master -----

fn reexec_config(workers: usize) -> MachineConfig {
    MachineConfig {
        ack_mode: AckMode::Manual,
        reexec: true,
        ..MachineConfig::new(workers)
    }
}

#[test]
fn an_upgrade_re_execs_the_master_first_then_upgrades_in_the_new_one() {
    let mut sim = Sim::new(reexec_config(2));
    let old = sim.start();
    for &pid in &old {
        sim.ack(pid);
    }
    let actions = sim.command(
        1,
        Command::Upgrade {
            fleet: false,
            canary: None,
        },
    );
    assert!(actions.contains(&Action::Reexec), "{actions:?}");
    assert_eq!(spawns(&actions), 0, "no worker before the new master runs");
    assert!(sim.m.is_upgrading() && !sim.m.upgrade_running());
    assert_eq!(
        replies(&actions, 1)[0].message,
        "Upgrading smoothly, as commanded"
    );
    // A second upgrade and a reload meanwhile join the same re-exec.
    let again = sim.command(
        2,
        Command::Upgrade {
            fleet: true,
            canary: None,
        },
    );
    let reload = sim.command(3, Command::Reload);
    assert!(!again.contains(&Action::Reexec) && !reload.contains(&Action::Reexec));
    let actions = sim.reexec(reexec_config(2));
    assert_eq!(spawns(&actions), 2, "fleet: every new worker at once");
    for conn in [1, 2] {
        assert!(
            replies(&sim.actions, conn)
                .iter()
                .any(|r| r.wait && r.message.starts_with("Reloaded:"))
        );
    }
    let reloaded = replies(&sim.actions, 3);
    assert!(
        reloaded.last().unwrap().message.starts_with("Reloaded:") && !reloaded.last().unwrap().wait
    );
    for pid in sim.pids(1) {
        sim.ack(pid);
    }
    for conn in [1, 2] {
        assert_eq!(
            replies(&sim.actions, conn).last().unwrap().message,
            "Upgrade done"
        );
    }
    assert!(old.iter().all(|p| sim.retired().contains(p)));
}

#[test]
fn a_failed_re_exec_answers_every_requester_and_changes_nothing() {
    let (mut sim, old) = Sim::started(2);
    sim.m = Machine::resume(reexec_config(2), &sim.m.snapshot(sim.now), sim.now).unwrap();
    sim.command(
        1,
        Command::Upgrade {
            fleet: false,
            canary: None,
        },
    );
    sim.command(2, Command::Reload);
    let actions = sim.feed(Event::ReexecFailed {
        reason: "its check exited with exit status 1".into(),
    });
    for conn in [1, 2] {
        let last = replies(&actions, conn);
        let last = last.last().unwrap();
        assert!(last.error && !last.wait, "{last:?}");
        assert!(
            last.message.contains("its check exited with exit status 1"),
            "{}",
            last.message
        );
    }
    assert!(!sim.m.is_upgrading());
    assert_eq!(sim.m.version(), 0);
    assert_eq!(sim.serving(), old.iter().copied().collect());
    // The next one works.
    let actions = sim.command(3, Command::Reload);
    assert!(actions.contains(&Action::Reexec));
}

#[test]
fn a_stop_while_re_exec_is_pending_cancels_it() {
    let mut sim = Sim::new(reexec_config(1));
    let pids = sim.start();
    sim.ack(pids[0]);
    sim.command(1, Command::Reload);
    let actions = sim.feed(Event::Signal(MasterSignal::Term));
    assert!(actions.contains(&Action::CancelReexec));
    assert!(replies(&actions, 1).last().unwrap().error);
    let refused = sim.command(2, Command::Reload);
    assert!(replies(&refused, 2)[0].error);
}

#[test]
fn without_re_exec_reload_is_refused_and_upgrade_upgrades_the_workers() {
    let (mut sim, _) = Sim::started(1);
    let actions = sim.command(1, Command::Reload);
    let reply = &replies(&actions, 1)[0];
    assert!(
        reply.error && reply.message.contains("cannot re-exec"),
        "{reply:?}"
    );
    let actions = sim.command(
        2,
        Command::Upgrade {
            fleet: false,
            canary: None,
        },
    );
    assert_eq!(spawns(&actions), 1);
}

#[test]
fn a_resumed_machine_keeps_a_changed_count_unless_its_configuration_changed_it() {
    let mut sim = Sim::new(reexec_config(2));
    for pid in sim.start() {
        sim.ack(pid);
    }
    sim.command(1, Command::Inc);
    assert_eq!(sim.m.target(), 3);
    sim.reexec(reexec_config(2));
    assert_eq!(sim.m.target(), 3, "inc survives a reload");
    sim.reexec(reexec_config(5));
    assert_eq!(sim.m.target(), 5, "a new configured count takes effect");
}

#[test]
fn quieter_and_louder_change_the_log_level_within_bounds() {
    let (mut sim, _) = Sim::started(1);
    let levels: Vec<i8> = (0..6)
        .map(|i| {
            let actions = sim.command(i, Command::Quieter);
            match actions
                .iter()
                .find(|a| matches!(a, Action::SetLogLevel { .. }))
            {
                Some(Action::SetLogLevel { offset }) => *offset,
                _ => panic!("{actions:?}"),
            }
        })
        .collect();
    assert_eq!(levels, [-1, -2, -3, -3, -3, -3]);
    sim.command(9, Command::Louder);
    assert_eq!(sim.m.verbosity(), -2);
}

#[test]
fn max_unacked_starts_that_many_new_workers_and_max_additional_caps_them() {
    let mut sim = Sim::new(MachineConfig {
        max_unacked: 3,
        ..reexec_config(8)
    });
    for pid in sim.start() {
        sim.ack(pid);
    }
    sim.m = Machine::resume(
        MachineConfig {
            max_unacked: 3,
            reexec: false,
            ..reexec_config(8)
        },
        &sim.m.snapshot(sim.now),
        sim.now,
    )
    .unwrap();
    let actions = sim.command(
        1,
        Command::Upgrade {
            fleet: false,
            canary: None,
        },
    );
    assert_eq!(spawns(&actions), 3);
    let first = sim.pids(1)[0];
    assert_eq!(spawns(&sim.ack(first)), 1, "one more per ACK");

    let mut capped = Sim::new(MachineConfig {
        max_unacked: 8,
        max_upgrade_additional: Some(2),
        ..MachineConfig::new(8)
    });
    capped.m = Machine::new(MachineConfig {
        ack_mode: AckMode::Manual,
        max_unacked: 8,
        max_upgrade_additional: Some(2),
        ..MachineConfig::new(8)
    });
    for pid in capped.start() {
        capped.ack(pid);
    }
    let actions = capped.command(
        1,
        Command::Upgrade {
            fleet: false,
            canary: None,
        },
    );
    assert_eq!(spawns(&actions), 2, "8 + 2 workers at most");
}

// ----- canary upgrades -----

fn canary(workers: usize, soak: f64) -> Option<CanaryPlan> {
    Some(CanaryPlan {
        workers,
        soak: secs(soak),
    })
}

/// Two old workers serving, and a canary upgrade (asked on connection 1) whose one canary
/// has ACKed: its soak of `soak` seconds begins.
fn canary_acked(soak: f64) -> (Sim, Vec<Pid>, Pid) {
    let (mut sim, old) = Sim::started(2);
    sim.command(
        1,
        Command::Upgrade {
            fleet: false,
            canary: canary(1, soak),
        },
    );
    let canary_pid = sim.pids(1)[0];
    sim.ack(canary_pid);
    (sim, old, canary_pid)
}

fn stats(sim: &mut Sim, pid: Pid, responses: [u64; 5]) -> Vec<Action> {
    timed_stats(sim, pid, responses, None)
}

/// A `worker:stats` with response times by bucket.
fn timed_stats(
    sim: &mut Sim,
    pid: Pid,
    responses: [u64; 5],
    latency: Option<[u64; LATENCY_BUCKETS]>,
) -> Vec<Action> {
    sim.feed(Event::Request {
        conn: ConnId(pid as u64 + 20_000),
        id: None,
        command: Command::WorkerStats {
            pid: pid.into(),
            responses,
            latency: latency.map(Box::new),
        },
    })
}

#[test]
fn a_canary_serves_beside_every_old_worker_then_the_upgrade_goes_on_after_the_soak() {
    let (mut sim, old) = Sim::started(3);
    let actions = sim.command(
        1,
        Command::Upgrade {
            fleet: false,
            canary: canary(1, 10.0),
        },
    );
    assert_eq!(spawns(&actions), 1);
    let canary_pid = sim.pids(1)[0];
    sim.ack(canary_pid);
    assert!(
        sim.retired().is_empty(),
        "no old worker retired during the canary"
    );
    assert_eq!(sim.pids(1).len(), 1, "only the canary runs");
    // Traffic: the canary as good as the old workers.
    stats(&mut sim, canary_pid, [0, 50, 0, 0, 0]);
    stats(&mut sim, old[0], [0, 100, 0, 0, 1]);
    sim.advance(secs(9.9));
    assert!(sim.retired().is_empty());
    let actions = sim.advance(secs(0.2));
    assert!(
        replies(&actions, 1)
            .iter()
            .any(|r| r.message.starts_with("Canary passed")),
        "{actions:?}"
    );
    for _ in 0..2 {
        let unacked = sim.m.workers().find(|w| w.version == 1 && !w.acked);
        sim.ack(
            unacked
                .and_then(|w| w.pid)
                .expect("the rest of the new workers"),
        );
    }
    assert_eq!(
        replies(&sim.actions, 1).last().unwrap().message,
        "Upgrade done"
    );
    assert!(old.iter().all(|p| sim.retired().contains(p)));
}

#[test]
fn a_canary_that_exits_is_rolled_back_and_the_old_workers_serve_on() {
    let (mut sim, old, canary_pid) = canary_acked(30.0);
    sim.advance(secs(2.0));
    let actions = sim.exit(canary_pid);
    let last = replies(&actions, 1);
    let last = last.last().unwrap();
    assert!(last.error && !last.wait, "{last:?}");
    assert!(
        last.message
            .starts_with(&format!("rolled back: new worker {canary_pid} exited")),
        "{}",
        last.message
    );
    assert!(!sim.m.is_upgrading());
    assert_eq!(sim.serving(), old.iter().copied().collect());
    assert!(
        sim.retired().is_empty(),
        "the old workers were never signaled"
    );
    assert_eq!(sim.m.base_version(), 0);
    assert_eq!(spawns(&sim.advance(secs(60.0))), 0, "nothing more to do");
}

#[test]
fn a_canary_answering_too_many_5xx_is_rolled_back_within_the_soak() {
    let (mut sim, old, canary_pid) = canary_acked(30.0);
    stats(&mut sim, old[0], [0, 200, 0, 0, 0]);
    // 3 of 10: too few responses to judge.
    stats(&mut sim, canary_pid, [0, 7, 0, 0, 3]);
    assert!(sim.m.is_upgrading());
    // 4 of 20 (20%) against 0 of 0 since the soak began: rolled back.
    let actions = stats(&mut sim, canary_pid, [0, 16, 0, 0, 4]);
    let signaled = signals(&actions);
    assert_eq!(signaled, vec![(canary_pid, Signal::SIGUSR2)]);
    let last = replies(&actions, 1);
    assert!(
        last.last()
            .unwrap()
            .message
            .contains("4 5xx of 20 responses (20.0%)"),
        "{last:?}"
    );
    let state = sim.command(2, Command::State);
    let state: crate::pure::state::MasterState =
        serde_norway::from_str(&replies(&state, 2)[0].message).unwrap();
    assert!(
        state
            .last_rollback
            .as_deref()
            .is_some_and(|r| r.contains("5xx")),
        "{state:?}"
    );
    assert_eq!(state.serving_pids().len(), 2);
}

#[test]
fn a_canary_far_slower_than_the_old_workers_is_rolled_back_within_the_soak() {
    let (mut sim, old, canary_pid) = canary_acked(30.0);
    let times = |fast: u64, slow_bucket: usize, slow: u64| {
        let mut buckets = [0u64; LATENCY_BUCKETS];
        buckets[1] = fast;
        buckets[slow_bucket] += slow;
        Some(buckets)
    };
    // The old workers: 99% within 2 ms.
    timed_stats(&mut sim, old[0], [0, 500, 0, 0, 0], times(500, 1, 0));
    // A canary a little slower (within 4x): fine.
    timed_stats(&mut sim, canary_pid, [0, 30, 0, 0, 0], times(0, 3, 30));
    assert!(sim.m.is_upgrading());
    // Then 300 ms per response: rolled back.
    let actions = timed_stats(
        &mut sim,
        canary_pid,
        [0, 60, 0, 0, 0],
        times(0, 3, 30).map(|mut b| {
            b[9] = 30;
            b
        }),
    );
    assert_eq!(signals(&actions), vec![(canary_pid, Signal::SIGUSR2)]);
    let last = replies(&actions, 1);
    assert_eq!(
        last.last().unwrap().message,
        "rolled back: new workers answered slowly: 99% of their responses within 512 ms, the \
         old workers' within 2 ms during the soak"
    );
    assert_eq!(sim.serving(), old.iter().copied().collect());
}

#[test]
fn a_canary_no_client_reached_is_rolled_back_at_the_soak_end() {
    let (mut sim, old, canary_pid) = canary_acked(5.0);
    // The old workers keep every client (a balancer's pool); the canary sees 3 requests.
    stats(&mut sim, old[0], [0, 300, 0, 0, 0]);
    stats(&mut sim, canary_pid, [0, 3, 0, 0, 0]);
    assert!(sim.m.is_upgrading());
    let actions = sim.advance(secs(5.1));
    assert_eq!(signals(&actions), vec![(canary_pid, Signal::SIGUSR2)]);
    let last = replies(&actions, 1);
    let last = last.last().unwrap();
    assert!(last.error, "{last:?}");
    assert_eq!(
        last.message,
        "rolled back: too few responses reached the canary to judge: 3 of 303 during the soak \
         (old workers 300), at least 20 needed: are clients keeping their connections to the old \
         workers? (soak longer, or --canary-min-responses 0 to pass on exits alone)"
    );
    assert_eq!(sim.serving(), old.iter().copied().collect());
    assert!(!sim.m.is_upgrading());
}

#[test]
fn with_no_minimum_a_canary_passes_on_its_exits_alone_and_a_higher_one_is_needed_to_compare() {
    for (needed, responses, passes) in [(0, 0, true), (100, 50, false), (100, 100, true)] {
        let (mut sim, _) = Sim::started_with(MachineConfig {
            ack_mode: AckMode::Manual,
            canary_min_responses: needed,
            ..MachineConfig::new(2)
        });
        sim.command(
            1,
            Command::Upgrade {
                fleet: false,
                canary: canary(1, 5.0),
            },
        );
        let canary_pid = sim.pids(1)[0];
        sim.ack(canary_pid);
        if responses > 0 {
            stats(&mut sim, canary_pid, [0, responses, 0, 0, 0]);
        }
        let actions = sim.advance(secs(5.1));
        let said: Vec<String> = replies(&actions, 1)
            .into_iter()
            .map(|r| r.message)
            .collect();
        let passed = said.iter().any(|m| m.starts_with("Canary passed"));
        let too_few = said.iter().any(|m| m.contains("too few responses"));
        assert_eq!(
            (passed, too_few),
            (passes, !passes),
            "{needed} needed, {responses} answered: {said:?}"
        );
    }
}

/// The versions of the spawns among `actions`.
fn spawned_versions(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Spawn { version, .. } => Some(*version),
            _ => None,
        })
        .collect()
}

#[test]
fn after_a_rollback_every_worker_started_runs_the_last_good_build_until_an_upgrade_succeeds() {
    let (mut sim, old, canary_pid) = canary_acked(30.0);
    sim.advance(secs(1.0));
    sim.exit(canary_pid);
    assert_eq!(sim.m.pinned(), Some(0));
    let state = sim.command(2, Command::State);
    let state: crate::pure::state::MasterState =
        serde_norway::from_str(&replies(&state, 2)[0].message).unwrap();
    assert_eq!(state.pinned_version, Some(0));
    // An old worker crashes (long after its ACK): its replacement runs version 0's build.
    sim.advance(DEFAULT_MIN_UPTIME);
    let mut actions = sim.exit(old[0]);
    // (after the backoff the canary's crash began)
    actions.extend(sim.advance(secs(60.0)));
    assert_eq!(spawned_versions(&actions), [0]);
    let mut actions = sim.command(3, Command::Inc);
    actions.extend(sim.advance(secs(60.0)));
    assert_eq!(spawned_versions(&actions), [0]);
    // A successful upgrade unpins: its workers, and those after it, are the new version.
    let actions = sim.command(
        4,
        Command::Upgrade {
            fleet: false,
            canary: None,
        },
    );
    assert_eq!(spawned_versions(&actions), [2]);
    for _ in 0..5 {
        let unacked = sim.m.workers().find(|w| w.version == 2 && !w.acked);
        match unacked.and_then(|w| w.pid) {
            Some(pid) => {
                sim.ack(pid);
            }
            None => break,
        }
    }
    assert_eq!(sim.m.pinned(), None);
    assert!(!sim.m.is_upgrading());
}

/// A started pool of `workers` (manual ACK) whose upgrades prove new workers for 1 s.
fn proving(workers: usize) -> (Sim, Vec<Pid>) {
    Sim::started_with(MachineConfig {
        ack_mode: AckMode::Manual,
        prove: secs(1.0),
        ..MachineConfig::new(workers)
    })
}

#[test]
fn an_old_worker_is_retired_only_once_a_new_one_has_proved_itself() {
    let (mut sim, old) = proving(2);
    sim.command(
        1,
        Command::Upgrade {
            fleet: false,
            canary: None,
        },
    );
    let first = sim.pids(1)[0];
    sim.ack(first);
    assert!(sim.retired().is_empty(), "not at its ACK");
    sim.advance(secs(0.9));
    assert!(sim.retired().is_empty());
    assert_eq!(sim.m.next_deadline(), Some(sim.now + secs(0.1)));
    sim.advance(secs(0.1));
    assert_eq!(
        sim.retired().len(),
        1,
        "one old worker, once the first new one proved"
    );
    let second = sim.pids(1).into_iter().find(|&p| p != first).unwrap();
    sim.ack(second);
    sim.advance(secs(1.0));
    let mut retired = sim.retired();
    retired.sort_unstable();
    assert_eq!(retired, old);
    assert!(!sim.m.is_upgrading());
    assert!(
        replies(&sim.actions, 1)
            .iter()
            .any(|r| r.message == "Upgrade done")
    );
}

#[test]
fn a_new_worker_that_exits_right_after_its_ack_rolls_a_plain_upgrade_back() {
    let (mut sim, old) = proving(2);
    sim.command(
        1,
        Command::Upgrade {
            fleet: false,
            canary: None,
        },
    );
    let new = sim.pids(1)[0];
    sim.ack(new);
    sim.advance(secs(0.3));
    let actions = sim.exit(new);
    let said = replies(&actions, 1);
    let said = said.last().unwrap();
    assert!(said.error, "{said:?}");
    assert!(
        said.message.starts_with(&format!(
            "rolled back: new workers exited after their ACK: {new} (exit status 0) 0.3s after it"
        )),
        "{}",
        said.message
    );
    let retired = sim.retired();
    assert!(
        old.iter().all(|p| !retired.contains(p)),
        "the old workers were never signaled: {retired:?}"
    );
    assert_eq!(sim.serving(), old.iter().copied().collect());
    assert_eq!(sim.m.pinned(), Some(0));
    assert!(!sim.m.is_upgrading());
}

// ----- random sequences -----// ----- random sequences -----

/// A tiny deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_event_sequences_keep_the_invariants_and_converge() {
    for seed in 1..=300u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let workers = 1 + rng.below(4) as usize;
        let manual = rng.below(2) == 0;
        let config = MachineConfig {
            ack_mode: if manual {
                AckMode::Manual
            } else {
                AckMode::Timer(secs(1.0))
            },
            spawn_spacing: secs(rng.below(3) as f64 * 0.5),
            signal_timeout: if rng.below(2) == 0 {
                Some(secs(5.0))
            } else {
                None
            },
            upgrade_timeout: secs(30.0),
            reexec: rng.below(2) == 0,
            max_unacked: 1 + rng.below(3) as usize,
            ..MachineConfig::new(workers)
        };
        let mut sim = Sim::new(config.clone());
        sim.feed(Event::Start);
        let mut conn = 0;
        for _ in 0..150 {
            let live: Vec<Pid> = sim.live.iter().copied().collect();
            // A re-exec asked for: it fails, or happens (snapshot, then a new machine).
            if sim.actions.contains(&Action::Reexec) {
                sim.actions.retain(|a| *a != Action::Reexec);
                if sim.m.is_upgrading() && rng.below(3) == 0 {
                    sim.feed(Event::ReexecFailed {
                        reason: "check failed".into(),
                    });
                } else {
                    sim.reexec(config.clone());
                }
                continue;
            }
            match rng.below(11) {
                10 => {
                    conn += 1;
                    sim.command(conn, Command::Reload);
                }
                0 | 1 if !live.is_empty() => {
                    let pid = live[rng.below(live.len() as u64) as usize];
                    sim.ack(pid);
                }
                2 if !live.is_empty() => {
                    let pid = live[rng.below(live.len() as u64) as usize];
                    sim.exit(pid);
                }
                3 => {
                    conn += 1;
                    let canary = (rng.below(3) == 0).then(|| CanaryPlan {
                        workers: 1 + rng.below(2) as usize,
                        soak: secs(rng.below(4) as f64),
                    });
                    sim.command(
                        conn,
                        Command::Upgrade {
                            fleet: rng.below(3) == 0,
                            canary,
                        },
                    );
                }
                9 if !live.is_empty() => {
                    let pid = live[rng.below(live.len() as u64) as usize];
                    let ok = 1 + rng.below(50);
                    let errors = rng.below(6) * rng.below(2);
                    stats(&mut sim, pid, [0, ok * 10, 0, 0, errors * 10]);
                }
                4 => {
                    conn += 1;
                    let command = match rng.below(3) {
                        0 => Command::Inc,
                        1 => Command::Dec,
                        _ => Command::SetWorkers(1 + rng.below(4) as usize),
                    };
                    sim.command(conn, command);
                }
                5 => {
                    // Retired workers eventually exit.
                    for pid in sim.retired() {
                        if rng.below(2) == 0 {
                            sim.exit(pid);
                        }
                    }
                }
                _ => {
                    sim.advance(secs(rng.below(4000) as f64 / 1000.0));
                }
            }
        }
        // Calm: retired workers exit, live ones ACK, time passes. The pool must settle on the
        // target count, all of the current version, ACKed, and any upgrade must be answered.
        for _ in 0..50 {
            if sim.actions.contains(&Action::Reexec) {
                sim.actions.retain(|a| *a != Action::Reexec);
                sim.reexec(config.clone());
            }
            for pid in sim.retired() {
                sim.exit(pid);
            }
            let live: Vec<Pid> = sim.live.iter().copied().collect();
            for pid in live {
                if manual {
                    sim.ack(pid);
                }
            }
            sim.advance(secs(31.0));
        }
        assert!(!sim.m.is_upgrading(), "seed {seed}: upgrade never finished");
        let workers: Vec<WorkerView> = sim.m.workers().collect();
        assert_eq!(workers.len(), sim.m.target(), "seed {seed}: {workers:?}");
        assert!(
            workers
                .iter()
                .all(|w| w.acked && w.version >= sim.m.base_version() && w.retired.is_none()),
            "seed {seed}: {workers:?}"
        );
        assert!(sim.m.base_version() <= sim.m.version());
        // Every upgrade requester got exactly one final reply.
        for c in 1..=conn {
            let all = replies(&sim.actions, c);
            if all.iter().any(|r| r.message.ends_with("as commanded")) {
                let finals = all.iter().filter(|r| !r.wait).count();
                assert_eq!(finals, 1, "seed {seed} conn {c}: {all:?}");
            }
        }
        // Then a graceful stop ends it.
        sim.feed(Event::Signal(MasterSignal::Int));
        let live: Vec<Pid> = sim.live.iter().copied().collect();
        let mut code = None;
        for pid in live {
            code = code.or(exit_code(&sim.exit(pid)));
        }
        assert!(sim.m.is_done(), "seed {seed}");
        let _ = code;
    }
}
