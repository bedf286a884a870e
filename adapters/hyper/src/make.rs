//! Making a service for each connection: [`MakeService`], [`Shared`], [`ConnectionInfo`].

use std::future::{Future, Ready, ready};
use std::task::{Context, Poll};

use graceful_listener::Address;

/// What a server knows about a connection when it makes the connection's service.
///
/// # Example
/// ```
/// use einhorn_hyper::{ConnectionInfo, MakeService};
/// use graceful_listener::Address;
///
/// /// Gives each connection a service that knows its peer.
/// struct PerPeer;
///
/// impl MakeService for PerPeer {
///     type Service = String;
///     type Future = std::future::Ready<String>;
///     fn make_service(&mut self, info: &ConnectionInfo) -> Self::Future {
///         std::future::ready(format!("hello {}", info.peer()))
///     }
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    peer: Address,
    local: Address,
}

impl ConnectionInfo {
    /// Information about a connection from `peer` to `local`.
    ///
    /// # Example
    /// ```
    /// use einhorn_hyper::ConnectionInfo;
    /// use graceful_listener::Address;
    ///
    /// let info = ConnectionInfo::new(
    ///     Address::Tcp("127.0.0.1:50000".parse().unwrap()),
    ///     Address::Tcp("127.0.0.1:8000".parse().unwrap()),
    /// );
    /// assert_eq!(info.peer().as_tcp().unwrap().port(), 50000);
    /// ```
    pub fn new(peer: Address, local: Address) -> ConnectionInfo {
        ConnectionInfo { peer, local }
    }

    /// The client's address.
    ///
    /// # Example
    /// ```
    /// # use einhorn_hyper::ConnectionInfo;
    /// # use graceful_listener::Address;
    /// let info = ConnectionInfo::new(Address::Unix(None), Address::Unix(None));
    /// assert_eq!(info.peer(), &Address::Unix(None));
    /// ```
    pub fn peer(&self) -> &Address {
        &self.peer
    }

    /// The address the connection was accepted on.
    ///
    /// # Example
    /// ```
    /// # use einhorn_hyper::ConnectionInfo;
    /// # use graceful_listener::Address;
    /// let info = ConnectionInfo::new(Address::Unix(None), Address::Unix(Some("/run/app.sock".into())));
    /// assert_eq!(info.local().to_string(), "unix:/run/app.sock");
    /// ```
    pub fn local(&self) -> &Address {
        &self.local
    }
}

/// Makes the service that serves one connection (tower's `MakeService`, for one server).
///
/// [`Shared`] hands every connection a clone of one service; adapters implement this to give
/// their framework the connection's address (axum's `ConnectInfo`).
///
/// The service must be a [`hyper::service::Service`]; wrap a tower service in
/// [`hyper_util::service::TowerToHyperService`].
///
/// # Example
/// ```
/// use std::convert::Infallible;
/// use std::future::{Ready, ready};
/// use einhorn_hyper::{ConnectionInfo, MakeService};
/// use http_body_util::Full;
/// use hyper::{Request, Response, body::{Bytes, Incoming}};
///
/// /// Makes, for each connection, a service that tells the client its address.
/// struct MakeEcho;
///
/// struct Echo(String);
///
/// impl hyper::service::Service<Request<Incoming>> for Echo {
///     type Response = Response<Full<Bytes>>;
///     type Error = Infallible;
///     type Future = Ready<Result<Self::Response, Infallible>>;
///     fn call(&self, _req: Request<Incoming>) -> Self::Future {
///         ready(Ok(Response::new(Full::from(self.0.clone()))))
///     }
/// }
///
/// impl MakeService for MakeEcho {
///     type Service = Echo;
///     type Future = Ready<Echo>;
///     fn make_service(&mut self, info: &ConnectionInfo) -> Ready<Echo> {
///         ready(Echo(format!("you are {}\n", info.peer())))
///     }
/// }
///
/// let worker = einhorn_hyper::HttpRun::new(einhorn_hyper::HttpServer::from_make_service(MakeEcho));
/// ```
pub trait MakeService: Send + 'static {
    /// The service for one connection.
    type Service;
    /// Resolves to the service.
    type Future: Future<Output = Self::Service> + Send + 'static;

    /// Whether [`MakeService::make_service`] may be called; the accept loop waits for this
    /// before each call, as tower's `poll_ready`. Always ready unless overridden.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let _ = cx;
        Poll::Ready(())
    }

    /// Makes the service for the connection `info` describes. Called in the accept loop, so it
    /// should return quickly; the future runs on the connection's own task.
    fn make_service(&mut self, info: &ConnectionInfo) -> Self::Future;
}

/// A [`MakeService`] that gives every connection a clone of one service.
///
/// # Example
/// ```
/// use einhorn_hyper::{ConnectionInfo, MakeService, Shared};
/// use graceful_listener::Address;
///
/// # async fn example() {
/// let mut make = Shared::new("one service".to_owned());
/// let info = ConnectionInfo::new(Address::Unix(None), Address::Unix(None));
/// assert_eq!(make.make_service(&info).await, "one service");
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Shared<S>(S);

impl<S> Shared<S> {
    /// Shares `service` among all connections.
    ///
    /// # Example
    /// ```
    /// let shared = einhorn_hyper::Shared::new(());
    /// ```
    pub fn new(service: S) -> Shared<S> {
        Shared(service)
    }
}

impl<S> MakeService for Shared<S>
where
    S: Clone + Send + 'static,
{
    type Service = S;
    type Future = Ready<S>;

    fn make_service(&mut self, _info: &ConnectionInfo) -> Ready<S> {
        ready(self.0.clone())
    }
}
