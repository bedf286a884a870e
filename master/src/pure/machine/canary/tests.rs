//! Tests of `canary.rs`, stepping virtual time with the simulated driver.

use super::*;
use crate::pure::machine::tests::*;
use graceful_listener::telemetry::LATENCY_BUCKETS;

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
