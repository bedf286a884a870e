//! What the baselines do by hand, as a Rust user would today without this project: take
//! Einhorn's first listener from `EINHORN_FD_0`, and ACK with one line to
//! `EINHORN_SOCK_PATH`. No checks beyond parsing: that is the point of a baseline.

use std::os::fd::FromRawFd;

/// Einhorn's first listener, if this process was given one.
pub(crate) fn einhorn_listener() -> Option<std::io::Result<std::net::TcpListener>> {
    let fd = std::env::var("EINHORN_FD_0").ok()?;
    Some(
        fd.parse::<i32>()
            .map_err(|_| std::io::Error::other(format!("EINHORN_FD_0={fd:?}")))
            // SAFETY: Einhorn passed us this fd as our listening socket, and nothing else owns it.
            .map(|fd| unsafe { std::net::TcpListener::from_raw_fd(fd) }),
    )
}

/// Einhorn's first listener as a tokio one if we have one, else a fresh one on `bind`.
#[allow(dead_code)] // actix-baseline takes a std listener
pub(crate) async fn tokio_listener(
    bind: std::net::SocketAddr,
) -> std::io::Result<tokio::net::TcpListener> {
    match einhorn_listener() {
        Some(inherited) => {
            let std_listener = inherited?;
            std_listener.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(std_listener)
        }
        None => tokio::net::TcpListener::bind(bind).await,
    }
}

/// Tells the Einhorn master we are up (nothing to do without one).
pub(crate) fn ack() -> std::io::Result<()> {
    use std::io::Write;
    let Ok(path) = std::env::var("EINHORN_SOCK_PATH") else {
        return Ok(());
    };
    let mut socket = std::os::unix::net::UnixStream::connect(path)?;
    writeln!(
        socket,
        r#"{{"command":"worker:ack","pid":{}}}"#,
        std::process::id()
    )
}
