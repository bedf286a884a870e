//! Long-lived connections that end themselves when the worker stops: an axum WebSocket and an
//! SSE stream that watch the worker's stop ([`StopSignal`]) and close cleanly, so an upgrade
//! hands their clients to the new workers in milliseconds instead of holding the old worker
//! until its drain timeout. Follows the examples' contract (`GET /` answers with this worker's
//! pid, `--bind`, `--drain-timeout`, `--lame-duck`, an `on_stop` line, exit 0 after a drain).
//!
//! - `GET /ws`: a WebSocket that echoes each text message as `pid=<pid>: <text>`; when the
//!   worker stops it sends a Close frame, code 1001 (going away) with the reason
//!   `pid=<pid> is stopping: reconnect`, waits (briefly) for the client's Close, and ends.
//! - `GET /sse`: an SSE stream with an event every 100 ms (`event: tick`, `id: <n>`,
//!   `data: pid=<pid> n=<n>`); when the worker stops it sends `event: bye`
//!   (`data: pid=<pid> is stopping: reconnect`) and ends the response.
//! - `GET /ws-stubborn`, `GET /sse-stubborn`: the same, deaf to the stop. The drain waits for
//!   them (they are tracked connections) until the drain timeout, then cuts them, and the
//!   worker's `stopped` line says `forced=<how many>`.
//!
//! Under Einhorn: `einhorn-master -b 127.0.0.1:8000 -m manual -n 1 -d /tmp/streams.sock -- target/debug/examples/axum-streams --drain-timeout 5`
//! On its own:    `cargo run --example axum-streams -- --bind 127.0.0.1:8000`
//! Try it:        `curl -N localhost:8000/sse` and `curl -N localhost:8000/sse-stubborn` in
//!                two terminals, then upgrade: `einhorn-master ctl -d /tmp/streams.sock upgrade`.
//!                The first stream ends at once with `event: bye` from the old pid (run it
//!                again: the new pid); the stubborn one runs on until the drain timeout cuts
//!                it (`curl: (18) transfer closed with outstanding read data remaining`), and
//!                the old worker's `stopped` line says `forced=1`. A WebSocket client
//!                (`websocat ws://localhost:8000/ws`) gets the Close frame
//!                `1001 pid=<pid> is stopping: reconnect`.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use axum::response::sse::{Event, Sse};
use axum::routing::get;
use einhorn_axum::{ShutdownSignal, StopSignal};
use futures_util::{Stream, StreamExt, stream};

/// How often the SSE stream sends an event.
const TICK: Duration = Duration::from_millis(100);

/// How long a WebSocket waits for the client's answer to its Close frame. A client that does
/// not answer is not waited for: the drain would otherwise wait for it.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(1);

async fn hello() -> String {
    format!("hello from axum-streams pid={}\n", std::process::id())
}

async fn ws(upgrade: WebSocketUpgrade, StopSignal(signal): StopSignal) -> Response {
    upgrade.on_upgrade(|socket| echo(socket, Some(signal)))
}

async fn ws_stubborn(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|socket| echo(socket, None))
}

/// Echoes text messages until the client leaves or, if `stop` is given, the worker stops.
async fn echo(mut socket: WebSocket, stop: Option<ShutdownSignal>) {
    let pid = std::process::id();
    let stopping = async {
        match &stop {
            Some(signal) => signal.stopping().await,
            None => std::future::pending().await,
        }
    };
    let mut stopping = std::pin::pin!(stopping);
    loop {
        tokio::select! {
            // `recv` is cancel safe: a frame half read stays in the socket's buffer.
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => {
                    let answer = format!("pid={pid}: {}", text.as_str());
                    if socket.send(Message::text(answer)).await.is_err() {
                        return;
                    }
                }
                // Pings are answered by the library; binary messages are not echoed. After the
                // client's Close, the next `recv` sends ours back and ends the stream.
                Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Close(_))) => {}
                // The stream ended, or the connection broke: at the drain timeout a stubborn
                // socket ends here, cut by the worker.
                Some(Err(_)) | None => return,
            },
            () = &mut stopping => {
                // The pid as a field: a connection's task need not run in the worker's span.
                tracing::info!(pid, "websocket: the worker is stopping, closing with 1001");
                let close = CloseFrame {
                    code: close_code::AWAY,
                    reason: format!("pid={pid} is stopping: reconnect").into(),
                };
                if socket.send(Message::Close(Some(close))).await.is_ok() {
                    // The closing handshake: read until the client's Close (after which the
                    // stream ends), so that its answer is not left unread in our socket.
                    let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
                        while let Some(Ok(_)) = socket.recv().await {}
                    })
                    .await;
                }
                return;
            }
        }
    }
}

async fn sse(StopSignal(signal): StopSignal) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    Sse::new(ticks(Some(signal)))
}

async fn sse_stubborn() -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    Sse::new(ticks(None))
}

/// An event every [`TICK`]; if `stop` is given, a last `bye` event once the worker stops.
fn ticks(stop: Option<ShutdownSignal>) -> impl Stream<Item = Result<Event, Infallible>> {
    let pid = std::process::id();
    let interval = tokio::time::interval(TICK);
    let ticks = stream::unfold((0u64, interval), move |(n, mut interval)| async move {
        interval.tick().await;
        let tick = Event::default()
            .event("tick")
            .id(n.to_string())
            .data(format!("pid={pid} n={n}"));
        Some((Ok(tick), (n + 1, interval)))
    });
    let Some(signal) = stop else {
        return ticks.left_stream();
    };
    // `take_until` looks at the stop before every tick, so a worker already stopping (a
    // request that came in its idle grace) says bye at once.
    let bye = stream::once(async move {
        tracing::info!(pid, "sse: the worker is stopping, saying bye");
        Ok(Event::default()
            .event("bye")
            .data(format!("pid={pid} is stopping: reconnect")))
    });
    ticks
        .take_until(async move { signal.stopping().await })
        .chain(bye)
        .right_stream()
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = common::HttpArgs::parse();
    let _span = common::init_tracing();
    let app = Router::new()
        .route("/", get(hello))
        .route("/ws", get(ws))
        .route("/ws-stubborn", get(ws_stubborn))
        .route("/sse", get(sse))
        .route("/sse-stubborn", get(sse_stubborn))
        .route("/readyz", get(einhorn_axum::readyz));
    let mut worker = einhorn_axum::serve(app)
        .bind(args.bind.clone())
        .drain_timeout(args.drain_timeout())
        .lame_duck(args.lame_duck())
        .on_stop(|| tracing::info!("on_stop: accepting stopped, draining"));
    if let Some(tls) = args.tls() {
        worker = worker.tls(tls);
    }
    common::exit_status(worker.await)
}
