//! Command-line parsing: Einhorn's common flags for the master, and the `ctl` client.
//!
//! `einhorn-master ctl ...` runs the control client; anything else runs a master. To run a
//! worker program that is itself named `ctl`, put `--` first: `einhorn-master -- ctl`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

#[cfg(feature = "cli")]
use clap::{ArgAction, CommandFactory, Parser};

use crate::bind::BindSpec;
use crate::pure::machine::AckMode;
use crate::runtime_dir::{RuntimeDir, RuntimeEnv, runtime_dir};
use crate::socket::SocketError;

/// `einhorn-master`: an Einhorn-compatible socket master.
///
/// Binds the `-b` sockets once, runs N copies of COMMAND with them inherited (Einhorn's
/// environment: `EINHORN_FD_COUNT`, `EINHORN_FD_<i>`, `EINHORN_SOCK_PATH`, ...), and upgrades
/// them smoothly on `upgrade` or SIGHUP. `einhorn-master ctl -d SOCK COMMAND` talks to a running
/// master.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "cli", derive(Parser))]
#[cfg_attr(
    feature = "cli",
    command(name = "einhorn-master", version, max_term_width = 100)
)]
pub struct MasterArgs {
    /// Bind HOST:PORT and pass the socket to workers (repeatable; options `,r` SO_REUSEADDR,
    /// `,n` O_NONBLOCK; IPv6 as `[::1]:PORT`; port 0 picks a free port).
    #[cfg_attr(feature = "cli", arg(short = 'b', long = "bind", value_name = "ADDR"))]
    pub bind: Vec<BindSpec>,

    /// Number of workers.
    #[cfg_attr(
        feature = "cli",
        arg(short = 'n', long = "number", value_name = "N", default_value_t = 1, value_parser = parse_workers)
    )]
    pub number: usize,

    /// ACK mode: `manual` (workers send worker:ack) or SECONDS (alive that long = up).
    #[cfg_attr(feature = "cli", arg(
        short = 'm',
        long = "ack-mode",
        value_name = "MODE",
        default_value = "1",
        value_parser = parse_ack_mode
    ))]
    pub ack_mode: AckMode,

    /// Path of the command socket [default: einhorn[-NAME].sock in $XDG_RUNTIME_DIR, or in
    /// $TMPDIR/einhorn-UID/, made private to the user].
    #[cfg_attr(
        feature = "cli",
        arg(short = 'd', long = "socket-path", value_name = "PATH")
    )]
    pub socket_path: Option<PathBuf>,

    /// Lock file that keeps a second master off the same socket [default: SOCKET.lock].
    #[cfg_attr(
        feature = "cli",
        arg(short = 'f', long = "lockfile", value_name = "PATH")
    )]
    pub lockfile: Option<PathBuf>,

    /// Name for the master in `ps` and in the default socket path.
    #[cfg_attr(
        feature = "cli",
        arg(short = 'c', long = "command-name", value_name = "NAME")
    )]
    pub command_name: Option<String>,

    /// Minimum seconds between two spawns (a smooth upgrade is otherwise paced by ACKs).
    #[cfg_attr(feature = "cli", arg(
        short = 's',
        long = "seconds",
        value_name = "SECONDS",
        default_value = "0",
        value_parser = parse_seconds
    ))]
    pub seconds: Duration,

    /// SIGKILL a worker still alive SECONDS after the master signaled it to stop.
    #[cfg_attr(feature = "cli", arg(short = 't', long = "signal-timeout", value_name = "SECONDS", value_parser = parse_seconds))]
    pub signal_timeout: Option<Duration>,

    /// Workers get SIGUSR2 if the master dies (PR_SET_PDEATHSIG).
    #[cfg_attr(feature = "cli", arg(short = 'k', long = "kill-children-on-exit"))]
    pub kill_children_on_exit: bool,

    /// When workers start with the stop signals (USR2, TERM, INT, QUIT) blocked, so that one
    /// sent during a worker's start waits for its handlers instead of killing it: `auto`,
    /// for programs built with graceful-listener (which unblock them once their handlers are
    /// installed; found by a marker in the file); `always`; `never` (as Einhorn).
    #[cfg_attr(
        feature = "cli",
        arg(
            long = "block-signals",
            value_name = "WHEN",
            value_enum,
            default_value = "auto"
        )
    )]
    pub block_signals: crate::held_signals::BlockSignals,

    /// Listen backlog of the -b sockets.
    #[cfg_attr(
        feature = "cli",
        arg(short = 'l', long = "backlog", value_name = "N", default_value_t = 100)
    )]
    pub backlog: i32,

    /// Write the master's pid to this file (refused if it names a live process).
    #[cfg_attr(
        feature = "cli",
        arg(short = 'e', long = "pidfile", value_name = "PATH")
    )]
    pub pidfile: Option<PathBuf>,

    /// Log less (repeatable).
    #[cfg_attr(feature = "cli", arg(short = 'q', long = "quiet", action = ArgAction::Count))]
    pub quiet: u8,

    /// Log more (repeatable).
    #[cfg_attr(feature = "cli", arg(short = 'v', long = "verbose", action = ArgAction::Count))]
    pub verbose: u8,

    /// Fail an upgrade when no new worker ACKs for this many seconds; the old workers keep
    /// serving.
    #[cfg_attr(feature = "cli", arg(
        long = "upgrade-timeout",
        value_name = "SECONDS",
        default_value = "60",
        value_parser = parse_seconds
    ))]
    pub upgrade_timeout: Duration,

    /// A worker that dies within SECONDS of its ACK counts as a failed start, as one that
    /// dies before it: respawns back off (1 s, 1.5 s, 2.25 s ... up to 30 s) until a worker
    /// stays up that long.
    #[cfg_attr(feature = "cli", arg(
        long = "min-uptime",
        value_name = "SECONDS",
        default_value = "10",
        value_parser = parse_seconds
    ))]
    pub min_uptime: Duration,

    /// During an upgrade, a new worker replaces an old one only once it has stayed up this
    /// long after its ACK; one that exits sooner (within --min-uptime) rolls the upgrade
    /// back while the old workers still serve (0: at its ACK, as Einhorn).
    #[cfg_attr(feature = "cli", arg(
        long = "prove",
        value_name = "SECONDS",
        default_value = "1",
        value_parser = parse_seconds
    ))]
    pub prove: Duration,

    /// Serve at most N command-socket connections at once; beyond that, new connections may
    /// only deliver a worker:ack or worker:ping, and are otherwise refused with the reason.
    #[cfg_attr(feature = "cli", arg(long = "max-connections", value_name = "N", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..)))]
    pub max_connections: u32,

    /// Close a command-socket connection that owes no reply and sends no request for this
    /// many seconds (0: never).
    #[cfg_attr(feature = "cli", arg(
        long = "idle-timeout",
        value_name = "SECONDS",
        default_value = "60",
        value_parser = parse_seconds
    ))]
    pub idle_timeout: Duration,

    /// Give workers a pipe as stderr: the master forwards it to its own stderr and keeps each
    /// worker's last N lines, logged when a worker dies or never ACKs (0: workers write to the
    /// master's stderr directly).
    #[cfg_attr(
        feature = "cli",
        arg(long = "stderr-tail", value_name = "N", default_value_t = 0)
    )]
    pub stderr_tail: usize,

    /// Canary upgrades: start N new workers first, beside every old one, and roll back if
    /// one exits or their 5xx share exceeds the old workers' during --soak (the same as
    /// `ctl upgrade --canary N --soak SECS`, for every upgrade and SIGHUP).
    #[cfg_attr(feature = "cli", arg(long = "canary", value_name = "N", value_parser = clap::value_parser!(u32).range(1..)))]
    pub canary: Option<u32>,

    /// Responses a canary must have answered by the soak's end for a verdict: fewer roll the
    /// upgrade back (clients that keep their connections may never reach it); 0 lets a
    /// canary pass on its exits alone.
    #[cfg_attr(feature = "cli", arg(long = "canary-min-responses", value_name = "N", default_value_t = crate::pure::machine::CANARY_MIN_RESPONSES))]
    pub canary_min_responses: u64,

    /// How long a canary serves beside the old workers once it has ACKed (with --canary).
    #[cfg_attr(feature = "cli", arg(long = "soak", value_name = "SECONDS", default_value = "10", value_parser = parse_seconds))]
    pub soak: Duration,

    /// Serve the master's metrics (upgrades, workers by generation and state, respawns, each
    /// version's responses) in Prometheus' text format at `GET http://HOST:PORT/metrics`.
    #[cfg_attr(feature = "cli", arg(long = "metrics", value_name = "HOST:PORT"))]
    pub metrics: Option<std::net::SocketAddr>,

    /// Leave running what a worker started (its process group) when it exits, as Einhorn
    /// does. By default the master kills a dead worker's process group: a child it forked
    /// would otherwise serve the port outside the master's reach, one more at each respawn.
    #[cfg_attr(feature = "cli", arg(long = "keep-orphans"))]
    pub keep_orphans: bool,

    /// Give workers a load table through which one holding clearly more connections than
    /// its siblings lets them accept the next ones (EINHORN_LOAD_FD; see
    /// graceful_listener::balance). Without it, connections stay where the kernel dealt them.
    #[cfg_attr(feature = "cli", arg(long = "balance"))]
    pub balance: bool,

    /// Rotate the TLS session-ticket key that every worker shares (EINHORN_KEYS_FD; see
    /// graceful_listener::keyring) every SECONDS (at least 1); the previous key still
    /// decrypts, so a ticket lives from one to two periods.
    #[cfg_attr(feature = "cli", arg(
        long = "key-rotation",
        value_name = "SECONDS",
        default_value = "21600",
        value_parser = parse_key_rotation
    ))]
    pub key_rotation: Duration,

    /// Give each worker an fd already connected to the command socket, as
    /// `EINHORN_SOCK_FD`, to ACK through without knowing the socket's path.
    #[cfg_attr(feature = "cli", arg(short = 'g', long = "command-socket-as-fd"))]
    pub command_socket_as_fd: bool,

    /// Remove VAR from the environment of the master's next code (after `reload` or
    /// `upgrade`), and so of the workers it starts (repeatable).
    #[cfg_attr(feature = "cli", arg(long = "drop-env-var", value_name = "VAR"))]
    pub drop_env_var: Vec<String>,

    /// Run the master at nice level MASTER and its workers at WORKER (default: as the
    /// master); lowering a level needs privileges.
    #[cfg_attr(feature = "cli", arg(long = "nice", value_name = "MASTER[:WORKER]", value_parser = parse_nice))]
    pub nice: Option<Nice>,

    /// Runtime threads for each worker, given as TOKIO_WORKER_THREADS (which einhorn-actix
    /// also reads for actix-web's workers): `auto`, each worker's share of the cores
    /// (ceil(cores / -n)); `off`, none set (each worker sizes itself to the whole machine);
    /// or a number. A TOKIO_WORKER_THREADS in the master's environment wins, and so does an
    /// application that sizes its runtime in code.
    #[cfg_attr(
        feature = "cli",
        arg(
            long = "worker-threads",
            value_name = "auto|off|N",
            default_value = "auto"
        )
    )]
    pub worker_threads: crate::spawn::WorkerThreads,

    /// During a smooth upgrade, start up to N new workers before the first ACKs (the upgrade
    /// is still paced by ACKs: one more starts for each ACK).
    #[cfg_attr(feature = "cli", arg(long = "max-unacked", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..)))]
    pub max_unacked: u32,

    /// During an upgrade, run at most N workers beyond -n, old ones draining included.
    #[cfg_attr(
        feature = "cli",
        arg(long = "max-upgrade-additional", value_name = "N")
    )]
    pub max_upgrade_additional: Option<usize>,

    /// Exec CMDLINE (split at whitespace) instead of this program when the master reloads
    /// its own code (`reload`, `upgrade`, SIGHUP), e.g. a path through a `current` link.
    #[cfg_attr(feature = "cli", arg(long = "reexec-as", value_name = "CMDLINE"))]
    pub reexec_as: Option<String>,

    /// (Internal) The state handed over by the master that exec'd this one.
    #[cfg_attr(
        feature = "cli",
        arg(long = "with-state-fd", value_name = "FD", hide = true)
    )]
    pub with_state_fd: Option<i32>,

    /// (Internal) Only check that this program could take over from the running master
    /// (with --with-state-fd), then exit.
    #[cfg_attr(feature = "cli", arg(long = "upgrade-check", hide = true))]
    pub upgrade_check: bool,

    /// How this master re-execs itself; `None`: it cannot (`reload` is refused and
    /// `upgrade` upgrades the workers only).
    #[cfg_attr(feature = "cli", arg(skip))]
    pub self_exec: Option<crate::reexec::SelfExec>,

    /// Once bound, write one line `INDEX ADDR` per -b socket to this file (atomically).
    #[cfg_attr(feature = "cli", arg(long = "addr-file", value_name = "PATH"))]
    pub addr_file: Option<PathBuf>,

    /// The worker command and its arguments (resolved through PATH at every spawn, so an
    /// upgrade runs whatever is at that path then).
    #[cfg_attr(feature = "cli", arg(
        value_name = "COMMAND",
        required = true,
        num_args = 1..,
        trailing_var_arg = true
    ))]
    pub command: Vec<OsString>,
}

impl MasterArgs {
    /// The arguments of a master running `command` with every other setting at its default,
    /// as `einhorn-master -- COMMAND` would parse (a test holds the two equal): what a
    /// self-hosted master starts from, without the command-line parser.
    pub fn for_command(command: Vec<OsString>) -> MasterArgs {
        MasterArgs {
            bind: Vec::new(),
            number: 1,
            ack_mode: AckMode::Timer(Duration::from_secs(1)),
            socket_path: None,
            lockfile: None,
            command_name: None,
            seconds: Duration::ZERO,
            signal_timeout: None,
            kill_children_on_exit: false,
            block_signals: crate::held_signals::BlockSignals::default(),
            backlog: 100,
            pidfile: None,
            quiet: 0,
            verbose: 0,
            upgrade_timeout: Duration::from_secs(60),
            min_uptime: crate::pure::machine::DEFAULT_MIN_UPTIME,
            prove: crate::pure::machine::DEFAULT_PROVE,
            max_connections: 256,
            idle_timeout: Duration::from_secs(60),
            stderr_tail: 0,
            canary: None,
            canary_min_responses: crate::pure::machine::CANARY_MIN_RESPONSES,
            soak: Duration::from_secs(10),
            metrics: None,
            keep_orphans: false,
            balance: false,
            key_rotation: crate::keys::DEFAULT_KEY_ROTATION,
            command_socket_as_fd: false,
            drop_env_var: Vec::new(),
            nice: None,
            worker_threads: crate::spawn::WorkerThreads::Auto,
            max_unacked: 1,
            max_upgrade_additional: None,
            reexec_as: None,
            with_state_fd: None,
            upgrade_check: false,
            self_exec: None,
            addr_file: None,
            command,
        }
    }

    /// The command socket path: `-d`, or [`default_socket_path`] for `-c NAME`. Computed
    /// only: the master opens its socket at [`prepare_socket_path`](Self::prepare_socket_path).
    pub fn socket_path(&self) -> PathBuf {
        self.socket_path
            .clone()
            .unwrap_or_else(|| default_socket_path(self.command_name.as_deref()))
    }

    /// The command socket path, as [`socket_path`](Self::socket_path), for the master to bind:
    /// with no `-d`, the per-user runtime directory it lies in is created if missing, and
    /// refused if it is not private to this user (see [`crate::runtime_dir`]).
    ///
    /// # Errors
    /// [`SocketError::RuntimeDirUnsafe`] or [`SocketError::RuntimeDir`] naming the directory.
    pub fn prepare_socket_path(&self) -> Result<PathBuf, SocketError> {
        match &self.socket_path {
            Some(path) => Ok(path.clone()),
            None => Ok(runtime_dir()?.join(socket_file_name(self.command_name.as_deref()))),
        }
    }

    /// The lock file path: `-f`, or the socket path with `.lock` appended.
    pub fn lockfile(&self) -> PathBuf {
        self.lockfile.clone().unwrap_or_else(|| {
            let mut path = self.socket_path().into_os_string();
            path.push(".lock");
            PathBuf::from(path)
        })
    }

    /// The command-socket connection limits: `--max-connections`, `--idle-timeout`, and the
    /// default reserve.
    pub fn connection_limits(&self) -> crate::conn::ConnLimits {
        crate::conn::ConnLimits {
            max_connections: self.max_connections as usize,
            idle_timeout: self.idle_timeout,
            ..Default::default()
        }
    }

    /// The canary plan of every upgrade (`--canary`, `--soak`).
    pub fn canary(&self) -> Option<crate::pure::command::CanaryPlan> {
        self.canary.map(|workers| crate::pure::command::CanaryPlan {
            workers: workers as usize,
            soak: self.soak,
        })
    }

    /// The log level from `-q` and `-v` (info by default).
    pub fn log_level(&self) -> tracing::level_filters::LevelFilter {
        crate::pure::verbosity::level(self.verbosity())
    }

    /// `-v` minus `-q`: steps from `info` (see [`crate::pure::verbosity::level`]).
    pub fn verbosity(&self) -> i8 {
        let offset = i16::from(self.verbose) - i16::from(self.quiet);
        offset.clamp(i16::from(i8::MIN), i16::from(i8::MAX)) as i8
    }
}

/// The default command socket path, for the master (`-c NAME`) and for `ctl` alike:
/// `einhorn-NAME.sock`, or `einhorn.sock`, as Einhorn names it, in this user's runtime
/// directory ([`RuntimeDir::choose`]: `$XDG_RUNTIME_DIR`, or `$TMPDIR/einhorn-UID`) rather
/// than in Einhorn's shared `$TMPDIR`. Computed only: nothing is created.
pub fn default_socket_path(command_name: Option<&str>) -> PathBuf {
    RuntimeDir::choose(&RuntimeEnv::current())
        .path()
        .join(socket_file_name(command_name))
}

/// The default socket's file name, as Einhorn's.
fn socket_file_name(command_name: Option<&str>) -> String {
    match command_name {
        Some(name) => format!("einhorn-{name}.sock"),
        None => "einhorn.sock".to_string(),
    }
}

/// `einhorn-master ctl`: send one command to a running master and print the replies.
///
/// Exits 0 when the last reply is not an error (for `upgrade`: when it is `Upgrade done`), 1 on
/// an error reply, 2 when the master cannot be reached or does not answer in time.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "cli", derive(Parser))]
#[cfg_attr(
    feature = "cli",
    command(name = "einhorn-master ctl", version, max_term_width = 100)
)]
#[cfg(feature = "cli")]
pub struct CtlArgs {
    /// Path of the master's command socket [default: as the master picks it].
    #[cfg_attr(
        feature = "cli",
        arg(short = 'd', long = "socket-path", value_name = "PATH")
    )]
    pub socket_path: Option<PathBuf>,

    /// The master's `-c` name, to find its default socket path.
    #[cfg_attr(
        feature = "cli",
        arg(short = 'c', long = "command-name", value_name = "NAME")
    )]
    pub command_name: Option<String>,

    /// Give up after this many seconds.
    #[cfg_attr(feature = "cli", arg(long, value_name = "SECONDS", default_value = "120", value_parser = parse_seconds))]
    pub timeout: Duration,

    /// Print the reply lines as they came over the wire (escaped YAML) instead of messages.
    #[cfg_attr(feature = "cli", arg(long))]
    pub raw: bool,

    /// The command (`ehlo`, `state`, `upgrade`, `set_workers`, ...).
    #[cfg_attr(feature = "cli", arg(value_name = "COMMAND"))]
    pub command: String,

    /// Its arguments.
    #[cfg_attr(feature = "cli", arg(value_name = "ARGS", allow_hyphen_values = true))]
    pub args: Vec<String>,
}

#[cfg(feature = "cli")]
impl CtlArgs {
    /// The socket path to connect to.
    pub fn socket_path(&self) -> PathBuf {
        self.socket_path
            .clone()
            .unwrap_or_else(|| default_socket_path(self.command_name.as_deref()))
    }
}

/// What the command line asks for.
#[derive(Clone, Debug)]
#[cfg(feature = "cli")]
pub enum Invocation {
    /// Run a master.
    Master(Box<MasterArgs>),
    /// Run the control client.
    Ctl(CtlArgs),
}

/// Parses a whole command line (program name first).
///
/// # Errors
/// clap's error, with usage; [`clap::Error::exit`] prints it (and `--help`/`--version`).
///
/// ```
/// use einhorn_master::cli::{Invocation, parse_args};
///
/// let Invocation::Master(args) =
///     parse_args(["einhorn-master", "-b", "127.0.0.1:0", "-n", "4", "-m", "manual", "--", "srv", "-x"])
///         .unwrap()
/// else { panic!() };
/// assert_eq!(args.number, 4);
/// assert_eq!(args.command, ["srv", "-x"]);
///
/// assert!(matches!(
///     parse_args(["einhorn-master", "ctl", "-d", "/tmp/s", "upgrade"]).unwrap(),
///     Invocation::Ctl(_)
/// ));
/// assert!(parse_args(["einhorn-master", "-X", "sleep", "1"]).is_err());
/// ```
#[cfg(feature = "cli")]
pub fn parse_args<I, T>(args: I) -> Result<Invocation, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    if args.get(1).is_some_and(|a| a == "ctl") {
        let mut rest = args;
        rest.remove(0);
        return CtlArgs::try_parse_from(rest).map(Invocation::Ctl);
    }
    let master = MasterArgs::try_parse_from(args)?;
    // A canary is at most the whole generation: more would never all start.
    if let Some(canary) = master.canary.filter(|&c| c as usize > master.number) {
        return Err(MasterArgs::command().error(
            clap::error::ErrorKind::ArgumentConflict,
            format!(
                "--canary {canary} is more workers than -n {}: a canary is at most the whole \
                 generation; use --canary {} or raise -n",
                master.number, master.number
            ),
        ));
    }
    Ok(Invocation::Master(Box::new(master)))
}

/// `--nice MASTER[:WORKER]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nice {
    /// The master's nice level.
    pub master: i32,
    /// The workers' (`None`: as the master's).
    pub worker: Option<i32>,
}

/// Why a `--nice` value is not one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid nice levels {0:?}: expected MASTER or MASTER:WORKER, each from -20 to 19")]
pub struct NiceError(pub String);

/// Parses `--nice`: `MASTER` or `MASTER:WORKER`, each in `-20..=19`.
///
/// # Errors
/// [`NiceError`] naming the input.
///
/// ```
/// use einhorn_master::cli::{Nice, parse_nice};
/// assert_eq!(parse_nice("5:10").unwrap(), Nice { master: 5, worker: Some(10) });
/// assert_eq!(parse_nice("5").unwrap(), Nice { master: 5, worker: None });
/// assert!(parse_nice("99").is_err());
/// ```
pub fn parse_nice(text: &str) -> Result<Nice, NiceError> {
    let level = |s: &str| {
        s.trim()
            .parse::<i32>()
            .ok()
            .filter(|n| (-20..=19).contains(n))
            .ok_or_else(|| NiceError(text.to_string()))
    };
    match text.split_once(':') {
        Some((master, worker)) => Ok(Nice {
            master: level(master)?,
            worker: Some(level(worker)?),
        }),
        None => Ok(Nice {
            master: level(text)?,
            worker: None,
        }),
    }
}

pub use crate::pure::seconds::{SecondsError, parse_seconds};

/// Parses `--key-rotation`: a number of seconds of at least 1.
///
/// # Errors
/// [`SecondsError`] naming the input.
///
/// ```
/// use std::time::Duration;
/// use einhorn_master::cli::parse_key_rotation;
/// assert_eq!(parse_key_rotation("3600").unwrap(), Duration::from_secs(3600));
/// assert!(parse_key_rotation("0").is_err());
/// assert!(parse_key_rotation("0.5").is_err());
/// ```
pub fn parse_key_rotation(text: &str) -> Result<Duration, SecondsError> {
    parse_seconds(text)
        .ok()
        .filter(|d| *d >= Duration::from_secs(1))
        .ok_or_else(|| SecondsError(text.to_string()))
}

/// Why a number of workers is not one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid number of workers {0:?}: expected 1 or more (a master with no worker would hold the port with nothing accepting)"
)]
pub struct WorkersError(pub String);

/// Parses `-n`: a number of workers, at least 1.
///
/// # Errors
/// [`WorkersError`] naming the input.
///
/// ```
/// use einhorn_master::cli::parse_workers;
/// assert_eq!(parse_workers("4").unwrap(), 4);
/// assert!(parse_workers("0").is_err());
/// ```
pub fn parse_workers(text: &str) -> Result<usize, WorkersError> {
    text.trim()
        .parse::<usize>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| WorkersError(text.to_string()))
}

/// Why an ACK mode is not one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid ack mode {0:?}: expected `manual` or a number of seconds")]
pub struct AckModeError(pub String);

/// Parses `-m`: `manual`, or seconds for a timer ACK.
///
/// # Errors
/// [`AckModeError`] naming the input.
///
/// ```
/// use std::time::Duration;
/// use einhorn_master::cli::parse_ack_mode;
/// use einhorn_master::pure::machine::AckMode;
/// assert_eq!(parse_ack_mode("manual").unwrap(), AckMode::Manual);
/// assert_eq!(parse_ack_mode("2").unwrap(), AckMode::Timer(Duration::from_secs(2)));
/// ```
pub fn parse_ack_mode(text: &str) -> Result<AckMode, AckModeError> {
    if text.trim() == "manual" {
        return Ok(AckMode::Manual);
    }
    parse_seconds(text)
        .map(AckMode::Timer)
        .map_err(|_| AckModeError(text.to_string()))
}

#[cfg(all(test, feature = "cli"))]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_without_the_parser_are_the_parsers() {
        let parsed = MasterArgs::try_parse_from(["einhorn-master", "--", "srv"]).unwrap();
        let built = MasterArgs::for_command(vec!["srv".into()]);
        assert_eq!(format!("{built:?}"), format!("{parsed:?}"));
    }

    fn master(args: &[&str]) -> Result<MasterArgs, clap::Error> {
        let mut all = vec!["einhorn-master"];
        all.extend_from_slice(args);
        match parse_args(all)? {
            Invocation::Master(m) => Ok(*m),
            Invocation::Ctl(c) => panic!("parsed as ctl: {c:?}"),
        }
    }

    #[test]
    fn a_canary_larger_than_the_generation_is_refused_at_start() {
        let error = master(&["-n", "1", "--canary", "5", "true"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert!(
            error.to_string().contains(
                "--canary 5 is more workers than -n 1: a canary is at most the whole generation; \
                 use --canary 1 or raise -n"
            ),
            "{error}"
        );
        assert_eq!(
            master(&["-n", "2", "--canary", "2", "true"])
                .unwrap()
                .canary,
            Some(2)
        );
    }

    #[test]
    fn defaults_match_einhorn() {
        let args = master(&["sleep", "5"]).unwrap();
        assert_eq!(args.number, 1);
        assert_eq!(args.ack_mode, AckMode::Timer(Duration::from_secs(1)));
        assert_eq!(args.seconds, Duration::ZERO);
        assert_eq!(args.signal_timeout, None);
        assert_eq!(args.backlog, 100);
        assert_eq!(args.upgrade_timeout, Duration::from_secs(60));
        assert_eq!(args.max_connections, 256);
        assert_eq!(args.idle_timeout, Duration::from_secs(60));
        assert!(!args.kill_children_on_exit);
        assert!(args.bind.is_empty());
        assert_eq!(args.command, ["sleep", "5"]);
        assert_eq!(args.socket_path(), runtime_dir_now().join("einhorn.sock"));
        assert_eq!(
            args.log_level(),
            tracing_subscriber::filter::LevelFilter::INFO
        );
    }

    #[test]
    fn every_flag() {
        let args = master(&[
            "-b",
            "127.0.0.1:0,r",
            "--bind",
            "[::1]:0",
            "-n",
            "4",
            "-m",
            "manual",
            "-d",
            "/tmp/x.sock",
            "-c",
            "web",
            "-s",
            "0.5",
            "-t",
            "3",
            "-k",
            "-l",
            "64",
            "-e",
            "/tmp/pid",
            "-q",
            "-v",
            "-v",
            "--upgrade-timeout",
            "10",
            "--addr-file",
            "/tmp/a",
            "--max-connections",
            "8",
            "--idle-timeout",
            "0.5",
            "-f",
            "/tmp/lock",
            "--",
            "srv",
            "--port",
            "1",
        ])
        .unwrap();
        assert_eq!(args.bind.len(), 2);
        assert!(args.bind[0].reuse_addr);
        assert_eq!(args.bind[1].host, "::1");
        assert_eq!(args.number, 4);
        assert_eq!(args.ack_mode, AckMode::Manual);
        assert_eq!(args.socket_path(), PathBuf::from("/tmp/x.sock"));
        assert_eq!(args.lockfile(), PathBuf::from("/tmp/lock"));
        assert_eq!(args.command_name.as_deref(), Some("web"));
        assert_eq!(args.seconds, Duration::from_millis(500));
        assert_eq!(args.signal_timeout, Some(Duration::from_secs(3)));
        assert!(args.kill_children_on_exit);
        assert_eq!(args.backlog, 64);
        assert_eq!(args.pidfile, Some(PathBuf::from("/tmp/pid")));
        assert_eq!(
            args.log_level(),
            tracing_subscriber::filter::LevelFilter::DEBUG
        );
        assert_eq!(args.upgrade_timeout, Duration::from_secs(10));
        assert_eq!(args.addr_file, Some(PathBuf::from("/tmp/a")));
        assert_eq!(args.connection_limits().max_connections, 8);
        assert_eq!(
            args.connection_limits().idle_timeout,
            Duration::from_millis(500)
        );
        assert!(master(&["--max-connections", "0", "true"]).is_err());
        assert_eq!(args.command, ["srv", "--port", "1"]);
    }

    #[test]
    fn command_without_double_dash_keeps_its_flags() {
        let args = master(&["-n", "2", "sleep", "-x", "5"]).unwrap();
        assert_eq!(args.command, ["sleep", "-x", "5"]);
    }

    /// The runtime directory this test process's master and `ctl` choose.
    fn runtime_dir_now() -> PathBuf {
        RuntimeDir::choose(&RuntimeEnv::current())
            .path()
            .to_path_buf()
    }

    #[test]
    fn default_paths_follow_the_command_name() {
        let args = master(&["-c", "api", "true"]).unwrap();
        assert_eq!(
            args.socket_path(),
            runtime_dir_now().join("einhorn-api.sock")
        );
        assert_eq!(
            args.lockfile(),
            runtime_dir_now().join("einhorn-api.sock.lock")
        );
    }

    #[test]
    fn ctl_finds_the_masters_default_socket() {
        let ctl = |args: &[&str]| {
            let mut all = vec!["einhorn-master", "ctl"];
            all.extend_from_slice(args);
            match parse_args(all).unwrap() {
                Invocation::Ctl(c) => c,
                Invocation::Master(m) => panic!("parsed as a master: {m:?}"),
            }
        };
        assert_eq!(
            ctl(&["-c", "api", "state"]).socket_path(),
            master(&["-c", "api", "true"]).unwrap().socket_path()
        );
        assert_eq!(
            ctl(&["state"]).socket_path(),
            master(&["true"]).unwrap().socket_path()
        );
    }

    #[test]
    fn a_given_socket_path_is_prepared_as_it_is() {
        // No runtime directory is made or checked for it.
        let args = master(&["-d", "/nonexistent/dir/x.sock", "true"]).unwrap();
        assert_eq!(
            args.prepare_socket_path().unwrap(),
            PathBuf::from("/nonexistent/dir/x.sock")
        );
    }

    #[test]
    fn errors_are_clear() {
        let err = master(&["-X", "sleep"]).unwrap_err().to_string();
        assert!(err.contains("-X"), "{err}");
        assert!(master(&[]).is_err(), "a command is required");
        let err = master(&["-b", "nope", "true"]).unwrap_err().to_string();
        assert!(err.contains("has no port"), "{err}");
        let err = master(&["-m", "sometimes", "true"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid ack mode"), "{err}");
        let err = master(&["-s", "soon", "true"]).unwrap_err().to_string();
        assert!(err.contains("invalid number of seconds \"soon\""), "{err}");
        assert!(master(&["-s", "-1", "true"]).is_err());
        let err = master(&["-t", "inf", "true"]).unwrap_err().to_string();
        assert!(err.contains("seconds"), "{err}");
        let err = master(&["-n", "x", "true"]).unwrap_err().to_string();
        assert!(err.contains("-n"), "{err}");
    }

    #[test]
    fn ctl_parses_its_own_flags() {
        let Invocation::Ctl(ctl) = parse_args([
            "einhorn-master",
            "ctl",
            "-d",
            "/tmp/s",
            "--timeout",
            "5",
            "set_workers",
            "3",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(ctl.socket_path(), PathBuf::from("/tmp/s"));
        assert_eq!(ctl.timeout, Duration::from_secs(5));
        assert_eq!(ctl.command, "set_workers");
        assert_eq!(ctl.args, ["3"]);
        assert!(parse_args(["einhorn-master", "ctl"]).is_err());
        // A worker named ctl runs with `--`.
        assert!(matches!(
            parse_args(["einhorn-master", "--", "ctl"]).unwrap(),
            Invocation::Master(_)
        ));
    }

    #[test]
    fn every_duration_flag_refuses_huge_infinite_nan_and_negative_values_naming_itself() {
        let flags = [
            "--ack-mode",
            "--seconds",
            "--signal-timeout",
            "--upgrade-timeout",
            "--min-uptime",
            "--prove",
            "--idle-timeout",
            "--soak",
        ];
        for flag in flags {
            for bad in ["1e19", "inf", "nan", "-1", "31622401"] {
                let arg = format!("{flag}={bad}");
                let err = master(&[&arg, "--", "srv"]).unwrap_err().to_string();
                assert!(
                    err.contains(bad) && err.contains(flag),
                    "{flag} {bad}: {err}"
                );
            }
            master(&[flag, "31622400", "--", "srv"]).unwrap();
        }
        let err = parse_args(["einhorn-master", "ctl", "--timeout", "1e19", "state"]).unwrap_err();
        assert!(err.to_string().contains("--timeout"), "{err}");
        for bad in ["1e19", "inf", "nan", "-1"] {
            let args = [
                "--canary".to_string(),
                "1".to_string(),
                "--soak".to_string(),
                bad.to_string(),
            ];
            assert!(
                crate::pure::command::parse_canary(&args).is_err(),
                "--soak {bad}"
            );
        }
    }

    #[test]
    fn zero_workers_is_an_error() {
        let err = master(&["-n", "0", "--", "srv"]).unwrap_err().to_string();
        assert!(err.contains("invalid number of workers"), "{err}");
        assert_eq!(master(&["-n", "3", "--", "srv"]).unwrap().number, 3);
    }

    #[test]
    fn seconds_and_ack_modes() {
        assert_eq!(parse_seconds("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_seconds(" 1.5 ").unwrap(), Duration::from_millis(1500));
        for bad in ["", "x", "-0.1", "NaN", "inf", "1e400", "1e19"] {
            assert_eq!(parse_seconds(bad), Err(SecondsError(bad.into())), "{bad}");
        }
        assert_eq!(parse_ack_mode("0").unwrap(), AckMode::Timer(Duration::ZERO));
        assert!(parse_ack_mode("Manual").is_err());
    }
}
