//! A worker's life under Einhorn's protocol, timed: from spawn to its ACK on the command
//! socket, and from SIGUSR2 to its exit, idle and busy (keep-alive load running at the
//! signal). The worker is the framework's example under a stand-in master
//! ([`FakeEinhorn`]), so nothing else is timed. Busy includes the idle grace: the keep-alive
//! connections are told `Connection: close` on their next request, and one that stays idle
//! is closed after the grace.

use std::time::{Duration, Instant};

use graceful_listener_suite::fake_einhorn::FakeEinhorn;
use graceful_listener_suite::harness::{Proc, example};
use graceful_listener_suite::load::{self, LoadConfig};
use nix::sys::signal::Signal;
use serde::Serialize;

use crate::engine::median;

#[derive(Debug, Serialize)]
pub(crate) struct Lifecycle {
    pub(crate) runs: usize,
    /// Median from spawn to the ACK, in milliseconds.
    pub(crate) spawn_to_ack_ms: f64,
    /// Median from SIGUSR2 to exit with no connection open, in milliseconds.
    pub(crate) stop_idle_ms: f64,
    /// Median from SIGUSR2 to exit under keep-alive load, in milliseconds.
    pub(crate) stop_busy_ms: f64,
    /// Connections of the load when busy.
    pub(crate) busy_connections: usize,
}

const WAIT: Duration = Duration::from_secs(30);

/// One worker: spawn, ACK, optionally load, SIGUSR2, exit. Returns (spawn-to-ACK, stop-to-exit).
fn once(worker: &str, busy: usize) -> Result<(Duration, Duration), String> {
    let mut einhorn = FakeEinhorn::new().map_err(|e| e.to_string())?;
    let addr = einhorn.add_tcp_listener().map_err(|e| e.to_string())?;
    let mut cmd = einhorn.command(example(worker));
    cmd.env("RUST_LOG", "warn");
    let spawned = Instant::now();
    let mut proc = Proc::spawn(cmd).map_err(|e| format!("cannot start {worker}: {e}"))?;
    einhorn
        .recv_command(WAIT)
        .map_err(|e| format!("{worker}: no ACK ({e}):\n{}", proc.output()))?;
    let acked = spawned.elapsed();
    let load = (busy > 0).then(|| {
        load::start(
            LoadConfig::new(addr)
                .connections(busy)
                .duration(Duration::from_secs(60))
                .timeout(Duration::from_secs(1)),
        )
    });
    if let Some(load) = &load {
        // Busy means requests flowing on every connection.
        let deadline = Instant::now() + WAIT;
        while load.snapshot().ok < 10 * busy as u64 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let signalled = Instant::now();
    proc.signal(Signal::SIGUSR2)
        .map_err(|e| format!("SIGUSR2: {e}"))?;
    let status = proc.wait_timeout(WAIT);
    let stopped = signalled.elapsed();
    // No new worker takes over here, so the load's reconnects after the stop wait in the
    // listen queue and time out: what counts is only how long the worker took to go.
    drop(load.map(load::Load::stop));
    match status {
        Some(status) if status.success() => Ok((acked, stopped)),
        other => Err(format!(
            "{worker}: exit {other:?} after SIGUSR2:\n{}",
            proc.output()
        )),
    }
}

pub(crate) fn lifecycle(worker: &str, runs: usize, busy: usize) -> Result<Lifecycle, String> {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (mut acks, mut idle, mut loaded) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let (ack, stop) = once(worker, 0)?;
        acks.push(ms(ack));
        idle.push(ms(stop));
        let (ack, stop) = once(worker, busy)?;
        acks.push(ms(ack));
        loaded.push(ms(stop));
    }
    Ok(Lifecycle {
        runs,
        spawn_to_ack_ms: median(acks),
        stop_idle_ms: median(idle),
        stop_busy_ms: median(loaded),
        busy_connections: busy,
    })
}
