//! The connection as hyper sees it: reads are counted (to tell an idle connection from one
//! whose next request is arriving, and a slow client from a busy server), HTTP/2's shutdown
//! PING ACK is held back for a grace once draining (see [`crate::h2_hold`]), and the close is
//! staged.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::future::Future;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::h2_hold::PongHold;
use crate::state::ConnState;

/// The most a lingering close reads and discards before it gives up and closes anyway.
const LINGER_MAX_BYTES: usize = 1 << 20;

/// A connection (a [`graceful_listener::Connection`], or TLS over one) that tells its [`ConnState`] about every byte read, and whose drop is a
/// staged close: shut down our write side, read and discard what the client still sends
/// (for at most `linger`), then close.
///
/// The staged close is done in `Drop` because hyper owns the IO and never hands it back
/// (hyper-util's auto connection has no `into_parts`): whoever drops it last, hyper at the end
/// of a connection or an upgrade handler at the end of a WebSocket, gets the same close.
/// What a connection's IO is: a TCP or Unix stream, or a TLS stream over one.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

#[derive(Debug)]
pub(crate) struct WatchedIo<T: Stream> {
    conn: Option<T>,
    state: Arc<ConnState>,
    linger: Duration,
    read_eof: bool,
    /// For HTTP/2 connections: the frames followed, for holding the shutdown PING ACK.
    h2: Option<Box<H2Reading>>,
    /// How long the shutdown PING ACK is held once draining.
    h2_grace: Duration,
    /// Whether the first read has been seen (HTTP/2 is known from it).
    started: bool,
}

/// An HTTP/2 connection's reading, once it drains.
#[derive(Debug)]
struct H2Reading {
    hold: PongHold,
    /// Bytes to deliver before reading more: what passed the filter, then the released frame.
    pending: Vec<u8>,
    delivered: usize,
    /// When the held frame goes back.
    release: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T: Stream> WatchedIo<T> {
    pub(crate) fn new(
        conn: T,
        state: Arc<ConnState>,
        linger: Duration,
        h2_grace: Duration,
    ) -> WatchedIo<T> {
        WatchedIo {
            conn: Some(conn),
            state,
            linger,
            read_eof: false,
            h2: None,
            h2_grace,
            started: false,
        }
    }

    fn conn(&mut self) -> Pin<&mut T> {
        // Only `Drop` takes the connection out.
        Pin::new(self.conn.as_mut().expect("connection present until drop"))
    }
}

impl<T: Stream> AsyncRead for WatchedIo<T> {
    #[inline]
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.h2.is_some() {
            return self.poll_read_h2(cx, buf);
        }
        let before = buf.filled().len();
        let had_room = buf.remaining() > 0;
        let polled = self.conn().poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if new.is_empty() {
                    self.read_eof |= had_room;
                } else {
                    self.state.on_read(new);
                    self.state.set_waiting(false);
                    if !self.started {
                        self.started = true;
                        if self.state.observe().h2 {
                            // Seen from its preface: its frames can be followed.
                            let mut hold = PongHold::new();
                            hold.observe(&buf.filled()[before..]);
                            self.h2 = Some(Box::new(H2Reading {
                                hold,
                                pending: Vec::new(),
                                delivered: 0,
                                release: None,
                            }));
                        }
                    }
                }
            }
            Poll::Pending => self.state.set_waiting(true),
            Poll::Ready(Err(_)) => {}
        }
        polled
    }
}

impl<T: Stream> WatchedIo<T> {
    /// Reads for an HTTP/2 connection: frames followed, and once the connection drains the
    /// shutdown PING ACK held for the grace.
    fn poll_read_h2(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let h2 = this.h2.as_mut().expect("an HTTP/2 connection");
        if this.state.is_h2_closing() && !h2.hold.is_released() && !h2.hold.is_armed() {
            h2.hold.arm();
            h2.release = Some(Box::pin(tokio::time::sleep(this.h2_grace)));
        }
        loop {
            // What passed the filter (or was released) goes first.
            if h2.delivered < h2.pending.len() {
                let n = buf.remaining().min(h2.pending.len() - h2.delivered);
                buf.put_slice(&h2.pending[h2.delivered..h2.delivered + n]);
                h2.delivered += n;
                if h2.delivered == h2.pending.len() {
                    h2.pending.clear();
                    h2.delivered = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if !h2.hold.is_armed() {
                let before = buf.filled().len();
                let polled = Pin::new(this.conn.as_mut().expect("connection present until drop"))
                    .poll_read(cx, buf);
                if let Poll::Ready(Ok(())) = &polled {
                    let new = &buf.filled()[before..];
                    h2.hold.observe(new);
                    this.state.on_read(new);
                }
                return polled;
            }
            // Armed: read aside, filter into `pending`.
            let mut aside = [0u8; 4096];
            let mut aside = ReadBuf::new(&mut aside);
            match Pin::new(this.conn.as_mut().expect("connection present until drop"))
                .poll_read(cx, &mut aside)
            {
                Poll::Ready(Ok(())) if aside.filled().is_empty() => {
                    // End of file: the client closed; nothing is held for anyone now.
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(())) => {
                    this.state.on_read(aside.filled());
                    h2.hold.filter(aside.filled(), &mut h2.pending);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    let due = h2
                        .release
                        .as_mut()
                        .is_some_and(|release| release.as_mut().poll(cx).is_ready());
                    if !due {
                        return Poll::Pending;
                    }
                    h2.release = None;
                    let held = h2.hold.release();
                    if held.is_empty() {
                        // The client never answered the PING: nothing to give back; h2 sends
                        // its final GOAWAY when it does, or the drain timeout ends it.
                        return Poll::Pending;
                    }
                    tracing::debug!("HTTP/2 grace over: the shutdown PING ACK goes to h2");
                    h2.pending.extend_from_slice(&held);
                }
            }
        }
    }
}

impl<T: Stream> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.conn().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.conn().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.conn().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.conn().poll_shutdown(cx)
    }
}

impl<T: Stream> Drop for WatchedIo<T> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if self.read_eof || self.linger.is_zero() {
            // The client closed its side first: nothing can be left unread. Dropping closes.
            return;
        }
        // Without a runtime (the process is ending anyway) the close cannot be staged.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(linger(conn, self.linger));
        }
    }
}

/// The staged close: FIN (for TLS, `close_notify` first), then read and discard until the client's FIN, an error, `max` time
/// or [`LINGER_MAX_BYTES`], then close. The connection stays tracked by the listener until
/// then, so the worker does not exit (which would close it with a reset) in the middle.
async fn linger<T: Stream>(mut conn: T, max: Duration) {
    // An error means the socket is already shut down or gone: the read below ends at once.
    let _ = conn.shutdown().await;
    let mut discarded = 0;
    let mut buf = [0u8; 4096];
    let outcome = tokio::time::timeout(max, async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    discarded += n;
                    if discarded >= LINGER_MAX_BYTES {
                        return;
                    }
                }
            }
        }
    })
    .await;
    if outcome.is_err() || discarded > 0 {
        tracing::debug!(
            discarded,
            timed_out = outcome.is_err(),
            "lingering close done"
        );
    }
}
