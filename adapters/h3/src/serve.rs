//! Serving HTTP/3 connections: each request to the service, and the drain (GOAWAY, the
//! requests in flight finished, then the connection closed).

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use graceful_listener::{ConnectionGuard, ShutdownSignal};
use h3::server::RequestResolver;
use http_body::Body;

use crate::BoxError;
use crate::body::RequestBody;
use crate::run::H3Service;

/// How many more requests a connection may start after the GOAWAY that tells its client to
/// stop (streams it had opened before the GOAWAY reached it).
const GOAWAY_GRACE_REQUESTS: usize = 64;
/// The longest a handshake may take. A live client finishes in a few round trips, even
/// through lost packets; what is left after this is a late copy of a client's Initial whose
/// client has gone on (with its connection, or elsewhere), which would otherwise hold a
/// draining worker until quinn's idle timeout (30 s).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// `H3_NO_ERROR`: the code of a connection closed because it is done.
const H3_NO_ERROR: u32 = 0x100;

/// What each connection needs from the worker.
pub(crate) struct Shared<S> {
    pub(crate) service: S,
    pub(crate) signal: ShutdownSignal,
}

/// Serves one connection from its handshake to its close, counted by `guard` meanwhile.
pub(crate) async fn connection<S: H3Service>(
    incoming: quinn::Incoming,
    shared: Arc<Shared<S>>,
    guard: ConnectionGuard,
) {
    let _guard = guard;
    let arrived = std::time::Instant::now();
    let hammer = shared.signal.hammer();
    tokio::pin!(hammer);
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, async { incoming.accept()?.await });
    let conn = tokio::select! {
        conn = handshake => match conn {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "QUIC handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(timeout = ?HANDSHAKE_TIMEOUT, "QUIC handshake not finished in time: given up");
                return;
            }
        },
        () = &mut hammer => return,
    };
    let id = conn.stable_id();
    tracing::debug!(id, pid = std::process::id(), remote = %conn.remote_address(), handshake = ?arrived.elapsed(), "HTTP/3 connection up");
    let mut h3 = match h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(
        conn.clone(),
    ))
    .await
    {
        Ok(h3) => h3,
        Err(e) => {
            tracing::debug!(error = %e, "HTTP/3 setup failed");
            return;
        }
    };
    let began = std::time::Instant::now();
    // In-flight requests, counted by the senders' lifetimes.
    let (inflight_tx, mut inflight) = tokio::sync::mpsc::channel::<()>(1);
    let stopping = shared.signal.stopping();
    tokio::pin!(stopping);
    let mut goaway_sent = false;
    loop {
        tokio::select! {
            biased;
            () = &mut hammer => {
                let stats = conn.stats();
                tracing::debug!(id, rtt = ?conn.rtt(), tx = stats.udp_tx.datagrams, rx = stats.udp_rx.datagrams, lost = stats.path.lost_packets, goaway_sent, inflight = inflight_tx.strong_count() - 1, age = ?began.elapsed(), "HTTP/3 connection cut at the drain deadline");
                conn.close(H3_NO_ERROR.into(), b"stopping now");
                return;
            }
            () = &mut stopping, if !goaway_sent => {
                goaway_sent = true;
                if let Err(e) = h3.shutdown(GOAWAY_GRACE_REQUESTS).await {
                    tracing::debug!(error = %e, "cannot send GOAWAY");
                }
            }
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    tracing::trace!(id, goaway_sent, "HTTP/3 request");
                    let service = shared.service.clone();
                    let done = inflight_tx.clone();
                    tokio::spawn(async move {
                        request(resolver, service, id).await;
                        drop(done);
                    });
                }
                Ok(None) => {
                    tracing::debug!(inflight = inflight_tx.strong_count() - 1, "HTTP/3 connection: no more requests");
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, inflight = inflight_tx.strong_count() - 1, "HTTP/3 connection ended");
                    break;
                }
            },
            () = quiet(&conn, &inflight_tx), if goaway_sent => {
                let stats = conn.stats();
                tracing::debug!(id, rtt = ?conn.rtt(), tx = stats.udp_tx.datagrams, rx = stats.udp_rx.datagrams, lost = stats.path.lost_packets, "HTTP/3 connection quiet since its GOAWAY: closing");
                break;
            }
        }
    }
    // Every request accepted gets its whole response.
    drop(inflight_tx);
    tokio::select! {
        _ = inflight.recv() => {}
        () = &mut hammer => {
            tracing::debug!("HTTP/3 connection cut at the drain deadline with requests in flight");
        }
    }
    tracing::debug!(id, pid = std::process::id(), "HTTP/3 connection closed");
    conn.close(H3_NO_ERROR.into(), b"");
}

/// The least time a connection that was sent GOAWAY must have been silent before it is
/// closed: longer than the GOAWAY's delivery plus a request's with a lost packet resent, and
/// than the loss timer of a response whose tail is lost again and again (it doubles at each
/// loss), and a slow client's time to read what it has received (a close discards it).
const QUIET_MIN: Duration = Duration::from_secs(2);

/// Resolves once the connection has been quiet, after its GOAWAY: no request in flight (the
/// sender `inflight` is the only one left) and not one datagram either way for
/// [`QUIET_MIN`] or eight round trips, whichever is longer. Most clients do not wait for
/// this: one that has read the GOAWAY closes the connection when it next needs one.
///
/// - A client that sent a request before it read the GOAWAY (the two crossed) is heard from
///   within that time, even through a lost packet: its request is then served, and the wait
///   starts again.
/// - A response whose last bytes are not yet acknowledged is still being sent (or resent,
///   at each loss timeout): closing would discard them.
/// - A client that has read the GOAWAY opens a new connection for its next request and never
///   uses this one again (h3 clients do not close it themselves).
async fn quiet(conn: &quinn::Connection, inflight: &tokio::sync::mpsc::Sender<()>) {
    let traffic = |conn: &quinn::Connection| {
        let stats = conn.stats();
        (stats.udp_rx.datagrams, stats.udp_tx.datagrams)
    };
    let mut seen = traffic(conn);
    loop {
        let wait = (conn.rtt() * 8).max(QUIET_MIN);
        tokio::time::sleep(wait).await;
        let now = traffic(conn);
        // The connection loop holds one sender; each request task holds another.
        if now == seen && inflight.strong_count() == 1 {
            return;
        }
        seen = now;
    }
}

/// Reads one request, calls the service, sends its response.
async fn request<S: H3Service>(
    resolver: RequestResolver<h3_quinn::Connection, Bytes>,
    mut service: S,
    id: usize,
) {
    let (request, stream) = match resolver.resolve_request().await {
        Ok(resolved) => {
            tracing::debug!(id, pid = std::process::id(), uri = %resolved.0.uri(), "HTTP/3 request");
            resolved
        }
        Err(e) => {
            tracing::debug!(error = %e, "cannot read a request");
            return;
        }
    };
    let (mut send, recv) = stream.split();
    let (body, unread) = RequestBody::new(recv);
    let request = request.map(|()| body);
    // Errors are boxed at once: the service's own error type need not be `Send`.
    let ready: Result<(), BoxError> = poll_fn(|cx| service.poll_ready(cx))
        .await
        .map_err(Into::into);
    let response: Result<_, BoxError> = match ready {
        Ok(()) => service.call(request).await.map_err(Into::into),
        Err(e) => Err(e),
    };
    let response = match response {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(error = %e, "service failed");
            let mut response = http::Response::new(());
            *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            let _ = send.send_response(response).await;
            let _ = send.finish().await;
            unread.finish().await;
            return;
        }
    };
    let (parts, body) = response.into_parts();
    if let Err(e) = send
        .send_response(http::Response::from_parts(parts, ()))
        .await
    {
        tracing::debug!(error = %e, "cannot send a response head");
        return;
    }
    let mut body = std::pin::pin!(body);
    loop {
        let frame: Option<Result<_, BoxError>> = poll_fn(|cx| body.as_mut().poll_frame(cx))
            .await
            .map(|frame| frame.map_err(Into::into));
        let Some(frame) = frame else { break };
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                tracing::error!(error = %e, "response body failed");
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return;
            }
        };
        let sent = match frame.into_data() {
            Ok(mut data) => send.send_data(data.copy_to_bytes(data.remaining())).await,
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => send.send_trailers(trailers).await,
                Err(_) => Ok(()),
            },
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "cannot send a response body");
            return;
        }
    }
    if let Err(e) = send.finish().await {
        tracing::debug!(error = %e, "cannot finish a response");
    }
    unread.finish().await;
}
