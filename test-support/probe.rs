//! A new-connection probe: a fresh connection and one `GET /` every so often, timed, to see
//! whether some worker is accepting at every moment (keep-alive load alone does not: its
//! connections are already open).
//!
//! # Example
//! ```no_run
//! use std::time::Duration;
//! use graceful_listener_suite::probe::Probe;
//!
//! let probe = Probe::start("127.0.0.1:8000".parse().unwrap(), Duration::from_millis(50));
//! // ... upgrade the server meanwhile ...
//! let report = probe.stop();
//! assert!(report.failures.is_empty(), "{report}");
//! assert!(report.slowest < Duration::from_millis(500), "{report}");
//! ```

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long one probe may take before it counts as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A probe running on its own thread; [`Probe::stop`] ends it and returns what it saw.
pub struct Probe {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<ProbeReport>,
}

/// What a probe saw.
#[derive(Debug, Default, Clone)]
pub struct ProbeReport {
    /// Probes made.
    pub attempts: usize,
    /// Probes that did not get a `200` within [`PROBE_TIMEOUT`]: when (since the start), and
    /// why.
    pub failures: Vec<(Duration, String)>,
    /// The longest time from connect to the full response.
    pub slowest: Duration,
    /// When (since the start) the slowest probe began.
    pub slowest_at: Duration,
}

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} probes, {} failed, slowest {:.0} ms (at {:.2} s)",
            self.attempts,
            self.failures.len(),
            self.slowest.as_secs_f64() * 1000.0,
            self.slowest_at.as_secs_f64()
        )?;
        for (at, why) in self.failures.iter().take(5) {
            write!(f, "; at {:.2} s: {why}", at.as_secs_f64())?;
        }
        Ok(())
    }
}

impl Probe {
    /// Starts probing `addr` every `every` (a probe that takes longer delays the next).
    pub fn start(addr: SocketAddr, every: Duration) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut report = ProbeReport::default();
            // Bounded by the stop flag and by time: an hour of probing is a broken test.
            while !flag.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(3600) {
                let began = Instant::now();
                let at = began - start;
                report.attempts += 1;
                match probe_once(addr) {
                    Ok(()) => {
                        let took = began.elapsed();
                        if took > report.slowest {
                            report.slowest = took;
                            report.slowest_at = at;
                        }
                    }
                    Err(e) => report.failures.push((at, e.to_string())),
                }
                std::thread::sleep(every.saturating_sub(began.elapsed()));
            }
            report
        });
        Probe { stop, thread }
    }

    /// Stops probing; returns what was seen.
    pub fn stop(self) -> ProbeReport {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

fn probe_once(addr: SocketAddr) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    stream.write_all(b"GET / HTTP/1.1\r\nhost: probe\r\nconnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    if response.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        let head = String::from_utf8_lossy(&response[..response.len().min(40)]).into_owned();
        Err(std::io::Error::other(format!("not a 200: {head:?}")))
    }
}
