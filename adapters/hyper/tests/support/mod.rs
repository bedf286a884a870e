//! What the in-process tests of the HTTP engine share: a test service, a server on loopback,
//! and a raw HTTP/1 client.

#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::time::Duration;

use einhorn_hyper::{HttpConfig, HttpServer};
use graceful_listener::{Bind, GracefulListener, ListenerHandle, Server, ShutdownSignal};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const LIMIT: Duration = Duration::from_secs(10);

pub async fn handler(
    signal: ShutdownSignal,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/upgrade" {
        // An echo protocol after `101 Switching Protocols`, as a WebSocket would be.
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let (mut read, mut write) =
                    tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut read, &mut write).await;
            }
        });
        let mut response = Response::new(Full::default());
        *response.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
        response.headers_mut().insert(
            http::header::UPGRADE,
            http::HeaderValue::from_static("echo"),
        );
        return Ok(response);
    }
    if req.uri().path() == "/stopping" {
        return Ok(Response::new(Full::new(Bytes::from(
            signal.is_stopping().to_string(),
        ))));
    }
    if req.uri().path() == "/echo-len" {
        // Reads the whole body first: a slow client keeps this handler waiting on it.
        use http_body_util::BodyExt;
        let len = match req.into_body().collect().await {
            Ok(body) => body.to_bytes().len(),
            Err(_) => 0,
        };
        return Ok(Response::new(Full::new(Bytes::from(len.to_string()))));
    }
    if let Some(len) = req.uri().path().strip_prefix("/big/") {
        // A body of that many bytes, for clients that do not read it.
        let body = vec![b'x'; len.parse().unwrap_or(0)];
        return Ok(Response::new(Full::new(Bytes::from(body))));
    }
    if let Some(ms) = req.uri().path().strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    Ok(Response::new(Full::new(Bytes::from("ok"))))
}

/// Starts a server on 127.0.0.1:0; returns its address and the listener's handle.
pub async fn start(config: HttpConfig) -> (std::net::SocketAddr, ListenerHandle) {
    let listener = GracefulListener::bind(&Bind::Addr("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let addr = listener.local_addr().as_tcp().unwrap();
    let handle = listener.handle();
    // A listener made on its own: handlers reach its stop through its own signal.
    let signal = listener.shutdown_signal();
    let server =
        HttpServer::new(service_fn(move |req| handler(signal.clone(), req))).config(config);
    tokio::spawn(server.serve(listener));
    (addr, handle)
}

/// Waits until the listener has accepted and tracks `n` live connections (up to [`LIMIT`]).
pub async fn wait_live(handle: &ListenerHandle, n: usize) {
    tokio::time::timeout(LIMIT, async {
        while handle.live() != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} live connections, not {n}", handle.live()));
}

/// Reads one response (head and `content-length` body) from `stream`; returns the head,
/// lower-cased, and the body.
pub async fn read_response<T: tokio::io::AsyncRead + Unpin>(stream: &mut T) -> (String, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(LIMIT, stream.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            n, 1,
            "connection closed in the middle of a response head: {buf:?}"
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap().to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0u8; len];
    tokio::time::timeout(LIMIT, stream.read_exact(&mut body))
        .await
        .unwrap()
        .unwrap();
    (head, String::from_utf8(body).unwrap())
}

pub async fn get(stream: &mut TcpStream, path: &str) -> (String, String) {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_response(stream).await
}

/// Waits for the server's close; panics on a reset or a timeout.
pub async fn expect_clean_close(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    let n = tokio::time::timeout(LIMIT, stream.read_to_end(&mut rest))
        .await
        .unwrap();
    assert_eq!(n.unwrap(), 0, "nothing after the last response: {rest:?}");
}

/// Lets a test hold a few thousand sockets: the soft limit on open files up to the hard one.
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given; setrlimit only reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
