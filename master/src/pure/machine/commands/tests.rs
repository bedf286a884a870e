//! Tests of `commands.rs`, stepping virtual time with the simulated driver.

use super::*;
use crate::pure::machine::tests::*;

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
