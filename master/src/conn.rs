//! Command-socket connections: reading request lines, parsing them without holding up the
//! event loop, and the limits that keep hostile or broken clients from hurting the master.
//!
//! # What a client cannot do
//! - **Hold up the event loop.** Each connection is its own task. A line is checked by
//!   [`prescan`] (linear) before any parsing; a line of at most
//!   [`INLINE_PARSE_MAX`] bytes is then parsed in the task (microseconds); a longer one is
//!   parsed on a blocking thread, one such parse at a time, so floods of large lines use at
//!   most one other core and never delay signals, ACKs or upgrade steps. A connection reads its
//!   next line only once the previous one is handed over, and the queue to the driver is
//!   bounded: a client that pipelines waits in the kernel's socket buffer.
//! - **Exhaust the master's fds.** At most [`ConnLimits::max_connections`] connections are
//!   served. Beyond that, up to [`ConnLimits::reserve`] more get [`RESERVE_WINDOW`] to send one
//!   short line, which is carried out only if it is a `worker:ack` or `worker:ping` (so
//!   workers can still ACK while the limit is reached); anything else is answered with why it
//!   is refused, and closed. Beyond the reserve too, a connection is refused at once (its
//!   first line is still read, if it is already there and is a worker message). Refusals are
//!   logged once per burst.
//! - **Sit idle.** A connection that owes no reply and sends no complete line for
//!   [`ConnLimits::idle_timeout`] is told so and closed; one waiting for an upgrade to finish
//!   is not idle. A client that does not read its replies is dropped after
//!   [`WRITE_TIMEOUT`].
//! - **Have a request carried out after it left.** Just before a request is handed to the
//!   state machine, the connection is checked: if the client has closed it (not merely shut
//!   down its sending side), the request is dropped and logged. `worker:ack` and
//!   `worker:ping` are exempt: workers close right after sending them.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::{Id as TaskId, JoinError, JoinSet};

use crate::pure::command::{Command, DecodeError, decode};
use crate::pure::machine::ConnId;
use crate::pure::render;
use crate::pure::wire::{Reply, RequestError, RequestId, encode_reply, prescan};

/// Longest request line accepted on the command socket.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;
/// Lines up to this long are parsed in the connection's task, on the event loop's thread
/// (bounded by the pre-scan to well under a millisecond); longer ones on a blocking thread.
pub const INLINE_PARSE_MAX: usize = 512;
/// How long a connection accepted into the reserve has to send its one line.
pub const RESERVE_WINDOW: Duration = Duration::from_secs(1);
/// Longest line read from a connection in the reserve (a `worker:ack` is about 40 bytes).
pub const RESERVE_LINE_MAX: usize = 1024;
/// A client that has not taken a reply line within this long is disconnected.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of a rejected line shown in the log.
pub const LOG_PREFIX: usize = 200;
/// Requests queued from all connections to the driver, at most.
const QUEUE: usize = 256;
/// Fds kept free for everything else (spawning, signals, the runtime) when the connection
/// limits are fitted to `ulimit -n`.
const FD_MARGIN: usize = 64;

/// Limits on command-socket connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections served at once (`--max-connections`).
    pub max_connections: usize,
    /// Connections beyond that which may still deliver one worker message.
    pub reserve: usize,
    /// A connection that owes no reply and sends nothing for this long is closed
    /// (`--idle-timeout`); zero: never.
    pub idle_timeout: Duration,
}

impl Default for ConnLimits {
    /// 256 connections, a reserve of 64, a 60 s idle timeout.
    fn default() -> Self {
        ConnLimits {
            max_connections: 256,
            reserve: 64,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl ConnLimits {
    /// These limits, shrunk if needed so that every connection they allow, plus `in_use` fds
    /// and a margin, fits under the fd limit `nofile`. Returns whether they were shrunk.
    ///
    /// ```
    /// use einhorn_master::conn::ConnLimits;
    /// let limits = ConnLimits::default();
    /// assert_eq!(limits.fit_fds(1 << 20, 10), (limits, false));
    /// let (small, shrunk) = limits.fit_fds(256, 20);
    /// assert!(shrunk && small.max_connections + small.reserve <= 256 - 20 - 64);
    /// assert!(small.max_connections >= 1);
    /// ```
    pub fn fit_fds(self, nofile: usize, in_use: usize) -> (ConnLimits, bool) {
        let available = nofile.saturating_sub(in_use + FD_MARGIN);
        if self.max_connections + self.reserve <= available {
            return (self, false);
        }
        let reserve = self.reserve.min(available / 4);
        let max_connections = available.saturating_sub(reserve).max(1);
        (
            ConnLimits {
                max_connections,
                reserve,
                ..self
            },
            true,
        )
    }
}

/// What a connection hands the driver.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A request for the state machine.
    Request {
        conn: ConnId,
        id: Option<RequestId>,
        command: Command,
        /// The line it came as (to carry it across an exec, should it not be handled yet).
        line: Vec<u8>,
    },
    /// A reply the connection itself decided on (a bad line), sent through the driver so that
    /// it comes after the replies to earlier requests.
    Reply { conn: ConnId, reply: Reply },
}

/// What the driver sends a connection's task.
#[derive(Debug)]
enum Outgoing {
    /// A line to write.
    Line {
        line: String,
        /// The request's final reply: the connection owes one reply fewer.
        last: bool,
    },
    /// Stop serving and hand the connection back (after writing every line sent before).
    Detach(oneshot::Sender<Detached>),
}

/// A connection taken out of its task, to be carried across the master's exec (or served
/// again, [`Connections::adopt`], if the exec fails).
#[derive(Debug)]
pub(crate) struct Detached {
    pub(crate) conn: ConnId,
    pub(crate) stream: std::os::unix::net::UnixStream,
    /// Bytes received and not handled yet.
    pub(crate) unread: Vec<u8>,
    /// Final replies still owed.
    pub(crate) owed: usize,
}

/// Which limit a connection counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    Regular,
    Reserve,
}

/// Logs the first of a burst of similar events at once, then at most one line per window,
/// counting those it did not log.
#[derive(Debug)]
pub(crate) struct Throttle {
    window: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub(crate) fn new(window: Duration) -> Self {
        Throttle {
            window,
            state: Mutex::new((None, 0)),
        }
    }

    /// An event happened. `Some(n)` when it should be logged, `n` being the events not logged
    /// since the last logged one.
    pub(crate) fn hit(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, skipped) = &mut *state;
        if last.is_some_and(|at| now < at + self.window) {
            *skipped += 1;
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(skipped))
    }
}

/// " (N more since the last report)" when N > 0: the end of a throttled log line.
pub(crate) fn more(skipped: u64) -> String {
    if skipped == 0 {
        String::new()
    } else {
        format!(" ({skipped} more since the last report)")
    }
}

/// What every connection task shares.
#[derive(Debug)]
struct Shared {
    limits: ConnLimits,
    /// Parses on a blocking thread, at most one at a time.
    big_parses: Semaphore,
    rejected: Throttle,
    refused: Throttle,
}

struct Handle {
    lane: Lane,
    /// `None` for reserve connections: they are never replied to by the driver.
    out: Option<mpsc::UnboundedSender<Outgoing>>,
}

/// Every command-socket connection: accepting within the limits, routing replies, noticing
/// when one ends.
pub(crate) struct Connections {
    shared: Arc<Shared>,
    handles: std::collections::HashMap<ConnId, Handle>,
    tasks: JoinSet<ConnId>,
    by_task: std::collections::HashMap<TaskId, ConnId>,
    regular: usize,
    reserve: usize,
    next: u64,
    to_driver: mpsc::Sender<Incoming>,
    accept_failed: Throttle,
}

impl Connections {
    /// No connections yet; requests will arrive on the returned receiver.
    pub(crate) fn new(limits: ConnLimits) -> (Connections, mpsc::Receiver<Incoming>) {
        let (to_driver, from_conns) = mpsc::channel(QUEUE);
        let window = Duration::from_secs(10);
        let conns = Connections {
            shared: Arc::new(Shared {
                limits,
                big_parses: Semaphore::new(1),
                rejected: Throttle::new(window),
                refused: Throttle::new(window),
            }),
            handles: Default::default(),
            tasks: JoinSet::new(),
            by_task: Default::default(),
            regular: 0,
            reserve: 0,
            next: 0,
            to_driver,
            accept_failed: Throttle::new(window),
        };
        (conns, from_conns)
    }

    /// A new connection: served, put in the reserve, or refused at once. A worker message
    /// found on a connection refused at once is returned, to be carried out.
    pub(crate) fn accept(&mut self, stream: UnixStream) -> Option<(ConnId, Command)> {
        let conn = ConnId(self.next);
        self.next += 1;
        let limits = self.shared.limits;
        let lane = if self.regular < limits.max_connections {
            Lane::Regular
        } else {
            if let Some(skipped) = self.shared.refused.hit(Instant::now()) {
                tracing::warn!(
                    "command socket: {} connections open, the limit (--max-connections); only worker:ack and worker:ping are served on new ones until some close{}",
                    self.regular,
                    more(skipped)
                );
            }
            if self.reserve >= limits.reserve {
                return refuse_now(conn, stream, self.regular);
            }
            Lane::Reserve
        };
        let (out, task) = match lane {
            Lane::Regular => {
                self.regular += 1;
                let (out, replies) = mpsc::unbounded_channel();
                let task = serve(
                    conn,
                    stream,
                    self.shared.clone(),
                    self.to_driver.clone(),
                    replies,
                    Carried::default(),
                );
                (Some(out), self.tasks.spawn(task))
            }
            Lane::Reserve => {
                self.reserve += 1;
                let task = serve_reserved(
                    conn,
                    stream,
                    self.shared.clone(),
                    self.to_driver.clone(),
                    self.regular,
                );
                (None, self.tasks.spawn(task))
            }
        };
        self.by_task.insert(task.id(), conn);
        self.handles.insert(conn, Handle { lane, out });
        None
    }

    /// Serves a connection carried over (from the master before an exec, or back after a
    /// failed one) under its old id.
    pub(crate) fn adopt(&mut self, detached: Detached) {
        let Detached {
            conn,
            stream,
            unread,
            owed,
        } = detached;
        self.next = self.next.max(conn.0 + 1);
        let stream = match stream
            .set_nonblocking(true)
            .and_then(|()| UnixStream::from_std(stream))
        {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!("command socket: cannot serve a connection carried over: {e}");
                return;
            }
        };
        self.regular += 1;
        let (out, replies) = mpsc::unbounded_channel();
        let task = serve(
            conn,
            stream,
            self.shared.clone(),
            self.to_driver.clone(),
            replies,
            Carried { unread, owed },
        );
        let task = self.tasks.spawn(task);
        self.by_task.insert(task.id(), conn);
        self.handles.insert(
            conn,
            Handle {
                lane: Lane::Regular,
                out: Some(out),
            },
        );
    }

    /// Serves a new connection made by the master itself (a worker's `-g` socket); returns
    /// its id.
    pub(crate) fn adopt_new(&mut self, stream: std::os::unix::net::UnixStream) -> ConnId {
        let conn = ConnId(self.next);
        self.adopt(Detached {
            conn,
            stream,
            unread: Vec::new(),
            owed: 0,
        });
        conn
    }

    /// Queues an encoded reply line on a connection, if it is still open.
    pub(crate) fn reply_line(&self, conn: ConnId, line: String) {
        if let Some(out) = self.handles.get(&conn).and_then(|h| h.out.as_ref()) {
            let _ = out.send(Outgoing::Line { line, last: true });
        }
    }

    /// Takes every served connection out of its task, once it has written what it was sent
    /// (waiting at most `within`); they no longer count here. Connections in the reserve,
    /// and any that do not answer in time, are left to close. Meanwhile, and until the end,
    /// whatever connections hand over (`from`) is put in `queued`: a task waiting for room
    /// in that queue could not answer otherwise, and what it hands over is not lost.
    pub(crate) async fn detach_all(
        &mut self,
        within: Duration,
        from: &mut mpsc::Receiver<Incoming>,
        queued: &mut Vec<Incoming>,
    ) -> Vec<Detached> {
        let mut waiting = Vec::new();
        for (&conn, handle) in &self.handles {
            if let Some(out) = &handle.out {
                let (tx, rx) = oneshot::channel();
                if out.send(Outgoing::Detach(tx)).is_ok() {
                    waiting.push((conn, rx));
                }
            }
        }
        let deadline = tokio::time::Instant::now() + within;
        let mut detached = Vec::new();
        for (conn, mut rx) in waiting {
            let answer = loop {
                tokio::select! {
                    // An answer already there is taken even past the deadline.
                    biased;
                    answer = &mut rx => break answer.ok(),
                    Some(incoming) = from.recv() => queued.push(incoming),
                    () = tokio::time::sleep_until(deadline) => break None,
                }
            };
            if let Some(d) = answer {
                // Its task is ending: forget it now (its end is ignored), so that the
                // connection can be adopted again under the same id.
                if let Some(handle) = self.handles.remove(&conn) {
                    match handle.lane {
                        Lane::Regular => self.regular -= 1,
                        Lane::Reserve => self.reserve -= 1,
                    }
                }
                self.by_task.retain(|_, c| *c != conn);
                detached.push(d);
            }
        }
        while let Ok(incoming) = from.try_recv() {
            queued.push(incoming);
        }
        detached
    }

    /// `accept` failed (out of fds, most likely): log once per burst.
    pub(crate) fn accept_failed(&self, error: &std::io::Error) {
        if let Some(skipped) = self.accept_failed.hit(Instant::now()) {
            tracing::warn!("command socket accept failed: {error}{}", more(skipped));
        }
    }

    /// Queues a reply on a connection, if it is still open.
    pub(crate) fn reply(&self, conn: ConnId, reply: &Reply) {
        if let Some(out) = self.handles.get(&conn).and_then(|h| h.out.as_ref()) {
            // The connection may be gone already: then nobody is waiting for the reply.
            let _ = out.send(Outgoing::Line {
                line: encode_reply(reply),
                last: !reply.wait,
            });
        }
    }

    /// Closes a connection once it has written what it was sent.
    pub(crate) fn close(&mut self, conn: ConnId) {
        if let Some(handle) = self.handles.get_mut(&conn) {
            handle.out = None;
        }
    }

    /// Waits for a connection task to end (pending forever when there are none).
    pub(crate) async fn next_finished(&mut self) -> Result<(TaskId, ConnId), JoinError> {
        match self.tasks.join_next_with_id().await {
            Some(done) => done,
            None => std::future::pending().await,
        }
    }

    /// A connection task ended: it no longer counts against the limits.
    pub(crate) fn finished(&mut self, done: Result<(TaskId, ConnId), JoinError>) {
        let task = match &done {
            Ok((task, _)) => *task,
            Err(e) => {
                tracing::error!("command connection task failed: {e}");
                e.id()
            }
        };
        let Some(conn) = self.by_task.remove(&task) else {
            return;
        };
        if let Some(handle) = self.handles.remove(&conn) {
            match handle.lane {
                Lane::Regular => self.regular -= 1,
                Lane::Reserve => self.reserve -= 1,
            }
        }
    }

    /// Closes every connection and gives them up to `grace` to write what they were sent.
    pub(crate) async fn shutdown(&mut self, grace: Duration) {
        for handle in self.handles.values_mut() {
            handle.out = None;
        }
        let tasks = &mut self.tasks;
        let flush = async { while tasks.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(grace, flush).await;
    }

    /// Connections served now.
    pub(crate) fn open_count(&self) -> usize {
        self.regular
    }

    /// Connections open, served and in the reserve.
    #[cfg(test)]
    fn open(&self) -> (usize, usize) {
        (self.regular, self.reserve)
    }
}

/// Beyond the reserve: read whatever the client already sent (without waiting), carry it out
/// if it is a worker message, else say why the connection is refused. Either way, close it.
fn refuse_now(conn: ConnId, stream: UnixStream, open: usize) -> Option<(ConnId, Command)> {
    use std::io::{Read, Write};
    // Plain non-blocking calls on the std socket: tokio's readiness is not known yet for a
    // stream this fresh.
    let mut stream = stream.into_std().ok()?;
    let mut buf = [0u8; RESERVE_LINE_MAX];
    if let Ok(n) = stream.read(&mut buf)
        && let Some(end) = buf[..n].iter().position(|&b| b == b'\n')
        && let Ok((_, command)) = decode(&buf[..end])
        && command.is_worker_message()
    {
        return Some((conn, command));
    }
    let _ = stream.write(encode_reply(&render::too_many_connections(open)).as_bytes());
    None
}

/// A connection beyond the limit: one short line within [`RESERVE_WINDOW`], served only if it
/// is a worker message.
async fn serve_reserved(
    conn: ConnId,
    stream: UnixStream,
    shared: Arc<Shared>,
    to_driver: mpsc::Sender<Incoming>,
    open: usize,
) -> ConnId {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut partial = Vec::new();
    let line = tokio::time::timeout(
        RESERVE_WINDOW,
        read_line(&mut reader, &mut partial, RESERVE_LINE_MAX),
    )
    .await;
    if let Ok(ReadLine::Line(line)) = line {
        match decode(&line) {
            Ok((id, command)) if command.is_worker_message() => {
                let _ = to_driver
                    .send(Incoming::Request {
                        conn,
                        id,
                        command,
                        line,
                    })
                    .await;
                return conn;
            }
            Ok((_, command)) => {
                if let Some(skipped) = shared.refused.hit(Instant::now()) {
                    tracing::warn!(
                        "command socket: refused {:?}: {open} connections open, the limit{}",
                        command.name(),
                        more(skipped)
                    );
                }
            }
            Err(_) => {}
        }
    }
    let reply = encode_reply(&render::too_many_connections(open));
    let _ = tokio::time::timeout(WRITE_TIMEOUT, write.write_all(reply.as_bytes())).await;
    conn
}

/// What a connection carried over brings with it.
#[derive(Debug, Default)]
struct Carried {
    /// Bytes received and not handled yet.
    unread: Vec<u8>,
    /// Final replies owed.
    owed: usize,
}

/// One served connection: lines in, replies out, until either side is done, the connection
/// idles too long, or its client stops reading (or the driver takes it back).
async fn serve(
    conn: ConnId,
    stream: UnixStream,
    shared: Arc<Shared>,
    to_driver: mpsc::Sender<Incoming>,
    mut replies: mpsc::UnboundedReceiver<Outgoing>,
    carried: Carried,
) -> ConnId {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let idle_timeout = shared.limits.idle_timeout;
    // Requests handed over whose final reply is not written yet.
    let mut owed = carried.owed;
    let mut last_active = Instant::now();
    let mut reading = true;
    // Whole lines carried over first, as if just read; the rest starts the next line.
    let mut partial = carried.unread;
    while reading && let Some(end) = partial.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = partial.drain(..=end).take(end).collect();
        match take_line(conn, line, &reader, &shared, &to_driver).await {
            Taken::Owed => owed += 1,
            Taken::WorkerMessage => reading = false,
            Taken::WorkerAnswered => {
                reading = false;
                owed += 1;
            }
            Taken::Drop => return conn,
        }
    }
    loop {
        if !reading && owed == 0 {
            // The client sent all it will, and got every reply: done.
            return conn;
        }
        let idle_at = (owed == 0 && !idle_timeout.is_zero()).then(|| last_active + idle_timeout);
        tokio::select! {
            line = read_line(&mut reader, &mut partial, MAX_REQUEST_LINE), if reading => {
                match line {
                    ReadLine::Line(line) => {
                        last_active = Instant::now();
                        match take_line(conn, line, &reader, &shared, &to_driver).await {
                            Taken::Owed => owed += 1,
                            Taken::WorkerMessage => reading = false,
                            Taken::WorkerAnswered => {
                                reading = false;
                                owed += 1;
                            }
                            Taken::Drop => return conn,
                        }
                        // One line per turn: a client with many lines buffered does not keep
                        // the others (a worker's ACK) waiting.
                        tokio::task::yield_now().await;
                    }
                    ReadLine::TooLong => {
                        if let Some(skipped) = shared.rejected.hit(Instant::now()) {
                            tracing::warn!(
                                "command socket: request line longer than {MAX_REQUEST_LINE} bytes; closing the connection{}",
                                more(skipped)
                            );
                        }
                        let reply = encode_reply(&render::too_long(MAX_REQUEST_LINE));
                        // Replies to earlier requests are dropped: the client broke the protocol.
                        let _ = write_line(&mut write, &reply).await;
                        return conn;
                    }
                    ReadLine::Eof => reading = false,
                }
            }
            out = replies.recv() => match out {
                Some(Outgoing::Line { line, last }) => {
                    if !write_line(&mut write, &line).await {
                        return conn;
                    }
                    if last {
                        owed = owed.saturating_sub(1);
                    }
                    last_active = Instant::now();
                }
                Some(Outgoing::Detach(back)) => {
                    partial.extend_from_slice(reader.buffer());
                    if let Ok(stream) = reader.into_inner().reunite(write)
                        && let Ok(stream) = stream.into_std()
                    {
                        let _ = back.send(Detached {
                            conn,
                            stream,
                            unread: partial,
                            owed,
                        });
                    }
                    return conn;
                }
                // The driver is done with this connection: closing it.
                None => return conn,
            },
            _ = sleep_until(idle_at), if idle_at.is_some() => {
                tracing::debug!("command socket: closing a connection idle for {}s", idle_timeout.as_secs_f64());
                let _ = write_line(&mut write, &encode_reply(&render::idle_closed(idle_timeout))).await;
                return conn;
            }
        }
    }
}

/// What became of a request line.
enum Taken {
    /// Handed to the driver; a final reply is owed.
    Owed,
    /// A worker message, handed over: the driver closes the connection.
    WorkerMessage,
    /// A worker message that gets one answer (`worker:stats`, read by workers that speak
    /// `worker:shed`): the driver writes it, then closes.
    WorkerAnswered,
    /// The driver is gone, or the client is: close.
    Drop,
}

/// Parses a line (bounded; off the event loop when long) and hands the request, or the error
/// reply, to the driver.
async fn take_line(
    conn: ConnId,
    line: Vec<u8>,
    reader: &BufReader<OwnedReadHalf>,
    shared: &Shared,
    to_driver: &mpsc::Sender<Incoming>,
) -> Taken {
    let (line, decoded) = parse(line, shared).await;
    // Queue space first, then the checks: what is checked is what the driver gets next.
    let Ok(permit) = to_driver.reserve().await else {
        return Taken::Drop;
    };
    match decoded {
        Err(error) => {
            if let Some(skipped) = shared.rejected.hit(Instant::now()) {
                tracing::warn!(
                    "command socket: bad request {}: {}{}",
                    render::log_prefix(&line, LOG_PREFIX),
                    first_line(&render::decode_error(&error).message),
                    more(skipped)
                );
            }
            permit.send(Incoming::Reply {
                conn,
                reply: render::decode_error(&error),
            });
            Taken::Owed
        }
        Ok((id, command)) => {
            let worker = command.is_worker_message();
            let answered = matches!(command, Command::WorkerStats { .. });
            if !worker && peer_gone(reader.get_ref().as_ref().as_fd()) {
                tracing::warn!(
                    "command socket: not carrying out {:?}: its client has closed the connection",
                    command.name()
                );
                return Taken::Drop;
            }
            permit.send(Incoming::Request {
                conn,
                id,
                command,
                line,
            });
            match (worker, answered) {
                (true, true) => Taken::WorkerAnswered,
                (true, false) => Taken::WorkerMessage,
                (false, _) => Taken::Owed,
            }
        }
    }
}

type Decoded = Result<(Option<RequestId>, Command), DecodeError>;

/// Decodes a line: at once when short or refused by the pre-scan, else on a blocking thread,
/// one at a time. Returns the line too, for the log.
async fn parse(line: Vec<u8>, shared: &Shared) -> (Vec<u8>, Decoded) {
    if line.len() <= INLINE_PARSE_MAX {
        let decoded = decode(&line);
        return (line, decoded);
    }
    // Linear and cheap: a line refused unparsed does not queue behind real parses.
    if let Err(e) = prescan(&line) {
        return (line, Err(DecodeError::Request(e)));
    }
    // Never closed, so acquiring only waits.
    let _permit = shared.big_parses.acquire().await;
    let job = tokio::task::spawn_blocking(move || {
        let decoded = decode(&line);
        (line, decoded)
    });
    match job.await {
        Ok(done) => done,
        // The parser panicked: treat the line as unparsable.
        Err(_) => (
            Vec::new(),
            Err(DecodeError::Request(RequestError::NotYaml(
                "the parser failed".to_string(),
            ))),
        ),
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// Whether the client closed its end completely (`POLLHUP`), as opposed to shutting down only
/// its sending side (then it still waits for replies).
fn peer_gone(fd: BorrowedFd<'_>) -> bool {
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, a zero timeout; the fd is borrowed for the call.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready > 0 && poll.revents & libc::POLLHUP != 0
}

/// Writes one line, giving up after [`WRITE_TIMEOUT`]; returns whether it was written.
async fn write_line(write: &mut OwnedWriteHalf, line: &str) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, write.write_all(line.as_bytes())).await,
        Ok(Ok(()))
    )
}

/// Sleeps until `at`; forever when there is no `at`.
pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

enum ReadLine {
    Line(Vec<u8>),
    TooLong,
    Eof,
}

/// Reads one `\n`-terminated line (without the `\n`), at most `max` bytes.
///
/// Cancel safe: it only awaits `fill_buf`, and keeps a partial line in `partial`.
async fn read_line(
    reader: &mut BufReader<OwnedReadHalf>,
    partial: &mut Vec<u8>,
    max: usize,
) -> ReadLine {
    loop {
        let buf = match reader.fill_buf().await {
            Ok(buf) => buf,
            Err(_) => return ReadLine::Eof,
        };
        if buf.is_empty() {
            // A last line without `\n` is dropped, as Einhorn drops it.
            partial.clear();
            return ReadLine::Eof;
        }
        let (take, complete) = match buf.iter().position(|&b| b == b'\n') {
            Some(at) => (at, true),
            None => (buf.len(), false),
        };
        partial.extend_from_slice(&buf[..take]);
        reader.consume(if complete { take + 1 } else { take });
        if partial.len() > max {
            partial.clear();
            return ReadLine::TooLong;
        }
        if complete {
            return ReadLine::Line(std::mem::take(partial));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: usize, reserve: usize) -> ConnLimits {
        ConnLimits {
            max_connections,
            reserve,
            idle_timeout: Duration::from_secs(60),
        }
    }

    /// The std side of a socket pair, blocking.
    fn blocking(stream: UnixStream) -> std::os::unix::net::UnixStream {
        let stream = stream.into_std().unwrap();
        stream.set_nonblocking(false).unwrap();
        stream
    }

    #[test]
    fn a_throttle_logs_the_first_then_once_per_window_with_a_count() {
        let throttle = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(throttle.hit(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(throttle.hit(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(throttle.hit(t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(throttle.hit(t0 + Duration::from_secs(11)), None);
        assert_eq!(throttle.hit(t0 + Duration::from_secs(30)), Some(1));
    }

    #[tokio::test]
    async fn beyond_the_reserve_a_worker_message_already_sent_is_still_carried_out() {
        use std::io::{Read, Write};
        let (mut conns, _from) = Connections::new(limits(0, 0));
        let (server, client) = UnixStream::pair().unwrap();
        let mut client = blocking(client);
        client
            .write_all(b"{\"command\":\"worker:ack\",\"pid\":42}\n")
            .unwrap();
        assert_eq!(
            conns.accept(server),
            Some((ConnId(0), Command::WorkerAck { pid: Some(42) }))
        );
        let mut rest = String::new();
        client.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "", "no reply to an ACK, and closed");

        let (server, client) = UnixStream::pair().unwrap();
        let mut client = blocking(client);
        client.write_all(b"{\"command\":\"state\"}\n").unwrap();
        assert_eq!(conns.accept(server), None);
        client.read_to_string(&mut rest).unwrap();
        assert!(rest.starts_with("---%0Amessage: 'Too many command connections: 0 are open"));
    }

    #[tokio::test]
    async fn connections_count_against_their_lane_until_their_task_ends() {
        let (mut conns, _from) = Connections::new(limits(1, 1));
        let (a, _a_peer) = UnixStream::pair().unwrap();
        let (b, b_peer) = UnixStream::pair().unwrap();
        let (c, c_peer) = UnixStream::pair().unwrap();
        assert!(conns.accept(a).is_none());
        assert_eq!(conns.open(), (1, 0));
        assert!(conns.accept(b).is_none());
        assert_eq!(conns.open(), (1, 1));
        // Beyond both: refused at once, with a reason; not counted.
        assert!(conns.accept(c).is_none());
        assert_eq!(conns.open(), (1, 1));
        let mut refusal = String::new();
        std::io::Read::read_to_string(&mut blocking(c_peer), &mut refusal).unwrap();
        assert!(
            refusal.contains("Too many command connections"),
            "{refusal}"
        );
        // The reserve connection sends nothing: refused after its window, then not counted.
        drop(b_peer);
        let done = tokio::time::timeout(Duration::from_secs(5), conns.next_finished())
            .await
            .unwrap();
        conns.finished(done);
        assert_eq!(conns.open(), (1, 0));
    }
}
