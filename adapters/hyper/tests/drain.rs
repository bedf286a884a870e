//! The keep-alive-safe drain, in process: a real listener on loopback, raw HTTP/1 clients.

mod support;

use std::time::{Duration, Instant};

use einhorn_hyper::HttpConfig;
use hyper::Request;
use hyper::body::Bytes;
use support::{LIMIT, expect_clean_close, get, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn idle_keep_alive_connection_gets_one_more_request_after_the_stop() {
    let (addr, handle) = start(HttpConfig::default().idle_grace(Duration::from_millis(800))).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    let (head, body) = get(&mut client, "/stopping").await;
    assert!(
        head.starts_with("http/1.1 200") && !head.contains("connection: close"),
        "{head}"
    );
    assert_eq!(body, "false");

    handle.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Idle for 300 ms after the stop: still served, and told to go away.
    let (head, body) = get(&mut client, "/stopping").await;
    assert_eq!(body, "true", "handlers see the stop");
    assert!(
        head.starts_with("http/1.1 200") && head.contains("connection: close"),
        "{head}"
    );
    expect_clean_close(&mut client).await;
    tokio::time::timeout(LIMIT, handle.drained()).await.unwrap();
}

/// A balancer's pooled connection: it may send on it at any instant, so the drain does not
/// close it after the idle grace (the peer's request would cross our close and fail, with no
/// retry). Past the grace it still takes a request, answered with `Connection: close`.
#[tokio::test]
async fn idle_connection_is_left_to_its_peer_past_the_grace() {
    let grace = Duration::from_millis(200);
    let (addr, handle) = start(HttpConfig::default().idle_grace(grace)).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    get(&mut client, "/").await;
    handle.stop();
    // Three graces: the connection stays open (this read ends only if the server closes).
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(3 * grace, client.read(&mut byte)).await;
    assert!(closed.is_err(), "closed during the drain: {closed:?}");
    let (head, body) = get(&mut client, "/stopping").await;
    assert_eq!(body, "true");
    assert!(
        head.starts_with("http/1.1 200") && head.contains("connection: close"),
        "{head}"
    );
    expect_clean_close(&mut client).await;
    drop(client);
    tokio::time::timeout(LIMIT, handle.drained()).await.unwrap();
}

/// An idle connection whose peer neither uses nor closes it is closed at the idle timeout
/// (`header_read_timeout`), as while serving, cleanly; not at the idle grace.
#[tokio::test]
async fn idle_connection_is_closed_cleanly_at_the_idle_timeout() {
    let grace = Duration::from_millis(100);
    let idle_timeout = Duration::from_millis(1500);
    let (addr, handle) = start(
        HttpConfig::default()
            .idle_grace(grace)
            .header_read_timeout(idle_timeout),
    )
    .await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    get(&mut client, "/").await;
    let idle_since = Instant::now();
    handle.stop();
    expect_clean_close(&mut client).await;
    let waited = idle_since.elapsed();
    assert!(
        waited >= idle_timeout,
        "closed after {waited:?} idle, before the idle timeout"
    );
    // The supervisor looks at most once a second.
    assert!(
        waited < idle_timeout + Duration::from_secs(2),
        "closed only after {waited:?}"
    );
    drop(client);
    tokio::time::timeout(LIMIT, handle.drained()).await.unwrap();
}

#[tokio::test]
async fn request_in_flight_at_the_stop_completes_and_closes() {
    let (addr, handle) = start(HttpConfig::default()).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    let slow = tokio::spawn(async move {
        let response = get(&mut client, "/sleep/500").await;
        expect_clean_close(&mut client).await;
        response
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    handle.stop();
    let (head, body) = slow.await.unwrap();
    assert!(
        head.starts_with("http/1.1 200") && head.contains("connection: close"),
        "{head}"
    );
    assert_eq!(body, "ok");
    tokio::time::timeout(LIMIT, handle.drained()).await.unwrap();
}

#[tokio::test]
async fn unread_request_body_does_not_turn_the_close_into_a_reset() {
    // The handler never reads the body, and the server closes after answering (it is
    // stopping). A plain close with the body unread sends a reset: the client's upload fails,
    // and on a real network the reset can overtake the response and wipe it out. The staged
    // close reads and discards the rest instead.
    // (With `.linger(Duration::ZERO)` this test fails: the upload is reset.)
    let (addr, handle) = start(HttpConfig::default()).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // A small send buffer, so the body is still being sent when the server answers.
    socket.set_send_buffer_size(32 * 1024).unwrap();
    let mut client = socket.connect(addr).await.unwrap();
    get(&mut client, "/").await;
    handle.stop();
    let body = vec![b'x'; 512 * 1024];
    let head = format!(
        "POST / HTTP/1.1\r\nhost: test\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await.unwrap();
    let (mut read, mut write) = client.into_split();
    let upload = tokio::spawn(async move { write.write_all(&body).await.map(|()| write) });
    let mut response = Vec::new();
    let got = tokio::time::timeout(LIMIT, read.read_to_end(&mut response))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&response).to_ascii_lowercase();
    assert!(got.is_ok(), "read failed ({got:?}) after {text:?}");
    assert!(
        text.starts_with("http/1.1 200") && text.contains("connection: close"),
        "{text}"
    );
    let upload = tokio::time::timeout(LIMIT, upload).await.unwrap().unwrap();
    assert!(upload.is_ok(), "the upload was reset: {upload:?}");
    drop(upload);
    tokio::time::timeout(LIMIT, handle.drained()).await.unwrap();
}

/// A connection whose first request has not come yet is treated the same: a balancer on a
/// busy machine may open one and write its request a second later.
#[tokio::test]
async fn a_connection_with_no_request_yet_gets_served_past_the_grace() {
    let grace = Duration::from_millis(200);
    let (addr, handle) = start(HttpConfig::default().idle_grace(grace)).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    support::wait_live(&handle, 1).await;
    handle.stop();
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(3 * grace, client.read(&mut byte)).await;
    assert!(closed.is_err(), "closed during the drain: {closed:?}");
    let (head, _) = get(&mut client, "/").await;
    assert!(
        head.starts_with("http/1.1 200") && head.contains("connection: close"),
        "{head}"
    );
    expect_clean_close(&mut client).await;
    drop(client);
    tokio::time::timeout(LIMIT, handle.drained()).await.unwrap();
}

#[tokio::test]
async fn http2_connection_gets_goaway_and_finishes_its_stream() {
    let (addr, handle) = start(HttpConfig::default()).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let driver = tokio::spawn(conn);
    let request = Request::get(format!("http://{addr}/sleep/300"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::spawn(sender.send_request(request));
    tokio::time::sleep(Duration::from_millis(100)).await;
    handle.stop();
    let response = tokio::time::timeout(LIMIT, response)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    tokio::time::timeout(LIMIT, driver)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    tokio::time::timeout(LIMIT, handle.drained()).await.unwrap();
}

#[tokio::test]
async fn upgraded_connection_is_waited_for_until_it_is_cut() {
    let (addr, handle) = start(HttpConfig::default().idle_grace(Duration::from_millis(200))).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(
            b"GET /upgrade HTTP/1.1\r\nhost: test\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(client.read(&mut byte).await.unwrap(), 1);
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 101") && !head.contains("close"),
        "{head}"
    );
    let echo = async |client: &mut TcpStream, text: &[u8]| {
        client.write_all(text).await.unwrap();
        let mut back = vec![0u8; text.len()];
        tokio::time::timeout(LIMIT, client.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, text);
    };
    echo(&mut client, b"before the stop").await;

    handle.stop();
    // Long past the idle grace, the upgraded connection still works and is still counted.
    tokio::time::sleep(Duration::from_millis(600)).await;
    echo(&mut client, b"during the drain").await;
    assert_eq!(handle.live(), 1);

    // Hammer time (the drain timeout, in `run`): cut.
    assert_eq!(handle.force_close(), 1);
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(LIMIT, client.read_to_end(&mut rest))
        .await
        .unwrap();
    tokio::time::timeout(LIMIT, handle.drained()).await.unwrap();
}
