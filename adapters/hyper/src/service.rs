//! The service wrapper: counts requests in flight and responses by status class, and, once
//! the worker stops, makes every HTTP/1 response the connection's last (`Connection: close`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::header::{CONNECTION, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};

use crate::state::ConnState;

/// Wraps a connection's service.
#[derive(Debug, Clone)]
pub(crate) struct DrainService<S> {
    pub(crate) inner: S,
    pub(crate) state: Arc<ConnState>,
}

impl<S, ReqBody, ResBody> hyper::service::Service<Request<ReqBody>> for DrainService<S>
where
    S: hyper::service::Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<DrainBody<ResBody>>;
    type Error = S::Error;
    type Future = DrainFuture<S::Future>;

    #[inline]
    fn call(&self, req: Request<ReqBody>) -> Self::Future {
        let started = std::time::Instant::now();
        self.state.start_request(started);
        let guard = RequestGuard(self.state.clone());
        let http1 = req.version() < Version::HTTP_2;
        if !http1 {
            self.state.mark_h2();
        }
        // A successful CONNECT turns the connection into a tunnel: it has no next request.
        let may_close = http1 && req.method() != Method::CONNECT;
        DrainFuture {
            inner: self.inner.call(req),
            guard: Some(guard),
            may_close,
            started,
        }
    }
}

/// Keeps a request counted as in flight until dropped.
#[derive(Debug)]
pub(crate) struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.finish_request();
    }
}

pin_project_lite::pin_project! {
    /// The response future of a [`DrainService`].
    pub(crate) struct DrainFuture<F> {
        #[pin]
        inner: F,
        guard: Option<RequestGuard>,
        may_close: bool,
        // For the response time a master's canary verdict reads (`worker:stats`).
        started: std::time::Instant,
    }
}

impl<F, B, E> Future for DrainFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<DrainBody<B>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        graceful_listener::telemetry::record_response(response.status().as_u16());
        graceful_listener::telemetry::record_latency(this.started.elapsed());
        let guard = this.guard.take();
        // Decided when the head is ready, just before hyper writes it: a stop before this
        // point makes this response the connection's last.
        // Or the master moves some of this worker's keep-alive clients to a canary
        // (`graceful_listener::shed`).
        if *this.may_close
            && let Some(guard) = &guard
            && response.status() != StatusCode::SWITCHING_PROTOCOLS
            && (guard.0.signal.is_stopping() || graceful_listener::shed::take())
        {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(response.map(|body| DrainBody { inner: body, guard })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until it has been sent.
    pub(crate) struct DrainBody<B> {
        #[pin]
        inner: B,
        guard: Option<RequestGuard>,
    }
}

impl<B: Body> Body for DrainBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if frame.is_none() {
            this.guard.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
