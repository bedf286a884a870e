//! A request's body, read from its HTTP/3 stream as the service polls it.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h3::server::RequestStream;
use http_body::{Body, Frame, SizeHint};

/// The body of a request served over HTTP/3: its DATA frames, then its trailers.
///
/// # Example
/// ```
/// use http_body_util::BodyExt;
///
/// async fn echo(req: http::Request<einhorn_h3::RequestBody>) -> Result<http::Response<bytes::Bytes>, einhorn_h3::BoxError> {
///     let bytes = req.into_body().collect().await?.to_bytes();
///     Ok(http::Response::new(bytes))
/// }
/// ```
pub struct RequestBody {
    stream: RequestStream<h3_quinn::RecvStream, Bytes>,
    data_done: bool,
    done: bool,
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBody")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl RequestBody {
    pub(crate) fn new(stream: RequestStream<h3_quinn::RecvStream, Bytes>) -> RequestBody {
        RequestBody {
            stream,
            data_done: false,
            done: false,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = h3::error::StreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if !self.data_done {
            match ready!(self.stream.poll_recv_data(cx)) {
                Ok(Some(mut data)) => {
                    let bytes = data.copy_to_bytes(data.remaining());
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Ok(None) => self.data_done = true,
                Err(e) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
        let trailers = ready!(self.stream.poll_recv_trailers(cx));
        self.done = true;
        match trailers {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
