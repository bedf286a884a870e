//! An HTTP/3 client for tests (quinn + h3), as a browser or an SDK behaves: one pooled
//! connection per client, a new connection only when the server has said GOAWAY or closed it
//! (a request never sent is not a failure; a request sent and not fully answered is), no
//! retries. Its UDP socket can drop a share of datagrams both ways, to act a lossy path.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// What every client of one [`H3Clients`] saw.
#[derive(Debug, Default)]
pub struct H3Counts {
    /// Requests answered in full with a 200.
    pub ok: AtomicU64,
    /// Requests sent and not answered in full, or answered with another status.
    pub failed: AtomicU64,
    /// Connections opened.
    pub connections: AtomicU64,
    /// Connections ended by a stateless reset: a server process that did not know them.
    pub resets: AtomicU64,
    /// Requests not sent because the connection was going away (GOAWAY): sent again on a
    /// new connection, as any HTTP/3 client does.
    pub goaways: AtomicU64,
    /// Datagrams the lossy socket dropped.
    pub dropped: AtomicU64,
}

impl H3Counts {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A counter's value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Why a request failed.
#[derive(Debug)]
pub struct H3Failure(pub String);

impl fmt::Display for H3Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client endpoint and what its clients share.
#[derive(Clone)]
pub struct H3Clients {
    endpoint: quinn::Endpoint,
    server: SocketAddr,
    /// What the clients saw.
    pub counts: Arc<H3Counts>,
}

impl H3Clients {
    /// An endpoint on `127.0.0.1:0` that trusts `tls` (ALPN `h3`), dropping `loss_per_mille`
    /// of every thousand datagrams each way. Needs a tokio runtime.
    ///
    /// # Panics
    /// When the socket cannot be bound.
    pub fn new(
        server: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        loss_per_mille: u32,
    ) -> H3Clients {
        let counts = Arc::new(H3Counts::default());
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a client socket");
        let same = udp.try_clone().expect("dup the client socket");
        // Hundreds of connections on one socket: a small buffer drops datagrams in bursts,
        // which would be loss the test did not ask for.
        let _ = socket2::SockRef::from(&same).set_recv_buffer_size(4 << 20);
        let _ = socket2::SockRef::from(&same).set_send_buffer_size(4 << 20);
        let inner = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, udp).expect("wrap");
        // quinn turns GRO on; the lossy socket drops datagram by datagram, so it reads one
        // per buffer (a batch of several would be truncated to the one buffer it is given).
        let off: libc::c_int = 0;
        // SAFETY: setsockopt with a pointer to a live int of the size given.
        let set = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&same),
                libc::SOL_UDP,
                libc::UDP_GRO,
                (&raw const off).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0, "turn GRO off: {}", io::Error::last_os_error());
        let socket = Arc::new(Lossy {
            inner,
            loss_per_mille,
            state: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
            counts: counts.clone(),
        });
        let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .expect("a client endpoint");
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("a QUIC config");
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        H3Clients {
            endpoint,
            server,
            counts,
        }
    }

    /// A client with no connection yet.
    pub fn client(&self) -> H3Client {
        H3Client {
            clients: self.clone(),
            conn: None,
        }
    }
}

type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// One client: one connection at a time, kept while the server keeps it.
pub struct H3Client {
    clients: H3Clients,
    conn: Option<(quinn::Connection, Sender)>,
}

impl H3Client {
    async fn connect(&mut self) -> Result<(), H3Failure> {
        let counts = self.clients.counts.clone();
        let connecting = self
            .clients
            .endpoint
            .connect(self.clients.server, "localhost")
            .map_err(|e| H3Failure(format!("connect: {e}")))?;
        let conn = connecting
            .await
            .map_err(|e| H3Failure(format!("handshake: {e}")))?;
        H3Counts::add(&counts.connections);
        let watched = conn.clone();
        let watch_counts = counts.clone();
        tokio::spawn(async move {
            if let quinn::ConnectionError::Reset = watched.closed().await {
                H3Counts::add(&watch_counts.resets);
            }
        });
        let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
            .await
            .map_err(|e| H3Failure(format!("HTTP/3 setup: {e}")))?;
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        self.conn = Some((conn, sender));
        Ok(())
    }

    /// `GET path`: the body of a 200, read in full. A request the connection refused before
    /// sending it (GOAWAY, closed) is sent once more on a new connection; any other error
    /// counts as failed.
    ///
    /// # Errors
    /// What went wrong, once the request was sent (or could not be sent on a new connection).
    pub async fn get(&mut self, path: &str) -> Result<Bytes, H3Failure> {
        let counts = self.clients.counts.clone();
        let result = self.get_once(path, true).await;
        match &result {
            Ok(_) => H3Counts::add(&counts.ok),
            Err(_) => H3Counts::add(&counts.failed),
        }
        result
    }

    async fn get_once(&mut self, path: &str, may_reconnect: bool) -> Result<Bytes, H3Failure> {
        let usable = self
            .conn
            .as_ref()
            .is_some_and(|(conn, _)| conn.close_reason().is_none());
        if !usable {
            self.connect().await?;
        }
        let (_, sender) = self.conn.as_mut().expect("connected");
        let request = http::Request::get(format!("https://localhost{path}"))
            .body(())
            .expect("a request");
        let mut stream = match sender.send_request(request).await {
            Ok(stream) => stream,
            Err(e) if may_reconnect && not_sent(&e) => {
                H3Counts::add(&self.clients.counts.goaways);
                self.conn = None;
                return Box::pin(self.get_once(path, false)).await;
            }
            Err(e) => return Err(H3Failure(format!("send: {e}"))),
        };
        // A server that has answered may stop the rest of the request (RFC 9114 §4.1: the
        // client keeps the complete response): that is judged by the response.
        let finished = stream.finish().await;
        let response = stream.recv_response().await.map_err(|e| match &finished {
            Err(stopped) => H3Failure(format!("finish: {stopped}; response: {e}")),
            Ok(()) => H3Failure(format!("response: {e}")),
        })?;
        let mut body = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await.map_err(|e| {
            let tail = String::from_utf8_lossy(&body[body.len().saturating_sub(1024)..]);
            let last = tail
                .split_whitespace()
                .find(|w| w.starts_with("pid="))
                .unwrap_or("");
            H3Failure(format!(
                "body after {} bytes (last from {last}): {e}",
                body.len()
            ))
        })? {
            body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        if response.status() != http::StatusCode::OK {
            return Err(H3Failure(format!("status {}", response.status())));
        }
        Ok(Bytes::from(body))
    }
}

impl H3Client {
    /// Starts `POST path` and keeps its request open, for [`EchoStream::round`]s against a
    /// server that streams the body back as it arrives.
    ///
    /// # Errors
    /// What went wrong.
    pub async fn echo_stream(&mut self, path: &str) -> Result<EchoStream, H3Failure> {
        if self
            .conn
            .as_ref()
            .is_none_or(|(conn, _)| conn.close_reason().is_some())
        {
            self.connect().await?;
        }
        let (conn, sender) = self.conn.as_mut().expect("connected");
        let request = http::Request::post(format!("https://localhost{path}"))
            .body(())
            .expect("a request");
        let stream = sender
            .send_request(request)
            .await
            .map_err(|e| H3Failure(format!("send: {e}")))?;
        let (send, recv) = stream.split();
        Ok(EchoStream {
            conn: conn.clone(),
            send,
            recv,
            answered: false,
        })
    }
}

/// A request whose body the server echoes as it arrives: each round sends a chunk and
/// waits for it to come back.
pub struct EchoStream {
    /// The connection it runs on.
    pub conn: quinn::Connection,
    send: h3::client::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>,
    recv: h3::client::RequestStream<h3_quinn::RecvStream, Bytes>,
    answered: bool,
}

impl EchoStream {
    /// Sends `size` bytes and waits for them to come back: the round trip's time.
    ///
    /// # Errors
    /// What went wrong.
    pub async fn round(&mut self, size: usize) -> Result<std::time::Duration, H3Failure> {
        let began = std::time::Instant::now();
        self.send
            .send_data(Bytes::from(vec![b'x'; size]))
            .await
            .map_err(|e| H3Failure(format!("send: {e}")))?;
        if !self.answered {
            self.recv
                .recv_response()
                .await
                .map_err(|e| H3Failure(format!("response: {e}")))?;
            self.answered = true;
        }
        let mut got = 0;
        while got < size {
            let mut data = self
                .recv
                .recv_data()
                .await
                .map_err(|e| H3Failure(format!("echo: {e}")))?
                .ok_or_else(|| H3Failure("the echo ended".to_owned()))?;
            got += data.remaining();
            data.advance(data.remaining());
        }
        Ok(began.elapsed())
    }

    /// Ends the request and reads the response to its end.
    ///
    /// # Errors
    /// What went wrong.
    pub async fn finish(mut self) -> Result<(), H3Failure> {
        self.send
            .finish()
            .await
            .map_err(|e| H3Failure(format!("finish: {e}")))?;
        while self
            .recv
            .recv_data()
            .await
            .map_err(|e| H3Failure(format!("end: {e}")))?
            .is_some()
        {}
        Ok(())
    }
}

/// Whether the request was refused before anything was sent: the server had said GOAWAY, or
/// the connection was closed cleanly.
fn not_sent(e: &h3::error::StreamError) -> bool {
    match e {
        h3::error::StreamError::RemoteClosing { .. } => true,
        h3::error::StreamError::ConnectionError { 0: c, .. } => c.is_h3_no_error(),
        _ => false,
    }
}

/// A UDP socket that drops datagrams, each way, at a steady pseudo-random rate.
#[derive(Debug)]
struct Lossy {
    inner: Arc<dyn AsyncUdpSocket>,
    loss_per_mille: u32,
    state: AtomicU64,
    counts: Arc<H3Counts>,
}

impl Lossy {
    fn drop_one(&self) -> bool {
        if self.loss_per_mille == 0 {
            return false;
        }
        // xorshift64*, stepped atomically: reproducible and cheap.
        let mut x = self.state.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state.store(x, Ordering::Relaxed);
        let dropped =
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) % 1000 < u64::from(self.loss_per_mille);
        if dropped {
            H3Counts::add(&self.counts.dropped);
        }
        dropped
    }
}

impl AsyncUdpSocket for Lossy {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        if self.drop_one() {
            return Ok(());
        }
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            // Keep the datagrams not dropped, in order.
            let mut kept = 0;
            for i in 0..n {
                if self.drop_one() {
                    continue;
                }
                if kept != i {
                    let len = meta[i].len;
                    let (head, tail) = bufs.split_at_mut(i);
                    head[kept][..len].copy_from_slice(&tail[0][..len]);
                    meta[kept] = meta[i];
                }
                kept += 1;
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        // One datagram per send, so that each can be dropped alone.
        1
    }

    fn max_receive_segments(&self) -> usize {
        1
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
