//! `/metrics` cannot hurt the master: a flood of half-sent requests on it, with the master
//! under `ulimit -n 1024`, leaves the command socket answering, an upgrade completing, the
//! log quiet and the master's fds back at their baseline once the clients leave.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use graceful_listener_suite::harness::{example, wait_until};
use graceful_listener_suite::master::{Master, WAIT};

/// Half-sent requests opened on `/metrics`: more than the master's fd limit.
const SQUATTERS: usize = 1_100;

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |fds| fds.count())
}

/// Raises this process's soft fd limit to its hard one (the clients need more than 1024).
fn raise_own_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit on structs we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    limit.rlim_cur
}

#[test]
fn a_flood_on_metrics_never_reaches_the_command_socket_or_the_log() {
    let own_limit = raise_own_fd_limit();
    assert!(
        own_limit as usize > SQUATTERS + 200,
        "the test needs {} fds, its hard limit is {own_limit}",
        SQUATTERS + 200
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let master = Master::start_with(
        &[
            "-b",
            "127.0.0.1:0",
            "-n",
            "1",
            "-m",
            "manual",
            "--metrics",
            &metrics.to_string(),
        ],
        &[example("hyper-hello")],
        |cmd| {
            // SAFETY: setrlimit between fork and exec: async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    let limit = libc::rlimit {
                        rlim_cur: 1024,
                        rlim_max: 1024,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        },
    );
    master.wait_serving(1);
    let pid = master.pid();
    let baseline = fd_count(pid);
    let lines_before = master.output().lines().count();

    let mut squatters = Vec::new();
    for _ in 0..SQUATTERS {
        // Connections past the backlog may time out: the flood is what matters.
        if let Ok(mut stream) = TcpStream::connect_timeout(&metrics, Duration::from_millis(200)) {
            let _ = stream.write_all(b"GET /metr");
            squatters.push(stream);
        }
    }
    assert!(squatters.len() >= 1_000, "{} connected", squatters.len());
    let held = fd_count(pid);

    // The command socket answers at once, and an upgrade completes.
    let started = Instant::now();
    let state = master.state();
    let took = started.elapsed();
    assert_eq!(state.master_pid, pid);
    assert!(took < Duration::from_secs(1), "state took {took:?}");
    let replies = master.upgrade().expect("an upgrade under the flood");
    assert!(
        replies.iter().any(|r| r.message.contains("Upgrade done")),
        "{replies:?}"
    );
    master.wait_serving(1);

    drop(squatters);
    assert!(
        wait_until(WAIT, || fd_count(pid) <= baseline),
        "fds back to {baseline}: {} now\n{}",
        fd_count(pid),
        master.output()
    );
    let grew = master.output().lines().count() - lines_before;
    eprintln!(
        "{SQUATTERS} half-sent requests on /metrics: master fds {baseline} -> {held} -> {}, state in {took:?}, log +{grew} lines",
        fd_count(pid)
    );
    assert!(
        held <= baseline + 64 + 8,
        "the master held {held} fds under the flood (baseline {baseline})"
    );
    // The upgrade's own lines and a few more: no line per connection.
    assert!(
        grew < 60,
        "the log grew by {grew} lines:\n{}",
        master.output()
    );
}
