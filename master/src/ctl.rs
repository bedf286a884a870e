//! `einhorn-master ctl`: send one command to a running master and print its replies.

use std::io::Write;
use std::time::Instant;

use crate::cli::CtlArgs;
use crate::client::{Client, ClientError};
use crate::wire::decode_reply;

/// Exit status: the command succeeded.
pub const EXIT_OK: i32 = 0;
/// Exit status: the master answered with an error (or an upgrade did not end in
/// `Upgrade done`).
pub const EXIT_FAILED: i32 = 1;
/// Exit status: the master could not be reached, or did not answer in time.
pub const EXIT_UNREACHABLE: i32 = 2;

/// Runs the client; returns the exit status. Replies go to stdout (messages, or raw lines with
/// `--raw`), problems to stderr.
pub fn run(args: &CtlArgs) -> i32 {
    match talk(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("einhorn-master ctl: {e}");
            EXIT_UNREACHABLE
        }
    }
}

fn talk(args: &CtlArgs) -> Result<i32, ClientError> {
    let deadline = Instant::now() + args.timeout;
    let mut client = Client::connect(args.socket_path())?;
    let argv: Vec<&str> = args.args.iter().map(String::as_str).collect();
    client.send(&args.command, &argv)?;
    let mut stdout = std::io::stdout().lock();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = || ClientError::Timeout {
            command: args.command.clone(),
            after: args.timeout,
        };
        if left.is_zero() {
            return Err(timeout());
        }
        let line = match client.read_raw_line(left) {
            Ok(Some(line)) => line,
            Ok(None) => {
                return Err(ClientError::Closed {
                    command: args.command.clone(),
                });
            }
            Err(ClientError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timeout());
            }
            Err(e) => return Err(e),
        };
        let reply = decode_reply(&line)?;
        if args.raw {
            stdout.write_all(&line)?;
        } else {
            stdout.write_all(reply.message.as_bytes())?;
            if !reply.message.ends_with('\n') {
                stdout.write_all(b"\n")?;
            }
        }
        stdout.flush()?;
        if !reply.wait {
            let upgrade = matches!(args.command.as_str(), "upgrade" | "upgrade_fleet");
            let failed = reply.error || (upgrade && reply.message != "Upgrade done");
            return Ok(if failed { EXIT_FAILED } else { EXIT_OK });
        }
    }
}
