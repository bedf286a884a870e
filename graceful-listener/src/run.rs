//! [`run`]: serve under a socket manager, from the first ACK to the last drained connection,
//! built on the [`Worker`] pieces.

use std::future::{Future, IntoFuture};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};

use crate::bind::Bind;
use crate::listener::{GracefulListener, ListenerHandle};
use crate::options::WorkerOptions;
use crate::report::{RunError, RunReport};
use crate::server::Server;
use crate::worker::{AFTER_FORCE_GRACE, Stop, Worker};

/// Serves `server` on Einhorn's listener number `fd_index` until a stop signal, then drains.
///
/// `fd_index` is the position of the socket in the master's `-b` list: `0` is
/// `EINHORN_FD_0`, the first. This expects to be run by a master; [`Run::new`] binds by
/// itself when there is none ([`Bind::Auto`]).
///
/// This is the whole life of a worker, in one call:
/// 1. installs handlers for SIGUSR2, SIGTERM, SIGINT (graceful stop) and SIGQUIT (stop now),
///    before anything can signal us, so that an early SIGUSR2 is never fatal;
/// 2. takes listener `fd_index` (`EINHORN_FD_<fd_index>`), checked, non-blocking;
/// 3. runs the warm-up, if one was given ([`Run::warm_up`]), then starts the server and ACKs
///    to the master (`worker:ack`);
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

type BoxedServe = Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>;
type BoxedServer = Box<dyn FnOnce(GracefulListener) -> BoxedServe + Send>;

/// A worker to run: its servers, where each listens, and the worker's options. Made by
/// [`run`] or [`Run::new`]; `.await` it.
#[must_use = "a Run does nothing until it is awaited"]
pub struct Run<S> {
    server: S,
    bind: Bind,
    also: Vec<(Bind, BoxedServer)>,
    options: WorkerOptions,
}

impl<S> Run<S> {
    /// A worker for `server`, bound with [`Bind::Auto`] (the first socket a manager passed:
    /// Einhorn, systemd, Server::Starter; else `:$PORT`; else `127.0.0.1:8000`), with a 30 s
    /// drain timeout.
    ///
    /// # Example
    /// ```
    /// use graceful_listener::{GracefulListener, Run};
    ///
    /// let worker = Run::new(|_listener: GracefulListener| async { Ok(()) });
    /// ```
    pub fn new(server: S) -> Run<S>
    where
        S: Server,
    {
        Run::for_server(server)
    }

    /// As [`Run::new`] without the `Server` bound (which `new` has to guide type inference
    /// for closures), for adapters generic over their server; `.await` still requires it.
    #[doc(hidden)]
    pub fn for_server(server: S) -> Run<S> {
        Run {
            server,
            bind: Bind::Auto,
            also: Vec::new(),
            options: WorkerOptions::default(),
        }
    }

    /// Where to listen. See [`Bind`] for the specs.
    ///
    /// # Example
    /// ```
    /// use graceful_listener::{GracefulListener, Run};
    ///
    /// let worker = Run::new(|_listener: GracefulListener| async { Ok(()) })
    ///     .bind("unix:/run/app.sock".parse().unwrap());
    /// ```
    pub fn bind(mut self, bind: Bind) -> Run<S> {
        self.bind = bind;
        self
    }

    /// Serves another server on another listener in the same worker: an admin or metrics
    /// endpoint on `einhorn@1` beside the application on `einhorn@0`, say. Every listener is
    /// open before any server starts, the ACK goes out once all serve, and one drain and one
    /// report cover them all.
    ///
    /// # Example
    /// ```
    /// use graceful_listener::{Bind, GracefulListener, Run};
    ///
    /// let app = |_listener: GracefulListener| async { Ok(()) };
    /// let admin = |_listener: GracefulListener| async { Ok(()) };
    /// let worker = graceful_listener::run(app, 0).also_serve(Bind::Einhorn(1), admin);
    /// ```
    pub fn also_serve<T>(mut self, bind: Bind, server: T) -> Run<S>
    where
        T: Server + Send + 'static,
    {
        self.also.push((
            bind,
            Box::new(move |listener| Box::pin(server.serve(listener))),
        ));
        self
    }

    crate::__worker_options_methods!(
        field = options,
        core = "crate",
        setup =
            "# let server = |_listener: graceful_listener::GracefulListener| async { Ok(()) };\n",
        builder = "graceful_listener::run(server, 0)",
    );

    /// The server, for adapters that add options of their own to this builder.
    pub fn server_mut(&mut self) -> &mut S {
        &mut self.server
    }
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
        let mut worker = Worker::new(self.options)?;
        // Every listener open before any server starts: a bad spec fails the worker whole.
        let mut servers: Vec<(GracefulListener, BoxedServer)> = Vec::new();
        let server = self.server;
        servers.push((
            worker.listen(&self.bind)?,
            Box::new(move |listener| Box::pin(server.serve(listener))),
        ));
        for (bind, server) in self.also {
            servers.push((worker.listen(&bind)?, server));
        }
        // Open but not yet accepted from: the other workers on a shared socket take the
        // connections meanwhile.
        if let Err(e) = worker.warm_up().await {
            worker.handle().force_close();
            return Err(e);
        }
        if worker.stopped_early() {
            // Stopped while warming up: never accept, leave at once.
            let stop = worker.stopped().await;
            return Ok(worker.drain(stop).await);
        }
        // The servers run in this task, not spawned: their accept loops stay where the caller
        // awaits (with `#[tokio::main]`, the main thread), as with a framework's own serve.
        // Besides, spawning one costs memory per connection: the connection tasks it spawns
        // are then allocated from a worker thread's malloc arena (+2.3 KB RSS per idle
        // connection measured with glibc).
        let mut serving: FuturesUnordered<_> = servers
            .into_iter()
            .map(|(listener, server)| AssertUnwindSafe(server(listener)).catch_unwind())
            .collect();

        let handle = worker.handle();
        // The servers accept while the ACK goes out (the master may count on it); one that
        // ends meanwhile ends the worker once it is ready.
        let mut ended_early = None;
        let ready = {
            let ready = worker.ready();
            let mut ready = std::pin::pin!(ready);
            loop {
                tokio::select! {
                    ready = &mut ready => break ready,
                    Some(ended) = serving.next(), if ended_early.is_none() => {
                        ended_early = Some(ended_well(ended));
                    }
                }
            }
        };
        if let Err(e) = ready {
            handle.force_close();
            return Err(e.into());
        }
        let stop = match ended_early {
            Some(ended) => server_ended(ended, &handle)?,
            None => tokio::select! {
                stop = worker.stopped() => stop,
                Some(ended) = serving.next() => server_ended(ended_well(ended), &handle)?,
            },
        };

        // The servers go on running during the drain: one may serve its connections in its
        // own future, and each returns once its listener stops.
        let drain = worker.drain(stop);
        let mut drain = std::pin::pin!(drain);
        let report = loop {
            tokio::select! {
                report = &mut drain => break report,
                Some(ended) = serving.next() => {
                    if let Err(e) = ended_well(ended) {
                        tracing::error!(error = %e, "server failed while stopping");
                    }
                }
            }
        };
        let ended = tokio::time::timeout(AFTER_FORCE_GRACE, async {
            while let Some(ended) = serving.next().await {
                if let Err(e) = ended_well(ended) {
                    tracing::error!(error = %e, "server failed while stopping");
                }
            }
        })
        .await;
        if ended.is_err() {
            tracing::warn!("server did not return after its listener stopped; abandoning it");
        }
        Ok(report)
    }
}

/// A server returned before any stop: the worker stops, with the server's error if it failed.
fn server_ended(ended: std::io::Result<()>, handle: &ListenerHandle) -> Result<Stop, RunError> {
    match ended {
        Ok(()) => {
            tracing::info!("server ended on its own");
            Ok(Stop::server_ended())
        }
        Err(e) => {
            handle.force_close();
            Err(RunError::Serve(e))
        }
    }
}

/// How a server's future ended: its own result, or a panic turned into an error (and
/// logged, as tokio logs a panicking task).
fn ended_well(
    ended: Result<std::io::Result<()>, Box<dyn std::any::Any + Send>>,
) -> std::io::Result<()> {
    match ended {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned());
            tracing::error!(panic = %message, "server panicked");
            Err(std::io::Error::other(format!(
                "the server panicked: {message}"
            )))
        }
    }
}
