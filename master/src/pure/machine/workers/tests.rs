//! Tests of `workers.rs`, stepping virtual time with the simulated driver.

use super::*;
use crate::pure::machine::tests::*;

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
