//! Connection info for axum: [`IncomingConnection`], and the make-service glue.

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::extract::connect_info::Connected;
use einhorn_hyper::{ConnectionInfo, MakeService};
use graceful_listener::Address;

use crate::App;
use hyper_util::service::TowerToHyperService;

/// A connection as axum's make-services see it: what
/// [`ConnectInfo`](axum::extract::ConnectInfo) is made from.
///
/// `SocketAddr` and [`Address`] are [`Connected`] to it, so
/// `app.into_make_service_with_connect_info::<SocketAddr>()` works with [`run`](crate::run);
/// so can your own type.
///
/// # Example
/// ```
/// use axum::extract::connect_info::Connected;
/// use einhorn_axum::IncomingConnection;
///
/// /// Only the client's port.
/// #[derive(Clone)]
/// struct PeerPort(u16);
///
/// impl Connected<IncomingConnection> for PeerPort {
///     fn connect_info(conn: IncomingConnection) -> Self {
///         PeerPort(conn.peer().as_tcp().map_or(0, |addr| addr.port()))
///     }
/// }
/// ```
#[derive(Debug, Clone)]
pub struct IncomingConnection {
    info: ConnectionInfo,
}

impl IncomingConnection {
    /// The client's address.
    ///
    /// # Example
    /// ```
    /// # use einhorn_axum::IncomingConnection;
    /// fn log(conn: &IncomingConnection) {
    ///     println!("from {}", conn.peer());
    /// }
    /// ```
    pub fn peer(&self) -> &Address {
        self.info.peer()
    }

    /// The address the connection was accepted on.
    ///
    /// # Example
    /// ```
    /// # use einhorn_axum::IncomingConnection;
    /// fn log(conn: &IncomingConnection) {
    ///     println!("on {}", conn.local());
    /// }
    /// ```
    pub fn local(&self) -> &Address {
        self.info.local()
    }
}

/// The client's TCP address; for a Unix socket client, which has none, `0.0.0.0:0`.
impl Connected<IncomingConnection> for SocketAddr {
    fn connect_info(conn: IncomingConnection) -> Self {
        conn.peer()
            .as_tcp()
            .unwrap_or(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0))
    }
}

/// The client's address, TCP or Unix.
impl Connected<IncomingConnection> for Address {
    fn connect_info(conn: IncomingConnection) -> Self {
        conn.info.peer().clone()
    }
}

/// Turns an axum make-service (a [`Router`](axum::Router), `into_make_service()`,
/// `into_make_service_with_connect_info()`) into the [`MakeService`] of the HTTP engine.
///
/// Made by [`run`](crate::run) and [`serve`](crate::serve); you rarely name it.
///
/// # Example
/// ```
/// use axum::{Router, routing::get};
/// use einhorn_axum::AxumMakeService;
///
/// let app: Router = Router::new().route("/", get(|| async { "hello" }));
/// let server = einhorn_hyper::HttpServer::from_make_service(AxumMakeService::new(app));
/// // the same as
/// let server = einhorn_axum::server(Router::new().route("/", get(|| async { "hello" })));
/// ```
#[derive(Debug, Clone)]
pub struct AxumMakeService<M>(M);

impl<M> AxumMakeService<M> {
    /// Wraps an axum make-service.
    ///
    /// # Example
    /// ```
    /// let make = einhorn_axum::AxumMakeService::new(axum::Router::new().into_make_service());
    /// ```
    pub fn new(make: M) -> AxumMakeService<M> {
        AxumMakeService(make)
    }
}

impl<M, S> MakeService for AxumMakeService<M>
where
    M: App + tower_service::Service<IncomingConnection, Response = S, Error = Infallible>,
    M::Future: Send + 'static,
{
    type Service = TowerToHyperService<S>;
    type Future = MakeFuture<M::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // The error is `Infallible`.
        self.0.poll_ready(cx).map(|_| ())
    }

    fn make_service(&mut self, info: &ConnectionInfo) -> Self::Future {
        MakeFuture {
            inner: self.0.call(IncomingConnection { info: info.clone() }),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`AxumMakeService`]: the axum make-service's, made a hyper service.
    #[derive(Debug)]
    pub struct MakeFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, S> Future for MakeFuture<F>
where
    F: Future<Output = Result<S, Infallible>>,
{
    type Output = TowerToHyperService<S>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Ok(service) = ready!(self.project().inner.poll(cx));
        Poll::Ready(TowerToHyperService::new(service))
    }
}
