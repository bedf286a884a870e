//! The connection as hyper sees it: reads are counted (to tell an idle connection from one
//! whose next request is arriving, and a slow client from a busy server), and the close is
//! staged.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use graceful_listener::Connection;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::state::ConnState;

/// The most a lingering close reads and discards before it gives up and closes anyway.
const LINGER_MAX_BYTES: usize = 1 << 20;

/// A [`Connection`] that tells its [`ConnState`] about every byte read, and whose drop is a
/// staged close: shut down our write side, read and discard what the client still sends
/// (for at most `linger`), then close.
///
/// The staged close is done in `Drop` because hyper owns the IO and never hands it back
/// (hyper-util's auto connection has no `into_parts`): whoever drops it last, hyper at the end
/// of a connection or an upgrade handler at the end of a WebSocket, gets the same close.
#[derive(Debug)]
pub(crate) struct WatchedIo {
    conn: Option<Connection>,
    state: Arc<ConnState>,
    linger: Duration,
    read_eof: bool,
}

impl WatchedIo {
    pub(crate) fn new(conn: Connection, state: Arc<ConnState>, linger: Duration) -> WatchedIo {
        WatchedIo {
            conn: Some(conn),
            state,
            linger,
            read_eof: false,
        }
    }

    fn conn(&mut self) -> Pin<&mut Connection> {
        // Only `Drop` takes the connection out.
        Pin::new(self.conn.as_mut().expect("connection present until drop"))
    }
}

impl AsyncRead for WatchedIo {
    #[inline]
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
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
                }
            }
            Poll::Pending => self.state.set_waiting(true),
            Poll::Ready(Err(_)) => {}
        }
        polled
    }
}

impl AsyncWrite for WatchedIo {
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

impl Drop for WatchedIo {
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

/// The staged close: FIN, then read and discard until the client's FIN, an error, `max` time
/// or [`LINGER_MAX_BYTES`], then close. The connection stays tracked by the listener until
/// then, so the worker does not exit (which would close it with a reset) in the middle.
async fn linger(mut conn: Connection, max: Duration) {
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
