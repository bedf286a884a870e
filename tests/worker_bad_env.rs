//! Bad input from the environment (Einhorn's, systemd's, Server::Starter's, `PORT`): the
//! worker exits non-zero with a message that names the variable and value at fault, and
//! never panics; for a custom server on the core, and for actix-web, which drives the
//! core's pieces itself.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use graceful_listener_suite::fake_einhorn::FakeEinhorn;
use graceful_listener_suite::harness::{Proc, example};

/// One `#[test]` per worker example for each listed function `fn(worker: &str)`, in a module
/// named after the function: `closed_fd::custom`, `closed_fd::actix`.
macro_rules! for_each_worker {
    ($($test:ident),* $(,)?) => {
        $(
            mod $test {
                #[test]
                fn custom() {
                    super::$test("custom-server")
                }
                #[test]
                fn actix() {
                    super::$test("actix-hello")
                }
            }
        )*
    };
}

for_each_worker!(
    garbage_in_einhorn_fd,
    index_past_the_count,
    closed_fd,
    fd_that_is_a_file,
    fd_that_is_a_udp_socket,
    fd_that_is_not_listening,
    fd_at_raw_number_that_is_a_file,
    missing_master_pid,
    master_pid_that_is_not_the_parent,
    a_bad_bind_spec_is_a_usage_error,
    a_dead_command_socket_is_reported_after_bounded_retries,
    garbage_einhorn_fd_count_even_with_a_good_fd_0,
    listen_fds_that_is_not_a_number,
    listen_fdnames_that_do_not_match_the_count,
    a_systemd_name_that_is_not_there,
    systemd_sockets_of_another_process,
    a_malformed_server_starter_port,
    a_server_starter_key_that_is_not_there,
    a_port_above_65535,
    an_override_that_is_not_a_spec,
    listen_fds_that_counts_a_socket_that_is_not_there,
);

/// Runs `worker` under `master` with `args`, variables set and removed; returns what it
/// printed after checking it failed cleanly.
fn fails(
    worker: &str,
    master: &FakeEinhorn,
    args: &[&str],
    set: &[(&str, String)],
    remove: &[&str],
) -> String {
    let mut cmd = master.command(example(worker));
    cmd.args(args);
    for (key, value) in set {
        cmd.env(key, value);
    }
    for key in remove {
        cmd.env_remove(key);
    }
    fails_cleanly(cmd)
}

/// Runs `cmd`, a worker given bad input; returns what it printed after checking it failed
/// cleanly: exit status 1, no signal, no panic.
fn fails_cleanly(cmd: std::process::Command) -> String {
    let mut process = Proc::spawn(cmd).unwrap();
    let status = process
        .wait_timeout(Duration::from_secs(30))
        .expect("the worker exits");
    let output = process.output();
    assert_eq!(status.signal(), None, "{output}");
    assert_eq!(
        status.code(),
        Some(1),
        "exit status 1 on bad input\n{output}"
    );
    assert!(!output.contains("panicked"), "no panic\n{output}");
    output
}

/// Removes from `cmd`'s environment every variable a socket manager sets.
fn without_managers(cmd: &mut std::process::Command) {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("EINHORN_")
            || key.starts_with("LISTEN_")
            || ["PORT", "SERVER_STARTER_PORT", "GRACEFUL_LISTENER_BIND"].contains(&key.as_str())
        {
            cmd.env_remove(key);
        }
    }
}

/// Runs `worker` alone (no socket manager's variables inherited) with `args` and `set`;
/// `LISTEN_PID` is set to the worker's own pid when `own_listen_pid`. Returns what it printed
/// after checking it failed cleanly.
fn fails_alone(worker: &str, args: &[&str], set: &[(&str, &str)], own_listen_pid: bool) -> String {
    // `exec` keeps the shell's pid, so `$$` is the worker's.
    let script = if own_listen_pid {
        "LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" \"$@\""
    } else {
        "exec \"$0\" \"$@\""
    };
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c").arg(script).arg(example(worker)).args(args);
    without_managers(&mut cmd);
    cmd.envs(set.iter().copied());
    fails_cleanly(cmd)
}

fn with_fd(fd: OwnedFd) -> (FakeEinhorn, i32) {
    let mut master = FakeEinhorn::new().unwrap();
    let index = master.add_fd(fd);
    let raw = master.fd(index);
    (master, raw)
}

fn assert_says(output: &str, message: &str) {
    assert!(
        output.contains(&format!("error: {message}")),
        "expected {message:?} in:\n{output}"
    );
}

fn garbage_in_einhorn_fd(worker: &str) {
    let mut master = FakeEinhorn::new().unwrap();
    master.add_tcp_listener().unwrap();
    let out = fails(
        worker,
        &master,
        &[],
        &[("EINHORN_FD_0", "three".into())],
        &[],
    );
    assert_says(
        &out,
        "cannot take einhorn@0: EINHORN_FD_0=\"three\" is not a file descriptor number",
    );
}

fn index_past_the_count(worker: &str) {
    let mut master = FakeEinhorn::new().unwrap();
    master.add_tcp_listener().unwrap();
    let out = fails(worker, &master, &["--bind", "einhorn@1"], &[], &[]);
    assert_says(
        &out,
        "cannot take einhorn@1: einhorn@1 is out of range: EINHORN_FD_COUNT=1 (indexes start at 0)",
    );
}

fn closed_fd(worker: &str) {
    let mut master = FakeEinhorn::new().unwrap();
    master.add_tcp_listener().unwrap();
    let out = fails(worker, &master, &[], &[("EINHORN_FD_0", "987".into())], &[]);
    assert_says(
        &out,
        "cannot take einhorn@0 (EINHORN_FD_0=987): fd 987 is not open",
    );
}

fn fd_that_is_a_file(worker: &str) {
    let (master, fd) = with_fd(std::fs::File::open("/dev/null").unwrap().into());
    let out = fails(worker, &master, &[], &[], &[]);
    assert_says(
        &out,
        &format!("cannot take einhorn@0 (EINHORN_FD_0={fd}): fd {fd} is not a socket"),
    );
}

fn fd_that_is_a_udp_socket(worker: &str) {
    let (master, fd) = with_fd(std::net::UdpSocket::bind("127.0.0.1:0").unwrap().into());
    let out = fails(worker, &master, &[], &[], &[]);
    assert_says(
        &out,
        &format!(
            "cannot take einhorn@0 (EINHORN_FD_0={fd}): fd {fd} is a datagram socket, not a stream socket"
        ),
    );
}

fn fd_that_is_not_listening(worker: &str) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    let (master, fd) = with_fd(socket.into());
    let out = fails(worker, &master, &[], &[], &[]);
    assert_says(
        &out,
        &format!(
            "cannot take einhorn@0 (EINHORN_FD_0={fd}): fd {fd} is a socket that is not listening"
        ),
    );
}

fn fd_at_raw_number_that_is_a_file(worker: &str) {
    let (master, fd) = with_fd(std::fs::File::open("/dev/null").unwrap().into());
    let fd_spec = format!("fd@{fd}");
    let out = fails(worker, &master, &["--bind", &fd_spec], &[], &[]);
    assert_says(
        &out,
        &format!("cannot take fd@{fd} (fd {fd}): fd {fd} is not a socket"),
    );
}

fn missing_master_pid(worker: &str) {
    let mut master = FakeEinhorn::new().unwrap();
    master.add_tcp_listener().unwrap();
    let out = fails(
        worker,
        &master,
        &["--bind", "einhorn@0"],
        &[],
        &["EINHORN_MASTER_PID"],
    );
    assert_says(
        &out,
        "cannot take einhorn@0: EINHORN_MASTER_PID is not set: this process was not started by an Einhorn master",
    );
}

fn master_pid_that_is_not_the_parent(worker: &str) {
    let mut master = FakeEinhorn::new().unwrap();
    master.add_tcp_listener().unwrap();
    let out = fails(
        worker,
        &master,
        &["--bind", "einhorn@0"],
        &[("EINHORN_MASTER_PID", "1".into())],
        &[],
    );
    assert!(
        out.contains("EINHORN_MASTER_PID=1 is not this process's parent"),
        "{out}"
    );
}

fn a_bad_bind_spec_is_a_usage_error(worker: &str) {
    let master = FakeEinhorn::new().unwrap();
    let mut process = Proc::spawn({
        let mut cmd = master.command(example(worker));
        cmd.args(["--bind", "einhorn@x"]);
        cmd
    })
    .unwrap();
    let status = process.wait_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(2), "clap's usage error status");
    assert!(
        process
            .output()
            .contains("invalid bind spec \"einhorn@x\": \"x\" is not a listener index")
    );
}

fn a_dead_command_socket_is_reported_after_bounded_retries(worker: &str) {
    // A socket file nobody listens on: every connect is refused, as with a dead master.
    let mut master = FakeEinhorn::new().unwrap();
    master.add_tcp_listener().unwrap();
    let dead = master.dir().join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    let out = fails(
        worker,
        &master,
        &[],
        &[("EINHORN_SOCK_PATH", dead.display().to_string())],
        &[],
    );
    assert!(
        out.contains(&format!(
            "error: cannot ACK to the Einhorn master: EINHORN_SOCK_PATH={} unreachable after",
            dead.display()
        )),
        "{out}"
    );
}

fn garbage_einhorn_fd_count_even_with_a_good_fd_0(worker: &str) {
    let mut master = FakeEinhorn::new().unwrap();
    master.add_tcp_listener().unwrap();
    let out = fails(
        worker,
        &master,
        &[],
        &[("EINHORN_FD_COUNT", "two".into())],
        &[],
    );
    assert_says(
        &out,
        "cannot resolve auto: EINHORN_FD_COUNT=\"two\" is not a listener count",
    );
}

fn listen_fds_that_is_not_a_number(worker: &str) {
    let out = fails_alone(worker, &[], &[("LISTEN_FDS", "abc")], true);
    assert_says(
        &out,
        "cannot resolve auto: LISTEN_FDS=\"abc\" is not a socket count",
    );
}

fn listen_fdnames_that_do_not_match_the_count(worker: &str) {
    let out = fails_alone(
        worker,
        &[],
        &[("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "web:admin")],
        true,
    );
    assert_says(
        &out,
        "cannot resolve auto: LISTEN_FDNAMES=\"web:admin\" names 2 sockets but LISTEN_FDS=1",
    );
}

fn a_systemd_name_that_is_not_there(worker: &str) {
    let out = fails_alone(
        worker,
        &["--bind", "systemd@metrics"],
        &[("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "web")],
        true,
    );
    assert_says(
        &out,
        "cannot take systemd@metrics: no socket is named \"metrics\": LISTEN_FDNAMES=\"web\"",
    );
}

fn systemd_sockets_of_another_process(worker: &str) {
    let out = fails_alone(
        worker,
        &["--bind", "systemd@0"],
        &[("LISTEN_PID", "1"), ("LISTEN_FDS", "1")],
        false,
    );
    assert!(
        out.contains("error: cannot take systemd@0: LISTEN_PID=1 is not this process (pid ")
            && out.contains("the sockets were passed to another process"),
        "{out}"
    );
}

fn a_malformed_server_starter_port(worker: &str) {
    let out = fails_alone(worker, &[], &[("SERVER_STARTER_PORT", "8080")], false);
    assert_says(
        &out,
        "cannot resolve auto: SERVER_STARTER_PORT=\"8080\" is not `host:port=fd` or `path=fd` entries separated by `;`",
    );
}

fn a_server_starter_key_that_is_not_there(worker: &str) {
    let out = fails_alone(
        worker,
        &["--bind", "starter@:9090"],
        &[("SERVER_STARTER_PORT", "127.0.0.1:8080=3")],
        false,
    );
    assert_says(
        &out,
        "cannot take starter@:9090: no socket is named \":9090\": SERVER_STARTER_PORT=\"127.0.0.1:8080=3\"",
    );
}

fn a_port_above_65535(worker: &str) {
    let out = fails_alone(worker, &[], &[("PORT", "99999")], false);
    assert_says(
        &out,
        "cannot resolve auto: PORT=\"99999\" is not a port number (0 to 65535)",
    );
}

fn an_override_that_is_not_a_spec(worker: &str) {
    // The parser's own reason is kept, whatever it is.
    for (spec, reason) in [
        ("einhorn@x", "\"x\" is not a listener index"),
        ("127.0.0.1:99999", "port 99999 is above 65535"),
    ] {
        let out = fails_alone(worker, &[], &[("GRACEFUL_LISTENER_BIND", spec)], false);
        assert_says(
            &out,
            &format!(
                "cannot resolve auto: GRACEFUL_LISTENER_BIND=\"{spec}\" is not a bind spec: {reason}"
            ),
        );
    }
}

fn listen_fds_that_counts_a_socket_that_is_not_there(worker: &str) {
    // A real listening socket at fd 3, as systemd passes it, and nothing at fd 4, though
    // LISTEN_FDS says 2: the worker would serve on fd 3 and never notice.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=2 exec \"$0\" \"$@\"")
        .arg(example(worker));
    // SAFETY: only dup2, fcntl and close, which are async-signal-safe, run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 leaves the new fd inheritable; at 3 already, it is made so by hand.
            let at_3 = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if at_3 == -1 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(4);
            Ok(())
        });
    }
    // Nothing but systemd's variables: auto takes systemd@0.
    without_managers(&mut cmd);
    let out = fails_cleanly(cmd);
    // Either fd 4 is still free, or (most often) the worker's runtime has opened an fd of
    // its own there, at the lowest free number: close-on-exec, so not one passed.
    let missing = "cannot take systemd@0: LISTEN_FDS=2 passes fds 3 to 4, but fd 4 (systemd@1)";
    assert!(
        [
            "is not open",
            "is close-on-exec, so not passed across exec: this process opened it itself",
        ]
        .iter()
        .any(|why| out.contains(&format!("error: {missing} {why}\n"))),
        "expected {missing:?} in:\n{out}"
    );
}
