//! Self-hosted mode: the application is its own master. One call at the top of `main`:
//!
//! - in a process that is not a worker yet, [`SelfHosted::start`] becomes the master: it binds
//!   the listeners once, starts N copies of this same program (same path, same arguments) as
//!   Einhorn workers, upgrades them on SIGHUP, and exits the process with the master's status
//!   when it is done: it never returns;
//! - in a worker (its parent is the master that started it, as Einhorn's environment says), it
//!   returns `Ok(())` at once, and the program serves as under any Einhorn master, for example
//!   with `einhorn_axum::run(app, 0)`.
//!
//! Same binary, same arguments, no other tool installed, and the master is the full
//! [`einhorn-master`](crate) (its [`crate::driver`]): ACK-paced upgrades, the command
//! socket and `einhorn-master ctl`, `state`, a stable pid.
//!
//! # Signals to the master
//! | signal | effect |
//! | --- | --- |
//! | SIGHUP | the master reloads into the program now at the same path (same pid, sockets and workers kept, the new build's settings taken), then upgrades the workers smoothly: each new worker that ACKs retires an old one |
//! | SIGTERM, SIGINT | graceful stop of every worker, then exit 0 (a second one: stop now) |
//! | SIGQUIT | SIGQUIT to every worker, exit at once |
//! | SIGKILL (or any death) | workers get SIGUSR2 and drain ([`SelfHosted::kill_children_on_exit`]) |
//!
//! # A new build
//! On SIGHUP the master first runs the new build in a check mode (it reaches
//! [`SelfHosted::start`], reads the state it would be handed, and exits 0), then execs it in
//! its own place: same pid, sockets, workers and command connections. The new build's
//! settings apply from then on: a new [`workers`](SelfHosted::workers) count takes effect, a
//! [`bind`](SelfHosted::bind) it adds is opened, one it drops is closed once the workers
//! started with it are gone. A build that fails the check (exits non-zero, is missing or not
//! executable) is refused: everything keeps running as it was, and the log says why.
//!
//! New workers that exit at start, or never ACK, leave the old workers serving: the upgrade
//! fails after the upgrade timeout (no new ACK for that long), logged with each failed
//! worker's exit status and last stderr lines (workers' stderr goes through the master, which
//! keeps [`SelfHosted::stderr_tail`] lines of each). A worker that dies is respawned, with a
//! backoff while they keep dying before their ACK or soon after it.
//!
//! # systemd
//! With `NOTIFY_SOCKET` set (`Type=notify` or `Type=notify-reload`), the master sends
//! `READY=1` once every worker has ACKed, `RELOADING=1` with `MONOTONIC_USEC` when an
//! upgrade starts, `READY=1` when it ends, `STATUS=` with the worker count, version and the
//! last failure, `STOPPING=1` at the stop, and `MAINPID=` itself. See [`crate::notify`].
//!
//! # Example
//! With `einhorn-master` a dependency beside the adapter (`einhorn-master = { path =
//! "../graceful-listener/master" }`); a [`SelfHostedError`] converts into the adapters'
//! `RunError` with `?`:
//! ```no_run
//! use einhorn_master::self_hosted::SelfHosted;
//!
//! fn main() -> Result<(), graceful_listener::RunError> {
//!     // Before any runtime: the master runs its own, and never returns.
//!     SelfHosted::new().bind("127.0.0.1:8080").workers(4).start()?;
//!     // A worker: serve on the inherited socket (einhorn@0), e.g. einhorn_axum::run(app, 0).
//!     Ok(())
//! }
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use graceful_listener::env::Environment;

use crate::bind::{BindSpec, BindSpecError};
use crate::cli::MasterArgs;
use crate::driver::{self, MasterError};
use crate::exec::{ProgramError, check_program};
use crate::pure::machine::AckMode;
use crate::reexec::{STATE_FD_ENV, SelfExec, StateVia, UPGRADE_CHECK_ENV};
use crate::socket::SocketError;

/// Stderr lines kept per worker by default.
pub const DEFAULT_STDERR_TAIL: usize = 20;

/// The self-hosted master's settings; [`SelfHosted::start`] runs it (or returns, in a worker).
/// See the [module documentation](self).
#[derive(Clone, Debug)]
#[must_use = "nothing happens until `start` is called"]
pub struct SelfHosted {
    binds: Vec<String>,
    workers: usize,
    socket_path: Option<PathBuf>,
    upgrade_timeout: Option<Duration>,
    signal_timeout: Option<Duration>,
    kill_children_on_exit: bool,
    canary: Option<crate::pure::command::CanaryPlan>,
    canary_min_responses: u64,
    metrics: Option<std::net::SocketAddr>,
    stderr_tail: usize,
    program: Option<PathBuf>,
    key_rotation: Duration,
}

impl Default for SelfHosted {
    fn default() -> Self {
        SelfHosted::new()
    }
}

/// Why the self-hosted master could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SelfHostedError {
    /// A bind spec is not `HOST:PORT[,r][,n]` (or `:PORT`, `[V6]:PORT`).
    #[error(transparent)]
    Bind(#[from] BindSpecError),
    /// No bind spec was given: workers would have nothing to serve.
    #[error("self-hosted master: no listener to bind (call .bind(\"HOST:PORT\"))")]
    NoBind,
    /// Zero workers.
    #[error("self-hosted master: workers(0): at least one worker is needed")]
    NoWorkers,
    /// The program cannot be found again to start workers.
    #[error(
        "self-hosted master: cannot find this program again to start workers (argv[0] {argv0:?}): {source}; set it with .program(PATH)"
    )]
    Program {
        /// The name the program was started as.
        argv0: OsString,
        /// What is wrong with it.
        source: ProgramError,
    },
    /// A path could not be made absolute.
    #[error("self-hosted master: invalid path {path}: {source}")]
    Path {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Called inside a tokio runtime: the master runs its own, on this thread.
    #[error(
        "self-hosted master: start() was called inside a tokio runtime; call it first in main, before any runtime is built"
    )]
    InRuntime,
    /// Called from another thread than the main one.
    #[error(
        "self-hosted master: start() was called from a thread other than the main thread; call it first in main"
    )]
    NotMainThread,
    /// The state a previous master handed over names no fd.
    #[error("self-hosted master: {STATE_FD_ENV}={0:?} is not an fd number")]
    StateFd(String),
    /// Another master holds the command socket: most often a second instance of the same
    /// program, whose default socket (`einhorn-NAME.sock` in the user's runtime directory,
    /// see [`crate::runtime_dir`]) is the first one's.
    #[error(
        "self-hosted master: {0}; to run a second instance beside it, give it its own command socket with .command_socket(PATH)"
    )]
    SocketTaken(#[source] SocketError),
    /// The master could not run (bind, command socket, first worker, ...).
    #[error(transparent)]
    Master(#[from] MasterError),
}

/// Lets a `main` that returns the adapters' `RunError` (the core's
/// [`graceful_listener::RunError`]) call [`SelfHosted::start`] with `?`.
impl From<SelfHostedError> for graceful_listener::RunError {
    fn from(error: SelfHostedError) -> Self {
        graceful_listener::RunError::Master(Box::new(error))
    }
}

impl SelfHosted {
    /// No listener yet, 1 worker, the command socket at `einhorn-NAME.sock` in the user's
    /// runtime directory ([`crate::runtime_dir`]; NAME: the program's file name, so
    /// `einhorn-master ctl -c NAME state` finds it), the master's
    /// upgrade timeout (60 s), [`DEFAULT_STDERR_TAIL`] stderr lines kept per worker.
    ///
    /// ```
    /// let master = einhorn_master::self_hosted::SelfHosted::new();
    /// # let _ = master;
    /// ```
    pub fn new() -> SelfHosted {
        SelfHosted {
            binds: Vec::new(),
            workers: 1,
            socket_path: None,
            upgrade_timeout: None,
            signal_timeout: None,
            kill_children_on_exit: true,
            canary: None,
            canary_min_responses: crate::pure::machine::CANARY_MIN_RESPONSES,
            metrics: None,
            stderr_tail: DEFAULT_STDERR_TAIL,
            program: None,
            key_rotation: crate::keys::DEFAULT_KEY_ROTATION,
        }
    }

    /// Adds a listener: `HOST:PORT` with Einhorn's options (`,r` SO_REUSEADDR, always set
    /// here so that a restart binds at once; `,n` O_NONBLOCK), `[::1]:PORT` for IPv6,
    /// `:PORT` for every IPv4 interface (as a worker's own `.bind(":PORT")` means), port 0
    /// for any free port (the master logs `listening on ADDR (einhorn@INDEX, fd FD)`).
    /// Workers take them as `einhorn@0`,
    /// `einhorn@1`, ... in this order. Checked by [`start`](Self::start).
    ///
    /// ```
    /// let master = einhorn_master::self_hosted::SelfHosted::new().bind("127.0.0.1:8080,r");
    /// # let _ = master;
    /// ```
    pub fn bind(mut self, spec: impl Into<String>) -> SelfHosted {
        self.binds.push(spec.into());
        self
    }

    /// The number of workers.
    ///
    /// ```
    /// let master = einhorn_master::self_hosted::SelfHosted::new().workers(4);
    /// # let _ = master;
    /// ```
    pub fn workers(mut self, workers: usize) -> SelfHosted {
        self.workers = workers;
        self
    }

    /// The command socket's path (`einhorn-master ctl -d PATH ...`).
    ///
    /// ```
    /// let master = einhorn_master::self_hosted::SelfHosted::new().command_socket("/run/app/app.sock");
    /// # let _ = master;
    /// ```
    pub fn command_socket(mut self, path: impl Into<PathBuf>) -> SelfHosted {
        self.socket_path = Some(path.into());
        self
    }

    /// An upgrade during which no new worker ACKs for this long fails (the old workers keep
    /// serving). At most [`MAX_DURATION`](crate::pure::seconds::MAX_DURATION) (366 days): a longer
    /// one is taken as that.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let master = einhorn_master::self_hosted::SelfHosted::new().upgrade_timeout(Duration::from_secs(30));
    /// # let _ = master;
    /// ```
    pub fn upgrade_timeout(mut self, timeout: Duration) -> SelfHosted {
        self.upgrade_timeout = Some(crate::pure::seconds::bounded(timeout));
        self
    }

    /// SIGKILL a worker still alive this long after the master told it to stop (default:
    /// never; the worker's own drain timeout ends it). At most
    /// [`MAX_DURATION`](crate::pure::seconds::MAX_DURATION).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let master = einhorn_master::self_hosted::SelfHosted::new().signal_timeout(Duration::from_secs(60));
    /// # let _ = master;
    /// ```
    pub fn signal_timeout(mut self, timeout: Duration) -> SelfHosted {
        self.signal_timeout = Some(crate::pure::seconds::bounded(timeout));
        self
    }

    /// Whether workers get SIGUSR2 (a graceful stop) when the master dies, even by SIGKILL
    /// (default `true`; einhorn-master's `-k`). Then a supervisor that restarts the service
    /// finds the port free within the workers' drain, instead of orphans still holding it.
    ///
    /// ```
    /// let master = einhorn_master::self_hosted::SelfHosted::new().kill_children_on_exit(false);
    /// # let _ = master;
    /// ```
    pub fn kill_children_on_exit(mut self, kill: bool) -> SelfHosted {
        self.kill_children_on_exit = kill;
        self
    }

    /// Canary upgrades on SIGHUP: `workers` new workers start first and serve beside every
    /// old one for `soak` once they have ACKed; if one exits, or their share of 5xx
    /// responses exceeds the old workers' (by 5 points, over at least 20 responses), they are
    /// stopped and the old workers serve on (`rolled back: ...` in the log and in systemd's
    /// `STATUS=`); else the upgrade goes on. Workers on graceful-listener's HTTP adapters
    /// report their responses to the master by themselves. A `soak` longer than
    /// [`MAX_DURATION`](crate::pure::seconds::MAX_DURATION) is taken as that.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let master = einhorn_master::self_hosted::SelfHosted::new().canary(1, Duration::from_secs(30));
    /// # let _ = master;
    /// ```
    pub fn canary(mut self, workers: usize, soak: Duration) -> SelfHosted {
        self.canary = Some(crate::pure::command::CanaryPlan {
            workers,
            soak: crate::pure::seconds::bounded(soak),
        });
        self
    }

    /// Responses a canary must have answered by the end of its soak for a verdict (default
    /// [`CANARY_MIN_RESPONSES`](crate::pure::machine::CANARY_MIN_RESPONSES)): fewer roll the upgrade
    /// back, since a canary no client reached proves nothing; 0 lets it pass on its exits
    /// alone (einhorn-master's `--canary-min-responses`).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let master = einhorn_master::self_hosted::SelfHosted::new()
    ///     .canary(1, Duration::from_secs(30))
    ///     .canary_min_responses(100);
    /// # let _ = master;
    /// ```
    pub fn canary_min_responses(mut self, responses: u64) -> SelfHosted {
        self.canary_min_responses = responses;
        self
    }

    /// Serves the master's metrics (upgrades, rollbacks, workers by generation and state,
    /// respawns, each version's responses) in Prometheus' text format at
    /// `GET http://addr/metrics`, as `einhorn-master --metrics` does. The workers record theirs
    /// into whatever recorder they install.
    ///
    /// ```
    /// let master = einhorn_master::self_hosted::SelfHosted::new()
    ///     .metrics("127.0.0.1:9100".parse().unwrap());
    /// # let _ = master;
    /// ```
    pub fn metrics(mut self, addr: std::net::SocketAddr) -> SelfHosted {
        self.metrics = Some(addr);
        self
    }

    /// How often the TLS session-ticket key every worker shares is rotated (default 6 hours;
    /// at least 1 second): `--key-rotation`. See [`graceful_listener::keyring`].
    ///
    /// ```
    /// # use std::time::Duration;
    /// let master = einhorn_master::self_hosted::SelfHosted::new()
    ///     .key_rotation(Duration::from_secs(3600));
    /// # let _ = master;
    /// ```
    pub fn key_rotation(mut self, period: Duration) -> SelfHosted {
        self.key_rotation = crate::pure::seconds::bounded(period).max(Duration::from_secs(1));
        self
    }

    /// Stderr lines kept per worker, logged when it fails (0: workers write to the master's
    /// stderr directly, and failures are reported without their output).
    ///
    /// ```
    /// let master = einhorn_master::self_hosted::SelfHosted::new().stderr_tail(50);
    /// # let _ = master;
    /// ```
    pub fn stderr_tail(mut self, lines: usize) -> SelfHosted {
        self.stderr_tail = lines;
        self
    }

    /// The program workers run (default: this program's `argv[0]`, made absolute at start).
    /// An upgrade runs whatever is at this path then: replace the file, then SIGHUP.
    ///
    /// ```
    /// let master = einhorn_master::self_hosted::SelfHosted::new().program("/srv/app/current/bin/app");
    /// # let _ = master;
    /// ```
    pub fn program(mut self, path: impl Into<PathBuf>) -> SelfHosted {
        self.program = Some(path.into());
        self
    }

    /// In a worker, returns `Ok(())` at once. Otherwise runs the master until it exits, then
    /// exits the process with its status: it returns only with an error, before any worker
    /// has started.
    ///
    /// Call it first in `main`, on the main thread, before any tokio runtime exists: the
    /// master runs its own current-thread runtime on this thread.
    ///
    /// # Errors
    /// A [`SelfHostedError`] naming what is wrong: a bind spec, the program path, the calling
    /// context, or the master's setup (address in use, command socket taken, ...).
    pub fn start(self) -> Result<(), SelfHostedError> {
        if Environment::from_process().check_einhorn_worker().is_ok() {
            return Ok(());
        }
        let mut args = self.master_args(std::env::args_os())?;
        // Reloading: exec'd by the previous master with its state, or only checking that it
        // could take over (see `crate::reexec`).
        if let Some(fd) = std::env::var_os(STATE_FD_ENV) {
            let text = fd.to_string_lossy();
            let fd = text
                .parse()
                .map_err(|_| SelfHostedError::StateFd(text.into_owned()))?;
            args.with_state_fd = Some(fd);
            args.upgrade_check = std::env::var_os(UPGRADE_CHECK_ENV).is_some_and(|v| v == "1");
        }
        args.self_exec = Some(SelfExec {
            program: PathBuf::from(&args.command[0]),
            args: args.command[1..].to_vec(),
            via: StateVia::Environment,
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(SelfHostedError::InRuntime);
        }
        if nix::unistd::gettid() != nix::unistd::getpid() {
            return Err(SelfHostedError::NotMainThread);
        }
        match driver::run(&args) {
            Ok(code) => std::process::exit(code),
            Err(MasterError::Socket(taken @ SocketError::Locked { .. })) => {
                Err(SelfHostedError::SocketTaken(taken))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The master's arguments for a program started with `argv`. Pure but for the lookup of
    /// the program (and the current directory, to make it absolute).
    ///
    /// # Errors
    /// As [`start`](Self::start), but for the master's own errors.
    ///
    /// ```
    /// use einhorn_master::self_hosted::SelfHosted;
    ///
    /// let args = SelfHosted::new()
    ///     .bind("127.0.0.1:0")
    ///     .workers(2)
    ///     .master_args(["/usr/bin/env", "--flag"])
    ///     .unwrap();
    /// assert_eq!(args.number, 2);
    /// assert_eq!(args.command, ["/usr/bin/env", "--flag"]);
    /// assert_eq!(args.command_name.as_deref(), Some("env"));
    ///
    /// let err = SelfHosted::new().bind("localhost").master_args(["/usr/bin/env"]).unwrap_err();
    /// assert!(err.to_string().contains("\"localhost\""), "{err}");
    /// ```
    pub fn master_args<I, T>(&self, argv: I) -> Result<MasterArgs, SelfHostedError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        if self.binds.is_empty() {
            return Err(SelfHostedError::NoBind);
        }
        if self.workers == 0 {
            return Err(SelfHostedError::NoWorkers);
        }
        let mut bind = self
            .binds
            .iter()
            .map(|spec| spec.parse::<BindSpec>())
            .collect::<Result<Vec<_>, _>>()?;
        // SO_REUSEADDR always (`,r`): a restart after the master died must bind at once,
        // while the connections its workers closed linger in TIME_WAIT on that port.
        for spec in &mut bind {
            spec.reuse_addr = true;
        }
        let mut argv = argv.into_iter().map(Into::into);
        let argv0 = argv.next().unwrap_or_default();
        let program = match &self.program {
            Some(path) => absolute(path)?,
            None => resolve_program(&argv0)?,
        };
        // The master's defaults, as its command line has them (a test holds the two equal).
        let mut args = MasterArgs::for_command(vec![program.clone().into_os_string()]);
        args.bind = bind;
        args.number = self.workers;
        args.ack_mode = AckMode::Manual;
        args.socket_path.clone_from(&self.socket_path);
        args.command_name = program
            .file_name()
            .map(|name| name.to_string_lossy().into_owned());
        if let Some(timeout) = self.upgrade_timeout {
            args.upgrade_timeout = timeout;
        }
        args.signal_timeout = self.signal_timeout;
        args.kill_children_on_exit = self.kill_children_on_exit;
        if let Some(plan) = self.canary {
            args.canary = Some(u32::try_from(plan.workers.max(1)).unwrap_or(u32::MAX));
            args.soak = plan.soak;
        }
        args.canary_min_responses = self.canary_min_responses;
        args.metrics = self.metrics;
        args.stderr_tail = self.stderr_tail;
        args.key_rotation = self.key_rotation;
        args.command = std::iter::once(program.into_os_string())
            .chain(argv)
            .collect();
        Ok(args)
    }
}

/// Where `argv0` names this program, as an absolute path that is not resolved further: not
/// `/proc/self/exe`, which names the running file even after it is replaced, and not through
/// symbolic links, so that a `current -> release-N` link switched before SIGHUP is followed.
fn resolve_program(argv0: &OsString) -> Result<PathBuf, SelfHostedError> {
    let found = check_program(argv0).map_err(|source| SelfHostedError::Program {
        argv0: argv0.clone(),
        source,
    })?;
    absolute(&found)
}

fn absolute(path: &Path) -> Result<PathBuf, SelfHostedError> {
    std::path::absolute(path).map_err(|source| SelfHostedError::Path {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_typed_errors_naming_the_value() {
        let argv = ["/bin/sh"];
        assert!(matches!(
            SelfHosted::new().master_args(argv),
            Err(SelfHostedError::NoBind)
        ));
        assert!(matches!(
            SelfHosted::new().bind(":80").workers(0).master_args(argv),
            Err(SelfHostedError::NoWorkers)
        ));
        let err = SelfHosted::new()
            .bind("127.0.0.1:99999")
            .master_args(argv)
            .unwrap_err();
        assert!(err.to_string().contains("99999"), "{err}");
        let err = SelfHosted::new()
            .bind("127.0.0.1:0")
            .master_args(["/nonexistent/app"])
            .unwrap_err();
        assert!(matches!(err, SelfHostedError::Program { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/app"), "{err}");
    }

    #[test]
    fn a_port_alone_binds_as_a_workers_bind_does() {
        let args = SelfHosted::new()
            .bind(":18089")
            .master_args(["/bin/sh"])
            .unwrap();
        let bind = &args.bind[0];
        assert_eq!((bind.host.as_str(), bind.port), ("0.0.0.0", 18089));
    }

    #[test]
    fn the_program_is_found_through_path_and_made_absolute_with_its_arguments() {
        let args = SelfHosted::new()
            .bind("127.0.0.1:0")
            .bind("[::1]:0,r")
            .workers(3)
            .command_socket("/tmp/x.sock")
            .upgrade_timeout(Duration::from_secs(5))
            .master_args(["sh", "-c", "true"])
            .unwrap();
        let program = PathBuf::from(&args.command[0]);
        assert!(
            program.is_absolute() && program.ends_with("sh"),
            "{program:?}"
        );
        assert_eq!(&args.command[1..], ["-c", "true"]);
        assert_eq!(args.bind.len(), 2);
        assert!(
            args.bind.iter().all(|b| b.reuse_addr),
            "SO_REUSEADDR always"
        );
        assert_eq!(args.number, 3);
        assert_eq!(args.ack_mode, AckMode::Manual);
        assert_eq!(args.upgrade_timeout, Duration::from_secs(5));
        assert_eq!(args.socket_path(), PathBuf::from("/tmp/x.sock"));
        assert_eq!(args.stderr_tail, DEFAULT_STDERR_TAIL);
        assert!(
            args.kill_children_on_exit,
            "workers follow the master by default"
        );

        let relative = SelfHosted::new()
            .bind("127.0.0.1:0")
            .program("bin/app")
            .master_args(["whatever"])
            .unwrap();
        assert!(PathBuf::from(&relative.command[0]).is_absolute());
        assert!(PathBuf::from(&relative.command[0]).ends_with("bin/app"));
    }
}
