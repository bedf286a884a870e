//! Hostile clients at the stop: N idle keep-alive connections plus one client trickling a
//! request head a byte every 100 ms, then SIGTERM. How long the worker takes to exit, against
//! the target: the idle grace, plus the linger, plus 0.5 s.

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
    /// The idle grace plus the linger plus 0.5 s, at the adapter's defaults.
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

/// The target for `framework` at the adapter's defaults.
fn target(framework: &str) -> Duration {
    let half = Duration::from_millis(500);
    match framework {
        // actix-web's own engine: the adapter's idle grace, and no linger of ours.
        "actix" => einhorn_actix::DEFAULT_IDLE_GRACE + half,
        _ => einhorn_hyper::DEFAULT_IDLE_GRACE + einhorn_hyper::DEFAULT_LINGER + half,
    }
}

pub(crate) fn hostile(framework: &str, idle: usize) -> Result<Hostile, String> {
    let mut server = Server::start(framework, Mode::Ours, &[])?;
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
