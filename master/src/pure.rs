//! The master's pure layer: everything it decides, and nothing it does.
//!
//! No module here performs I/O, starts a process, reads the clock or makes a system call:
//! the [`machine`] is given each event with the time it happened and returns what to
//! do ([`Action`](machine::Action)s) and what to say ([`Message`](machine::Message)s, as
//! data); the [process shell](crate#the-two-layers) around it (the driver's event loop,
//! connections, spawning, the re-exec) carries that out. The model is quinn-proto beside
//! quinn: the protocol as a state machine, testable with a simulated clock and no sockets.
//!
//! Bottom-up, each module using only those above it in this list:
//! - [`seconds`]: durations as the command line and the command language write them, bounded;
//! - [`verbosity`]: log levels as steps from `info`, and their names;
//! - [`wire`]: Einhorn's line format (requests and replies, YAML in a URL-encoded line);
//! - [`state`]: the `state` and `config` snapshots, as data;
//! - [`command`]: the command language, typed;
//! - [`machine`]: the worker set, upgrades, canaries, respawns and re-execs, as a state
//!   machine, with its snapshots (what a re-exec hands over);
//! - [`render`]: the machine's messages and snapshots put into the wire's text and YAML.
//!
//! `tests/house.rs` at the workspace root fails the build's tests if a module here names
//! tokio, `std::process`, `std::net`, `std::fs`, `std::os`, `std::env`, a system call (nix,
//! libc), a clock read or a module of the shell, or if any crate of the workspace has an
//! import circle.

pub mod command;
pub mod machine;
pub mod render;
pub mod seconds;
pub mod state;
pub mod verbosity;
pub mod wire;
