//! [`run`]: serve under a socket manager, from the first ACK to the last drained connection,
//! built on the [`Worker`] pieces.

use std::future::{Future, IntoFuture};
use std::pin::Pin;

use tokio::task::JoinSet;
use tracing::Instrument;

use crate::bind::Bind;
use crate::listener::GracefulListener;
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
    /// A worker for `server`, bound with [`Bind::Auto`] (Einhorn's first listener when run by
    /// Einhorn, else `127.0.0.1:8000`), with a 30 s drain timeout.
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
        let mut tasks = JoinSet::new();
        for (listener, server) in servers {
            // The server's task, and the tasks it spawns in the current span, log in the
            // caller's span.
            tasks.spawn(server(listener).in_current_span());
        }

        if let Err(e) = worker.ready().await {
            worker.handle().force_close();
            return Err(e.into());
        }
        let stop = tokio::select! {
            stop = worker.stopped() => stop,
            Some(ended) = tasks.join_next() => {
                match ended {
                    Ok(Err(e)) => {
                        worker.handle().force_close();
                        return Err(RunError::Serve(e));
                    }
                    Ok(Ok(())) => tracing::info!("server ended on its own"),
                    Err(e) => tracing::error!(error = %e, "server task failed"),
                }
                Stop::server_ended()
            }
        };

        let report = worker.drain(stop).await;
        // A server returns once its listener stops; one that does not is abandoned.
        let ended = tokio::time::timeout(AFTER_FORCE_GRACE, async {
            while let Some(ended) = tasks.join_next().await {
                if let Ok(Err(e)) = ended {
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
