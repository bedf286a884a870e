//! The worker's stop as handlers see it: [`StopSignal`], and the [`readyz`] readiness route.

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use graceful_listener::ShutdownSignal;

/// The worker's [`ShutdownSignal`] as a handler argument, for handlers that must end
/// something themselves when the worker stops: an event stream, a long poll, a WebSocket.
/// It costs nothing to requests that do not ask for it.
///
/// It is [`ShutdownSignal::current`]: outside a worker, a signal that never fires.
///
/// # Example
/// ```
/// use axum::{Router, routing::get};
/// use einhorn_axum::StopSignal;
///
/// async fn long_poll(StopSignal(signal): StopSignal) -> &'static str {
///     tokio::select! {
///         () = signal.stopping() => "worker stopping: ask again\n",
///         () = tokio::time::sleep(std::time::Duration::from_secs(30)) => "nothing new\n",
///     }
/// }
///
/// let app: Router = Router::new().route("/poll", get(long_poll));
/// ```
#[derive(Debug, Clone)]
pub struct StopSignal(pub ShutdownSignal);

impl<S: Sync> FromRequestParts<S> for StopSignal {
    type Rejection = Infallible;

    async fn from_request_parts(_parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(StopSignal(ShutdownSignal::current()))
    }
}

/// A readiness route: `200 ready` while the worker serves, `503 not ready` in its
/// [lame duck](graceful_listener::WorkerOptions::lame_duck) and once it stops. For a
/// Kubernetes `readinessProbe`.
///
/// # Example
/// ```
/// use axum::{Router, routing::get};
///
/// let app: Router = Router::new().route("/readyz", get(einhorn_axum::readyz));
/// ```
pub async fn readyz() -> (StatusCode, &'static str) {
    if ShutdownSignal::current().is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
