//! Property tests for the environment parsers: on any variables, no method panics and every
//! error is typed as documented and names the variable (and the value as found); what a
//! manager writes reads back as it was written.
//!
//! The strategies and checks are shared with the `auto` property tests.
//!
//! Here, inside the crate, and not in `tests/`: the `auto` and `bind` property tests share
//! these strategies, and those reach private items.

use std::os::fd::RawFd;

use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::TestCaseError;

use super::{
    BIND, CHILD_INDEX, CommandSocket, EnvError, Environment, FD_COUNT, LISTEN_FDNAMES, LISTEN_FDS,
    LISTEN_FDS_START, LISTEN_PID, MASTER_PID, NOTIFY_SOCKET, PORT, SERVER_STARTER_PORT, SOCK_FD,
    SOCK_PATH,
};
use crate::bind::props::{config, spec_like, valid_bind};

/// Variables, as `(name, value)` pairs.
pub(crate) type Vars = Vec<(String, String)>;

/// The variables the parsers read, and one they do not.
const VARIABLES: &[&str] = &[
    MASTER_PID,
    FD_COUNT,
    "EINHORN_FD_0",
    "EINHORN_FD_1",
    "EINHORN_FD_2",
    SOCK_PATH,
    SOCK_FD,
    CHILD_INDEX,
    LISTEN_PID,
    LISTEN_FDS,
    LISTEN_FDNAMES,
    NOTIFY_SOCKET,
    SERVER_STARTER_PORT,
    PORT,
    BIND,
    "HOME",
];

/// A pid: often one of a few, so that variables name it; sometimes any.
fn pid() -> impl Strategy<Value = i32> {
    prop_oneof![select(&[1, 200, 300, 0, -1, i32::MAX][..]), any::<i32>()]
}

/// A value as a manager, a typo or an attacker writes it: this process's pids, numbers of every
/// size, separators, specs, any text.
fn value(pids: [i32; 2]) -> impl Strategy<Value = String> {
    prop_oneof![
        select(pids.map(|pid| pid.to_string()).to_vec()),
        "[0-9]{1,2}",
        "-?[0-9]{1,25}",
        select(
            &[
                "",
                "-0",
                "+1",
                " 1",
                "1 ",
                "0x10",
                "2147483647",
                "2147483648",
                "-2147483648",
                "4294967296",
                "18446744073709551615",
                "18446744073709551616",
            ][..]
        )
        .prop_map(str::to_owned),
        prop::collection::vec("[a-z0-9:.=/\\[\\]-]{0,8}", 0..5).prop_map(|parts| parts.join(";")),
        prop::collection::vec("[ -~]{0,6}", 0..5).prop_map(|parts| parts.join(":")),
        any::<String>(),
        spec_like(),
    ]
}

/// Any variables, with this process's pid and parent pid.
pub(crate) fn arbitrary_vars() -> impl Strategy<Value = (Vars, i32, i32)> {
    let random = (pid(), pid()).prop_flat_map(|(pid, parent)| {
        let var = (
            select(VARIABLES).prop_map(str::to_owned),
            value([pid, parent]),
        );
        (prop::collection::vec(var, 0..12), Just(pid), Just(parent))
    });
    // A manager's valid variables, then garbage over some of them (the last setting wins).
    let spoiled = (managers(), prop::collection::vec(any::<Index>(), 1..3)).prop_flat_map(
        |((vars, pid, parent), at)| {
            let names: Vec<String> = at
                .iter()
                .filter(|_| !vars.is_empty())
                .map(|at| vars[at.index(vars.len())].0.clone())
                .collect();
            let garbage = names
                .into_iter()
                .map(|name| (Just(name), value([pid, parent])))
                .collect::<Vec<_>>();
            (Just(vars), garbage, Just(pid), Just(parent)).prop_map(
                |(mut vars, garbage, pid, parent)| {
                    vars.extend(garbage);
                    (vars, pid, parent)
                },
            )
        },
    );
    prop_oneof![random, spoiled]
}

/// Any environment.
pub(crate) fn arbitrary_env() -> impl Strategy<Value = Environment> {
    arbitrary_vars().prop_map(|(vars, pid, parent)| Environment::from_vars(vars, pid, parent))
}

/// Listener fds, as a master passes them.
pub(crate) fn fds() -> impl Strategy<Value = Vec<RawFd>> {
    prop::collection::vec(0..=RawFd::MAX, 0..6)
}

/// Einhorn's variables for a worker of master `master_pid` given `fds`.
pub(crate) fn einhorn_vars(master_pid: i32, fds: &[RawFd]) -> Vars {
    let mut vars = vec![
        (MASTER_PID.to_owned(), master_pid.to_string()),
        (FD_COUNT.to_owned(), fds.len().to_string()),
        (SOCK_PATH.to_owned(), "/tmp/einhorn.sock".to_owned()),
    ];
    vars.extend(
        fds.iter()
            .enumerate()
            .map(|(i, fd)| (Environment::einhorn_fd_var(i), fd.to_string())),
    );
    vars
}

/// Socket names as `LISTEN_FDNAMES` can hold them: anything without its separator.
pub(crate) fn fd_names() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec("[^:]{0,12}", 0..6)
}

/// systemd's variables for `count` sockets passed to `listen_pid`, named if `names`.
pub(crate) fn systemd_vars(listen_pid: i32, count: usize, names: Option<&[String]>) -> Vars {
    let mut vars = vec![
        (LISTEN_PID.to_owned(), listen_pid.to_string()),
        (LISTEN_FDS.to_owned(), count.to_string()),
    ];
    if let Some(names) = names {
        vars.push((LISTEN_FDNAMES.to_owned(), names.join(":")));
    }
    vars
}

/// A key `start_server` writes: a port, an address, a path, or any text without `;` (the
/// entry separator). None starts with ':', so a `:PORT` lookup names one key only.
fn starter_key() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u16>().prop_map(|port| port.to_string()),
        any::<std::net::SocketAddr>().prop_map(|addr| addr.to_string()),
        "/[a-z0-9/._=-]{0,30}",
        "[^;:][^;]{0,20}",
    ]
}

/// `SERVER_STARTER_PORT` entries with distinct keys, at least one.
pub(crate) fn starter_entries() -> impl Strategy<Value = Vec<(String, RawFd)>> {
    (
        prop::collection::btree_set(starter_key(), 1..5),
        prop::collection::vec(0..=RawFd::MAX, 5),
    )
        .prop_flat_map(|(keys, fds)| {
            Just(keys.into_iter().zip(fds).collect::<Vec<_>>()).prop_shuffle()
        })
}

/// The `SERVER_STARTER_PORT` value for `entries`.
pub(crate) fn starter_value(entries: &[(String, RawFd)]) -> String {
    entries
        .iter()
        .map(|(key, fd)| format!("{key}={fd}"))
        .collect::<Vec<_>>()
        .join(";")
}

/// A valid environment of one manager or another (or none), each with what it passed.
fn managers() -> impl Strategy<Value = (Vars, i32, i32)> {
    (1..=i32::MAX, 1..=i32::MAX).prop_flat_map(|(pid, parent)| {
        let vars = prop_oneof![
            fds().prop_map(move |fds| einhorn_vars(parent, &fds)),
            (fd_names(), any::<bool>()).prop_map(move |(names, named)| {
                systemd_vars(pid, names.len(), named.then_some(&names[..]))
            }),
            starter_entries().prop_map(|entries| {
                vec![(SERVER_STARTER_PORT.to_owned(), starter_value(&entries))]
            }),
            any::<u16>().prop_map(|port| vec![(PORT.to_owned(), port.to_string())]),
            valid_bind().prop_map(|bind| vec![(BIND.to_owned(), bind.to_string())]),
        ];
        (vars, Just(pid), Just(parent))
    })
}

/// The variable `err` is about, after checking that what it says matches `env`: a missing
/// variable is unset, a bad value is the value as found, and the message names the variable.
pub(crate) fn variable_of(env: &Environment, err: &EnvError) -> Result<String, TestCaseError> {
    let message = err.to_string();
    let var = match err {
        EnvError::Missing { var, .. } => {
            prop_assert_eq!(env.get(var), None, "{} is set", var);
            prop_assert!(
                message.starts_with(&format!("{var} is not set: ")),
                "{}",
                message
            );
            var.clone()
        }
        EnvError::Invalid { var, value, .. } | EnvError::InvalidSpec { var, value, .. } => {
            prop_assert_eq!(env.get(var), Some(value.as_str()), "not the value as found");
            let named = format!("{var}={value:?} is not ");
            prop_assert!(message.starts_with(&named), "{}", message);
            var.clone()
        }
        EnvError::NotOurMaster {
            master_pid,
            parent_pid,
        } => {
            prop_assert_eq!(*parent_pid, env.parent_pid);
            prop_assert_ne!(master_pid, parent_pid);
            let value = env.get(MASTER_PID).and_then(|v| v.parse().ok());
            prop_assert_eq!(value, Some(*master_pid));
            MASTER_PID.to_owned()
        }
        EnvError::NotOurActivation { listen_pid, pid } => {
            prop_assert_eq!(*pid, env.pid);
            prop_assert_ne!(listen_pid, pid);
            let value = env.get(LISTEN_PID).and_then(|v| v.parse().ok());
            prop_assert_eq!(value, Some(*listen_pid));
            LISTEN_PID.to_owned()
        }
        EnvError::IndexOutOfRange { passed, .. } => passed
            .split(['=', ' '])
            .next()
            .unwrap_or_default()
            .to_owned(),
        EnvError::NameCountMismatch {
            names,
            named,
            count,
        } => {
            prop_assert_eq!(env.get(LISTEN_FDNAMES), Some(names.as_str()));
            prop_assert_eq!(*named, names.split(':').count());
            prop_assert_ne!(named, count);
            LISTEN_FDNAMES.to_owned()
        }
        EnvError::NoSuchName { var, names, .. } => {
            prop_assert_eq!(env.get(var).unwrap_or_default(), names.as_str());
            var.to_string()
        }
    };
    prop_assert!(!var.is_empty() && message.contains(&var), "{}", message);
    Ok(var)
}

/// Checks `result`'s error, if any: a variant `documented` allows, about one of `vars`.
fn check<T>(
    env: &Environment,
    method: &str,
    result: Result<T, EnvError>,
    vars: &[&str],
    documented: fn(&EnvError) -> bool,
) -> Result<Option<T>, TestCaseError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(err) => {
            prop_assert!(documented(&err), "{}: undocumented error {:?}", method, err);
            let var = variable_of(env, &err)?;
            prop_assert!(
                vars.contains(&var.as_str()),
                "{}: {} is about {}, not {:?}",
                method,
                err,
                var,
                vars
            );
            Ok(None)
        }
    }
}

/// Indexes worth asking for, given how many listeners there are.
fn probes(count: Option<usize>) -> Vec<usize> {
    let mut probes = vec![0, 1, 2, RawFd::MAX as usize, usize::MAX];
    if let Some(count) = count {
        probes.extend([count.saturating_sub(1), count]);
    }
    probes
}

fn parses_to<T: std::str::FromStr + PartialEq>(value: Option<&str>, expected: T) -> bool {
    value.and_then(|v| v.parse::<T>().ok()) == Some(expected)
}

fn einhorn_methods(env: &Environment) -> Result<(), TestCaseError> {
    use EnvError::*;
    let worker = check(
        env,
        "check_einhorn_worker",
        env.check_einhorn_worker(),
        &[MASTER_PID],
        |e| matches!(e, Missing { .. } | Invalid { .. } | NotOurMaster { .. }),
    )?;
    let count = check(
        env,
        "einhorn_fd_count",
        env.einhorn_fd_count(),
        &[FD_COUNT],
        |e| matches!(e, Missing { .. } | Invalid { .. }),
    )?;
    prop_assert_eq!(
        env.einhorn_worker_with_listeners(),
        worker.is_some() && count.is_some_and(|n| n > 0)
    );
    for index in probes(count) {
        let var = Environment::einhorn_fd_var(index);
        let fd = check(
            env,
            "einhorn_fd",
            env.einhorn_fd(index),
            &[MASTER_PID, FD_COUNT, &var],
            |_| true,
        )?;
        if let Some(fd) = fd {
            prop_assert!(fd >= 0);
            prop_assert!(worker.is_some() && count.is_some_and(|n| index < n));
            prop_assert!(parses_to(env.get(&var), fd));
        }
    }
    let socket = check(
        env,
        "einhorn_command_socket",
        env.einhorn_command_socket(),
        &[SOCK_PATH],
        |e| matches!(e, Missing { .. } | Invalid { .. }),
    )?;
    match socket {
        Some(CommandSocket::Fd(fd)) => prop_assert!(fd >= 0),
        Some(CommandSocket::Path(path)) => prop_assert!(!path.as_os_str().is_empty()),
        None => {}
    }
    check(
        env,
        "einhorn_command_socket_path",
        env.einhorn_command_socket_path(),
        &[SOCK_PATH],
        |e| matches!(e, Missing { .. } | Invalid { .. }),
    )?;
    env.einhorn_child_index();
    Ok(())
}

fn systemd_methods(env: &Environment) -> Result<(), TestCaseError> {
    use EnvError::*;
    const READS: &[&str] = &[LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES];
    let activation = check(env, "activation", env.activation(), READS, |e| {
        matches!(
            e,
            NotOurActivation { .. } | Invalid { .. } | Missing { .. } | NameCountMismatch { .. }
        )
    })?
    .flatten();
    if let Some(names) = activation.as_ref().and_then(|a| a.names()) {
        prop_assert_eq!(Some(names.len()), activation.as_ref().map(|a| a.count()));
    }
    for index in probes(activation.as_ref().map(|a| a.count())) {
        let fd = check(env, "systemd_fd", env.systemd_fd(index), READS, |e| {
            !matches!(e, NoSuchName { .. } | NotOurMaster { .. })
        })?;
        if let Some(fd) = fd {
            prop_assert_eq!(i64::from(fd), i64::from(LISTEN_FDS_START) + index as i64);
        }
    }
    let mut names: Vec<String> = activation
        .as_ref()
        .and_then(|a| a.names())
        .unwrap_or_default()
        .to_vec();
    names.push("no such name".to_owned());
    for name in names {
        let found = check(
            env,
            "systemd_fd_named",
            env.systemd_fd_named(&name),
            READS,
            |e| !matches!(e, IndexOutOfRange { .. } | NotOurMaster { .. }),
        )?;
        if let Some((index, fd)) = found {
            let activation = activation.as_ref().expect("a name needs an activation");
            prop_assert_eq!(activation.index_of(&name), Some(index));
            prop_assert_eq!(activation.fd(index), Some(fd));
        }
    }
    if let Some(path) = env.notify_socket() {
        prop_assert!(!path.is_empty());
    }
    Ok(())
}

fn starter_methods(env: &Environment) -> Result<(), TestCaseError> {
    use EnvError::*;
    const READS: &[&str] = &[SERVER_STARTER_PORT];
    let ports = check(env, "starter_ports", env.starter_ports(), READS, |e| {
        matches!(e, Invalid { .. })
    })?
    .flatten();
    for port in ports.iter().flatten() {
        prop_assert!(port.fd >= 0 && !port.key.is_empty() && !port.key.contains(';'));
    }
    for index in probes(ports.as_ref().map(Vec::len)) {
        let port = check(env, "starter_port", env.starter_port(index), READS, |e| {
            matches!(e, Invalid { .. } | Missing { .. } | IndexOutOfRange { .. })
        })?;
        if let Some(port) = port {
            prop_assert_eq!(ports.as_ref().and_then(|p| p.get(index)), Some(&port));
        }
    }
    let mut keys: Vec<String> = ports
        .iter()
        .flatten()
        .flat_map(|p| [p.key.clone(), format!(":{}", p.key)])
        .collect();
    keys.push("no such key".to_owned());
    for key in keys {
        let port = check(
            env,
            "starter_port_named",
            env.starter_port_named(&key),
            READS,
            |e| matches!(e, Invalid { .. } | Missing { .. } | NoSuchName { .. }),
        )?;
        if let Some(port) = port {
            prop_assert!(port.is_named(&key));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    /// On any variables, no method panics, and every error is of a documented kind, names
    /// the variable at fault and, for a bad value, that value as found.
    #[test]
    fn no_method_panics_and_every_error_names_its_variable(env in arbitrary_env()) {
        check(&env, "port", env.port(), &[PORT], |e| matches!(e, EnvError::Invalid { .. }))?;
        einhorn_methods(&env)?;
        systemd_methods(&env)?;
        starter_methods(&env)?;
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// `EINHORN_FD_<i>` values give those fds, for i below `EINHORN_FD_COUNT`, whatever the
    /// variables' order.
    #[test]
    fn einhorn_fds_read_back(
        (parent, fds, vars) in (1..=i32::MAX, fds()).prop_flat_map(|(parent, fds)| {
            let vars = einhorn_vars(parent, &fds);
            (Just(parent), Just(fds), Just(vars).prop_shuffle())
        }),
        pid in pid(),
    ) {
        let env = Environment::from_vars(vars, pid, parent);
        prop_assert_eq!(env.einhorn_fd_count(), Ok(fds.len()));
        prop_assert_eq!(env.einhorn_worker_with_listeners(), !fds.is_empty());
        for (index, fd) in fds.iter().enumerate() {
            prop_assert_eq!(env.einhorn_fd(index), Ok(*fd));
        }
        prop_assert_eq!(
            env.einhorn_fd(fds.len()),
            Err(EnvError::IndexOutOfRange {
                spec: format!("einhorn@{}", fds.len()),
                passed: format!("{FD_COUNT}={}", fds.len()),
            })
        );
    }

    /// `LISTEN_FDNAMES` built from names gives those names, each found at its first index.
    #[test]
    fn systemd_names_read_back(pid in 1..=i32::MAX, names in fd_names(), named in any::<bool>()) {
        let vars = systemd_vars(pid, names.len(), named.then_some(&names[..]));
        let env = Environment::from_vars(vars, pid, 1);
        let activation = env.activation().unwrap().expect("activated");
        prop_assert_eq!(activation.count(), names.len());
        prop_assert_eq!(activation.names(), named.then_some(&names[..]));
        for index in 0..names.len() {
            prop_assert_eq!(env.systemd_fd(index), Ok(LISTEN_FDS_START + index as RawFd));
            if named {
                let first = names.iter().position(|n| *n == names[index]).unwrap();
                prop_assert_eq!(
                    env.systemd_fd_named(&names[index]),
                    Ok((first, LISTEN_FDS_START + first as RawFd))
                );
            }
        }
    }

    /// `SERVER_STARTER_PORT` built from `(key, fd)` entries parses back to them, each found
    /// by index, by key and, for a port-only key, by `:PORT`.
    #[test]
    fn starter_entries_read_back(entries in starter_entries()) {
        let env = Environment::from_vars([(SERVER_STARTER_PORT, starter_value(&entries))], 2, 1);
        let ports = env.starter_ports().unwrap().expect("set");
        let read: Vec<(String, RawFd)> = ports.into_iter().map(|p| (p.key, p.fd)).collect();
        prop_assert_eq!(&read, &entries);
        for (index, (key, fd)) in entries.iter().enumerate() {
            prop_assert_eq!(env.starter_port(index).map(|p| p.fd), Ok(*fd));
            prop_assert_eq!(env.starter_port_named(key).map(|p| p.fd), Ok(*fd));
            if key.bytes().all(|b| b.is_ascii_digit()) {
                prop_assert_eq!(env.starter_port_named(&format!(":{key}")).map(|p| p.fd), Ok(*fd));
            }
        }
    }

    /// `PORT` reads back as the port it holds.
    #[test]
    fn port_reads_back(port in any::<u16>()) {
        let env = Environment::from_vars([(PORT, port.to_string())], 2, 1);
        prop_assert_eq!(env.port(), Ok(Some(port)));
    }
}
