//! h2load (Debian package nghttp2-client) as a load for HTTP/2 across upgrades, and what its
//! request log says.
//!
//! h2load does not open a new connection after a server's GOAWAY, so a run covers one
//! upgrade; and it never retries. Its request log tells apart the requests it sent from the
//! ones it queued and never sent.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use crate::harness::Proc;

/// Whether `h2load` can be run.
pub fn installed() -> bool {
    Command::new("h2load").arg("--version").output().is_ok()
}

/// h2load for one upgrade: 16 connections of 8 streams for 3 s, after a short warm-up, logging
/// every request to `log`. Wait for its line `Main benchmark duration is started`.
///
/// # Panics
/// When h2load cannot be started.
pub fn spawn(addr: SocketAddr, log: &Path) -> Proc {
    let mut cmd = Command::new("h2load");
    cmd.args(["-c", "16", "-m", "8", "-D", "3", "--warm-up-time", "100ms"])
        .arg(format!("--log-file={}", log.display()))
        .arg(format!("http://{addr}/"));
    Proc::spawn(cmd).expect("h2load")
}

/// What h2load's request log (`--log-file`: start time in microseconds, status, duration) says.
#[derive(Debug, Default)]
pub struct H2loadLog {
    /// Requests sent that got a 2xx.
    pub succeeded: usize,
    /// Requests sent that did not: a stream reset, refused, or an error status.
    pub failed: Vec<String>,
    /// Requests h2load queued and then never sent: it reads a response's end and the server's
    /// GOAWAY in one batch, queues the next request on the first, and its HTTP/2 library
    /// refuses it at send time on the second. h2load counts them as failed and does not
    /// retry them; they never reach any server.
    pub never_sent: usize,
}

/// Sorts the lines of h2load's request log into sent and answered, sent and failed, never sent.
///
/// # Panics
/// On a line that is not h2load's.
pub fn read_log(text: &str) -> H2loadLog {
    let mut log = H2loadLog::default();
    for line in text.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [start, status, _] = fields[..] else {
            panic!("unexpected h2load log line {line:?}");
        };
        // A request never sent has no send time: h2load logs the epoch.
        if start == "0" {
            log.never_sent += 1;
        } else if status.starts_with('2') && status.len() == 3 {
            log.succeeded += 1;
        } else {
            log.failed.push(line.to_string());
        }
    }
    log
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_lines_are_sorted_by_what_reached_the_server() {
        let log = super::read_log(
            "1764000000000000\t200\t812\n0\t-1\t1764000000000000\n1764000000000100\t-1\t90\n\
             1764000000000200\t503\t70\n",
        );
        assert_eq!(log.succeeded, 1);
        assert_eq!(log.never_sent, 1);
        assert_eq!(log.failed.len(), 2);
    }
}
