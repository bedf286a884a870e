//! TLS sessions resume across upgrades and across workers: every worker of an einhorn-master
//! seals its session tickets with the key ring the master hands to every generation
//! (`EINHORN_KEYS_FD`), so a client's ticket from before an upgrade opens on the new workers,
//! and a ticket from one worker opens on its sibling.
//!
//! Each `upgrade` also re-execs the master itself (its own code first, then the workers):
//! the ring crosses that exec in the hand-over, which the tests check in the master's log.
//!
//! Clients: rustls, with a session store of its own per session
//! (`rustls::client::Resumption`), looking at `handshake_kind()`; and `openssl s_client`
//! with `-sess_out` before the upgrade and `-sess_in` after it (it prints `Reused, TLSv1.3`).

mod http_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use graceful_listener_suite::fake_einhorn::FakeEinhorn;
use graceful_listener_suite::harness::{Proc, example};
use graceful_listener_suite::tls::TestCertificate;
use http_support::{HttpMaster, WAIT};
use rustls::HandshakeKind;

for_each_framework!(a_session_from_before_an_upgrade_resumes_after_it);

/// How many sessions each test measures.
const SESSIONS: usize = 20;

/// A client with a session store of its own: its sessions are one client's.
fn client(cert: &TestCertificate) -> Arc<rustls::ClientConfig> {
    let mut config = Arc::unwrap_or_clone(cert.client_config(&[b"http/1.1"]));
    config.resumption = rustls::client::Resumption::in_memory_sessions(8);
    Arc::new(config)
}

/// A fresh TLS connection, `GET /` with `Connection: close`, read to the end (so the tickets
/// sent after the handshake are in the store); how the handshake went, and which worker
/// answered.
fn handshake(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> (HandshakeKind, u32) {
    let tcp = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    tcp.set_write_timeout(Some(WAIT)).unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let conn = rustls::ClientConnection::new(config.clone(), name).expect("a TLS client");
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .expect("a handshake and a request");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("an answer");
    let kind = stream.conn.handshake_kind().expect("the handshake is done");
    let pid = graceful_listener_suite::load::parse_pid(&answer)
        .unwrap_or_else(|| panic!("no pid in {:?}", String::from_utf8_lossy(&answer)));
    (kind, pid)
}

/// `openssl s_client` to `addr`, `GET /` on stdin; with `-sess_out` or `-sess_in` `session`.
/// Its output (which says `New, TLSv1.3` or `Reused, TLSv1.3`).
fn s_client(addr: SocketAddr, session: &Path, save: bool) -> String {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-tls1_3",
            "-ign_eof",
        ])
        .arg(if save { "-sess_out" } else { "-sess_in" })
        .arg(session)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .unwrap();
    // The server closes after its answer (`Connection: close`): s_client then exits. Its
    // output is read to the end on a thread, so that a hang is a failure, not a stuck test.
    let (done, output) = std::sync::mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match output.recv_timeout(WAIT) {
        Ok(out) => {
            let out = out.expect("s_client's output");
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        }
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("openssl s_client did not end within {WAIT:?}");
        }
    }
}

/// Upgrades `master`'s `n` workers, and waits until every old one has exited; returns the
/// new ones.
fn upgrade(master: &HttpMaster, old: &[u32], n: usize) -> Vec<u32> {
    master.upgrade();
    let new = master.wait_serving(n);
    for pid in old {
        master.wait_exited(*pid);
        assert!(!new.contains(pid));
    }
    new
}

fn a_session_from_before_an_upgrade_resumes_after_it(example: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCertificate::new(dir.path());
    let args = cert.worker_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let master = HttpMaster::start(example, 1, &args);
    let old = master.wait_serving(1);

    // SESSIONS clients, each with a full handshake, then a second one before the upgrade.
    let clients: Vec<_> = (0..SESSIONS).map(|_| client(&cert)).collect();
    for config in &clients {
        let (kind, pid) = handshake(master.addr, config);
        assert_eq!(kind, HandshakeKind::Full);
        assert_eq!(pid, old[0]);
    }
    let before = clients
        .iter()
        .filter(|config| handshake(master.addr, config).0 == HandshakeKind::Resumed)
        .count();
    let session = dir.path().join("session.pem");
    let first = s_client(master.addr, &session, true);
    assert!(first.contains("New, TLSv1.3"), "{first}");

    let new = upgrade(&master, &old, 1);
    master.master.wait_for_line("key ring taken over");

    let mut after = 0;
    for config in &clients {
        let (kind, pid) = handshake(master.addr, config);
        assert_eq!(pid, new[0], "answered by the new worker");
        after += usize::from(kind == HandshakeKind::Resumed);
    }
    let again = s_client(master.addr, &session, false);
    eprintln!(
        "{example}: TLS sessions resumed before the upgrade {before}/{SESSIONS}, after it {after}/{SESSIONS}; openssl s_client after: {}",
        if again.contains("Reused, TLSv1.3") {
            "Reused"
        } else {
            "New"
        }
    );
    assert_eq!(before, SESSIONS, "{}", master.master.output());
    assert_eq!(
        after,
        SESSIONS,
        "sessions from before the upgrade resume after it\n{}",
        master.master.output()
    );
    assert!(again.contains("Reused, TLSv1.3"), "{again}");
}

#[test]
fn a_session_resumes_on_whichever_worker_answers() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCertificate::new(dir.path());
    let args = cert.worker_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let master = HttpMaster::start("axum-hello", 2, &args);
    let workers = master.wait_serving(2);
    // Sessions issued by one worker and resumed by the other: the kernel deals connections,
    // so this takes as many tries as it takes (bounded).
    let (mut resumed, mut full, mut across) = (0, 0, 0);
    for _ in 0..200 {
        let config = client(&cert);
        let (_, issuer) = handshake(master.addr, &config);
        let (kind, pid) = handshake(master.addr, &config);
        assert!(workers.contains(&issuer) && workers.contains(&pid));
        match kind {
            HandshakeKind::Resumed => resumed += 1,
            _ => full += 1,
        }
        across += usize::from(pid != issuer && kind == HandshakeKind::Resumed);
        if across >= 5 && resumed + full >= SESSIONS {
            break;
        }
    }
    eprintln!(
        "two workers: {resumed} resumed, {full} full handshakes; {across} resumed on the other worker"
    );
    assert_eq!(full, 0, "every session resumes, whichever worker answers");
    assert!(
        across >= 5,
        "the kernel never dealt a session to the other worker"
    );

    // And after an upgrade of both (the master re-execs first), on either new worker.
    let clients: Vec<_> = (0..SESSIONS).map(|_| client(&cert)).collect();
    for config in &clients {
        handshake(master.addr, config);
    }
    let new = upgrade(&master, &workers, 2);
    let after = clients
        .iter()
        .filter(|config| {
            let (kind, pid) = handshake(master.addr, config);
            assert!(new.contains(&pid));
            kind == HandshakeKind::Resumed
        })
        .count();
    eprintln!("two workers, after an upgrade: {after}/{SESSIONS} resumed");
    assert_eq!(after, SESSIONS, "{}", master.master.output());
}

#[test]
fn sessions_resume_after_the_master_alone_reloads_and_then_the_workers_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCertificate::new(dir.path());
    let args = cert.worker_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let master = HttpMaster::start("hyper-hello", 1, &args);
    let old = master.wait_serving(1);
    let clients: Vec<_> = (0..SESSIONS).map(|_| client(&cert)).collect();
    for config in &clients {
        handshake(master.addr, config);
    }
    // `reload`: the master's code only; its workers stay.
    let replies = master
        .master
        .client()
        .call_with("reload", &[], WAIT, |_| {})
        .unwrap_or_else(|e| panic!("reload: {e}\n{}", master.master.output()));
    eprintln!("reload: {:?}", replies.last().map(|r| &r.message));
    master.master.wait_for_line("key ring taken over");
    let new = upgrade(&master, &old, 1);
    let after = clients
        .iter()
        .filter(|config| handshake(master.addr, config) == (HandshakeKind::Resumed, new[0]))
        .count();
    eprintln!("after a reload of the master, then an upgrade: {after}/{SESSIONS} resumed");
    assert_eq!(after, SESSIONS, "{}", master.master.output());
}

/// Starts `example_name` serving TLS with `cert` under a fake Einhorn (no key ring of a
/// master), with `env`; returns once it has ACKed.
fn start_alone(
    example_name: &str,
    cert: &TestCertificate,
    env: &[(&str, &Path)],
) -> (Proc, SocketAddr, FakeEinhorn) {
    let mut einhorn = FakeEinhorn::new().expect("fake einhorn");
    let addr = einhorn.add_tcp_listener().expect("listener");
    let mut cmd = einhorn.command(example(example_name));
    cmd.args(cert.worker_args());
    for (key, value) in env {
        cmd.env(key, value);
    }
    let proc = Proc::spawn(cmd).expect("spawn the example");
    einhorn
        .recv_command(WAIT)
        .unwrap_or_else(|e| panic!("no ACK ({e}):\n{}", proc.output()));
    (proc, addr, einhorn)
}

/// A key file of 32 random bytes, mode `mode`.
fn key_file(dir: &Path, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("ticket-{mode:o}.key"));
    let mut secret = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret))
        .expect("random bytes");
    std::fs::write(&path, secret).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// Without our master (Stripe's Einhorn, systemd, two hosts): workers that share a key file
/// resume each other's sessions; a worker without it makes its own keys.
#[test]
fn workers_sharing_a_key_file_resume_each_others_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCertificate::new(dir.path());
    let key = key_file(dir.path(), 0o600);
    let env = [("GRACEFUL_LISTENER_KEY_FILE", key.as_path())];
    let (a, a_addr, _ea) = start_alone("hyper-hello", &cert, &env);
    let (b, b_addr, _eb) = start_alone("actix-hello", &cert, &env);
    let (own, own_addr, _eo) = start_alone("hyper-hello", &cert, &[]);
    assert!(
        a.output().contains("derived from the key file"),
        "{}",
        a.output()
    );
    let (mut resumed, mut on_own) = (0, 0);
    for _ in 0..SESSIONS {
        let config = client(&cert);
        assert_eq!(handshake(a_addr, &config).0, HandshakeKind::Full);
        let (kind, pid) = handshake(b_addr, &config);
        assert_eq!(pid, b.pid() as u32);
        resumed += usize::from(kind == HandshakeKind::Resumed);
        on_own += usize::from(handshake(own_addr, &config).0 == HandshakeKind::Resumed);
    }
    eprintln!(
        "key file: {resumed}/{SESSIONS} sessions of one worker resumed on another; {on_own}/{SESSIONS} on a worker without it"
    );
    assert_eq!(resumed, SESSIONS, "{}\n{}", a.output(), b.output());
    assert_eq!(on_own, 0, "{}", own.output());
}

/// Runs `example_name` serving TLS with `env`; its exit code and output once it exits.
fn exits(
    example_name: &str,
    cert: &TestCertificate,
    env: &[(&str, &str)],
) -> (Option<i32>, String) {
    let mut cmd = Command::new(example(example_name));
    cmd.args(cert.worker_args()).args(["--bind", "127.0.0.1:0"]);
    cmd.envs(env.iter().copied());
    let mut proc = Proc::spawn(cmd).expect("spawn the example");
    let status = proc
        .wait_timeout(WAIT)
        .unwrap_or_else(|| panic!("{example_name} did not exit:\n{}", proc.output()));
    (status.code(), proc.output())
}

#[test]
fn an_unusable_ring_or_key_file_is_refused_at_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCertificate::new(dir.path());
    let open = key_file(dir.path(), 0o644);
    let path = open.to_str().unwrap();
    let (code, out) = exits("axum-hello", &cert, &[("GRACEFUL_LISTENER_KEY_FILE", path)]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains(&format!(
            "GRACEFUL_LISTENER_KEY_FILE={path}: readable by group or others (mode 644)"
        )),
        "{out}"
    );
    let (code, out) = exits("warp-hello", &cert, &[("EINHORN_KEYS_FD", "99")]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("WARN") && out.contains("EINHORN_KEYS_FD=99: not an open file descriptor"),
        "{out}"
    );
}
