//! systemd's notify protocol (`Type=notify` and `Type=notify-reload`), spoken by the master
//! for the whole service when `NOTIFY_SOCKET` is set: `READY=1` once the workers serve,
//! `RELOADING=1` with `MONOTONIC_USEC` when an upgrade starts, `READY=1` when it ends (done or
//! failed: the service serves either way), `STOPPING=1` at the stop, `STATUS=` whenever the
//! worker count, version or last failure changes, and `MAINPID=` (the master) with the first
//! `READY=1`. Workers get no `NOTIFY_SOCKET`: systemd only hears the main pid.
//!
//! [`Readiness`] is pure: it compares what the master looks like now ([`Observed`]) with what
//! it last told systemd, and says what to send. [`Notifier`] sends it.

use sd_notify::NotifyState;

/// What the master looks like after an event, as far as systemd cares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Current workers (not retired) that have ACKed.
    pub serving: usize,
    /// The target number of workers.
    pub target: usize,
    /// The version new workers get.
    pub version: u64,
    /// The oldest version still current (below `version` after a failed upgrade).
    pub base_version: u64,
    /// Whether an upgrade is in progress (or a reload of the master).
    pub upgrading: bool,
    /// Whether the master is about to re-exec itself (before an upgrade, or alone).
    pub reexec: bool,
    /// Upgrade and reload requests so far: each new one is a reload systemd hears of.
    pub requests: u64,
    /// Whether the master is stopping.
    pub stopping: bool,
    /// Why the last upgrade failed, if it did.
    pub failure: Option<String>,
}

/// One notification to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// `READY=1` and the status; `MAINPID=` too the first time.
    Ready {
        /// The `STATUS=` text.
        status: String,
        /// Whether this is the first `READY=1` (send `MAINPID=`).
        first: bool,
    },
    /// `RELOADING=1`, `MONOTONIC_USEC=` (now) and the status.
    Reloading {
        /// The `STATUS=` text.
        status: String,
    },
    /// `STOPPING=1` and the status.
    Stopping {
        /// The `STATUS=` text.
        status: String,
    },
    /// Only a new `STATUS=`.
    Status(String),
}

/// What systemd has been told so far. See the [module documentation](self).
///
/// ```
/// use einhorn_master::notify::{Notice, Observed, Readiness};
///
/// let mut readiness = Readiness::default();
/// let mut seen = Observed { serving: 0, target: 2, ..Observed::default() };
/// assert_eq!(
///     readiness.observe(&seen),
///     vec![Notice::Status("starting: 0 of 2 workers serving, version 0".into())]
/// );
/// seen.serving = 2;
/// assert!(matches!(&readiness.observe(&seen)[..], [Notice::Ready { first: true, .. }]));
/// seen.upgrading = true;
/// seen.requests = 1;
/// assert!(matches!(&readiness.observe(&seen)[..], [Notice::Reloading { .. }]));
/// ```
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Readiness {
    ready_sent: bool,
    /// The request last reported as reloading (its number), while it runs.
    reloading: Option<u64>,
    stopping: bool,
    status: String,
}

impl Readiness {
    /// Compares `now` with what was sent; returns what to send, in order (often nothing).
    pub fn observe(&mut self, now: &Observed) -> Vec<Notice> {
        let mut status = status(now);
        let starting = !self.ready_sent && !now.upgrading && !now.stopping;
        if starting && (now.target == 0 || now.serving < now.target) {
            status = format!("starting: {status}");
        }
        let mut notices = Vec::new();
        if now.stopping {
            if !self.stopping {
                self.stopping = true;
                notices.push(Notice::Stopping {
                    status: status.clone(),
                });
            } else if status != self.status {
                notices.push(Notice::Status(status.clone()));
            }
            self.status = status;
            return notices;
        }
        if now.upgrading {
            // A SIGHUP during an upgrade restarts it under a new version: systemd asked again,
            // so it is told again.
            if self.reloading != Some(now.requests) {
                self.reloading = Some(now.requests);
                notices.push(Notice::Reloading {
                    status: status.clone(),
                });
            } else if status != self.status {
                notices.push(Notice::Status(status.clone()));
            }
        } else if self.reloading.take().is_some() {
            // Done or failed, the service serves: systemd's reload is over.
            notices.push(Notice::Ready {
                status: status.clone(),
                first: !self.ready_sent,
            });
            self.ready_sent = true;
        } else if !self.ready_sent && now.target > 0 && now.serving >= now.target {
            self.ready_sent = true;
            notices.push(Notice::Ready {
                status: status.clone(),
                first: true,
            });
        } else if status != self.status {
            notices.push(Notice::Status(status.clone()));
        }
        self.status = status;
        notices
    }
}

/// The `STATUS=` text for `now`.
///
/// ```
/// use einhorn_master::notify::{Observed, status};
///
/// let failed = Observed {
///     serving: 2, target: 2, version: 2, base_version: 1,
///     failure: Some("no new worker ACKed".into()), ..Observed::default()
/// };
/// assert_eq!(status(&failed), "2 of 2 workers serving, version 1; upgrade to version 2 failed: no new worker ACKed");
/// ```
pub fn status(now: &Observed) -> String {
    let Observed {
        serving,
        target,
        version,
        base_version,
        ..
    } = now;
    if now.stopping {
        return format!("stopping: {serving} workers still serving");
    }
    if now.reexec {
        return format!(
            "reloading the master: {serving} of {target} workers serving, version {base_version}"
        );
    }
    if now.upgrading {
        return format!(
            "upgrading to version {version}: {serving} of {target} new workers serving"
        );
    }
    let mut text = format!("{serving} of {target} workers serving, version {base_version}");
    if base_version < version {
        let why = now
            .failure
            .as_deref()
            .unwrap_or("no new worker became ready");
        text.push_str(&format!("; upgrade to version {version} failed: {why}"));
    }
    text
}

/// Sends [`Notice`]s to `NOTIFY_SOCKET`, if systemd gave one.
#[derive(Debug, Clone, Copy)]
pub struct Notifier {
    enabled: bool,
    main_pid: u32,
}

impl Notifier {
    /// A notifier for master `main_pid`, enabled when `NOTIFY_SOCKET` is set and not empty.
    pub fn from_env(main_pid: u32) -> Notifier {
        let enabled = std::env::var_os(graceful_listener::env::NOTIFY_SOCKET)
            .is_some_and(|socket| !socket.is_empty());
        Notifier { enabled, main_pid }
    }

    /// Whether notifications are sent at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Sends one notice (logged at debug; a failure is a warning, never fatal: systemd's own
    /// timeouts apply).
    pub fn send(&self, notice: &Notice) {
        if !self.enabled {
            return;
        }
        let mut states = Vec::new();
        let status = match notice {
            Notice::Ready { status, first } => {
                states.push(NotifyState::Ready);
                if *first {
                    states.push(NotifyState::MainPid(self.main_pid));
                }
                status
            }
            Notice::Reloading { status } => {
                states.push(NotifyState::Reloading);
                // systemd matches this to the time it sent SIGHUP (notify-reload).
                match NotifyState::monotonic_usec_now() {
                    Ok(now) => states.push(now),
                    Err(e) => tracing::warn!("cannot read CLOCK_MONOTONIC: {e}"),
                }
                status
            }
            Notice::Stopping { status } => {
                states.push(NotifyState::Stopping);
                status
            }
            Notice::Status(status) => status,
        };
        states.push(NotifyState::Status(status));
        tracing::debug!("sd_notify: {notice:?}");
        if let Err(e) = sd_notify::notify(&states) {
            tracing::warn!("cannot notify systemd (NOTIFY_SOCKET): {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serving(n: usize, version: u64) -> Observed {
        Observed {
            serving: n,
            target: 2,
            version,
            base_version: version,
            requests: version,
            ..Observed::default()
        }
    }

    #[test]
    fn start_upgrade_ready_again_then_stop() {
        let mut r = Readiness::default();
        assert_eq!(
            r.observe(&serving(1, 0)),
            [Notice::Status(
                "starting: 1 of 2 workers serving, version 0".into()
            )]
        );
        assert_eq!(
            r.observe(&serving(2, 0)),
            [Notice::Ready {
                status: "2 of 2 workers serving, version 0".into(),
                first: true
            }]
        );
        assert!(r.observe(&serving(2, 0)).is_empty(), "nothing changed");
        let upgrading = Observed {
            upgrading: true,
            serving: 0,
            ..serving(0, 1)
        };
        assert!(matches!(
            &r.observe(&upgrading)[..],
            [Notice::Reloading { .. }]
        ));
        let progress = Observed {
            serving: 1,
            ..upgrading.clone()
        };
        assert!(matches!(&r.observe(&progress)[..], [Notice::Status(_)]));
        assert_eq!(
            r.observe(&serving(2, 1)),
            [Notice::Ready {
                status: "2 of 2 workers serving, version 1".into(),
                first: false
            }]
        );
        let stopping = Observed {
            stopping: true,
            ..serving(2, 1)
        };
        assert!(matches!(
            &r.observe(&stopping)[..],
            [Notice::Stopping { .. }]
        ));
        let fewer = Observed {
            serving: 1,
            ..stopping.clone()
        };
        assert!(matches!(&r.observe(&fewer)[..], [Notice::Status(_)]));
        assert!(r.observe(&fewer).is_empty());
    }

    #[test]
    fn a_restarted_upgrade_reloads_again_and_a_failed_one_is_ready_with_its_failure() {
        let mut r = Readiness::default();
        r.observe(&serving(2, 0));
        let up = |version| Observed {
            upgrading: true,
            ..serving(0, version)
        };
        assert!(matches!(&r.observe(&up(1))[..], [Notice::Reloading { .. }]));
        assert!(matches!(&r.observe(&up(2))[..], [Notice::Reloading { .. }]));
        let failed = Observed {
            base_version: 0,
            failure: Some("exit status 1".into()),
            ..serving(2, 2)
        };
        match &r.observe(&failed)[..] {
            [Notice::Ready { status, first }] => {
                assert!(!first);
                assert!(status.contains("version 0"), "{status}");
                assert!(status.contains("upgrade to version 2 failed: exit status 1"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_upgrade_before_the_first_ready_still_ends_in_ready_with_mainpid() {
        let mut r = Readiness::default();
        r.observe(&serving(0, 0));
        let up = Observed {
            upgrading: true,
            ..serving(0, 1)
        };
        assert!(matches!(&r.observe(&up)[..], [Notice::Reloading { .. }]));
        assert!(matches!(
            &r.observe(&serving(2, 1))[..],
            [Notice::Ready { first: true, .. }]
        ));
    }
}
