//! axum specifics, in process: connection info reaches handlers, and `axum::serve` accepts a
//! graceful listener.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use einhorn_axum::{AxumMakeService, ServeListener};
use einhorn_hyper::HttpServer;
use graceful_listener::{Address, Bind, GracefulListener, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(10);

async fn bind() -> GracefulListener {
    GracefulListener::bind(&Bind::Addr("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap()
}

/// One `GET path` with `Connection: close`; returns the whole response.
async fn get_once(addr: SocketAddr, path: &str) -> (String, SocketAddr) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let me = stream.local_addr().unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(LIMIT, stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    (response, me)
}

#[tokio::test]
async fn remote_address_reaches_handlers() {
    let app = Router::new()
        .route(
            "/",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { format!("peer={peer}") }),
        )
        .route(
            "/any",
            get(|ConnectInfo(peer): ConnectInfo<Address>| async move { format!("any={peer}") }),
        );
    let listener = bind().await;
    let addr = listener.local_addr().as_tcp().unwrap();
    let handle = listener.handle();
    let make = AxumMakeService::new(
        app.clone()
            .into_make_service_with_connect_info::<SocketAddr>(),
    );
    tokio::spawn(HttpServer::from_make_service(make).serve(listener));
    let (response, me) = get_once(addr, "/").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(&format!("peer={me}")), "{response}");

    handle.stop();
    tokio::time::timeout(LIMIT, handle.drained()).await.unwrap();

    let listener = bind().await;
    let addr = listener.local_addr().as_tcp().unwrap();
    let make = AxumMakeService::new(app.into_make_service_with_connect_info::<Address>());
    tokio::spawn(HttpServer::from_make_service(make).serve(listener));
    let (response, me) = get_once(addr, "/any").await;
    assert!(response.ends_with(&format!("any={me}")), "{response}");
}

#[tokio::test]
async fn a_plain_router_serves() {
    let app = Router::new().route("/", get(|| async { "hello" }));
    let listener = bind().await;
    let addr = listener.local_addr().as_tcp().unwrap();
    tokio::spawn(HttpServer::from_make_service(AxumMakeService::new(app)).serve(listener));
    let (response, _) = get_once(addr, "/").await;
    assert!(
        response.starts_with("HTTP/1.1 200") && response.ends_with("hello"),
        "{response}"
    );
}

#[tokio::test]
async fn axum_serve_accepts_a_graceful_listener_and_stops_with_it() {
    let app = Router::new().route("/", get(|| async { "hello" }));
    let listener = bind().await;
    let addr = listener.local_addr().as_tcp().unwrap();
    let handle = listener.handle();
    let listener = ServeListener::new(listener);
    let stopping = listener.stopping();
    let serve = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stopping)
            .await
    });
    let (response, _) = get_once(addr, "/").await;
    assert!(response.ends_with("hello"), "{response}");
    handle.stop();
    tokio::time::timeout(LIMIT, serve)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    tokio::time::timeout(LIMIT, handle.drained()).await.unwrap();
}
