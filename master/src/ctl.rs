//! `einhorn-master ctl`: send one command to a running master and print its replies.

use std::io::Write;
use std::time::Instant;

use crate::cli::CtlArgs;
use crate::client::{Client, ClientError};
use crate::pure::wire::decode_reply;

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
            if let Some(hint) = hint(args, &e) {
                eprintln!("einhorn-master ctl: {hint}");
            }
            EXIT_UNREACHABLE
        }
    }
}

/// How to name the master's socket, when `ctl` looked for it at the default path (no `-d`)
/// and found nothing there: the master runs with another `-d` or `-c`, or as another user.
fn hint(args: &CtlArgs, error: &ClientError) -> Option<String> {
    let ClientError::Connect { path, source } = error else {
        return None;
    };
    let missing = matches!(
        source.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
    );
    if args.socket_path.is_some() || !missing {
        return None;
    }
    let name = match &args.command_name {
        Some(name) => format!(" for -c {name}"),
        None => String::new(),
    };
    Some(format!(
        "no master listens at the default socket{name} ({}): name the master's socket with \
         -d PATH (the master's own -d) or -c NAME (its -c)",
        path.display()
    ))
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;

    fn args(socket_path: Option<&str>, command_name: Option<&str>) -> CtlArgs {
        CtlArgs {
            socket_path: socket_path.map(PathBuf::from),
            command_name: command_name.map(str::to_owned),
            timeout: Duration::from_secs(1),
            raw: false,
            command: "state".into(),
            args: Vec::new(),
        }
    }

    fn not_found(path: &str) -> ClientError {
        ClientError::Connect {
            path: path.into(),
            source: std::io::ErrorKind::NotFound.into(),
        }
    }

    #[test]
    fn a_missing_default_socket_says_how_to_name_one() {
        let error = not_found("/run/user/1000/einhorn.sock");
        assert_eq!(
            hint(&args(None, None), &error).as_deref(),
            Some(
                "no master listens at the default socket (/run/user/1000/einhorn.sock): name \
                 the master's socket with -d PATH (the master's own -d) or -c NAME (its -c)"
            )
        );
        let error = not_found("/run/user/1000/einhorn-web.sock");
        let hint = hint(&args(None, Some("web")), &error).unwrap();
        assert!(
            hint.starts_with(
                "no master listens at the default socket for -c web \
                 (/run/user/1000/einhorn-web.sock)"
            ),
            "{hint}"
        );
    }

    #[test]
    fn a_socket_named_with_d_or_another_error_gets_no_hint() {
        assert_eq!(
            hint(&args(Some("/x.sock"), None), &not_found("/x.sock")),
            None
        );
        let denied = ClientError::Connect {
            path: "/run/user/1000/einhorn.sock".into(),
            source: std::io::ErrorKind::PermissionDenied.into(),
        };
        assert_eq!(hint(&args(None, None), &denied), None);
    }
}
