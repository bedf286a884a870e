//! The signals that stop a worker, and what each one asks for.

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use tokio::signal::unix::{SignalKind, signal};

/// What a stop signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopRequest {
    /// SIGUSR2 (Einhorn's upgrade and stop), SIGTERM, SIGINT: stop accepting, drain.
    Graceful(&'static str),
    /// SIGQUIT: stop now.
    Immediate(&'static str),
}

impl StopRequest {
    pub(crate) fn signal_name(self) -> &'static str {
        match self {
            StopRequest::Graceful(name) | StopRequest::Immediate(name) => name,
        }
    }
}

/// The signals that stop a worker: SIGUSR2 (Einhorn's stop), SIGTERM, SIGINT (graceful) and
/// SIGQUIT (now).
///
/// A master may start a worker with these blocked, so that one sent before the worker's
/// handlers exist stays pending instead of killing it by its default action: the worker
/// unblocks them as soon as its handlers are installed ([`Worker::new`](crate::Worker::new),
/// which [`run`](crate::run) and every adapter call first). `einhorn-master` does.
///
/// ```
/// use nix::sys::signal::Signal;
/// assert!(graceful_listener::STOP_SIGNALS.contains(&Signal::SIGUSR2));
/// ```
pub const STOP_SIGNALS: [Signal; 4] = [
    Signal::SIGUSR2,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
];

/// The bytes every program that installs the stop handlers carries, in an ELF section of its
/// own ([`UNBLOCKS_STOP_SIGNALS_SECTION`]), so that a master can tell from the program file,
/// before it starts it, that the program unblocks the stop signals itself (see
/// [`unblocks_stop_signals_marker`]). Kept alive by [`StopSignals::install`]: linked into
/// exactly the programs that call it.
#[unsafe(link_section = "graceful_listener_stop_signals")]
static UNBLOCKS_STOP_SIGNALS: [u8; 41] = *b"graceful-listener/unblocks-stop-signals/1";

/// The name of the ELF section that holds [`unblocks_stop_signals_marker`] in every program
/// that installs graceful-listener's stop handlers.
pub const UNBLOCKS_STOP_SIGNALS_SECTION: &str = "graceful_listener_stop_signals";

/// The halves of that marker, apart: a program that only searches for it (a master) must not
/// carry it whole.
const MARKER_HEAD: &str = "graceful-listener/";
const MARKER_TAIL: &str = "unblocks-stop-signals/1";

/// The bytes found, in the ELF section [`UNBLOCKS_STOP_SIGNALS_SECTION`], in every program
/// built with this crate's stop-signal handling (every worker that calls
/// [`Worker::new`](crate::Worker::new), as [`run`](crate::run) and every adapter do), and
/// only in those.
///
/// A master that starts workers with the [`STOP_SIGNALS`] blocked (so that a stop signal sent
/// during a worker's start waits instead of killing it) looks for these bytes in the program
/// file first: a program without them would never unblock the signals, and never stop.
/// `einhorn-master` does this.
///
/// ```
/// let marker = graceful_listener::unblocks_stop_signals_marker();
/// assert!(marker.starts_with(b"graceful-listener/"));
/// ```
pub fn unblocks_stop_signals_marker() -> Vec<u8> {
    [MARKER_HEAD, MARKER_TAIL].concat().into_bytes()
}

/// Points stderr at `/dev/null` when it is a pipe that nobody reads any more.
///
/// A master that keeps its workers' last stderr lines (`einhorn-master --stderr-tail`, the
/// self-hosted master) gives them a pipe as stderr. When that master dies (and its
/// parent-death signal is what stops the worker), every write to stderr fails with EPIPE, and
/// a logger that reports its own write errors with `eprintln!` (tracing-subscriber's `fmt`
/// does) panics: the worker would die in the middle of its drain. Output nobody can read is
/// dropped instead. Stderr that is a terminal, a file, or a pipe still read is left alone.
fn release_orphaned_stderr() {
    use std::os::fd::AsFd;
    let stderr = std::io::stderr();
    let fd = stderr.as_fd();
    let is_pipe =
        nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFIFO);
    if !is_pipe {
        return;
    }
    // A pipe's write end polls as an error once its last reader is gone.
    let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLOUT)];
    let orphaned = nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).is_ok()
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLERR));
    if !orphaned {
        return;
    }
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto fd 2 replaces the dead pipe atomically; `null` is closed after.
        unsafe { libc::dup2(null.as_raw_fd(), libc::STDERR_FILENO) };
    }
}

/// Whether a stop signal is pending for this thread or the process (sent while blocked).
fn stop_signal_pending() -> std::io::Result<bool> {
    let mut pending = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigpending fills the set it is given; it is read only on success.
    if unsafe { libc::sigpending(pending.as_mut_ptr()) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: initialised by the successful sigpending above.
    let pending = unsafe { pending.assume_init() };
    // SAFETY: sigismember only reads the valid set.
    Ok(STOP_SIGNALS
        .iter()
        .any(|&s| unsafe { libc::sigismember(&pending, s as libc::c_int) } == 1))
}

/// Handlers for the stop signals. Once installed, their default action (death) never
/// applies again to this process, even after this value is dropped.
#[derive(Debug)]
pub(crate) struct StopSignals {
    usr2: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Installs the handlers, then unblocks the signals in this thread.
    ///
    /// A master may start workers with these signals blocked, so that one sent before the
    /// worker's handlers exist stays pending instead of killing it; unblocking after the
    /// handlers are in place delivers it to them.
    ///
    /// Also returns whether a stop signal was pending (sent while blocked): the unblocking
    /// delivers it to the handlers, but tokio's signal driver reports it only when it next
    /// runs, so whoever must not act before seeing it (the ACK) has to wait for it.
    pub(crate) fn install() -> std::io::Result<(StopSignals, bool)> {
        // Keeps the marker in every program that gets here (a master reads it from the file).
        std::hint::black_box(&UNBLOCKS_STOP_SIGNALS);
        let signals = StopSignals {
            usr2: signal(SignalKind::user_defined2())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
        };
        let set: SigSet = STOP_SIGNALS.into_iter().collect();
        let stop_pending = stop_signal_pending()?;
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None)?;
        Ok((signals, stop_pending))
    }

    /// The next stop signal.
    ///
    /// # Cancel safety
    /// Cancel safe: a signal that arrives meanwhile is kept for the next call.
    pub(crate) async fn recv(&mut self) -> StopRequest {
        let request = tokio::select! {
            Some(()) = self.usr2.recv() => StopRequest::Graceful("SIGUSR2"),
            Some(()) = self.term.recv() => StopRequest::Graceful("SIGTERM"),
            Some(()) = self.int.recv() => StopRequest::Graceful("SIGINT"),
            Some(()) = self.quit.recv() => StopRequest::Immediate("SIGQUIT"),
        };
        // Before the stop is logged: the signal may be a parent-death signal.
        release_orphaned_stderr();
        request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_searched_for_is_the_marker_carried() {
        assert_eq!(
            unblocks_stop_signals_marker(),
            UNBLOCKS_STOP_SIGNALS.to_vec()
        );
    }
}
