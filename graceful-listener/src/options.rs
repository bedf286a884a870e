//! [`WorkerOptions`]: what every worker can be told, whatever serves it; and the macro that
//! gives every builder (the core's [`Run`](crate::Run), the HTTP adapters', actix's) the same
//! methods for them, written once.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// How long a drain may take before connections are forced closed, by default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a warm-up may take before the worker gives up, by default.
pub const DEFAULT_WARM_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// What a warm-up step fails with: any error.
pub(crate) type WarmUpFailure = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A warm-up step, run once before the worker accepts.
pub(crate) type WarmUp =
    Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Result<(), WarmUpFailure>> + Send>> + Send>;

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
#[must_use]
pub struct WorkerOptions {
    pub(crate) drain_timeout: Duration,
    pub(crate) on_stop: Option<OnStop>,
    pub(crate) ack: Option<bool>,
    pub(crate) lame_duck: Duration,
    pub(crate) warm_up: Option<WarmUp>,
    pub(crate) warm_up_timeout: Duration,
    pub(crate) on_ready: Option<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for WorkerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerOptions")
            .field("drain_timeout", &self.drain_timeout)
            .field("on_stop", &self.on_stop)
            .field("ack", &self.ack)
            .field("lame_duck", &self.lame_duck)
            .field("warm_up", &self.warm_up.as_ref().map(|_| ".."))
            .field("warm_up_timeout", &self.warm_up_timeout)
            .field("on_ready", &self.on_ready.as_ref().map(|_| ".."))
            .finish()
    }
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            on_stop: None,
            ack: None,
            lame_duck: Duration::ZERO,
            warm_up: None,
            warm_up_timeout: DEFAULT_WARM_UP_TIMEOUT,
            on_ready: None,
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
    /// plus the drain timeout. Behind a balancer that health-checks the readiness route, make
    /// it at least twice what the balancer takes to mark the worker down (its check interval
    /// times the failures it waits for, plus a check's timeout): the drain then closes, after
    /// the idle grace, the balancer's pooled connections that went unused in the lame duck's
    /// second half, and leaves the others to their peer.
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

    /// A step that must succeed before the worker is ready: fill a cache, open a pool, ping
    /// the database. It runs once the listeners are open but before anything accepts on
    /// them (on a socket shared with other workers, theirs take the connections meanwhile);
    /// the worker ACKs to its master, tells systemd `READY=1` and answers readiness routes
    /// 200 only once it has succeeded.
    ///
    /// If it fails, or outlasts [`WorkerOptions::warm_up_timeout`], the worker exits with
    /// [`RunError::WarmUp`](crate::RunError::WarmUp) naming the error, without ever having
    /// accepted: an upgrade to it fails and the old workers keep serving. A stop signal
    /// during the warm-up ends it, and the worker exits without ACKing. Replaces any
    /// warm-up set before.
    ///
    /// # Example
    /// ```
    /// let options = graceful_listener::WorkerOptions::default().warm_up(|| async {
    ///     // e.g. `pool.get().await?.ping().await?`
    ///     Ok::<(), std::io::Error>(())
    /// });
    /// ```
    pub fn warm_up<F, Fut, E>(mut self, step: F) -> WorkerOptions
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<WarmUpFailure>,
    {
        self.warm_up = Some(Box::new(move || {
            let step = step();
            Box::pin(async move { step.await.map_err(Into::into) })
        }));
        self
    }

    /// The longest the warm-up may take; past it the worker exits as if it had failed.
    /// Default [`DEFAULT_WARM_UP_TIMEOUT`].
    ///
    /// # Example
    /// ```
    /// let options = graceful_listener::WorkerOptions::default()
    ///     .warm_up_timeout(std::time::Duration::from_secs(5));
    /// ```
    pub fn warm_up_timeout(mut self, timeout: Duration) -> WorkerOptions {
        self.warm_up_timeout = timeout;
        self
    }

    /// A callback run once, right after the worker became ready (its ACK sent, `READY=1`
    /// told): a place to register with service discovery or to log. Not run when a stop
    /// came first. Replaces any callback set before.
    ///
    /// # Example
    /// ```
    /// let options = graceful_listener::WorkerOptions::default()
    ///     .on_ready(|| eprintln!("serving"));
    /// ```
    pub fn on_ready(mut self, callback: impl FnOnce() + Send + 'static) -> WorkerOptions {
        self.on_ready = Some(Box::new(callback));
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

        /// A step that must succeed before the worker accepts and ACKs: on error, or past
        /// its timeout, the worker exits naming the error and an upgrade to it fails.
        #[doc = concat!("See [`WorkerOptions::warm_up`](", $core, "::WorkerOptions::warm_up).")]
        ///
        /// # Example
        #[doc = concat!("```\n", $setup, "let worker = ", $builder, "\n    .warm_up(|| async {\n        // open the pool, fill the caches\n        Ok::<(), std::io::Error>(())\n    });\n```")]
        pub fn warm_up<WarmUpFn, WarmUpFut, WarmUpErr>(mut self, step: WarmUpFn) -> Self
        where
            WarmUpFn: FnOnce() -> WarmUpFut + Send + 'static,
            WarmUpFut: ::std::future::Future<Output = ::std::result::Result<(), WarmUpErr>>
                + Send
                + 'static,
            WarmUpErr: ::std::convert::Into<
                    ::std::boxed::Box<dyn ::std::error::Error + Send + Sync + 'static>,
                >,
        {
            self.$field = self.$field.warm_up(step);
            self
        }

        /// The longest the warm-up may take.
        #[doc = concat!("See [`WorkerOptions::warm_up_timeout`](", $core, "::WorkerOptions::warm_up_timeout); default [`DEFAULT_WARM_UP_TIMEOUT`](", $core, "::DEFAULT_WARM_UP_TIMEOUT).")]
        ///
        /// # Example
        #[doc = concat!("```\n", $setup, "let worker = ", $builder, "\n    .warm_up_timeout(std::time::Duration::from_secs(5));\n```")]
        pub fn warm_up_timeout(mut self, timeout: ::std::time::Duration) -> Self {
            self.$field = self.$field.warm_up_timeout(timeout);
            self
        }

        /// A callback run once, right after the worker became ready (its ACK sent).
        #[doc = concat!("See [`WorkerOptions::on_ready`](", $core, "::WorkerOptions::on_ready).")]
        ///
        /// # Example
        #[doc = concat!("```\n", $setup, "let worker = ", $builder, "\n    .on_ready(|| eprintln!(\"serving\"));\n```")]
        pub fn on_ready(mut self, callback: impl FnOnce() + Send + 'static) -> Self {
            self.$field = self.$field.on_ready(callback);
            self
        }
    };
}
