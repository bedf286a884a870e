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

/// The signals that stop a worker.
const STOP_SIGNALS: [Signal; 4] = [
    Signal::SIGUSR2,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
];

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
        tokio::select! {
            Some(()) = self.usr2.recv() => StopRequest::Graceful("SIGUSR2"),
            Some(()) = self.term.recv() => StopRequest::Graceful("SIGTERM"),
            Some(()) = self.int.recv() => StopRequest::Graceful("SIGINT"),
            Some(()) = self.quit.recv() => StopRequest::Immediate("SIGQUIT"),
        }
    }
}
