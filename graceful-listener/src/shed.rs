//! Moving keep-alive clients to a canary. Clients that keep their connections (a load
//! balancer's pool) never reach a new worker on their own: while a canary soaks, its master
//! asks each old worker to end a share of its keep-alive connections at their next response
//! (`Connection: close`, a clean end the client expects), so that those clients reconnect and
//! the shared socket deals them across every worker, the canary included.
//!
//! The engines ask [`take`] once per HTTP/1 response, and the accept loops
//! [`accept_paused_for`] once per connection: one relaxed load each while nothing was ever
//! asked.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Connections still to end at their next response.
static BUDGET: AtomicU64 = AtomicU64::new(0);

/// How long a worker stops accepting once asked to end connections: the clients it ends
/// reconnect meanwhile, and the shared socket deals them to the workers that accept (the
/// canary) instead of back to this one, whose accept would otherwise often win the race.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(200);

/// Until when this worker does not accept (see [`ACCEPT_PAUSE`]), in microseconds since
/// [`epoch`]; 0: never paused. An atomic, not a lock: every accept reads it.
static PAUSED_UNTIL_US: AtomicU64 = AtomicU64::new(0);

/// The instant [`PAUSED_UNTIL_US`] counts from: the first pause's.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds from [`epoch`] to `at` (at least 1, so that 0 keeps meaning "never").
fn micros_since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Wakes the accept loops (and actix's pauser) when a pause begins.
static PAUSE_BEGINS: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Ends `connections` more keep-alive connections, each at its next response, and stops
/// accepting for [`ACCEPT_PAUSE`] (when `connections` is not 0).
///
/// # Example
/// ```
/// use graceful_listener::shed;
///
/// shed::end_connections(1);
/// assert!(shed::take(), "this response closes its connection");
/// assert!(!shed::take(), "one connection asked for, one given");
/// ```
pub fn end_connections(connections: u64) {
    BUDGET.fetch_add(connections, Ordering::Relaxed);
    if connections > 0 {
        let until = micros_since_epoch(Instant::now() + ACCEPT_PAUSE);
        PAUSED_UNTIL_US.store(until, Ordering::Relaxed);
        PAUSE_BEGINS.notify_waiters();
    }
}

/// How much longer this worker does not accept, if it is in a pause (see [`ACCEPT_PAUSE`]).
#[inline]
pub fn accept_paused_for() -> Option<Duration> {
    // Never asked: one relaxed load, no clock read.
    let until = PAUSED_UNTIL_US.load(Ordering::Relaxed);
    if until == 0 {
        return None;
    }
    let now = micros_since_epoch(Instant::now());
    (until > now).then(|| Duration::from_micros(until - now))
}

/// Waits until a pause in accepting begins (see [`ACCEPT_PAUSE`]); returns its length. For
/// servers that accept on their own (actix-web's accept thread): pause, wait, resume.
pub async fn accept_pause_begins() -> Duration {
    loop {
        let begins = PAUSE_BEGINS.notified();
        if let Some(left) = accept_paused_for() {
            return left;
        }
        begins.await;
    }
}

/// Resolves when a pause in accepting begins: an accept loop waiting for a connection
/// stops waiting, and looks at [`accept_paused_for`] again.
pub(crate) fn pause_begins() -> tokio::sync::futures::Notified<'static> {
    PAUSE_BEGINS.notified()
}

/// Whether the response about to be written should be its connection's last (answered with
/// `Connection: close`); takes one from the connections asked for by [`end_connections`].
#[inline]
pub fn take() -> bool {
    let mut left = BUDGET.load(Ordering::Relaxed);
    // Bounded: each round loses only to another response taking one at the same instant.
    while left > 0 {
        match BUDGET.compare_exchange_weak(left, left - 1, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(now) => left = now,
        }
    }
    false
}

/// How many of `live` connections a share of `permille` (thousandths) is: rounded up, so
/// that any share of one connection moves it.
///
/// # Example
/// ```
/// assert_eq!(graceful_listener::shed::share_of(333, 4), 2);
/// assert_eq!(graceful_listener::shed::share_of(0, 4), 0);
/// assert_eq!(graceful_listener::shed::share_of(1000, 4), 4);
/// ```
pub fn share_of(permille: u64, live: usize) -> u64 {
    (permille.min(1000) * live as u64).div_ceil(1000)
}

/// Reads a master's reply to `worker:stats`: `shed PERMILLE` asks this worker to end that
/// share (in thousandths) of its keep-alive connections; anything else asks nothing.
///
/// # Example
/// ```
/// use graceful_listener::shed::parse_reply;
///
/// assert_eq!(parse_reply("{\"message\":\"shed 333\",\"request_id\":null}"), Some(333));
/// assert_eq!(parse_reply("{\"message\":\"ok\"}"), None);
/// ```
pub fn parse_reply(line: &str) -> Option<u64> {
    let rest = &line[line.find("shed ")? + "shed ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}
