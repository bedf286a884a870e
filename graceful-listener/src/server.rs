//! The [`Server`] trait: the Rust face of Go's `Serve(net.Listener)`.

use std::future::Future;

use crate::listener::GracefulListener;

/// Anything that serves connections from a [`GracefulListener`].
///
/// A server accepts until [`GracefulListener::accept`] returns `None` (the worker is
/// stopping) and hands each connection to a task. It need not wait for those tasks:
/// [`run`](crate::run) waits for every tracked connection to close, up to the drain timeout.
/// HTTP servers watch [`GracefulListener::shutdown_signal`] to drain their keep-alive
/// connections.
///
/// Closures `FnOnce(GracefulListener) -> impl Future<Output = io::Result<()>>` are servers.
///
/// # Example
/// ```
/// use graceful_listener::{GracefulListener, Server};
/// use tokio::io::AsyncWriteExt;
///
/// struct Hello;
///
/// impl Server for Hello {
///     async fn serve(self, mut listener: GracefulListener) -> std::io::Result<()> {
///         while let Some((mut conn, _peer)) = listener.accept().await {
///             tokio::spawn(async move { conn.write_all(b"hello\n").await });
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait Server {
    /// Serves connections until the listener stops.
    ///
    /// # Errors
    /// An error ends the worker: [`run`](crate::run) reports it as
    /// [`RunError::Serve`](crate::RunError::Serve).
    fn serve(self, listener: GracefulListener) -> impl Future<Output = std::io::Result<()>> + Send;
}

impl<F, Fut> Server for F
where
    F: FnOnce(GracefulListener) -> Fut,
    Fut: Future<Output = std::io::Result<()>> + Send,
{
    fn serve(self, listener: GracefulListener) -> impl Future<Output = std::io::Result<()>> + Send {
        self(listener)
    }
}
