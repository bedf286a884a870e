//! Workers' stderr, when captured (`--stderr-tail N`, and always in [`crate::self_hosted`]):
//! forwarded line by line to the master's own stderr, with the last lines of each worker kept
//! so that a worker that dies or never ACKs can be reported with what it said last.
//!
//! [`Tail`] is the pure part (bounded lines, bounded line length); [`forward`] is the task that
//! reads one worker's pipe.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc::UnboundedSender;

use crate::pure::state::Pid;

/// Longest line kept in a tail, in bytes: a worker writing megabytes without a newline must
/// not grow the master. (Forwarding is not cut: only what is kept.)
pub const MAX_KEPT_LINE: usize = 1024;

/// The last lines a worker wrote, at most `capacity` of them, each cut to [`MAX_KEPT_LINE`].
///
/// ```
/// use einhorn_master::stderr::Tail;
///
/// let mut tail = Tail::new(2);
/// tail.push(b"one\ntwo\nthr");
/// tail.push(b"ee\n");
/// assert_eq!(tail.lines(), ["two", "three"]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Tail {
    capacity: usize,
    lines: VecDeque<String>,
    /// The line being written (no newline yet), cut to [`MAX_KEPT_LINE`].
    partial: Vec<u8>,
}

impl Tail {
    /// An empty tail keeping `capacity` lines.
    pub fn new(capacity: usize) -> Tail {
        Tail {
            capacity,
            lines: VecDeque::new(),
            partial: Vec::new(),
        }
    }

    /// Adds bytes as read from the pipe (any chunking).
    pub fn push(&mut self, mut bytes: &[u8]) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            self.extend_partial(&bytes[..end]);
            self.end_line();
            bytes = &bytes[end + 1..];
        }
        self.extend_partial(bytes);
    }

    /// The kept lines, oldest first, with an unfinished last line if there is one.
    pub fn lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.lines.iter().cloned().collect();
        if !self.partial.is_empty() {
            lines.push(String::from_utf8_lossy(&self.partial).into_owned());
            if lines.len() > self.capacity {
                lines.remove(0);
            }
        }
        lines
    }

    fn extend_partial(&mut self, bytes: &[u8]) {
        let room = MAX_KEPT_LINE.saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn end_line(&mut self) {
        let line = String::from_utf8_lossy(&self.partial).into_owned();
        self.partial.clear();
        if self.capacity == 0 {
            return;
        }
        if self.lines.len() == self.capacity {
            self.lines.pop_front();
        }
        // Trailing `\r` of a CRLF writer, and ANSI colors are left as written: this is a log.
        self.lines.push_back(line);
    }
}

/// The tails of every worker whose stderr is captured, shared by the forwarding tasks and the
/// driver (one thread: the lock is never contended for long).
pub type Tails = Arc<Mutex<HashMap<Pid, Tail>>>;

/// Where [`forward`] reports: a pipe's end, or the pipe itself when asked to give it back.
#[derive(Debug, Clone)]
pub struct Forwarding {
    /// Gets the pid when its pipe reaches end of file.
    pub closed: UnboundedSender<Pid>,
    /// Becomes `true` when every pipe must be given back (the master is about to exec).
    pub detach: tokio::sync::watch::Receiver<bool>,
    /// Gets the pipes given back.
    pub returned: UnboundedSender<(Pid, std::os::fd::OwnedFd)>,
}

/// Reads worker `pid`'s stderr until end of file: every chunk goes to the master's stderr as
/// it comes, and into the worker's [`Tail`]. At end of file (the worker and whatever inherited
/// its stderr are gone) sends `pid` on `to.closed`; asked to detach, gives the pipe back on
/// `to.returned` instead.
pub async fn forward(
    pid: Pid,
    pipe: tokio::process::ChildStderr,
    tails: Tails,
    mut to: Forwarding,
) {
    let mut pipe = pipe;
    let mut buffer = vec![0u8; 8192];
    loop {
        let read = tokio::select! {
            read = pipe.read(&mut buffer) => read,
            _ = to.detach.wait_for(|detach| *detach) => {
                if let Ok(fd) = pipe.into_owned_fd() {
                    let _ = to.returned.send((pid, fd));
                }
                return;
            }
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buffer[..n];
        // Unchanged, as if the worker wrote to our stderr itself. A chunk may end mid-line:
        // a worker's line is whole when it writes it in one call, as loggers do.
        let _ = std::io::stderr().lock().write_all(chunk);
        if let Some(tail) = tails
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&pid)
        {
            tail.push(chunk);
        }
    }
    let _ = to.closed.send(pid);
}

/// `lines` indented under a report, or a note that there were none.
///
/// ```
/// use einhorn_master::stderr::indent;
/// assert_eq!(indent(&["a".into(), "b".into()]), "\n  | a\n  | b");
/// assert_eq!(indent(&[]), " (none)");
/// ```
pub fn indent(lines: &[String]) -> String {
    if lines.is_empty() {
        return " (none)".to_string();
    }
    lines.iter().map(|l| format!("\n  | {l}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_keeps_the_last_lines_whatever_the_chunking() {
        let text = b"alpha\nbeta\ngamma\ndelta\n";
        for split in 0..text.len() {
            let mut tail = Tail::new(3);
            tail.push(&text[..split]);
            tail.push(&text[split..]);
            assert_eq!(tail.lines(), ["beta", "gamma", "delta"], "split at {split}");
        }
    }

    #[test]
    fn an_unfinished_line_counts_and_long_lines_are_cut() {
        let mut tail = Tail::new(2);
        tail.push(b"a\nb\nno newline");
        assert_eq!(tail.lines(), ["b", "no newline"]);
        let mut tail = Tail::new(1);
        tail.push(&vec![b'x'; 3 * MAX_KEPT_LINE]);
        tail.push(&vec![b'x'; MAX_KEPT_LINE]);
        tail.push(b"\n");
        assert_eq!(tail.lines()[0].len(), MAX_KEPT_LINE);
        let mut none = Tail::new(0);
        none.push(b"x\n");
        assert!(none.lines().is_empty());
    }

    #[test]
    fn invalid_utf8_is_kept_lossily() {
        let mut tail = Tail::new(1);
        tail.push(b"bad \xff byte\n");
        assert_eq!(tail.lines(), ["bad \u{fffd} byte"]);
    }
}
