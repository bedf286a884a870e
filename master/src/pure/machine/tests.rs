//! The state machine's tests: the simulated driver (`Sim`) and the helpers every area's tests
//! share, and the property test of the whole machine (random event sequences keep the
//! invariants and converge). Each area's own tests are beside it (`workers/tests.rs`, ...).

use std::collections::BTreeSet;

use super::*;
use crate::pure::render;
use crate::pure::wire::Reply;
use graceful_listener::telemetry::LATENCY_BUCKETS;

pub(super) fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// A simulated driver: it starts a process for every spawn, with made-up pids, and keeps
/// everything that came out.
pub(super) struct Sim {
    pub(super) m: Machine,
    pub(super) now: Instant,
    pub(super) next_pid: Pid,
    pub(super) live: BTreeSet<Pid>,
    pub(super) actions: Vec<Action>,
}

impl Sim {
    pub(super) fn new(config: MachineConfig) -> Sim {
        Sim {
            m: Machine::new(config),
            now: Instant::now(),
            next_pid: 100,
            live: BTreeSet::new(),
            actions: Vec::new(),
        }
    }

    pub(super) fn manual(workers: usize) -> Sim {
        Sim::new(MachineConfig {
            ack_mode: AckMode::Manual,
            ..MachineConfig::new(workers)
        })
    }

    /// Starts and ACKs every worker; returns their pids.
    pub(super) fn started(workers: usize) -> (Sim, Vec<Pid>) {
        Sim::started_with(MachineConfig {
            ack_mode: AckMode::Manual,
            ..MachineConfig::new(workers)
        })
    }

    /// A machine of `config` whose first workers have all ACKed.
    pub(super) fn started_with(config: MachineConfig) -> (Sim, Vec<Pid>) {
        let mut sim = Sim::new(config);
        let pids = sim.start();
        for &pid in &pids {
            sim.ack(pid);
        }
        (sim, pids)
    }

    /// The workers serving: ACKed and not told to stop.
    pub(super) fn serving(&self) -> BTreeSet<Pid> {
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
    pub(super) fn feed(&mut self, event: Event) -> Vec<Action> {
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

    pub(super) fn feed_unchecked(&mut self, event: Event) -> Vec<Action> {
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

    pub(super) fn check_invariants(&self) {
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
    pub(super) fn reexec(&mut self, config: MachineConfig) -> Vec<Action> {
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
    pub(super) fn start(&mut self) -> Vec<Pid> {
        let first = self.next_pid;
        self.feed(Event::Start);
        (first..self.next_pid).collect()
    }

    pub(super) fn ack(&mut self, pid: Pid) -> Vec<Action> {
        self.feed(Event::Request {
            conn: ConnId(pid as u64 + 10_000),
            id: None,
            command: Command::WorkerAck {
                pid: Some(pid.into()),
            },
        })
    }

    pub(super) fn exit(&mut self, pid: Pid) -> Vec<Action> {
        assert!(self.live.remove(&pid), "{pid} is not alive");
        self.feed(Event::Exited {
            pid,
            status: "exit status 0".into(),
        })
    }

    pub(super) fn command(&mut self, conn: u64, command: Command) -> Vec<Action> {
        self.feed(Event::Request {
            conn: ConnId(conn),
            id: Some(RequestId::from(conn as i64)),
            command,
        })
    }

    /// Lets `d` pass, handling every deadline on the way.
    pub(super) fn advance(&mut self, d: Duration) -> Vec<Action> {
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

    pub(super) fn pids(&self, version: u64) -> Vec<Pid> {
        self.m
            .workers()
            .filter(|w| w.version == version && w.retired.is_none())
            .filter_map(|w| w.pid)
            .collect()
    }

    pub(super) fn retired(&self) -> Vec<Pid> {
        self.m
            .workers()
            .filter(|w| w.retired.is_some())
            .filter_map(|w| w.pid)
            .collect()
    }
}

pub(super) fn spawns(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Spawn { .. }))
        .count()
}

pub(super) fn signals(actions: &[Action]) -> Vec<(Pid, Signal)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Signal { pid, signal } => Some((*pid, *signal)),
            _ => None,
        })
        .collect()
}

/// The replies to connection `to`, as the wire carries them.
pub(super) fn replies(actions: &[Action], to: u64) -> Vec<Reply> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Reply { conn, reply } if conn.0 == to => Some(render::reply(reply)),
            _ => None,
        })
        .collect()
}

pub(super) fn exit_code(actions: &[Action]) -> Option<i32> {
    actions.iter().find_map(|a| match a {
        Action::Exit { code } => Some(*code),
        _ => None,
    })
}

/// The versions of the spawns among `actions`.
pub(super) fn spawned_versions(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Spawn { version, .. } => Some(*version),
            _ => None,
        })
        .collect()
}

pub(super) fn reexec_config(workers: usize) -> MachineConfig {
    MachineConfig {
        ack_mode: AckMode::Manual,
        reexec: true,
        ..MachineConfig::new(workers)
    }
}

pub(super) fn stats(sim: &mut Sim, pid: Pid, responses: [u64; 5]) -> Vec<Action> {
    timed_stats(sim, pid, responses, None)
}

/// A `worker:stats` with response times by bucket.
pub(super) fn timed_stats(
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

// ----- random sequences -----

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
