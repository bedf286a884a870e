//! An axum app that is its own master: one binary, a stable pid, zero-downtime upgrades on
//! SIGHUP, systemd `Type=notify-reload` when run by systemd.
//!
//! Start it:   `cargo run --example self-hosted -- --bind 127.0.0.1:8000 --workers 2`
//! Try it:     `curl localhost:8000/` (the answer names the worker's pid and the version)
//! Upgrade:    rebuild or replace the binary, then `kill -HUP <master pid>`: new workers start,
//!             each one that is ready retires an old one; no request fails, the master's pid
//!             stays. A new build that cannot start leaves the old workers serving.
//! Stop:       `kill -TERM <master pid>` (or Ctrl-C): every worker drains, then exit 0.
//! Inspect:    `einhorn-master ctl -c self-hosted state`
//!
//! The app lives in `self_hosted_app/`, shared with `self-hosted-v2` (the same app answering
//! as version 2, which the tests put in place of this binary to upgrade to new code).

// Its own command line (the master's binds): only common's logging and exit status are used.
#[allow(dead_code)]
mod common;
mod self_hosted_app;

fn main() -> std::process::ExitCode {
    self_hosted_app::main("1")
}
