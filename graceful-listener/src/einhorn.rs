//! Running as an Einhorn worker: am I one, take my listeners, tell the master I am ready.
//!
//! The wire details follow Einhorn 0.8.2 exactly; see the crate's book for the protocol.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use socket2::{Domain, SockRef, Type};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::bind::{Bind, BindError};
use crate::env::{CommandSocket, EnvError, Environment};
use crate::listener::GracefulListener;

/// How long [`ack`] keeps retrying while the master's command socket refuses connections
/// (it does for a moment while the master re-execs itself during an upgrade).
pub const ACK_RETRY_FOR: Duration = Duration::from_secs(10);

/// Whether this process is an Einhorn worker with at least one listener.
///
/// Unlike Go's `einhorn.IsRunning`, this also checks that `EINHORN_MASTER_PID` is this
/// process's parent: a grandchild that inherited the environment is not a worker.
///
/// # Example
/// ```
/// let bind = if graceful_listener::einhorn::is_running() { "einhorn@0" } else { "127.0.0.1:8000" };
/// # let _ = bind;
/// ```
pub fn is_running() -> bool {
    Environment::from_process().einhorn_worker_with_listeners()
}

/// How many listeners the master passed (`EINHORN_FD_COUNT`).
///
/// # Errors
/// An [`EnvError`] when this process is not an Einhorn worker or the count is garbage.
pub fn listener_count() -> Result<usize, EnvError> {
    let env = Environment::from_process();
    env.check_einhorn_worker()?;
    env.einhorn_fd_count()
}

/// Takes the `index`th listener the master passed (Einhorn's `-b` order), validated.
/// Each listener can be taken once.
///
/// # Errors
/// A [`BindError`] naming the variable and value at fault: not a worker, index past
/// `EINHORN_FD_COUNT`, a garbage fd, or an fd that is not a listening stream socket.
///
/// # Example
/// ```no_run
/// # async fn example() -> Result<(), graceful_listener::BindError> {
/// let listener = graceful_listener::einhorn::listener(0).await?;
/// # Ok(())
/// # }
/// ```
pub async fn listener(index: usize) -> Result<GracefulListener, BindError> {
    GracefulListener::bind(&Bind::Einhorn(index)).await
}

/// The exact line a worker sends to ACK: `{"command":"worker:ack","pid":PID}` and a newline.
///
/// # Example
/// ```
/// assert_eq!(graceful_listener::einhorn::ack_line(12345), "{\"command\":\"worker:ack\",\"pid\":12345}\n");
/// ```
pub fn ack_line(pid: u32) -> String {
    format!("{{\"command\":\"worker:ack\",\"pid\":{pid}}}\n")
}

/// The worker message that reports a worker's responses by status class to a master that
/// understands it (einhorn-master, which names it in
/// [`EINHORN_MASTER_EXTENSIONS`](crate::env::MASTER_EXTENSIONS)); Stripe's Einhorn never
/// sees it.
pub const WORKER_STATS: &str = "worker:stats";

/// The extension by which a master answers each [`WORKER_STATS`] with one line: `shed
/// PERMILLE` asks the worker to end that share of its keep-alive connections at their next
/// response (see [`crate::shed`]: a canary gets its share of clients that keep their
/// connections), anything else asks nothing. A worker reads the answer only from a master
/// that names this in [`EINHORN_MASTER_EXTENSIONS`](crate::env::MASTER_EXTENSIONS).
pub const WORKER_SHED: &str = "worker:shed";

/// How long a worker waits for the answer to its [`WORKER_STATS`] ([`WORKER_SHED`]).
const SHED_ANSWER_WITHIN: Duration = Duration::from_millis(300);

/// How often a worker reports its responses with [`WORKER_STATS`], while they change.
pub const STATS_EVERY: Duration = Duration::from_millis(500);

/// The exact `worker:stats` line: the worker's responses so far (cumulative) by class, 1xx
/// to 5xx, then its response times so far by bucket (see
/// [`telemetry::LATENCY_BUCKETS`](crate::telemetry::LATENCY_BUCKETS)), as the request's
/// `args`.
///
/// # Example
/// ```
/// use graceful_listener::einhorn::{parse_stats_args, parse_stats_latency, stats_line};
/// use graceful_listener::telemetry::LATENCY_BUCKETS;
///
/// let mut latency = [0; LATENCY_BUCKETS];
/// latency[1] = 20;
/// let line = stats_line(42, [0, 17, 0, 2, 1], &latency);
/// assert!(line.starts_with(
///     "{\"command\":\"worker:stats\",\"pid\":42,\"args\":[\"0\",\"17\",\"0\",\"2\",\"1\",\"0\",\"20\",\"0\","
/// ));
/// let args: Vec<String> = ["0", "17", "0", "2", "1"].map(String::from).to_vec();
/// // A worker of an earlier version reports no times.
/// assert_eq!(parse_stats_args(&args), Some([0, 17, 0, 2, 1]));
/// assert_eq!(parse_stats_latency(&args), None);
/// ```
pub fn stats_line(
    pid: u32,
    responses: [u64; 5],
    latency: &[u64; crate::telemetry::LATENCY_BUCKETS],
) -> String {
    let args: Vec<String> = responses
        .iter()
        .chain(latency.iter())
        .map(|count| format!("\"{count}\""))
        .collect();
    format!(
        "{{\"command\":\"{WORKER_STATS}\",\"pid\":{pid},\"args\":[{}]}}\n",
        args.join(",")
    )
}

/// Reads the `args` of a `worker:stats` line: five counts, 1xx to 5xx (and, from workers
/// that report them, the response times after them: [`parse_stats_latency`]). `None` for
/// anything else.
pub fn parse_stats_args(args: &[String]) -> Option<[u64; 5]> {
    if args.len() != 5 && args.len() != 5 + crate::telemetry::LATENCY_BUCKETS {
        return None;
    }
    let mut counts = [0; 5];
    for (count, arg) in counts.iter_mut().zip(args) {
        *count = arg.parse().ok()?;
    }
    Some(counts)
}

/// The response times of a `worker:stats` line, by bucket; `None` from a worker that reports
/// none (an earlier version).
pub fn parse_stats_latency(args: &[String]) -> Option<[u64; crate::telemetry::LATENCY_BUCKETS]> {
    let times = args.get(5..)?;
    if times.len() != crate::telemetry::LATENCY_BUCKETS {
        return None;
    }
    let mut counts = [0; crate::telemetry::LATENCY_BUCKETS];
    for (count, arg) in counts.iter_mut().zip(times) {
        *count = arg.parse().ok()?;
    }
    Some(counts)
}

/// Reports this worker's responses to the master every [`STATS_EVERY`] while they change,
/// for as long as the returned task runs. Best effort: a report that cannot be delivered is
/// skipped (the next one carries the totals).
pub(crate) fn report_stats(
    env: &Environment,
    handle: crate::ListenerHandle,
) -> Option<tokio::task::JoinHandle<()>> {
    if !env.einhorn_master_understands(WORKER_STATS) {
        return None;
    }
    let path = env.einhorn_command_socket_path().ok()?;
    let shed = env
        .einhorn_master_understands(WORKER_SHED)
        .then_some(handle);
    Some(tokio::spawn(async move {
        let mut sent = None;
        let mut every = tokio::time::interval(STATS_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            send_stats(&path, &mut sent, shed.as_ref()).await;
        }
    }))
}

/// Sends the counts if they changed since `sent`; with `shed` (a master that answers, see
/// [`WORKER_SHED`]), ends the share of that handle's connections the answer asks for.
pub(crate) async fn send_stats(
    path: &std::path::Path,
    sent: &mut Option<[u64; 5]>,
    shed: Option<&crate::ListenerHandle>,
) {
    let counts = crate::telemetry::response_counts();
    if *sent == Some(counts) {
        return;
    }
    let line = stats_line(
        std::process::id(),
        counts,
        &crate::telemetry::latency_counts(),
    );
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(path).await?;
        stream.write_all(line.as_bytes()).await?;
        let Some(handle) = shed else {
            return stream.shutdown().await.map(|()| None);
        };
        let mut answer = Vec::new();
        let mut reader = tokio::io::BufReader::new(stream).take(4096);
        // An answer that does not come in time asks nothing: the counts were delivered.
        let read = tokio::time::timeout(SHED_ANSWER_WITHIN, reader.read_until(b'\n', &mut answer));
        let asked = match read.await {
            Ok(Ok(_)) => crate::shed::parse_reply(&String::from_utf8_lossy(&answer)),
            _ => None,
        };
        Ok::<_, std::io::Error>(asked.map(|permille| (permille, handle.live())))
    };
    match tokio::time::timeout(Duration::from_secs(1), exchange).await {
        Ok(Ok(asked)) => {
            *sent = Some(counts);
            if let Some((permille, live)) = asked {
                let connections = crate::shed::share_of(permille, live);
                tracing::debug!(
                    permille,
                    live,
                    connections,
                    "the master asks to move connections"
                );
                crate::shed::end_connections(connections);
            }
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "worker:stats not delivered"),
        Err(_) => tracing::debug!("worker:stats not delivered within 1s"),
    }
}

/// The ACK could not be delivered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    /// The environment does not say where the master is.
    #[error("cannot ACK to the Einhorn master: {0}")]
    Env(#[from] EnvError),
    /// The command socket stayed unreachable for the whole retry period.
    #[error(
        "cannot ACK to the Einhorn master: EINHORN_SOCK_PATH={} unreachable after {attempts} attempts in {:.1}s: {source}",
        path.display(),
        waited.as_secs_f64()
    )]
    Unreachable {
        /// The command socket's path.
        path: PathBuf,
        /// How many times a connection was tried.
        attempts: u32,
        /// How long it was tried for.
        waited: Duration,
        /// The last error.
        source: std::io::Error,
    },
}

/// Tells the master this worker is ready (Einhorn's manual ACK, `-m manual`).
///
/// Call it only once the worker really serves. Writes one line, [`ack_line`], to the
/// command socket and closes the connection without waiting for a reply (the master sends
/// none). Uses `EINHORN_SOCK_FD` if it is a connected Unix stream socket (in real Einhorn
/// it usually is not), else connects to `EINHORN_SOCK_PATH`, retrying with backoff for up to
/// [`ACK_RETRY_FOR`]. Under a timer ACK (Einhorn's default) a manual ACK is harmless.
///
/// [`run`](crate::run) calls this for you.
///
/// # Errors
/// An [`AckError`] when the environment has no command socket or it stays unreachable.
pub async fn ack() -> Result<(), AckError> {
    ack_with(&Environment::from_process(), ACK_RETRY_FOR).await
}

pub(crate) async fn ack_with(env: &Environment, retry_for: Duration) -> Result<(), AckError> {
    let line = ack_line(std::process::id());
    if let CommandSocket::Fd(fd) = env.einhorn_command_socket()? {
        match write_to_connected_fd(fd, line.as_bytes()) {
            Ok(()) => {
                tracing::info!(fd, "acked to the Einhorn master (EINHORN_SOCK_FD)");
                return Ok(());
            }
            Err(reason) => {
                tracing::debug!(fd, %reason, "EINHORN_SOCK_FD unusable; using EINHORN_SOCK_PATH")
            }
        }
    }
    let path = env.einhorn_command_socket_path()?;
    let started = Instant::now();
    let mut delay = Duration::from_millis(10);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match send_line(&path, line.as_bytes()).await {
            Ok(()) => {
                tracing::info!(path = %path.display(), attempts, "acked to the Einhorn master");
                return Ok(());
            }
            Err(source) if started.elapsed() + delay > retry_for => {
                return Err(AckError::Unreachable {
                    path,
                    attempts,
                    waited: started.elapsed(),
                    source,
                });
            }
            Err(e) => {
                tracing::debug!(error = %e, attempts, "command socket not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
        }
    }
}

async fn send_line(path: &std::path::Path, line: &[u8]) -> std::io::Result<()> {
    let mut stream = tokio::net::UnixStream::connect(path).await?;
    stream.write_all(line).await?;
    stream.shutdown().await
}

/// Writes to `EINHORN_SOCK_FD` only if it really is a connected Unix stream socket: in
/// Einhorn the fd is opened close-on-exec, so after exec its number names nothing, or
/// something else entirely, which we must not write an ACK into.
fn write_to_connected_fd(fd: RawFd, bytes: &[u8]) -> Result<(), String> {
    // SAFETY: F_GETFD only reads flags; EBADF for a closed fd.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err("not open".into());
    }
    // SAFETY: open (checked above); borrowed only for the duration of this function.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let socket = SockRef::from(&borrowed);
    let unix_stream =
        socket.domain().ok() == Some(Domain::UNIX) && socket.r#type().ok() == Some(Type::STREAM);
    if !unix_stream {
        return Err("not a Unix stream socket".into());
    }
    if socket.peer_addr().is_err() {
        return Err("not connected".into());
    }
    // Write through a duplicate so that closing ours leaves the inherited fd as it was.
    let dup = borrowed
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| e.to_string())?;
    let mut stream = std::os::unix::net::UnixStream::from(dup);
    stream.write_all(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[tokio::test]
    async fn ack_writes_the_exact_line_to_the_path() {
        let dir = tempdir();
        let path = dir.join("cmd.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let env = Environment::from_vars([("EINHORN_SOCK_PATH", path.to_str().unwrap())], 2, 1);
        ack_with(&env, Duration::from_secs(2)).await.unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = String::new();
        conn.read_to_string(&mut got).unwrap();
        assert_eq!(got, ack_line(std::process::id()));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn ack_retries_until_the_socket_appears() {
        let dir = tempdir();
        let path = dir.join("late.sock");
        let env = Environment::from_vars([("EINHORN_SOCK_PATH", path.to_str().unwrap())], 2, 1);
        let binder = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(150));
                let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
                let (mut conn, _) = listener.accept().unwrap();
                let mut got = String::new();
                conn.read_to_string(&mut got).unwrap();
                got
            })
        };
        ack_with(&env, Duration::from_secs(5)).await.unwrap();
        assert_eq!(binder.join().unwrap(), ack_line(std::process::id()));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn an_unreachable_master_is_a_clear_error() {
        let env =
            Environment::from_vars([("EINHORN_SOCK_PATH", "/nonexistent/einhorn.sock")], 2, 1);
        let err = ack_with(&env, Duration::from_millis(100))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("cannot ACK to the Einhorn master: EINHORN_SOCK_PATH=/nonexistent/einhorn.sock unreachable after"),
            "{msg}"
        );
        let err = ack_with(
            &Environment::from_vars(Vec::<(String, String)>::new(), 2, 1),
            Duration::ZERO,
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot ACK to the Einhorn master: EINHORN_SOCK_PATH is not set: this process was not started by an Einhorn master"
        );
    }

    #[tokio::test]
    async fn sock_fd_is_used_only_when_it_is_a_connected_unix_stream() {
        let (mut master_end, worker_end) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&worker_end);
        let env = Environment::from_vars([("EINHORN_SOCK_FD", fd.to_string())], 2, 1);
        ack_with(&env, Duration::ZERO).await.unwrap();
        drop(worker_end);
        let mut got = String::new();
        master_end.read_to_string(&mut got).unwrap();
        assert_eq!(got, ack_line(std::process::id()));

        // A file at that number is never written to: the path is used instead.
        let dir = tempdir();
        let path = dir.join("cmd.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let file = std::fs::File::create(dir.join("not-a-socket")).unwrap();
        let file_fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let env = Environment::from_vars(
            [
                ("EINHORN_SOCK_FD", file_fd.to_string()),
                ("EINHORN_SOCK_PATH", path.display().to_string()),
            ],
            2,
            1,
        );
        ack_with(&env, Duration::from_secs(2)).await.unwrap();
        assert!(listener.accept().is_ok());
        assert_eq!(
            std::fs::metadata(dir.join("not-a-socket")).unwrap().len(),
            0
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempdir() -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("gl-ack-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
