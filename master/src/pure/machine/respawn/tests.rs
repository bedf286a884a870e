//! Tests of `respawn.rs`, stepping virtual time with the simulated driver.

use super::*;
use crate::pure::machine::tests::*;

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
