//! Helpers for the master's own integration tests. The master process itself, and the
//! bounded waits, come from the workspace's test bench (`graceful_listener_suite`); what is
//! here reads what only these tests look at: a worker's signal dispositions, fds and
//! environment, from `/proc`.

#![allow(dead_code, unreachable_pub, unused_imports)]

use std::path::Path;

use nix::sys::signal::Signal;

pub use graceful_listener_suite::harness::{is_alive, wait_until};
pub use graceful_listener_suite::master::{Master, WAIT};

/// A line of `/proc/<pid>/status`, e.g. `SigIgn`.
pub fn status_field(pid: i32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

/// Whether `pid` has a handler installed for `signal` (`SigCgt` in `/proc/<pid>/status`).
pub fn catches(pid: i32, signal: Signal) -> bool {
    status_field(pid, "SigCgt")
        .and_then(|mask| u64::from_str_radix(&mask, 16).ok())
        .is_some_and(|mask| mask & (1 << (signal as i32 - 1)) != 0)
}

/// Waits until every pid has a handler for `signal`: a shell worker has run its `trap`.
pub fn wait_catching(pids: &[i32], signal: Signal) {
    assert!(
        wait_until(WAIT, || pids.iter().all(|&p| catches(p, signal))),
        "workers {pids:?} never installed a handler for {signal:?}"
    );
}

/// The fds a process has open, with what they point to.
pub fn open_fds(pid: i32) -> Vec<(i32, String)> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut fds: Vec<(i32, String)> = entries
        .flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some((fd, target.to_string_lossy().into_owned()))
        })
        .collect();
    fds.sort();
    fds
}

/// The environment of a process.
pub fn environ(pid: i32) -> Vec<(String, String)> {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return Vec::new();
    };
    raw.split(|&b| b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}
