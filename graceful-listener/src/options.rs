//! [`WorkerOptions`]: what every worker can be told, whatever serves it; and the macro that
//! gives every builder (the core's [`Run`](crate::Run), the HTTP adapters', actix's) the same
//! methods for them, written once.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// How long a drain may take before connections are forced closed, by default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A callback for the stop, run once.
pub(crate) enum OnStop {
    Sync(Box<dyn FnOnce() + Send>),
    Async(Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>),
}

impl std::fmt::Debug for OnStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OnStop::Sync(_) => "OnStop::Sync(..)",
            OnStop::Async(_) => "OnStop::Async(..)",
        })
    }
}

/// The options of a worker's life, whatever server it runs: the drain timeout, the `on_stop`
/// callback, whether to ACK.
///
/// Every builder has these as methods ([`Run`](crate::Run), `einhorn_axum::run(..)`,
/// `einhorn_actix::start(..)`); a host that drives a [`Worker`](crate::Worker) itself passes
/// them to [`Worker::new`](crate::Worker::new).
///
/// # Example
/// ```
/// use std::time::Duration;
/// use graceful_listener::WorkerOptions;
///
/// let options = WorkerOptions::default()
///     .drain_timeout(Duration::from_secs(10))
///     .on_stop(|| eprintln!("draining"));
/// assert_eq!(options.get_drain_timeout(), Duration::from_secs(10));
/// ```
#[derive(Debug)]
#[must_use]
pub struct WorkerOptions {
    pub(crate) drain_timeout: Duration,
    pub(crate) on_stop: Option<OnStop>,
    pub(crate) ack: Option<bool>,
    pub(crate) lame_duck: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            on_stop: None,
            ack: None,
            lame_duck: Duration::ZERO,
        }
    }
}

impl WorkerOptions {
    /// The longest the drain may take; connections still open then are forced closed and the
    /// force is logged and reported. An upper bound, never a sleep: a worker with nothing in
    /// flight exits at once. Default [`DEFAULT_DRAIN_TIMEOUT`].
    ///
    /// # Example
    /// ```
    /// let options = graceful_listener::WorkerOptions::default()
    ///     .drain_timeout(std::time::Duration::from_secs(5));
    /// ```
    pub fn drain_timeout(mut self, timeout: Duration) -> WorkerOptions {
        self.drain_timeout = timeout;
        self
    }

    /// The drain timeout set by [`WorkerOptions::drain_timeout`].
    ///
    /// # Example
    /// ```
    /// let options = graceful_listener::WorkerOptions::default();
    /// assert_eq!(options.get_drain_timeout(), graceful_listener::DEFAULT_DRAIN_TIMEOUT);
    /// ```
    pub fn get_drain_timeout(&self) -> Duration {
        self.drain_timeout
    }

    /// A callback run once, when the stop begins, after accepting has stopped: a place to
    /// flush buffers or log (Go's `OnStopCallback`). It runs on the runtime, so keep it
    /// short; for slow or async work use [`WorkerOptions::on_stop_async`]. Replaces any
    /// callback set before.
    ///
    /// # Example
    /// ```
    /// let options = graceful_listener::WorkerOptions::default()
    ///     .on_stop(|| eprintln!("draining"));
    /// ```
    pub fn on_stop(mut self, callback: impl FnOnce() + Send + 'static) -> WorkerOptions {
        self.on_stop = Some(OnStop::Sync(Box::new(callback)));
        self
    }

    /// An async callback run once, when the stop begins, concurrently with the drain: a place
    /// to deregister from service discovery. The worker waits for it as for a connection, up
    /// to the drain timeout (past which it is abandoned, and that is logged). Replaces any
    /// callback set before.
    ///
    /// # Example
    /// ```
    /// let options = graceful_listener::WorkerOptions::default().on_stop_async(|| async {
    ///     // e.g. tell the service registry we are going
    ///     tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    /// });
    /// ```
    pub fn on_stop_async<F, Fut>(mut self, callback: F) -> WorkerOptions
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_stop = Some(OnStop::Async(Box::new(move || Box::pin(callback()))));
        self
    }

    /// Whether to ACK to the Einhorn master once serving. By default, ACK exactly when this
    /// process is an Einhorn worker (its parent is `EINHORN_MASTER_PID`).
    ///
    /// # Example
    /// ```
    /// let options = graceful_listener::WorkerOptions::default().ack(false);
    /// ```
    pub fn ack(mut self, ack: bool) -> WorkerOptions {
        self.ack = Some(ack);
        self
    }

    /// Kubernetes' lame duck: on SIGTERM, keep accepting and serving this long while
    /// readiness says "not ready" ([`ShutdownSignal::is_ready`](crate::ShutdownSignal::is_ready)
    /// is false, readiness routes answer 503), then drain as usual. Default zero: drain at
    /// once.
    ///
    /// Kubernetes sends SIGTERM and removes the pod from its Service's endpoints at the same
    /// time, but the endpoints reach every node and load balancer a little later: a pod that
    /// stops accepting at once refuses connections that were still routed to it. Give the
    /// lame duck a few seconds, and `terminationGracePeriodSeconds` at least the lame duck
    /// plus the drain timeout.
    ///
    /// Only SIGTERM has one: SIGUSR2 is an Einhorn upgrade, where the socket is shared and new
    /// workers take the new connections at once; SIGINT is an operator's Ctrl-C. A second
    /// signal during the lame duck ends it (SIGQUIT: stop now).
    ///
    /// # Example
    /// ```
    /// let options = graceful_listener::WorkerOptions::default()
    ///     .lame_duck(std::time::Duration::from_secs(5));
    /// ```
    pub fn lame_duck(mut self, duration: Duration) -> WorkerOptions {
        self.lame_duck = duration;
        self
    }
}

/// Gives a builder the methods of [`WorkerOptions`], forwarded to its field `$field` (a
/// `WorkerOptions`, or another builder that has them), with their docs. For the crate's own
/// builders and its adapters; not a stable interface.
///
/// `core` is the path of this crate as the expanding crate names it (for links), `setup` the
/// hidden lines of each example and `builder` an expression making the builder.
#[doc(hidden)]
#[macro_export]
macro_rules! __worker_options_methods {
    (field = $field:ident, core = $core:literal, setup = $setup:literal, builder = $builder:literal $(,)?) => {
        /// The longest the drain may take before what is left is forced closed: an upper
        /// bound, never a sleep.
        #[doc = concat!("See [`WorkerOptions::drain_timeout`](", $core, "::WorkerOptions::drain_timeout); default [`DEFAULT_DRAIN_TIMEOUT`](", $core, "::DEFAULT_DRAIN_TIMEOUT).")]
        ///
        /// # Example
        #[doc = concat!("```\n", $setup, "let worker = ", $builder, "\n    .drain_timeout(std::time::Duration::from_secs(10));\n```")]
        pub fn drain_timeout(mut self, timeout: ::std::time::Duration) -> Self {
            self.$field = self.$field.drain_timeout(timeout);
            self
        }

        /// A callback run once when the stop begins (Go's `OnStopCallback`).
        #[doc = concat!("See [`WorkerOptions::on_stop`](", $core, "::WorkerOptions::on_stop).")]
        ///
        /// # Example
        #[doc = concat!("```\n", $setup, "let worker = ", $builder, "\n    .on_stop(|| eprintln!(\"draining\"));\n```")]
        pub fn on_stop(mut self, callback: impl FnOnce() + Send + 'static) -> Self {
            self.$field = self.$field.on_stop(callback);
            self
        }

        /// An async callback run once when the stop begins, concurrently with the drain and
        /// waited for up to the drain timeout (to deregister from service discovery).
        #[doc = concat!("See [`WorkerOptions::on_stop_async`](", $core, "::WorkerOptions::on_stop_async).")]
        ///
        /// # Example
        #[doc = concat!("```\n", $setup, "let worker = ", $builder, "\n    .on_stop_async(|| async {\n        // deregister from the service registry here\n    });\n```")]
        pub fn on_stop_async<OnStopFn, OnStopFut>(mut self, callback: OnStopFn) -> Self
        where
            OnStopFn: FnOnce() -> OnStopFut + Send + 'static,
            OnStopFut: ::std::future::Future<Output = ()> + Send + 'static,
        {
            self.$field = self.$field.on_stop_async(callback);
            self
        }

        /// Kubernetes' lame duck: on SIGTERM, keep serving this long while readiness says
        /// "not ready", then drain.
        #[doc = concat!("See [`WorkerOptions::lame_duck`](", $core, "::WorkerOptions::lame_duck); default zero.")]
        ///
        /// # Example
        #[doc = concat!("```\n", $setup, "let worker = ", $builder, "\n    .lame_duck(std::time::Duration::from_secs(5));\n```")]
        pub fn lame_duck(mut self, duration: ::std::time::Duration) -> Self {
            self.$field = self.$field.lame_duck(duration);
            self
        }

        /// Whether to ACK to the Einhorn master once serving; by default, exactly when this
        /// process is an Einhorn worker.
        #[doc = concat!("See [`WorkerOptions::ack`](", $core, "::WorkerOptions::ack).")]
        ///
        /// # Example
        #[doc = concat!("```\n", $setup, "let worker = ", $builder, ".ack(false);\n```")]
        pub fn ack(mut self, ack: bool) -> Self {
            self.$field = self.$field.ack(ack);
            self
        }
    };
}
