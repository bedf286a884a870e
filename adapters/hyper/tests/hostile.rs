//! Clients that try to hold a worker, in process: a request head that never completes or
//! trickles in, a body sent too slowly, idle connections by the thousand. A head in progress
//! does not hold the drain past its idle grace and linger, nor an idle connection past the idle
//! timeout (`header_read_timeout`, as while serving: the drain does not close a connection a
//! balancer may be sending on sooner); while serving, the header read timeout answers 408 and
//! the minimum rate closes a crawling upload, but a slow handler is left alone.

mod support;

use std::time::{Duration, Instant};

use einhorn_hyper::HttpConfig;
use support::{LIMIT, get, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads what the server sends until it closes; returns it, or an error for a reset.
async fn read_until_closed(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut rest = Vec::new();
    tokio::time::timeout(LIMIT, stream.read_to_end(&mut rest))
        .await
        .map_err(|_| std::io::Error::other("not closed within the limit"))??;
    Ok(String::from_utf8_lossy(&rest).into_owned())
}

/// Sends a request head one byte every `every`, forever (until the connection fails).
fn trickle(mut stream: TcpStream, every: Duration) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let head = b"GET / HTTP/1.1\r\nhost: test\r\nx-slow: ";
        for byte in head.iter().chain(std::iter::repeat(&b'a')) {
            if stream.write_all(&[*byte]).await.is_err() {
                break;
            }
            // Stop sending once the server has answered or closed.
            let mut peek = [0u8; 1];
            if let Ok(Ok(_)) = tokio::time::timeout(every, stream.peek(&mut peek)).await {
                break;
            }
        }
        read_until_closed(&mut stream).await.unwrap_or_default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_and_a_trickler_do_not_hold_the_drain() {
    const IDLE: usize = 1000;
    support::raise_fd_limit();
    let grace = Duration::from_millis(500);
    let linger = Duration::from_millis(500);
    // Long enough for the thousand connections to be opened before the first is timed out.
    let idle_timeout = Duration::from_secs(5);
    let (addr, handle) = start(
        HttpConfig::default()
            .idle_grace(grace)
            .linger(linger)
            .header_read_timeout(idle_timeout),
    )
    .await;

    let opening = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (head, _) = get(&mut client, "/").await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        idle.push(client);
    }
    let opened = Instant::now();
    let trickler = trickle(
        TcpStream::connect(addr).await.unwrap(),
        Duration::from_millis(100),
    );
    support::wait_live(&handle, IDLE + 1).await;

    let stopped = Instant::now();
    handle.stop();
    tokio::time::timeout(LIMIT, handle.drained())
        .await
        .expect("drained");
    // Each idle connection is closed at its idle timeout, counted from the supervisor's first
    // look at it (within a second of its request), then lingers.
    let drained_at = Instant::now();
    let took = drained_at - stopped;
    assert!(
        drained_at < opened + idle_timeout + linger + Duration::from_millis(1500),
        "the drain took {took:?}, more than the idle timeout + linger + 1.5 s after the last \
         idle connection's request"
    );
    assert!(
        drained_at >= opening + idle_timeout,
        "an idle connection was closed before its idle timeout: the drain took {took:?}"
    );
    let answer = trickler.await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout"),
        "the trickler is told: {answer:?}"
    );
    for mut client in idle.into_iter().take(10) {
        assert_eq!(
            read_until_closed(&mut client).await.unwrap(),
            "",
            "an idle connection is closed cleanly"
        );
    }
}

#[tokio::test]
async fn a_partial_head_at_the_stop_gets_the_grace_then_a_408() {
    let grace = Duration::from_millis(400);
    let (addr, handle) = start(HttpConfig::default().idle_grace(grace)).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: te")
        .await
        .unwrap();
    support::wait_live(&handle, 1).await;
    let stopped = Instant::now();
    handle.stop();
    let answer = read_until_closed(&mut client).await.unwrap();
    let took = stopped.elapsed();
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout"),
        "{answer:?}"
    );
    assert!(
        (grace..grace + Duration::from_millis(700)).contains(&took),
        "408 after the grace: {took:?}"
    );
    tokio::time::timeout(LIMIT, handle.drained())
        .await
        .expect("drained");
}

#[tokio::test]
async fn while_serving_a_head_that_takes_too_long_gets_a_408_and_a_slow_handler_does_not() {
    let timeout = Duration::from_millis(800);
    let (addr, _handle) = start(HttpConfig::default().header_read_timeout(timeout)).await;

    let started = Instant::now();
    let trickler = trickle(
        TcpStream::connect(addr).await.unwrap(),
        Duration::from_millis(100),
    );
    // A handler slower than the header timeout: its head was complete, so it is served.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let (head, body) = get(&mut slow, "/sleep/2000").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, "ok");

    let answer = trickler.await.unwrap();
    let took = started.elapsed();
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout"),
        "{answer:?}"
    );
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(3),
        "timed out near the header timeout: {took:?}"
    );
}

#[tokio::test]
async fn while_serving_an_idle_keep_alive_connection_is_closed_after_the_timeout() {
    let timeout = Duration::from_millis(600);
    let (addr, _handle) = start(HttpConfig::default().header_read_timeout(timeout)).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    let (head, _) = get(&mut client, "/").await;
    assert!(!head.contains("connection: close"), "{head}");
    let idle_since = Instant::now();
    assert_eq!(
        read_until_closed(&mut client).await.unwrap(),
        "",
        "closed cleanly"
    );
    let took = idle_since.elapsed();
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(2),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_body_sent_too_slowly_is_cut_while_a_fast_one_is_served() {
    let config = HttpConfig::default().min_rate((100, Duration::from_millis(500)));
    let (addr, _handle) = start(config).await;

    // Announces 1000 bytes, then sends 10 bytes a second: under 100 per half second.
    let mut crawler = TcpStream::connect(addr).await.unwrap();
    crawler
        .write_all(b"POST /echo-len HTTP/1.1\r\nhost: test\r\ncontent-length: 1000\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let cut = tokio::spawn(async move {
        for _ in 0..100 {
            if crawler.write_all(b"x").await.is_err() {
                break;
            }
            let mut peek = [0u8; 1];
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(100), crawler.peek(&mut peek)).await
            {
                break;
            }
        }
        read_until_closed(&mut crawler).await
    });

    // A client that sends its body at once is served meanwhile.
    let mut fast = TcpStream::connect(addr).await.unwrap();
    fast.write_all(b"POST /echo-len HTTP/1.1\r\nhost: test\r\ncontent-length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let (head, body) = support::read_response(&mut fast).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, "5");

    let closed = cut.await.unwrap();
    let took = started.elapsed();
    assert!(
        !closed.map(|rest| rest.contains("200")).unwrap_or(false),
        "the crawler got no answer"
    );
    assert!(
        took < Duration::from_secs(4),
        "cut within a couple of rate windows: {took:?}"
    );
}
