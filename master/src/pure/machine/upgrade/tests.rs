//! Tests of `upgrade.rs`, stepping virtual time with the simulated driver.

use super::*;
use crate::pure::machine::tests::*;

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
