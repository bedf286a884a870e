//! `einhorn-master`: see the library documentation, or run `einhorn-master --help`.
//!
//! Process-wide choices live here, not in the library: the global logger, and how errors end
//! the process.

use std::io::IsTerminal;
use std::process::ExitCode;

use einhorn_master::cli::{self, Invocation};
use einhorn_master::{ctl, driver};

fn main() -> ExitCode {
    let invocation = match cli::parse_args(std::env::args_os()) {
        Ok(invocation) => invocation,
        Err(e) => {
            // Usage errors go to stderr (status 2), --help and --version to stdout (status 0).
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    match invocation {
        Invocation::Ctl(args) => exit_code(ctl::run(&args)),
        Invocation::Master(args) => {
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false)
                .with_max_level(args.log_level())
                .init();
            match driver::run(&args) {
                Ok(code) => exit_code(code),
                Err(e) => {
                    // Once, and whatever the log level: this is why the master did not run.
                    eprintln!("einhorn-master: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
