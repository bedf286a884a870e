//! `einhorn-master`: see the library documentation, or run `einhorn-master --help`.
//!
//! Process-wide choices live here, not in the library: the global logger, and how errors end
//! the process.

use std::io::IsTerminal;
use std::process::ExitCode;

use einhorn_master::cli::{self, Invocation};
use einhorn_master::exec::check_program;
use einhorn_master::reexec::SelfExec;
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
        Invocation::Master(mut args) => {
            use tracing_subscriber::prelude::*;
            // A level that `quieter` and `louder` change while the master runs.
            let (filter, level) = tracing_subscriber::reload::Layer::new(args.log_level());
            tracing_subscriber::registry()
                .with(filter)
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(std::io::stderr)
                        .with_ansi(std::io::stderr().is_terminal())
                        .with_target(false),
                )
                .init();
            einhorn_master::log_level::set_control(Box::new(move |new| {
                let _ = level.modify(|filter| *filter = new);
            }));
            // How to reload this master's own code: this program, found again at the path it
            // was started as (so a new release installed there is what runs next).
            let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
            let program = argv
                .first()
                .and_then(|argv0| check_program(argv0).ok())
                .and_then(|found| std::path::absolute(found).ok());
            args.self_exec = program.map(|program| {
                SelfExec::einhorn_master(program, argv.clone(), args.reexec_as.as_deref())
            });
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
