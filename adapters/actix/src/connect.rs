//! Per connection: a [`ConnectionGuard`] so the worker counts, drains and can cut it. And the
//! worker's [`ShutdownSignal`] for handlers ([`StopSignal`]).

use std::any::Any;
use std::future::{Ready, ready};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use actix_web::dev::{Extensions, Payload};
use actix_web::{FromRequest, HttpRequest};
use graceful_listener::{ConnectionGuard, ListenerHandle, ShutdownSignal};

/// A callback actix runs for each new connection (`HttpServer::on_connect`).
pub(crate) type OnConnect = Arc<dyn Fn(&dyn Any, &mut Extensions) + Send + Sync>;

/// Kept in the connection's data, so it lives as long as actix's dispatcher for it.
struct Tracked(#[allow(dead_code)] ConnectionGuard);

/// Our `on_connect`: tracks the connection, then runs the user's own callback, if any.
pub(crate) fn on_connect(
    handle: ListenerHandle,
    user: Option<OnConnect>,
) -> impl Fn(&dyn Any, &mut Extensions) + Send + Sync + 'static {
    move |io, data| {
        if let Some(fd) = socket_fd(io) {
            data.insert(Tracked(handle.track(fd)));
        } else {
            tracing::warn!("connection of an unknown kind: not tracked by the drain");
        }
        if let Some(user) = &user {
            user(io, data);
        }
    }
}

/// The socket of a connection as actix hands it to `on_connect`.
fn socket_fd(io: &dyn Any) -> Option<BorrowedFd<'_>> {
    if let Some(tcp) = io.downcast_ref::<actix_web::rt::net::TcpStream>() {
        return Some(tcp.as_fd());
    }
    #[cfg(feature = "tls")]
    if let Some(tls) = io
        .downcast_ref::<actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>>()
    {
        return Some(tls.get_ref().0.as_fd());
    }
    io.downcast_ref::<actix_web::rt::net::UnixStream>()
        .map(|unix| unix.as_fd())
}

/// The worker's [`ShutdownSignal`], as a handler argument: for handlers that must end
/// something themselves when the worker stops (an event stream, a long poll).
///
/// It is [`ShutdownSignal::current`]: outside a worker, a signal that never fires. It costs
/// nothing to requests that do not ask for it.
///
/// # Example
/// ```
/// use actix_web::{HttpResponse, get};
/// use einhorn_actix::StopSignal;
///
/// #[get("/poll")]
/// async fn long_poll(StopSignal(signal): StopSignal) -> HttpResponse {
///     tokio::select! {
///         () = signal.stopping() => HttpResponse::ServiceUnavailable().body("worker stopping\n"),
///         () = tokio::time::sleep(std::time::Duration::from_secs(30)) => HttpResponse::Ok().body("nothing new\n"),
///     }
/// }
/// ```
#[derive(Debug, Clone)]
pub struct StopSignal(pub ShutdownSignal);

impl FromRequest for StopSignal {
    type Error = std::convert::Infallible;
    type Future = Ready<Result<StopSignal, std::convert::Infallible>>;

    fn from_request(_req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(Ok(StopSignal(ShutdownSignal::current())))
    }
}

/// A readiness handler: `200 ready` while the worker serves, `503 not ready` in its
/// [lame duck](graceful_listener::WorkerOptions::lame_duck) and once it stops. For a
/// Kubernetes `readinessProbe`.
///
/// # Example
/// ```
/// use actix_web::{App, web};
///
/// let app = App::new().route("/readyz", web::get().to(einhorn_actix::readyz));
/// ```
pub async fn readyz() -> actix_web::HttpResponse {
    if ShutdownSignal::current().is_ready() {
        actix_web::HttpResponse::Ok().body("ready\n")
    } else {
        actix_web::HttpResponse::ServiceUnavailable().body("not ready\n")
    }
}
