//! What the drain needs to know about one connection: is a request in flight, has the next
//! one started arriving, is it HTTP/2.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::Notify;

/// The start of the HTTP/2 connection preface (RFC 9113 section 3.4).
const H2_PREFACE_START: &[u8] = b"PRI *";

/// Shared by a connection's IO, its service and its drain loop.
///
/// A connection is idle when no request is in flight and not a byte has been read since the
/// last response finished: the next request has not started arriving.
#[derive(Debug)]
pub(crate) struct ConnState {
    in_flight: AtomicUsize,
    bytes_read: AtomicU64,
    /// `bytes_read` when the last request finished.
    idle_mark: AtomicU64,
    /// When the connection last became idle (accepted, or its last response finished).
    idle_since: Mutex<Instant>,
    sniffed: AtomicBool,
    h2: AtomicBool,
    /// Wakes the drain loop: a request finished, or the protocol became known.
    changed: Notify,
}

impl ConnState {
    pub(crate) fn new() -> ConnState {
        ConnState {
            in_flight: AtomicUsize::new(0),
            bytes_read: AtomicU64::new(0),
            idle_mark: AtomicU64::new(0),
            idle_since: Mutex::new(Instant::now()),
            sniffed: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    /// Called by the IO with every chunk read.
    pub(crate) fn on_read(&self, bytes: &[u8]) {
        self.bytes_read
            .fetch_add(bytes.len() as u64, Ordering::AcqRel);
        // A load first: after the first read this is all the hot path pays.
        if !self.sniffed.load(Ordering::Acquire) && !self.sniffed.swap(true, Ordering::AcqRel) {
            // A first read too short to tell is taken as HTTP/1; the first HTTP/2 request
            // corrects it (see `mark_h2`).
            if bytes.starts_with(H2_PREFACE_START) {
                self.h2.store(true, Ordering::Release);
            }
            self.changed.notify_one();
        }
    }

    /// A request starts: the connection is busy until the guard drops (after the response
    /// body has been sent, or the request failed).
    pub(crate) fn begin_request(self: &std::sync::Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        RequestGuard {
            state: self.clone(),
        }
    }

    pub(crate) fn mark_h2(&self) {
        if !self.h2.swap(true, Ordering::AcqRel) {
            self.changed.notify_one();
        }
    }

    pub(crate) fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Acquire)
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && self.bytes_read.load(Ordering::Acquire) == self.idle_mark.load(Ordering::Acquire)
    }

    pub(crate) fn idle_since(&self) -> Instant {
        *self.idle_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) async fn changed(&self) {
        self.changed.notified().await
    }
}

/// Keeps a request counted as in flight.
#[derive(Debug)]
pub(crate) struct RequestGuard {
    state: std::sync::Arc<ConnState>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let state = &self.state;
        if state.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            *state.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            state
                .idle_mark
                .store(state.bytes_read.load(Ordering::Acquire), Ordering::Release);
            state.changed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn idle_until_bytes_arrive_then_busy_until_the_response_ends() {
        let state = Arc::new(ConnState::new());
        assert!(state.is_idle() && !state.is_h2());
        state.on_read(b"GET / HTTP/1.1\r\n");
        assert!(!state.is_idle(), "a request head is arriving");
        let guard = state.begin_request();
        assert!(!state.is_idle());
        drop(guard);
        assert!(state.is_idle(), "response done, nothing new read");
        state.on_read(b"G");
        assert!(!state.is_idle(), "the next request started");
        assert!(!state.is_h2());
    }

    #[test]
    fn sniffs_the_http2_preface() {
        let state = ConnState::new();
        state.on_read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert!(state.is_h2());
        let webdav = ConnState::new();
        webdav.on_read(b"PROPFIND / HTTP/1.1\r\n");
        assert!(!webdav.is_h2());
    }
}
