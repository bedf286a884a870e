//! The per-request cost of the HTTP engine (`einhorn-hyper`) against plain hyper-util with
//! the same service: one keep-alive HTTP/1.1 connection on loopback, one request at a time.
//!
//! `cargo bench --bench engine`. Plain is what a hyper user writes: an accept loop spawning
//! hyper-util's auto builder per connection. Ours is `einhorn_hyper::HttpServer` serving a
//! `GracefulListener`, as a worker does.

// criterion_group! defines a public function it cannot document.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use graceful_listener::{GracefulListener, Server};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

async fn hello(_req: hyper::Request<Incoming>) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    Ok(hyper::Response::new(Full::new(Bytes::from_static(
        b"hello from the benchmark\n",
    ))))
}

/// Plain hyper-util: accept, spawn, serve with the auto builder.
async fn plain() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        while let Ok((stream, _)) = listener.accept().await {
            let builder = builder.clone();
            tokio::spawn(async move {
                let _ = builder
                    .serve_connection_with_upgrades(
                        TokioIo::new(stream),
                        hyper::service::service_fn(hello),
                    )
                    .await;
            });
        }
    });
    addr
}

/// Ours: the engine serving a graceful listener.
async fn ours() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let server = einhorn_hyper::HttpServer::new(hyper::service::service_fn(hello));
    tokio::spawn(server.serve(GracefulListener::from_tcp(listener)));
    addr
}

/// One keep-alive client connection.
async fn client(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    sender
}

async fn request(sender: &mut SendRequest<Empty<Bytes>>) {
    sender.ready().await.expect("ready");
    let response = sender
        .send_request(
            hyper::Request::get("/")
                .header(hyper::header::HOST, "bench")
                .body(Empty::new())
                .expect("request"),
        )
        .await
        .expect("response");
    assert!(response.status().is_success());
    let body = response.into_body().collect().await.expect("body");
    std::hint::black_box(body.to_bytes());
}

fn engine(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("one GET on a keep-alive connection");
    for (name, addr) in [
        ("plain hyper-util", rt.block_on(plain())),
        ("einhorn-hyper", rt.block_on(ours())),
    ] {
        let sender = tokio::sync::Mutex::new(rt.block_on(client(addr)));
        group.bench_function(name, |b| {
            b.to_async(&rt)
                .iter(|| async { request(&mut *sender.lock().await).await });
        });
    }
    group.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
