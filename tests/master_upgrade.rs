//! Smooth and fleet upgrades under the real `einhorn-master`, with `custom-server` workers:
//! new pids answer, old workers finish their connections and exit, nothing is left behind.

mod master_support;

use master_support::{EchoClient, Master, WAIT, is_alive, wait_until, zombie_children};
use nix::sys::signal::Signal;

#[test]
fn an_upgrade_replaces_every_worker_and_old_ones_drain_then_exit() {
    let master = Master::start(&["-n", "4"], &["--drain-timeout", "20"]);
    let old = master.wait_serving(4);
    // A connection opened before the upgrade stays with its worker.
    let mut held = EchoClient::connect(master.addr);
    let held_pid = held.echo("before");
    assert!(old.contains(&held_pid));
    for pid in master.answering_pids(8) {
        assert!(old.contains(&pid), "{pid} is not one of {old:?}");
    }

    let replies = master.upgrade();
    assert_eq!(
        replies.first().unwrap().message,
        "Upgrading smoothly, as commanded"
    );
    assert_eq!(replies.last().unwrap().message, "Upgrade done");
    let acks = replies
        .iter()
        .filter(|r| r.message.contains("ACKed"))
        .count();
    assert_eq!(acks, 4, "one ACK line per new worker: {replies:#?}");

    // Not `wait_serving`: the held connection keeps one old worker alive, draining.
    let state = master.wait_state("4 new workers serving", |s| s.serving_pids().len() == 4);
    let new = state.serving_pids();
    assert!(
        new.iter().all(|p| !old.contains(p)),
        "old {old:?}, new {new:?}"
    );
    assert_eq!(state.version, 1);
    // Fresh connections reach new workers only.
    for pid in master.answering_pids(12) {
        assert!(new.contains(&pid), "{pid} answered after the upgrade");
    }
    // The held connection is still served by its old, draining worker...
    assert_eq!(held.echo("during drain"), held_pid);
    // ...every other old worker has exited...
    assert!(
        wait_until(WAIT, || old
            .iter()
            .filter(|&&p| p != held_pid)
            .all(|&p| !is_alive(p))),
        "idle old workers exit"
    );
    // ...and closing the connection ends the last one.
    drop(held);
    assert!(
        wait_until(WAIT, || !is_alive(held_pid)),
        "drained worker exits"
    );
    master
        .proc
        .wait_for_line(&format!("Exited worker {held_pid} (exit status 0)"), WAIT)
        .expect("the drained worker exits 0 and is reaped");
    assert!(zombie_children(master.pid()).is_empty());
}

#[test]
fn repeated_upgrades_leave_no_zombie_and_keep_serving() {
    let master = Master::start(&["-n", "2"], &["--drain-timeout", "5"]);
    let mut current = master.wait_serving(2);
    for round in 1..=3u64 {
        master.upgrade();
        let new = master.wait_serving(2);
        assert!(new.iter().all(|p| !current.contains(p)), "round {round}");
        assert_eq!(master.state().version, round);
        for pid in master.answering_pids(4) {
            assert!(new.contains(&pid), "round {round}: {pid}");
        }
        assert!(wait_until(WAIT, || current.iter().all(|&p| !is_alive(p))));
        current = new;
    }
    assert!(zombie_children(master.pid()).is_empty());
}

#[test]
fn fleet_upgrade_and_sighup_upgrade() {
    let master = Master::start(&["-n", "3"], &[]);
    let old = master.wait_serving(3);
    let replies = einhorn_master::client::upgrade_fleet(&master.socket, WAIT).unwrap();
    assert_eq!(replies[0].message, "Upgrading fleet, as commanded");
    let fleet = master.wait_serving(3);
    assert!(fleet.iter().all(|p| !old.contains(p)));

    // SIGHUP upgrades too (nobody to answer).
    master.proc.signal(Signal::SIGHUP).unwrap();
    let state = master.wait_state("version 2 serving", |s| {
        s.version == 2 && s.workers.len() == 3 && s.serving_pids().len() == 3
    });
    assert!(state.serving_pids().iter().all(|p| !fleet.contains(p)));
}

#[test]
fn stopping_the_master_drains_every_worker() {
    let mut master = Master::start(&["-n", "2"], &["--drain-timeout", "20"]);
    let pids = master.wait_serving(2);
    let mut held = EchoClient::connect(master.addr);
    let held_pid = held.echo("hello");
    master.proc.signal(Signal::SIGINT).unwrap();
    // The idle worker exits; the busy one still answers its open connection.
    let idle = pids.iter().copied().find(|&p| p != held_pid).unwrap();
    assert!(wait_until(WAIT, || !is_alive(idle)));
    assert_eq!(held.echo("still here"), held_pid);
    assert!(
        master.proc.try_wait().is_none(),
        "the master waits for its workers"
    );
    drop(held);
    let status = master.proc.wait_timeout(WAIT).expect("master exits");
    assert_eq!(status.code(), Some(0));
    for pid in pids {
        assert!(
            master
                .proc
                .output()
                .contains(&format!("Exited worker {pid} (exit status 0)")),
            "{pid} exited 0:\n{}",
            master.proc.output()
        );
    }
}
