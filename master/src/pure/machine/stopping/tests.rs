//! Tests of `stopping.rs`, stepping virtual time with the simulated driver.

use super::*;
use crate::pure::machine::tests::*;

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
