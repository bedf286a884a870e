//! HTTPS in process (feature `tls`), with a real rustls client: the same drain as plain HTTP,
//! a `close_notify` before every graceful close, and a TLS handshake in progress at the stop
//! treated like a request head in progress: it gets the idle grace, then is closed.

#![cfg(feature = "tls")]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use einhorn_hyper::HttpConfig;
use graceful_listener_suite::tls::TestCertificate;
use support::LIMIT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn tls_client(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("a TLS handshake")
}

#[tokio::test]
async fn https_drains_like_http_and_closes_with_close_notify() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCertificate::new(dir.path());
    let server_tls = einhorn_hyper::tls_config(&cert.cert, &cert.key).unwrap();
    let grace = Duration::from_millis(400);
    let (addr, handle) =
        support::start(HttpConfig::default().tls(server_tls).idle_grace(grace)).await;
    let mut client = tls_client(addr, cert.client_config(&[b"http/1.1"])).await;
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = support::read_response(&mut client).await;
    assert!(
        head.starts_with("http/1.1 200") && !head.contains("connection: close"),
        "{head}"
    );
    assert_eq!(body, "ok");

    // Stopped: the idle connection still gets one request, answered with close...
    handle.stop();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = support::read_response(&mut client).await;
    assert!(head.contains("connection: close"), "{head}");
    // ...and then a clean TLS close: close_notify, not a bare end of the TCP stream (which
    // rustls reports as an unexpected end of file).
    let mut rest = Vec::new();
    let end = tokio::time::timeout(LIMIT, client.read_to_end(&mut rest))
        .await
        .unwrap();
    assert_eq!(end.expect("close_notify, not a truncated stream"), 0);
    tokio::time::timeout(LIMIT, handle.drained()).await.unwrap();
}

#[tokio::test]
async fn a_handshake_in_progress_at_the_stop_gets_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCertificate::new(dir.path());
    let server_tls = einhorn_hyper::tls_config(&cert.cert, &cert.key).unwrap();
    let grace = Duration::from_millis(500);
    let (addr, handle) =
        support::start(HttpConfig::default().tls(server_tls).idle_grace(grace)).await;
    // Connected, and the first bytes of a ClientHello sent: the handshake is under way.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01, 0x00]).await.unwrap();
    support::wait_live(&handle, 1).await;

    let stopped = Instant::now();
    handle.stop();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(LIMIT, stalled.read_to_end(&mut rest))
        .await
        .unwrap();
    let took = stopped.elapsed();
    assert!(closed.is_ok(), "closed, not reset: {closed:?}");
    assert!(
        took >= grace && took < grace + Duration::from_secs(2),
        "the stalled handshake was cut at the grace: {took:?}"
    );
    tokio::time::timeout(LIMIT, handle.drained()).await.unwrap();
}
