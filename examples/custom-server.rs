//! A custom `Server`: a TCP line echo that answers each line `X` with `pid=<pid> X`.
//!
//! Under Einhorn: `einhorn-master -m manual -b 127.0.0.1:9000 -- target/debug/examples/custom-server`
//! On its own:    `cargo run --example custom-server -- --bind 127.0.0.1:9000`
//! Try it:        `nc 127.0.0.1 9000`, type a line, then upgrade the master: your connection
//!                keeps its worker until you close it; new connections reach the new workers.

mod common;

use graceful_listener::{GracefulListener, Run, Server};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Echoes lines, prefixed with this process's pid.
struct LineEcho;

impl Server for LineEcho {
    async fn serve(self, mut listener: GracefulListener) -> std::io::Result<()> {
        let pid = std::process::id();
        while let Some((conn, peer)) = listener.accept().await {
            tokio::spawn(async move {
                tracing::debug!(%peer, "connection");
                let (read, mut write) = tokio::io::split(conn);
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if write
                        .write_all(format!("pid={pid} {line}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = common::Args::parse();
    let _span = common::init_tracing();
    let result = Run::new(LineEcho)
        .bind(args.bind.clone())
        .drain_timeout(args.drain_timeout())
        .lame_duck(args.lame_duck())
        .on_stop(|| tracing::info!("on_stop: accepting stopped, draining"))
        .await;
    common::exit_status(result)
}
