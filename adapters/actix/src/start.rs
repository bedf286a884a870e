//! [`start`] and [`Start`]: an actix-web app's whole life as a worker, driven by the core's
//! [`Worker`] pieces.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use actix_http::body::MessageBody;
use actix_http::{Request, Response};
use actix_service::{IntoServiceFactory, Service, ServiceFactory};
use actix_web::HttpServer;
use actix_web::dev::{AppConfig, Extensions, ServerHandle};
use graceful_listener::{
    Bind, BindError, ListenerHandle, Phase, RunError, RunReport, ShutdownSignal, StdListener, Stop,
    Worker, WorkerOptions,
};

use crate::connect::{OnConnect, on_connect};
use crate::drain::DrainApp;

/// No longer used (see [`Start::idle_grace`]): once stopping, idle keep-alive connections are
/// left to their peer or to actix's keep-alive timeout.
#[deprecated(
    since = "0.1.0",
    note = "idle keep-alive connections are left to their peer or actix's keep-alive timeout during the drain"
)]
pub const DEFAULT_IDLE_GRACE: Duration = Duration::from_secs(1);

/// The app factory actix runs in each of its worker threads: the one given to [`start`],
/// wrapped. Leaked once per [`start`] (it must outlive every actix worker thread anyway), so
/// that [`ActixServer`] is a type a closure can be written for.
pub type AppFactory<S, B> = &'static (dyn Fn() -> DrainApp<S, B> + Send + Sync);

/// The [`HttpServer`] that [`Start::configure`] receives: yours, with the app wrapped.
pub type ActixServer<S, B> = HttpServer<AppFactory<S, B>, DrainApp<S, B>, DrainApp<S, B>, B>;

type Configure<S, B> = Box<dyn FnOnce(ActixServer<S, B>) -> ActixServer<S, B>>;

/// What an app factory makes, as [`HttpServer::new`] requires it (an `App`'s service
/// factory is one), in one name. Implemented for every type that fits.
pub trait AppServiceFactory<B>:
    ServiceFactory<
        Request,
        Config = AppConfig,
        Error: Into<actix_web::Error> + 'static,
        InitError: fmt::Debug,
        Response: Into<Response<B>> + 'static,
        Future: 'static,
        Service: Service<Request, Future: 'static> + 'static,
    > + 'static
{
}

impl<S, B> AppServiceFactory<B> for S where
    S: ServiceFactory<
            Request,
            Config = AppConfig,
            Error: Into<actix_web::Error> + 'static,
            InitError: fmt::Debug,
            Response: Into<Response<B>> + 'static,
            Future: 'static,
            Service: Service<Request, Future: 'static> + 'static,
        > + 'static
{
}

/// actix-web's number of workers from `TOKIO_WORKER_THREADS`, the variable through which
/// einhorn-master gives each worker its share of the cores (tokio's runtimes read it too);
/// `None` when unset or not a number of at least 1 (actix then starts one per core).
fn workers_from_env() -> Option<usize> {
    let value = std::env::var(graceful_listener::env::TOKIO_WORKER_THREADS).ok()?;
    match value.trim().parse::<usize>() {
        Ok(n) if n > 0 => Some(n),
        _ => {
            tracing::warn!(
                %value,
                "{} is not a number of at least 1: ignored",
                graceful_listener::env::TOKIO_WORKER_THREADS
            );
            None
        }
    }
}

/// Serves an actix-web app on Einhorn's listener number `fd_index` until a stop signal, then
/// drains without a keep-alive client noticing.
///
/// `factory` is what [`HttpServer::new`] takes: a closure making the app (`|| App::new()...`),
/// run once per actix worker thread. `fd_index` is the position of the socket in the
/// master's `-b` list (`0` for the first, `EINHORN_FD_0`): this expects a socket manager;
/// [`serve`](crate::serve) binds by itself when there is none. The returned [`Start`] is a
/// builder: set options, then `.await` it inside an actix runtime (`#[actix_web::main]`), or
/// call [`Start::run`] from a plain `fn main`.
///
/// The life it runs:
/// 1. installs the stop signals' handlers (actix's own are turned off);
/// 2. takes the listener and hands it to actix (`HttpServer::listen`, or `listen_uds`),
///    with as many actix workers as `TOKIO_WORKER_THREADS` says when it is set (einhorn-master
///    sets it to each worker's share of the cores; [`Start::configure`] wins over it);
/// 3. starts actix, and ACKs once every actix worker has built the app and actix accepts;
/// 4. on SIGUSR2, SIGTERM or SIGINT: pauses accepting (and waits until actix's accept
///    thread has handed out its last connection), marks every response
///    `Connection: close`, leaves idle keep-alive connections to their peer (or to actix's
///    keep-alive timeout) and in-flight requests to finish;
/// 5. ends as soon as every connection has closed, or cuts what is left at the drain timeout
///    (or on a second signal, or SIGQUIT), and says which in the [`RunReport`].
///
/// # Example
/// ```no_run
/// use actix_web::{App, HttpResponse, web};
///
/// fn main() -> Result<(), einhorn_actix::RunError> {
///     let report = einhorn_actix::start(
///         || App::new().route("/", web::get().to(|| async { HttpResponse::Ok().body("hello\n") })),
///         0,
///     )
///     .drain_timeout(std::time::Duration::from_secs(10))
///     .configure(|server| server.workers(2))
///     .run()?;
///     eprintln!("{report:?}");
///     Ok(())
/// }
/// ```
pub fn start<F, I, S, B>(factory: F, fd_index: usize) -> Start<F, I, S, B>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request> + 'static,
    S: AppServiceFactory<B>,
    B: MessageBody + 'static,
{
    serve(factory).bind(Bind::Einhorn(fd_index))
}

/// Like [`start`], bound with [`Bind::Auto`] (the socket a manager passed when there is
/// one, else `127.0.0.1:8000`); set another spec with `.bind(..)`.
///
/// # Example
/// ```no_run
/// use actix_web::{App, web};
///
/// #[actix_web::main]
/// async fn main() -> Result<(), einhorn_actix::RunError> {
///     einhorn_actix::serve(|| App::new().route("/", web::get().to(|| async { "hello\n" })))
///         .bind("127.0.0.1:3000".parse()?)
///         .await?;
///     Ok(())
/// }
/// ```
pub fn serve<F, I, S, B>(factory: F) -> Start<F, I, S, B>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request> + 'static,
    S: AppServiceFactory<B>,
    B: MessageBody + 'static,
{
    Start {
        factory,
        binds: vec![Bind::Auto],
        options: WorkerOptions::default(),
        configure: None,
        on_connect: None,
        #[cfg(feature = "tls")]
        tls: None,
        _app: PhantomData,
    }
}

/// An actix-web worker to run: the app factory, where it listens, the worker's options and
/// actix's. Made by [`start`] or [`serve`]; `.await` it in an actix runtime, or [`Start::run`]
/// it.
#[must_use = "a Start does nothing until it is awaited or run"]
pub struct Start<F, I, S, B>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request> + 'static,
    S: AppServiceFactory<B>,
    B: MessageBody + 'static,
{
    factory: F,
    /// The first is [`Start::bind`]'s, the others [`Start::also_bind`]'s.
    binds: Vec<Bind>,
    options: WorkerOptions,
    configure: Option<Configure<S, B>>,
    on_connect: Option<OnConnect>,
    #[cfg(feature = "tls")]
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    _app: PhantomData<fn() -> I>,
}

impl<F, I, S, B> Start<F, I, S, B>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request> + 'static,
    S: AppServiceFactory<B>,
    B: MessageBody + 'static,
{
    /// Where to listen. See [`Bind`] for the specs.
    ///
    /// # Example
    /// ```
    /// # use actix_web::App;
    /// let worker = einhorn_actix::serve(|| App::new()).bind("unix:/tmp/app.sock".parse().unwrap());
    /// ```
    pub fn bind(mut self, bind: Bind) -> Self {
        self.binds[0] = bind;
        self
    }

    /// Serves the app on another listener too (actix listens on every one): `einhorn@1`
    /// beside `einhorn@0`, say. One ACK once all are served, one drain, one report.
    ///
    /// # Example
    /// ```
    /// # use actix_web::App;
    /// use einhorn_actix::Bind;
    ///
    /// let worker = einhorn_actix::start(|| App::new(), 0).also_bind(Bind::Einhorn(1));
    /// ```
    pub fn also_bind(mut self, bind: Bind) -> Self {
        self.binds.push(bind);
        self
    }

    graceful_listener::__worker_options_methods!(
        field = options,
        core = "graceful_listener",
        setup = "# use actix_web::App;\n",
        builder = "einhorn_actix::start(|| App::new(), 0)",
    );

    /// No longer used: once stopping, an idle keep-alive connection is no longer closed after
    /// a grace. It is left to its peer (which sends one more request on it, answered with
    /// `Connection: close`, or closes it) or to actix's own keep-alive timeout
    /// (`.configure(|s| s.keep_alive(..))`, 5 s by default), as while serving, and cut at the
    /// drain timeout: a balancer that pools connections may send on an idle one at any
    /// instant, so closing it during the drain loses that request. Kept so that code setting
    /// it still builds.
    ///
    /// # Example
    /// ```
    /// # #![allow(deprecated)]
    /// # use actix_web::App;
    /// let worker = einhorn_actix::start(|| App::new(), 0)
    ///     .idle_grace(std::time::Duration::from_millis(500));
    /// ```
    #[deprecated(
        since = "0.1.0",
        note = "idle keep-alive connections are left to their peer or actix's keep-alive timeout during the drain; set `keep_alive` through `configure`"
    )]
    pub fn idle_grace(self, grace: Duration) -> Self {
        let _ = grace;
        self
    }

    /// Sets actix's own options on its [`HttpServer`]: `workers`, `keep_alive`, `backlog`,
    /// `max_connections`, `client_request_timeout`, ... Runs before the listeners are added.
    ///
    /// Leave signals, `shutdown_timeout` and `on_connect` alone (the worker sets them; use
    /// [`Start::on_connect`]), and bind with [`Start::bind`] and [`Start::also_bind`], not
    /// here: sockets added here are not drained.
    ///
    /// # Example
    /// ```
    /// # use actix_web::App;
    /// use std::time::Duration;
    ///
    /// let worker = einhorn_actix::start(|| App::new(), 0)
    ///     .configure(|server| server.workers(4).keep_alive(Duration::from_secs(75)).backlog(2048));
    /// ```
    pub fn configure(
        mut self,
        configure: impl FnOnce(ActixServer<S, B>) -> ActixServer<S, B> + 'static,
    ) -> Self {
        self.configure = Some(Box::new(configure));
        self
    }

    /// A callback for each new connection, as [`HttpServer::on_connect`] (which the worker
    /// uses itself to track connections: set yours here).
    ///
    /// # Example
    /// ```
    /// # use actix_web::App;
    /// use actix_web::rt::net::TcpStream;
    ///
    /// let worker = einhorn_actix::start(|| App::new(), 0).on_connect(|io, data| {
    ///     if let Some(tcp) = io.downcast_ref::<TcpStream>() {
    ///         data.insert(tcp.peer_addr().ok());
    ///     }
    /// });
    /// ```
    pub fn on_connect(
        mut self,
        callback: impl Fn(&dyn std::any::Any, &mut Extensions) + Send + Sync + 'static,
    ) -> Self {
        self.on_connect = Some(std::sync::Arc::new(callback));
        self
    }

    /// Serves HTTPS on every TCP listener with this rustls configuration (feature `tls`),
    /// through actix-web's own rustls support; [`crate::tls_config`] makes one from PEM files.
    /// Unix socket listeners stay plain.
    ///
    /// # Example
    /// ```no_run
    /// # use actix_web::App;
    /// let tls = einhorn_actix::tls_config("cert.pem", "key.pem")?;
    /// let worker = einhorn_actix::start(|| App::new(), 0).tls(tls);
    /// # Ok::<(), graceful_listener::tls::TlsError>(())
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: std::sync::Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Runs the worker to its end on an actix runtime of its own, from a plain `fn main`.
    /// Inside an async runtime (`#[actix_web::main]`), `.await` the builder instead.
    ///
    /// # Errors
    /// As `.await`: a [`RunError`] when the signals, a listener, the ACK or actix fail.
    ///
    /// # Panics
    /// When called from within an async runtime.
    ///
    /// # Example
    /// ```no_run
    /// # use actix_web::App;
    /// fn main() -> Result<(), einhorn_actix::RunError> {
    ///     einhorn_actix::start(|| App::new(), 0).run()?;
    ///     Ok(())
    /// }
    /// ```
    pub fn run(self) -> Result<RunReport, RunError> {
        actix_web::rt::System::new().block_on(self.into_future())
    }

    async fn execute(self) -> Result<RunReport, RunError> {
        // actix's own shutdown timeout is only a backstop: the worker cuts at its deadline,
        // and reports it.
        let actix_timeout = self.options.get_drain_timeout().as_secs().saturating_add(2);
        let mut worker = Worker::new(self.options)?;
        let mut listeners = Vec::with_capacity(self.binds.len());
        for bind in &self.binds {
            listeners.push((bind, worker.listen_std(bind)?));
        }
        // Before actix starts: nothing accepts on the (shared) sockets until it succeeds.
        worker.warm_up().await?;
        if worker.stopped_early() {
            // Stopped while warming up: never accept, leave at once.
            let stop = worker.stopped().await;
            return Ok(worker.drain(stop).await);
        }
        let handle = worker.handle();
        let signal = worker.shutdown_signal();

        let user_factory = Mutex::new(self.factory);
        let app_signal = signal.clone();
        let app: AppFactory<S, B> = Box::leak(Box::new(move || {
            let make = user_factory.lock().unwrap_or_else(|e| e.into_inner());
            DrainApp::new(make().into_factory(), app_signal.clone())
        }));
        let mut server = HttpServer::new(app);
        // The master's share of the cores for this worker (einhorn-master sets it per worker,
        // or the operator does); a `workers` of the application's own, below, wins.
        if let Some(workers) = workers_from_env() {
            server = server.workers(workers);
        }
        if let Some(configure) = self.configure {
            server = configure(server);
        }
        let mut server = server
            .disable_signals()
            .shutdown_timeout(actix_timeout)
            .on_connect(on_connect(handle.clone(), self.on_connect));
        #[cfg(feature = "tls")]
        let tls = self.tls;
        for (bind, listener) in listeners {
            let listened = match listener {
                #[cfg(feature = "tls")]
                StdListener::Tcp(l) if tls.is_some() => {
                    let config = tls.as_deref().expect("checked").clone();
                    server.listen_rustls_0_23(l, config)
                }
                StdListener::Tcp(l) => server.listen(l),
                StdListener::Unix(l) => server.listen_uds(l),
                _ => unreachable!("StdListener has two kinds"),
            };
            server = listened.map_err(|source| BindError::Io {
                bind: bind.clone(),
                source,
            })?;
        }
        let server = server.run();
        let actix = server.handle();
        let mut serving = spawn_until_started(server).await;
        if serving.is_finished() {
            return Err(RunError::Serve(server_result(serving.await).unwrap_err()));
        }

        if let Err(e) = worker.ready().await {
            handle.force_close();
            tokio::spawn(actix.stop(false));
            return Err(e.into());
        }
        // Asked by the master to move some clients to a canary, this worker ends some
        // keep-alive connections (`DrainApp`) and stops accepting meanwhile, so that they
        // reconnect elsewhere: actix's accept thread is ours to pause only through its handle.
        let pauser = tokio::spawn({
            let actix = actix.clone();
            async move {
                loop {
                    let left = graceful_listener::shed::accept_pause_begins().await;
                    actix.pause().await;
                    tokio::time::sleep(left).await;
                    actix.resume().await;
                }
            }
        });
        let stop = tokio::select! {
            stop = worker.stopped() => stop,
            ended = &mut serving => {
                if let Err(e) = server_result(ended) {
                    handle.force_close();
                    return Err(RunError::Serve(e));
                }
                tracing::info!("actix server ended on its own");
                Stop::server_ended()
            }
        };
        // Stop accepting. (actix keeps its copy of the socket until it stops; a master holds
        // the shared socket anyway, and other workers take the new connections.) The pauser
        // first, so that it never resumes what the stop paused.
        pauser.abort();
        actix.pause().await;
        if !stop.is_immediate() {
            settle_accepts(&handle, &signal).await;
        }
        let (report, ()) =
            tokio::join!(worker.drain(stop), stop_actix(actix, stop, handle, signal));
        Ok(report)
    }
}

impl<F, I, S, B> IntoFuture for Start<F, I, S, B>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request> + 'static,
    S: AppServiceFactory<B>,
    B: MessageBody + 'static,
{
    type Output = Result<RunReport, RunError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output>>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.execute())
    }
}

/// Starts actix and returns once it accepts: its server future's first poll starts every
/// actix worker, waits until each has built the app, then starts the accept thread.
async fn spawn_until_started(
    server: actix_web::dev::Server,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let mut started_tx = Some(started_tx);
    let mut server = Box::pin(server);
    let task = tokio::spawn(std::future::poll_fn(move |cx| {
        let polled = server.as_mut().poll(cx);
        if let Some(tx) = started_tx.take() {
            let _ = tx.send(());
        }
        polled
    }));
    let _ = started.await;
    task
}

fn server_result(
    ended: Result<std::io::Result<()>, tokio::task::JoinError>,
) -> std::io::Result<()> {
    match ended {
        Ok(result) => result,
        Err(e) => Err(std::io::Error::other(format!(
            "actix server task failed: {e}"
        ))),
    }
}

/// How long no connection may reach the app after the pause before the accept thread counts
/// as stopped.
const ACCEPT_QUIET: Duration = Duration::from_millis(50);
/// The most that wait takes, for a thread still handing out connections (a flood).
const ACCEPT_SETTLE_MAX: Duration = Duration::from_millis(500);

/// Waits until actix's accept thread has really stopped handing out connections.
///
/// `ServerHandle::pause` answers before the accept thread has seen the request (actix-server
/// 2.9: the server wakes the thread and replies at once), so connections accepted just
/// before it, or on its way to it, reach an actix worker's `on_connect` a moment later. A
/// drain that began with none counted would end at once and the process would exit with
/// such a connection and its client's request unread: a reset (seen under load, in a burst
/// of clients reconnecting during an upgrade). So the drain starts once no new connection
/// has been tracked for [`ACCEPT_QUIET`] (at most [`ACCEPT_SETTLE_MAX`], or until a hammer).
async fn settle_accepts(handle: &ListenerHandle, signal: &ShutdownSignal) {
    let deadline = tokio::time::Instant::now() + ACCEPT_SETTLE_MAX;
    let hammer = signal.hammer();
    tokio::pin!(hammer);
    loop {
        let seen = handle.accepted();
        tokio::select! {
            () = tokio::time::sleep(ACCEPT_QUIET) => {}
            () = &mut hammer => return,
        }
        if handle.accepted() == seen {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::debug!("actix still handing out connections after the pause; draining anyway");
            return;
        }
    }
}

/// actix's side of the drain: responses carry `Connection: close`, so busy connections close
/// themselves; an idle keep-alive connection is left to its peer (a balancer's pool may send
/// on it at any instant), which sends one more request on it or closes it, or to actix's own
/// keep-alive timeout, as while serving. actix's graceful stop, which closes idle connections
/// at once, comes only once every connection is gone or at the drain timeout (then not
/// graceful). The worker's drain decides when it is over; actix's own stop is not waited for.
async fn stop_actix(
    actix: ServerHandle,
    stop: Stop,
    handle: ListenerHandle,
    signal: ShutdownSignal,
) {
    if !stop.is_immediate() {
        tokio::select! {
            () = handle.drained() => {}
            () = signal.hammer() => {}
        }
    }
    let graceful = !stop.is_immediate() && signal.phase() < Phase::Hammer;
    tokio::spawn(actix.stop(graceful));
}
