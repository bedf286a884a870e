//! Hosts of a test's own: Linux network namespaces (`ip netns`), each joined to the test's
//! namespace by a veth pair with addresses of its own in `10.231.0.0/16`, removed on drop
//! (also when the test fails). A fleet behind a balancer, on one machine: each host has its
//! own address and its own ports, and a process runs in it through `ip netns exec`.
//!
//! Creating namespaces needs root (`CAP_SYS_ADMIN` and `CAP_NET_ADMIN`) and iproute2;
//! [`Hosts::create`] says why it cannot, so that a test can skip with that reason.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One host: a namespace and the veth pair that joins it to the test's namespace.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace's name (`ip netns exec NAME ...`).
    pub name: String,
    /// The host's address, inside its namespace.
    pub addr: Ipv4Addr,
    /// The test's end of the pair (its address, in the test's namespace).
    pub peer: Ipv4Addr,
    /// The veth interface on the test's side.
    link: String,
}

impl Host {
    /// A command that runs `program` inside this host's namespace.
    pub fn command(&self, program: impl AsRef<Path>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(program.as_ref());
        cmd
    }

    /// Writes an executable script in `dir` that runs `program` in this host's namespace with
    /// the arguments it is given (`exec`, so the pid is the program's): for helpers that take
    /// a program's path, as [`crate::master::Master::start_program`] does.
    ///
    /// # Panics
    /// When the script cannot be written.
    pub fn wrapper(&self, dir: &Path, program: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let script = dir.join(format!("in-{}", self.name));
        let body = format!(
            "#!/bin/sh\nexec ip netns exec {} {} \"$@\"\n",
            self.name,
            program.display()
        );
        std::fs::write(&script, body).expect("write the wrapper");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .expect("make the wrapper executable");
        script
    }
}

/// Network namespaces created by this test, deleted on drop.
#[derive(Debug)]
pub struct Hosts {
    hosts: Vec<Host>,
}

/// Runs `ip ARGS`; `Err` with what it said when it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Hosts {
    /// Creates `count` hosts (at most 60), named after this process so that concurrent test
    /// runs do not meet: host `i` is `10.231.N.(4i+2)`, its peer `10.231.N.(4i+1)`, on a /30.
    ///
    /// # Errors
    /// Why namespaces cannot be made here: not root, no `ip`, or the kernel refused.
    pub fn create(count: usize) -> Result<Hosts, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("not root: network namespaces need CAP_SYS_ADMIN".into());
        }
        let count = count.min(60);
        let pid = std::process::id();
        let subnet = (pid % 250) as u8;
        let mut hosts = Hosts { hosts: Vec::new() };
        for i in 0..count {
            let name = format!("gl{pid}h{i}");
            let link = format!("gl{pid}v{i}");
            let inner = format!("gl{pid}w{i}");
            let base = 4 * i as u8;
            let host = Host {
                name: name.clone(),
                addr: Ipv4Addr::new(10, 231, subnet, base + 2),
                peer: Ipv4Addr::new(10, 231, subnet, base + 1),
                link: link.clone(),
            };
            // A namespace left by an earlier run of the same pid (killed outright): gone first.
            let _ = ip(&["netns", "del", &name]);
            let _ = ip(&["link", "del", &link]);
            ip(&["netns", "add", &name])?;
            hosts.hosts.push(host.clone());
            let peer = format!("{}/30", host.peer);
            let addr = format!("{}/30", host.addr);
            ip(&["link", "add", &link, "type", "veth", "peer", "name", &inner])?;
            ip(&["link", "set", &inner, "netns", &name])?;
            ip(&["addr", "add", &peer, "dev", &link])?;
            ip(&["link", "set", &link, "up"])?;
            ip(&["-n", &name, "addr", "add", &addr, "dev", &inner])?;
            ip(&["-n", &name, "link", "set", &inner, "up"])?;
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
        }
        Ok(hosts)
    }

    /// Host `i`.
    ///
    /// # Panics
    /// When there is no such host.
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// Every host.
    pub fn all(&self) -> &[Host] {
        &self.hosts
    }
}

impl Drop for Hosts {
    /// Deleting a namespace deletes its end of the pair, which deletes the other end. The
    /// processes in it must be gone first: declare the hosts before the processes they run,
    /// so that those are dropped (killed and reaped) first.
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = ip(&["link", "del", &host.link]);
            if let Err(e) = ip(&["netns", "del", &host.name]) {
                eprintln!("netns: could not delete {}: {e}", host.name);
            }
        }
    }
}
