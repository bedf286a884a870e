//! [`run`]: serve under a socket manager, from the first ACK to the last drained connection.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::bind::{Bind, BindError};
use crate::einhorn::{ACK_RETRY_FOR, AckError, ack_with};
use crate::env::EinhornEnv;
use crate::listener::GracefulListener;
use crate::server::Server;
use crate::signals::{StopRequest, StopSignals};

/// How long a drain may take before connections are forced closed, by default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// After a force close, how long to wait for connection tasks to notice and finish.
const AFTER_FORCE_GRACE: Duration = Duration::from_secs(1);

/// Serves `server` on Einhorn's listener number `fd_index` until a stop signal, then drains.
///
/// This is the whole life of a worker, in one call:
/// 1. installs handlers for SIGUSR2, SIGTERM, SIGINT (graceful stop) and SIGQUIT (stop now),
///    before anything can signal us, so that an early SIGUSR2 is never fatal;
/// 2. takes listener `fd_index` (`EINHORN_FD_<fd_index>`), checked, non-blocking;
/// 3. starts the server, then ACKs to the master (`worker:ack`);
/// 4. on a stop signal: stops accepting (closing only our copy of the shared socket), calls
///    `on_stop`, and waits for every connection to close;
/// 5. at the drain timeout, or on a second signal, force-closes what is left, and says so.
///
/// The returned [`Run`] is a builder: set options on it, then `.await` it.
///
/// # Example
/// ```no_run
/// use std::time::Duration;
/// use graceful_listener::GracefulListener;
///
/// # async fn example() -> Result<(), graceful_listener::RunError> {
/// let server = |mut listener: GracefulListener| async move {
///     while let Some((conn, _peer)) = listener.accept().await {
///         tokio::spawn(async move { drop(conn) });
///     }
///     Ok(())
/// };
/// let report = graceful_listener::run(server, 0)
///     .drain_timeout(Duration::from_secs(10))
///     .on_stop(|| tracing::info!("flushing caches"))
///     .await?;
/// println!("served {} connections, {} forced closed", report.served, report.forced);
/// # Ok(())
/// # }
/// ```
pub fn run<S: Server>(server: S, fd_index: usize) -> Run<S> {
    Run::new(server).bind(Bind::Einhorn(fd_index))
}

/// A worker to run: a server and its options. Made by [`run`] or [`Run::new`]; `.await` it.
#[must_use = "a Run does nothing until it is awaited"]
pub struct Run<S> {
    server: S,
    bind: Bind,
    drain_timeout: Duration,
    on_stop: Option<Box<dyn FnOnce() + Send>>,
    ack: Option<bool>,
}

impl<S: Server> Run<S> {
    /// A worker for `server`, bound with [`Bind::Auto`] (Einhorn's first listener when run by
    /// Einhorn, else `127.0.0.1:8000`), with a 30 s drain timeout.
    pub fn new(server: S) -> Run<S> {
        Run {
            server,
            bind: Bind::Auto,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            on_stop: None,
            ack: None,
        }
    }

    /// Where to listen. See [`Bind`] for the specs.
    pub fn bind(mut self, bind: Bind) -> Run<S> {
        self.bind = bind;
        self
    }

    /// The longest the drain may take; connections still open then are forced closed and
    /// the force is logged. An upper bound, never a sleep: a worker with nothing in flight
    /// exits at once. Default [`DEFAULT_DRAIN_TIMEOUT`].
    pub fn drain_timeout(mut self, timeout: Duration) -> Run<S> {
        self.drain_timeout = timeout;
        self
    }

    /// A callback run once, after accepting has stopped and before the drain: a place to
    /// deregister from service discovery or flush buffers (Go's `OnStopCallback`). It runs on
    /// the runtime, so keep it short.
    pub fn on_stop(mut self, callback: impl FnOnce() + Send + 'static) -> Run<S> {
        self.on_stop = Some(Box::new(callback));
        self
    }

    /// Whether to ACK to the Einhorn master once serving. By default, ACK exactly when this
    /// process is an Einhorn worker (its parent is `EINHORN_MASTER_PID`).
    pub fn ack(mut self, ack: bool) -> Run<S> {
        self.ack = Some(ack);
        self
    }

    /// The server, for adapters that add options of their own to this builder.
    pub fn server_mut(&mut self) -> &mut S {
        &mut self.server
    }
}

/// Why a worker stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopCause {
    /// A signal, by name: `SIGUSR2`, `SIGTERM`, `SIGINT` or `SIGQUIT`.
    Signal(&'static str),
    /// The server's `serve` returned on its own.
    ServerEnded,
}

/// What happened during a worker's life, returned by [`run`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunReport {
    /// Why it stopped.
    pub cause: StopCause,
    /// Connections accepted over the worker's life.
    pub served: u64,
    /// Connections open at the stop that finished on their own.
    pub drained: u64,
    /// Connections force-closed at the drain timeout or on a second signal.
    pub forced: u64,
    /// Time from the stop to the end of the drain.
    pub drain_time: Duration,
}

/// A worker could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// The listener could not be taken or bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The master could not be told we are ready.
    #[error(transparent)]
    Ack(#[from] AckError),
    /// The server failed.
    #[error("server failed: {0}")]
    Serve(#[source] std::io::Error),
}

impl<S> IntoFuture for Run<S>
where
    S: Server + Send + 'static,
{
    type Output = Result<RunReport, RunError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.execute())
    }
}

impl<S> Run<S>
where
    S: Server + Send + 'static,
{
    async fn execute(self) -> Result<RunReport, RunError> {
        let (mut signals, stop_pending) = StopSignals::install().map_err(RunError::Signals)?;
        let env = EinhornEnv::from_process();
        let bind = self.bind.resolve_auto_in(&env);
        let listener = GracefulListener::bind_in(&bind, &env).await?;
        tracing::info!(%bind, addr = %listener.local_addr(), "listening");
        let handle = listener.handle();
        // The server's task, and the tasks it spawns in the current span, log in the caller's span.
        let mut serve = tokio::spawn(self.server.serve(listener).in_current_span());

        let mut early = None;
        if stop_pending {
            // Sent before we could handle it (a master started us with it blocked): it is on
            // its way to `signals`, and we must not ACK a readiness we are giving up.
            early = Some(signals.recv().await);
        } else if self.ack.unwrap_or_else(|| env.check_worker().is_ok()) {
            tokio::select! {
                biased;
                request = signals.recv() => early = Some(request),
                acked = ack_with(&env, ACK_RETRY_FOR) => if let Err(e) = acked {
                    handle.force_close();
                    serve.abort();
                    return Err(e.into());
                },
            }
        }
        // Once the server's result has been taken its JoinHandle is gone (`None`): a
        // JoinHandle must not be polled again after it completed.
        let (request, serve) = if let Some(request) = early {
            tracing::info!(
                signal = request.signal_name(),
                "stop requested before ready: not acking"
            );
            (Some(request), Some(serve))
        } else {
            tokio::select! {
                request = signals.recv() => (Some(request), Some(serve)),
                ended = &mut serve => {
                    match ended {
                        Ok(Err(e)) => {
                            handle.force_close();
                            return Err(RunError::Serve(e));
                        }
                        Ok(Ok(())) => tracing::info!("server ended on its own"),
                        Err(e) => tracing::error!(error = %e, "server task failed"),
                    }
                    (None, None)
                }
            }
        };
        let cause = request.map_or(StopCause::ServerEnded, |r| {
            StopCause::Signal(r.signal_name())
        });

        let stopped_at = Instant::now();
        handle.stop();
        let live_at_stop = handle.live();
        tracing::info!(
            ?cause,
            live = live_at_stop,
            "stopping: no longer accepting, draining"
        );
        if let Some(on_stop) = self.on_stop {
            on_stop();
        }

        let must_force = match request {
            Some(StopRequest::Immediate(_)) => true,
            _ => tokio::select! {
                () = handle.drained() => false,
                () = tokio::time::sleep(self.drain_timeout) => {
                    tracing::warn!(timeout = ?self.drain_timeout, live = handle.live(), "drain timeout");
                    true
                }
                second = signals.recv() => {
                    tracing::warn!(signal = second.signal_name(), live = handle.live(), "second stop signal");
                    true
                }
            },
        };
        let forced = if must_force {
            let forced = handle.force_close();
            if forced > 0 {
                tracing::warn!(forced, "forced connections closed");
            }
            // Forced connections fail their next read or write; give their tasks a moment.
            let _ = tokio::time::timeout(AFTER_FORCE_GRACE, handle.drained()).await;
            forced
        } else {
            0
        };
        let drain_time = stopped_at.elapsed();
        if let Some(mut serve) = serve {
            match tokio::time::timeout(AFTER_FORCE_GRACE, &mut serve).await {
                Ok(Ok(Err(e))) => tracing::error!(error = %e, "server failed while stopping"),
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(
                        "server did not return after its listener stopped; abandoning it"
                    );
                    serve.abort();
                }
            }
        }
        let report = RunReport {
            cause,
            served: handle.accepted(),
            drained: (live_at_stop as u64).saturating_sub(forced as u64),
            forced: forced as u64,
            drain_time,
        };
        tracing::info!(
            served = report.served,
            drained = report.drained,
            forced = report.forced,
            drain_ms = report.drain_time.as_millis() as u64,
            "stopped"
        );
        Ok(report)
    }
}
