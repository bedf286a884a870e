//! The supervisor's rules, pure: given what a connection's counters say now, what it looked
//! like before, the time and whether the worker is draining, what should happen to it.
//! No sockets and no clock: tests step time by hand.

use std::time::{Duration, Instant};

use crate::state::{Command, Observation};

/// The limits the rules enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// How long a request head may take, from its first byte; also how long a keep-alive
    /// connection may sit idle. `None`: no limit.
    pub(crate) header_read_timeout: Option<Duration>,
    /// While a request is in progress and the server waits for the client: at least this
    /// many bytes per window. `None`: no limit.
    pub(crate) min_rate: Option<(u64, Duration)>,
    /// Once draining, how long an idle connection may still send one request.
    pub(crate) idle_grace: Duration,
    /// How long a closing connection reads what its client still sends; with the grace, the
    /// time an HTTP/2 client has to answer the shutdown PING, or to read again.
    pub(crate) linger: Duration,
}

/// Once the grace is over, how long a request head that started arriving just before may
/// still take to complete: a client that sent its request in time is not cut for being
/// a little slow, a trickling one is.
pub(crate) const HEAD_ALLOWANCE: Duration = Duration::from_millis(250);

/// Where the worker is, as the rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Serving.
    Running,
    /// Stopping since `since`; not ready since `unready` when a lame duck came first.
    Draining {
        since: Instant,
        unready: Option<Instant>,
    },
}

/// What the supervisor remembers about one connection between looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record {
    /// The requests started and finished at the last look: a change restarts the clocks.
    requests: (u64, u64),
    /// Since when the connection has been in its current state (idle, or waiting for the
    /// current head): reset whenever a request starts or ends.
    since: Instant,
    /// When a request head was first seen arriving (bytes past the idle mark), since the
    /// last request started or ended.
    head_seen: Option<Instant>,
    /// The start of the current minimum-rate window and the bytes read at its start, while
    /// the server waits for a client in the middle of a request.
    window: Option<(Instant, u64)>,
    /// HTTP/2, draining: since when the server's writes have found the socket full, and the
    /// bytes written then (a client that does not read).
    write_stall: Option<(Instant, u64)>,
    /// The command already given, so it is given once.
    given: Command,
}

impl Record {
    /// A connection seen for the first time, `now`.
    pub(crate) fn new(observation: Observation, now: Instant) -> Record {
        Record {
            requests: (observation.started, observation.finished),
            since: now,
            head_seen: observation.head_arriving().then_some(now),
            window: None,
            write_stall: None,
            given: Command::Serve,
        }
    }
}

/// What to do with a connection, and when to look at it again at the latest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// The command to give (`Serve`: none).
    pub(crate) command: Command,
    /// When the rules next need a look, if ever.
    pub(crate) next_look: Option<Instant>,
}

/// Judges a connection. `unread` tells whether the client has sent bytes nobody has read
/// yet (asked only when it matters: it costs a system call).
pub(crate) fn judge(
    record: &mut Record,
    now_seen: Observation,
    now: Instant,
    phase: Phase,
    limits: &Limits,
    unread: &mut dyn FnMut() -> bool,
) -> Verdict {
    // A request started or ended since the last look: the clock of the current state
    // restarts (for an idle connection, from when it became idle; near enough).
    let requests = (now_seen.started, now_seen.finished);
    if requests != record.requests {
        record.since = now;
        record.head_seen = None;
        record.window = None;
    }
    if now_seen.head_arriving() {
        record.head_seen.get_or_insert(now);
    } else {
        record.head_seen = None;
    }
    record.requests = requests;

    let command = match phase {
        Phase::Running => running(record, now_seen, now, limits, unread),
        Phase::Draining { since, unready } => {
            draining(record, now_seen, now, (since, unready), limits, unread)
        }
    };
    let command = match command {
        Some(c) if c as u8 > record.given as u8 => {
            record.given = c;
            c
        }
        _ => Command::Serve,
    };
    Verdict {
        command,
        next_look: next_look(record, now_seen, now, phase, limits),
    }
}

fn running(
    record: &mut Record,
    seen: Observation,
    now: Instant,
    limits: &Limits,
    unread: &mut dyn FnMut() -> bool,
) -> Option<Command> {
    if seen.h2 {
        // HTTP/2 has its own keep-alive and flow control; streams are judged by hyper.
        return None;
    }
    if seen.in_flight() {
        let (bytes, per) = limits.min_rate?;
        if !seen.waiting {
            record.window = None;
            return None;
        }
        let (start, at_start) = *record.window.get_or_insert((now, seen.bytes_read));
        if now.duration_since(start) < per {
            return None;
        }
        if seen.bytes_read - at_start < bytes {
            return Some(Command::Abort);
        }
        record.window = Some((now, seen.bytes_read));
        return None;
    }
    let timeout = limits.header_read_timeout?;
    if now.duration_since(record.since) < timeout {
        return None;
    }
    if seen.head_arriving() {
        Some(Command::Timeout)
    } else if unread() {
        // The next request is in the socket: hyper reads it next.
        None
    } else {
        Some(Command::Close)
    }
}

fn draining(
    record: &mut Record,
    seen: Observation,
    now: Instant,
    (since, unready): (Instant, Option<Instant>),
    limits: &Limits,
    unread: &mut dyn FnMut() -> bool,
) -> Option<Command> {
    if seen.h2 {
        return Some(h2_draining(record, seen, now, since, limits));
    }
    if seen.in_flight() {
        // Its response says `Connection: close`; hyper closes after it.
        return running(record, seen, now, limits, unread).filter(|c| *c == Command::Abort);
    }
    if pooled_idle(seen) && !abandoned(record, seen, since, unready) {
        // A keep-alive connection between two requests: its peer (a balancer's pool) may
        // send on it at any instant and, whatever we do, may not see our close in time. So
        // the drain closes it no sooner than serving would have (the idle timeout, which the
        // peer's own idle timeout is set below): the peer closes it first, or sends one more
        // request, answered with `Connection: close`. The drain timeout bounds the rest.
        return running(record, seen, now, limits, unread);
    }
    let grace_over = since + limits.idle_grace;
    if now < grace_over {
        return None;
    }
    if let Some(seen_at) = record.head_seen {
        // A head already arriving before the grace ended (trickling in, or stuck) gets a
        // 408 now; one first seen at its end gets a moment more to complete.
        let deadline = if seen_at < grace_over {
            grace_over
        } else {
            seen_at + HEAD_ALLOWANCE
        };
        return (now >= deadline).then_some(Command::Timeout);
    }
    if unread() {
        // The next request is in the socket: give hyper a moment to read it.
        record.since = now;
        return None;
    }
    Some(Command::Close)
}

/// An HTTP/1 connection with no request in progress and not a byte of the next one: its
/// peer may send on it at any moment. That includes a connection that has not sent its first
/// request yet: a balancer under load may open one and write its request a second later
/// (seen behind HAProxy on a busy machine), and may keep one in its pool unused.
/// A TLS handshake in progress is not yet such a connection: it gets the grace.
fn pooled_idle(seen: Observation) -> bool {
    !seen.h2 && !seen.handshaking && !seen.in_flight() && !seen.head_arriving()
}

/// Whether this idle connection was abandoned in the lame duck that came before the drain:
/// not used in its second half. A balancer that checks readiness takes the worker out within
/// the first half (the lame duck is to be at least twice what it takes), and then keeps its
/// pooled connections here unused (HAProxy keeps one to a server marked down for good). It
/// gets the grace, then is closed. A connection used later is still in use (a direct client,
/// a balancer that does not check readiness): left to its peer. Its last use is when its last
/// request started (or it was accepted); without that, the supervisor's first look after it,
/// which may be a second late: on the side of leaving it.
fn abandoned(record: &Record, seen: Observation, stop: Instant, unready: Option<Instant>) -> bool {
    unready.is_some_and(|unready| {
        let middle = unready + stop.saturating_duration_since(unready) / 2;
        seen.last_use.unwrap_or(record.since) <= middle
    })
}

/// An HTTP/2 connection once the worker stops: GOAWAY at once (HTTP/2 clients learn it per
/// connection, and h2 serves the streams that race it before its final GOAWAY). h2 waits for
/// the client's answer to its shutdown PING, and then for its streams, with no bound of its
/// own: a client that does not answer, or stops reading, would hold the worker until the
/// drain timeout. So, as an HTTP/1 client that trickles its head gets a 408 after the grace,
/// one that has not answered the PING within the grace and the linger, or whose socket has
/// taken nothing for that long while the server had more to write, is cut.
fn h2_draining(
    record: &mut Record,
    seen: Observation,
    now: Instant,
    since: Instant,
    limits: &Limits,
) -> Command {
    let bound = limits.idle_grace + limits.linger;
    let still_stalled = matches!(
        record.write_stall,
        Some((_, at)) if seen.write_blocked && seen.bytes_written == at
    );
    if !still_stalled {
        record.write_stall = seen.write_blocked.then_some((now, seen.bytes_written));
    }
    let unanswered = !seen.h2_answered && now >= since + bound;
    let stalled = record
        .write_stall
        .is_some_and(|(stalled, _)| now >= stalled + bound);
    if unanswered || stalled {
        Command::Abort
    } else {
        Command::Close
    }
}

/// When the rules next need a look at this connection.
fn next_look(
    record: &Record,
    seen: Observation,
    now: Instant,
    phase: Phase,
    limits: &Limits,
) -> Option<Instant> {
    let done = match record.given {
        Command::Timeout | Command::Abort => true,
        // Closing: hyper ends it (HTTP/2 after its streams, HTTP/1 at once or after its
        // response); a slow body can still be aborted.
        Command::Close => !seen.in_flight(),
        Command::Serve => false,
    };
    if seen.h2 {
        // While running, h2 judges its own streams; draining, the deadlines of `h2_draining`.
        let Phase::Draining { since, .. } = phase else {
            return None;
        };
        if record.given == Command::Abort {
            return None;
        }
        let bound = limits.idle_grace + limits.linger;
        let unanswered = (!seen.h2_answered).then_some(since + bound);
        let stalled = record.write_stall.map(|(stalled, _)| stalled + bound);
        // Until h2 ends it, a stall of its writes is to be seen soon after it begins (h2
        // still sends what a response has handed it, counted or not as in flight here).
        let soon = now + HEAD_ALLOWANCE;
        return [unanswered, stalled]
            .into_iter()
            .flatten()
            .fold(soon, Instant::min)
            .into();
    }
    if done {
        return None;
    }
    let min_rate = |_: ()| limits.min_rate.map(|(_, per)| now + per);
    if seen.in_flight() {
        return min_rate(());
    }
    let soon = now + HEAD_ALLOWANCE / 5;
    match phase {
        Phase::Draining { since, unready }
            if pooled_idle(seen) && !abandoned(record, seen, since, unready) =>
        {
            limits
                .header_read_timeout
                .map(|timeout| (record.since + timeout).max(soon))
        }
        Phase::Draining { since, .. } if now < since + limits.idle_grace => {
            Some(since + limits.idle_grace)
        }
        Phase::Draining { .. } => Some(soon),
        Phase::Running => limits
            .header_read_timeout
            .map(|timeout| (record.since + timeout).max(soon)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(1);
    const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

    const LINGER: Duration = Duration::from_millis(500);

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Some(HEAD_TIMEOUT),
            min_rate: Some((1024, Duration::from_secs(10))),
            idle_grace: GRACE,
            linger: LINGER,
        }
    }

    fn obs(bytes_read: u64, idle_mark: u64, started: u64, finished: u64) -> Observation {
        Observation {
            bytes_read,
            idle_mark,
            started,
            finished,
            waiting: false,
            last_use: None,
            handshaking: false,
            h2: false,
            h2_answered: false,
            bytes_written: 0,
            write_blocked: false,
        }
    }

    /// Judges with no unread bytes in the socket.
    fn judge_at(record: &mut Record, seen: Observation, now: Instant, phase: Phase) -> Command {
        judge(record, seen, now, phase, &limits(), &mut || false).command
    }

    #[test]
    fn a_pooled_idle_connection_is_left_to_its_peer_until_the_idle_timeout() {
        // It served a request at t0 and has been idle since; the worker stops at 5 s.
        let t0 = Instant::now();
        let idle = obs(100, 100, 1, 1);
        let mut record = Record::new(idle, t0);
        let draining = Phase::Draining {
            since: t0 + Duration::from_secs(5),
            unready: None,
        };
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        for ms in [5000, 6000, 6001, 20_000, 29_999] {
            let verdict = judge(&mut record, idle, at(ms), draining, &limits(), &mut || {
                false
            });
            assert_eq!(
                verdict.command,
                Command::Serve,
                "{ms} ms: not past the grace"
            );
            let soon = at(ms) + HEAD_ALLOWANCE / 5;
            assert_eq!(
                verdict.next_look,
                Some((t0 + HEAD_TIMEOUT).max(soon)),
                "{ms} ms"
            );
        }
        assert_eq!(
            judge_at(&mut record, idle, t0 + HEAD_TIMEOUT, draining),
            Command::Close,
            "closed at the idle timeout, as while serving"
        );
        assert_eq!(
            judge_at(&mut record, idle, at(30_100), draining),
            Command::Serve,
            "given once"
        );

        // No idle timeout: left to the peer, or to the drain timeout.
        let unlimited = Limits {
            header_read_timeout: None,
            ..limits()
        };
        let mut record = Record::new(idle, t0);
        let verdict = judge(
            &mut record,
            idle,
            at(3_600_000),
            draining,
            &unlimited,
            &mut || false,
        );
        assert_eq!(
            verdict,
            Verdict {
                command: Command::Serve,
                next_look: None
            }
        );
    }

    #[test]
    fn after_a_lame_duck_a_connection_unused_in_its_second_half_gets_the_grace_a_used_one_is_left()
    {
        // Not ready from 10 s (the lame duck), stopping from 12 s.
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let draining = Phase::Draining {
            since: at(12_000),
            unready: Some(at(10_000)),
        };
        // Its last request at 0 s, or at 10.9 s (in the first half of the lame duck, before
        // the balancer noticed): then taken out, and left in the balancer's pool.
        let idle = obs(100, 100, 1, 1);
        let busy = obs(180, 100, 2, 1);
        let idle_again = obs(180, 180, 2, 2);
        let mut unused = Record::new(idle, t0);
        let mut early = Record::new(idle, t0);
        judge_at(&mut early, busy, at(10_800), Phase::Running);
        judge_at(&mut early, idle_again, at(10_900), Phase::Running);
        for record in [&mut unused, &mut early] {
            let seen = if record.requests == (1, 1) {
                idle
            } else {
                idle_again
            };
            assert_eq!(
                judge_at(record, seen, at(12_000) + GRACE / 2, draining),
                Command::Serve
            );
            assert_eq!(
                judge_at(record, seen, at(12_000) + GRACE, draining),
                Command::Close
            );
        }

        // Its last request started at 10.3 s, but the supervisor saw it only at 11.2 s: the
        // request's own time counts.
        let mut seen_late = Record::new(idle, t0);
        let used_early = |o: Observation| Observation {
            last_use: Some(at(10_300)),
            ..o
        };
        judge_at(
            &mut seen_late,
            used_early(idle_again),
            at(11_200),
            Phase::Running,
        );
        assert_eq!(
            judge_at(
                &mut seen_late,
                used_early(idle_again),
                at(12_000) + GRACE,
                draining
            ),
            Command::Close
        );

        // Another, used at 11.5 s (seen then), late in the lame duck: still in use, left to
        // its peer.
        let mut used = Record::new(idle, t0);
        assert_eq!(
            judge_at(&mut used, busy, at(11_500), Phase::Running),
            Command::Serve
        );
        for ms in [11_550, 12_000, 13_000, 40_000] {
            assert_eq!(
                judge_at(&mut used, idle_again, at(ms), draining),
                Command::Serve,
                "{ms} ms"
            );
        }
        assert_eq!(
            judge_at(&mut used, idle_again, at(11_550) + HEAD_TIMEOUT, draining),
            Command::Close,
            "at the idle timeout"
        );
    }

    #[test]
    fn a_connection_that_has_not_sent_its_first_request_is_left_too() {
        let t0 = Instant::now();
        let fresh = obs(0, 0, 0, 0);
        let mut record = Record::new(fresh, t0);
        let draining = Phase::Draining {
            since: t0,
            unready: None,
        };
        for ms in [0, 1000, 5000, 29_999] {
            let now = t0 + Duration::from_millis(ms);
            assert_eq!(
                judge_at(&mut record, fresh, now, draining),
                Command::Serve,
                "{ms} ms"
            );
        }
        assert_eq!(
            judge_at(&mut record, fresh, t0 + HEAD_TIMEOUT, draining),
            Command::Close
        );
    }

    #[test]
    fn a_tls_handshake_in_progress_is_closed_when_the_grace_is_over() {
        let t0 = Instant::now();
        let handshaking = Observation {
            handshaking: true,
            ..obs(0, 0, 0, 0)
        };
        let mut record = Record::new(handshaking, t0);
        let draining = Phase::Draining {
            since: t0,
            unready: None,
        };
        let just_before = t0 + GRACE - Duration::from_millis(1);
        assert_eq!(
            judge_at(&mut record, handshaking, just_before, draining),
            Command::Serve
        );
        assert_eq!(
            judge_at(&mut record, handshaking, t0 + GRACE, draining),
            Command::Close
        );
    }

    #[test]
    fn a_request_in_the_socket_at_the_idle_timeout_is_let_in() {
        let t0 = Instant::now();
        // Idle as far as hyper has read, but its next request is in the socket.
        let idle = obs(0, 0, 0, 0);
        let mut record = Record::new(idle, t0);
        let draining = Phase::Draining {
            since: t0,
            unready: None,
        };
        let verdict = judge(
            &mut record,
            idle,
            t0 + HEAD_TIMEOUT,
            draining,
            &limits(),
            &mut || true,
        );
        assert_eq!(verdict.command, Command::Serve);
        assert!(verdict.next_look.is_some(), "looked at again soon");
        // hyper read it: a request is in flight now, and its response will say close.
        let busy = obs(80, 0, 1, 0);
        assert_eq!(
            judge_at(&mut record, busy, t0 + HEAD_TIMEOUT + GRACE / 10, draining),
            Command::Serve
        );
    }

    #[test]
    fn a_partial_head_at_the_stop_gets_the_grace_then_a_408() {
        let t0 = Instant::now();
        // 3 bytes of a head, long before the stop (a trickling client).
        let partial = obs(103, 100, 1, 1);
        let mut record = Record::new(partial, t0);
        let stop = t0 + Duration::from_secs(10);
        let draining = Phase::Draining {
            since: stop,
            unready: None,
        };
        assert_eq!(
            judge_at(&mut record, partial, stop, draining),
            Command::Serve
        );
        let trickled = obs(104, 100, 1, 1);
        assert_eq!(
            judge_at(
                &mut record,
                trickled,
                stop + GRACE - Duration::from_millis(1),
                draining
            ),
            Command::Serve
        );
        assert_eq!(
            judge_at(&mut record, trickled, stop + GRACE, draining),
            Command::Timeout
        );
    }

    #[test]
    fn a_head_that_starts_just_before_the_grace_ends_gets_a_moment_more() {
        let t0 = Instant::now();
        let idle = obs(100, 100, 1, 1);
        let mut record = Record::new(idle, t0);
        let draining = Phase::Draining {
            since: t0,
            unready: None,
        };
        let just_before = t0 + GRACE - Duration::from_millis(10);
        assert_eq!(
            judge_at(&mut record, idle, just_before, draining),
            Command::Serve
        );
        // The head's first bytes, seen at the end of the grace.
        let partial = obs(120, 100, 1, 1);
        // The head started within the last HEAD_ALLOWANCE before the grace ended: its clock
        // is the idle one, reset at the last request; it has until grace + allowance.
        assert_eq!(
            judge_at(&mut record, partial, t0 + GRACE, draining),
            Command::Serve
        );
        assert_eq!(
            judge_at(&mut record, partial, t0 + GRACE + HEAD_ALLOWANCE, draining),
            Command::Timeout
        );
    }

    #[test]
    fn busy_connections_are_left_to_their_response() {
        let t0 = Instant::now();
        let busy = obs(100, 0, 1, 0);
        let mut record = Record::new(busy, t0);
        let draining = Phase::Draining {
            since: t0,
            unready: None,
        };
        for ms in [0, 1000, 5000, 60_000] {
            assert_eq!(
                judge_at(&mut record, busy, t0 + Duration::from_millis(ms), draining),
                Command::Serve
            );
        }
    }

    #[test]
    fn http2_gets_goaway_at_once() {
        let t0 = Instant::now();
        let h2 = Observation {
            h2: true,
            ..obs(500, 0, 3, 1)
        };
        let mut record = Record::new(h2, t0);
        assert_eq!(
            judge_at(&mut record, h2, t0, Phase::Running),
            Command::Serve
        );
        assert_eq!(
            judge_at(
                &mut record,
                h2,
                t0,
                Phase::Draining {
                    since: t0,
                    unready: None
                }
            ),
            Command::Close
        );
    }

    #[test]
    fn http2_that_never_answers_the_ping_is_cut_after_the_grace_and_linger() {
        let t0 = Instant::now();
        let h2 = Observation {
            h2: true,
            ..obs(500, 500, 3, 3)
        };
        let draining = Phase::Draining {
            since: t0,
            unready: None,
        };
        let mut record = Record::new(h2, t0);
        let verdict = judge(&mut record, h2, t0, draining, &limits(), &mut || false);
        assert_eq!(verdict.command, Command::Close, "GOAWAY first");
        assert_eq!(verdict.next_look, Some(t0 + HEAD_ALLOWANCE));
        let just_before = t0 + GRACE + LINGER - Duration::from_millis(1);
        let verdict = judge(
            &mut record,
            h2,
            just_before,
            draining,
            &limits(),
            &mut || false,
        );
        assert_eq!(
            verdict.next_look,
            Some(t0 + GRACE + LINGER),
            "looked at on time"
        );
        assert_eq!(
            judge_at(&mut record, h2, just_before, draining),
            Command::Serve
        );
        assert_eq!(
            judge_at(&mut record, h2, t0 + GRACE + LINGER, draining),
            Command::Abort
        );

        // The same client, answered: left to finish its streams.
        let answered = Observation {
            h2_answered: true,
            ..h2
        };
        let mut record = Record::new(answered, t0);
        for ms in [0, 2000, 60_000] {
            let now = t0 + Duration::from_millis(ms);
            let verdict = judge(&mut record, answered, now, draining, &limits(), &mut || {
                false
            });
            assert_ne!(verdict.command, Command::Abort, "{ms} ms");
            assert_eq!(
                verdict.next_look,
                Some(now + HEAD_ALLOWANCE),
                "looked at for a stall"
            );
        }
    }

    #[test]
    fn http2_whose_writes_stall_is_cut_after_the_grace_and_linger_one_that_reads_is_not() {
        let t0 = Instant::now();
        let draining = Phase::Draining {
            since: t0,
            unready: None,
        };
        let writing = |written, blocked| Observation {
            h2: true,
            h2_answered: true,
            bytes_written: written,
            write_blocked: blocked,
            ..obs(500, 0, 2, 1)
        };
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut record = Record::new(writing(1000, true), t0);
        assert_eq!(
            judge_at(&mut record, writing(1000, true), at(0), draining),
            Command::Close
        );
        // A slow reader: blocked at every look, but the bytes move.
        for (i, ms) in [1000, 2000, 3000, 4000].into_iter().enumerate() {
            let seen = writing(2000 + 1000 * i as u64, true);
            assert_eq!(
                judge_at(&mut record, seen, at(ms), draining),
                Command::Serve
            );
        }
        // Then nothing moves for the grace and the linger.
        let stuck = writing(5000, true);
        let verdict = judge(
            &mut record,
            stuck,
            at(4000),
            draining,
            &limits(),
            &mut || false,
        );
        assert_eq!(
            verdict.next_look,
            Some(at(4000) + HEAD_ALLOWANCE),
            "a stream is open: looked at again soon"
        );
        assert_eq!(
            judge_at(&mut record, stuck, at(4000) + GRACE + LINGER, draining),
            Command::Abort
        );
    }

    #[test]
    fn while_running_a_head_gets_the_header_read_timeout_and_idle_the_same() {
        let t0 = Instant::now();
        let partial = obs(105, 100, 1, 1);
        let mut record = Record::new(partial, t0);
        assert_eq!(
            judge_at(
                &mut record,
                partial,
                t0 + HEAD_TIMEOUT - Duration::from_millis(1),
                Phase::Running
            ),
            Command::Serve
        );
        // Trickling does not reset the clock: only a request starting does.
        let more = obs(110, 100, 1, 1);
        assert_eq!(
            judge_at(&mut record, more, t0 + HEAD_TIMEOUT, Phase::Running),
            Command::Timeout
        );

        let idle = obs(100, 100, 1, 1);
        let mut record = Record::new(idle, t0);
        assert_eq!(
            judge_at(&mut record, idle, t0 + HEAD_TIMEOUT, Phase::Running),
            Command::Close
        );
    }

    #[test]
    fn requests_reset_the_clocks() {
        let t0 = Instant::now();
        let mut record = Record::new(obs(100, 100, 1, 1), t0);
        let mut now = t0;
        for i in 2..10 {
            now += HEAD_TIMEOUT / 2;
            let seen = obs(100 * i, 100 * i, i, i);
            assert_eq!(
                judge_at(&mut record, seen, now, Phase::Running),
                Command::Serve,
                "{i}"
            );
        }
    }

    #[test]
    fn a_slow_body_is_aborted_a_slow_handler_is_not() {
        let t0 = Instant::now();
        let waiting = |bytes| Observation {
            waiting: true,
            ..obs(bytes, 0, 1, 0)
        };
        let mut record = Record::new(waiting(100), t0);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(
            judge_at(&mut record, waiting(100), at(1), Phase::Running),
            Command::Serve
        );
        // 2 KiB in the first window: enough.
        assert_eq!(
            judge_at(&mut record, waiting(2148), at(11), Phase::Running),
            Command::Serve
        );
        // Then 10 bytes in 10 s while the server waits for them: too slow.
        assert_eq!(
            judge_at(&mut record, waiting(2158), at(21), Phase::Running),
            Command::Abort
        );

        // A handler that takes a minute while the client waits: not the client's fault.
        let busy = obs(100, 0, 1, 0);
        let mut record = Record::new(busy, t0);
        for s in [10, 30, 60] {
            assert_eq!(
                judge_at(&mut record, busy, at(s), Phase::Running),
                Command::Serve
            );
        }
    }

    #[test]
    fn no_limits_no_commands_while_running() {
        let t0 = Instant::now();
        let unlimited = Limits {
            header_read_timeout: None,
            min_rate: None,
            idle_grace: GRACE,
            linger: LINGER,
        };
        let partial = Observation {
            waiting: true,
            ..obs(105, 100, 1, 1)
        };
        let mut record = Record::new(partial, t0);
        let verdict = judge(
            &mut record,
            partial,
            t0 + Duration::from_secs(3600),
            Phase::Running,
            &unlimited,
            &mut || false,
        );
        assert_eq!(
            verdict,
            Verdict {
                command: Command::Serve,
                next_look: None
            }
        );
    }
}
