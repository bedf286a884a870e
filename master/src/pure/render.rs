//! Data into the wire's text: the state machine's [`Message`]s and [`Response`]s, the `state`
//! and `config` snapshots as YAML, decoding errors, and the driver's own replies. Pure: no I/O.
//!
//! The machine never formats text, and this module never decides anything: every word a client
//! or the log sees is written here.
//!
//! ```
//! use einhorn_master::pure::machine::{Message, Response};
//! use einhorn_master::pure::render;
//! use einhorn_master::pure::wire::{RequestId, encode_reply};
//!
//! let response = Response::last(Message::UpgradeDone, Some(RequestId::from(1)));
//! assert_eq!(
//!     encode_reply(&render::reply(&response)),
//!     "---%0Amessage: Upgrade done%0Arequest_id: 1%0A\n"
//! );
//! ```

use std::fmt::Write as _;
use std::time::Duration;

use crate::pure::command::{COMMANDS, CommandError, DecodeError, signal_name};
use crate::pure::machine::{
    CanaryProgress, CountChange, ExitNote, Message, Response, Rollback, Sent, StateReport,
    UpgradeFailure,
};
use crate::pure::state::{ConfigState, MasterState};
use crate::pure::wire::Reply;

/// A [`Response`] as a wire [`Reply`].
pub fn reply(response: &Response) -> Reply {
    Reply {
        message: text(&response.message),
        request_id: response.request_id.clone(),
        wait: response.wait,
        error: response.error,
    }
}

/// The text of a [`Message`], as replies and the log show it.
///
/// ```
/// use einhorn_master::pure::machine::{CountChange, Message};
/// use einhorn_master::pure::render::text;
///
/// let message = Message::WorkersChanged { change: CountChange::Inc, from: 1, to: 2 };
/// assert_eq!(text(&message), "Incrementing number of workers from 1 -> 2");
/// ```
pub fn text(message: &Message) -> String {
    match message {
        Message::Welcome {
            user,
            master_pid,
            command_name,
        } => {
            let name = match command_name {
                Some(name) => format!(" ({name})"),
                None => String::new(),
            };
            format!(
                "Welcome, {}! You are speaking to Einhorn Master Process {master_pid}{name}.\nThis is einhorn-master {}.\n",
                user.as_deref().unwrap_or("friend"),
                env!("CARGO_PKG_VERSION"),
            )
        }
        Message::Help => help_text(),
        Message::State(report) => state_yaml(&state_of(report)),
        Message::Config(config) => config_yaml(config),
        Message::WorkersChanged { change, from, to } => match change {
            CountChange::Inc => format!("Incrementing number of workers from {from} -> {to}"),
            CountChange::Dec => format!("Decrementing number of workers from {from} -> {to}"),
            CountChange::Set => {
                let what = if to > from {
                    "spin up additional workers."
                } else {
                    "gracefully terminate workers."
                };
                format!("Altering worker count, {from} -> {to}. Will {what}")
            }
        },
        Message::WorkersUnchanged { count } => format!("Worker count is already {count}"),
        Message::CannotDecrease { target, master_pid } => format!(
            "Can't decrease number of workers (already at {target}). Run kill {master_pid} if you really want to kill einhorn."
        ),
        Message::SignalsSent(sent) => sent.iter().map(sent_text).collect::<Vec<_>>().join("\n"),
        Message::GoingDown(sent) => format!("Einhorn is going down! {}", sent_text(sent)),
        Message::UpgradeAccepted { fleet: true } => "Upgrading fleet, as commanded".to_string(),
        Message::UpgradeAccepted { fleet: false } => "Upgrading smoothly, as commanded".to_string(),
        Message::UpgradeRefused => "Not upgrading: the master is stopping".to_string(),
        Message::ReloadAccepted => "Reloading, as commanded".to_string(),
        Message::ReloadRefused { stopping: true } => {
            "Not reloading: the master is stopping".to_string()
        }
        Message::ReloadRefused { stopping: false } => {
            "Not reloading: this master cannot re-exec itself (it runs inside another program that did not say how)".to_string()
        }
        Message::Verbosity { offset } => format!(
            "Verbosity set to {} (log level {})",
            offset,
            crate::pure::verbosity::level_name(*offset)
        ),
        Message::Reexecing => {
            "Reloading the master: checking the new program before it takes over".to_string()
        }
        Message::ReexecFailed { reason, upgrade } => format!(
            "{}: the new master cannot take over: {reason}; this master keeps running with every worker and socket as they were",
            if *upgrade { "Upgrade refused" } else { "Reload refused" }
        ),
        Message::Reexeced { master_pid } => format!(
            "Reloaded: einhorn-master {} runs as the master (pid {master_pid}, unchanged)",
            env!("CARGO_PKG_VERSION")
        ),
        Message::UpgradeStarting {
            fleet,
            from_version,
        } => {
            let kind = if *fleet { "fleet" } else { "smooth" };
            format!("Starting {kind} upgrade from version {from_version}...")
        }
        Message::UpgradeRestarting { acked, target } => format!(
            "Currently upgrading ({acked} / {target} ACKs; bumping version and starting over)..."
        ),
        Message::Launched {
            pid,
            index,
            version,
        } => format!("===> Launched {pid} (index: {index}, version {version})"),
        Message::SpawnFailed { index, error } => {
            format!("could not start worker (index {index}): {error}")
        }
        Message::Exited { pid, note, status } => {
            let note = match note {
                ExitNote::BeforeAck { failures } => {
                    format!(" before it ACKed ({failures} consecutive failures)")
                }
                ExitNote::SoonAfterAck { after, failures } => format!(
                    " {:.3}s after its ACK, within --min-uptime ({failures} consecutive failures)",
                    after.as_secs_f64()
                ),
                ExitNote::Unexpected => " unexpectedly".to_string(),
                ExitNote::Retired => String::new(),
            };
            format!("===> Exited worker {pid}{note} ({status})")
        }
        Message::AckProgress {
            pid,
            acked,
            target,
            ack_mode,
        } => format!("Worker {pid} ACKed: up to {acked} / {target} {ack_mode} ACKs"),
        Message::KillingOld { count } => format!("Killing off {count} old workers."),
        Message::SmoothKilling { count } => {
            format!("Smooth upgrade: killing off {count} old workers.")
        }
        Message::SupersededStopping { count } => format!(
            "Stopping {count} workers of a superseded version that never ACKed; the workers serving stay until new ones ACK."
        ),
        Message::TooManyCurrent { count } => {
            format!("Have too many workers at the current version, so killing off {count} of them.")
        }
        Message::CanaryClamped { asked, workers } => format!(
            "Canary: --canary {asked} is more than the {workers} workers of the generation: \
             the canary is all {workers} (ask for --canary {workers} or fewer, or raise the \
             count first with set_workers)"
        ),
        Message::CanaryStarting { workers, soak } => format!(
            "Canary: {workers} new workers first, serving beside every old one; then a soak of {}s",
            soak.as_secs_f64()
        ),
        Message::CanarySoaking { workers, soak } => format!(
            "Canary: all {workers} new workers ACKed; soaking {}s beside the old ones",
            soak.as_secs_f64()
        ),
        Message::CanaryPassed { new, old } if new.0 < crate::pure::machine::CANARY_MIN_RESPONSES => {
            format!(
                "Canary passed on its exits alone (--canary-min-responses 0): new workers {} 5xx \
                 of {} responses, old workers {} of {}; upgrading the rest",
                new.1, new.0, old.1, old.0
            )
        }
        Message::CanaryPassed { new, old } => format!(
            "Canary passed: new workers {} 5xx of {} responses, old workers {} of {}; upgrading the rest",
            new.1, new.0, old.1, old.0
        ),
        Message::RolledBack { why } => format!("rolled back: {}", rollback_text(why)),
        Message::StatsFromUnknown { pid } => format!("worker:stats from unknown pid {pid}"),
        Message::Sent(sent) => sent_text(sent),
        Message::Upgraded { version } => format!("Upgraded successfully to version {version}."),
        Message::UpgradeDone => "Upgrade done".to_string(),
        Message::UpgradeFailed {
            cause,
            serving,
            signaled,
        } => format!(
            "Upgrade failed: {}; {serving} workers keep serving, {} unACKed new workers were sent USR2 {signaled:?}",
            match cause {
                UpgradeFailure::Timeout(timeout) =>
                    format!("no new worker ACKed within {}s", timeout.as_secs_f64()),
                UpgradeFailure::FailedStarts { starts, pid, status } => format!(
                    "{starts} new workers in a row exited before their ACK (the last, {pid}: {status})"
                ),
            },
            signaled.len(),
        ),
        Message::StatsAnswer { shed } => match shed {
            Some(permille) => format!("shed {permille}"),
            None => "ok".to_string(),
        },
        Message::Pinned { version } => format!(
            "workers started from now on run version {version}'s build (the last good one), whatever is at the program's path, until an upgrade succeeds"
        ),
        Message::UpgradeAborted { quitting } => format!(
            "Upgrade aborted: the master is {}",
            if *quitting { "quitting" } else { "stopping" }
        ),
        Message::Starting { workers, version } => {
            format!("starting {workers} workers (version {version})")
        }
        Message::UnknownSpawn { id, pid } => {
            format!("spawn result for unknown request {id:?} (pid {pid})")
        }
        Message::ReapedStranger { pid, status } => format!("reaped {pid}, not a worker ({status})"),
        Message::AckWithoutPid => "invalid worker:ack (no pid)".to_string(),
        Message::AckIgnored { pid, ack_mode } => {
            format!(
                "received a manual ACK from {pid}, but the ACK mode is {ack_mode}; ignoring it (to count workers as up only once they ACK, start the master with -m manual)"
            )
        }
        Message::AckFromUnknown { pid } => format!("received an ACK from unknown pid {pid}"),
        Message::AckedAgain { pid } => format!("worker {pid} ACKed again; ignoring it"),
        Message::Acked { pid, index } => format!("worker {pid} ACKed (index {index})"),
        Message::PingFromUnknown { pid } => format!("ping from unknown pid {pid:?}"),
        Message::Stopping { signal } => format!(
            "stopping: sending {} to every worker, exiting once they are gone",
            signal_name(*signal)
        ),
        Message::StopNow(sent) => format!(
            "stopping already: sent {} again to {} workers still running {:?}; workers on graceful-listener take a second signal as \"stop now\"",
            signal_name(sent.signal),
            sent.pids.len(),
            sent.pids
        ),
        Message::BackoffEnded { failures, uptime } => format!(
            "a worker stayed up {}s after its ACK: {failures} failed starts forgiven, spawns no longer back off",
            uptime.as_secs_f64()
        ),
        Message::Quitting => "quitting: sending QUIT to every worker and exiting now".to_string(),
        Message::AllGone => "all workers are gone; exiting".to_string(),
        Message::Killing { pid, after, signal } => format!(
            "worker {pid} is still alive {}s after {}; sending KILL",
            after.as_secs_f64(),
            signal_name(*signal)
        ),
    }
}

/// Why a canary upgrade was rolled back, in words.
///
/// ```
/// use einhorn_master::pure::machine::Rollback;
/// use einhorn_master::pure::render::rollback_text;
///
/// let why = Rollback::ServerErrors { new: (100, 20), old: (400, 0) };
/// assert_eq!(
///     rollback_text(&why),
///     "new workers answered 20 5xx of 100 responses (20.0%), old workers 0 of 400 (0.0%) during the soak"
/// );
/// ```
pub fn rollback_text(why: &Rollback) -> String {
    let percent = |(total, errors): (u64, u64)| {
        if total == 0 {
            0.0
        } else {
            100.0 * errors as f64 / total as f64
        }
    };
    match why {
        Rollback::Exited { pid, status } => {
            format!("new worker {pid} exited ({status}) during the canary")
        }
        Rollback::Slow {
            new_p99_ms,
            old_p99_ms,
        } => format!(
            "new workers answered slowly: 99% of their responses within {new_p99_ms} ms, the old workers' within {old_p99_ms} ms during the soak"
        ),
        Rollback::ExitedAfterAck { pid, status, after } => format!(
            "new workers exited after their ACK: {pid} ({status}) {:.1}s after it; the old workers serve on",
            after.as_secs_f64()
        ),
        Rollback::TooFewResponses { new, old, needed } => format!(
            "too few responses reached the canary to judge: {new} of {} during the soak (old workers {old}), at least {needed} needed: are clients keeping their connections to the old workers? (soak longer, or --canary-min-responses 0 to pass on exits alone)",
            new + old
        ),
        Rollback::ServerErrors { new, old } => format!(
            "new workers answered {} 5xx of {} responses ({:.1}%), old workers {} of {} ({:.1}%) during the soak",
            new.1,
            new.0,
            percent(*new),
            old.1,
            old.0,
            percent(*old)
        ),
    }
}

/// Einhorn's report of a signal sent to workers.
fn sent_text(sent: &Sent) -> String {
    format!(
        "Successfully sent {}s to {} processes: {:?}",
        signal_name(sent.signal),
        sent.pids.len(),
        sent.pids
    )
}

/// The `help` text: one command per line.
pub fn help_text() -> String {
    let mut text = String::from(
        "You are speaking to the einhorn-master command socket. You can run the following commands:\n\n",
    );
    for (name, description) in COMMANDS {
        let _ = writeln!(text, "{name}: {description}");
    }
    text
}

/// The `state` snapshot as YAML (what clients parse back into a [`MasterState`]).
pub fn state_yaml(state: &MasterState) -> String {
    serde_norway::to_string(state).unwrap_or_else(|e| format!("state unavailable: {e}"))
}

/// The `state` snapshot with the machine's typed parts put into words.
fn state_of(report: &StateReport) -> MasterState {
    let mut state = report.state.clone();
    state.canary = report.canary.map(|progress| match progress {
        CanaryProgress::Starting { workers } => format!("starting {workers}"),
        CanaryProgress::Soaking { left } => format!("soaking ({:.1} s left)", left.as_secs_f64()),
    });
    state.last_rollback = report
        .last_rollback
        .as_ref()
        .map(|why| format!("rolled back: {}", rollback_text(why)));
    state
}

/// The `config` snapshot as YAML.
pub fn config_yaml(config: &ConfigState) -> String {
    serde_norway::to_string(config).unwrap_or_else(|e| format!("config unavailable: {e}"))
}

/// The message of the error reply to a [`CommandError`]. Unknown commands get the command
/// list too, as in Einhorn.
///
/// ```
/// use einhorn_master::pure::command::CommandError;
/// use einhorn_master::pure::render::command_error;
///
/// let text = command_error(&CommandError::Unrecognized("frob".into()));
/// assert!(text.starts_with("Unrecognized command: \"frob\"\n\n"));
/// assert!(text.contains("upgrade_fleet: "));
/// ```
pub fn command_error(error: &CommandError) -> String {
    match error {
        CommandError::Unrecognized(name) => {
            format!("Unrecognized command: {name:?}\n\n{}", help_text())
        }
        other => other.to_string(),
    }
}

/// The error reply to a line that is not a command the master can run.
///
/// ```
/// use einhorn_master::pure::command::decode;
/// use einhorn_master::pure::render::decode_error;
///
/// let reply = decode_error(&decode(b"garbage").unwrap_err());
/// assert!(reply.error && reply.message.starts_with("Could not parse command"));
/// ```
pub fn decode_error(error: &DecodeError) -> Reply {
    match error {
        DecodeError::Request(e) => Reply::failure(e.reply_message(), None),
        DecodeError::Command { id, error } => Reply::failure(command_error(error), id.clone()),
    }
}

/// The reply to a connection refused because `open` command connections are open already.
pub fn too_many_connections(open: usize) -> Reply {
    Reply::failure(
        format!(
            "Too many command connections: {open} are open, the limit of this master; try again later"
        ),
        None,
    )
}

/// The reply to a connection closed because it sent nothing for `after`.
pub fn idle_closed(after: Duration) -> Reply {
    Reply::failure(
        format!(
            "Closing this command connection: no request for {}s",
            after.as_secs_f64()
        ),
        None,
    )
}

/// The reply to a request line longer than `max` bytes.
pub fn too_long(max: usize) -> Reply {
    Reply::failure(
        format!("Could not parse command: request longer than {max} bytes"),
        None,
    )
}

/// At most `max` bytes of `line`, for a log: the bytes (lossily as UTF-8, escapes visible) and,
/// when cut, how long the line was.
///
/// ```
/// use einhorn_master::pure::render::log_prefix;
/// assert_eq!(log_prefix(b"short", 200), "\"short\"");
/// assert_eq!(log_prefix(&[b'['; 1000], 3), "\"[[[\"... (1000 bytes)");
/// ```
pub fn log_prefix(line: &[u8], max: usize) -> String {
    let shown = String::from_utf8_lossy(&line[..line.len().min(max)]);
    if line.len() > max {
        format!("{shown:?}... ({} bytes)", line.len())
    } else {
        format!("{shown:?}")
    }
}

#[cfg(test)]
mod tests {
    use nix::sys::signal::Signal;

    use super::*;
    use crate::pure::machine::AckMode;
    use crate::pure::wire::{RequestId, encode_reply};

    #[test]
    fn upgrade_lines_read_as_einhorns() {
        let cases: Vec<(Message, &str)> = vec![
            (
                Message::UpgradeAccepted { fleet: false },
                "Upgrading smoothly, as commanded",
            ),
            (
                Message::UpgradeStarting {
                    fleet: true,
                    from_version: 3,
                },
                "Starting fleet upgrade from version 3...",
            ),
            (
                Message::Sent(Sent {
                    signal: Signal::SIGUSR2,
                    pids: vec![10, 11],
                }),
                "Successfully sent USR2s to 2 processes: [10, 11]",
            ),
            (
                Message::AckProgress {
                    pid: 7,
                    acked: 1,
                    target: 4,
                    ack_mode: AckMode::Manual,
                },
                "Worker 7 ACKed: up to 1 / 4 manual ACKs",
            ),
            (
                Message::Exited {
                    pid: 9,
                    note: ExitNote::BeforeAck { failures: 2 },
                    status: "exit status 1".into(),
                },
                "===> Exited worker 9 before it ACKed (2 consecutive failures) (exit status 1)",
            ),
            (
                Message::UpgradeFailed {
                    cause: UpgradeFailure::Timeout(Duration::from_secs(1)),
                    serving: 2,
                    signaled: vec![5],
                },
                "Upgrade failed: no new worker ACKed within 1s; 2 workers keep serving, 1 unACKed new workers were sent USR2 [5]",
            ),
        ];
        for (message, expected) in cases {
            assert_eq!(text(&message), expected);
        }
    }

    #[test]
    fn a_response_keeps_its_flags_and_id() {
        let response = Response::failure(Message::UpgradeRefused, Some(RequestId::from(3)));
        assert_eq!(
            encode_reply(&reply(&response)),
            "---%0Amessage: 'Not upgrading: the master is stopping'%0Arequest_id: 3%0Aerror: true%0A\n"
        );
        let more = Response::more(Message::UpgradeAccepted { fleet: true }, None);
        let wire = reply(&more);
        assert!(wire.wait && !wire.error);
    }

    #[test]
    fn help_lists_every_command() {
        let help = help_text();
        for (name, _) in COMMANDS {
            assert!(help.contains(&format!("{name}: ")), "{name}");
        }
    }

    #[test]
    fn log_prefixes_are_bounded() {
        let line = vec![b'{'; 64 * 1024];
        let shown = log_prefix(&line, 200);
        assert!(shown.len() < 260, "{}", shown.len());
        assert!(shown.ends_with("... (65536 bytes)"), "{shown}");
    }
}
