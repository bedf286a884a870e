//! The commands the master understands, checked and typed from a [`Request`]. Pure: no I/O.

use nix::sys::signal::Signal;

use crate::pure::wire::{Request, RequestError, RequestId, parse_request};

use graceful_listener::einhorn::{WORKER_STATS, parse_stats_args, parse_stats_latency};

/// A checked command from the command socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `ehlo`: the greeting, with the client's user name when it sent one.
    Ehlo {
        /// The `user` key of the request.
        user: Option<String>,
    },
    /// `help`: the list of commands.
    Help,
    /// `state`: a YAML dump of the master's state.
    State,
    /// `config`: a YAML dump of the master's configuration.
    Config,
    /// `upgrade` (smooth: one new worker at a time) or `upgrade_fleet` (all at once).
    Upgrade {
        /// `true` for `upgrade_fleet`.
        fleet: bool,
        /// `--canary N --soak SECS`: prove the new version on N workers first.
        canary: Option<CanaryPlan>,
    },
    /// `reload`: re-exec the master in place (same pid, sockets and workers), leaving the
    /// workers as they are.
    Reload,
    /// `quieter`: log less.
    Quieter,
    /// `louder`: log more.
    Louder,
    /// `inc`: one more worker.
    Inc,
    /// `dec`: one worker fewer (never below one).
    Dec,
    /// `set_workers N`.
    SetWorkers(usize),
    /// `signal SIG...`: send signals to every worker.
    Signal(Vec<Signal>),
    /// `die [SIG]`: signal every worker (SIGUSR2 by default), stop respawning, exit when they
    /// are gone.
    Die(Signal),
    /// `worker:ack`: a worker is serving.
    WorkerAck {
        /// The worker's pid, as it sent it.
        pid: Option<i64>,
    },
    /// `worker:ping`: a worker is alive.
    WorkerPing {
        /// The worker's pid, as it sent it.
        pid: Option<i64>,
    },
    /// `worker:stats`: a worker's responses so far, by status class (only from workers told
    /// that this master understands it, through `EINHORN_MASTER_EXTENSIONS`).
    WorkerStats {
        /// The worker's pid.
        pid: i64,
        /// Responses by class: 1xx, 2xx, 3xx, 4xx, 5xx.
        responses: [u64; 5],
        /// Response times by bucket (`graceful_listener::telemetry::LATENCY_BUCKETS`), from
        /// workers that report them (boxed: every other command is small).
        latency: Option<Box<[u64; graceful_listener::telemetry::LATENCY_BUCKETS]>>,
    },
}

/// A canary upgrade: `workers` new workers serve beside every old one for `soak`, compared
/// with them, before the upgrade goes on (or is rolled back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CanaryPlan {
    /// New workers started first.
    pub workers: usize,
    /// How long they serve beside the old ones once they have all ACKed.
    pub soak: std::time::Duration,
}

/// Why a request is not a command the master can run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    /// No such command.
    #[error("unrecognized command {0:?}")]
    Unrecognized(String),
    /// The command needs arguments and got none.
    #[error("command {command:?} needs {needs}, got no args")]
    NoArgs {
        /// The command at fault.
        command: String,
        /// What it needs.
        needs: &'static str,
    },
    /// `upgrade`'s arguments are not `--canary N --soak SECS`.
    #[error("invalid upgrade arguments {0:?}: expected --canary N --soak SECONDS (N at least 1)")]
    InvalidCanary(Vec<String>),
    /// `worker:stats` without a pid, or without five counts.
    #[error("invalid worker:stats {0:?}: expected a pid and five counts, 1xx to 5xx")]
    InvalidStats(Vec<String>),
    /// The worker count is not an integer in `[1, 100]`.
    #[error("invalid count {0:?}: must be an integer in [1, 100]")]
    InvalidCount(String),
    /// Not a signal name.
    #[error("invalid signal {0:?}")]
    InvalidSignal(String),
}

impl Command {
    /// Whether this is a message from a worker (`worker:ack`, `worker:ping`): the worker closes
    /// the connection right after sending it and expects no reply.
    pub fn is_worker_message(&self) -> bool {
        matches!(
            self,
            Command::WorkerAck { .. } | Command::WorkerPing { .. } | Command::WorkerStats { .. }
        )
    }

    /// The command's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Ehlo { .. } => "ehlo",
            Command::Help => "help",
            Command::State => "state",
            Command::Config => "config",
            Command::Upgrade { fleet: false, .. } => "upgrade",
            Command::Upgrade { fleet: true, .. } => "upgrade_fleet",
            Command::WorkerStats { .. } => WORKER_STATS,
            Command::Reload => "reload",
            Command::Quieter => "quieter",
            Command::Louder => "louder",
            Command::Inc => "inc",
            Command::Dec => "dec",
            Command::SetWorkers(_) => "set_workers",
            Command::Signal(_) => "signal",
            Command::Die(_) => "die",
            Command::WorkerAck { .. } => "worker:ack",
            Command::WorkerPing { .. } => "worker:ping",
        }
    }
}

/// Commands and their one-line descriptions, as `help` lists them
/// ([`render::help_text`](crate::pure::render::help_text)).
pub const COMMANDS: &[(&str, &str)] = &[
    ("config", "Show the master's configuration"),
    ("dec", "Decrement the number of workers"),
    (
        "die",
        "[Takes 1 optional argument: the signal] Signal every worker (USR2 by default), then exit once they are gone",
    ),
    ("ehlo", "Print a welcome message"),
    ("help", "Print out available commands"),
    ("inc", "Increment the number of workers"),
    ("louder", "Increase the master's verbosity"),
    ("quieter", "Decrease the master's verbosity"),
    (
        "reload",
        "Reload the master's own code in place (same pid, sockets and workers) after checking that the new program can take over",
    ),
    (
        "set_workers",
        "[Takes 1 argument: the number of workers] Set the number of workers",
    ),
    (
        "signal",
        "[Takes 1 or more arguments: signals] Send signals to every worker",
    ),
    ("state", "Get a dump of the master's state"),
    (
        "upgrade",
        "Reload the master's code, then upgrade all workers smoothly: start new ones (--max-unacked at a time), retire one old worker per new ACK",
    ),
    (
        "upgrade_fleet",
        "Reload the master's code, then upgrade all workers at once: start every new worker, retire the old ones once all have ACKed",
    ),
    (
        "worker:ack",
        "[Workers only] Tell the master this worker is serving",
    ),
    (
        "worker:ping",
        "[Workers only] Tell the master this worker is alive",
    ),
];

/// Checks a request and types it.
///
/// # Errors
/// A [`CommandError`] naming the command or argument at fault.
///
/// # Example
/// ```
/// use einhorn_master::pure::command::{Command, parse_command};
/// use einhorn_master::pure::wire::parse_request;
///
/// let request = parse_request(br#"{"command":"signal","args":["usr2","SIGTERM"]}"#).unwrap();
/// let command = parse_command(&request).unwrap();
/// assert_eq!(
///     command,
///     Command::Signal(vec![nix::sys::signal::Signal::SIGUSR2, nix::sys::signal::Signal::SIGTERM])
/// );
/// ```
pub fn parse_command(request: &Request) -> Result<Command, CommandError> {
    let args = request.args.as_deref().unwrap_or_default();
    let name = request.command.as_str();
    Ok(match name {
        "ehlo" => Command::Ehlo {
            user: request.user.clone(),
        },
        "help" => Command::Help,
        "state" => Command::State,
        "config" => Command::Config,
        "upgrade" | "upgrade_fleet" => Command::Upgrade {
            fleet: name == "upgrade_fleet",
            canary: parse_canary(args)?,
        },
        "inc" => Command::Inc,
        "dec" => Command::Dec,
        "set_workers" => {
            let count = args.first().ok_or_else(|| CommandError::NoArgs {
                command: name.to_string(),
                needs: "a worker count",
            })?;
            match count.trim().parse::<usize>() {
                Ok(n @ 1..=100) => Command::SetWorkers(n),
                _ => return Err(CommandError::InvalidCount(count.clone())),
            }
        }
        "signal" => {
            if args.is_empty() {
                return Err(CommandError::NoArgs {
                    command: name.to_string(),
                    needs: "one or more signals",
                });
            }
            Command::Signal(
                args.iter()
                    .map(|a| parse_signal(a))
                    .collect::<Result<_, _>>()?,
            )
        }
        "die" => Command::Die(match args.first() {
            Some(sig) => parse_signal(sig)?,
            None => Signal::SIGUSR2,
        }),
        "worker:ack" => Command::WorkerAck { pid: request.pid },
        "worker:ping" => Command::WorkerPing { pid: request.pid },
        WORKER_STATS => match (request.pid, parse_stats_args(args)) {
            (Some(pid), Some(responses)) => Command::WorkerStats {
                pid,
                responses,
                latency: parse_stats_latency(args).map(Box::new),
            },
            _ => return Err(CommandError::InvalidStats(args.to_vec())),
        },
        "reload" => Command::Reload,
        "quieter" => Command::Quieter,
        "louder" => Command::Louder,
        _ => return Err(CommandError::Unrecognized(name.to_string())),
    })
}

/// Parses `upgrade`'s arguments: none, or `--canary N --soak SECS` (in any order; the soak
/// defaults to 0 s: a canary that only has to ACK).
///
/// # Errors
/// [`CommandError::InvalidCanary`] naming the arguments.
///
/// ```
/// use std::time::Duration;
/// use einhorn_master::pure::command::{CanaryPlan, parse_canary};
///
/// let args = ["--canary", "2", "--soak", "30"].map(String::from);
/// assert_eq!(
///     parse_canary(&args).unwrap(),
///     Some(CanaryPlan { workers: 2, soak: Duration::from_secs(30) })
/// );
/// assert_eq!(parse_canary(&[]).unwrap(), None);
/// assert!(parse_canary(&["--canary".to_string()]).is_err());
/// ```
pub fn parse_canary(args: &[String]) -> Result<Option<CanaryPlan>, CommandError> {
    if args.is_empty() {
        return Ok(None);
    }
    let bad = || CommandError::InvalidCanary(args.to_vec());
    let (mut workers, mut soak) = (None, None);
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().ok_or_else(bad)?;
        match flag.as_str() {
            "--canary" => workers = Some(value.trim().parse::<usize>().map_err(|_| bad())?),
            "--soak" => {
                soak = Some(crate::pure::seconds::parse_seconds(value).map_err(|_| bad())?);
            }
            _ => return Err(bad()),
        }
    }
    match workers {
        Some(workers) if workers > 0 => Ok(Some(CanaryPlan {
            workers,
            soak: soak.unwrap_or_default(),
        })),
        _ => Err(bad()),
    }
}

/// Why a request line is not a command the master can run.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    /// The line is not a request.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The request is not a command the master can run.
    #[error("{error}")]
    Command {
        /// The request's `id`, for the error reply.
        id: Option<RequestId>,
        /// What is wrong.
        error: CommandError,
    },
}

/// Reads one request line (without its `\n`) into a command.
///
/// # Errors
/// A [`DecodeError`]; [`render::decode_error`](crate::pure::render::decode_error) makes the error
/// reply (`Could not parse command: ...`, `Unrecognized command: ...`, an argument error).
///
/// ```
/// use einhorn_master::pure::command::{Command, DecodeError, decode};
/// let (id, command) = decode(br#"{"command":"inc","id":3}"#).unwrap();
/// assert_eq!(command, Command::Inc);
/// assert_eq!(id.unwrap().as_i64(), Some(3));
/// assert!(matches!(decode(b"garbage"), Err(DecodeError::Request(_))));
/// ```
pub fn decode(line: &[u8]) -> Result<(Option<RequestId>, Command), DecodeError> {
    let request = parse_request(line)?;
    match parse_command(&request) {
        Ok(command) => Ok((request.id, command)),
        Err(error) => Err(DecodeError::Command {
            id: request.id,
            error,
        }),
    }
}

/// Parses a signal name the way Einhorn does: case-insensitive, with or without `SIG`
/// (`USR2`, `sigusr2`, `SIGUSR2`).
///
/// # Errors
/// [`CommandError::InvalidSignal`] naming the input.
///
/// ```
/// use einhorn_master::pure::command::parse_signal;
/// use nix::sys::signal::Signal;
/// assert_eq!(parse_signal("term").unwrap(), Signal::SIGTERM);
/// assert!(parse_signal("SIGNOPE").is_err());
/// ```
pub fn parse_signal(name: &str) -> Result<Signal, CommandError> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<Signal>()
        .map_err(|_| CommandError::InvalidSignal(name.to_string()))
}

/// A signal's name without the `SIG` prefix, as Einhorn prints it (`USR2`).
pub fn signal_name(signal: Signal) -> &'static str {
    let name = signal.as_str();
    name.strip_prefix("SIG").unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pure::wire::parse_request;

    fn cmd(json: &str) -> Result<Command, CommandError> {
        parse_command(&parse_request(json.as_bytes()).unwrap())
    }

    #[test]
    fn simple_commands() {
        assert_eq!(cmd(r#"{"command":"help"}"#), Ok(Command::Help));
        assert_eq!(cmd(r#"{"command":"state"}"#), Ok(Command::State));
        assert_eq!(cmd(r#"{"command":"config"}"#), Ok(Command::Config));
        assert_eq!(cmd(r#"{"command":"inc"}"#), Ok(Command::Inc));
        assert_eq!(cmd(r#"{"command":"dec"}"#), Ok(Command::Dec));
        assert_eq!(
            cmd(r#"{"command":"upgrade"}"#),
            Ok(Command::Upgrade {
                fleet: false,
                canary: None
            })
        );
        assert_eq!(
            cmd(r#"{"command":"upgrade_fleet"}"#),
            Ok(Command::Upgrade {
                fleet: true,
                canary: None
            })
        );
        assert_eq!(
            cmd(r#"{"command":"ehlo","user":"gdb"}"#),
            Ok(Command::Ehlo {
                user: Some("gdb".into())
            })
        );
        assert_eq!(
            cmd(r#"{"command":"worker:ack","pid":5}"#),
            Ok(Command::WorkerAck { pid: Some(5) })
        );
        assert_eq!(
            cmd(r#"{"command":"worker:ping"}"#),
            Ok(Command::WorkerPing { pid: None })
        );
    }

    #[test]
    fn worker_stats_is_read_from_the_line_the_worker_library_writes() {
        let mut latency = [0; graceful_listener::telemetry::LATENCY_BUCKETS];
        latency[3] = 24;
        let line = graceful_listener::einhorn::stats_line(77, [1, 20, 3, 4, 5], &latency);
        assert_eq!(
            cmd(line.trim_end()),
            Ok(Command::WorkerStats {
                pid: 77,
                responses: [1, 20, 3, 4, 5],
                latency: Some(Box::new(latency)),
            })
        );
        // A worker of an earlier version: its responses, no times.
        assert_eq!(
            cmd(r#"{"command":"worker:stats","pid":7,"args":["1","2","3","4","5"]}"#),
            Ok(Command::WorkerStats {
                pid: 7,
                responses: [1, 2, 3, 4, 5],
                latency: None,
            })
        );
        for bad in [
            r#"{"command":"worker:stats","args":["1","2","3","4","5"]}"#,
            r#"{"command":"worker:stats","pid":7,"args":["1","2","3","4"]}"#,
            r#"{"command":"worker:stats","pid":7,"args":["1","2","3","4","x"]}"#,
        ] {
            assert!(
                matches!(cmd(bad), Err(CommandError::InvalidStats(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn set_workers_checks_its_count() {
        assert_eq!(
            cmd(r#"{"command":"set_workers","args":["4"]}"#),
            Ok(Command::SetWorkers(4))
        );
        assert_eq!(
            cmd(r#"{"command":"set_workers","args":[100]}"#),
            Ok(Command::SetWorkers(100))
        );
        for bad in ["0", "101", "-1", "four", ""] {
            assert_eq!(
                cmd(&format!(r#"{{"command":"set_workers","args":["{bad}"]}}"#)),
                Err(CommandError::InvalidCount(bad.into()))
            );
        }
        assert!(matches!(
            cmd(r#"{"command":"set_workers"}"#),
            Err(CommandError::NoArgs { .. })
        ));
    }

    #[test]
    fn signals_parse_like_einhorn() {
        assert_eq!(
            cmd(r#"{"command":"signal","args":["USR2","sigterm","Hup"]}"#),
            Ok(Command::Signal(vec![
                Signal::SIGUSR2,
                Signal::SIGTERM,
                Signal::SIGHUP
            ]))
        );
        assert_eq!(
            cmd(r#"{"command":"signal","args":["USR3"]}"#),
            Err(CommandError::InvalidSignal("USR3".into()))
        );
        assert!(matches!(
            cmd(r#"{"command":"signal","args":[]}"#),
            Err(CommandError::NoArgs { .. })
        ));
        assert_eq!(
            cmd(r#"{"command":"die"}"#),
            Ok(Command::Die(Signal::SIGUSR2))
        );
        assert_eq!(
            cmd(r#"{"command":"die","args":["TERM"]}"#),
            Ok(Command::Die(Signal::SIGTERM))
        );
        assert_eq!(signal_name(Signal::SIGUSR2), "USR2");
    }

    #[test]
    fn unknown_commands_list_the_known_ones() {
        let err = cmd(r#"{"command":"frobnicate"}"#).unwrap_err();
        assert_eq!(err, CommandError::Unrecognized("frobnicate".into()));
        let message = crate::pure::render::command_error(&err);
        assert!(message.starts_with("Unrecognized command: \"frobnicate\""));
        assert!(message.contains("upgrade_fleet"));
        assert_eq!(cmd(r#"{"command":"reload"}"#), Ok(Command::Reload));
    }

    #[test]
    fn names_round_trip_through_the_parser() {
        let commands = [
            Command::Ehlo { user: None },
            Command::Help,
            Command::State,
            Command::Config,
            Command::Upgrade {
                fleet: false,
                canary: None,
            },
            Command::Upgrade {
                fleet: true,
                canary: None,
            },
            Command::Reload,
            Command::Quieter,
            Command::Louder,
            Command::Inc,
            Command::Dec,
            Command::SetWorkers(2),
            Command::Signal(vec![Signal::SIGUSR2]),
            Command::Die(Signal::SIGUSR2),
            Command::WorkerAck { pid: Some(1) },
            Command::WorkerPing { pid: Some(1) },
            Command::WorkerStats {
                pid: 1,
                responses: [0; 5],
                latency: None,
            },
        ];
        for command in commands {
            let args = match command.name() {
                "set_workers" => r#"["2"]"#,
                WORKER_STATS => r#"["0","0","0","0","0"]"#,
                "upgrade" | "upgrade_fleet" => r#"["--canary","1","--soak","5"]"#,
                _ => r#"["USR2"]"#,
            };
            let line = format!(
                r#"{{"command":"{}","args":{args},"pid":1}}"#,
                command.name()
            );
            let parsed = cmd(&line).unwrap();
            assert_eq!(parsed.name(), command.name());
            assert_eq!(
                parsed.is_worker_message(),
                command.name().starts_with("worker:")
            );
        }
    }
}
