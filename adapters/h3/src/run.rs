//! [`run`] and [`H3Run`]: a whole HTTP/3 worker in one call.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use graceful_listener::keyring::KeyRing;
use graceful_listener::{
    Bind, ListenerHandle, RunError, RunReport, ShutdownSignal, Worker, WorkerOptions,
};
use http_body::Body;
use tower_service::Service;

use crate::BoxError;
use crate::body::RequestBody;
use crate::cid::{CidKey, TaggedCids, new_tag};
use crate::relay::{Names, Relay};
use crate::serve::{Shared, connection};
use crate::socket::RoutingSocket;

/// How often a draining worker that still reads the shared socket looks for another that
/// serves, to leave the socket to it.
const SUCCESSOR_POLL: Duration = Duration::from_millis(50);
/// The longest the endpoint waits, once drained, for its last close frames to leave.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// How long a stopping worker still takes the handshakes it began before it stopped (clients
/// it sent a Retry, whose next Initial names it): a round trip, and a lost packet's resend.
/// Its drain lasts at least this long.
const LATE_HANDSHAKES: Duration = Duration::from_secs(1);

/// Serves `service` over HTTP/3 on the UDP socket Einhorn passed as listener number
/// `fd_index` (bound by `einhorn-master -b HOST:PORT,udp`) until a stop signal, then drains:
/// GOAWAY to every client, each request in flight finished, and the datagrams of this
/// worker's connections relayed to it by the workers that read the socket after it.
///
/// `service` is a tower service (an axum `Router`, a `service_fn`...) of
/// `http::Request<`[`RequestBody`]`>`, cloned for each request. TLS is required
/// ([`H3Run::tls`]); the key ring ([`KeyRing`]) that every generation shares seals the
/// connection IDs, the stateless-reset key and the address-validation tokens.
///
/// # Example
/// ```no_run
/// use std::convert::Infallible;
/// use bytes::Bytes;
///
/// #[tokio::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let hello = tower::service_fn(|_req: http::Request<einhorn_h3::RequestBody>| async {
///         Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(Bytes::from("hello\n"))))
///     });
///     let tls = einhorn_h3::tls_config("cert.pem", "key.pem")?;
///     einhorn_h3::run(hello, 0).tls(tls).await?;
///     Ok(())
/// }
/// ```
pub fn run<S>(service: S, fd_index: usize) -> H3Run<S> {
    H3Run {
        service,
        bind: Bind::Einhorn(fd_index),
        tls: None,
        options: WorkerOptions::default(),
    }
}

/// An HTTP/3 worker, made by [`run`]: set options, then `.await` it.
#[must_use = "an H3Run does nothing until it is awaited"]
pub struct H3Run<S> {
    service: S,
    bind: Bind,
    tls: Option<Arc<rustls::ServerConfig>>,
    options: WorkerOptions,
}

impl<S> std::fmt::Debug for H3Run<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H3Run")
            .field("bind", &self.bind)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl<S> H3Run<S> {
    /// Where the UDP socket comes from: `einhorn@N` (the default, from [`run`]),
    /// `systemd@N` (a `ListenDatagram=` socket), `fd@N`, or `HOST:PORT` to bind one.
    ///
    /// # Example
    /// ```
    /// # let service = tower::service_fn(|_req: http::Request<einhorn_h3::RequestBody>| async {
    /// #     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    /// # });
    /// let worker = einhorn_h3::run(service, 0).bind("systemd@1".parse().unwrap());
    /// ```
    pub fn bind(mut self, bind: Bind) -> H3Run<S> {
        self.bind = bind;
        self
    }

    /// The TLS configuration (required: QUIC is TLS 1.3). Its ALPN should offer `h3`, as
    /// [`crate::tls_config`]'s does; its session tickets come from the shared key ring, so
    /// a client resumes across upgrades.
    ///
    /// # Example
    /// ```no_run
    /// # let service = tower::service_fn(|_req: http::Request<einhorn_h3::RequestBody>| async {
    /// #     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    /// # });
    /// let worker = einhorn_h3::run(service, 0).tls(einhorn_h3::tls_config("cert.pem", "key.pem")?);
    /// # Ok::<(), graceful_listener::tls::TlsError>(())
    /// ```
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> H3Run<S> {
        self.tls = Some(config);
        self
    }

    graceful_listener::__worker_options_methods!(
        field = options,
        core = "graceful_listener",
        setup = "# let service = tower::service_fn(|_req: http::Request<einhorn_h3::RequestBody>| async {\n#     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))\n# });\n",
        builder = "einhorn_h3::run(service, 0)",
    );
}

impl<S: H3Service> IntoFuture for H3Run<S> {
    type Output = Result<RunReport, RunError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.execute())
    }
}

/// What [`run`] serves: a tower service of `http::Request<`[`RequestBody`]`>` answering
/// with a body whose errors box. Implemented for every such service (an axum `Router`, a
/// `tower::service_fn`); named once here so that the bounds are written once.
pub trait H3Service:
    Service<
        http::Request<RequestBody>,
        Response = http::Response<Self::ResponseBody>,
        Future: Send,
        Error: Into<BoxError>,
    > + Clone
    + Send
    + Sync
    + 'static
{
    /// The response's body.
    type ResponseBody: Body<Data: Send, Error: Into<BoxError>> + Send + 'static;
}

impl<S, B> H3Service for S
where
    S: Service<http::Request<RequestBody>, Response = http::Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type ResponseBody = B;
}

fn serve_error(what: &str, e: impl std::fmt::Display) -> RunError {
    RunError::Serve(std::io::Error::other(format!("{what}: {e}")))
}

impl<S: H3Service> H3Run<S> {
    async fn execute(self) -> Result<RunReport, RunError> {
        let Some(tls) = self.tls else {
            return Err(RunError::Serve(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "HTTP/3 needs a TLS configuration: call .tls(einhorn_h3::tls_config(CERT, KEY)?)",
            )));
        };
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| serve_error("the TLS configuration cannot serve QUIC", e))?;
        let drain_timeout = self.options.get_drain_timeout();
        let mut worker = Worker::new(self.options)?;
        let udp = worker.listen_datagram(&self.bind)?;
        worker.warm_up().await?;
        if worker.stopped_early() {
            let stop = worker.stopped().await;
            return Ok(worker.drain(stop).await);
        }
        let keys = KeyRing::from_env().map_err(|e| serve_error("key ring", e))?;
        let me = new_tag();
        let names = Names::for_socket(&udp).map_err(RunError::Serve)?;
        let relay =
            Relay::bind(names.clone(), me).map_err(|e| serve_error("cannot bind the relay", e))?;
        let key = Arc::new(CidKey::new(&keys.stable_key("quic connection id")));
        let socket =
            Arc::new(RoutingSocket::new(udp, relay, key.clone(), me).map_err(RunError::Serve)?);

        let reset_key =
            ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &keys.stable_key("quic reset"));
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
        endpoint_config.cid_generator(move || {
            Box::new(TaggedCids {
                key: key.clone(),
                me,
            })
        });
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server_config.token_key(Arc::new(ring::hkdf::Prk::new_less_safe(
            ring::hkdf::HKDF_SHA256,
            &keys.stable_key("quic token"),
        )));
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config,
            Some(server_config),
            socket.clone(),
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(RunError::Serve)?;
        let mark = names
            .serving_mark(me)
            .map_err(|e| serve_error("cannot mark this worker as serving", e))?;
        tracing::info!(tag = %me, addr = ?quinn::AsyncUdpSocket::local_addr(&*socket).ok(), "serving HTTP/3");

        let handle = worker.handle();
        let signal = worker.shutdown_signal();
        let taking = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let shared = Arc::new(Shared {
            service: self.service,
            signal: signal.clone(),
        });
        let acceptor = tokio::spawn(accept(
            endpoint.clone(),
            shared,
            handle.clone(),
            signal.clone(),
            Successor {
                names: names.clone(),
                me,
            },
            taking.clone(),
        ));
        if let Err(e) = worker.ready().await {
            acceptor.abort();
            endpoint.close(0u32.into(), b"");
            return Err(e.into());
        }
        let stop = worker.stopped().await;
        drop(mark);
        // Looked at once before the drain begins, so that in an upgrade this worker reads
        // the shared socket no longer by the time it stops taking new clients.
        let reader = if names.someone_else_serves(me) {
            socket.read_shared(false);
            tracing::info!(tag = %me, "draining: another worker reads the socket, relaying to this one");
            None
        } else {
            Some(tokio::spawn(leave_the_socket(
                socket.clone(),
                names,
                signal,
            )))
        };
        let (report, ()) = tokio::join!(worker.drain(stop), tokio::time::sleep(LATE_HANDSHAKES));
        // The drain may have ended before a late handshake came: one taken meanwhile is
        // served to its end (it was sent GOAWAY at once), within the drain timeout.
        taking.store(false, std::sync::atomic::Ordering::Release);
        if handle.live() > 0 {
            let _ = tokio::time::timeout(drain_timeout, handle.drained()).await;
        }
        if let Some(reader) = reader {
            reader.abort();
        }
        // Before the acceptor goes: a handshake relayed here from now on would be refused.
        socket.close_relay();
        acceptor.abort();
        endpoint.close(0u32.into(), b"");
        let _ = tokio::time::timeout(CLOSE_WAIT, endpoint.wait_idle()).await;
        let counts = &socket.counts;
        use std::sync::atomic::Ordering::Relaxed;
        tracing::info!(
            relayed_out = counts.relayed_out.load(Relaxed),
            relayed_in = counts.relayed_in.load(Relaxed),
            dropped = counts.dropped.load(Relaxed),
            orphaned = counts.orphaned.load(Relaxed),
            refused = counts.refused.load(Relaxed),
            "HTTP/3 worker done"
        );
        Ok(report)
    }
}

/// Whether another worker serves on this worker's shared socket.
struct Successor {
    names: Names,
    me: crate::cid::Tag,
}

impl Successor {
    fn exists(&self) -> bool {
        self.names.someone_else_serves(self.me)
    }
}

/// Takes each new connection: a client not yet validated gets a Retry first, whose
/// connection ID names this worker, so that the rest of its handshake reaches this worker
/// whichever process reads the datagram.
///
/// While stopping: a handshake begun here (after this worker's Retry) is finished here, and
/// the connection sent GOAWAY at once, for [`LATE_HANDSHAKES`] at least and until the drain
/// ends; later ones are left to the other workers. A new client read in the moment before this worker
/// left the socket to its successor gets a Retry too (it is served, told GOAWAY, and
/// reconnects to the successor); with no successor (the whole server stopping), it is
/// refused.
async fn accept<S: H3Service>(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared<S>>,
    handle: ListenerHandle,
    signal: ShutdownSignal,
    successor: Successor,
    taking: Arc<std::sync::atomic::AtomicBool>,
) {
    while let Some(incoming) = endpoint.accept().await {
        if !taking.load(std::sync::atomic::Ordering::Acquire) {
            // Done: its client resends, and once this worker's relay is closed the worker
            // that reads the datagram takes it (the token is good there too).
            incoming.ignore();
            continue;
        }
        if !incoming.remote_address_validated() {
            if signal.is_stopping() && !successor.exists() {
                incoming.refuse();
            } else if incoming.may_retry() {
                if let Err(e) = incoming.retry() {
                    tracing::debug!(error = %e, "cannot send a Retry");
                }
            } else {
                incoming.ignore();
            }
            continue;
        }
        let guard = handle.track_without_socket();
        tokio::spawn(connection(incoming, shared.clone(), guard));
    }
}

/// Once stopping, leaves the shared socket to a worker that serves, as soon as there is one
/// (at once in an upgrade: the new generation serves before the old one is told to stop);
/// until then this worker reads on, relaying what is not its own.
async fn leave_the_socket(socket: Arc<RoutingSocket>, names: Names, signal: ShutdownSignal) {
    let me = socket.tag();
    loop {
        if names.someone_else_serves(me) {
            socket.read_shared(false);
            tracing::info!(tag = %me, "draining: another worker reads the socket, relaying to this one");
            return;
        }
        if signal.phase() == graceful_listener::Phase::Hammer {
            return;
        }
        tokio::time::sleep(SUCCESSOR_POLL).await;
    }
}
