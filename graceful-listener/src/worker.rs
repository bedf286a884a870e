//! [`Worker`]: a worker's life as pieces any host can drive, whoever accepts the connections.
//!
//! [`run`](crate::run) is built on these pieces for servers that serve a
//! [`GracefulListener`] on tokio. A host that accepts on its own threads (actix-web) or runs
//! its own loop drives them itself: [`Worker::new`] (signals first), [`Worker::listen_std`],
//! [`ListenerHandle::track`] per connection, [`Worker::ready`], [`Worker::stopped`], then
//! [`Worker::drain`].

use std::time::{Duration, Instant};

use crate::bind::{Bind, BindError};
use crate::einhorn::{ACK_RETRY_FOR, AckError, ack_with, report_stats, send_stats};
use crate::env::Environment;
use crate::listener::{GracefulListener, ListenerHandle};
use crate::notify::Notifier;
use crate::options::{OnStop, WorkerOptions};
use crate::report::{RunError, RunReport, StopCause, WarmUpError};
use crate::shutdown::ShutdownSignal;
use crate::signals::{StopRequest, StopSignals};
use crate::socket::StdListener;

/// After a force close, how long to wait for connection tasks to notice and finish.
pub(crate) const AFTER_FORCE_GRACE: Duration = Duration::from_secs(1);

/// While draining, how often systemd's `STATUS=` gets the live connection count.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Why and how a worker is to stop: what [`Worker::stopped`] returns and [`Worker::drain`]
/// takes.
///
/// # Example
/// ```
/// use graceful_listener::{Stop, StopCause};
///
/// let stop = Stop::server_ended();
/// assert_eq!(stop.cause(), StopCause::ServerEnded);
/// assert!(!stop.is_immediate());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop {
    cause: StopCause,
    immediate: bool,
}

impl Stop {
    /// The stop of a worker whose server ended on its own: a graceful drain of what is left.
    pub fn server_ended() -> Stop {
        Stop {
            cause: StopCause::ServerEnded,
            immediate: false,
        }
    }

    /// Why the worker stops.
    pub fn cause(&self) -> StopCause {
        self.cause
    }

    /// Whether the stop is "now" (SIGQUIT): no drain, every connection is cut at once.
    pub fn is_immediate(&self) -> bool {
        self.immediate
    }
}

impl From<StopRequest> for Stop {
    fn from(request: StopRequest) -> Stop {
        Stop {
            cause: StopCause::Signal(request.signal_name()),
            immediate: matches!(request, StopRequest::Immediate(_)),
        }
    }
}

/// The life of one worker process, in pieces: stop signals, listeners, readiness (the ACK),
/// the stop, and a bounded drain that ends in a [`RunReport`].
///
/// Every listener a worker opens shares one [`ListenerHandle`]: one stop, one live count, one
/// drain, one report, however many sockets it serves.
///
/// # Example
/// A host with an accept loop of its own (as actix-web has):
/// ```no_run
/// use graceful_listener::{Bind, ListenerHandle, StdListener, Worker, WorkerOptions};
///
/// # struct MyServer;
/// # impl MyServer {
/// #     fn start(_: StdListener, _: ListenerHandle) -> MyServer { MyServer }
/// #     fn stop_accepting(&self) {}
/// # }
/// # async fn example() -> Result<(), graceful_listener::RunError> {
/// // First: from here on, SIGUSR2 / SIGTERM / SIGINT / SIGQUIT only ask the worker to stop.
/// let mut worker = Worker::new(WorkerOptions::default())?;
/// let listener = worker.listen_std(&Bind::Einhorn(0))?;
/// // The server calls `handle.track(fd)` for each connection it accepts, and keeps the
/// // guard as long as the connection is open.
/// let server = MyServer::start(listener, worker.handle());
/// worker.ready().await?; // ACK: we accept
/// let stop = worker.stopped().await;
/// server.stop_accepting();
/// let report = worker.drain(stop).await;
/// eprintln!("{report:?}");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use = "a Worker does nothing until driven"]
pub struct Worker {
    options: WorkerOptions,
    signals: StopSignals,
    /// A stop signal was pending when the handlers were installed.
    stop_pending: bool,
    /// A stop seen before readiness, for [`Worker::stopped`] to return.
    early: Option<Stop>,
    readied: bool,
    /// When the lame duck ends, once it has begun.
    lame_duck_until: Option<tokio::time::Instant>,
    env: Environment,
    notifier: Notifier,
    handle: ListenerHandle,
    /// When [`Worker::new`] ran: the start of the time to readiness.
    started: Instant,
    /// The task reporting responses to a master that asked for them (`worker:stats`).
    stats: Option<tokio::task::JoinHandle<()>>,
}

impl Worker {
    /// Starts a worker's life: installs the handlers for the stop signals, then unblocks
    /// them. Call it before anything can signal the process, that is before ACKing and before
    /// starting anything slow: until then SIGUSR2 (Einhorn's stop) kills the process.
    ///
    /// | signal | asks for |
    /// | --- | --- |
    /// | SIGUSR2, SIGTERM, SIGINT | a graceful stop: stop accepting, drain |
    /// | SIGQUIT, or a second signal while draining | stop now: cut every connection |
    ///
    /// # Errors
    /// [`RunError::Signals`] when the handlers cannot be installed.
    ///
    /// # Panics
    /// Outside a tokio runtime with IO enabled (actix-web's runtime is one).
    pub fn new(options: WorkerOptions) -> Result<Worker, RunError> {
        let started = Instant::now();
        let (signals, stop_pending) = StopSignals::install().map_err(RunError::Signals)?;
        crate::telemetry::register();
        let handle = ListenerHandle::new();
        handle.shutdown_signal().make_current();
        let env = Environment::from_process();
        Ok(Worker {
            options,
            signals,
            stop_pending,
            early: None,
            readied: false,
            lame_duck_until: None,
            notifier: Notifier::from_env(&env),
            env,
            handle,
            started,
            stats: None,
        })
    }

    /// The handle every listener of this worker shares: counts connections
    /// ([`ListenerHandle::track`] for hosts that accept on their own), stops, cuts.
    pub fn handle(&self) -> ListenerHandle {
        self.handle.clone()
    }

    /// A watcher of the stop, for servers and request handlers (which can also reach it as
    /// [`ShutdownSignal::current`]).
    pub fn shutdown_signal(&self) -> ShutdownSignal {
        self.handle.shutdown_signal()
    }

    /// Opens a bind spec as a tokio listener whose connections this worker tracks, and whose
    /// `accept` ends when the worker stops.
    ///
    /// # Errors
    /// A [`BindError`] naming the spec and, for inherited sockets, the variable and value at
    /// fault.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    #[track_caller]
    pub fn listen(&self, bind: &Bind) -> Result<GracefulListener, BindError> {
        let (resolved, listener) = self.open(bind)?;
        GracefulListener::from_std_with(listener, self.handle.clone()).map_err(|source| {
            BindError::Io {
                bind: resolved,
                source,
            }
        })
    }

    /// Opens a bind spec as a std listener (non-blocking, close-on-exec) for a host that
    /// accepts on its own; the host counts each connection with [`ListenerHandle::track`]
    /// and stops accepting when [`Worker::stopped`] returns.
    ///
    /// # Errors
    /// As [`Worker::listen`].
    pub fn listen_std(&self, bind: &Bind) -> Result<StdListener, BindError> {
        self.open(bind).map(|(_, listener)| listener)
    }

    /// Opens a bind spec as a UDP socket (non-blocking, close-on-exec), for a host that
    /// serves a datagram protocol (QUIC): an inherited one (`einhorn-master -b
    /// HOST:PORT,udp`, a systemd `ListenDatagram=`) or a new one; `auto` chooses as for a
    /// listener. The host counts each of its
    /// connections with [`ListenerHandle::track_without_socket`].
    ///
    /// # Errors
    /// A [`BindError`] naming the spec and, for inherited sockets, the variable and value at
    /// fault (a stream socket where a datagram one was expected, say).
    ///
    /// # Example
    /// ```no_run
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = graceful_listener::Worker::new(Default::default())?;
    /// let udp = worker.listen_datagram(&graceful_listener::Bind::Einhorn(1))?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn listen_datagram(&self, bind: &Bind) -> Result<std::net::UdpSocket, BindError> {
        let resolved = crate::auto::resolve(bind.clone(), &self.env)?;
        let socket = resolved.bind.open_datagram(&self.env)?;
        let addr = socket
            .local_addr()
            .map_or_else(|_| "?".to_owned(), |a| a.to_string());
        match &resolved.why {
            Some(why) => {
                tracing::info!(bind = %resolved.bind, %addr, %why, "listening (datagram, auto)")
            }
            None => tracing::info!(bind = %resolved.bind, %addr, "listening (datagram)"),
        }
        Ok(socket)
    }

    /// Resolves `auto` (saying why it chose what it chose) and opens the spec.
    fn open(&self, bind: &Bind) -> Result<(Bind, StdListener), BindError> {
        let opened = crate::open::open(bind, &self.env)?;
        let addr = opened
            .listener
            .local_addr()
            .map_or_else(|_| "?".to_owned(), |a| a.to_string());
        match &opened.why {
            Some(why) => tracing::info!(bind = %opened.bind, %addr, %why, "listening (auto)"),
            None => tracing::info!(bind = %opened.bind, %addr, "listening"),
        }
        Ok((opened.bind, opened.listener))
    }

    /// Runs the warm-up ([`WorkerOptions::warm_up`]), if one was given: call it once the
    /// listeners are open and before anything accepts on them. A stop signal during it ends
    /// it: [`Worker::ready`] then does not ACK and [`Worker::stopped`] returns that stop.
    ///
    /// # Errors
    /// [`RunError::WarmUp`] when the step fails or outlasts its timeout; the host should
    /// exit non-zero without serving.
    ///
    /// # Cancel safety
    /// Not cancel safe: the warm-up step is dropped half done.
    pub async fn warm_up(&mut self) -> Result<(), RunError> {
        let Some(step) = self.options.warm_up.take() else {
            return Ok(());
        };
        if self.stop_pending || self.early.is_some() {
            return Ok(());
        }
        let timeout = self.options.warm_up_timeout;
        tracing::info!(?timeout, "warming up");
        self.notifier.status("warming up");
        let began = Instant::now();
        let outcome = tokio::select! {
            biased;
            request = self.signals.recv() => {
                tracing::info!(signal = request.signal_name(), "stop requested while warming up");
                self.early = Some(request.into());
                return Ok(());
            }
            outcome = tokio::time::timeout(timeout, step()) => outcome,
        };
        let error = match outcome {
            Ok(Ok(())) => {
                let took = began.elapsed();
                crate::telemetry::warmed_up(took);
                tracing::info!(took_ms = took.as_millis() as u64, "warmed up");
                return Ok(());
            }
            Ok(Err(e)) => WarmUpError::Failed(e),
            Err(_) => WarmUpError::TimedOut(timeout),
        };
        tracing::error!(error = %error, "warm-up failed: not serving");
        Err(RunError::WarmUp(error))
    }

    /// Whether a stop came before the worker was ready (during the warm-up, or pending when
    /// the worker started): the host should not start serving, only drain
    /// ([`Worker::stopped`] returns that stop at once).
    pub fn stopped_early(&self) -> bool {
        self.early.is_some()
    }

    /// Says the worker is ready: ACKs to the Einhorn master (when this process is a worker,
    /// or as [`WorkerOptions::ack`] says), and tells systemd `READY=1` (when it asked, with
    /// `NOTIFY_SOCKET`, and no master runs us). Call it once every listener really accepts.
    ///
    /// A stop that arrives first (or was pending at [`Worker::new`]) cancels the ACK: a
    /// master must not count as ready a worker that is leaving. [`Worker::stopped`] then
    /// returns that stop at once.
    ///
    /// # Errors
    /// An [`AckError`] when the master's command socket stays unreachable: the host should
    /// stop serving and exit non-zero.
    ///
    /// # Cancel safety
    /// Not cancel safe: an ACK may be cut half written.
    pub async fn ready(&mut self) -> Result<(), AckError> {
        if std::mem::replace(&mut self.readied, true) || self.early.is_some() {
            // Already ready, or a stop came during the warm-up: nothing to announce.
            return Ok(());
        }
        if self.stop_pending {
            // Sent before we could handle it (a master started us with it blocked): it is on
            // its way to `signals`, and we must not ACK a readiness we are giving up.
            let request = self.signals.recv().await;
            self.note_stop_before_ready(request);
            return Ok(());
        }
        let ack = self
            .options
            .ack
            .unwrap_or_else(|| self.env.check_einhorn_worker().is_ok());
        if ack {
            tokio::select! {
                biased;
                request = self.signals.recv() => {
                    self.note_stop_before_ready(request);
                    return Ok(());
                }
                acked = ack_with(&self.env, ACK_RETRY_FOR) => acked?,
            }
            self.stats = report_stats(&self.env, self.handle.clone());
        }
        self.notifier.ready("serving");
        crate::telemetry::ready(self.started.elapsed());
        if let Some(on_ready) = self.options.on_ready.take() {
            on_ready();
        }
        Ok(())
    }

    fn note_stop_before_ready(&mut self, request: StopRequest) {
        tracing::info!(
            signal = request.signal_name(),
            "stop requested before ready: not acking"
        );
        self.early = Some(request.into());
    }

    /// Waits for a stop: a stop signal, or [`ListenerHandle::stop`] called by the
    /// application. Listeners keep accepting until [`Worker::drain`] begins.
    ///
    /// With a [lame duck](WorkerOptions::lame_duck), a SIGTERM returns only once the lame duck
    /// is over: meanwhile the worker still serves, but says it is not ready.
    ///
    /// # Cancel safety
    /// Cancel safe: a signal that arrives meanwhile is kept for the next call, and a lame
    /// duck in progress goes on where it was.
    pub async fn stopped(&mut self) -> Stop {
        let stop = match self.early.take() {
            Some(stop) => stop,
            None => {
                let signal = self.handle.shutdown_signal();
                tokio::select! {
                    request = self.signals.recv() => request.into(),
                    () = signal.stopping() => Stop { cause: StopCause::Requested, immediate: false },
                }
            }
        };
        let lame_duck = self.options.lame_duck;
        if stop.immediate || stop.cause != StopCause::Signal("SIGTERM") || lame_duck.is_zero() {
            return stop;
        }
        // Kept until the lame duck is over, so that a cancelled call resumes it.
        self.early = Some(stop);
        let until = *self
            .lame_duck_until
            .get_or_insert_with(|| tokio::time::Instant::now() + lame_duck);
        if self.handle.lame_duck() {
            crate::telemetry::lame_duck(true);
            tracing::info!(
                ?lame_duck,
                live = self.handle.live(),
                "lame duck: not ready, still serving"
            );
            self.notifier.status(&format!(
                "lame duck: not ready, serving for {lame_duck:?} more"
            ));
        }
        tokio::select! {
            () = tokio::time::sleep_until(until) => {}
            second = self.signals.recv() => {
                tracing::info!(signal = second.signal_name(), "lame duck cut short");
                if matches!(second, StopRequest::Immediate(_)) {
                    self.early = Some(second.into());
                }
            }
        }
        self.early.take().expect("kept above")
    }

    /// Drains: stops accepting on every listener (closing only this process's copy of a
    /// shared socket), runs `on_stop`, and waits for every tracked connection to close, up to
    /// the drain timeout; then, or at once for an immediate stop or on a second signal,
    /// force-closes what is left and says so. Returns the report.
    ///
    /// A host that has its own way to stop (actix-web's `ServerHandle::stop`) runs it beside
    /// this future; watch [`Worker::shutdown_signal`] for the hammer.
    pub async fn drain(mut self, stop: Stop) -> RunReport {
        let stopped_at = Instant::now();
        let deadline = tokio::time::Instant::now() + self.options.drain_timeout;
        // Counted before the stop wakes anyone: a connection that closes at once on it is
        // one the drain waited for too.
        let at_stop = self.handle.counts();
        self.handle.stop();
        let live_at_stop = at_stop.live;
        if stop.immediate {
            tracing::info!(
                cause = %stop.cause,
                live = live_at_stop,
                "stopping now: no longer accepting, closing every connection"
            );
        } else {
            tracing::info!(
                cause = %stop.cause,
                live = live_at_stop,
                "stopping: no longer accepting, draining"
            );
        }
        self.notifier
            .stopping(&format!("draining {live_at_stop} connections"));
        let mut on_stop = match self.options.on_stop.take() {
            Some(OnStop::Sync(callback)) => {
                callback();
                None
            }
            Some(OnStop::Async(callback)) => Some(callback()),
            None => None,
        };

        let must_force = stop.immediate
            || {
                let drained = self.handle.drained();
                let mut drained = std::pin::pin!(drained);
                let mut is_drained = false;
                let mut progress = tokio::time::interval(STATUS_EVERY);
                progress.tick().await; // the first tick is at once: the status was just sent
                loop {
                    if is_drained && on_stop.is_none() {
                        break false;
                    }
                    tokio::select! {
                        () = &mut drained, if !is_drained => is_drained = true,
                        _ = progress.tick() => {
                            let live = self.handle.live();
                            self.notifier.status(&format!("draining {live} connections"));
                        }
                        () = async { on_stop.as_mut().expect("checked").await }, if on_stop.is_some() => {
                            on_stop = None;
                        }
                        () = tokio::time::sleep_until(deadline) => {
                            tracing::warn!(
                                timeout = ?self.options.drain_timeout,
                                live = self.handle.live(),
                                on_stop_done = on_stop.is_none(),
                                "drain timeout"
                            );
                            break true;
                        }
                        second = self.signals.recv() => {
                            tracing::warn!(
                                signal = second.signal_name(),
                                live = self.handle.live(),
                                "second stop signal: stopping now"
                            );
                            break true;
                        }
                    }
                }
            };
        if must_force {
            let forced = self.handle.force_close();
            if forced > 0 {
                tracing::warn!(forced, "forced connections closed");
            }
            // Forced connections fail their next read or write; give their tasks a moment.
            let _ = tokio::time::timeout(AFTER_FORCE_GRACE, self.handle.drained()).await;
        }
        if on_stop.is_some() {
            tracing::warn!("on_stop did not finish before the drain ended; abandoned");
        }
        // Every connection live at the stop, or accepted in a race with it, either closed
        // during the drain or was forced.
        let end = self.handle.counts();
        let drained = (at_stop.live as u64 + (end.accepted - at_stop.accepted))
            .saturating_sub(end.forced - at_stop.forced);
        let report = RunReport {
            cause: stop.cause,
            served: end.accepted,
            drained,
            forced: end.forced - at_stop.forced,
            drain_time: stopped_at.elapsed(),
        };
        tracing::info!(
            served = report.served,
            drained = report.drained,
            forced = report.forced,
            drain_ms = report.drain_time.as_millis() as u64,
            "stopped"
        );
        crate::telemetry::drained(report.drained, report.forced, report.drain_time);
        if let Some(stats) = self.stats.take() {
            // The last responses reach the master too: a canary's verdict counts them.
            stats.abort();
            if let Ok(path) = self.env.einhorn_command_socket_path() {
                send_stats(&path, &mut None, None).await;
            }
        }
        report
    }
}
