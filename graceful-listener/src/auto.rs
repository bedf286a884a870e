//! `auto`: which socket this process's environment provides, and why, so that one binary
//! runs under Einhorn, systemd, Server::Starter, a `PORT` convention, or alone.

use crate::bind::{Bind, BindError, DEFAULT_ADDR, ParseBindError};
use crate::env::{
    BIND, EnvError, Environment, FD_COUNT, LISTEN_FDS, MASTER_PID, PORT, SERVER_STARTER_PORT,
};

/// A spec with `auto` replaced, and the reason when it was `auto`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub(crate) bind: Bind,
    /// Why `auto` chose this, for the log line at start; `None` for an explicit spec.
    pub(crate) why: Option<String>,
}

/// Replaces `auto` with the spec `env` calls for; any other spec is kept.
pub(crate) fn resolve(bind: Bind, env: &Environment) -> Result<Resolved, BindError> {
    if bind != Bind::Auto {
        return Ok(Resolved { bind, why: None });
    }
    let (bind, why) = choose(env).map_err(|source| BindError::Auto { source })?;
    Ok(Resolved {
        bind,
        why: Some(why),
    })
}

/// The first of: the explicit override, Einhorn, systemd, Server::Starter, `PORT`, the
/// default. A manager whose variables are there but wrong is an error, not a reason to try
/// the next; variables that are not ours (inherited from a parent) are skipped, and said.
fn choose(env: &Environment) -> Result<(Bind, String), EnvError> {
    let mut skipped = Vec::new();
    let chosen = choose_noting(env, &mut skipped)?;
    let (bind, mut why) = chosen;
    if !skipped.is_empty() {
        why.push_str(&format!(" (skipped: {})", skipped.join("; ")));
    }
    Ok((bind, why))
}

fn choose_noting(env: &Environment, skipped: &mut Vec<String>) -> Result<(Bind, String), EnvError> {
    if let Some(spec) = env.get(BIND) {
        let bind: Bind = spec
            .parse()
            .map_err(|e: ParseBindError| EnvError::InvalidSpec {
                var: BIND.to_owned(),
                value: spec.to_owned(),
                reason: e.reason().to_owned(),
            })?;
        if bind == Bind::Auto {
            return Err(EnvError::Invalid {
                var: BIND.to_owned(),
                value: spec.to_owned(),
                expected: "a bind spec other than auto",
            });
        }
        return Ok((bind, format!("{BIND}={spec}")));
    }

    if let Some(master_pid) = env.get(MASTER_PID) {
        match env.check_einhorn_worker() {
            Ok(()) => {
                // Read strictly: a garbage count is an error even if EINHORN_FD_0 looks fine.
                let count = env.einhorn_fd_count()?;
                if count > 0 {
                    return Ok((
                        Bind::Einhorn(0),
                        format!(
                            "run by Einhorn ({MASTER_PID}={master_pid} is our parent, {FD_COUNT}={count})"
                        ),
                    ));
                }
                skipped.push(format!("run by Einhorn without sockets ({FD_COUNT}=0)"));
            }
            Err(not_ours @ EnvError::NotOurMaster { .. }) => skipped.push(not_ours.to_string()),
            Err(e) => return Err(e),
        }
    }

    match env.activation() {
        Ok(Some(activation)) if activation.count() > 0 => {
            return Ok((
                Bind::Systemd(0),
                format!(
                    "socket-activated by systemd ({LISTEN_FDS}={})",
                    activation.count()
                ),
            ));
        }
        Ok(Some(_)) => skipped.push(format!("socket-activated without sockets ({LISTEN_FDS}=0)")),
        Ok(None) => {}
        Err(not_ours @ EnvError::NotOurActivation { .. }) => skipped.push(not_ours.to_string()),
        Err(e) => return Err(e),
    }

    if let Some(ports) = env.starter_ports()?
        && let Some(first) = ports.first()
    {
        return Ok((
            Bind::Starter(0),
            format!(
                "run by Server::Starter ({SERVER_STARTER_PORT} {}={})",
                first.key, first.fd
            ),
        ));
    }

    if let Some(port) = env.port()? {
        return Ok((Bind::Port(port), format!("{PORT}={port}")));
    }

    Ok((
        Bind::Addr(DEFAULT_ADDR),
        "no socket manager and no PORT: the default address".to_owned(),
    ))
}

impl Bind {
    /// Replaces `auto` with the spec this process's environment calls for (see
    /// [`Bind::Auto`]); any other spec is returned as it is.
    ///
    /// # Errors
    /// [`BindError::Auto`] when a manager's variables are there but wrong (a garbage
    /// `EINHORN_FD_COUNT`, `LISTEN_FDS=abc`, `PORT=99999`, ...): guessing past them would
    /// serve on the wrong socket.
    pub fn resolve_auto(self) -> Result<Bind, BindError> {
        resolve(self, &Environment::from_process()).map(|resolved| resolved.bind)
    }
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    const PID: i32 = 300;
    const PARENT: i32 = 200;

    fn auto(vars: &[(&str, &str)]) -> Result<(Bind, String), String> {
        choose(&Environment::from_vars(vars.iter().copied(), PID, PARENT))
            .map_err(|e| e.to_string())
    }

    fn chosen(vars: &[(&str, &str)]) -> Bind {
        auto(vars).unwrap().0
    }

    const EINHORN: [(&str, &str); 3] = [
        ("EINHORN_MASTER_PID", "200"),
        ("EINHORN_FD_COUNT", "1"),
        ("EINHORN_FD_0", "3"),
    ];
    const SYSTEMD: [(&str, &str); 2] = [("LISTEN_PID", "300"), ("LISTEN_FDS", "2")];
    const STARTER: [(&str, &str); 1] = [("SERVER_STARTER_PORT", "127.0.0.1:8080=5")];

    #[test]
    fn the_order_is_override_einhorn_systemd_starter_port_default() {
        let everything: Vec<(&str, &str)> = [("GRACEFUL_LISTENER_BIND", "unix:/run/x.sock")]
            .into_iter()
            .chain(EINHORN)
            .chain(SYSTEMD)
            .chain(STARTER)
            .chain([("PORT", "9000")])
            .collect();
        assert_eq!(chosen(&everything), Bind::unix("/run/x.sock"));
        assert_eq!(chosen(&everything[1..]), Bind::Einhorn(0));
        assert_eq!(chosen(&everything[4..]), Bind::Systemd(0));
        assert_eq!(chosen(&everything[6..]), Bind::Starter(0));
        assert_eq!(chosen(&everything[7..]), Bind::Port(9000));
        assert_eq!(chosen(&[]), Bind::Addr(DEFAULT_ADDR));
    }

    #[test]
    fn the_reason_says_which_and_why() {
        assert_eq!(
            auto(&EINHORN).unwrap().1,
            "run by Einhorn (EINHORN_MASTER_PID=200 is our parent, EINHORN_FD_COUNT=1)"
        );
        assert_eq!(
            auto(&SYSTEMD).unwrap().1,
            "socket-activated by systemd (LISTEN_FDS=2)"
        );
        assert_eq!(
            auto(&STARTER).unwrap().1,
            "run by Server::Starter (SERVER_STARTER_PORT 127.0.0.1:8080=5)"
        );
        assert_eq!(auto(&[("PORT", "80")]).unwrap().1, "PORT=80");
    }

    #[test]
    fn variables_meant_for_another_process_are_skipped_and_said() {
        let (bind, why) = auto(&[
            ("EINHORN_MASTER_PID", "1"),
            ("EINHORN_FD_COUNT", "1"),
            ("LISTEN_PID", "299"),
            ("LISTEN_FDS", "1"),
            ("PORT", "8081"),
        ])
        .unwrap();
        assert_eq!(bind, Bind::Port(8081));
        assert_eq!(
            why,
            "PORT=8081 (skipped: EINHORN_MASTER_PID=1 is not this process's parent (pid 200): \
             only a direct child of the Einhorn master is a worker; LISTEN_PID=299 is not this \
             process (pid 300): the sockets were passed to another process)"
        );
    }

    #[test]
    fn a_manager_present_but_wrong_is_an_error() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[
                    ("EINHORN_MASTER_PID", "200"),
                    ("EINHORN_FD_COUNT", "one"),
                    ("EINHORN_FD_0", "3"),
                ],
                "EINHORN_FD_COUNT=\"one\" is not a listener count",
            ),
            (
                &[("EINHORN_MASTER_PID", "x")],
                "EINHORN_MASTER_PID=\"x\" is not a process id",
            ),
            (
                &[("LISTEN_PID", "300"), ("LISTEN_FDS", "abc")],
                "LISTEN_FDS=\"abc\" is not a socket count",
            ),
            (
                &[
                    ("LISTEN_PID", "300"),
                    ("LISTEN_FDS", "2"),
                    ("LISTEN_FDNAMES", "web"),
                ],
                "LISTEN_FDNAMES=\"web\" names 1 sockets but LISTEN_FDS=2",
            ),
            (
                &[("SERVER_STARTER_PORT", "8080")],
                "SERVER_STARTER_PORT=\"8080\" is not `host:port=fd` or `path=fd` entries separated by `;`",
            ),
            (
                &[("PORT", "99999")],
                "PORT=\"99999\" is not a port number (0 to 65535)",
            ),
            (
                &[("GRACEFUL_LISTENER_BIND", "auto")],
                "GRACEFUL_LISTENER_BIND=\"auto\" is not a bind spec other than auto",
            ),
            (
                &[("GRACEFUL_LISTENER_BIND", "einhorn@x")],
                "GRACEFUL_LISTENER_BIND=\"einhorn@x\" is not a bind spec: \"x\" is not a listener index",
            ),
            (
                &[("GRACEFUL_LISTENER_BIND", "einhorn:0")],
                "GRACEFUL_LISTENER_BIND=\"einhorn:0\" is not a bind spec: did you mean einhorn@0?",
            ),
            (
                &[("GRACEFUL_LISTENER_BIND", "127.0.0.1:99999")],
                "GRACEFUL_LISTENER_BIND=\"127.0.0.1:99999\" is not a bind spec: port 99999 is above 65535",
            ),
        ];
        for (vars, message) in cases {
            assert_eq!(auto(vars), Err(message.to_string()), "{vars:?}");
        }
    }

    #[test]
    fn a_manager_without_sockets_falls_through() {
        assert_eq!(
            auto(&[("EINHORN_MASTER_PID", "200"), ("EINHORN_FD_COUNT", "0")]).unwrap(),
            (
                Bind::Addr(DEFAULT_ADDR),
                "no socket manager and no PORT: the default address (skipped: run by Einhorn \
                 without sockets (EINHORN_FD_COUNT=0))"
                    .to_owned()
            )
        );
    }

    #[test]
    fn explicit_specs_are_kept() {
        let env = Environment::from_vars(EINHORN, PID, PARENT);
        let kept = resolve(Bind::Port(1), &env).unwrap();
        assert_eq!(
            kept,
            Resolved {
                bind: Bind::Port(1),
                why: None
            }
        );
    }
}
