//! The supervisor: one task per server that looks at its connections a few times a second
//! at most, and tells each what to do: time out a request head that takes too long, close an
//! idle keep-alive connection, abort a client that sends too slowly, and once the worker
//! stops, close idle connections when their grace is over and give HTTP/2 its GOAWAY.
//!
//! Timeouts are enforced here rather than by a timer per request (hyper's own
//! `header_read_timeout` arms and disarms one for every request): requests pay a few counter
//! updates, and the supervisor wakes only when a deadline is due.

mod rules;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use graceful_listener::ShutdownSignal;
use slab::Slab;

pub(crate) use rules::Limits;
use rules::{Phase, Record, judge};

use crate::state::{Command, ConnState};

/// While running, the longest the supervisor sleeps: new connections are first looked at
/// within this, and their deadlines counted from then.
const RUNNING_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// Watches a server's connections. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Supervisor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// A slab rather than a map: a slot per connection and no spare buckets to pay for. Each
    /// slot keeps, beside the connection, what the rules remember of it between looks
    /// (`None` until the first).
    connections: Mutex<Slab<(Arc<ConnState>, Option<Record>)>>,
    limits: Limits,
}

/// Keeps a connection supervised until dropped.
#[derive(Debug)]
pub(crate) struct Supervised {
    inner: Arc<Inner>,
    key: usize,
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.inner.lock().remove(self.key);
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slab<(Arc<ConnState>, Option<Record>)>> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Supervisor {
    pub(crate) fn new(limits: Limits) -> Supervisor {
        Supervisor {
            inner: Arc::new(Inner {
                connections: Mutex::new(Slab::new()),
                limits,
            }),
        }
    }

    /// Supervises a connection until the returned guard is dropped.
    pub(crate) fn supervise(&self, state: Arc<ConnState>) -> Supervised {
        let key = self.inner.lock().insert((state, None));
        Supervised {
            inner: self.inner.clone(),
            key,
        }
    }

    /// The supervisor's task: runs until the worker has stopped and every connection is gone.
    pub(crate) async fn run(self, signal: ShutdownSignal) {
        let mut phase = Phase::Running;
        // Reused from look to look, empty between them; filled under the lock, judged outside
        // it, so that connections coming and going never wait for a look (which may peek at
        // sockets).
        let mut connections: Vec<(usize, Arc<ConnState>, Option<Record>)> = Vec::new();
        loop {
            let now = Instant::now();
            connections.extend(
                self.inner
                    .lock()
                    .iter()
                    .map(|(key, (state, record))| (key, state.clone(), *record)),
            );
            if matches!(phase, Phase::Draining { .. }) && connections.is_empty() {
                return;
            }
            let mut next_look: Option<Instant> = None;
            for (_, state, record) in &mut connections {
                let seen = state.observe();
                let record = record.get_or_insert_with(|| Record::new(seen, now));
                let verdict = judge(record, seen, now, phase, &self.inner.limits, &mut || {
                    state.has_unread_bytes()
                });
                if verdict.command != Command::Serve {
                    tracing::debug!(command = ?verdict.command, "supervisor");
                    state.give(verdict.command);
                }
                if let Some(at) = verdict.next_look {
                    next_look = Some(next_look.map_or(at, |n| n.min(at)));
                }
            }
            // The records back in their slots; a slot whose connection has gone meanwhile (and
            // perhaps went to a new connection) is left alone.
            {
                let mut slots = self.inner.lock();
                for (key, state, record) in connections.drain(..) {
                    if let Some(slot) = slots.get_mut(key)
                        && Arc::ptr_eq(&slot.0, &state)
                    {
                        slot.1 = record;
                    }
                }
            }
            // `connections` is empty again: not held while asleep, so that a closed
            // connection's state goes with it. Look when a rule needs it, and at least every tick: new connections come, and
            // ended ones go.
            let wake_at = next_look.map_or(now + RUNNING_TICK, |at| at.min(now + RUNNING_TICK));
            tokio::select! {
                () = tokio::time::sleep_until(wake_at.into()) => {}
                () = signal.stopping(), if phase == Phase::Running => {
                    phase = Phase::Draining {
                        since: Instant::now(),
                        unready: signal.lame_duck_began(),
                    };
                }
            }
        }
    }
}
