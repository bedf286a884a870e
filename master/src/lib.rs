//! `einhorn-master`: an Einhorn-compatible socket master, as a Rust library and binary.
//!
//! It binds the `-b` sockets once, runs N copies of a command with those sockets inherited and
//! Einhorn's environment (`EINHORN_FD_COUNT`, `EINHORN_FD_<i>`, `EINHORN_SOCK_PATH`, ...), and
//! upgrades them without dropping a connection: new workers start, and each one that ACKs
//! retires one old worker with SIGUSR2. Its command socket speaks Einhorn's wire format, so
//! `einhornsh` and any Einhorn client can drive it; [`client`] is a Rust one.
//!
//! ```text
//! einhorn-master -b 127.0.0.1:8080,r -n 4 -m manual -d /tmp/app.sock -- ./server --flag
//! einhorn-master ctl -d /tmp/app.sock upgrade        # waits for "Upgrade done"
//! ```
//!
//! # Where is my port?
//! With `-b 127.0.0.1:0` the kernel picks the port. The master reports every bound socket
//! before it starts a worker, three ways:
//! - a log line on stderr: `listening on 127.0.0.1:43117 (einhorn@0, fd 3)`;
//! - with `--addr-file PATH`, a file written atomically with one line `INDEX ADDR` per socket
//!   (`0 127.0.0.1:43117`);
//! - the `state` command's `listeners` list.
//!
//! # Differences from Einhorn 0.8.2
//! - A smooth upgrade is paced by ACKs: the next new worker starts when the previous one has
//!   ACKed, so `-s` (default 0) is only a minimum spacing.
//! - An upgrade during which no new worker ACKs for `--upgrade-timeout` seconds (default 60)
//!   fails with an error reply; its unACKed workers get SIGUSR2 and the old workers keep
//!   serving, under their own version: `state` then shows `version` (what a new worker
//!   gets) above `base_version` (the oldest version still counted as current). Einhorn waits
//!   forever.
//! - Stopping: SIGINT or SIGUSR2 (SIGUSR2 to workers), SIGTERM (SIGTERM), or `die` sends the
//!   stop signal to every worker not already sent it: old workers still draining after an
//!   upgrade keep draining (Einhorn signals them again). Any further one, while the master is
//!   stopping, sends the signal again to every worker still running, as Einhorn does: workers
//!   on graceful-listener take a second SIGUSR2 or SIGTERM as "stop now", so a second Ctrl-C
//!   or SIGTERM from a supervisor ends a slow drain.
//! - The master re-execs itself as Einhorn does (`reload`, and first thing in `upgrade`,
//!   `upgrade_fleet` and on SIGHUP; see [`reexec`] and [`handover`]), but only after the new
//!   program has read the state it would get (`--upgrade-check`); a new master that cannot
//!   take over is refused with an error reply, and this one runs on unchanged. The state is
//!   versioned JSON on a memfd, and the command-socket connections (the client waiting for
//!   `Upgrade done`) are carried over too.
//! - Overlapping upgrades never leave a gap: an upgrade that supersedes another stops that
//!   one's unACKed workers, never a serving one (Einhorn's `cull` retires serving workers).
//! - A worker that dies within `--min-uptime` of its ACK counts as a failed start, and
//!   respawns back off; Einhorn only counts deaths before the ACK.
//! - Workers built with graceful-listener start with the stop signals blocked until their
//!   handlers exist (`--block-signals`).
//! - `-b` accepts IPv6 literals (`[::1]:8080`) and host names.
//! - Workers inherit stdio and the `-b` sockets only: fds the master itself inherited are made
//!   close-on-exec (Einhorn passes them through).
//! - Error replies carry `error: true` (clients that do not know the key ignore it).
//! - The command socket holds against broken and hostile clients (see [`conn`]): request
//!   lines of at most 64 KiB, with at most 32 opening brackets and no YAML anchors with
//!   aliases, refused before any parsing (Einhorn parses anything); at most
//!   `--max-connections` (256) connections served, plus a reserve in which only `worker:ack`
//!   and `worker:ping` are carried out, others being refused with the reason; a connection
//!   idle for `--idle-timeout` (60 s) is closed (`einhornsh` reconnects by itself); a request
//!   whose client closed the connection before the master read it is not carried out
//!   (worker messages excepted). Einhorn has no such limits.
//! - The worker command is checked at start (exists, is executable, is in `PATH`); a command
//!   that cannot run, or a first worker that cannot be started, fails the master at once
//!   instead of respawning forever.
//! - "Address already in use" names the processes holding the port (often the workers of a
//!   master killed with SIGKILL) and what to do.
//! - The lock file is removed when the master exits, and on every failed start (Einhorn
//!   leaves it forever).
//! - A reload never ends the master: the new program's check tries everything it will do at
//!   its start (worker program, new listeners, `--metrics`) and answers with a nonce from the
//!   state, and after the exec no recoverable fault ends it (see the book's "When a deploy
//!   is broken"). Signals sent during the hand-over reach the new master.
//! - Workers run in process groups of their own, and a worker's exit takes its group with it
//!   (`--keep-orphans`: as Einhorn, which leaves them).
//! - The default command socket is in a per-user directory, `$XDG_RUNTIME_DIR` or
//!   `$TMPDIR/einhorn-UID/` made with mode 0700 (see [`runtime_dir`]), not in the shared
//!   `$TMPDIR`; and no file of the master's (pid file, `--addr-file`, lock file, socket) is
//!   ever written through a symlink planted by another user (see [`files`]). Errors about a
//!   file in the way say what it is and whose.
//! - With `NOTIFY_SOCKET` set, the master speaks systemd's notify protocol for the service
//!   (`Type=notify-reload`: `READY=1`, `RELOADING=1`, `STATUS=`, `STOPPING=1`; see [`notify`]),
//!   and workers get no `NOTIFY_SOCKET`. Einhorn knows nothing of systemd.
//! - `--stderr-tail N` pipes workers' stderr through the master, which keeps each worker's
//!   last N lines and logs them when it dies or never ACKs (see [`stderr`]).
//! - Not implemented: `-p` preloading and `--gc-before-fork` (Ruby's). `--nice` sets levels
//!   with `setpriority`, not an external `renice`. The book's chapter "Beside Einhorn" has
//!   every flag and command of Einhorn 0.8.2 and 1.1.1 beside ours.
//!
//! # As a library
//! [`driver::run`] runs a master from parsed [`cli::MasterArgs`] and returns its exit status
//! or a typed [`driver::MasterError`]; it never exits the process and installs no logger
//! (`main.rs` does both for the binary).
//!
//! # Self-hosted
//! [`self_hosted::SelfHosted`] runs this master inside the application itself: one call at the
//! top of `main` makes the first process the master and every copy it starts a worker, so one
//! binary upgrades itself on SIGHUP with a stable pid and no other tool installed.
//!
//! # The two layers
//! Einhorn's protocol facts (variable names, the ACK line, `HOST:PORT`) come from the
//! workers' crate, `graceful-listener`, written once for both sides.
//!
//! [`pure`] decides: the command language, the wire format, the worker-set and upgrade
//! [state machine](pure::machine) (time passed in, actions and messages returned as data),
//! the rendering of replies and snapshots. It does no I/O and imports nothing from the rest
//! of the crate.
//!
//! Everything else is the process shell, which carries the decisions out. Bottom-up, each
//! module using only the pure layer and the modules before it:
//! - [`files`] (the master's files, never through a planted symlink), [`exec`] (finding a
//!   program, close-on-exec), [`notify`] (systemd's protocol), [`holders`] (who holds a
//!   port), [`stderr`] (workers' stderr tails), [`log_level`], [`keys`] (the key ring
//!   workers share);
//! - [`socket`] (the command socket), [`runtime_dir`], [`pidfile`], [`bind`] (the `-b`
//!   sockets), [`builds`] (each version's build, held open), [`spawn`] (starting a worker),
//!   [`held_signals`], [`conn`] (command-socket connections and their limits), [`client`]
//!   (a Rust client of the command socket);
//! - [`reexec`] (the new program's check, and the exec), [`metrics_http`] (the bounded
//!   `/metrics` endpoint), [`metrics`] (what the machine did, as metrics), [`observer`]
//!   (stderr tails of failed workers, systemd notifications), [`handover`] (the state a
//!   re-exec hands over);
//! - [`cli`] (the command line), [`ctl`] (its client commands);
//! - [`driver`] (the event loop: feeds the machine events, carries out its actions);
//! - [`self_hosted`] (the master inside the application).
//!
//! `tests/house.rs` at the workspace root fails when the pure layer names the shell or does
//! I/O, and when any crate of the workspace has an import circle.

pub mod bind;
pub mod builds;
pub mod cli;
pub mod client;
pub mod conn;
#[cfg(feature = "cli")]
pub mod ctl;
pub mod driver;
pub mod exec;
pub mod files;
pub mod handover;
pub mod held_signals;
pub mod holders;
pub mod keys;
pub mod log_level;
pub mod metrics;
pub mod metrics_http;
pub mod notify;
pub mod observer;
pub mod pidfile;
pub mod pure;
pub mod reexec;
pub mod runtime_dir;
pub mod self_hosted;
pub mod socket;
pub mod spawn;
pub mod stderr;
