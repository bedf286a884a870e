//! The command socket over a real Unix socket, byte for byte, with `sleep` workers.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use einhorn_master::client::Client;
use einhorn_master::pure::wire::{decode_reply, unescape};
use support::{Master, WAIT, path_str};

/// One raw connection: write bytes, read raw lines.
struct Raw {
    reader: BufReader<UnixStream>,
}

impl Raw {
    fn connect(master: &Master) -> Raw {
        drop(master.client()); // waits for the socket
        let stream = UnixStream::connect(&master.socket).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Raw {
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("write");
    }

    fn line(&mut self) -> Vec<u8> {
        let mut line = Vec::new();
        self.reader
            .read_until(b'\n', &mut line)
            .expect("read a reply");
        assert!(line.ends_with(b"\n"), "incomplete line {line:?}");
        line
    }

    fn eof(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(self.reader.read_to_end(&mut rest), Ok(0))
    }
}

fn sleepers(n: &str) -> Master {
    Master::start(&["-n", n, "-m", "0"], &["sleep", "1000"])
}

#[test]
fn replies_are_byte_exact_for_json_and_escaped_yaml_requests() {
    let master = sleepers("1");
    master.wait_serving(1);
    let mut raw = Raw::connect(&master);

    raw.send(b"{\"command\":\"inc\",\"id\":1}\n");
    assert_eq!(
        raw.line(),
        b"---%0Amessage: Incrementing number of workers from 1 -> 2%0Arequest_id: 1%0A\n"
    );

    // einhornsh sends YAML documents with newlines escaped.
    raw.send(b"---%0Acommand: dec%0Aid: 2%0Auser: gdb%0A\n");
    assert_eq!(
        raw.line(),
        b"---%0Amessage: Decrementing number of workers from 2 -> 1%0Arequest_id: 2%0A\n"
    );

    // Without an id, request_id is null.
    raw.send(b"{\"command\":\"set_workers\",\"args\":[\"1\"]}\n");
    assert_eq!(
        raw.line(),
        b"---%0Amessage: Worker count is already 1%0Arequest_id: null%0A\n"
    );

    // Two requests in one write are answered in order.
    raw.send(b"{\"command\":\"inc\",\"id\":3}\n{\"command\":\"dec\",\"id\":4}\n");
    let first = decode_reply(&raw.line()).unwrap();
    let second = decode_reply(&raw.line()).unwrap();
    assert_eq!(first.message, "Incrementing number of workers from 1 -> 2");
    assert_eq!(second.message, "Decrementing number of workers from 2 -> 1");
    assert_eq!(second.request_id.and_then(|id| id.as_i64()), Some(4));
}

#[test]
fn percent_and_newline_escapes_round_trip_over_the_socket() {
    let master = sleepers("1");
    let mut raw = Raw::connect(&master);
    // `%25` is a literal `%` inside the request; the master names the bad signal and echoes
    // the id in its reply, escaped the same way.
    raw.send(b"{\"command\":\"signal\",\"args\":[\"US%25R2\"],\"id\":\"50%25\"}\n");
    let line = raw.line();
    assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "{line:?}");
    let text = String::from_utf8(line.clone()).unwrap();
    assert!(text.contains("US%25R2"), "{text}");
    let reply = decode_reply(&line).unwrap();
    assert!(reply.error);
    assert_eq!(reply.message, "invalid signal \"US%R2\"");
    assert_eq!(reply.request_id.unwrap().to_string(), "50%");
    assert!(text.contains("request_id: 50%25%0A"), "{text}");
    // The unescaped YAML document is a mapping with exactly these keys, in this order.
    let yaml = unescape(text.trim_end());
    let keys: Vec<&str> = yaml
        .lines()
        .filter(|l| !l.starts_with(' ') && l.contains(':'))
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert_eq!(keys, ["message", "request_id", "error"], "{yaml}");
    assert!(yaml.starts_with("---\n"));
}

#[test]
fn bad_requests_get_an_error_line_and_the_master_is_unharmed() {
    let master = sleepers("2");
    let pids = master.wait_serving(2);
    let mut raw = Raw::connect(&master);
    let cases: &[(&[u8], &str)] = &[
        (b"this is not yaml: [\n", "Could not parse command"),
        (b"just words\n", "Could not parse command"),
        (b"- a\n", "Could not parse command"),
        (b"\n", "Could not parse command"),
        (b"\xff\xfe\n", "Could not parse command"),
        (b"{\"pid\":1}\n", "No \"command\" parameter provided"),
        (
            b"{\"command\":\"frobnicate\"}\n",
            "Unrecognized command: \"frobnicate\"",
        ),
        (
            b"{\"command\":\"set_workers\",\"args\":[\"many\"]}\n",
            "invalid count",
        ),
        (
            b"{\"command\":\"signal\"}\n",
            "command \"signal\" needs one or more signals",
        ),
        (
            b"{\"command\":\"worker:ack\",\"pid\":\"x\"}\n",
            "Could not parse command",
        ),
    ];
    for (request, expected) in cases {
        raw.send(request);
        let reply = decode_reply(&raw.line()).unwrap();
        assert!(reply.error, "{request:?}: {reply:?}");
        assert!(!reply.wait);
        assert!(
            reply.message.starts_with(expected),
            "{request:?}: {:?}",
            reply.message
        );
    }
    // The same connection still works, and so does the master.
    raw.send(b"{\"command\":\"ehlo\",\"user\":\"test\",\"id\":9}\n");
    let reply = decode_reply(&raw.line()).unwrap();
    assert!(
        reply
            .message
            .starts_with("Welcome, test! You are speaking to Einhorn Master Process")
    );
    assert_eq!(master.wait_serving(2), pids, "workers untouched");

    // A line too long is refused and that connection closed.
    let mut long = Raw::connect(&master);
    let mut huge = vec![b'a'; 70 * 1024];
    huge.push(b'\n');
    long.send(&huge);
    let reply = decode_reply(&long.line()).unwrap();
    assert!(
        reply.error && reply.message.contains("longer than"),
        "{reply:?}"
    );
    assert!(long.eof());
    assert_eq!(master.state().target_workers, 2);
}

#[test]
fn a_request_without_its_newline_is_dropped() {
    let master = sleepers("1");
    let mut raw = Raw::connect(&master);
    raw.send(b"{\"command\":\"inc\"}");
    raw.reader
        .get_ref()
        .shutdown(std::net::Shutdown::Write)
        .unwrap();
    assert!(raw.eof(), "no reply, connection closed");
    assert_eq!(master.state().target_workers, 1);
}

#[test]
fn worker_ack_gets_no_reply_and_the_connection_is_closed() {
    let master = sleepers("1");
    let pid = master.wait_serving(1)[0];
    let mut raw = Raw::connect(&master);
    raw.send(format!("{{\"command\":\"worker:ack\",\"pid\":{pid}}}\n").as_bytes());
    assert!(raw.eof());
    master.wait_for_line("ignoring it");
}

#[test]
fn socket_is_private_and_a_second_master_is_refused() {
    let master = sleepers("1");
    master.wait_serving(1);
    let mode = std::fs::metadata(&master.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let second = Command::new(env!("CARGO_BIN_EXE_einhorn-master"))
        .args(["-d", path_str(&master.socket), "--", "sleep", "1000"])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("another master is running"), "{stderr}");
    // The first master is untouched.
    assert_eq!(master.state().workers.len(), 1);
}

#[test]
fn ctl_prints_replies_and_exits_by_outcome() {
    let master = sleepers("1");
    master.wait_serving(1);
    let ctl = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_einhorn-master"))
            .arg("ctl")
            .args(["-d", path_str(&master.socket), "--timeout", "20"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = ctl(&["ehlo"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Welcome"));

    let out = ctl(&["upgrade"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.starts_with("Upgrading smoothly, as commanded\n"),
        "{stdout}"
    );
    assert!(stdout.ends_with("Upgrade done\n"), "{stdout}");

    let out = ctl(&["--raw", "set_workers", "1"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        out.stdout,
        b"---%0Amessage: Worker count is already 1%0Arequest_id: 1%0A\n"
    );

    let out = ctl(&["dec"]);
    assert_eq!(out.status.code(), Some(1), "refused: already at 1");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Can't decrease"));

    let out = ctl(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(1));

    let out = Command::new(env!("CARGO_BIN_EXE_einhorn-master"))
        .args(["ctl", "-d", "/nonexistent/einhorn.sock", "ehlo"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/einhorn.sock"));
}

#[test]
fn an_upgrade_asking_for_a_canary_larger_than_the_generation_warns() {
    let master = sleepers("1");
    master.wait_serving(1);
    let out = Command::new(env!("CARGO_BIN_EXE_einhorn-master"))
        .args(["ctl", "-d", path_str(&master.socket), "--timeout", "20"])
        .args(["upgrade", "--canary", "5", "--soak", "0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "Canary: --canary 5 is more than the 1 workers of the generation: the canary is all 1"
        ),
        "{stdout}"
    );
}

#[test]
fn ctl_without_a_socket_at_the_default_path_says_how_to_name_one() {
    // An empty runtime directory of this user's: no master's default socket in it.
    let runtime = tempfile::tempdir().unwrap();
    std::fs::set_permissions(runtime.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_einhorn-master"))
        .args(["ctl", "state"])
        .env("XDG_RUNTIME_DIR", runtime.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let socket = runtime.path().join("einhorn.sock");
    assert!(
        stderr.contains(&format!(
            "no master listens at the default socket ({}): name the master's socket with -d PATH \
             (the master's own -d) or -c NAME (its -c)",
            socket.display()
        )),
        "{stderr}"
    );
}

#[test]
fn state_reports_the_bound_addresses() {
    let master = Master::start(
        &[
            "-n",
            "1",
            "-m",
            "0",
            "-b",
            "127.0.0.1:0,r",
            "-b",
            "127.0.0.1:0",
        ],
        &["sleep", "1000"],
    );
    let first = master.addr(0);
    let second = master.addr(1);
    assert_ne!(first.port(), 0);
    assert_ne!(first, second);
    let line = master.wait_for_line(&format!("listening on {first} (einhorn@0"));
    assert!(line.contains("fd "), "{line}");
    let state = master.state();
    let addrs: Vec<String> = state.listeners.iter().map(|l| l.addr.clone()).collect();
    assert_eq!(addrs, [first.to_string(), second.to_string()]);
    // The master keeps them open and never accepts: the kernel queues connections.
    std::net::TcpStream::connect_timeout(&first, Duration::from_secs(5)).unwrap();
}

#[test]
fn a_client_can_stream_upgrade_progress() {
    let master = sleepers("2");
    let old = master.wait_serving(2);
    let mut client: Client = master.client();
    let mut seen = Vec::new();
    let replies = client
        .call_with("upgrade", &[], WAIT, |r| seen.push(r.message.clone()))
        .unwrap();
    assert_eq!(seen.len(), replies.len());
    assert!(replies[..replies.len() - 1].iter().all(|r| r.wait));
    assert_eq!(replies.last().unwrap().message, "Upgrade done");
    let state = master.wait_state("old workers reaped", |s| s.workers.len() == 2);
    assert_eq!(state.version, 1);
    assert!(state.all_pids().iter().all(|p| !old.contains(p)));
}
