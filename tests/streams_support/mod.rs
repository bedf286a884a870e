//! Clients of long-lived connections for the `http_streams` tests: a WebSocket client
//! (tungstenite over a blocking socket), an SSE client (HTTP/1.1 by hand, reading the chunked
//! stream), and a session that runs either in a thread the way a real client does: connect,
//! follow the stream to its end, reconnect.

#![allow(dead_code, unreachable_pub)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use graceful_listener_suite::load::parse_pid;
use tungstenite::Message;
use tungstenite::protocol::WebSocket;

/// Generous: the machine is small and shared; waits end as soon as the event happens.
pub const WAIT: Duration = Duration::from_secs(30);

/// How a stream ended, as its client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The server said goodbye and then closed cleanly: a WebSocket Close frame (its code
    /// and reason) then the end of the connection, or an SSE `bye` event (no code, its data)
    /// then the response's last chunk.
    Goodbye { code: Option<u16>, text: String },
    /// A clean end without a goodbye.
    Silent,
    /// The connection was cut mid-stream (end of file or a reset where the protocol had not
    /// ended): what the client got.
    Cut(String),
}

/// A client of one long-lived stream.
pub trait StreamClient: Sized {
    /// Opens the stream at `path`; returns the client and the pid of the worker serving it.
    fn open(addr: SocketAddr, path: &str) -> io::Result<(Self, u32)>;
    /// Follows the stream until it ends.
    fn until_end(&mut self) -> End;
}

/// A TCP connection to `addr`, its reads and writes bounded by [`WAIT`].
pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, WAIT)?;
    stream.set_read_timeout(Some(WAIT))?;
    stream.set_write_timeout(Some(WAIT))?;
    Ok(stream)
}

fn pid_in(text: &str) -> io::Result<u32> {
    parse_pid(text.as_bytes()).ok_or_else(|| io::Error::other(format!("no pid in {text:?}")))
}

/// A WebSocket whose server echoes `pid=<pid>: <text>`.
pub struct WsClient {
    socket: WebSocket<TcpStream>,
    /// A Close frame that came as the answer to our first message.
    goodbye: Option<End>,
}

impl WsClient {
    /// Sends `text` and returns the server's answer.
    pub fn send(&mut self, text: &str) -> io::Result<Message> {
        self.socket
            .send(Message::text(text))
            .map_err(io::Error::other)?;
        self.socket.read().map_err(io::Error::other)
    }
}

fn goodbye_of(frame: Option<tungstenite::protocol::CloseFrame>) -> End {
    End::Goodbye {
        code: frame.as_ref().map(|f| u16::from(f.code)),
        text: frame
            .map(|f| f.reason.as_str().to_owned())
            .unwrap_or_default(),
    }
}

impl StreamClient for WsClient {
    /// The pid comes from the echo of a first message, or from the reason of a Close frame
    /// that answers it (a worker already stopping).
    fn open(addr: SocketAddr, path: &str) -> io::Result<(WsClient, u32)> {
        let url = format!("ws://{addr}{path}");
        let (socket, response) = tungstenite::client::client(url.as_str(), connect(addr)?)
            .map_err(|e| io::Error::other(format!("handshake with {url}: {e}")))?;
        if response.status() != 101 {
            return Err(io::Error::other(format!("{url}: {response:?}")));
        }
        let mut client = WsClient {
            socket,
            goodbye: None,
        };
        let pid = match client.send("hello")? {
            Message::Text(echo) if echo.as_str().ends_with(": hello") => pid_in(echo.as_str())?,
            Message::Close(Some(frame)) => {
                let pid = pid_in(frame.reason.as_str())?;
                client.goodbye = Some(goodbye_of(Some(frame)));
                pid
            }
            other => return Err(io::Error::other(format!("not an echo: {other:?}"))),
        };
        Ok((client, pid))
    }

    fn until_end(&mut self) -> End {
        use tungstenite::Error;
        loop {
            // After a Close frame, `read` sends ours back, then waits for the server's end of
            // the connection (RFC 6455: the server closes the TCP connection first).
            match self.socket.read() {
                Ok(Message::Close(frame)) => self.goodbye = Some(goodbye_of(frame)),
                Ok(_) => {}
                Err(Error::ConnectionClosed) => return self.goodbye.take().unwrap_or(End::Silent),
                Err(e) => return End::Cut(e.to_string()),
            }
        }
    }
}

/// One server-sent event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// An SSE stream over HTTP/1.1, its chunked body decoded by hand.
pub struct SseClient {
    reader: BufReader<TcpStream>,
    /// Decoded body not yet split into events.
    pending: String,
    /// The last chunk has come.
    ended: bool,
}

impl SseClient {
    /// The next event; `None` once the response has ended cleanly (its last chunk read).
    ///
    /// # Errors
    /// When the connection ends (or fails) before the response does, or nothing comes
    /// within [`WAIT`].
    pub fn next_event(&mut self) -> io::Result<Option<SseEvent>> {
        loop {
            if let Some(at) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..at + 2).collect();
                if let Some(event) = parse_event(&block) {
                    return Ok(Some(event));
                }
                continue; // a comment or a keep-alive
            }
            if self.ended {
                return Ok(None);
            }
            self.read_chunk()?;
        }
    }

    fn read_chunk(&mut self) -> io::Result<()> {
        let size_line = self.line()?;
        let size = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| io::Error::other(format!("not a chunk size: {size_line:?}")))?;
        if size == 0 {
            // The trailer section, up to its empty line.
            while !self.line()?.is_empty() {}
            self.ended = true;
            return Ok(());
        }
        let mut data = vec![0; size + 2];
        self.reader.read_exact(&mut data)?;
        if !data.ends_with(b"\r\n") {
            return Err(io::Error::other("a chunk without its CRLF"));
        }
        data.truncate(size);
        self.pending.push_str(&String::from_utf8_lossy(&data));
        Ok(())
    }

    /// One line (CRLF stripped); an error at end of file.
    fn line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection ended before the response did",
            ));
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }
}

/// The fields of one event block; `None` for a block without data (a comment).
fn parse_event(block: &str) -> Option<SseEvent> {
    let mut event = SseEvent {
        event: "message".to_owned(),
        ..SseEvent::default()
    };
    let mut data = Vec::new();
    for line in block.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event.event = value.to_owned(),
            "id" => event.id = Some(value.to_owned()),
            "data" => data.push(value),
            _ => {}
        }
    }
    event.data = data.join("\n");
    (!data.is_empty()).then_some(event)
}

impl SseClient {
    /// Sends `GET path` on `stream` and reads the response head (lower-cased lines) and the
    /// first event.
    ///
    /// # Errors
    /// When the answer is not an event stream (200, `text/event-stream`, chunked), or the
    /// stream ends before its first event.
    pub fn request(
        stream: TcpStream,
        path: &str,
    ) -> io::Result<(SseClient, Vec<String>, SseEvent)> {
        // A keep-alive request, as a browser's EventSource sends it.
        let request =
            format!("GET {path} HTTP/1.1\r\nhost: test\r\naccept: text/event-stream\r\n\r\n");
        (&stream).write_all(request.as_bytes())?;
        let mut client = SseClient {
            reader: BufReader::new(stream),
            pending: String::new(),
            ended: false,
        };
        let mut head = Vec::new();
        loop {
            let line = client.line()?;
            if line.is_empty() {
                break;
            }
            head.push(line.to_ascii_lowercase());
        }
        let has = |wanted: &str| head.iter().any(|l| l.replace(' ', "") == wanted);
        if !head[0].starts_with("http/1.1 200")
            || !has("content-type:text/event-stream")
            || !has("transfer-encoding:chunked")
        {
            return Err(io::Error::other(format!("not an event stream: {head:?}")));
        }
        let first = client
            .next_event()?
            .ok_or_else(|| io::Error::other("the stream ended before its first event"))?;
        Ok((client, head, first))
    }

    /// Sends the next request on the same keep-alive connection, once this response has
    /// ended; as [`SseClient::request`].
    pub fn reuse(self, path: &str) -> io::Result<(SseClient, Vec<String>, SseEvent)> {
        if !self.ended || !self.pending.is_empty() || !self.reader.buffer().is_empty() {
            return Err(io::Error::other("the response has not ended"));
        }
        SseClient::request(self.reader.into_inner(), path)
    }

    /// Waits (up to [`WAIT`]) for the server to close the connection; whether it did
    /// (end of file, or a reset) rather than send more or stay open.
    pub fn server_closes(&mut self) -> bool {
        let mut byte = [0; 1];
        match self.reader.read(&mut byte) {
            Ok(n) => n == 0,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        }
    }
}

impl StreamClient for SseClient {
    fn open(addr: SocketAddr, path: &str) -> io::Result<(SseClient, u32)> {
        let (client, _head, first) = SseClient::request(connect(addr)?, path)?;
        let pid = pid_in(&first.data)?;
        Ok((client, pid))
    }

    fn until_end(&mut self) -> End {
        let mut goodbye = None;
        loop {
            match self.next_event() {
                Ok(Some(event)) if event.event == "bye" => {
                    goodbye = Some(End::Goodbye {
                        code: None,
                        text: event.data,
                    });
                }
                Ok(Some(_)) => {}
                Ok(None) => return goodbye.unwrap_or(End::Silent),
                Err(e) => return End::Cut(e.to_string()),
            }
        }
    }
}

/// What a [`Session`] saw.
#[derive(Debug)]
pub struct SessionReport {
    pub path: String,
    /// The worker that served the stream.
    pub pid: u32,
    pub end: End,
    pub ended_at: Instant,
    /// The worker that served the stream opened again, right after the end.
    pub reconnected_pid: u32,
    /// How many times opening it again reached the old worker (see [`reopen`]).
    pub bounces: usize,
}

/// Opening a stream again after `old` said goodbye gives up after this many bounces.
pub const MAX_BOUNCES: usize = 3;

/// Opens the stream at `path` again after worker `old` ended it, as a real client does: if
/// the old worker still takes the connection (it was accepting in the very moment of its
/// stop: the kernel's queue is shared, and the stop reaches the accept loop a moment after
/// the handlers), it says goodbye at once, and the client tries again. Returns the client,
/// the pid serving it, and how many tries the old worker answered.
///
/// # Errors
/// When a try fails to open.
pub fn reopen<C: StreamClient>(
    addr: SocketAddr,
    path: &str,
    old: u32,
) -> io::Result<(C, u32, usize)> {
    let mut bounces = 0;
    loop {
        let (mut client, pid) = C::open(addr, path)?;
        if pid != old || bounces == MAX_BOUNCES {
            return Ok((client, pid, bounces));
        }
        client.until_end();
        bounces += 1;
    }
}

/// A client in its own thread: opens a stream, follows it to its end, opens it again
/// ([`reopen`]), and leaves that one at its first message.
pub struct Session {
    path: String,
    opened: mpsc::Receiver<io::Result<u32>>,
    done: mpsc::Receiver<io::Result<SessionReport>>,
}

impl Session {
    pub fn start<C: StreamClient>(addr: SocketAddr, path: &str) -> Session {
        let (opened_tx, opened) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let owned = path.to_owned();
        std::thread::spawn(move || {
            let (mut client, pid) = match C::open(addr, &owned) {
                Ok(opened) => opened,
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                    return;
                }
            };
            let _ = opened_tx.send(Ok(pid));
            let end = client.until_end();
            let ended_at = Instant::now();
            drop(client);
            let report =
                reopen::<C>(addr, &owned, pid).map(|(_again, reconnected_pid, bounces)| {
                    SessionReport {
                        path: owned,
                        pid,
                        end,
                        ended_at,
                        reconnected_pid,
                        bounces,
                    }
                });
            let _ = done_tx.send(report);
        });
        Session {
            path: path.to_owned(),
            opened,
            done,
        }
    }

    /// Waits until the stream is open; returns the pid serving it.
    ///
    /// # Panics
    /// When it fails to open, or does not within [`WAIT`].
    pub fn opened(&self) -> u32 {
        match self.opened.recv_timeout(WAIT) {
            Ok(Ok(pid)) => pid,
            Ok(Err(e)) => panic!("{}: cannot open: {e}", self.path),
            Err(e) => panic!("{}: not open within {WAIT:?}: {e}", self.path),
        }
    }

    /// Waits until the stream has ended and been opened again.
    ///
    /// # Panics
    /// When the second open fails, or all that does not happen within [`WAIT`].
    pub fn done(&self) -> SessionReport {
        match self.done.recv_timeout(WAIT) {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => panic!("{}: cannot open again: {e}", self.path),
            Err(e) => panic!("{}: did not end within {WAIT:?}: {e}", self.path),
        }
    }
}
