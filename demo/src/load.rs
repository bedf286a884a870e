//! A keep-alive HTTP/1.1 load client: N connections sending requests back to back, counting
//! every failure by kind and which worker pids answered.
//!
//! Each connection is a `hyper::client::conn::http1` connection over its own TCP stream, so
//! what happens to it is exactly what the server did: nothing is retried or hidden by a pool.
//! A connection is reused until the server says `Connection: close` or closes it while idle
//! (neither is a failure: that is how a graceful server hands clients over), and is replaced
//! after an error.
//!
//! # Example
//! ```no_run
//! use std::time::Duration;
//! use graceful_listener_demo::load::{LoadConfig, start};
//!
//! let load = start(LoadConfig::new("127.0.0.1:8000".parse().unwrap()).connections(32).duration(Duration::from_secs(10)));
//! // ... upgrade the server meanwhile ...
//! let report = load.wait();
//! assert_eq!(report.failed(), 0, "{report}");
//! println!("{report}");
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::{CONNECTION, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What to send, where, and for how long.
#[derive(Debug, Clone)]
#[must_use]
pub struct LoadConfig {
    /// The server.
    pub addr: SocketAddr,
    /// Connections kept open at once.
    pub connections: usize,
    /// How long to send for; requests in flight at the end complete (within `timeout`).
    pub duration: Duration,
    /// Stop each connection after this many requests (`None`: only `duration` bounds it).
    pub requests_per_connection: Option<u64>,
    /// Close each connection after this many requests and open a new one, as clients come
    /// and go (`None`: keep each as long as the server does).
    pub reconnect_every: Option<u64>,
    /// The request path (`GET`).
    pub path: String,
    /// The longest a connect, or a request and its response, may take.
    pub timeout: Duration,
    /// Speak HTTPS with this client configuration (the server's name is its IP address).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Between two requests on a connection, a pause drawn uniformly from this range, as a
    /// real client's think time (`None`: back to back). A paced client keeps its connection
    /// and lets it go idle, which is what a balancer's pool of upstream connections sees.
    pub pace: Option<(Duration, Duration)>,
}

impl LoadConfig {
    /// 8 connections sending `GET /` to `addr` for 5 s, with a 10 s timeout per request.
    pub fn new(addr: SocketAddr) -> LoadConfig {
        LoadConfig {
            addr,
            connections: 8,
            duration: Duration::from_secs(5),
            requests_per_connection: None,
            reconnect_every: None,
            path: "/".to_owned(),
            timeout: Duration::from_secs(10),
            tls: None,
            pace: None,
        }
    }

    /// Sets [`LoadConfig::pace`]: a pause of `min..=max` between two requests on a
    /// connection (the bounds in either order).
    pub fn pace(mut self, min: Duration, max: Duration) -> LoadConfig {
        self.pace = Some((min.min(max), min.max(max)));
        self
    }

    /// Sets [`LoadConfig::tls`].
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>) -> LoadConfig {
        self.tls = Some(config);
        self
    }

    /// Sets [`LoadConfig::connections`].
    pub fn connections(mut self, connections: usize) -> LoadConfig {
        self.connections = connections;
        self
    }

    /// Sets [`LoadConfig::duration`].
    pub fn duration(mut self, duration: Duration) -> LoadConfig {
        self.duration = duration;
        self
    }

    /// Sets [`LoadConfig::requests_per_connection`].
    pub fn requests_per_connection(mut self, requests: u64) -> LoadConfig {
        self.requests_per_connection = Some(requests);
        self
    }

    /// Sets [`LoadConfig::reconnect_every`].
    pub fn reconnect_every(mut self, requests: u64) -> LoadConfig {
        self.reconnect_every = Some(requests.max(1));
        self
    }

    /// Sets [`LoadConfig::path`].
    pub fn path(mut self, path: impl Into<String>) -> LoadConfig {
        self.path = path.into();
        self
    }

    /// Sets [`LoadConfig::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> LoadConfig {
        self.timeout = timeout;
        self
    }
}

/// How a request (or a connection attempt) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureKind {
    /// The TCP connect or the HTTP handshake failed: no request was sent.
    Connect,
    /// Sending the request failed (broken pipe).
    Write,
    /// The connection was reset while waiting for or reading the response.
    Reset,
    /// The server closed the connection after the request was sent, before a whole response.
    Closed,
    /// No whole response within the timeout.
    Timeout,
    /// A response whose status is not 2xx.
    Status,
    /// Any other error.
    Other,
}

impl FailureKind {
    /// Whether this is a failure of a request that was sent (every kind but `Connect`).
    pub fn is_request_failure(self) -> bool {
        self != FailureKind::Connect
    }
}

/// What a load run saw.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Requests answered with a 2xx status and a whole body.
    pub ok: u64,
    /// Failures by kind.
    pub failures: BTreeMap<FailureKind, u64>,
    /// Connections opened.
    pub connects: u64,
    /// Connections the server ended cleanly: a `Connection: close` response, or a close while
    /// idle between requests.
    pub server_closes: u64,
    /// Successful responses by the pid in their body (`pid=<N>`); responses without one
    /// count under pid 0.
    pub pids: BTreeMap<u32, u64>,
    /// The first few error messages, for diagnosis.
    pub first_errors: Vec<String>,
    /// Wall time of the run.
    pub elapsed: Duration,
    latencies_us: Vec<u32>,
}

/// How many error messages a report keeps.
const KEPT_ERRORS: usize = 10;

impl LoadReport {
    /// Failed requests (every failure but connect errors).
    pub fn failed_requests(&self) -> u64 {
        self.failures
            .iter()
            .filter(|(kind, _)| kind.is_request_failure())
            .map(|(_, n)| n)
            .sum()
    }

    /// Every failure, connect errors included.
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    /// Failures of one kind.
    pub fn failures_of(&self, kind: FailureKind) -> u64 {
        self.failures.get(&kind).copied().unwrap_or(0)
    }

    /// The latency below which a fraction `q` (0..=1) of the successful requests completed.
    pub fn latency_quantile(&self, q: f64) -> Option<Duration> {
        if self.latencies_us.is_empty() {
            return None;
        }
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        Some(Duration::from_micros(u64::from(sorted[index])))
    }

    /// The median latency.
    pub fn p50(&self) -> Option<Duration> {
        self.latency_quantile(0.5)
    }

    /// The 99th percentile latency.
    pub fn p99(&self) -> Option<Duration> {
        self.latency_quantile(0.99)
    }

    /// Successful requests per second over the run.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn fail(&mut self, kind: FailureKind, message: impl fmt::Display) {
        *self.failures.entry(kind).or_default() += 1;
        if self.first_errors.len() < KEPT_ERRORS {
            self.first_errors.push(format!("{kind:?}: {message}"));
        }
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Option<Duration>| {
            d.map_or("-".to_owned(), |d| {
                format!("{:.2}ms", d.as_secs_f64() * 1e3)
            })
        };
        write!(
            f,
            "{} ok, {} failed requests, {} connect errors in {:.1}s ({:.0}/s); p50 {} p99 {}; {} connections, {} closed by the server; pids {:?}; failures {:?}",
            self.ok,
            self.failed_requests(),
            self.failures_of(FailureKind::Connect),
            self.elapsed.as_secs_f64(),
            self.rate(),
            ms(self.p50()),
            ms(self.p99()),
            self.connects,
            self.server_closes,
            self.pids,
            self.failures,
        )?;
        for error in &self.first_errors {
            write!(f, "\n  {error}")?;
        }
        Ok(())
    }
}

/// A load run in progress on its own thread (and runtime), so that synchronous tests can
/// upgrade the server meanwhile.
#[derive(Debug)]
pub struct Load {
    started: Instant,
    shared: Arc<Mutex<LoadReport>>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<LoadReport>,
}

/// Starts a load run on a new thread; see [`Load`].
///
/// # Panics
/// When the thread or its runtime cannot be created.
pub fn start(config: LoadConfig) -> Load {
    let shared = Arc::new(Mutex::new(LoadReport::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let thread = std::thread::Builder::new()
        .name("load".to_owned())
        .spawn({
            let (shared, stop) = (shared.clone(), stop.clone());
            move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("load runtime");
                runtime.block_on(drive(config, shared, stop))
            }
        })
        .expect("load thread");
    Load {
        started,
        shared,
        stop,
        thread,
    }
}

impl Load {
    /// What the run has seen so far (`elapsed`: since the run started).
    pub fn snapshot(&self) -> LoadReport {
        let mut report = lock(&self.shared).clone();
        report.elapsed = self.started.elapsed();
        report
    }

    /// Ends the run early (requests in flight complete) and returns its report.
    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Release);
        self.wait()
    }

    /// Waits for the run to end (its duration, or its request count) and returns its report.
    ///
    /// # Panics
    /// When the load thread panicked.
    pub fn wait(self) -> LoadReport {
        self.thread.join().expect("load thread panicked")
    }
}

/// Runs a load on the current runtime until `config.duration` has passed (or every
/// connection has sent its requests); returns what it saw.
pub async fn run(config: LoadConfig) -> LoadReport {
    drive(
        config,
        Arc::new(Mutex::new(LoadReport::default())),
        Arc::new(AtomicBool::new(false)),
    )
    .await
}

async fn drive(
    config: LoadConfig,
    shared: Arc<Mutex<LoadReport>>,
    stop: Arc<AtomicBool>,
) -> LoadReport {
    let started = Instant::now();
    let deadline = started + config.duration;
    let config = Arc::new(config);
    let tasks: Vec<_> = (0..config.connections)
        .map(|_| {
            tokio::spawn(connection_loop(
                config.clone(),
                deadline,
                shared.clone(),
                stop.clone(),
            ))
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let mut report = lock(&shared).clone();
    report.elapsed = started.elapsed();
    report
}

fn lock(shared: &Mutex<LoadReport>) -> std::sync::MutexGuard<'_, LoadReport> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// After a connect error, how long to wait before the next attempt.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(10);

/// One client connection slot: connect, send requests back to back, reconnect as needed.
async fn connection_loop(
    config: Arc<LoadConfig>,
    deadline: Instant,
    shared: Arc<Mutex<LoadReport>>,
    stop: Arc<AtomicBool>,
) {
    let mut sent = 0u64;
    let more = |sent: u64| {
        Instant::now() < deadline
            && !stop.load(Ordering::Acquire)
            && config.requests_per_connection.is_none_or(|max| sent < max)
    };
    'connections: while more(sent) {
        let mut sender = match connect(&config).await {
            Ok(sender) => {
                lock(&shared).connects += 1;
                sender
            }
            Err(e) => {
                lock(&shared).fail(FailureKind::Connect, e);
                tokio::time::sleep(RECONNECT_BACKOFF).await;
                continue;
            }
        };
        let mut on_this = 0u64;
        while more(sent) {
            if config.reconnect_every.is_some_and(|every| on_this >= every) {
                continue 'connections;
            }
            if let Some(pause) = think_time(&config, on_this) {
                tokio::time::sleep(pause).await;
                if !more(sent) {
                    break 'connections;
                }
            }
            on_this += 1;
            // A connection the server closed while it was idle is replaced: no request was
            // sent on it, so nothing failed.
            if sender.ready().await.is_err() {
                lock(&shared).server_closes += 1;
                continue 'connections;
            }
            sent += 1;
            let started = Instant::now();
            let outcome = tokio::time::timeout(config.timeout, request(&mut sender, &config)).await;
            let latency = started.elapsed();
            let mut report = lock(&shared);
            match outcome {
                Err(_) => {
                    report.fail(
                        FailureKind::Timeout,
                        format_args!("no response within {:?}", config.timeout),
                    );
                    continue 'connections;
                }
                Ok(Err((kind, message))) => {
                    report.fail(kind, message);
                    continue 'connections;
                }
                Ok(Ok(answer)) if !answer.status.is_success() => {
                    report.fail(FailureKind::Status, answer.status);
                    if answer.close {
                        continue 'connections;
                    }
                }
                Ok(Ok(answer)) => {
                    report.ok += 1;
                    report
                        .latencies_us
                        .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
                    *report.pids.entry(answer.pid.unwrap_or(0)).or_default() += 1;
                    if answer.close {
                        report.server_closes += 1;
                        continue 'connections;
                    }
                }
            }
        }
    }
}

/// The pause before the next request on a connection, when paced: none before its first.
fn think_time(config: &LoadConfig, sent_on_this: u64) -> Option<Duration> {
    let (min, max) = config.pace?;
    if sent_on_this == 0 {
        return None;
    }
    let span = u64::try_from((max - min).as_micros()).unwrap_or(u64::MAX);
    Some(min + Duration::from_micros(fastrand::u64(0..=span)))
}

async fn connect(config: &LoadConfig) -> Result<http1::SendRequest<Empty<Bytes>>, String> {
    let connecting = async {
        let stream = TcpStream::connect(config.addr)
            .await
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let Some(tls) = &config.tls else {
            return handshake(stream).await;
        };
        let name = rustls::pki_types::ServerName::IpAddress(config.addr.ip().into());
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        handshake(stream).await
    };
    tokio::time::timeout(config.timeout, connecting)
        .await
        .unwrap_or_else(|_| Err(format!("connect timed out after {:?}", config.timeout)))
}

async fn handshake<T>(stream: T) -> Result<http1::SendRequest<Empty<Bytes>>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        // Its errors surface through the requests on it.
        let _ = conn.await;
    });
    Ok(sender)
}

/// A whole response, as far as the load client cares.
struct Answer {
    status: StatusCode,
    close: bool,
    pid: Option<u32>,
}

async fn request(
    sender: &mut http1::SendRequest<Empty<Bytes>>,
    config: &LoadConfig,
) -> Result<Answer, (FailureKind, String)> {
    let request = Request::get(config.path.as_str())
        .header(HOST, config.addr.to_string())
        .body(Empty::new())
        .map_err(|e| (FailureKind::Other, e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| classify(&e))?;
    let status = response.status();
    let close = response.headers().get_all(CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    });
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| classify(&e))?
        .to_bytes();
    Ok(Answer {
        status,
        close,
        pid: parse_pid(&body),
    })
}

/// The number after the first `pid=` in `body`.
pub fn parse_pid(body: &[u8]) -> Option<u32> {
    let at = body.windows(4).position(|w| w == b"pid=")? + 4;
    let digits: Vec<u8> = body[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

fn classify(error: &hyper::Error) -> (FailureKind, String) {
    use std::error::Error as _;
    let mut source = error.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            let kind = match io.kind() {
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                    FailureKind::Reset
                }
                std::io::ErrorKind::BrokenPipe => FailureKind::Write,
                std::io::ErrorKind::TimedOut => FailureKind::Timeout,
                _ => FailureKind::Other,
            };
            return (kind, error.to_string());
        }
        source = e.source();
    }
    let kind = if error.is_incomplete_message() || error.is_canceled() || error.is_closed() {
        FailureKind::Closed
    } else {
        FailureKind::Other
    };
    (kind, error.to_string())
}

/// Windows of a run: what happened between two snapshots, and sums of such windows.
impl LoadReport {
    /// What happened after `earlier` (an earlier snapshot of the same run) up to this one:
    /// counts subtracted, and the latencies of the requests completed in between.
    pub fn since(&self, earlier: &LoadReport) -> LoadReport {
        let mut failures = self.failures.clone();
        for (kind, n) in &earlier.failures {
            if let Some(count) = failures.get_mut(kind) {
                *count = count.saturating_sub(*n);
            }
        }
        failures.retain(|_, n| *n > 0);
        let mut pids = self.pids.clone();
        for (pid, n) in &earlier.pids {
            if let Some(count) = pids.get_mut(pid) {
                *count = count.saturating_sub(*n);
            }
        }
        pids.retain(|_, n| *n > 0);
        LoadReport {
            ok: self.ok.saturating_sub(earlier.ok),
            failures,
            connects: self.connects.saturating_sub(earlier.connects),
            server_closes: self.server_closes.saturating_sub(earlier.server_closes),
            pids,
            first_errors: self
                .first_errors
                .get(earlier.first_errors.len()..)
                .unwrap_or_default()
                .to_vec(),
            elapsed: self.elapsed.saturating_sub(earlier.elapsed),
            // Latencies are appended in completion order, so the newer ones are a suffix.
            latencies_us: self
                .latencies_us
                .get(earlier.latencies_us.len()..)
                .unwrap_or_default()
                .to_vec(),
        }
    }

    /// Adds `other`'s counts and latencies to this report (to sum up disjoint windows).
    pub fn absorb(&mut self, other: LoadReport) {
        self.ok += other.ok;
        for (kind, n) in other.failures {
            *self.failures.entry(kind).or_default() += n;
        }
        for (pid, n) in other.pids {
            *self.pids.entry(pid).or_default() += n;
        }
        self.connects += other.connects;
        self.server_closes += other.server_closes;
        let room = KEPT_ERRORS.saturating_sub(self.first_errors.len());
        self.first_errors
            .extend(other.first_errors.into_iter().take(room));
        self.elapsed += other.elapsed;
        self.latencies_us.extend(other.latencies_us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pids() {
        assert_eq!(parse_pid(b"hello from axum pid=1234\n"), Some(1234));
        assert_eq!(parse_pid(b"pid=7"), Some(7));
        assert_eq!(parse_pid(b"pid=x"), None);
        assert_eq!(parse_pid(b"no pid here"), None);
    }

    #[test]
    fn quantiles() {
        let report = LoadReport {
            latencies_us: (1..=100).collect(),
            ..LoadReport::default()
        };
        assert_eq!(report.p50(), Some(Duration::from_micros(51)));
        assert_eq!(report.p99(), Some(Duration::from_micros(99)));
        assert_eq!(LoadReport::default().p50(), None);
    }
}
