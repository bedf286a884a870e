//! The `self-hosted` example built as version 2: the "new build" the tests copy over the
//! running binary's file before a SIGHUP, to check that an upgrade runs the new code.

// Its own command line (the master's binds): only common's logging and exit status are used.
#[allow(dead_code)]
mod common;
mod self_hosted_app;

fn main() -> std::process::ExitCode {
    self_hosted_app::main("2")
}
