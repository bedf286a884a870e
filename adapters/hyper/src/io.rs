//! The connection as hyper sees it: reads are counted (to tell an idle connection from one
//! whose next request is arriving, and a slow client from a busy server), HTTP/2's frames are
//! followed both ways (its shutdown PING ACK held back for a grace once draining, see
//! [`crate::h2_hold`]; its PING and SETTINGS floods cut, see [`crate::h2_calm`]; its writes
//! watched for a client that stops reading), and the close is staged.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::future::Future;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::h2_calm::{ControlBudget, goaway_calm};
use crate::h2_frames::{FrameCursor, TYPE_GOAWAY, TYPE_HEADERS};
use crate::h2_hold::PongHold;
use crate::state::{Command, ConnState};

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
    /// For HTTP/2 connections: the frames followed, both ways.
    h2: Option<Box<H2Io>>,
    /// How long the shutdown PING ACK is held once draining.
    h2_grace: Duration,
    /// Whether the first read has been seen (HTTP/2 is known from it).
    started: bool,
}

/// What an HTTP/2 connection's IO follows.
#[derive(Debug)]
struct H2Io {
    /// Once draining, takes the shutdown PING ACK out of what h2 reads, for the grace.
    hold: PongHold,
    /// Bytes to deliver before reading more: what passed the filter, then the released frame.
    pending: Vec<u8>,
    delivered: usize,
    /// When the held frame goes back.
    release: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Every frame read from the client, for the control budget and its last stream.
    read: FrameCursor,
    budget: ControlBudget,
    /// The highest stream the client opened.
    last_stream: u32,
    /// The client spent its control budget: it gets a GOAWAY with `ENHANCE_YOUR_CALM` and is
    /// closed, and h2 reads nothing more of it.
    flooded: bool,
    /// Every frame written: where a frame of our own may go in, and how many GOAWAYs h2 sent
    /// (a second one is its final GOAWAY, sent once the client answered the shutdown PING).
    written: FrameCursor,
    goaways_written: u8,
}

impl H2Io {
    fn new() -> H2Io {
        H2Io {
            hold: PongHold::new(),
            pending: Vec::new(),
            delivered: 0,
            release: None,
            read: FrameCursor::after_preface(),
            budget: ControlBudget::new(std::time::Instant::now()),
            last_stream: 0,
            flooded: false,
            written: FrameCursor::at_frame_start(),
            goaways_written: 0,
        }
    }

    /// Follows the frames of bytes read from the client; `false` once the client has spent
    /// its control budget (and then it is told to stop, once).
    fn follow_read(&mut self, bytes: &[u8], state: &ConnState) -> bool {
        let (budget, last_stream) = (&mut self.budget, &mut self.last_stream);
        let mut now = None;
        let mut flooding = self.flooded;
        self.read.feed(bytes, |header| {
            if header.kind == TYPE_HEADERS {
                *last_stream = (*last_stream).max(header.stream);
            }
            if header.asks_an_answer() && !flooding {
                flooding = !budget.spend(*now.get_or_insert_with(std::time::Instant::now));
            }
        });
        if flooding && !self.flooded {
            self.flooded = true;
            tracing::debug!(
                "HTTP/2 client floods PING or SETTINGS frames: GOAWAY ENHANCE_YOUR_CALM"
            );
            state.give(Command::Abort);
        }
        !self.flooded
    }

    /// Follows the frames of bytes h2 wrote.
    fn follow_written(&mut self, bytes: &[u8], state: &ConnState) {
        let goaways = &mut self.goaways_written;
        self.written.feed(bytes, |header| {
            if header.kind == TYPE_GOAWAY {
                *goaways = goaways.saturating_add(1);
            }
        });
        if self.goaways_written >= 2 {
            // The final GOAWAY: h2 got the client's answer to its shutdown PING.
            state.set_h2_answered();
        }
    }

    /// The frame to send before closing, if any: the GOAWAY of a flooding client, when it can
    /// go in between h2's frames.
    fn goodbye(&self) -> Option<Vec<u8>> {
        if !self.flooded {
            return None;
        }
        if !self.written.at_boundary() {
            tracing::debug!(
                "no GOAWAY for the flooding client: h2 stopped in the middle of a frame"
            );
            return None;
        }
        Some(goaway_calm(self.last_stream))
    }
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
                            let mut h2 = Box::new(H2Io::new());
                            let first = &buf.filled()[before..];
                            h2.hold.observe(first);
                            let calm = h2.follow_read(first, &self.state);
                            self.h2 = Some(h2);
                            if !calm {
                                buf.set_filled(before);
                                return Poll::Pending;
                            }
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
        if h2.flooded {
            // Nothing more of it reaches h2; its task is told to close (woken by the command).
            return Poll::Pending;
        }
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
                    if !h2.follow_read(new, &this.state) {
                        buf.set_filled(before);
                        return Poll::Pending;
                    }
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
                    if !h2.follow_read(aside.filled(), &this.state) {
                        return Poll::Pending;
                    }
                    h2.hold.filter(aside.filled(), &mut h2.pending);
                    if h2.hold.is_answered() {
                        this.state.set_h2_answered();
                    }
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
        let polled = self.conn().poll_write(cx, buf);
        if self.h2.is_some() {
            let written = match &polled {
                Poll::Ready(Ok(n)) => Some(&buf[..*n]),
                _ => None,
            };
            self.watch_h2_write(&polled, written.into_iter());
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = self.conn().poll_write_vectored(cx, bufs);
        if self.h2.is_some() {
            // The first `n` bytes of the slices, in order.
            let mut left = match &polled {
                Poll::Ready(Ok(n)) => *n,
                _ => 0,
            };
            let written = bufs.iter().map_while(|b| {
                let take = left.min(b.len());
                left -= take;
                (take > 0).then(|| &b[..take])
            });
            self.watch_h2_write(&polled, written);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = self.conn().poll_flush(cx);
        if self.h2.is_some() {
            // A TLS stream writes its records out here: a full socket shows as a pending flush.
            match &polled {
                Poll::Ready(Ok(())) => self.state.on_write(Some(0)),
                Poll::Pending => self.state.on_write(None),
                Poll::Ready(Err(_)) => {}
            }
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.conn().poll_shutdown(cx)
    }
}

impl<T: Stream> WatchedIo<T> {
    /// Tells the state how an HTTP/2 write went (`written`: the bytes the socket took).
    fn watch_h2_write<'a>(
        &mut self,
        polled: &Poll<io::Result<usize>>,
        written: impl Iterator<Item = &'a [u8]>,
    ) {
        let Some(h2) = self.h2.as_mut() else { return };
        match polled {
            Poll::Ready(Ok(n)) => {
                for bytes in written {
                    h2.follow_written(bytes, &self.state);
                }
                self.state.on_write(Some(*n));
            }
            Poll::Pending => self.state.on_write(None),
            Poll::Ready(Err(_)) => {}
        }
    }
}

impl<T: Stream> Drop for WatchedIo<T> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let goodbye = self.h2.as_ref().and_then(|h2| h2.goodbye());
        // An HTTP/2 client cut for not answering, not reading or flooding has shown it does
        // not read what it is sent: nothing is owed to it but the GOAWAY of a flood.
        let cut = self.h2.is_some() && self.state.command() == Command::Abort;
        if goodbye.is_none() && (self.read_eof || self.linger.is_zero() || cut) {
            // The client closed its side first: nothing can be left unread. Dropping closes.
            return;
        }
        // Without a runtime (the process is ending anyway) the close cannot be staged.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(linger(conn, self.linger, goodbye));
        }
    }
}

/// The staged close: `goodbye` if any (a frame of our own), FIN (for TLS, `close_notify`
/// first), then read and discard until the client's FIN, an error or [`LINGER_MAX_BYTES`],
/// then close; all of it within `max`, so that a client that reads nothing cannot hold it
/// (the FIN of a TLS stream waits for `close_notify` to be written). The connection stays
/// tracked by the listener until then, so the worker does not exit (which would close it
/// with a reset) in the middle.
async fn linger<T: Stream>(mut conn: T, max: Duration, goodbye: Option<Vec<u8>>) {
    let mut discarded = 0;
    let mut buf = [0u8; 4096];
    let outcome = tokio::time::timeout(max, async {
        if let Some(frame) = goodbye {
            let _ = conn.write_all(&frame).await;
        }
        // An error means the socket is already shut down or gone: the read below ends at once.
        let _ = conn.shutdown().await;
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
