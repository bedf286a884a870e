//! Helpers for the `master_*` tests: the real `einhorn-master` running the `custom-server`
//! example (the master process itself is the test bench's [`Master`](SuiteMaster)).

#![allow(dead_code, unreachable_pub, unused_imports)]

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};

use einhorn_master::pure::wire::Reply;
use graceful_listener_suite::harness::example;
use graceful_listener_suite::master::Master as SuiteMaster;

pub use graceful_listener_suite::echo::EchoClient;
pub use graceful_listener_suite::harness::{is_alive, wait_until};
pub use graceful_listener_suite::master::WAIT;

/// `einhorn-master -b 127.0.0.1:0 -m manual FLAGS -- custom-server WORKER_ARGS`.
pub struct Master {
    master: SuiteMaster,
    /// The address the master bound.
    pub addr: SocketAddr,
}

impl Master {
    pub fn start(flags: &[&str], worker_args: &[&str]) -> Master {
        let mut master_flags = vec!["-b", "127.0.0.1:0", "-m", "manual"];
        master_flags.extend_from_slice(flags);
        let mut command = vec![example("custom-server").into_os_string()];
        command.extend(worker_args.iter().map(Into::into));
        let master = SuiteMaster::start(&master_flags, &command);
        let addr = master.addr(0);
        Master { master, addr }
    }

    /// A smooth upgrade that must succeed; its replies.
    pub fn upgrade(&self) -> Vec<Reply> {
        self.master
            .upgrade()
            .unwrap_or_else(|e| panic!("upgrade failed: {e}\noutput:\n{}", self.output()))
    }

    /// Pids that answer `tries` fresh connections.
    pub fn answering_pids(&self, tries: usize) -> Vec<i32> {
        let mut pids: Vec<i32> = (0..tries)
            .map(|i| EchoClient::connect(self.addr).echo(&format!("probe {i}")))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

impl Deref for Master {
    type Target = SuiteMaster;

    fn deref(&self) -> &SuiteMaster {
        &self.master
    }
}

impl DerefMut for Master {
    fn deref_mut(&mut self) -> &mut SuiteMaster {
        &mut self.master
    }
}

/// Children of `parent` that have exited and were not reaped (zombies).
pub fn zombie_children(parent: i32) -> Vec<i32> {
    graceful_listener_suite::harness::descendants(parent)
        .into_iter()
        .filter(|&pid| graceful_listener_suite::harness::process_state(pid) == Some('Z'))
        .collect()
}
