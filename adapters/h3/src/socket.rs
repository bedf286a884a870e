//! The socket quinn's endpoint reads and writes: the shared UDP socket, routed.
//!
//! Each datagram read from the shared socket goes to the worker its connection ID names: to
//! this endpoint when that is this worker (or nobody: a new client), to its owner through the
//! [relay](crate::relay) otherwise. Frames the relay brings from the other workers are read
//! too, as if they had arrived on the shared socket. Replies always leave by the shared
//! socket, so the client sees one address whichever process answers.

use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::Interest;

use crate::cid::{CidKey, Tag};
use crate::frame::{self, Arrival};
use crate::packet::{Route, route};
use crate::relay::{Relay, SendError};

/// The largest datagram read at once: a GRO batch of the shared socket.
const READ_BUF: usize = 64 * 1024;

/// What the relay moved, for the logs and the benchmark.
#[derive(Debug, Default)]
pub(crate) struct RelayCounts {
    /// Datagrams handed to another worker.
    pub(crate) relayed_out: AtomicU64,
    /// Datagrams another worker handed to this one.
    pub(crate) relayed_in: AtomicU64,
    /// Datagrams dropped: the owner's queue was full, or a frame was malformed.
    pub(crate) dropped: AtomicU64,
    /// Datagrams for a worker that has exited, left to this endpoint (which answers with a
    /// stateless reset, since the connection is gone).
    pub(crate) orphaned: AtomicU64,
    /// Frames refused: sent by another user.
    pub(crate) refused: AtomicU64,
}

/// The shared UDP socket, routed by connection ID.
#[derive(Debug)]
pub(crate) struct RoutingSocket {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
    relay: Relay,
    key: Arc<CidKey>,
    me: Tag,
    /// Whether this worker reads the shared socket (it stops once it drains and another
    /// worker serves).
    reads_shared: AtomicBool,
    inbox: Mutex<Inbox>,
    pub(crate) counts: RelayCounts,
}

#[derive(Debug)]
struct Inbox {
    buf: Box<[u8]>,
    frame: Vec<u8>,
    /// Datagrams read for this worker that did not fit in quinn's buffers this time.
    pending: VecDeque<(Arrival, Vec<u8>)>,
}

impl RoutingSocket {
    /// Wraps the shared socket. Needs a tokio runtime.
    pub(crate) fn new(
        udp: std::net::UdpSocket,
        relay: Relay,
        key: Arc<CidKey>,
        me: Tag,
    ) -> io::Result<RoutingSocket> {
        grow_buffers(&udp);
        let state = UdpSocketState::new((&udp).into())?;
        Ok(RoutingSocket {
            io: tokio::net::UdpSocket::from_std(udp)?,
            state,
            relay,
            key,
            me,
            reads_shared: AtomicBool::new(true),
            inbox: Mutex::new(Inbox {
                buf: vec![0; READ_BUF].into_boxed_slice(),
                frame: Vec::with_capacity(2048),
                pending: VecDeque::new(),
            }),
            counts: RelayCounts::default(),
        })
    }

    /// Closes this worker's end of the relay, once it has drained: datagrams for it are then
    /// the other workers' to answer (a client's Initial after this worker's Retry, whose
    /// token any worker accepts; a stateless reset for anything else, its connection gone).
    pub(crate) fn close_relay(&self) {
        self.relay.close();
    }

    /// Stops (or resumes) reading the shared socket: only the relay's frames come in then.
    pub(crate) fn read_shared(&self, read: bool) {
        self.reads_shared.store(read, Ordering::Release);
    }

    pub(crate) fn tag(&self) -> Tag {
        self.me
    }

    /// Routes one datagram read from the shared socket: `Some` when it is this worker's.
    fn route_one(&self, arrival: Arrival, datagram: &[u8], frame_buf: &mut Vec<u8>) -> bool {
        match route(&self.key, self.me, datagram) {
            Route::Mine => true,
            Route::Owner(owner) => {
                frame::encode(&arrival, datagram, frame_buf);
                match self.relay.send(owner, frame_buf) {
                    Ok(()) => {
                        self.counts.relayed_out.fetch_add(1, Ordering::Relaxed);
                        false
                    }
                    Err(SendError::Gone) => {
                        self.counts.orphaned.fetch_add(1, Ordering::Relaxed);
                        true
                    }
                    Err(SendError::Dropped(e)) => {
                        tracing::trace!(%owner, error = %e, "relay: datagram dropped");
                        self.counts.dropped.fetch_add(1, Ordering::Relaxed);
                        false
                    }
                }
            }
        }
    }
}

/// The socket buffers a busy QUIC server needs, each way: the kernel's defaults (about
/// 200 KiB) overflow in a burst of a few hundred connections, and each overflow is a loss.
const SOCKET_BUFFER: usize = 4 << 20;

/// Grows the shared socket's buffers to [`SOCKET_BUFFER`] (as far as `net.core.rmem_max` and
/// `wmem_max` let an unprivileged process), and says so when they stay smaller.
fn grow_buffers(udp: &std::net::UdpSocket) {
    let socket = socket2::SockRef::from(udp);
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    // Linux reports twice what was set (its bookkeeping overhead).
    let recv = socket.recv_buffer_size().unwrap_or(0) / 2;
    if recv < SOCKET_BUFFER {
        tracing::warn!(
            recv_buffer = recv,
            wanted = SOCKET_BUFFER,
            "the UDP receive buffer is small: datagrams will be dropped in bursts; raise net.core.rmem_max"
        );
    }
}

fn deliver(
    buf: &mut IoSliceMut<'_>,
    meta: &mut RecvMeta,
    arrival: &Arrival,
    datagram: &[u8],
) -> bool {
    if datagram.len() > buf.len() {
        return false;
    }
    buf[..datagram.len()].copy_from_slice(datagram);
    *meta = RecvMeta {
        addr: arrival.from,
        len: datagram.len(),
        stride: datagram.len(),
        ecn: arrival.ecn,
        dst_ip: arrival.to,
    };
    true
}

impl AsyncUdpSocket for RoutingSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Writable {
            socket: self,
            waiting: None,
        })
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.io.try_io(Interest::WRITABLE, || {
            self.state.send((&self.io).into(), transmit)
        })
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        let Inbox {
            buf,
            frame: frame_buf,
            pending,
        } = &mut *inbox;
        let slots = bufs.len().min(meta.len());
        let mut n = 0;
        while n < slots {
            let Some((arrival, datagram)) = pending.pop_front() else {
                break;
            };
            if deliver(&mut bufs[n], &mut meta[n], &arrival, &datagram) {
                n += 1;
            }
        }
        // Frames from the other workers.
        let mut refused = 0;
        while n < slots {
            match self.relay.poll_recv(cx, buf, &mut refused) {
                Poll::Ready(Ok(len)) => match frame::decode(&buf[..len]) {
                    Ok((arrival, datagram)) => {
                        self.counts.relayed_in.fetch_add(1, Ordering::Relaxed);
                        if deliver(&mut bufs[n], &mut meta[n], &arrival, datagram) {
                            n += 1;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "relay: frame refused");
                        self.counts.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                },
                Poll::Ready(Err(e)) => {
                    tracing::warn!(error = %e, "relay: cannot read");
                    break;
                }
                Poll::Pending => break,
            }
        }
        if refused > 0 {
            self.counts.refused.fetch_add(refused, Ordering::Relaxed);
            tracing::warn!(refused, "relay: frames from another user refused");
        }
        // The shared socket.
        while n < slots && self.reads_shared.load(Ordering::Acquire) {
            if self.io.poll_recv_ready(cx).is_pending() {
                break;
            }
            let mut one = [RecvMeta::default()];
            let read = self.io.try_io(Interest::READABLE, || {
                self.state
                    .recv((&self.io).into(), &mut [IoSliceMut::new(buf)], &mut one)
            });
            let got = match read {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    if n == 0 {
                        return Poll::Ready(Err(e));
                    }
                    break;
                }
            };
            if got == 0 {
                continue;
            }
            let [meta0] = one;
            let arrival = Arrival {
                from: meta0.addr,
                to: meta0.dst_ip,
                ecn: meta0.ecn,
            };
            let stride = meta0.stride.max(1);
            for segment in buf[..meta0.len].chunks(stride) {
                if !self.route_one(arrival, segment, frame_buf) {
                    continue;
                }
                if n < slots && deliver(&mut bufs[n], &mut meta[n], &arrival, segment) {
                    n += 1;
                } else {
                    pending.push_back((arrival, segment.to_vec()));
                }
            }
        }
        if n > 0 {
            Poll::Ready(Ok(n))
        } else {
            Poll::Pending
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        // One datagram per buffer: a GRO batch is split and routed datagram by datagram.
        1
    }
}

type WritableFuture = Pin<Box<dyn std::future::Future<Output = io::Result<()>> + Send + Sync>>;

/// Tells one of quinn's connections when the shared socket can take more. Each connection
/// has its own, and each waits with a future of its own: tokio's `poll_send_ready` keeps
/// only the last caller's waker, so connections waiting side by side would never all wake.
struct Writable {
    socket: Arc<RoutingSocket>,
    waiting: Option<WritableFuture>,
}

impl std::fmt::Debug for Writable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writable").finish_non_exhaustive()
    }
}

impl UdpPoller for Writable {
    fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let socket = this.socket.clone();
        let waiting = this
            .waiting
            .get_or_insert_with(|| Box::pin(async move { socket.io.writable().await }));
        let ready = waiting.as_mut().poll(cx);
        if ready.is_ready() {
            this.waiting = None;
        }
        ready
    }
}
