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

/// Handlers for the stop signals. Once installed, their default action (death) never
/// applies again to this process, even after this value is dropped.
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
    pub(crate) fn install() -> std::io::Result<StopSignals> {
        let signals = StopSignals {
            usr2: signal(SignalKind::user_defined2())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
        };
        let mut set = SigSet::empty();
        for s in [
            Signal::SIGUSR2,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGQUIT,
        ] {
            set.add(s);
        }
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None)?;
        Ok(signals)
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
