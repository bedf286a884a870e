//! The stop state every part of a worker watches: running, stopping (drain), hammer.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use tokio::sync::watch;

/// Where a worker is in its life. Phases only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Accepting and serving.
    Running,
    /// Still accepting and serving, but not ready: a stop was asked (SIGTERM) and the worker
    /// waits for load balancers to stop sending it traffic (Kubernetes' lame duck) before it
    /// drains.
    LameDuck,
    /// No longer accepting; connections in flight are finishing.
    Stopping,
    /// The drain is over: every tracked connection has been force-closed.
    Hammer,
}

impl Phase {
    fn from_u8(value: u8) -> Phase {
        match value {
            0 => Phase::Running,
            1 => Phase::LameDuck,
            2 => Phase::Stopping,
            _ => Phase::Hammer,
        }
    }
}

/// Sets the phase. Held by whoever decides when to stop: [`run`](crate::run), or you.
///
/// Cloning gives another handle on the same phase.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<Phase>>,
    /// The phase again, for readers on a hot path (a check per response): a load, where the
    /// watch channel takes a lock.
    phase: Arc<AtomicU8>,
    /// When the lame duck began, if there was one.
    lame_duck_began: Arc<OnceLock<Instant>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    /// A new phase, [`Phase::Running`].
    pub fn new() -> Shutdown {
        Shutdown {
            tx: Arc::new(watch::Sender::new(Phase::Running)),
            phase: Arc::new(AtomicU8::new(Phase::Running as u8)),
            lame_duck_began: Arc::new(OnceLock::new()),
        }
    }

    /// Moves to at least `phase`; returns whether the phase changed.
    pub fn advance(&self, phase: Phase) -> bool {
        self.tx.send_if_modified(|current| {
            if phase > *current {
                if phase == Phase::LameDuck {
                    let _ = self.lame_duck_began.set(Instant::now());
                }
                *current = phase;
                // Set while the channel's lock is held, so it never runs behind the channel.
                self.phase.store(phase as u8, Ordering::Release);
                true
            } else {
                false
            }
        })
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// A watcher of this phase, for servers and connections.
    pub fn signal(&self) -> ShutdownSignal {
        ShutdownSignal {
            rx: self.tx.subscribe(),
            phase: self.phase.clone(),
            lame_duck_began: self.lame_duck_began.clone(),
        }
    }
}

/// Watches the phase: lets a server learn that it must stop accepting or drain.
///
/// Cheap to clone; every clone sees every change.
///
/// # Example
/// ```
/// # async fn example(listener: graceful_listener::GracefulListener) {
/// let signal = listener.shutdown_signal();
/// tokio::spawn(async move {
///     signal.stopping().await;
///     println!("draining: answer the next request with `Connection: close`");
/// });
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ShutdownSignal {
    rx: watch::Receiver<Phase>,
    phase: Arc<AtomicU8>,
    lame_duck_began: Arc<OnceLock<Instant>>,
}

/// The signal of this process's worker, for [`ShutdownSignal::current`].
static CURRENT: RwLock<Option<ShutdownSignal>> = RwLock::new(None);

impl ShutdownSignal {
    /// The stop of the worker this process runs (the last [`Worker`](crate::Worker) made;
    /// [`run`](crate::run) and every adapter make one), for code that has no other way to
    /// reach it: a request handler that must end a stream when the worker stops.
    ///
    /// Stop signals are per process, and so is the worker. Outside a worker (a
    /// [`GracefulListener`](crate::GracefulListener) made on its own, a test), this is a
    /// signal that never fires: use the listener's own
    /// [`shutdown_signal`](crate::GracefulListener::shutdown_signal) there.
    ///
    /// # Example
    /// ```
    /// use graceful_listener::ShutdownSignal;
    ///
    /// async fn events() -> String {
    ///     let signal = ShutdownSignal::current();
    ///     tokio::select! {
    ///         () = signal.stopping() => "the worker is stopping: reconnect\n".to_owned(),
    ///         () = tokio::time::sleep(std::time::Duration::from_secs(30)) => "nothing new\n".to_owned(),
    ///     }
    /// }
    /// ```
    pub fn current() -> ShutdownSignal {
        let current = CURRENT.read().unwrap_or_else(|e| e.into_inner());
        match &*current {
            Some(signal) => signal.clone(),
            // Its `Shutdown` is dropped here: it never leaves `Running`.
            None => Shutdown::new().signal(),
        }
    }

    /// Makes this the signal [`ShutdownSignal::current`] returns.
    pub(crate) fn make_current(&self) {
        *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = Some(self.clone());
    }

    /// The current phase: one atomic load, cheap enough for a check per request.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Whether the worker is ready for traffic: running, not in its lame duck nor stopping.
    /// What a readiness probe answers (200 when ready, 503 when not).
    pub fn is_ready(&self) -> bool {
        self.phase() == Phase::Running
    }

    /// When the worker's [lame duck](crate::WorkerOptions::lame_duck) began, if it had one:
    /// from then on readiness failed, so a load balancer that checks it has stopped sending
    /// new requests here once its checks noticed. A drain uses it to tell a balancer's pooled
    /// connection left unused since then (safe to close) from one still in use (left to its
    /// peer).
    ///
    /// # Example
    /// ```
    /// use graceful_listener::{Phase, Shutdown};
    ///
    /// let shutdown = Shutdown::new();
    /// let signal = shutdown.signal();
    /// assert_eq!(signal.lame_duck_began(), None);
    /// shutdown.advance(Phase::LameDuck);
    /// assert!(signal.lame_duck_began().is_some());
    /// assert!(!signal.is_ready());
    /// ```
    pub fn lame_duck_began(&self) -> Option<Instant> {
        self.lame_duck_began.get().copied()
    }

    /// Whether the worker is stopping (or past it): it no longer accepts, and responses tell
    /// clients to close. The lame duck is not stopping yet.
    pub fn is_stopping(&self) -> bool {
        self.phase() >= Phase::Stopping
    }

    /// Resolves once the worker is stopping (at once if it already is).
    ///
    /// # Cancel safety
    /// Cancel safe: it only observes.
    pub async fn stopping(&self) {
        self.reached(Phase::Stopping).await
    }

    /// Resolves once the drain timeout has passed and connections are being forced closed.
    ///
    /// # Cancel safety
    /// Cancel safe: it only observes.
    pub async fn hammer(&self) {
        self.reached(Phase::Hammer).await
    }

    async fn reached(&self, phase: Phase) {
        let mut rx = self.rx.clone();
        // An error means every `Shutdown` is gone: nobody can stop us any more, so wait forever.
        if rx.wait_for(|p| *p >= phase).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn phases_only_move_forward_and_wake_watchers() {
        let shutdown = Shutdown::new();
        let signal = shutdown.signal();
        assert!(!signal.is_stopping());
        let waiter = tokio::spawn({
            let signal = signal.clone();
            async move { signal.stopping().await }
        });
        assert!(shutdown.advance(Phase::Stopping));
        waiter.await.unwrap();
        assert!(!shutdown.advance(Phase::Stopping));
        assert!(shutdown.advance(Phase::Hammer));
        assert!(!shutdown.advance(Phase::Running));
        assert_eq!(signal.phase(), Phase::Hammer);
        signal.stopping().await; // already past: resolves at once
        signal.hammer().await;
    }

    #[tokio::test]
    async fn a_signal_without_a_shutdown_never_fires() {
        let orphan = Shutdown::new().signal();
        assert_eq!(orphan.phase(), Phase::Running);
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(50), orphan.stopping()).await;
        assert!(waited.is_err(), "nobody can stop it any more");
    }
}
