//! What a master hands to the new program it execs in its place (`reload`, `upgrade`,
//! SIGHUP): its state machine, its sockets, its connections and its workers' stderr pipes, as
//! one JSON document on an inherited fd. Pure: the encoding and its checks; [`crate::reexec`]
//! does the I/O.
//!
//! # Versions
//! [`FORMAT`] numbers the layout. A master reads every format up to its own (fields added
//! since have defaults) and refuses a newer one, naming both numbers: the preflight check
//! runs the new program on the very document it would get, so a program that cannot read it
//! never takes over.
//!
//! ```
//! use einhorn_master::handover::{FORMAT, Handover, HandoverError};
//!
//! let newer = format!(r#"{{"format": {}, "writer": "einhorn-master 9.0.0"}}"#, FORMAT + 1);
//! let err = Handover::decode(newer.as_bytes()).unwrap_err();
//! assert!(matches!(err, HandoverError::TooNew { .. }), "{err}");
//! assert!(err.to_string().contains("einhorn-master 9.0.0"), "{err}");
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::notify::Readiness;
use crate::pure::machine::MachineSnapshot;
use crate::pure::state::Pid;

/// The layout of [`Handover`] this master writes and the newest it reads.
pub const FORMAT: u32 = 1;

/// Everything a master hands over across its exec.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Handover {
    /// The layout: [`FORMAT`] when written by this master.
    pub format: u32,
    /// Who wrote it (`einhorn-master VERSION`), for error messages.
    pub writer: String,
    /// The state machine.
    pub machine: MachineSnapshot,
    /// The listening sockets, in the order workers were given them.
    pub listeners: Vec<ListenerHandover>,
    /// Listening sockets no longer configured, still open because workers use them.
    #[serde(default)]
    pub retired_listeners: Vec<RetiredListener>,
    /// The command socket and its lock.
    pub command_socket: CommandSocketHandover,
    /// The pid file, if any (its content, the pid, stays right).
    pub pidfile: Option<PathBuf>,
    /// The address file, if any.
    pub addr_file: Option<PathBuf>,
    /// Command-socket connections, with what they sent that was not read yet.
    pub connections: Vec<ConnectionHandover>,
    /// Workers' stderr pipes, with the lines kept of each.
    pub stderr: Vec<StderrHandover>,
    /// What connections had handed over and the master had not handled yet, in order.
    #[serde(default)]
    pub queued: Vec<QueuedHandover>,
    /// What systemd was last told.
    #[serde(default)]
    pub readiness: Readiness,
    /// Why the last upgrade failed, if it did (for systemd's status).
    #[serde(default)]
    pub failure: Option<String>,
    /// The metrics' counts, when the master serves metrics.
    #[serde(default)]
    pub metrics: Option<crate::metrics::Tally>,
    /// The metrics endpoint's listening socket (`--metrics`), kept open across the exec:
    /// closed and bound again, its port could be taken in between.
    #[serde(default)]
    pub metrics_listener: Option<MetricsListenerHandover>,
    /// The key ring's memory file (see [`crate::keys`]): the same keys after the exec.
    #[serde(default)]
    pub key_ring: Option<KeyRingHandover>,
    /// Each version's build, held open (see [`crate::builds`]).
    #[serde(default)]
    pub builds: Vec<BuildHandover>,
    /// Set only in the state given to a preflight check: the check prints it after
    /// [`HANDSHAKE`](crate::reexec::HANDSHAKE) when it passes, which only a program that read
    /// this state can do.
    #[serde(default)]
    pub check_nonce: Option<String>,
}

/// A version's build, held open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildHandover {
    /// The version.
    pub version: u64,
    /// The `O_PATH` fd.
    pub fd: i32,
}

/// The key ring's memory file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRingHandover {
    /// The master's read-write fd.
    pub fd: i32,
}

/// The metrics endpoint's listening socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsListenerHandover {
    /// The bound address.
    pub addr: std::net::SocketAddr,
    /// The fd.
    pub fd: i32,
}

/// One `-b` socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerHandover {
    /// The spec as given (`127.0.0.1:0,r`): a new master configured with the same spec keeps
    /// this socket.
    pub spec: String,
    /// The bound address.
    pub addr: String,
    /// The fd.
    pub fd: i32,
}

/// A listening socket dropped from the configuration, kept open for the workers started
/// while it was configured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredListener {
    /// The socket.
    pub listener: ListenerHandover,
    /// Workers whose spawn request is below this one use it: it is closed once they are
    /// all gone.
    pub used_below_spawn: u64,
}

/// The command socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandSocketHandover {
    /// Its path.
    pub path: PathBuf,
    /// The listening fd.
    pub fd: i32,
    /// The lock file's path.
    pub lock_path: PathBuf,
    /// The lock file's fd (the lock belongs to the open file, so it stays held).
    pub lock_fd: i32,
}

/// A command-socket connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionHandover {
    /// Its id (the state machine's subscribers name it).
    pub conn: u64,
    /// The fd.
    pub fd: i32,
    /// Bytes received and not handled yet.
    pub unread: Vec<u8>,
    /// Final replies still owed to it.
    pub owed: usize,
}

/// A request line or a reply not handled when the master exec'd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueuedHandover {
    /// A request line from a connection, to decode and carry out.
    Request {
        /// The connection.
        conn: u64,
        /// The line, without its `\n`.
        line: Vec<u8>,
    },
    /// A reply line (encoded, with its `\n`) for a connection.
    Reply {
        /// The connection.
        conn: u64,
        /// The line.
        line: String,
    },
}

/// A worker's stderr pipe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StderrHandover {
    /// The worker.
    pub pid: Pid,
    /// The read end.
    pub fd: i32,
    /// Its last lines.
    pub lines: Vec<String>,
}

/// Why a handover cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// Not a JSON object with a `format` number.
    #[error("the state handed over is not one: {0}")]
    Malformed(String),
    /// Written by a newer master.
    #[error(
        "the state handed over is in format {format} (written by {writer}); this master reads formats up to {FORMAT}"
    )]
    TooNew {
        /// Its format.
        format: u32,
        /// Who wrote it.
        writer: String,
    },
    /// The fd could not be read.
    #[error("cannot read the state handed over on fd {fd}: {source}")]
    Read {
        /// The fd.
        fd: i32,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The first fields, read before the rest: the format decides how to read the rest.
#[derive(Deserialize)]
struct Header {
    format: u32,
    #[serde(default)]
    writer: String,
}

impl Handover {
    /// The JSON text.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a handover always encodes")
    }

    /// Reads a handover, refusing a format newer than [`FORMAT`].
    ///
    /// # Errors
    /// [`HandoverError::TooNew`] or [`HandoverError::Malformed`].
    pub fn decode(bytes: &[u8]) -> Result<Handover, HandoverError> {
        let header: Header =
            serde_json::from_slice(bytes).map_err(|e| HandoverError::Malformed(e.to_string()))?;
        if header.format > FORMAT {
            return Err(HandoverError::TooNew {
                format: header.format,
                writer: header.writer,
            });
        }
        serde_json::from_slice(bytes).map_err(|e| HandoverError::Malformed(e.to_string()))
    }

    /// Every fd the handover names, which the exec must leave open.
    pub fn fds(&self) -> Vec<i32> {
        let mut fds = vec![self.command_socket.fd, self.command_socket.lock_fd];
        fds.extend(self.listeners.iter().map(|l| l.fd));
        fds.extend(self.retired_listeners.iter().map(|r| r.listener.fd));
        fds.extend(self.connections.iter().map(|c| c.fd));
        fds.extend(self.stderr.iter().map(|s| s.fd));
        fds.extend(self.metrics_listener.iter().map(|m| m.fd));
        fds.extend(self.builds.iter().map(|b| b.fd));
        fds.extend(self.key_ring.iter().map(|k| k.fd));
        fds
    }
}

/// `einhorn-master VERSION`: who writes a handover.
pub fn writer() -> String {
    format!("einhorn-master {}", env!("CARGO_PKG_VERSION"))
}
