//! Support shared by the workspace's examples, integration tests, benchmarks and demo.
//!
//! Nothing here is published: it is the test bench of the `graceful-listener` crates.
//! - [`harness`] starts real processes and guarantees they are reaped;
//! - [`fake_einhorn`] plays the part of an Einhorn master for a single worker (inherited
//!   fds, a real command socket), so the core can be tested without any master binary;
//! - [`master`] runs the real `einhorn-master`;
//! - [`load`] is a keep-alive HTTP/1.1 load client, [`load_h2`] an HTTP/2 one as applications
//!   run it (hyper-util's pooled client) and [`h2load`] reads h2load's; [`echo`] a client for the line echo;
//! - [`upgrades`] runs workers under the master through upgrades under load (the demo and
//!   the load benchmark).

pub mod echo;
pub mod fake_einhorn;
pub mod h2load;
pub mod harness;
pub mod load;
pub mod load_h2;
pub mod master;
pub mod tls;
pub mod upgrades;
