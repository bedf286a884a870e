//! Property tests for the command socket's line format ([`wire`]) and the commands read from it
//! ([`command`]): decoding any bytes never panics, a line too deep or with aliases is refused
//! before parsing and at once, and requests, replies and commands come back as they were sent.

use std::time::{Duration, Instant};

use einhorn_master::pure::command::{
    COMMANDS, Command, CommandError, DecodeError, decode, parse_signal, signal_name,
};
use einhorn_master::pure::wire::{
    MAX_BRACKETS, Reply, Request, RequestError, RequestId, decode_reply, encode_reply,
    encode_request, escape, parse_request, prescan, unescape,
};
use nix::sys::signal::Signal;
use proptest::prelude::*;
use proptest::sample::{Index, select};

/// Cases per test, and a failure shrunk for at most 10 s.
fn config(cases: u32) -> ProptestConfig {
    let defaults = ProptestConfig::default();
    ProptestConfig {
        // `PROPTEST_CASES=100000 cargo test ...` for a long run.
        cases: match std::env::var_os("PROPTEST_CASES") {
            Some(_) => defaults.cases,
            None => cases,
        },
        max_shrink_time: 10_000,
        // A failure is printed, shrunk; it becomes a regression test, not a seed file.
        failure_persistence: None,
        ..defaults
    }
}

/// The longest line the master reads (64 KiB, its `\n` included).
const MAX_LINE: usize = 64 * 1024 - 1;

/// Any text: every char, controls and line separators included, with the escapes' own
/// sequences mixed in.
fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        any::<char>().prop_map(String::from),
        select(
            &[
                "%", "%0A", "%25", "%250A", "\n", "\r", "\u{85}", "\u{2028}", "'", "\""
            ][..]
        )
        .prop_map(str::to_owned),
        "[a-z0-9 :-]{1,6}",
    ];
    prop::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
}

/// Lines near requests: pieces of YAML and JSON run together, valid request lines with a byte
/// changed, or any bytes.
fn line() -> impl Strategy<Value = Vec<u8>> {
    let piece = select(
        &[
            "{",
            "}",
            "[",
            "]",
            "\"command\"",
            "command",
            ": ",
            ":",
            ",",
            " ",
            "args",
            "id",
            "request_id",
            "pid",
            "user",
            "'",
            "\"",
            "%0A",
            "%25",
            "%",
            "\n",
            "\r",
            "- ",
            "---",
            "&a ",
            "*a",
            "!!str ",
            "!!binary ",
            "|",
            ">",
            "#",
            "? ",
            "1",
            "-1",
            "1.5e9",
            ".nan",
            "null",
            "true",
            "~",
            "worker:ack",
            "signal",
            "USR2",
            "set_workers",
            "upgrade",
            "\u{85}",
            "\u{7f}",
            "\u{feff}",
            "é",
            "\t",
            "\\u0000",
        ][..],
    );
    let pieces = prop::collection::vec(piece, 0..24).prop_map(|p| p.concat().into_bytes());
    let mutated = (request_line(), any::<Index>(), any::<u8>()).prop_map(|(line, at, byte)| {
        let mut line = line.into_bytes();
        if !line.is_empty() {
            let i = at.index(line.len());
            line[i] = byte;
        }
        line
    });
    prop_oneof![
        pieces,
        mutated,
        prop::collection::vec(any::<u8>(), 0..256),
        text().prop_map(String::into_bytes),
    ]
}

/// Text as a client that writes its own JSON can send it (workers, `einhornsh`): without the
/// characters that `encode_request` writes `\uXXXX` and serde_json writes as they are.
fn plain_text() -> impl Strategy<Value = String> {
    text().prop_map(|text| {
        text.replace(
            |c: char| {
                matches!(
                    c,
                    '[' | '{' | '&' | '*' | '\u{2028}' | '\u{2029}' | '\u{fffe}' | '\u{ffff}'
                ) || ('\u{7f}'..='\u{9f}').contains(&c)
            },
            "?",
        )
    })
}

/// A request id as clients send them: an integer or a string.
fn request_id() -> impl Strategy<Value = RequestId> {
    id_of(text())
}

/// An integer id, or a string id of `text`.
fn id_of(text: impl Strategy<Value = String>) -> impl Strategy<Value = RequestId> {
    prop_oneof![
        any::<i64>().prop_map(RequestId::from),
        text.prop_map(|id| RequestId::from(id.as_str())),
    ]
}

/// A request line as `encode_request` writes it, without its `\n`.
fn request_line() -> impl Strategy<Value = String> {
    (
        text(),
        prop::collection::vec(text(), 0..4),
        prop::option::of(request_id()),
    )
        .prop_map(|(command, args, id)| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut line = encode_request(&command, &args, id.as_ref());
            line.pop();
            line
        })
}

/// A signal name as an operator types it: any case, with or without `SIG`, padded.
fn typed_signal() -> impl Strategy<Value = (Signal, String)> {
    let signals: Vec<Signal> = Signal::iterator().collect();
    (
        select(signals),
        any::<bool>(),
        prop::collection::vec(any::<bool>(), 8),
        select(&["", " ", "\t"][..]),
    )
        .prop_map(|(signal, prefix, upper, pad)| {
            let name = if prefix {
                signal.as_str()
            } else {
                signal_name(signal)
            };
            let typed: String = name
                .chars()
                .zip(upper.iter().cycle())
                .map(|(c, &up)| {
                    if up {
                        c.to_ascii_uppercase()
                    } else {
                        c.to_ascii_lowercase()
                    }
                })
                .collect();
            (signal, format!("{pad}{typed}{pad}"))
        })
}

/// A command the master runs, and the arguments a client sends for it.
fn command() -> impl Strategy<Value = (Command, Vec<String>)> {
    let plain = select(vec![
        Command::Help,
        Command::State,
        Command::Config,
        Command::Upgrade {
            fleet: false,
            canary: None,
        },
        Command::Upgrade {
            fleet: true,
            canary: None,
        },
        Command::Inc,
        Command::Dec,
    ])
    .prop_map(|command| (command, Vec::new()));
    prop_oneof![
        plain,
        (1..=100usize, select(&["", " "][..]))
            .prop_map(|(n, pad)| { (Command::SetWorkers(n), vec![format!("{pad}{n}{pad}")]) }),
        prop::collection::vec(typed_signal(), 1..4).prop_map(|signals| {
            let (signals, args) = signals.into_iter().unzip();
            (Command::Signal(signals), args)
        }),
        typed_signal().prop_map(|(signal, arg)| (Command::Die(signal), vec![arg])),
        Just((Command::Die(Signal::SIGUSR2), Vec::new())),
    ]
}

/// A line with a few brackets fewer or more than `MAX_BRACKETS`, among other bytes.
fn near_the_limit() -> impl Strategy<Value = Vec<u8>> {
    (
        (MAX_BRACKETS - 3)..=(MAX_BRACKETS + 3),
        prop::collection::vec(select(&[b'a', b' ', b']', b'&', b'*', b'"'][..]), 0..40),
    )
        .prop_flat_map(|(count, noise)| {
            let mut line = noise;
            line.extend((0..count).map(|i| if i % 2 == 0 { b'[' } else { b'{' }));
            Just(line).prop_shuffle()
        })
}

fn brackets(line: &[u8]) -> usize {
    line.iter().filter(|&&b| b == b'[' || b == b'{').count()
}

proptest! {
    #![proptest_config(config(512))]

    /// `unescape` undoes `escape`, and an escaped text holds no newline.
    #[test]
    fn escape_round_trips_and_leaves_no_newline(text in text()) {
        let escaped = escape(&text);
        prop_assert!(!escaped.contains('\n'));
        prop_assert_eq!(unescape(&escaped), text);
    }

    /// Decoding any line never panics; what it accepts is a command `help` lists, and it
    /// fails exactly where the request parser does, with its error.
    #[test]
    fn decoding_any_line_never_panics(line in line()) {
        let parsed = parse_request(&line);
        match decode(&line) {
            Ok((id, command)) => {
                let request = parsed.expect("decode accepted what parse_request refused");
                prop_assert_eq!(id, request.id);
                prop_assert!(COMMANDS.iter().any(|(name, _)| *name == command.name()));
                prop_assert_eq!(command.name(), request.command.as_str());
            }
            Err(DecodeError::Request(err)) => prop_assert_eq!(parsed, Err(err)),
            Err(DecodeError::Command { id, .. }) => {
                prop_assert_eq!(id, parsed.expect("a command error needs a request").id);
            }
        }
        // Replies are read by clients from the same kind of line.
        let _ = decode_reply(&line);
    }

    /// The pre-scan refuses a line exactly when it has more than `MAX_BRACKETS` opening
    /// brackets, or both anchors and aliases.
    #[test]
    fn prescan_refuses_exactly_deep_or_aliased_lines(
        line in prop_oneof![
            line(),
            prop::collection::vec(select(&[b'[', b'{', b']', b'&', b'*', b'a', b'\''][..]), 0..80),
            near_the_limit(),
        ],
    ) {
        let count = brackets(&line);
        let aliased = line.contains(&b'&') && line.contains(&b'*');
        match prescan(&line) {
            Ok(()) => prop_assert!(count <= MAX_BRACKETS && !aliased),
            Err(RequestError::TooNested { count: seen, limit }) => {
                prop_assert!(count > MAX_BRACKETS);
                prop_assert_eq!((seen, limit), (MAX_BRACKETS + 1, MAX_BRACKETS));
            }
            Err(RequestError::Aliases) => prop_assert!(count <= MAX_BRACKETS && aliased),
            Err(other) => prop_assert!(false, "prescan said {:?}", other),
        }
    }

    /// A request line `encode_request` writes parses back to the command, arguments and id
    /// it was given.
    #[test]
    fn requests_round_trip(
        command in text(),
        args in prop::collection::vec(text(), 0..4),
        id in prop::option::of(request_id()),
    ) {
        let borrowed: Vec<&str> = args.iter().map(String::as_str).collect();
        let line = encode_request(&command, &borrowed, id.as_ref());
        prop_assert_eq!(line.find('\n'), Some(line.len() - 1), "{:?}", line);
        let request = parse_request(line.trim_end_matches('\n').as_bytes());
        prop_assert_eq!(
            request,
            Ok(Request { command, id, args: Some(args), pid: None, user: None }),
            "{:?}", line
        );
    }

    /// A reply `encode_reply` writes is one line that decodes back to it.
    #[test]
    fn replies_round_trip(
        message in text(),
        request_id in prop::option::of(request_id()),
        wait in any::<bool>(),
        error in any::<bool>(),
    ) {
        let reply = Reply { message, request_id, wait, error };
        let line = encode_reply(&reply);
        prop_assert_eq!(line.find('\n'), Some(line.len() - 1), "{:?}", line);
        prop_assert_eq!(decode_reply(line.as_bytes()), Ok(reply), "{:?}", line);
    }

    /// Every command, sent as a client sends it, decodes to itself with its id; worker
    /// messages and `ehlo` as workers and `einhornsh` send them (with `pid`, `user`).
    #[test]
    fn commands_round_trip(
        (command, args) in command(),
        client_id in prop::option::of(request_id()),
        id in prop::option::of(id_of(plain_text())),
        pid in prop::option::of(any::<i64>()),
        user in prop::option::of(plain_text()),
    ) {
        let borrowed: Vec<&str> = args.iter().map(String::as_str).collect();
        let line = encode_request(command.name(), &borrowed, client_id.as_ref());
        prop_assert_eq!(decode(line.trim_end().as_bytes()), Ok((client_id, command)));

        let json = |name: &str| {
            let mut request = serde_json::json!({ "command": name, "pid": pid, "user": user });
            if let Some(id) = &id {
                request["id"] = serde_json::to_value(id).unwrap();
            }
            escape(&request.to_string())
        };
        prop_assert_eq!(
            decode(json("worker:ack").as_bytes()),
            Ok((id.clone(), Command::WorkerAck { pid }))
        );
        prop_assert_eq!(
            decode(json("worker:ping").as_bytes()),
            Ok((id.clone(), Command::WorkerPing { pid }))
        );
        prop_assert_eq!(decode(json("ehlo").as_bytes()), Ok((id, Command::Ehlo { user })));
    }

    /// A command the master does not know is refused by name, with the request's id.
    #[test]
    fn unknown_commands_are_refused_by_name(name in text(), id in prop::option::of(request_id())) {
        let known = COMMANDS.iter().any(|(known, _)| *known == name);
        let unsupported = ["reload", "quieter", "louder"].contains(&name.as_str());
        prop_assume!(!known && !unsupported);
        let line = encode_request(&name, &[], id.as_ref());
        prop_assert_eq!(
            decode(line.trim_end().as_bytes()),
            Err(DecodeError::Command { id, error: CommandError::Unrecognized(name) })
        );
    }

    /// `set_workers` takes a count from 1 to 100 and refuses anything else, naming it.
    #[test]
    fn set_workers_refuses_counts_out_of_range(count in prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        text(),
    ]) {
        let line = encode_request("set_workers", &[&count], None);
        let expected = match count.trim().parse::<usize>() {
            Ok(n @ 1..=100) => Ok((None, Command::SetWorkers(n))),
            _ => Err(DecodeError::Command { id: None, error: CommandError::InvalidCount(count) }),
        };
        prop_assert_eq!(decode(line.trim_end().as_bytes()), expected);
    }

    /// Signal names parse in any case, with or without `SIG`, padded or not.
    #[test]
    fn signal_names_parse_in_any_case((signal, typed) in typed_signal()) {
        prop_assert_eq!(parse_signal(&typed), Ok(signal));
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// A line with more than `MAX_BRACKETS` opening brackets, however they are nested, quoted
    /// or hidden in comments, is refused before parsing, in well under a millisecond's work
    /// per KiB: the YAML scanner would take seconds on the deepest.
    #[test]
    fn deep_lines_are_refused_at_once(
        prefix in text(),
        unit in select(&["[", "{", "{a: ", "[ '\"]]' #]\n", "- [", "[{", "\"[\" ", "'{' "][..]),
        fill in (MAX_BRACKETS + 1)..MAX_LINE,
        closed in any::<bool>(),
    ) {
        let mut line = prefix.into_bytes();
        while line.len() + unit.len() <= fill {
            line.extend_from_slice(unit.as_bytes());
        }
        if closed {
            line.extend(std::iter::repeat_n(b']', line.len().min(MAX_LINE) / 2));
        }
        line.truncate(MAX_LINE);
        prop_assume!(brackets(&line) > MAX_BRACKETS);
        let started = Instant::now();
        let decoded = decode(&line);
        let took = started.elapsed();
        prop_assert!(
            matches!(decoded, Err(DecodeError::Request(RequestError::TooNested { .. }))),
            "{:?}", decoded
        );
        // A debug build on a busy machine: still far below what parsing would take.
        prop_assert!(took < Duration::from_millis(100), "{:?}", took);
    }

    /// A line with both anchors and aliases is refused before parsing, at once.
    #[test]
    fn aliased_lines_are_refused_at_once(prefix in text(), copies in 1..8000usize) {
        let line = format!("{prefix}a0: &a0 x\n{}", "a1: *a0\n".repeat(copies));
        prop_assume!(brackets(line.as_bytes()) <= MAX_BRACKETS);
        let started = Instant::now();
        let decoded = decode(line.as_bytes());
        let took = started.elapsed();
        prop_assert_eq!(decoded, Err(DecodeError::Request(RequestError::Aliases)));
        prop_assert!(took < Duration::from_millis(100), "{:?}", took);
    }
}

proptest! {
    #![proptest_config(config(12))]

    /// A line of up to 64 KiB that passes the pre-scan decodes in bounded time: linear in its
    /// length, with nesting at most `MAX_BRACKETS` deep (about 0.1 s for the slowest in a
    /// debug build).
    #[test]
    fn lines_within_the_limits_decode_in_bounded_time(
        depth in 0..=MAX_BRACKETS,
        opening in select(&["[", "{", "{a: ", "[{"][..]),
        units in prop::collection::vec(
            select(&["a, ", "'x', ", "\"y\", ", "k: v, ", "? ", "- ", "%0A", "!!str x, ", "1.5, ", "&a x, ", "# c%0A"][..]),
            1..6,
        ),
        fill in 1024..MAX_LINE,
    ) {
        let mut line = Vec::new();
        while brackets(&line) + brackets(opening.as_bytes()) <= depth {
            line.extend_from_slice(opening.as_bytes());
        }
        for unit in units.iter().cycle() {
            if line.len() + unit.len() + depth > fill {
                break;
            }
            line.extend_from_slice(unit.as_bytes());
        }
        line.extend(std::iter::repeat_n(b']', depth));
        prop_assert!(prescan(&line).is_ok());
        let started = Instant::now();
        let _ = decode(&line);
        let took = started.elapsed();
        prop_assert!(took < Duration::from_secs(2), "{:?} for {} bytes", took, line.len());
    }
}
