//! Property tests for `auto`: it never panics, its errors name a variable, variables it does
//! not read change nothing, and on valid environments it follows its documented order.
//!
//! Here, inside the crate, and not in `tests/`: they test private items (`choose`, `resolve`,
//! `Resolved`: `auto`'s decision, which the public API only shows through a bind).

use std::os::fd::RawFd;

use proptest::prelude::*;

use super::{Resolved, choose, resolve};
use crate::bind::props::{config, valid_bind};
use crate::bind::{Bind, DEFAULT_ADDR};
use crate::env::props::{
    Vars, arbitrary_vars, einhorn_vars, fd_names, fds, starter_entries, starter_value,
    systemd_vars, variable_of,
};
use crate::env::{
    BIND, Environment, FD_COUNT, LISTEN_FDNAMES, LISTEN_FDS, LISTEN_PID, MASTER_PID, PORT,
    SERVER_STARTER_PORT,
};

/// The variables `auto` reads.
const READS: &[&str] = &[
    BIND,
    MASTER_PID,
    FD_COUNT,
    LISTEN_PID,
    LISTEN_FDS,
    LISTEN_FDNAMES,
    SERVER_STARTER_PORT,
    PORT,
];

/// Which managers an environment holds, each valid, and whether it is this process's.
#[derive(Debug, Clone)]
struct Managers {
    pid: i32,
    parent: i32,
    /// Another process's pid: a master that is not our parent, an activation not for us.
    other: i32,
    bind: Option<Bind>,
    einhorn: Option<(bool, Vec<RawFd>)>,
    systemd: Option<(bool, Vec<String>, bool)>,
    starter: Option<Vec<(String, RawFd)>>,
    port: Option<u16>,
}

impl Managers {
    fn vars(&self) -> Vars {
        let mut vars = Vars::new();
        if let Some(bind) = &self.bind {
            vars.push((BIND.to_owned(), bind.to_string()));
        }
        if let Some((ours, fds)) = &self.einhorn {
            let master = if *ours { self.parent } else { self.other };
            vars.extend(einhorn_vars(master, fds));
        }
        if let Some((ours, names, named)) = &self.systemd {
            let listen_pid = if *ours { self.pid } else { self.other };
            vars.extend(systemd_vars(
                listen_pid,
                names.len(),
                named.then_some(&names[..]),
            ));
        }
        if let Some(entries) = &self.starter {
            vars.push((SERVER_STARTER_PORT.to_owned(), starter_value(entries)));
        }
        if let Some(port) = self.port {
            vars.push((PORT.to_owned(), port.to_string()));
        }
        vars
    }

    /// The documented order: the override, Einhorn, systemd, Server::Starter, `PORT`, the
    /// default; a manager not ours, or without sockets, is passed over.
    fn expected(&self) -> Bind {
        if let Some(bind) = &self.bind {
            return bind.clone();
        }
        if let Some((true, fds)) = &self.einhorn
            && !fds.is_empty()
        {
            return Bind::Einhorn(0);
        }
        if let Some((true, names, _)) = &self.systemd
            && !names.is_empty()
        {
            return Bind::Systemd(0);
        }
        if self.starter.is_some() {
            return Bind::Starter(0);
        }
        match self.port {
            Some(port) => Bind::Port(port),
            None => Bind::Addr(DEFAULT_ADDR),
        }
    }

    /// What the reason must say of the managers passed over before the one chosen.
    fn skipped(&self) -> Vec<String> {
        let mut skipped = Vec::new();
        if self.bind.is_some() {
            return skipped;
        }
        match &self.einhorn {
            Some((false, _)) => skipped.push(format!(
                "{MASTER_PID}={} is not this process's parent",
                self.other
            )),
            Some((true, fds)) if fds.is_empty() => {
                skipped.push(format!("run by Einhorn without sockets ({FD_COUNT}=0)"))
            }
            Some((true, _)) => return skipped,
            None => {}
        }
        match &self.systemd {
            Some((false, _, _)) => skipped.push(format!(
                "{LISTEN_PID}={} is not this process (pid {})",
                self.other, self.pid
            )),
            Some((true, names, _)) if names.is_empty() => {
                skipped.push(format!("socket-activated without sockets ({LISTEN_FDS}=0)"))
            }
            _ => {}
        }
        skipped
    }
}

fn managers() -> impl Strategy<Value = Managers> {
    let pids = (1..=i32::MAX, 1..=i32::MAX, 1..=i32::MAX).prop_filter(
        "this process, its parent and another are three",
        |(pid, parent, other)| pid != parent && pid != other && parent != other,
    );
    (
        pids,
        prop::option::of(valid_bind().prop_filter("not auto", |b| *b != Bind::Auto)),
        prop::option::of((any::<bool>(), fds())),
        prop::option::of((any::<bool>(), fd_names(), any::<bool>())),
        prop::option::of(starter_entries()),
        prop::option::of(any::<u16>()),
    )
        .prop_map(
            |((pid, parent, other), bind, einhorn, systemd, starter, port)| Managers {
                pid,
                parent,
                other,
                bind,
                einhorn,
                systemd,
                starter,
                port,
            },
        )
}

proptest! {
    #![proptest_config(config(512))]

    /// On any variables `auto` never panics; it chooses a spec other than `auto` with a
    /// reason, or fails naming a variable it reads; an override that parses is taken as it
    /// is; and variables it does not read change nothing.
    #[test]
    fn auto_never_panics_and_names_what_stops_it((vars, pid, parent) in arbitrary_vars()) {
        let env = Environment::from_vars(vars.clone(), pid, parent);
        let chosen = choose(&env);
        match &chosen {
            Ok((bind, why)) => {
                prop_assert_ne!(bind, &Bind::Auto);
                prop_assert!(!why.is_empty());
            }
            Err(err) => {
                let var = variable_of(&env, err)?;
                prop_assert!(READS.contains(&var.as_str()), "{} is about {}", err, var);
            }
        }
        if let Some(Ok(bind)) = env.get(BIND).map(str::parse::<Bind>)
            && bind != Bind::Auto
        {
            prop_assert_eq!(chosen.as_ref().map(|(b, _)| b), Ok(&bind));
        }
        let read: Vars = vars.into_iter().filter(|(k, _)| READS.contains(&k.as_str())).collect();
        prop_assert_eq!(&choose(&Environment::from_vars(read, pid, parent)), &chosen);
    }

    /// A spec other than `auto` is kept as it is, whatever the environment.
    #[test]
    fn explicit_specs_are_kept(
        bind in valid_bind().prop_filter("not auto", |b| *b != Bind::Auto),
        (vars, pid, parent) in arbitrary_vars(),
    ) {
        let env = Environment::from_vars(vars, pid, parent);
        prop_assert_eq!(resolve(bind.clone(), &env).ok(), Some(Resolved { bind, why: None }));
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// On valid environments, in any order of variables, `auto` takes the first that applies
    /// of: the override, Einhorn, systemd, Server::Starter, `PORT`, the default, and says
    /// which managers it passed over.
    #[test]
    fn auto_follows_the_documented_order(
        (managers, vars) in managers().prop_flat_map(|m| {
            let vars = m.vars();
            (Just(m), Just(vars).prop_shuffle())
        }),
    ) {
        let env = Environment::from_vars(vars, managers.pid, managers.parent);
        let resolved = resolve(Bind::Auto, &env);
        prop_assert!(resolved.is_ok(), "{:?}", resolved);
        let Resolved { bind, why } = resolved.unwrap();
        prop_assert_eq!(bind, managers.expected());
        let why = why.expect("auto gives a reason");
        for skipped in managers.skipped() {
            prop_assert!(why.contains(&skipped), "{:?} does not say {:?}", why, skipped);
        }
    }
}
