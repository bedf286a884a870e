//! [`ServeListener`]: a graceful listener for code that keeps `axum::serve`.

use std::future::Future;

use graceful_listener::{Address, Connection, GracefulListener};

/// A [`GracefulListener`] that [`axum::serve()`] accepts, for code that keeps `axum::serve`.
///
/// Connections are tracked, so [`graceful_listener::run`] still waits for them, ACKs and
/// honours the drain timeout. Once the worker stops, `accept` never returns again: hook
/// [`ServeListener::stopping`] to `with_graceful_shutdown` so that axum stops too.
///
/// # Caveats
/// `axum::serve`'s own graceful shutdown closes idle keep-alive connections at once, racing
/// with clients that are sending on them: those clients see resets. [`run`](crate::run)
/// drains without that race; prefer it.
///
/// `ConnectInfo` with `axum::serve` needs axum's `tap_io` (whose `Connected` impl gives the
/// listener's address type, [`Address`]):
/// `axum::serve(listener.tap_io(|_| ()), app.into_make_service_with_connect_info::<Address>())`.
///
/// # Example
/// ```no_run
/// use axum::{Router, routing::get};
/// use einhorn_axum::ServeListener;
/// use graceful_listener::GracefulListener;
///
/// # async fn example() -> Result<(), graceful_listener::RunError> {
/// let app = Router::new().route("/", get(|| async { "hello\n" }));
/// let server = move |listener: GracefulListener| async move {
///     let listener = ServeListener::new(listener);
///     let stopping = listener.stopping();
///     axum::serve(listener, app).with_graceful_shutdown(stopping).await
/// };
/// graceful_listener::run(server, 0).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ServeListener {
    listener: GracefulListener,
}

impl ServeListener {
    /// Wraps a graceful listener.
    ///
    /// # Example
    /// ```no_run
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// let listener = graceful_listener::GracefulListener::bind(&"127.0.0.1:3000".parse()?).await?;
    /// let listener = einhorn_axum::ServeListener::new(listener);
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(listener: GracefulListener) -> ServeListener {
        ServeListener { listener }
    }

    /// Resolves once the worker stops: the signal for `with_graceful_shutdown`.
    ///
    /// # Example
    /// See [`ServeListener`].
    pub fn stopping(&self) -> impl Future<Output = ()> + Send + 'static {
        let signal = self.listener.shutdown_signal();
        async move { signal.stopping().await }
    }

    /// The graceful listener inside.
    ///
    /// # Example
    /// ```no_run
    /// # async fn example(listener: einhorn_axum::ServeListener) {
    /// let live = listener.get_ref().handle().live();
    /// # }
    /// ```
    pub fn get_ref(&self) -> &GracefulListener {
        &self.listener
    }
}

impl axum::serve::Listener for ServeListener {
    type Io = Connection;
    type Addr = Address;

    async fn accept(&mut self) -> (Connection, Address) {
        match self.listener.accept().await {
            Some(accepted) => accepted,
            // Stopped: axum's accept cannot end, so it waits for `with_graceful_shutdown`.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Address> {
        Ok(self.listener.local_addr().clone())
    }
}
