//! Telling systemd how the worker is doing (`sd_notify`): `READY=1` once serving,
//! `STOPPING=1` at the stop, `STATUS=` lines along the way.

use sd_notify::NotifyState;

use crate::env::{Environment, SERVER_STARTER_PORT};

/// Sends notifications when systemd asked for them (`NOTIFY_SOCKET`) and this process
/// speaks for the service: not when a master (Einhorn, Server::Starter) runs it, since the
/// master is the service's main process and systemd would refuse a worker's word.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Notifier {
    enabled: bool,
}

impl Notifier {
    pub(crate) fn from_env(env: &Environment) -> Notifier {
        let run_by_master =
            env.check_einhorn_worker().is_ok() || env.get(SERVER_STARTER_PORT).is_some();
        Notifier {
            enabled: env.notify_socket().is_some() && !run_by_master,
        }
    }

    /// `READY=1`, with a status.
    pub(crate) fn ready(self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `STOPPING=1`, with a status.
    pub(crate) fn stopping(self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// A `STATUS=` line.
    pub(crate) fn status(self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    fn send(self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        // A lost notification is no reason to stop serving; systemd's own timeouts apply.
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_process_that_speaks_for_the_service_notifies() {
        let notifier = |vars: &[(&str, &str)]| {
            Notifier::from_env(&Environment::from_vars(vars.iter().copied(), 20, 10)).enabled
        };
        assert!(notifier(&[("NOTIFY_SOCKET", "/run/notify")]));
        assert!(!notifier(&[]));
        assert!(!notifier(&[("NOTIFY_SOCKET", "")]));
        assert!(!notifier(&[
            ("NOTIFY_SOCKET", "/run/notify"),
            ("EINHORN_MASTER_PID", "10"),
        ]));
        assert!(!notifier(&[
            ("NOTIFY_SOCKET", "/run/notify"),
            ("SERVER_STARTER_PORT", "8080=3"),
        ]));
        // A grandchild of Einhorn's (its master is not our parent) speaks for itself.
        assert!(notifier(&[
            ("NOTIFY_SOCKET", "/run/notify"),
            ("EINHORN_MASTER_PID", "9"),
        ]));
    }
}
