//! Long-lived connections across an upgrade under the real `einhorn-master`
//! (`examples/axum-streams.rs`, one worker, real clients in their own threads):
//! - a WebSocket that watches the worker's stop gets a Close frame 1001 from the old worker,
//!   and its client, reconnecting, is served by the new one;
//! - an SSE stream that watches it ends with a `bye` event from the old worker, and its
//!   client, reconnecting, gets events from the new one (also when it reconnects on the same
//!   keep-alive connection: the old worker says `bye` at once, with `Connection: close`);
//! - in both cases the old worker exits 0 in a moment, nothing forced;
//! - streams deaf to the stop hold the old worker until its drain timeout, then are cut,
//!   and the worker exits 0 saying how many it forced.
//!
//! A client that reconnects in the very moment of the stop can still reach the old worker
//! (see [`streams_support::reopen`]): it is told goodbye at once and tries again, as a real
//! client does; the tests count these bounces and check every client ends on the new worker.
//!
//! Each test prints its figures (`cargo test --test http_streams -- --nocapture`).

mod http_support;
mod streams_support;

use std::time::{Duration, Instant};

use graceful_listener_suite::load::parse_pid;
use http_support::{HttpMaster, Stopped};
use streams_support::{
    End, Session, SessionReport, SseClient, StreamClient, WsClient, connect, reopen,
};

const EXAMPLE: &str = "axum-streams";

/// A drain that ends this long after the stop did not end by itself in any useful sense:
/// cooperative streams end in milliseconds; this leaves room for a loaded machine.
const QUICK: Duration = Duration::from_secs(5);

/// What happened across one upgrade.
struct Upgraded {
    master: HttpMaster,
    old: u32,
    new: u32,
    sessions: Vec<SessionReport>,
    /// When the upgrade command was sent.
    upgrade_at: Instant,
    /// From the command to `Upgrade done` (the new worker started and ACKed, the old one
    /// told to stop).
    upgraded_in: Duration,
    /// From the command to the master reaping the old worker.
    exited_in: Duration,
    /// The old worker's report.
    stopped: Stopped,
}

impl Upgraded {
    fn ended_in(&self, session: &SessionReport) -> Duration {
        session.ended_at - self.upgrade_at
    }

    fn print(&self, test: &str) {
        eprintln!(
            "{test}: upgrade done in {} ms (new worker {}); old worker {} drained in {} ms (its report: \
             drained={} forced={}), reaped {} ms after the upgrade command",
            self.upgraded_in.as_millis(),
            self.new,
            self.old,
            self.stopped.drain_ms,
            self.stopped.drained,
            self.stopped.forced,
            self.exited_in.as_millis(),
        );
        for session in &self.sessions {
            eprintln!(
                "  {}: ended {} ms after the upgrade command: {:?}; reopened on {} \
                 (bounces off the old worker: {})",
                session.path,
                self.ended_in(session).as_millis(),
                session.end,
                session.reconnected_pid,
                session.bounces,
            );
        }
    }

    /// How many reconnections the old worker took in the moment of its stop.
    fn bounces(&self) -> u64 {
        self.sessions.iter().map(|s| s.bounces as u64).sum()
    }

    /// The old worker served every stream (and every bounce), forced `forced` of them, and
    /// drained the rest: every connection open at the stop or accepted in a race with it.
    fn assert_report(&self, drained: u64, forced: u64) {
        let output = self.master.master.output();
        let Stopped {
            served,
            drained: was_drained,
            forced: was_forced,
            ..
        } = self.stopped;
        assert_eq!(
            served,
            self.sessions.len() as u64 + self.bounces(),
            "{output}"
        );
        assert_eq!(was_forced, forced, "{output}");
        assert_eq!(
            was_drained,
            drained + self.bounces(),
            "drained={was_drained}, expected {drained} + {} bounces\n{output}",
            self.bounces()
        );
    }
}

/// Runs one worker with `--drain-timeout SECS`, opens a stream at each of `paths` (`/ws...`:
/// a WebSocket, else SSE), upgrades, and waits for the old worker to exit 0 and every
/// client to see its stream end and open it again on the new worker.
fn across_an_upgrade(drain_timeout: u64, paths: &[&str]) -> Upgraded {
    let master = HttpMaster::start(EXAMPLE, 1, &["--drain-timeout", &drain_timeout.to_string()]);
    let old = master.wait_serving(1)[0];
    let sessions: Vec<Session> = paths
        .iter()
        .map(|path| {
            if path.starts_with("/ws") {
                Session::start::<WsClient>(master.addr, path)
            } else {
                Session::start::<SseClient>(master.addr, path)
            }
        })
        .collect();
    for session in &sessions {
        assert_eq!(session.opened(), old, "served by the only worker");
    }

    let upgrade_at = Instant::now();
    master.upgrade();
    let upgraded_in = upgrade_at.elapsed();
    let serving = master.master.state().serving_pids();
    let [new] = serving[..] else {
        panic!("one new worker after the upgrade, not {serving:?}")
    };
    let new = new as u32;
    assert_ne!(new, old);
    let exit = master.wait_exited(old);
    let exited_in = upgrade_at.elapsed();
    assert!(
        exit.contains("(exit status 0)"),
        "{exit}\n{}",
        master.master.output()
    );
    let stopped = master.wait_stopped(old);
    let sessions: Vec<SessionReport> = sessions.iter().map(Session::done).collect();
    for session in &sessions {
        assert_eq!(session.pid, old);
        assert_eq!(
            session.reconnected_pid, new,
            "{}: reopened on the new worker",
            session.path
        );
    }
    Upgraded {
        master,
        old,
        new,
        sessions,
        upgrade_at,
        upgraded_in,
        exited_in,
        stopped,
    }
}

fn goodbye(code: Option<u16>, pid: u32) -> End {
    End::Goodbye {
        code,
        text: format!("pid={pid} is stopping: reconnect"),
    }
}

/// Nothing forced, every stream drained, the drain far shorter than its timeout (30 s).
fn assert_drained_quickly(up: &Upgraded) {
    up.assert_report(up.sessions.len() as u64, 0);
    assert!(
        Duration::from_millis(up.stopped.drain_ms) < QUICK,
        "the drain took {} ms",
        up.stopped.drain_ms
    );
}

#[test]
fn a_websocket_gets_1001_from_the_old_worker_and_reopens_on_the_new_one() {
    let up = across_an_upgrade(30, &["/ws"]);
    up.print("websocket");
    assert_eq!(up.sessions[0].end, goodbye(Some(1001), up.old));
    assert_drained_quickly(&up);
}

#[test]
fn an_sse_stream_says_bye_from_the_old_worker_and_reopens_on_the_new_one() {
    let up = across_an_upgrade(30, &["/sse"]);
    up.print("sse");
    assert_eq!(up.sessions[0].end, goodbye(None, up.old));
    assert_drained_quickly(&up);
}

/// A client that sends its next request on the same keep-alive connection (as a pooling
/// HTTP client does) reaches the old worker, in its idle grace: the handler sees a worker
/// already stopping and says `bye` at once, and the response carries `Connection: close`,
/// so the client's next try opens a new connection, which the new worker accepts.
#[test]
fn an_sse_client_reusing_its_connection_is_told_bye_at_once_and_to_close() {
    let master = HttpMaster::start(EXAMPLE, 1, &["--drain-timeout", "30"]);
    let old = master.wait_serving(1)[0];
    let addr = master.addr;
    let (opened_tx, opened) = std::sync::mpsc::channel();
    let client = std::thread::spawn(move || -> std::io::Result<_> {
        let (mut client, _head, first) = SseClient::request(connect(addr)?, "/sse")?;
        let _ = opened_tx.send(first.data);
        let end = client.until_end();
        let (mut again, head, first_again) = client.reuse("/sse")?;
        let end_again = again.until_end();
        let closed = again.server_closes();
        let old = parse_pid(first_again.data.as_bytes()).unwrap_or_default();
        let (_fresh, fresh_pid, bounces) = reopen::<SseClient>(addr, "/sse", old)?;
        Ok((
            end,
            head,
            first_again,
            end_again,
            closed,
            fresh_pid,
            bounces,
        ))
    });
    let first = opened
        .recv_timeout(streams_support::WAIT)
        .expect("the stream opens");
    assert!(first.starts_with(&format!("pid={old} ")), "{first}");

    let upgrade_at = Instant::now();
    master.upgrade();
    let exit = master.wait_exited(old);
    let exited_in = upgrade_at.elapsed();
    assert!(exit.contains("(exit status 0)"), "{exit}");
    let stopped = master.wait_stopped(old);
    let (end, head, first_again, end_again, closed, fresh_pid, bounces) = client
        .join()
        .expect("the client thread")
        .expect("the client's requests");
    eprintln!(
        "sse, connection reused: old worker {old} drained in {} ms ({stopped:?}), reaped {} ms \
         after the upgrade command; the second request got {head:?} then {first_again:?}; \
         a new connection reached {fresh_pid} (bounces off the old worker: {bounces})",
        stopped.drain_ms,
        exited_in.as_millis()
    );

    assert_eq!(end, goodbye(None, old), "the first stream says bye");
    assert!(
        head.iter().any(|l| l == "connection: close"),
        "the second response tells the client to close: {head:?}"
    );
    assert_eq!(first_again.event, "bye", "at once: {first_again:?}");
    assert_eq!(
        first_again.data,
        format!("pid={old} is stopping: reconnect")
    );
    assert_eq!(end_again, End::Silent, "and ends");
    assert!(closed, "the old worker closes the connection after it");
    assert_ne!(fresh_pid, old, "a new connection reaches the new worker");
    assert_eq!(stopped.forced, 0, "{}", master.master.output());
    assert_eq!(
        stopped.served,
        1 + bounces as u64,
        "{}",
        master.master.output()
    );
    assert!(
        Duration::from_millis(stopped.drain_ms) < QUICK,
        "{stopped:?}"
    );
}

#[test]
fn stubborn_streams_hold_the_old_worker_until_the_drain_timeout_then_are_cut() {
    const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
    let paths = [
        "/ws",
        "/sse",
        "/ws-stubborn",
        "/sse-stubborn",
        "/sse-stubborn",
    ];
    let up = across_an_upgrade(DRAIN_TIMEOUT.as_secs(), &paths);
    up.print("stubborn");
    let (stubborn, cooperative): (Vec<_>, Vec<_>) = up
        .sessions
        .iter()
        .partition(|s| s.path.ends_with("-stubborn"));

    for session in &cooperative {
        let code = session.path.starts_with("/ws").then_some(1001);
        assert_eq!(session.end, goodbye(code, up.old), "{}", session.path);
    }
    let first_cut = stubborn.iter().map(|s| s.ended_at).min().expect("some");
    for session in &stubborn {
        assert!(
            matches!(session.end, End::Cut(_)),
            "{}: {:?}",
            session.path,
            session.end
        );
        // The stop came after the upgrade command, and the cut a drain timeout after it.
        assert!(
            up.ended_in(session) >= DRAIN_TIMEOUT,
            "{}: cut {:?} after the upgrade command",
            session.path,
            up.ended_in(session)
        );
    }
    for session in &cooperative {
        assert!(
            session.ended_at < first_cut,
            "{} ended before the stubborn ones were cut",
            session.path
        );
    }

    let output = up.master.master.output();
    let forced = stubborn.len() as u64;
    up.assert_report(cooperative.len() as u64, forced);
    let drain = Duration::from_millis(up.stopped.drain_ms);
    assert!(
        drain >= DRAIN_TIMEOUT && drain < DRAIN_TIMEOUT + QUICK,
        "the drain took {drain:?}"
    );
    let tag = format!("{{pid={}}}", up.old);
    assert!(
        output.lines().any(|l| l.contains(&tag)
            && l.contains(&format!("forced connections closed forced={forced}"))),
        "the old worker says what it forced:\n{output}"
    );
}
