//! [`App`]: what [`run`](crate::run) serves, named so that a wrong app is one clear error.

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
use axum::routing::IntoMakeService;

use crate::make::IncomingConnection;

/// An axum app that [`run`](crate::run) and [`serve`](crate::serve) can serve:
/// - a [`Router`] whose state has been given (`Router<()>`, what `.with_state(state)`
///   returns);
/// - `router.into_make_service()`, or `into_make_service()` of any tower service of requests
///   (a router wrapped in tower layers, say);
/// - `router.into_make_service_with_connect_info::<C>()`, for any `C` that is
///   [`Connected`](axum::extract::connect_info::Connected) to an [`IncomingConnection`]
///   (`SocketAddr` and [`graceful_listener::Address`] are).
///
/// Sealed: the set above is the set.
///
/// # Example
/// A router with state becomes an app once given its state:
/// ```
/// use axum::{Router, extract::State, routing::get};
///
/// #[derive(Clone)]
/// struct AppState {
///     greeting: &'static str,
/// }
///
/// fn assert_app(_: impl einhorn_axum::App) {}
///
/// let router: Router<AppState> = Router::new()
///     .route("/", get(|State(state): State<AppState>| async move { state.greeting }));
/// assert_app(router.with_state(AppState { greeting: "hello" }));
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an app einhorn-axum can serve",
    label = "expected a `Router<()>`, or `into_make_service()` or `into_make_service_with_connect_info::<C>()` of one",
    note = "a router whose handlers take `State` must be given it first: `router.with_state(state)` is a `Router<()>`"
)]
pub trait App: sealed::Sealed + Send + 'static {}

mod sealed {
    pub trait Sealed {}
}

impl sealed::Sealed for Router<()> {}
impl App for Router<()> {}

impl<S: Send + 'static> sealed::Sealed for IntoMakeService<S> {}
impl<S: Send + 'static> App for IntoMakeService<S> {}

impl<S: Send + 'static, C: 'static> sealed::Sealed for IntoMakeServiceWithConnectInfo<S, C> {}
impl<S: Send + 'static, C: 'static> App for IntoMakeServiceWithConnectInfo<S, C> {}

/// A router is its own make-service: each connection gets a clone.
impl tower_service::Service<IncomingConnection> for Router<()> {
    type Response = Router<()>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Router<()>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _conn: IncomingConnection) -> Self::Future {
        std::future::ready(Ok(self.clone()))
    }
}
