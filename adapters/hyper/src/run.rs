//! [`run`] and [`HttpRun`]: a whole worker in one call, with the core's options and the HTTP
//! ones.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::Duration;

use graceful_listener::{Bind, Run, RunError, RunReport, Server};

use crate::config::HttpConfig;
use crate::make::Shared;
use crate::server::HttpServer;

/// Serves `service` on Einhorn's listener number `fd_index` until a stop signal, then drains
/// without a keep-alive client noticing.
///
/// `service` is a [`hyper::service::Service`] (such as [`hyper::service::service_fn`]), cloned
/// for each connection; wrap a tower service in [`hyper_util::service::TowerToHyperService`].
/// The returned [`HttpRun`] is a builder: set options, then `.await` it. See
/// [`graceful_listener::run`] for the life of a worker and [`HttpServer`] for the drain.
///
/// # Example
/// ```no_run
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use http_body_util::Full;
/// use hyper::{Request, Response, body::{Bytes, Incoming}, service::service_fn};
///
/// async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
///     Ok(Response::new(Full::new(Bytes::from("hello\n"))))
/// }
///
/// #[tokio::main]
/// async fn main() -> Result<(), graceful_listener::RunError> {
///     let report = einhorn_hyper::run(service_fn(hello), 0)
///         .drain_timeout(Duration::from_secs(10))
///         .await?;
///     eprintln!("served {} connections", report.served);
///     Ok(())
/// }
/// ```
pub fn run<S>(service: S, fd_index: usize) -> HttpRun<Shared<S>>
where
    HttpServer<Shared<S>>: Server,
{
    serve(service).bind(Bind::Einhorn(fd_index))
}

/// Like [`run`], bound with [`Bind::Auto`] (the first socket a manager passed: Einhorn,
/// systemd, Server::Starter; else `:$PORT`; else `127.0.0.1:8000`); set another spec with
/// `.bind(..)`.
///
/// # Example
/// ```no_run
/// use std::convert::Infallible;
/// use http_body_util::Full;
/// use hyper::{Request, Response, body::{Bytes, Incoming}, service::service_fn};
///
/// # async fn example() -> Result<(), einhorn_hyper::RunError> {
/// let hello = service_fn(|_req: Request<Incoming>| async {
///     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hello\n"))))
/// });
/// einhorn_hyper::serve(hello).bind("127.0.0.1:3000".parse()?).await?;
/// # Ok(())
/// # }
/// ```
pub fn serve<S>(service: S) -> HttpRun<Shared<S>>
where
    HttpServer<Shared<S>>: Server,
{
    HttpRun::new(HttpServer::new(service))
}

/// A worker serving HTTP: the options of [`graceful_listener::Run`] plus the HTTP options of
/// [`HttpConfig`]. Made by [`run`] or [`serve`] (or the adapters' `run` and `serve`); `.await`
/// it.
///
/// # Example
/// ```no_run
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use einhorn_hyper::{HttpRun, HttpServer};
/// use http_body_util::Empty;
/// use hyper::{Response, body::Bytes, service::service_fn};
///
/// # async fn example() -> Result<(), graceful_listener::RunError> {
/// let service = service_fn(|_req| async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) });
/// let report = HttpRun::new(HttpServer::new(service))
///     .bind("127.0.0.1:8080".parse().unwrap())
///     .idle_grace(Duration::from_millis(500))
///     .on_stop(|| tracing::info!("stopping"))
///     .await?;
/// # Ok(())
/// # }
/// ```
#[must_use = "an HttpRun does nothing until it is awaited"]
pub struct HttpRun<M> {
    run: Run<HttpServer<M>>,
}

impl<M> HttpRun<M> {
    /// A worker for `server`, bound with [`Bind::Auto`] (the first socket a manager passed:
    /// Einhorn, systemd, Server::Starter; else `:$PORT`; else `127.0.0.1:8000`).
    ///
    /// # Example
    /// ```
    /// # use std::convert::Infallible;
    /// # use http_body_util::Empty;
    /// # use hyper::{Response, body::Bytes, service::service_fn};
    /// # let service = service_fn(|_req| async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) });
    /// let worker = einhorn_hyper::HttpRun::new(einhorn_hyper::HttpServer::new(service));
    /// ```
    pub fn new(server: HttpServer<M>) -> HttpRun<M>
    where
        HttpServer<M>: Server,
    {
        HttpRun::from(server)
    }

    /// Where to listen. See [`Bind`] for the specs.
    ///
    /// # Example
    /// ```
    /// # use std::convert::Infallible;
    /// # use http_body_util::Empty;
    /// # use hyper::{Response, body::Bytes, service::service_fn};
    /// # let service = service_fn(|_req| async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) });
    /// let worker = einhorn_hyper::serve(service).bind("unix:/tmp/app.sock".parse().unwrap());
    /// ```
    pub fn bind(self, bind: Bind) -> HttpRun<M> {
        HttpRun {
            run: self.run.bind(bind),
        }
    }

    /// Serves another server on another listener of the same worker (an admin or metrics
    /// endpoint on `einhorn@1`, say): one ACK once all serve, one drain, one report. See
    /// [`Run::also_serve`].
    ///
    /// # Example
    /// ```
    /// # use std::convert::Infallible;
    /// # use http_body_util::Empty;
    /// # use hyper::{Response, body::Bytes, service::service_fn};
    /// # let service = service_fn(|_req| async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) });
    /// # let admin = service.clone();
    /// use graceful_listener::Bind;
    /// use einhorn_hyper::HttpServer;
    ///
    /// let worker = einhorn_hyper::run(service, 0).also_serve(Bind::Einhorn(1), HttpServer::new(admin));
    /// ```
    pub fn also_serve<T>(self, bind: Bind, server: T) -> HttpRun<M>
    where
        T: Server + Send + 'static,
    {
        HttpRun {
            run: self.run.also_serve(bind, server),
        }
    }

    graceful_listener::__worker_options_methods!(
        field = run,
        core = "graceful_listener",
        setup = "# use std::convert::Infallible;\n# use http_body_util::Empty;\n# use hyper::{Response, body::Bytes, service::service_fn};\n# let service = service_fn(|_req| async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) });\n",
        builder = "einhorn_hyper::run(service, 0)",
    );

    /// Once stopping, how long a request head or a TLS handshake in progress may still take
    /// (and, after a lame duck, an idle connection unused in its second half); see
    /// [`HttpConfig::idle_grace`]. Default [`crate::DEFAULT_IDLE_GRACE`].
    ///
    /// # Example
    /// ```
    /// # use std::convert::Infallible;
    /// # use http_body_util::Empty;
    /// # use hyper::{Response, body::Bytes, service::service_fn};
    /// # let service = service_fn(|_req| async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) });
    /// let worker = einhorn_hyper::run(service, 0).idle_grace(std::time::Duration::from_secs(2));
    /// ```
    pub fn idle_grace(self, grace: Duration) -> HttpRun<M> {
        self.map_config(|c| c.idle_grace(grace))
    }

    /// How long a request head may take; see [`HttpConfig::header_read_timeout`].
    ///
    /// # Example
    /// ```
    /// # use std::convert::Infallible;
    /// # use http_body_util::Empty;
    /// # use hyper::{Response, body::Bytes, service::service_fn};
    /// # let service = service_fn(|_req| async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) });
    /// let worker = einhorn_hyper::run(service, 0).header_read_timeout(std::time::Duration::from_secs(5));
    /// ```
    pub fn header_read_timeout(self, timeout: impl Into<Option<Duration>>) -> HttpRun<M> {
        let timeout = timeout.into();
        self.map_config(|c| c.header_read_timeout(timeout))
    }

    /// The longest a closing connection reads what its client still sends; see
    /// [`HttpConfig::linger`].
    ///
    /// # Example
    /// ```
    /// # use std::convert::Infallible;
    /// # use http_body_util::Empty;
    /// # use hyper::{Response, body::Bytes, service::service_fn};
    /// # let service = service_fn(|_req| async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) });
    /// let worker = einhorn_hyper::run(service, 0).linger(std::time::Duration::from_millis(300));
    /// ```
    pub fn linger(self, linger: Duration) -> HttpRun<M> {
        self.map_config(|c| c.linger(linger))
    }

    /// Serves HTTPS with this rustls configuration (feature `tls`); see [`HttpConfig::tls`]
    /// and [`crate::tls_config`].
    ///
    /// # Example
    /// ```no_run
    /// # use std::convert::Infallible;
    /// # use http_body_util::Empty;
    /// # use hyper::{Response, body::Bytes, service::service_fn};
    /// # let service = service_fn(|_req| async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) });
    /// let tls = einhorn_hyper::tls_config("cert.pem", "key.pem")?;
    /// let worker = einhorn_hyper::run(service, 0).tls(tls);
    /// # Ok::<(), graceful_listener::tls::TlsError>(())
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls(self, config: std::sync::Arc<rustls::ServerConfig>) -> HttpRun<M> {
        self.map_config(|c| c.tls(config))
    }

    /// Replaces every HTTP option at once.
    ///
    /// # Example
    /// ```
    /// # use std::convert::Infallible;
    /// # use http_body_util::Empty;
    /// # use hyper::{Response, body::Bytes, service::service_fn};
    /// # let service = service_fn(|_req| async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) });
    /// let worker = einhorn_hyper::run(service, 0).config(einhorn_hyper::HttpConfig::default().http2(false));
    /// ```
    pub fn config(self, config: HttpConfig) -> HttpRun<M> {
        self.map_config(|_| config)
    }

    /// Changes the HTTP options with `f`.
    ///
    /// # Example
    /// ```
    /// # use std::convert::Infallible;
    /// # use http_body_util::Empty;
    /// # use hyper::{Response, body::Bytes, service::service_fn};
    /// # let service = service_fn(|_req| async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) });
    /// let worker = einhorn_hyper::run(service, 0).map_config(|c| c.http2(false).nodelay(false));
    /// ```
    pub fn map_config(mut self, f: impl FnOnce(HttpConfig) -> HttpConfig) -> HttpRun<M> {
        let config = self.run.server_mut().config_mut();
        *config = f(std::mem::take(config));
        self
    }

    /// The core's builder underneath, for options added to it later.
    ///
    /// # Example
    /// ```
    /// # use std::convert::Infallible;
    /// # use http_body_util::Empty;
    /// # use hyper::{Response, body::Bytes, service::service_fn};
    /// # let service = service_fn(|_req| async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) });
    /// let run: graceful_listener::Run<_> = einhorn_hyper::run(service, 0).into_run();
    /// ```
    pub fn into_run(self) -> Run<HttpServer<M>> {
        self.run
    }
}

/// A worker for `server`, as [`HttpRun::new`], for code generic over the server.
impl<M> From<HttpServer<M>> for HttpRun<M> {
    fn from(server: HttpServer<M>) -> HttpRun<M> {
        HttpRun {
            run: Run::for_server(server),
        }
    }
}

impl<M> IntoFuture for HttpRun<M>
where
    HttpServer<M>: Server + Send + 'static,
{
    type Output = Result<RunReport, RunError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        self.run.into_future()
    }
}
