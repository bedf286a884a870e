//! The environment parsers and `auto`, on structured input: any variables the managers set,
//! with values that are this process's pids, numbers of any size, or any text. No method
//! panics, every error names a variable the method reads, and what a method returns agrees
//! with the variables.

#![no_main]

use arbitrary::Arbitrary;
use graceful_listener::env::{self, CommandSocket, EnvError, Environment, LISTEN_FDS_START};
use graceful_listener::{Bind, BindError};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Var {
    MasterPid,
    FdCount,
    Fd(u8),
    SockPath,
    SockFd,
    ChildIndex,
    ListenPid,
    ListenFds,
    ListenFdNames,
    NotifySocket,
    StarterPort,
    Port,
    Bind,
    Other(String),
}

impl Var {
    fn name(&self) -> String {
        match self {
            Var::MasterPid => env::MASTER_PID.into(),
            Var::FdCount => env::FD_COUNT.into(),
            Var::Fd(i) => Environment::einhorn_fd_var(usize::from(*i)),
            Var::SockPath => env::SOCK_PATH.into(),
            Var::SockFd => env::SOCK_FD.into(),
            Var::ChildIndex => env::CHILD_INDEX.into(),
            Var::ListenPid => env::LISTEN_PID.into(),
            Var::ListenFds => env::LISTEN_FDS.into(),
            Var::ListenFdNames => env::LISTEN_FDNAMES.into(),
            Var::NotifySocket => env::NOTIFY_SOCKET.into(),
            Var::StarterPort => env::SERVER_STARTER_PORT.into(),
            Var::Port => env::PORT.into(),
            Var::Bind => env::BIND.into(),
            Var::Other(name) => name.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Value {
    Pid,
    ParentPid,
    Number(i64),
    Big(u128),
    Text(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    vars: Vec<(Var, Value)>,
    indexes: Vec<usize>,
    names: Vec<String>,
}

/// Asserts that `err` names one of `vars`.
fn names_one_of(err: &EnvError, vars: &[&str]) {
    let message = err.to_string();
    assert!(
        vars.iter().any(|var| message.contains(var)),
        "{message:?} names none of {vars:?}"
    );
}

fn check<T>(result: Result<T, EnvError>, vars: &[&str]) -> Option<T> {
    result.map_err(|err| names_one_of(&err, vars)).ok()
}

/// Sets the process's variables to `vars` (ours only), for `auto` as a program runs it.
fn set_process_vars(vars: &[(String, String)]) {
    let ours = |name: &str| {
        name.starts_with("EINHORN_")
            || name.starts_with("LISTEN_")
            || [
                env::SERVER_STARTER_PORT,
                env::NOTIFY_SOCKET,
                env::BIND,
                env::PORT,
            ]
            .contains(&name)
    };
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(ours) {
            // SAFETY: libFuzzer runs the target on one thread; nothing else reads the
            // environment meanwhile.
            unsafe { std::env::remove_var(name) };
        }
    }
    for (name, value) in vars {
        let settable = !name.is_empty() && !name.contains(['=', '\0']) && !value.contains('\0');
        if settable && ours(name) {
            // SAFETY: as above.
            unsafe { std::env::set_var(name, value) };
        }
    }
}

fuzz_target!(|input: Input| {
    let pid = std::process::id() as i32;
    let parent = std::os::unix::process::parent_id() as i32;
    let vars: Vec<(String, String)> = input
        .vars
        .iter()
        .map(|(var, value)| {
            let value = match value {
                Value::Pid => pid.to_string(),
                Value::ParentPid => parent.to_string(),
                Value::Number(n) => n.to_string(),
                Value::Big(n) => n.to_string(),
                Value::Text(text) => text.clone(),
            };
            (var.name(), value)
        })
        .collect();
    let e = Environment::from_vars(vars.clone(), pid, parent);

    check(e.port(), &[env::PORT]);

    // Einhorn.
    let worker = check(e.check_einhorn_worker(), &[env::MASTER_PID]).is_some();
    let count = check(e.einhorn_fd_count(), &[env::FD_COUNT]);
    assert_eq!(
        e.einhorn_worker_with_listeners(),
        worker && count.is_some_and(|n| n > 0)
    );
    let mut indexes = input.indexes.clone();
    indexes.extend([0, 1]);
    indexes.extend(count.map(|n| n.saturating_sub(1)));
    for &index in &indexes {
        let var = Environment::einhorn_fd_var(index);
        if let Some(fd) = check(e.einhorn_fd(index), &[env::MASTER_PID, env::FD_COUNT, &var]) {
            assert!(fd >= 0 && worker && count.is_some_and(|n| index < n));
        }
    }
    if let Some(CommandSocket::Fd(fd)) = check(e.einhorn_command_socket(), &[env::SOCK_PATH]) {
        assert!(fd >= 0);
    }
    check(e.einhorn_command_socket_path(), &[env::SOCK_PATH]);
    e.einhorn_child_index();

    // systemd.
    let systemd = [env::LISTEN_PID, env::LISTEN_FDS, env::LISTEN_FDNAMES];
    let activation = check(e.activation(), &systemd).flatten();
    let mut indexes = input.indexes.clone();
    indexes.extend(activation.as_ref().map(|a| a.count().saturating_sub(1)));
    for &index in &indexes {
        if let Some(fd) = check(e.systemd_fd(index), &systemd) {
            assert_eq!(i64::from(fd), i64::from(LISTEN_FDS_START) + index as i64);
        }
    }
    let mut names = input.names.clone();
    names.extend(
        activation
            .as_ref()
            .and_then(|a| a.names())
            .unwrap_or_default()
            .iter()
            .cloned(),
    );
    for name in &names {
        if let Some((index, fd)) = check(e.systemd_fd_named(name), &systemd) {
            let activation = activation.as_ref().expect("a name needs an activation");
            assert_eq!(activation.index_of(name), Some(index));
            assert_eq!(activation.fd(index), Some(fd));
        }
    }
    e.notify_socket();

    // Server::Starter.
    let starter = [env::SERVER_STARTER_PORT];
    let ports = check(e.starter_ports(), &starter).flatten();
    for &index in &input.indexes {
        if let Some(port) = check(e.starter_port(index), &starter) {
            assert_eq!(ports.as_ref().and_then(|p| p.get(index)), Some(&port));
        }
    }
    let mut keys = input.names.clone();
    keys.extend(ports.iter().flatten().map(|p| p.key.clone()));
    for key in &keys {
        if let Some(port) = check(e.starter_port_named(key), &starter) {
            assert!(port.is_named(key));
        }
    }

    // auto, as a program runs it: from the process's variables.
    set_process_vars(&vars);
    match Bind::Auto.resolve_auto() {
        Ok(bind) => {
            assert_ne!(bind, Bind::Auto);
            if let Some(Ok(explicit)) = std::env::var(env::BIND).ok().map(|s| s.parse::<Bind>()) {
                assert_eq!(bind, explicit);
            }
        }
        Err(BindError::Auto { source }) => names_one_of(
            &source,
            &[
                env::BIND,
                env::MASTER_PID,
                env::FD_COUNT,
                env::LISTEN_PID,
                env::LISTEN_FDS,
                env::LISTEN_FDNAMES,
                env::SERVER_STARTER_PORT,
                env::PORT,
            ],
        ),
        Err(other) => panic!("resolve_auto failed with {other}"),
    }
});
