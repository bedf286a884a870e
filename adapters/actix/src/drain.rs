//! [`DrainApp`]: the user's app, wrapped so that its responses are counted by status class
//! and, once the worker stops, every HTTP/1 response is its connection's last
//! (`Connection: close`).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use actix_http::{ConnectionType, Request, Response, StatusCode, Version};
use actix_service::{Service, ServiceFactory};
use actix_web::dev::AppConfig;
use graceful_listener::ShutdownSignal;

/// The app factory of one actix worker thread, wrapped. Made by
/// [`start`](crate::start); it appears in [`ActixServer`](crate::ActixServer), the type the
/// `configure` closure sees.
pub struct DrainApp<S, B> {
    inner: S,
    signal: ShutdownSignal,
    _body: PhantomData<fn() -> B>,
}

impl<S, B> DrainApp<S, B> {
    pub(crate) fn new(inner: S, signal: ShutdownSignal) -> DrainApp<S, B> {
        DrainApp {
            inner,
            signal,
            _body: PhantomData,
        }
    }
}

impl<S, B> ServiceFactory<Request> for DrainApp<S, B>
where
    S: ServiceFactory<Request, Config = AppConfig>,
    S::Response: Into<Response<B>>,
    S::Future: 'static,
    B: 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Config = AppConfig;
    type Service = DrainAppService<S::Service, B>;
    type InitError = S::InitError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Service, S::InitError>>>>;

    fn new_service(&self, config: AppConfig) -> Self::Future {
        let made = self.inner.new_service(config);
        // One per worker thread: each request's future gets a cheap, thread-local copy.
        let signal = Rc::new(self.signal.clone());
        Box::pin(async move {
            Ok(DrainAppService {
                inner: made.await?,
                signal,
                _body: PhantomData,
            })
        })
    }
}

/// The service of a [`DrainApp`].
pub struct DrainAppService<S, B> {
    inner: S,
    signal: Rc<ShutdownSignal>,
    _body: PhantomData<fn() -> B>,
}

impl<S, B> Service<Request> for DrainAppService<S, B>
where
    S: Service<Request>,
    S::Response: Into<Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = DrainFuture<S::Future, B>;

    actix_service::forward_ready!(inner);

    fn call(&self, req: Request) -> Self::Future {
        // HTTP/2 has no `Connection` header: its streams end with the connection's GOAWAY.
        let http1 = req.version() < Version::HTTP_2;
        DrainFuture {
            inner: self.inner.call(req),
            signal: http1.then(|| self.signal.clone()),
            started: std::time::Instant::now(),
            _body: PhantomData,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of a [`DrainAppService`].
    pub struct DrainFuture<F, B> {
        #[pin]
        inner: F,
        signal: Option<Rc<ShutdownSignal>>,
        // For the response time a master's canary verdict reads (`worker:stats`).
        started: std::time::Instant,
        _body: PhantomData<fn() -> B>,
    }
}

impl<F, R, E, B> Future for DrainFuture<F, B>
where
    F: Future<Output = Result<R, E>>,
    R: Into<Response<B>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response: Response<B> = ready!(this.inner.poll(cx))?.into();
        graceful_listener::telemetry::record_response(response.status().as_u16());
        graceful_listener::telemetry::record_latency(this.started.elapsed());
        // Decided when the response is ready, just before actix writes its head: a stop
        // before this point makes this response the connection's last, and the client knows.
        // Or the master moves some of this worker's keep-alive clients to a canary
        // (`graceful_listener::shed`).
        if response.status() != StatusCode::SWITCHING_PROTOCOLS
            && this
                .signal
                .as_ref()
                .is_some_and(|s| s.is_stopping() || graceful_listener::shed::take())
        {
            response
                .head_mut()
                .set_connection_type(ConnectionType::Close);
        }
        Poll::Ready(Ok(response))
    }
}
