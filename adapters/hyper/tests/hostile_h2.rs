//! HTTP/2 clients that try to hold or wear down a worker, written frame by frame over real
//! sockets (plain and TLS): one that never answers the shutdown PING, one that stops reading,
//! one that answers and then stops reading while a large response is on its way, and floods
//! of PING and SETTINGS frames. None holds the drain past the idle grace and the linger (and
//! the supervisor's next look); a flood gets a GOAWAY with ENHANCE_YOUR_CALM; an honest
//! client's PINGs are all answered.

mod support;

use std::time::{Duration, Instant};

use einhorn_hyper::HttpConfig;
use graceful_listener::ListenerHandle;
use support::{LIMIT, start, wait_live};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const ACK: u8 = 0x1;
const END_STREAM: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;

const GRACE: Duration = Duration::from_millis(500);
const LINGER: Duration = Duration::from_millis(500);

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `GET path` on `stream`, its header block in HPACK: GET, http, `:authority test`, `:path`
/// (literals with indexed names, no Huffman).
fn get(stream: u32, path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x41, 4];
    block.extend_from_slice(b"test");
    block.extend_from_slice(&[0x44, path.len() as u8]);
    block.extend_from_slice(path.as_bytes());
    frame(HEADERS, 0x4 | END_STREAM, stream, &block)
}

/// The preface and a SETTINGS frame with `settings` (id, value), then `then`.
fn opening(settings: &[(u16, u32)], then: &[Vec<u8>]) -> Vec<u8> {
    let payload: Vec<u8> = settings
        .iter()
        .flat_map(|(id, value)| [id.to_be_bytes().to_vec(), value.to_be_bytes().to_vec()].concat())
        .collect();
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &payload));
    for f in then {
        bytes.extend_from_slice(f);
    }
    bytes
}

/// A frame read: type, flags, stream, payload.
#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// The next frame, or `None` at the end of the stream (or a reset).
async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Frame> {
    let mut header = [0u8; 9];
    tokio::time::timeout(LIMIT, stream.read_exact(&mut header))
        .await
        .expect("a frame or the end within the limit")
        .ok()?;
    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0u8; len];
    tokio::time::timeout(LIMIT, stream.read_exact(&mut payload))
        .await
        .expect("a payload within the limit")
        .ok()?;
    Some(Frame {
        kind: header[3],
        flags: header[4],
        stream: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// Reads frames until the response to stream 1 has ended (its END_STREAM).
async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) {
    loop {
        let frame = read_frame(stream).await.expect("the response");
        if frame.stream == 1
            && frame.flags & END_STREAM != 0
            && [HEADERS, DATA].contains(&frame.kind)
        {
            return;
        }
    }
}

/// What a client that reads but never answers a PING saw until the server closed.
#[derive(Debug, Default)]
struct Seen {
    goaways: usize,
    pings: usize,
}

/// Reads (and answers nothing) until the end of the stream.
async fn read_to_the_end<S: AsyncRead + Unpin>(stream: &mut S) -> Seen {
    let mut seen = Seen::default();
    while let Some(frame) = read_frame(stream).await {
        match frame.kind {
            GOAWAY => seen.goaways += 1,
            PING if frame.flags & ACK == 0 => seen.pings += 1,
            _ => {}
        }
    }
    seen
}

/// Stops the server and returns how long its connections took to be gone.
async fn drain_time(handle: &ListenerHandle) -> Duration {
    let stopped = Instant::now();
    handle.stop();
    tokio::time::timeout(LIMIT, handle.drained())
        .await
        .expect("the drain ends within the limit: no HTTP/2 client holds it");
    stopped.elapsed()
}

/// A drain that took the grace, and no more than the grace + linger (+ 0.5 s).
fn assert_cut_at_the_grace(took: Duration) {
    assert!(
        took >= GRACE && took < GRACE + LINGER + Duration::from_millis(500),
        "the drain took {took:?}, not the grace + linger (+ 0.5 s)"
    );
}

fn config() -> HttpConfig {
    HttpConfig::default().idle_grace(GRACE).linger(LINGER)
}

/// A client that reads everything and answers no PING: it gets the GOAWAY and the shutdown
/// PING, and is closed at the grace and the linger.
async fn never_answering<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    mut client: S,
    handle: &ListenerHandle,
) {
    client
        .write_all(&opening(&[], &[get(1, "/")]))
        .await
        .unwrap();
    read_response(&mut client).await;
    let reader = tokio::spawn(async move { read_to_the_end(&mut client).await });
    wait_live(handle, 1).await;
    assert_cut_at_the_grace(drain_time(handle).await);
    let seen = reader.await.unwrap();
    assert!(
        seen.goaways >= 1 && seen.pings >= 1,
        "GOAWAY and PING first: {seen:?}"
    );
}

#[tokio::test]
async fn a_client_that_never_answers_the_shutdown_ping_is_closed_after_the_grace() {
    let (addr, handle) = start(config()).await;
    never_answering(TcpStream::connect(addr).await.unwrap(), &handle).await;
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn over_tls_too() {
    use graceful_listener_suite::tls::TestCertificate;

    let dir = tempfile::tempdir().unwrap();
    let cert = TestCertificate::new(dir.path());
    let server_tls = einhorn_hyper::tls_config(&cert.cert, &cert.key).unwrap();
    let (addr, handle) = start(config().tls(server_tls)).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let client = tokio_rustls::TlsConnector::from(cert.client_config(&[b"h2"]))
        .connect(name, tcp)
        .await
        .expect("a TLS handshake");
    assert_eq!(client.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    never_answering(client, &handle).await;
}

/// A connection whose receive buffer is small, so that a large response fills it soon.
async fn small_window_socket(addr: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    socket.connect(addr).await.unwrap()
}

/// A server, and a client on a small receive buffer that has asked it for 64 MB with flow
/// control wide open: the server may send as much as the socket takes.
async fn asking_for_64_mb() -> (ListenerHandle, TcpStream) {
    let (addr, handle) = start(config()).await;
    let mut client = small_window_socket(addr).await;
    let wide_open = [
        frame(WINDOW_UPDATE, 0, 0, &0x7fff_0000u32.to_be_bytes()),
        get(1, "/big/67108864"),
    ];
    client
        .write_all(&opening(&[(0x4, 0x7fff_ffff)], &wide_open))
        .await
        .unwrap();
    (handle, client)
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_after_the_grace() {
    // Not a byte read: the shutdown PING never reaches it.
    let (handle, client) = asking_for_64_mb().await;
    wait_live(&handle, 1).await;
    assert_cut_at_the_grace(drain_time(&handle).await);
    drop(client);
}

#[tokio::test]
async fn a_client_that_answers_then_stops_reading_is_closed_once_its_socket_stays_full() {
    let (handle, mut client) = asking_for_64_mb().await;
    // The response is under way.
    let first = loop {
        let frame = read_frame(&mut client).await.expect("the response begins");
        if frame.stream == 1 && frame.kind == HEADERS {
            break frame;
        }
    };
    assert_eq!(first.kind, HEADERS);
    wait_live(&handle, 1).await;
    let stopped = Instant::now();
    handle.stop();
    // Reads through the data until the shutdown PING, answers it, and reads nothing more.
    loop {
        let got = read_frame(&mut client).await.expect("the shutdown PING");
        if got.kind == PING && got.flags & ACK == 0 {
            client
                .write_all(&frame(PING, ACK, 0, &got.payload))
                .await
                .unwrap();
            break;
        }
    }
    tokio::time::timeout(LIMIT, handle.drained())
        .await
        .expect("the drain ends within the limit");
    let took = stopped.elapsed();
    // Its writes are seen stalled at the supervisor's next look (a quarter of a second while
    // a stream is open), then have the grace and the linger to move again.
    assert!(
        took >= GRACE + LINGER && took < GRACE + LINGER + Duration::from_millis(1000),
        "the drain took {took:?}"
    );
    drop(client);
}

/// Sends `flood` (one control frame, repeated) as fast as the server takes it, while reading
/// what comes back; returns how many ACKs came and the GOAWAY's error code, if any.
async fn flood(addr: std::net::SocketAddr, one: Vec<u8>, count: usize) -> (usize, Option<u32>) {
    let client = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = client.into_split();
    write
        .write_all(&opening(&[], &[get(1, "/")]))
        .await
        .unwrap();
    let sender = tokio::spawn(async move {
        let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 100).collect();
        for _ in 0..count / 100 {
            if write.write_all(&batch).await.is_err() {
                break;
            }
        }
        write
    });
    let mut acks = 0;
    let mut goaway = None;
    while let Some(frame) = read_frame(&mut read).await {
        match frame.kind {
            PING | SETTINGS if frame.flags & ACK != 0 => acks += 1,
            GOAWAY => {
                goaway = Some(u32::from_be_bytes(frame.payload[4..8].try_into().unwrap()));
            }
            _ => {}
        }
    }
    drop(sender.await.unwrap());
    (acks, goaway)
}

#[tokio::test]
async fn a_ping_flood_gets_enhance_your_calm_and_is_closed() {
    let (addr, handle) = start(config()).await;
    let started = Instant::now();
    let (acks, goaway) = flood(addr, frame(PING, 0, 0, &[1; 8]), 1_000_000).await;
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM), "{acks} PINGs answered");
    // The burst, and what the rate earned meanwhile (plus the SETTINGS ACK).
    let allowed = 1000 + 100 * (started.elapsed().as_secs() as usize + 1) + 1;
    assert!(acks <= allowed, "{acks} answered, more than {allowed}");
    assert!(acks >= 500, "an honest burst is answered: {acks}");
    tokio::time::timeout(LIMIT, async {
        while handle.live() != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the flooding connection is closed");
}

#[tokio::test]
async fn a_settings_flood_gets_enhance_your_calm_and_is_closed() {
    let (addr, _handle) = start(config()).await;
    let (acks, goaway) = flood(addr, frame(SETTINGS, 0, 0, &[]), 1_000_000).await;
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM), "{acks} SETTINGS answered");
    assert!(acks < 2000, "{acks} answered");
}

#[tokio::test]
async fn an_honest_clients_pings_are_all_answered() {
    let (addr, _handle) = start(config()).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    // 300 PINGs at once (more than any keep-alive or round-trip estimate sends), then a
    // request: every PING answered, the request served, no GOAWAY.
    let pings: Vec<Vec<u8>> = (0..300u64)
        .map(|i| frame(PING, 0, 0, &i.to_be_bytes()))
        .chain([get(1, "/")])
        .collect();
    client.write_all(&opening(&[], &pings)).await.unwrap();
    let mut answered = 0;
    loop {
        let frame = read_frame(&mut client).await.expect("answers");
        assert_ne!(frame.kind, GOAWAY, "no GOAWAY for an honest client");
        if frame.kind == PING && frame.flags & ACK != 0 {
            answered += 1;
        }
        if frame.stream == 1 && frame.flags & END_STREAM != 0 {
            break;
        }
    }
    // The response may come before the last answers.
    while answered < 300 {
        let frame = read_frame(&mut client).await.expect("the other answers");
        assert_ne!(frame.kind, GOAWAY, "no GOAWAY for an honest client");
        if frame.kind == PING && frame.flags & ACK != 0 {
            answered += 1;
        }
    }
}
