//! What the supervisor needs to know about one connection, kept by the connection itself
//! with a few counters, and how the supervisor tells it what to do.
//!
//! The connection's task writes the counters (its IO counts bytes, its service counts
//! requests and responses); the supervisor only reads them, a few times a second at most.
//! Nothing here is on a lock or a timer per request.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::task::Waker;
use std::time::{Duration, Instant};

use graceful_listener::ShutdownSignal;

/// The start of the HTTP/2 connection preface (RFC 9113 section 3.4).
const H2_PREFACE_START: &[u8] = b"PRI *";

/// What the supervisor asks a connection to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Command {
    /// Nothing: serve.
    Serve = 0,
    /// Close once idle: HTTP/1 after the response in progress (or at once if idle),
    /// HTTP/2 with GOAWAY after its streams.
    Close = 1,
    /// The request head took too long: answer `408 Request Timeout` and close.
    Timeout = 2,
    /// The client sends too slowly while a request is in progress: close now.
    Abort = 3,
}

impl Command {
    fn from_u8(value: u8) -> Command {
        match value {
            1 => Command::Close,
            2 => Command::Timeout,
            3 => Command::Abort,
            _ => Command::Serve,
        }
    }
}

/// The instant [`ConnState`]'s times count from (in nanoseconds, so that they fit an atomic).
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn nanos_since_base(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(base()).as_nanos()).unwrap_or(u64::MAX)
}

/// Shared by a connection's IO, its service, its task and the supervisor.
#[derive(Debug)]
pub(crate) struct ConnState {
    /// The connection's socket, for a peek at unread bytes and the `408`.
    pub(crate) fd: RawFd,
    /// The worker's stop, for `Connection: close` once stopping.
    pub(crate) signal: ShutdownSignal,
    bytes_read: AtomicU64,
    /// `bytes_read` when the last response finished: more than that is a request arriving.
    idle_mark: AtomicU64,
    /// Whether hyper is waiting for the client (its last read found nothing).
    waiting: AtomicBool,
    started: AtomicU64,
    finished: AtomicU64,
    /// When the peer last used the connection: its last request's start, or its accept
    /// (nanoseconds since [`base`]). Not the supervisor's look at it, which may be a second late.
    last_use: AtomicU64,
    sniffed: AtomicBool,
    /// A TLS handshake is in progress (no HTTP yet).
    handshaking: AtomicBool,
    h2: AtomicBool,
    /// An HTTP/2 connection was told to close: its IO holds the shutdown PING ACK.
    h2_closing: AtomicBool,
    /// The client of a closing HTTP/2 connection has answered the shutdown PING.
    h2_answered: AtomicBool,
    /// HTTP/2 only: bytes written, and whether the last write found the socket full.
    bytes_written: AtomicU64,
    write_blocked: AtomicBool,
    command: AtomicU8,
    /// The connection task's waker, for the supervisor to deliver a command.
    waker: Mutex<Option<Waker>>,
}

/// A consistent-enough reading of a connection's counters, for the supervisor's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Observation {
    pub(crate) bytes_read: u64,
    pub(crate) idle_mark: u64,
    pub(crate) started: u64,
    pub(crate) finished: u64,
    pub(crate) waiting: bool,
    /// When the peer last used the connection (a request started, or the accept).
    pub(crate) last_use: Option<Instant>,
    /// A TLS handshake is in progress: not yet a connection a peer can send requests on.
    pub(crate) handshaking: bool,
    pub(crate) h2: bool,
    /// HTTP/2, closing: the client has answered the shutdown PING.
    pub(crate) h2_answered: bool,
    /// HTTP/2: bytes written so far, and whether the last write found the socket full (the
    /// client is not reading, or not fast enough).
    pub(crate) bytes_written: u64,
    pub(crate) write_blocked: bool,
}

impl Observation {
    /// A request is in progress: its head was read, its response is not finished.
    pub(crate) fn in_flight(&self) -> bool {
        self.started != self.finished
    }

    /// No request in progress, but bytes of the next one have been read: a head arriving.
    pub(crate) fn head_arriving(&self) -> bool {
        !self.in_flight() && self.bytes_read > self.idle_mark
    }

    /// No request in progress and not a byte of the next one.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> bool {
        !self.in_flight() && self.bytes_read == self.idle_mark
    }
}

impl ConnState {
    pub(crate) fn new(fd: RawFd, signal: ShutdownSignal) -> ConnState {
        ConnState {
            fd,
            signal,
            bytes_read: AtomicU64::new(0),
            idle_mark: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            started: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            last_use: AtomicU64::new(nanos_since_base(Instant::now())),
            sniffed: AtomicBool::new(false),
            handshaking: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            h2_closing: AtomicBool::new(false),
            h2_answered: AtomicBool::new(false),
            bytes_written: AtomicU64::new(0),
            write_blocked: AtomicBool::new(false),
            command: AtomicU8::new(Command::Serve as u8),
            waker: Mutex::new(None),
        }
    }

    /// Called by the IO with every chunk read.
    pub(crate) fn on_read(&self, bytes: &[u8]) {
        // Only the connection's IO writes these: a load and a store, no locked instruction.
        let read = self.bytes_read.load(Ordering::Relaxed);
        self.bytes_read
            .store(read + bytes.len() as u64, Ordering::Relaxed);
        if !self.sniffed.load(Ordering::Relaxed) {
            self.sniffed.store(true, Ordering::Relaxed);
            // A first read too short to tell is taken as HTTP/1; the first HTTP/2 request
            // corrects it (see `mark_h2`).
            if bytes.starts_with(H2_PREFACE_START) {
                self.h2.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Marks the TLS handshake as in progress (`true`) or over (`false`).
    #[cfg(feature = "tls")]
    pub(crate) fn set_handshaking(&self, handshaking: bool) {
        self.handshaking.store(handshaking, Ordering::Relaxed);
    }

    /// Called by the IO when a read finds nothing (`true`) or something (`false`).
    pub(crate) fn set_waiting(&self, waiting: bool) {
        if self.waiting.load(Ordering::Relaxed) != waiting {
            self.waiting.store(waiting, Ordering::Relaxed);
        }
    }

    /// A request starts, `at` (the clock read its response time is measured from); call
    /// [`ConnState::finish_request`] when its response is done.
    pub(crate) fn start_request(&self, at: Instant) {
        self.last_use.store(nanos_since_base(at), Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    /// A response is done (sent, or dropped).
    pub(crate) fn finish_request(&self) {
        // Mark first: a reader that sees the count catch up sees a mark no older than this.
        self.idle_mark
            .store(self.bytes_read.load(Ordering::Relaxed), Ordering::Relaxed);
        self.finished.fetch_add(1, Ordering::Release);
    }

    /// Tells the IO that this HTTP/2 connection is about to send its first GOAWAY.
    pub(crate) fn set_h2_closing(&self) {
        self.h2_closing.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_h2_closing(&self) -> bool {
        self.h2_closing.load(Ordering::Relaxed)
    }

    /// Called by the IO when the client answers the shutdown PING.
    pub(crate) fn set_h2_answered(&self) {
        self.h2_answered.store(true, Ordering::Relaxed);
    }

    /// Called by an HTTP/2 connection's IO after each write: `Some(n)` bytes written, `None`
    /// for a socket that took nothing (full: the client does not read).
    pub(crate) fn on_write(&self, written: Option<usize>) {
        // Only the connection's IO writes these: a load and a store, no locked instruction.
        if let Some(n) = written {
            let total = self.bytes_written.load(Ordering::Relaxed);
            self.bytes_written
                .store(total + n as u64, Ordering::Relaxed);
        }
        let blocked = written.is_none();
        if self.write_blocked.load(Ordering::Relaxed) != blocked {
            self.write_blocked.store(blocked, Ordering::Relaxed);
        }
    }

    pub(crate) fn mark_h2(&self) {
        self.h2.store(true, Ordering::Relaxed);
    }

    pub(crate) fn observe(&self) -> Observation {
        let finished = self.finished.load(Ordering::Acquire);
        Observation {
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            idle_mark: self.idle_mark.load(Ordering::Relaxed),
            started: self.started.load(Ordering::Relaxed),
            finished,
            waiting: self.waiting.load(Ordering::Relaxed),
            last_use: Some(base() + Duration::from_nanos(self.last_use.load(Ordering::Relaxed))),
            handshaking: self.handshaking.load(Ordering::Relaxed),
            h2: self.h2.load(Ordering::Relaxed),
            h2_answered: self.h2_answered.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            write_blocked: self.write_blocked.load(Ordering::Relaxed),
        }
    }

    /// The command in force.
    pub(crate) fn command(&self) -> Command {
        Command::from_u8(self.command.load(Ordering::Acquire))
    }

    /// Gives the connection a command, if it is stronger than the one in force (they only
    /// escalate: close, then time out, then abort), and wakes its task.
    pub(crate) fn give(&self, command: Command) {
        let before = self.command.fetch_max(command as u8, Ordering::AcqRel);
        if before < command as u8
            && let Some(waker) = self
                .waker
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
        {
            waker.wake_by_ref();
        }
    }

    /// Records the task's waker, for [`ConnState::give`].
    pub(crate) fn register(&self, waker: &Waker) {
        *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker.clone());
    }

    /// Whether the client has sent bytes that nobody has read yet: a request in the socket's
    /// buffer that hyper has not seen.
    pub(crate) fn has_unread_bytes(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: `fd` is the connection's socket, open as long as its task runs, which is
        // as long as the supervisor holds this state. MSG_PEEK leaves the byte in place;
        // MSG_DONTWAIT never blocks.
        let n = unsafe {
            libc::recv(
                self.fd,
                (&raw mut byte).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n > 0
    }

    /// Writes a `408 Request Timeout` straight to the socket, for a client whose request head
    /// never came: hyper has written nothing for it, so the stream is at a message boundary.
    pub(crate) fn write_request_timeout(&self) {
        const RESPONSE: &[u8] =
            b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        // SAFETY: as in `has_unread_bytes`. A short or failed write needs no handling: the
        // connection closes next either way.
        unsafe {
            libc::send(
                self.fd,
                RESPONSE.as_ptr().cast(),
                RESPONSE.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ConnState {
        ConnState::new(-1, graceful_listener::Shutdown::new().signal())
    }

    #[test]
    fn idle_until_bytes_arrive_then_busy_until_the_response_ends() {
        let state = state();
        assert!(state.observe().idle());
        state.on_read(b"GET / HTTP/1.1\r\n");
        assert!(
            state.observe().head_arriving(),
            "a request head is arriving"
        );
        state.start_request(Instant::now());
        assert!(state.observe().in_flight());
        state.finish_request();
        assert!(state.observe().idle(), "response done, nothing new read");
        state.on_read(b"G");
        assert!(state.observe().head_arriving(), "the next request started");
        assert!(!state.observe().h2);
    }

    #[test]
    fn sniffs_the_http2_preface() {
        let state = state();
        state.on_read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert!(state.observe().h2);
        let webdav = self::state();
        webdav.on_read(b"PROPFIND / HTTP/1.1\r\n");
        assert!(!webdav.observe().h2);
    }

    #[test]
    fn commands_only_escalate() {
        let state = state();
        assert_eq!(state.command(), Command::Serve);
        state.give(Command::Close);
        state.give(Command::Timeout);
        assert_eq!(state.command(), Command::Timeout);
        state.give(Command::Close);
        assert_eq!(state.command(), Command::Timeout);
    }
}
