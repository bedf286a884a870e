//! A server that is not a tokio task: plain threads and blocking sockets, driven by the core's
//! lifecycle pieces ([`Worker`]). The same line echo as `custom-server` (each line `X` comes
//! back as `pid=<pid> X`), and the same life: ACK once accepting, stop accepting on SIGUSR2,
//! SIGTERM or SIGINT, wait for open connections up to the drain timeout, then cut them.
//!
//! This is the shape of any host that accepts on threads of its own (actix-web does): the
//! worker's signals and drain run on a small tokio runtime beside it; the server only calls
//! `handle.track(fd)` for each connection and stops accepting when told.
//!
//! Under Einhorn: `einhorn-master -m manual -b 127.0.0.1:9000 -- target/debug/examples/custom-lifecycle`
//! On its own:    `cargo run --example custom-lifecycle -- --bind 127.0.0.1:9000`

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

use graceful_listener::{
    ConnectionGuard, ListenerHandle, RunError, RunReport, StdListener, Worker, WorkerOptions,
};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

fn main() -> std::process::ExitCode {
    let args = common::Args::parse();
    let _span = common::init_tracing();
    // The worker's own runtime: signals, the ACK, the drain. The server does not use it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result = runtime.block_on(life(&args));
    common::exit_status(result)
}

async fn life(args: &common::Args) -> Result<RunReport, RunError> {
    let options = WorkerOptions::default()
        .drain_timeout(args.drain_timeout())
        .lame_duck(args.lame_duck())
        // Async, as deregistering from service discovery would be; the drain waits for it.
        .on_stop_async(|| async {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            tracing::info!("on_stop: accepting stopped, deregistered, draining");
        });
    let mut worker = Worker::new(options)?;
    let listener = worker.listen_std(&args.bind)?;
    let (wake, woken) = UnixStream::pair().map_err(RunError::Serve)?;
    let acceptor = spawn_acceptor(listener, worker.handle(), woken);
    worker.ready().await?;
    let stop = worker.stopped().await;
    // Stop accepting before draining, so that no connection is accepted and then dropped.
    let _ = (&wake).write_all(b"stop");
    let _ = acceptor.join();
    Ok(worker.drain(stop).await)
}

/// Accepts on a thread of its own until `woken` becomes readable, giving each connection a
/// thread and a guard.
fn spawn_acceptor(
    listener: StdListener,
    handle: ListenerHandle,
    woken: UnixStream,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        loop {
            let mut fds = [
                PollFd::new(listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(woken.as_fd(), PollFlags::POLLIN),
            ];
            if poll(&mut fds, PollTimeout::NONE).is_err() {
                continue; // EINTR
            }
            if fds[1].any() == Some(true) {
                tracing::debug!("acceptor stopped");
                return; // dropping the listener closes our copy of the socket
            }
            // The listener is non-blocking: a connection another worker took is `WouldBlock`.
            match &listener {
                StdListener::Tcp(l) => {
                    if let Ok((stream, _)) = l.accept() {
                        let guard = handle.track(stream.as_fd());
                        std::thread::spawn(move || echo(stream, guard));
                    }
                }
                StdListener::Unix(l) => {
                    if let Ok((stream, _)) = l.accept() {
                        let guard = handle.track(stream.as_fd());
                        std::thread::spawn(move || echo(stream, guard));
                    }
                }
                _ => unreachable!("TCP or Unix"),
            }
        }
    })
}

/// Echoes lines until the client closes (or hammer time shuts the socket down).
fn echo<S>(stream: S, guard: ConnectionGuard)
where
    for<'a> &'a S: Read + Write,
{
    let pid = std::process::id();
    let mut lines = BufReader::new(&stream).lines();
    while let Some(Ok(line)) = lines.next() {
        if (&stream)
            .write_all(format!("pid={pid} {line}\n").as_bytes())
            .is_err()
        {
            break;
        }
    }
    // The connection stops counting when it is closed.
    drop(stream);
    drop(guard);
}
