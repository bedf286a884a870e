//! Support shared by the workspace's examples, integration tests, benchmarks and demo.
//!
//! Nothing here is published: it is the test bench of the `graceful-listener` crates.
//! - [`harness`] starts real processes and guarantees they are reaped (from the demo's
//!   package, as [`master`], [`load`] and [`upgrades`] are);
//! - [`fake_einhorn`] plays the part of an Einhorn master for a single worker (inherited
//!   fds, a real command socket), so the core can be tested without any master binary;
//! - [`master`] runs the real `einhorn-master`; [`probe`] times a fresh connection every so
//!   often (is anyone accepting?);
//! - [`load`] is a keep-alive HTTP/1.1 load client, [`load_h2`] an HTTP/2 one as applications
//!   run it (hyper-util's pooled client) and [`h2load`] reads h2load's; [`echo`] a client for the line echo;
//! - [`upgrades`] runs workers under the master through upgrades under load (the demo and
//!   the load benchmark);
//! - [`balancers`] runs a real HAProxy and a real nginx in front of them, and [`netns`] gives
//!   a test hosts of its own (network namespaces) for a fleet behind one.

pub mod balancers;
pub mod echo;
pub mod fake_einhorn;
pub mod h2load;
pub mod h3;
pub mod load_h2;
pub mod netns;
pub mod probe;
pub mod tls;

// The demo's pieces, used here as they are there: what the demo shows is what the tests assert.
pub use graceful_listener_demo::{harness, load, master, print_results, upgrades};

/// The READMEs and the book's chapters (`book/src/*.md`), compiled as doctests: every
/// ` ```rust ` snippet in them is built (and run, unless marked `no_run`) by
/// `cargo test --workspace`, with this package's dependencies and dev-dependencies (every
/// adapter with `tls`, the master, axum, warp, actix-web, tokio).
#[cfg(doctest)]
mod book {
    #[doc = include_str!("../README.md")]
    mod readme {}
    #[doc = include_str!("../master/README.md")]
    mod master_readme {}
    #[doc = include_str!("../book/src/introduction.md")]
    mod introduction {}
    #[doc = include_str!("../book/src/quickstart.md")]
    mod quickstart {}
    #[doc = include_str!("../book/src/options.md")]
    mod options {}
    #[doc = include_str!("../book/src/operations.md")]
    mod operations {}
    #[doc = include_str!("../book/src/protocol.md")]
    mod protocol {}
    #[doc = include_str!("../book/src/core.md")]
    mod core_crate {}
    #[doc = include_str!("../book/src/drain.md")]
    mod drain {}
    #[doc = include_str!("../book/src/streams.md")]
    mod streams {}
    #[doc = include_str!("../book/src/http3.md")]
    mod http3 {}
    #[doc = include_str!("../book/src/actix.md")]
    mod actix {}
    #[doc = include_str!("../book/src/managers.md")]
    mod managers {}
    #[doc = include_str!("../book/src/systemd.md")]
    mod systemd {}
    #[doc = include_str!("../book/src/server-starter.md")]
    mod server_starter {}
    #[doc = include_str!("../book/src/kubernetes.md")]
    mod kubernetes {}
    #[doc = include_str!("../book/src/fleet.md")]
    mod fleet {}
    #[doc = include_str!("../book/src/master.md")]
    mod master {}
    #[doc = include_str!("../book/src/compatibility.md")]
    mod compatibility {}
    #[doc = include_str!("../book/src/demo.md")]
    mod demo {}
    #[doc = include_str!("../book/src/comparison.md")]
    mod comparison {}
    #[doc = include_str!("../book/src/self-hosted.md")]
    mod self_hosted {}
    #[doc = include_str!("../book/src/benchmarks.md")]
    mod benchmarks {}
    #[doc = include_str!("../book/src/safe-upgrades.md")]
    mod safe_upgrades {}
}
