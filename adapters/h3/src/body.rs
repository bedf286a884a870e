//! A request's body, read from its HTTP/3 stream as the service polls it; and what is left
//! of it once the response is sent.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h3::server::RequestStream;
use http_body::{Body, Frame, SizeHint};

/// The most of an unread request body read (and thrown away) after the response, so that
/// the client's request ends cleanly instead of being stopped.
const UNREAD_LIMIT: usize = 64 * 1024;
/// The longest that reading takes.
const UNREAD_WAIT: Duration = Duration::from_millis(100);

struct Recv {
    stream: RequestStream<h3_quinn::RecvStream, Bytes>,
    data_done: bool,
    done: bool,
}

impl Recv {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h3::error::StreamError>>> {
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
}

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
    recv: Arc<Mutex<Recv>>,
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBody").finish_non_exhaustive()
    }
}

/// What the server keeps of a request's body, to finish reading it after the response.
pub(crate) struct Unread {
    recv: Arc<Mutex<Recv>>,
}

impl RequestBody {
    pub(crate) fn new(stream: RequestStream<h3_quinn::RecvStream, Bytes>) -> (RequestBody, Unread) {
        let recv = Arc::new(Mutex::new(Recv {
            stream,
            data_done: false,
            done: false,
        }));
        (RequestBody { recv: recv.clone() }, Unread { recv })
    }
}

impl Unread {
    /// Once the response is sent: reads what the service left of the body, briefly (the end
    /// of a small request is on its way), then asks the client to stop sending the rest with
    /// `H3_NO_ERROR`, as RFC 9114 §4.1 says a server that needs no more of it does.
    pub(crate) async fn finish(self) {
        let mut read = 0;
        let drained = tokio::time::timeout(
            UNREAD_WAIT,
            std::future::poll_fn(|cx| {
                let mut recv = self.recv.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    match ready!(recv.poll_frame(cx)) {
                        None | Some(Err(_)) => return Poll::Ready(true),
                        Some(Ok(frame)) => {
                            read += frame.data_ref().map_or(0, Bytes::len);
                            if read > UNREAD_LIMIT {
                                return Poll::Ready(false);
                            }
                        }
                    }
                }
            }),
        )
        .await
        .unwrap_or(false);
        if !drained {
            let mut recv = self.recv.lock().unwrap_or_else(|e| e.into_inner());
            recv.stream.stop_sending(h3::error::Code::H3_NO_ERROR);
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = h3::error::StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.recv
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.recv.lock().unwrap_or_else(|e| e.into_inner()).done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
