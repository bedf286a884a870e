//! Tests of `reload.rs`, stepping virtual time with the simulated driver.

use super::*;
use crate::pure::machine::tests::*;

// ----- reloading the master -----

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
