//! Property tests for bind specs: every valid [`Bind`] prints a spec that parses back to it,
//! and any string either parses to a value that round-trips or is refused naming itself.
//!
//! The strategies are shared with the environment and `auto` property tests.
//!
//! Here, inside the crate, and not in `tests/`: the `auto` property tests use these strategies
//! (`config`, `valid_bind`), and they reach private items.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::RawFd;

use proptest::prelude::*;
use proptest::sample::{Index, select};

use super::Bind;

/// The crate's property tests run `cases` cases each, and shrink a failure for at most 10 s
/// (the failing case is reported either way; shrinking longer only slows a failed run).
pub(crate) fn config(cases: u32) -> ProptestConfig {
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

fn all_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// A name `systemd@NAME` takes (`FileDescriptorName=`'s rule): printable ASCII without ':',
/// 1 to 255 characters, and not all digits (that is an index).
pub(crate) fn systemd_name() -> impl Strategy<Value = String> {
    "[!-9;-~]{1,255}".prop_filter("all digits is an index", |name| !all_digits(name))
}

/// A key `starter@KEY` takes: what `start_server` is given (`:8080`, `127.0.0.1:8080`,
/// `[::1]:8080`, a path), or any other non-empty text that is not all digits.
pub(crate) fn starter_key() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u16>().prop_map(|port| format!(":{port}")),
        any::<SocketAddr>().prop_map(|addr| SocketAddr::new(addr.ip(), addr.port()).to_string()),
        "/[a-z0-9/._-]{0,30}",
        any::<String>(),
    ]
    .prop_filter("a key is not empty nor all digits", |key| {
        !key.is_empty() && !all_digits(key)
    })
}

/// A host name: dot-separated labels of `[A-Za-z0-9-]`, that is not an IP literal (which
/// parses as an address).
fn host_name() -> impl Strategy<Value = String> {
    prop::collection::vec("[A-Za-z0-9-]{1,12}", 1..5)
        .prop_map(|labels| labels.join("."))
        .prop_filter("an IP literal is an address", |host| {
            host.parse::<IpAddr>().is_err()
        })
        .prop_filter("a manager's name and a number is a near miss", |host| {
            super::near_miss(&format!("{host}:0")).is_none()
        })
}

/// A socket address as `IP:PORT` or `[V6%SCOPE]:PORT` writes it (no flow info: the text has
/// no place for it).
fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<Ipv4Addr>(), any::<u16>()).prop_map(SocketAddr::from),
        (
            any::<Ipv6Addr>(),
            any::<u16>(),
            prop_oneof![Just(0), any::<u32>()]
        )
            .prop_map(|(ip, port, scope)| SocketAddrV6::new(ip, port, 0, scope).into()),
    ]
}

/// A Unix socket path: absolute, relative with a dot, or any other non-empty text (printed
/// with `unix:`). Without a mode, a path must not hold `,mode=`: printed, that would read as
/// a mode.
fn unix_bind() -> impl Strategy<Value = Bind> {
    let path = prop_oneof![
        "/[a-zA-Z0-9/._,=-]{0,40}",
        "\\.[a-zA-Z0-9/._,=-]{0,40}",
        any::<String>(),
        // A path that holds the mode's marker itself.
        (any::<String>(), any::<String>()).prop_map(|(a, b)| format!("{a},mode={b}")),
    ]
    .prop_filter("the path is not empty", |path| !path.is_empty());
    // Modes below 0o100 often: they print with leading zeros.
    let mode = prop_oneof![0..=0o7777u32, 0..0o100u32];
    (path, prop::option::of(mode))
        .prop_filter(
            "without a mode, ',mode=' would read as one",
            |(path, mode)| mode.is_some() || !path.contains(",mode="),
        )
        .prop_map(|(path, mode)| Bind::Unix {
            path: path.into(),
            mode,
        })
}

/// Any valid [`Bind`], every variant within its rules.
pub(crate) fn valid_bind() -> impl Strategy<Value = Bind> {
    prop_oneof![
        any::<usize>().prop_map(Bind::Einhorn),
        any::<usize>().prop_map(Bind::Systemd),
        systemd_name().prop_map(Bind::SystemdName),
        any::<usize>().prop_map(Bind::Starter),
        starter_key().prop_map(Bind::StarterKey),
        (0..=RawFd::MAX).prop_map(Bind::Fd),
        socket_addr().prop_map(Bind::Addr),
        (host_name(), any::<u16>()).prop_map(|(host, port)| Bind::Host(host, port)),
        any::<u16>().prop_map(Bind::Port),
        unix_bind(),
        Just(Bind::Auto),
    ]
}

/// Text near the specs: a valid spec with one character inserted or removed, pieces of specs
/// run together, or any string.
pub(crate) fn spec_like() -> impl Strategy<Value = String> {
    let prefix = select(
        &[
            "",
            "auto",
            "einhorn@",
            "systemd@",
            "starter@",
            "fd@",
            "unix:",
            "/",
            ".",
            ":",
            "[",
            "[::1]",
            "[::1%",
            "127.0.0.1",
            "localhost",
        ][..],
    );
    let piece = select(
        &[
            "0",
            "7",
            "9",
            "-",
            "+",
            ":",
            ".",
            "@",
            ",",
            ",mode=",
            "0660",
            "]",
            "[",
            "%",
            "a",
            "Z",
            " ",
            "/",
            "é",
            "\u{0}",
            "65536",
            "4294967296",
            "18446744073709551616",
        ][..],
    );
    let pieces = (prefix, prop::collection::vec(piece, 0..8))
        .prop_map(|(prefix, pieces)| format!("{prefix}{}", pieces.concat()));
    let mutated = (
        valid_bind(),
        any::<Index>(),
        prop::option::of(any::<char>()),
    )
        .prop_map(|(bind, at, insert)| {
            let mut spec = bind.to_string();
            let boundaries: Vec<usize> = spec
                .char_indices()
                .map(|(i, _)| i)
                .chain([spec.len()])
                .collect();
            let i = boundaries[at.index(boundaries.len())];
            match insert {
                Some(c) => spec.insert(i, c),
                None if i < spec.len() => {
                    spec.remove(i);
                }
                None => {}
            }
            spec
        });
    prop_oneof![pieces, mutated, any::<String>()]
}

proptest! {
    #![proptest_config(config(1024))]

    /// Every valid value prints a spec that parses back to it.
    #[test]
    fn every_valid_bind_prints_a_spec_that_parses_back(bind in valid_bind()) {
        let spec = bind.to_string();
        prop_assert_eq!(spec.parse::<Bind>(), Ok(bind), "printed as {:?}", spec);
    }

    /// Any string parses to a value whose printed spec parses to the same value, or is
    /// refused with an error that names it; nothing panics.
    #[test]
    fn any_string_parses_to_a_round_trip_or_is_refused_by_name(spec in spec_like()) {
        match spec.parse::<Bind>() {
            Ok(bind) => {
                let printed = bind.to_string();
                prop_assert_eq!(printed.parse::<Bind>(), Ok(bind), "{:?} printed as {:?}", spec, printed);
            }
            Err(err) => {
                prop_assert_eq!(err.spec(), spec.as_str());
                let named = format!("invalid bind spec {spec:?}: ");
                prop_assert!(err.to_string().starts_with(&named), "{}", err);
            }
        }
    }
}
