//! What users of `axum::serve` and hyper-util rely on, kept: a make-service's `poll_ready` is
//! honoured before each connection's service is made, HTTP/2 extended CONNECT is on (for
//! WebSockets over HTTP/2), and any hyper setting is one `hyper_builder` call away.

mod support;

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use einhorn_hyper::{ConnectionInfo, HttpConfig, HttpServer, MakeService};
use graceful_listener::{Bind, GracefulListener, Server};
use http_body_util::{Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{LIMIT, get, read_response};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn hello(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let protocol = req
        .extensions()
        .get::<hyper::ext::Protocol>()
        .map_or("none".to_owned(), |p| p.as_str().to_owned());
    let mut response = Response::new(Full::new(Bytes::from(format!(
        "{} {protocol}",
        req.method()
    ))));
    // A 2xx answer to CONNECT makes the stream a tunnel, with no body: say it in a header too.
    response
        .headers_mut()
        .insert("x-protocol", protocol.parse().unwrap());
    Ok(response)
}

/// A make-service that is not ready until told, and counts the services it made.
#[derive(Clone)]
struct Gate {
    open: Arc<AtomicBool>,
    waiting: Arc<std::sync::Mutex<Option<Waker>>>,
    made: Arc<AtomicUsize>,
}

/// The service the gate makes: `hello`.
#[derive(Clone, Copy)]
struct Hello;

impl hyper::service::Service<Request<Incoming>> for Hello {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        Box::pin(hello(req))
    }
}

impl MakeService for Gate {
    type Service = Hello;
    type Future = Ready<Hello>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.open.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        *self.waiting.lock().unwrap() = Some(cx.waker().clone());
        Poll::Pending
    }

    fn make_service(&mut self, _info: &ConnectionInfo) -> Self::Future {
        self.made.fetch_add(1, Ordering::SeqCst);
        ready(Hello)
    }
}

async fn listener() -> (GracefulListener, std::net::SocketAddr) {
    let listener = GracefulListener::bind(&Bind::Addr("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let addr = listener.local_addr().as_tcp().unwrap();
    (listener, addr)
}

#[tokio::test]
async fn poll_ready_of_the_make_service_holds_the_accept_loop() {
    let (listener, addr) = listener().await;
    let gate = Gate {
        open: Arc::new(AtomicBool::new(false)),
        waiting: Arc::default(),
        made: Arc::default(),
    };
    tokio::spawn(HttpServer::from_make_service(gate.clone()).serve(listener));
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        gate.made.load(Ordering::SeqCst),
        0,
        "not made while not ready"
    );

    gate.open.store(true, Ordering::SeqCst);
    if let Some(waker) = gate.waiting.lock().unwrap().take() {
        waker.wake();
    }
    let (head, body) = tokio::time::timeout(LIMIT, read_response(&mut client))
        .await
        .unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, "GET none");
    assert_eq!(gate.made.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn http2_extended_connect_is_on() {
    let (listener, addr) = listener().await;
    tokio::spawn(HttpServer::new(service_fn(hello)).serve(listener));
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut request = Request::connect(format!("http://{addr}/chat"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    send.ready().await.unwrap();
    let response = tokio::time::timeout(LIMIT, send.send_request(request))
        .await
        .unwrap()
        .expect("extended CONNECT accepted (SETTINGS_ENABLE_CONNECT_PROTOCOL)");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-protocol"], "websocket");
}

#[tokio::test]
async fn hyper_builder_reaches_every_setting() {
    let (listener, addr) = listener().await;
    let config = HttpConfig::default().hyper_builder(|builder| {
        builder.http1().max_headers(3);
    });
    tokio::spawn(
        HttpServer::new(service_fn(hello))
            .config(config)
            .serve(listener),
    );
    let mut client = TcpStream::connect(addr).await.unwrap();
    let (head, _) = get(&mut client, "/").await;
    assert!(
        head.starts_with("http/1.1 200"),
        "a short request passes: {head}"
    );
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut client).await;
    assert!(
        head.starts_with("http/1.1 431"),
        "five headers are too many for max_headers(3): {head}"
    );
}
