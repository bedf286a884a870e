//! What a worker records through the [`metrics`] facade, and the responses it counts for its
//! master (`worker:stats`): every metric's name written once, here.
//!
//! A worker records into whatever recorder the application installed (metrics-exporter-
//! prometheus, statsd, ...); with none, each record is a check of an empty handle. The handles
//! are registered once, the first time a worker needs them, so that the hot path (one
//! response, one connection) never hashes a name: install the recorder before the worker
//! starts.
//!
//! | metric | kind | labels | what |
//! | --- | --- | --- | --- |
//! | `graceful_listener_connections_accepted_total` | counter | | connections accepted |
//! | `graceful_listener_connections_active` | gauge | | connections open now |
//! | `graceful_listener_connections_drained_total` | counter | | connections that finished on their own after the stop |
//! | `graceful_listener_connections_forced_total` | counter | | connections cut at the drain timeout or a second signal |
//! | `graceful_listener_responses_total` | counter | `class` = `1xx` ... `5xx` | responses, counted by the HTTP adapters when their head is ready |
//! | `graceful_listener_warm_up_seconds` | histogram | | time the warm-up took |
//! | `graceful_listener_ready_seconds` | histogram | | time from the worker's start to its ACK (or `READY=1`) |
//! | `graceful_listener_drain_seconds` | histogram | | time from the stop to the end of the drain |
//! | `graceful_listener_lame_duck` | gauge | | 1 while in the lame duck, else 0 |

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};

/// Connections accepted (counter).
pub const CONNECTIONS_ACCEPTED: &str = "graceful_listener_connections_accepted_total";
/// Connections open now (gauge).
pub const CONNECTIONS_ACTIVE: &str = "graceful_listener_connections_active";
/// Connections that finished on their own after the stop (counter).
pub const CONNECTIONS_DRAINED: &str = "graceful_listener_connections_drained_total";
/// Connections cut at the drain timeout or on a second signal (counter).
pub const CONNECTIONS_FORCED: &str = "graceful_listener_connections_forced_total";
/// Responses by status class, label `class` (counter).
pub const RESPONSES: &str = "graceful_listener_responses_total";
/// Time the warm-up took, in seconds (histogram).
pub const WARM_UP_SECONDS: &str = "graceful_listener_warm_up_seconds";
/// Time from the worker's start to its readiness (ACK or `READY=1`), in seconds (histogram).
pub const READY_SECONDS: &str = "graceful_listener_ready_seconds";
/// Time from the stop to the end of the drain, in seconds (histogram).
pub const DRAIN_SECONDS: &str = "graceful_listener_drain_seconds";
/// 1 while the worker is in its lame duck, else 0 (gauge).
pub const LAME_DUCK: &str = "graceful_listener_lame_duck";

/// The status classes, in the order of [`response_counts`].
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// This process's responses by class, for `worker:stats`: counted whether or not a recorder
/// is installed, since a master may ask for them.
static RESPONSE_COUNTS: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

struct Handles {
    accepted: Counter,
    active: Gauge,
    drained: Counter,
    forced: Counter,
    responses: [Counter; 5],
    warm_up: Histogram,
    ready: Histogram,
    drain: Histogram,
    lame_duck: Gauge,
}

static HANDLES: OnceLock<Handles> = OnceLock::new();

fn handles() -> &'static Handles {
    HANDLES.get_or_init(|| Handles {
        accepted: metrics::counter!(CONNECTIONS_ACCEPTED),
        active: metrics::gauge!(CONNECTIONS_ACTIVE),
        drained: metrics::counter!(CONNECTIONS_DRAINED),
        forced: metrics::counter!(CONNECTIONS_FORCED),
        responses: STATUS_CLASSES.map(|class| metrics::counter!(RESPONSES, "class" => class)),
        warm_up: metrics::histogram!(WARM_UP_SECONDS),
        ready: metrics::histogram!(READY_SECONDS),
        drain: metrics::histogram!(DRAIN_SECONDS),
        lame_duck: metrics::gauge!(LAME_DUCK),
    })
}

/// Registers every handle with the recorder installed now, with its help text (called when
/// a worker starts).
pub(crate) fn register() {
    static DESCRIBED: std::sync::Once = std::sync::Once::new();
    DESCRIBED.call_once(|| {
        use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
        describe_counter!(CONNECTIONS_ACCEPTED, "Connections accepted.");
        describe_gauge!(CONNECTIONS_ACTIVE, "Connections open now.");
        describe_counter!(
            CONNECTIONS_DRAINED,
            "Connections that finished on their own after the stop."
        );
        describe_counter!(
            CONNECTIONS_FORCED,
            "Connections cut at the drain timeout or on a second signal."
        );
        describe_counter!(RESPONSES, "Responses by status class.");
        describe_histogram!(WARM_UP_SECONDS, Unit::Seconds, "Time the warm-up took.");
        describe_histogram!(
            READY_SECONDS,
            Unit::Seconds,
            "Time from the worker's start to its readiness."
        );
        describe_histogram!(
            DRAIN_SECONDS,
            Unit::Seconds,
            "Time from the stop to the end of the drain."
        );
        describe_gauge!(LAME_DUCK, "1 while in the lame duck, else 0.");
    });
    handles();
}

/// Counts one response by its status code: for the master (`worker:stats`) and the metrics.
/// Codes outside 100..=599 are not counted. The HTTP adapters call it for every response,
/// when its head is ready; a server of your own can too.
///
/// # Example
/// ```
/// use graceful_listener::telemetry::{record_response, response_counts};
///
/// let before = response_counts();
/// record_response(503);
/// assert_eq!(response_counts()[4], before[4] + 1);
/// ```
#[inline]
pub fn record_response(status: u16) {
    let class = usize::from(status / 100).wrapping_sub(1);
    if class < 5 {
        RESPONSE_COUNTS[class].fetch_add(1, Ordering::Relaxed);
        handles().responses[class].increment(1);
    }
}

/// This process's responses so far by class: 1xx, 2xx, 3xx, 4xx, 5xx.
pub fn response_counts() -> [u64; 5] {
    std::array::from_fn(|class| RESPONSE_COUNTS[class].load(Ordering::Relaxed))
}

/// Response times, for `worker:stats`, are counted in this many buckets: bucket `i` holds the
/// responses whose head was ready within [`latency_bound_ms`]`(i)` of the request (under 1 ms,
/// 2 ms, 4 ms, ... 8 s; the last, 16 s and more).
pub const LATENCY_BUCKETS: usize = 15;

/// This process's response times by bucket, for `worker:stats`.
static LATENCY_COUNTS: [AtomicU64; LATENCY_BUCKETS] =
    [const { AtomicU64::new(0) }; LATENCY_BUCKETS];

/// The bucket of a response time: the smallest power of two milliseconds above it.
fn latency_bucket(took: Duration) -> usize {
    let ms = took.as_millis();
    let bits = (u128::BITS - ms.leading_zeros()) as usize;
    bits.min(LATENCY_BUCKETS - 1)
}

/// The upper bound, in milliseconds, of latency bucket `bucket` (the last one has none: its
/// bound is given as twice the one before).
pub fn latency_bound_ms(bucket: usize) -> u64 {
    1u64 << bucket.min(63)
}

/// Counts one response's time, from its request to its head being ready: the HTTP adapters
/// call it for every response, beside [`record_response`].
///
/// # Example
/// ```
/// use std::time::Duration;
/// use graceful_listener::telemetry::{latency_counts, record_latency};
///
/// let before = latency_counts();
/// record_latency(Duration::from_millis(200)); // under 256 ms: bucket 8
/// assert_eq!(latency_counts()[8], before[8] + 1);
/// ```
#[inline]
pub fn record_latency(took: Duration) {
    LATENCY_COUNTS[latency_bucket(took)].fetch_add(1, Ordering::Relaxed);
}

/// This process's response times so far, by bucket (see [`LATENCY_BUCKETS`]).
pub fn latency_counts() -> [u64; LATENCY_BUCKETS] {
    std::array::from_fn(|bucket| LATENCY_COUNTS[bucket].load(Ordering::Relaxed))
}

/// The 99th percentile of the response times counted in `buckets`, as its bucket's bound in
/// milliseconds; `None` without any.
///
/// # Example
/// ```
/// use graceful_listener::telemetry::{LATENCY_BUCKETS, p99_ms};
///
/// let mut buckets = [0u64; LATENCY_BUCKETS];
/// buckets[1] = 990; // under 2 ms
/// buckets[8] = 10; // under 256 ms
/// assert_eq!(p99_ms(&buckets), Some(2));
/// buckets[8] = 20;
/// assert_eq!(p99_ms(&buckets), Some(256));
/// ```
pub fn p99_ms(buckets: &[u64; LATENCY_BUCKETS]) -> Option<u64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    // The smallest bucket at or below which 99% of the responses are.
    let wanted = total - total / 100;
    let mut seen = 0;
    for (bucket, count) in buckets.iter().enumerate() {
        seen += count;
        if seen >= wanted {
            return Some(latency_bound_ms(bucket));
        }
    }
    Some(latency_bound_ms(LATENCY_BUCKETS - 1))
}

pub(crate) fn connection_opened(live: usize) {
    let handles = handles();
    handles.accepted.increment(1);
    handles.active.set(live as f64);
}

pub(crate) fn connection_closed(live: usize) {
    handles().active.set(live as f64);
}

pub(crate) fn warmed_up(took: Duration) {
    handles().warm_up.record(took.as_secs_f64());
}

pub(crate) fn ready(took: Duration) {
    handles().ready.record(took.as_secs_f64());
}

pub(crate) fn lame_duck(on: bool) {
    handles().lame_duck.set(if on { 1.0 } else { 0.0 });
}

pub(crate) fn drained(drained: u64, forced: u64, took: Duration) {
    let handles = handles();
    handles.drained.increment(drained);
    handles.forced.increment(forced);
    handles.drain.record(took.as_secs_f64());
    handles.lame_duck.set(0.0);
}
