//! Hostile clients at the stop: N idle keep-alive connections plus one client trickling a
//! request head a byte every 100 ms, then SIGTERM. How long the worker takes to exit, against
//! the target. A drain leaves idle connections to their peer (a load balancer may send on
//! them at any instant) up to the idle timeout, so the worker runs with a 1 s one
//! (`--idle-timeout 1`); the target is the later of that (plus the supervisor's first look, up
//! to a second) and the idle grace that cuts the trickler, plus the linger, plus 0.5 s.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::Serialize;

use crate::engine::{Mode, Server, idle_connections};

#[derive(Debug, Serialize)]
pub(crate) struct Hostile {
    pub(crate) idle_connections: usize,
    /// From SIGTERM to the worker's exit.
    pub(crate) exit_s: f64,
    /// The idle timeout (plus a look) or the idle grace, plus the linger, plus 0.5 s.
    pub(crate) target_s: f64,
}

/// Sends a request head a byte every 100 ms until the server stops reading or `stop`; says
/// on `started` once its first bytes are out (the connection is then a partial head).
fn trickle(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    started: std::sync::mpsc::Sender<()>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(mut stream) = TcpStream::connect(addr) else {
            return;
        };
        let head = b"GET / HTTP/1.1\r\nhost: bench\r\nx-slow: ";
        // Bounded: 60 s of bytes at most.
        for (i, byte) in head
            .iter()
            .chain(std::iter::repeat_n(&b'a', 600))
            .enumerate()
        {
            if stop.load(Ordering::Acquire) || stream.write_all(&[*byte]).is_err() {
                return;
            }
            if i == 2 {
                let _ = started.send(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// The idle timeout the worker runs with (`--idle-timeout`).
const IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// The target for `framework` with [`IDLE_TIMEOUT`] and the adapter's other defaults.
fn target(framework: &str) -> Duration {
    let half = Duration::from_millis(500);
    match framework {
        // actix-web's own engine: its keep-alive and request timeouts, with their timer's
        // granularity (a second), and no linger of ours.
        "actix" => IDLE_TIMEOUT + Duration::from_secs(1) + half,
        // The supervisor first looks at a connection up to a second after it opens.
        _ => {
            (IDLE_TIMEOUT + Duration::from_secs(1)).max(einhorn_hyper::DEFAULT_IDLE_GRACE)
                + einhorn_hyper::DEFAULT_LINGER
                + half
        }
    }
}

pub(crate) fn hostile(framework: &str, idle: usize) -> Result<Hostile, String> {
    let idle_timeout = IDLE_TIMEOUT.as_secs_f64().to_string();
    let mut server = Server::start_with(
        framework,
        Mode::Ours,
        &[],
        &["--idle-timeout", &idle_timeout],
    )?;
    let held = idle_connections(server.addr, idle)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (started_tx, started) = std::sync::mpsc::channel();
    let trickler = trickle(server.addr, stop.clone(), started_tx);
    started
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| format!("{framework}: the trickling client could not connect"))?;
    let stopped = Instant::now();
    server
        .proc
        .signal(Signal::SIGTERM)
        .map_err(|e| format!("SIGTERM: {e}"))?;
    let exit = server.proc.wait_timeout(Duration::from_secs(60));
    let exit_s = stopped.elapsed().as_secs_f64();
    stop.store(true, Ordering::Release);
    let _ = trickler.join();
    drop(held);
    if exit.is_none() {
        return Err(format!(
            "{framework}: the worker did not exit within 60 s of SIGTERM:\n{}",
            server.proc.output()
        ));
    }
    Ok(Hostile {
        idle_connections: idle,
        exit_s,
        target_s: target(framework).as_secs_f64(),
    })
}
