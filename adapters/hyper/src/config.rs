//! [`HttpConfig`]: the HTTP options of a server, with defaults that suit a worker.

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;

/// How long an idle keep-alive connection may still send one request once the worker stops,
/// by default.
pub const DEFAULT_IDLE_GRACE: Duration = Duration::from_secs(1);

/// How long a connection may take to send a request head, by default. It also bounds how
/// long a keep-alive connection may sit idle between requests.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a closing connection keeps reading (and discarding) what its client still sends,
/// at most, by default.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(1);

/// The HTTP options of an [`HttpServer`](crate::HttpServer).
///
/// The defaults: HTTP/1.1 and HTTP/2 (chosen per connection), `TCP_NODELAY`, a
/// [`DEFAULT_HEADER_READ_TIMEOUT`] header read timeout, a [`DEFAULT_IDLE_GRACE`] idle grace and
/// a [`DEFAULT_LINGER`] linger.
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
#[derive(Debug, Clone)]
#[must_use]
pub struct HttpConfig {
    pub(crate) idle_grace: Duration,
    pub(crate) header_read_timeout: Option<Duration>,
    pub(crate) linger: Duration,
    pub(crate) http1: bool,
    pub(crate) http2: bool,
    pub(crate) nodelay: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            idle_grace: DEFAULT_IDLE_GRACE,
            header_read_timeout: Some(DEFAULT_HEADER_READ_TIMEOUT),
            linger: DEFAULT_LINGER,
            http1: true,
            http2: true,
            nodelay: true,
        }
    }
}

impl HttpConfig {
    /// Once the worker stops, how long an idle HTTP/1 keep-alive connection may still send
    /// one more request (answered with `Connection: close`) before it is closed.
    ///
    /// A client that reuses a connection at the moment a server closes it sees a reset; the
    /// grace makes that moment come only after the client has been idle this long.
    /// `Duration::ZERO` closes idle connections at once, as hyper's own graceful shutdown does.
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

    /// How long an HTTP/1 connection may take to send a request head, and so how long a
    /// keep-alive connection may sit idle; `None` for no limit.
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

    /// How long a closing connection keeps reading and discarding what its client still
    /// sends, at most (a staged close, RFC 9112 section 9.6). Closing a socket with unread
    /// bytes makes the kernel send a reset, which can wipe out a response the client has not
    /// read yet. The linger ends as soon as the client closes its side.
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

    /// The hyper-util connection builder these options describe.
    pub(crate) fn hyper_builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout);
        builder.http2().timer(TokioTimer::new());
        match (self.http1, self.http2) {
            (true, false) => builder.http1_only(),
            (false, true) => builder.http2_only(),
            _ => builder,
        }
    }
}
