//! A blocking client for the command socket, for tests, demos and `einhorn-master ctl`.
//!
//! ```no_run
//! use std::time::Duration;
//! use einhorn_master::client::{Client, upgrade};
//!
//! // The socket of a master started by this user without -d or -c.
//! let socket = einhorn_master::cli::default_socket_path(None);
//! // One call: upgrade and wait for `Upgrade done`.
//! let replies = upgrade(&socket, Duration::from_secs(60))?;
//! println!("{}", replies.last().unwrap().message);
//!
//! // Or step by step.
//! let mut client = Client::connect(&socket)?;
//! let state = client.call("state", &[], Duration::from_secs(5))?;
//! println!("{}", state[0].message);
//! # Ok::<(), einhorn_master::client::ClientError>(())
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::pure::state::MasterState;
use crate::pure::wire::{Reply, ReplyError, RequestId, decode_reply, encode_request};

/// Longest reply line accepted (a `state` dump of many workers fits easily).
pub const MAX_REPLY_LINE: usize = 1 << 20;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be connected.
    #[error("cannot connect to command socket {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading or writing failed.
    #[error("command socket i/o failed: {0}")]
    Io(#[from] std::io::Error),
    /// The master closed the connection before the final reply.
    #[error("the master closed the connection before answering {command:?}")]
    Closed {
        /// The command sent.
        command: String,
    },
    /// No final reply in time.
    #[error("no final reply to {command:?} within {}s", after.as_secs_f64())]
    Timeout {
        /// The command sent.
        command: String,
        /// The time waited.
        after: Duration,
    },
    /// A reply line could not be decoded.
    #[error(transparent)]
    Decode(#[from] ReplyError),
    /// A reply line was longer than [`MAX_REPLY_LINE`].
    #[error("reply line longer than {MAX_REPLY_LINE} bytes")]
    TooLong,
    /// The `state` reply could not be parsed.
    #[error("cannot parse the state reply: {0}")]
    State(String),
    /// The master answered with an error.
    #[error("{command:?} failed: {message}")]
    Failed {
        /// The command sent.
        command: String,
        /// The error reply's message.
        message: String,
        /// Every reply received, the error last.
        replies: Vec<Reply>,
    },
}

/// A connection to a master's command socket.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    next_id: i64,
}

impl Client {
    /// Connects to the socket at `path`.
    ///
    /// # Errors
    /// [`ClientError::Connect`] naming the path.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, ClientError> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Client {
            reader: BufReader::new(stream),
            next_id: 1,
        })
    }

    /// Sends `command` with `args` and a fresh `id`; returns that id.
    ///
    /// # Errors
    /// [`ClientError::Io`] when the write fails.
    pub fn send(&mut self, command: &str, args: &[&str]) -> Result<RequestId, ClientError> {
        let id = RequestId::from(self.next_id);
        self.next_id += 1;
        let line = encode_request(command, args, Some(&id));
        self.send_raw(line.as_bytes())?;
        Ok(id)
    }

    /// Writes bytes as they are (for tests of the wire format). Add the `\n` yourself.
    ///
    /// # Errors
    /// [`ClientError::Io`] when the write fails.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let stream = self.reader.get_mut();
        stream.write_all(bytes)?;
        stream.flush()?;
        Ok(())
    }

    /// Reads one raw reply line, `\n` included, waiting at most `timeout`; `None` at end of
    /// stream.
    ///
    /// # Errors
    /// [`ClientError::Io`] (a timeout is `WouldBlock`/`TimedOut`), [`ClientError::TooLong`].
    pub fn read_raw_line(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>, ClientError> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_REPLY_LINE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(None);
        }
        if line.len() > MAX_REPLY_LINE {
            return Err(ClientError::TooLong);
        }
        if !line.ends_with(b"\n") {
            // The connection closed in the middle of a line: Einhorn drops such lines too.
            return Ok(None);
        }
        Ok(Some(line))
    }

    /// Reads one decoded reply, waiting at most `timeout`; `None` at end of stream.
    ///
    /// # Errors
    /// As [`Client::read_raw_line`], plus [`ClientError::Decode`].
    pub fn read_reply(&mut self, timeout: Duration) -> Result<Option<Reply>, ClientError> {
        match self.read_raw_line(timeout)? {
            Some(line) => Ok(Some(decode_reply(&line)?)),
            None => Ok(None),
        }
    }

    /// Sends `command` and reads replies until the final one (no `wait`), within `timeout`
    /// overall. Progress replies are passed to `on_reply` as they come.
    ///
    /// # Errors
    /// [`ClientError::Failed`] when the final reply is an error (`error: true`), plus
    /// connection, timeout and decoding errors.
    pub fn call_with(
        &mut self,
        command: &str,
        args: &[&str],
        timeout: Duration,
        mut on_reply: impl FnMut(&Reply),
    ) -> Result<Vec<Reply>, ClientError> {
        let deadline = Instant::now() + timeout;
        self.send(command, args)?;
        let mut replies = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout {
                    command: command.to_string(),
                    after: timeout,
                });
            }
            let reply = match self.read_reply(left) {
                Ok(Some(reply)) => reply,
                Ok(None) => {
                    return Err(ClientError::Closed {
                        command: command.to_string(),
                    });
                }
                Err(ClientError::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ClientError::Timeout {
                        command: command.to_string(),
                        after: timeout,
                    });
                }
                Err(e) => return Err(e),
            };
            on_reply(&reply);
            let last = !reply.wait;
            replies.push(reply);
            if last {
                break;
            }
        }
        let last = replies.last().expect("at least one reply");
        if last.error {
            return Err(ClientError::Failed {
                command: command.to_string(),
                message: last.message.clone(),
                replies,
            });
        }
        Ok(replies)
    }

    /// Asks for `state` and parses it.
    ///
    /// # Errors
    /// As [`Client::call`], plus [`ClientError::State`].
    pub fn state(&mut self, timeout: Duration) -> Result<MasterState, ClientError> {
        let replies = self.call("state", &[], timeout)?;
        let message = &replies.last().expect("at least one reply").message;
        serde_norway::from_str(message).map_err(|e| ClientError::State(e.to_string()))
    }

    /// [`Client::call_with`] without a progress callback.
    ///
    /// # Errors
    /// As [`Client::call_with`].
    pub fn call(
        &mut self,
        command: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Vec<Reply>, ClientError> {
        self.call_with(command, args, timeout, |_| {})
    }
}

/// Connects, sends `upgrade`, and waits for `Upgrade done` within `timeout`.
///
/// # Errors
/// [`ClientError::Failed`] when the upgrade fails (its new workers never ACK, the master is
/// stopping, ...) or ends with anything but `Upgrade done`; connection and timeout errors.
pub fn upgrade(socket: impl AsRef<Path>, timeout: Duration) -> Result<Vec<Reply>, ClientError> {
    run_upgrade(socket, "upgrade", timeout)
}

/// [`upgrade`], but all new workers at once (`upgrade_fleet`).
///
/// # Errors
/// As [`upgrade`].
pub fn upgrade_fleet(
    socket: impl AsRef<Path>,
    timeout: Duration,
) -> Result<Vec<Reply>, ClientError> {
    run_upgrade(socket, "upgrade_fleet", timeout)
}

fn run_upgrade(
    socket: impl AsRef<Path>,
    command: &str,
    timeout: Duration,
) -> Result<Vec<Reply>, ClientError> {
    let mut client = Client::connect(socket)?;
    let replies = client.call(command, &[], timeout)?;
    let last = replies.last().expect("at least one reply");
    if last.message != "Upgrade done" {
        return Err(ClientError::Failed {
            command: command.to_string(),
            message: last.message.clone(),
            replies,
        });
    }
    Ok(replies)
}

/// Connects, sends one command, returns its replies (for commands with one reply, the vector
/// has one element).
///
/// # Errors
/// As [`Client::call`].
pub fn command(
    socket: impl AsRef<Path>,
    command: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<Vec<Reply>, ClientError> {
    Client::connect(socket)?.call(command, args, timeout)
}

/// Connects and asks for `state`.
///
/// # Errors
/// As [`Client::state`].
pub fn state(socket: impl AsRef<Path>, timeout: Duration) -> Result<MasterState, ClientError> {
    Client::connect(socket)?.state(timeout)
}

/// Sends a worker's ACK for `pid`, the way a worker does: one line, then close, no reply.
///
/// # Errors
/// Connection and write errors.
pub fn ack(socket: impl AsRef<Path>, pid: u32) -> Result<(), ClientError> {
    let mut client = Client::connect(socket)?;
    client.send_raw(graceful_listener::einhorn::ack_line(pid).as_bytes())
}
