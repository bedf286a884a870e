//! What a worker's life ends with: a [`RunReport`], or a [`RunError`].

use std::fmt;
use std::time::Duration;

use crate::bind::{BindError, ParseBindError};
use crate::einhorn::AckError;

/// Why a worker stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopCause {
    /// A signal, by name: `SIGUSR2`, `SIGTERM`, `SIGINT` or `SIGQUIT`.
    Signal(&'static str),
    /// The server's `serve` returned on its own.
    ServerEnded,
    /// The application asked, through [`ListenerHandle::stop`](crate::ListenerHandle::stop).
    Requested,
}

impl fmt::Display for StopCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopCause::Signal(name) => f.write_str(name),
            StopCause::ServerEnded => f.write_str("server ended"),
            StopCause::Requested => f.write_str("stop requested"),
        }
    }
}

/// What happened during a worker's life, returned by [`run`](crate::run) and
/// [`Worker::drain`](crate::Worker::drain).
///
/// # Example
/// ```no_run
/// # async fn example(server: impl graceful_listener::Server + Send + 'static) -> Result<(), graceful_listener::RunError> {
/// let report = graceful_listener::run(server, 0).await?;
/// if report.forced > 0 {
///     eprintln!("the drain was cut: {} connections forced closed", report.forced);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunReport {
    /// Why it stopped.
    pub cause: StopCause,
    /// Connections accepted over the worker's life, on every listener.
    pub served: u64,
    /// Connections open at the stop (or accepted in a race with it) that finished on their own.
    pub drained: u64,
    /// Connections force-closed at the drain timeout or on a second signal.
    pub forced: u64,
    /// Time from the stop to the end of the drain.
    pub drain_time: Duration,
}

impl RunReport {
    /// Whether every connection finished on its own: nothing was cut.
    ///
    /// # Example
    /// ```no_run
    /// # async fn example(server: impl graceful_listener::Server + Send + 'static) -> Result<(), graceful_listener::RunError> {
    /// let report = graceful_listener::run(server, 0).await?;
    /// std::process::exit(if report.is_clean() { 0 } else { 3 });
    /// # }
    /// ```
    pub fn is_clean(&self) -> bool {
        self.forced == 0
    }
}

/// A worker could not run, or could not be set up.
///
/// Every error a `main` meets on the way to a worker converts into it with `?`: a bind spec
/// that does not parse ([`ParseBindError`]), TLS files that cannot be used (`TlsError`, feature
/// `rustls`), the self-hosted master's setup (`einhorn_master::self_hosted::SelfHostedError`,
/// through [`RunError::Master`]), as well as the worker's own failures. So one `main` type
/// fits every program in the book.
///
/// Its `Debug` form is its message, so that `fn main() -> Result<(), RunError>` prints what
/// went wrong in words (`{:#?}` gives the structure).
///
/// # Example
/// ```no_run
/// # async fn example() -> Result<(), graceful_listener::RunError> {
/// use graceful_listener::{Bind, Run};
///
/// let bind: Bind = "127.0.0.1:3000".parse()?; // a ParseBindError converts
/// # let server = |_l: graceful_listener::GracefulListener| async { Ok(()) };
/// let report = Run::new(server).bind(bind).await?;
/// # Ok(())
/// # }
/// ```
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// A bind spec given in code or on the command line does not parse.
    #[error(transparent)]
    ParseBind(#[from] ParseBindError),
    /// A TLS configuration could not be made from its files. Boxed: it is rare, and large.
    #[cfg(feature = "rustls")]
    #[error(transparent)]
    Tls(Box<crate::tls::TlsError>),
    /// The master this program runs as could not start: self-hosted mode (crate
    /// `einhorn-master`, which converts its `SelfHostedError` into this). Boxed, because
    /// this crate does not depend on the master.
    #[error(transparent)]
    Master(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// The signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// The listener could not be taken or bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The master could not be told we are ready.
    #[error(transparent)]
    Ack(#[from] AckError),
    /// The server failed.
    #[error("server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// The warm-up failed or outlasted its timeout: the worker never accepted.
    #[error(transparent)]
    WarmUp(#[from] WarmUpError),
}

/// The warm-up ([`WorkerOptions::warm_up`](crate::WorkerOptions::warm_up)) did not succeed.
///
/// # Example
/// ```
/// use graceful_listener::WarmUpError;
///
/// let err = WarmUpError::TimedOut(std::time::Duration::from_secs(5));
/// assert_eq!(err.to_string(), "warm-up did not finish within 5s");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WarmUpError {
    /// The step returned an error.
    #[error("warm-up failed: {0}")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// The step outlasted its timeout.
    #[error("warm-up did not finish within {0:?}")]
    TimedOut(Duration),
}

#[cfg(feature = "rustls")]
impl From<crate::tls::TlsError> for RunError {
    fn from(error: crate::tls::TlsError) -> Self {
        RunError::Tls(Box::new(error))
    }
}

impl fmt::Debug for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !f.alternate() {
            // Every message here already says its cause.
            return write!(f, "{self}");
        }
        match self {
            RunError::ParseBind(e) => f.debug_tuple("ParseBind").field(e).finish(),
            #[cfg(feature = "rustls")]
            RunError::Tls(e) => f.debug_tuple("Tls").field(e).finish(),
            RunError::Master(e) => f.debug_tuple("Master").field(e).finish(),
            RunError::Signals(e) => f.debug_tuple("Signals").field(e).finish(),
            RunError::Bind(e) => f.debug_tuple("Bind").field(e).finish(),
            RunError::Ack(e) => f.debug_tuple("Ack").field(e).finish(),
            RunError::Serve(e) => f.debug_tuple("Serve").field(e).finish(),
            RunError::WarmUp(e) => f.debug_tuple("WarmUp").field(e).finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bind::Bind;
    use crate::env::EnvError;

    #[test]
    fn errors_met_before_the_worker_convert_and_keep_their_words() {
        let err: RunError = "127.0.0.1:99999".parse::<Bind>().unwrap_err().into();
        assert_eq!(
            format!("{err:?}"),
            "invalid bind spec \"127.0.0.1:99999\": port 99999 is above 65535"
        );
        let master = std::io::Error::other("another master is running on /tmp/a.sock");
        let err = RunError::Master(Box::new(master));
        assert_eq!(err.to_string(), "another master is running on /tmp/a.sock");
    }

    #[test]
    fn debug_is_the_message_a_user_can_read() {
        let err = RunError::Bind(BindError::Env {
            bind: Bind::Einhorn(0),
            source: EnvError::Missing {
                var: "EINHORN_MASTER_PID".into(),
                why: "this process was not started by an Einhorn master",
            },
        });
        assert_eq!(
            format!("{err:?}"),
            "cannot take einhorn@0: EINHORN_MASTER_PID is not set: this process was not started by an Einhorn master"
        );
        assert!(
            format!("{err:#?}").starts_with("Bind(\n    Env {"),
            "{err:#?}"
        );
    }
}
