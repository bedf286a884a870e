//! [`HttpConfig`]: the HTTP options of a server, with defaults that suit a worker.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;

use crate::supervisor::Limits;

/// Once the worker stops, how long a request head or a TLS handshake in progress may still
/// take, by default; see [`HttpConfig::idle_grace`].
pub const DEFAULT_IDLE_GRACE: Duration = Duration::from_secs(1);

/// How long a connection may take to send a request head, by default. It also bounds how
/// long a keep-alive connection may sit idle between requests.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// While a request is in progress and the server waits for the client, the least it must
/// send, by default: 1 KiB per 10 s. Any real client sends far more; a client that trickles
/// a body to hold a connection does not.
pub const DEFAULT_MIN_RATE: (u64, Duration) = (1024, Duration::from_secs(10));

/// A change to hyper-util's connection builder, for settings [`HttpConfig`] has no method for.
type BuilderHook = Arc<dyn Fn(&mut auto::Builder<TokioExecutor>) + Send + Sync>;

/// How long a closing connection keeps reading (and discarding) what its client still sends,
/// at most, by default.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(1);

/// The HTTP options of an [`HttpServer`](crate::HttpServer).
///
/// The defaults: HTTP/1.1 and HTTP/2 (chosen per connection, HTTP/2's extended CONNECT on as
/// in axum), `TCP_NODELAY`, a [`DEFAULT_HEADER_READ_TIMEOUT`] header read timeout, a
/// [`DEFAULT_MIN_RATE`] minimum rate, a [`DEFAULT_IDLE_GRACE`] idle grace and a
/// [`DEFAULT_LINGER`] linger. Every other hyper setting is one
/// [`HttpConfig::hyper_builder`] away.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use einhorn_hyper::HttpConfig;
///
/// let config = HttpConfig::default()
///     .idle_grace(Duration::from_millis(500))
///     .http2(false);
/// assert_eq!(config.get_idle_grace(), Duration::from_millis(500));
/// ```
#[derive(Clone)]
#[must_use]
pub struct HttpConfig {
    pub(crate) idle_grace: Duration,
    pub(crate) header_read_timeout: Option<Duration>,
    pub(crate) min_rate: Option<(u64, Duration)>,
    pub(crate) linger: Duration,
    pub(crate) http1: bool,
    pub(crate) http2: bool,
    pub(crate) nodelay: bool,
    hooks: Vec<BuilderHook>,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
}

impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConfig")
            .field("idle_grace", &self.idle_grace)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("min_rate", &self.min_rate)
            .field("linger", &self.linger)
            .field("http1", &self.http1)
            .field("http2", &self.http2)
            .field("nodelay", &self.nodelay)
            .field("hyper_builder_hooks", &self.hooks.len())
            .field("tls", &self.is_tls())
            .finish()
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            idle_grace: DEFAULT_IDLE_GRACE,
            header_read_timeout: Some(DEFAULT_HEADER_READ_TIMEOUT),
            min_rate: Some(DEFAULT_MIN_RATE),
            linger: DEFAULT_LINGER,
            http1: true,
            http2: true,
            nodelay: true,
            hooks: Vec::new(),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl HttpConfig {
    /// Once the worker stops, how long a connection in the middle of a request head or of a
    /// TLS handshake may still take to complete it (a head that does not gets
    /// `408 Request Timeout`); and, after a lame duck, how long an idle keep-alive connection
    /// that has not been used in the lame duck's second half (a balancer took the worker out
    /// and left it in its pool) is kept before it is closed.
    ///
    /// Other idle keep-alive connections are not closed at the grace: their peer may send on
    /// them at any instant (a load balancer that pools connections does, and does not retry a
    /// request that meets our close), so they are left to it. It sends one more request
    /// (answered with `Connection: close`) or closes them; past the idle timeout
    /// ([`HttpConfig::header_read_timeout`], as while serving) they are closed, and the drain
    /// timeout cuts what is left. Set the balancer's own idle timeout below that one.
    ///
    /// # Example
    /// ```
    /// # use std::time::Duration;
    /// let config = einhorn_hyper::HttpConfig::default().idle_grace(Duration::from_secs(2));
    /// # assert_eq!(config.get_idle_grace(), Duration::from_secs(2));
    /// ```
    pub fn idle_grace(mut self, grace: Duration) -> HttpConfig {
        self.idle_grace = grace;
        self
    }

    /// The idle grace set by [`HttpConfig::idle_grace`].
    ///
    /// # Example
    /// ```
    /// let config = einhorn_hyper::HttpConfig::default();
    /// assert_eq!(config.get_idle_grace(), einhorn_hyper::DEFAULT_IDLE_GRACE);
    /// ```
    pub fn get_idle_grace(&self) -> Duration {
        self.idle_grace
    }

    /// How long an HTTP/1 connection may take to send a request head, counted from the end
    /// of its previous response (so it also bounds how long a keep-alive connection may sit
    /// idle, serving or draining: a load balancer's idle timeout for its pooled connections
    /// must be below it, so that the balancer, not the server, closes them); `None` for no
    /// limit. A head that takes longer is answered `408 Request Timeout`
    /// and its connection closed; an idle connection is closed. Enforced by the server's
    /// supervisor, which looks at most once a second: a timeout fires up to a second late.
    ///
    /// # Example
    /// ```
    /// # use std::time::Duration;
    /// let config = einhorn_hyper::HttpConfig::default().header_read_timeout(Duration::from_secs(5));
    /// ```
    pub fn header_read_timeout(mut self, timeout: impl Into<Option<Duration>>) -> HttpConfig {
        self.header_read_timeout = timeout.into();
        self
    }

    /// While a request is in progress and the server waits for the client (a request body),
    /// the least the client must send: `bytes` per `per`, else its connection is closed.
    /// `None` for no limit. A handler that is slow to read its body does not count against
    /// the client. Default [`DEFAULT_MIN_RATE`].
    ///
    /// # Example
    /// ```
    /// # use std::time::Duration;
    /// let config = einhorn_hyper::HttpConfig::default().min_rate((4096, Duration::from_secs(5)));
    /// ```
    pub fn min_rate(mut self, rate: impl Into<Option<(u64, Duration)>>) -> HttpConfig {
        self.min_rate = rate.into();
        self
    }

    /// Changes hyper-util's connection builder directly, for any HTTP/1 or HTTP/2 setting
    /// this type has no method for (`max_concurrent_streams`, `max_headers`,
    /// `keep_alive_interval`, ...). Runs after this crate's own settings; several calls add
    /// up. hyper's own timers are yours to set here (`.timer(TokioTimer::new())`): this
    /// crate enforces its timeouts without them.
    ///
    /// # Example
    /// ```
    /// let config = einhorn_hyper::HttpConfig::default().hyper_builder(|builder| {
    ///     builder.http2().max_concurrent_streams(64);
    ///     builder.http1().max_headers(50);
    /// });
    /// ```
    pub fn hyper_builder(
        mut self,
        hook: impl Fn(&mut auto::Builder<TokioExecutor>) + Send + Sync + 'static,
    ) -> HttpConfig {
        self.hooks.push(Arc::new(hook));
        self
    }

    /// How long a closing connection keeps reading and discarding what its client still
    /// sends, at most (a staged close, RFC 9112 section 9.6). Closing a socket with unread
    /// bytes makes the kernel send a reset, which can wipe out a response the client has not
    /// read yet. The linger ends as soon as the client closes its side.
    ///
    /// Once the worker stops, the idle grace plus the linger is also how long an HTTP/2
    /// client has to answer the shutdown PING, and how long its socket may take none of the
    /// server's writes: past that it does not read, and its connection is cut.
    ///
    /// # Example
    /// ```
    /// # use std::time::Duration;
    /// let config = einhorn_hyper::HttpConfig::default().linger(Duration::from_millis(250));
    /// ```
    pub fn linger(mut self, linger: Duration) -> HttpConfig {
        self.linger = linger;
        self
    }

    /// Whether to speak HTTP/2 (with prior knowledge, as behind a proxy); on by default.
    ///
    /// # Example
    /// ```
    /// let http1_only = einhorn_hyper::HttpConfig::default().http2(false);
    /// ```
    pub fn http2(mut self, enabled: bool) -> HttpConfig {
        self.http2 = enabled;
        if !enabled {
            self.http1 = true;
        }
        self
    }

    /// Whether to speak HTTP/1; on by default. Turning it off turns HTTP/2 on.
    ///
    /// # Example
    /// ```
    /// let h2_only = einhorn_hyper::HttpConfig::default().http1(false);
    /// ```
    pub fn http1(mut self, enabled: bool) -> HttpConfig {
        self.http1 = enabled;
        if !enabled {
            self.http2 = true;
        }
        self
    }

    /// Whether to set `TCP_NODELAY` on accepted TCP connections; on by default.
    ///
    /// # Example
    /// ```
    /// let config = einhorn_hyper::HttpConfig::default().nodelay(false);
    /// ```
    pub fn nodelay(mut self, enabled: bool) -> HttpConfig {
        self.nodelay = enabled;
        self
    }

    /// Serves HTTPS with this rustls configuration (feature `tls`). Give it the ALPN
    /// protocols to offer, `h2` and `http/1.1`, or clients speak HTTP/1.1 only:
    /// [`crate::tls_config`] does, from PEM files.
    ///
    /// The drain is the same as without TLS; a close sends `close_notify` first, and a TLS
    /// handshake in progress at the stop gets the idle grace, like an idle connection.
    ///
    /// # Example
    /// ```no_run
    /// let tls = einhorn_hyper::tls_config("cert.pem", "key.pem")?;
    /// let config = einhorn_hyper::HttpConfig::default().tls(tls);
    /// # Ok::<(), graceful_listener::tls::TlsError>(())
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> HttpConfig {
        self.tls = Some(config);
        self
    }

    /// Whether the server speaks TLS.
    pub fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }

    /// The hyper-util connection builder these options describe.
    pub(crate) fn build_hyper(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // No HTTP/1 timer: with one, hyper arms a header read timer for every request; the
        // supervisor enforces the timeout instead (see `header_read_timeout`).
        builder.http1().header_read_timeout(None);
        // HTTP/2 uses its timer only for keep-alive pings, when asked for them.
        builder
            .http2()
            .timer(TokioTimer::new())
            .enable_connect_protocol();
        let mut builder = match (self.http1, self.http2) {
            (true, false) => builder.http1_only(),
            (false, true) => builder.http2_only(),
            _ => builder,
        };
        for hook in &self.hooks {
            hook(&mut builder);
        }
        builder
    }

    /// The limits the supervisor enforces.
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            header_read_timeout: self.header_read_timeout,
            min_rate: self.min_rate,
            idle_grace: self.idle_grace,
            linger: self.linger,
        }
    }
}
