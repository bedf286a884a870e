//! Who holds a TCP port: the processes with a listening socket on an address, found through
//! `/proc/net/tcp{,6}` (socket inodes) and `/proc/*/fd` (who has those sockets open). Linux
//! only; elsewhere, or without permission to look, nothing is found.
//!
//! Used when a bind fails with "Address already in use", to name the likely culprit: most
//! often the workers of a master that was killed with SIGKILL, which still hold the port.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::pure::state::Pid;

/// A process holding a listening socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Its pid.
    pub pid: Pid,
    /// Its command name (`/proc/<pid>/comm`).
    pub name: String,
    /// The `EINHORN_MASTER_PID` in its environment, when it is readable and set: the process
    /// is (or was) a worker of that master.
    pub einhorn_master: Option<Pid>,
    /// Whether that master is still running.
    pub master_alive: bool,
}

/// What [`listening_on`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holders {
    /// The processes, by pid.
    pub holders: Vec<Holder>,
    /// Some process could not be inspected (another user's, without root).
    pub incomplete: bool,
}

/// The processes that have a listening TCP socket which conflicts with binding `addr`: same
/// port, and the same IP or a wildcard on either side.
pub fn listening_on(addr: SocketAddr) -> Holders {
    let mut inodes = HashSet::new();
    for (table, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        inodes.extend(
            parse_listeners(&text, v6)
                .into_iter()
                .filter(|(bound, _)| conflicts(*bound, addr))
                .map(|(_, inode)| inode),
        );
    }
    if inodes.is_empty() {
        return Holders::default();
    }
    let mut found = Holders::default();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<Pid>().ok())
        else {
            continue;
        };
        let fds = match std::fs::read_dir(entry.path().join("fd")) {
            Ok(fds) => fds,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                found.incomplete = true;
                continue;
            }
            Err(_) => continue,
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .ok()
                .and_then(|target| socket_inode(&target.to_string_lossy()))
                .is_some_and(|inode| inodes.contains(&inode))
        });
        if holds {
            found.holders.push(describe(pid));
        }
    }
    found.holders.sort_by_key(|h| h.pid);
    found
}

fn describe(pid: Pid) -> Holder {
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "?".to_string());
    let einhorn_master = std::fs::read(format!("/proc/{pid}/environ"))
        .ok()
        .and_then(|env| {
            env.split(|&b| b == 0)
                .find_map(|kv| {
                    kv.strip_prefix(graceful_listener::env::MASTER_PID.as_bytes())?
                        .strip_prefix(b"=")
                })
                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<Pid>().ok())
        });
    let master_alive = einhorn_master.is_some_and(|master| {
        std::fs::read_to_string(format!("/proc/{master}/stat"))
            .is_ok_and(|stat| !matches!(process_state(&stat), Some('Z' | 'X')))
    });
    Holder {
        pid,
        name,
        einhorn_master,
        master_alive,
    }
}

/// The state letter of a `/proc/<pid>/stat` line (after the parenthesized command name).
fn process_state(stat: &str) -> Option<char> {
    stat.get(stat.rfind(')')? + 2..)?.chars().next()
}

/// `socket:[12345]` -> 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Whether a listener bound to `bound` keeps `wanted` from being bound.
fn conflicts(bound: SocketAddr, wanted: SocketAddr) -> bool {
    if bound.port() != wanted.port() {
        return false;
    }
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let (a, b) = (canonical(bound.ip()), canonical(wanted.ip()));
    a == b || a.is_unspecified() || b.is_unspecified()
}

/// The listening sockets of a `/proc/net/tcp` (or `tcp6`) table: address and inode.
///
/// ```
/// use einhorn_master::holders::parse_listeners;
/// let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
///     0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 424242 1 0 100 0 0 10 0\n";
/// assert_eq!(parse_listeners(table, false), vec![("127.0.0.1:8080".parse().unwrap(), 424242)]);
/// ```
pub fn parse_listeners(text: &str, v6: bool) -> Vec<(SocketAddr, u64)> {
    const LISTEN: &str = "0A";
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            if *state != LISTEN {
                return None;
            }
            let (ip, port) = local.split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let ip = if v6 { parse_ipv6(ip)? } else { parse_ipv4(ip)? };
            Some((SocketAddr::new(ip, port), inode.parse().ok()?))
        })
        .collect()
}

/// The kernel prints each 32-bit word of an address in host byte order.
fn parse_ipv4(hex: &str) -> Option<IpAddr> {
    let word = u32::from_str_radix(hex, 16).ok()?;
    Some(IpAddr::V4(Ipv4Addr::from(word.to_ne_bytes())))
}

fn parse_ipv6(hex: &str) -> Option<IpAddr> {
    if hex.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, chunk) in bytes.chunks_mut(4).enumerate() {
        let word = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    Some(IpAddr::V6(Ipv6Addr::from(bytes)))
}

/// What to tell a user whose bind failed with "Address already in use".
///
/// ```
/// use einhorn_master::holders::{Holder, Holders, hint};
/// let found = Holders {
///     holders: vec![Holder { pid: 41, name: "server".into(), einhorn_master: Some(7), master_alive: false }],
///     incomplete: false,
/// };
/// let text = hint(&found, false);
/// assert!(text.contains("pid 41 (server)"), "{text}");
/// assert!(text.contains("einhorn master 7, which is no longer running"), "{text}");
/// assert!(text.contains("kill -USR2 41"), "{text}");
/// ```
pub fn hint(found: &Holders, reuse_addr: bool) -> String {
    if found.holders.is_empty() {
        let mut text = String::from("no process with a listening socket on it was found");
        if found.incomplete {
            text.push_str(" (some processes could not be inspected: another user's?)");
        }
        if !reuse_addr {
            text.push_str(
                "; if connections of a previous run linger (TIME_WAIT), bind with the `,r` option (SO_REUSEADDR)",
            );
        }
        return text;
    }
    let list: Vec<String> = found
        .holders
        .iter()
        .map(|h| format!("pid {} ({})", h.pid, h.name))
        .collect();
    let pids: Vec<String> = found.holders.iter().map(|h| h.pid.to_string()).collect();
    let mut text = format!("it is held by {}", list.join(", "));
    let masters: HashSet<(Pid, bool)> = found
        .holders
        .iter()
        .filter_map(|h| Some((h.einhorn_master?, h.master_alive)))
        .collect();
    for (master, alive) in masters {
        if alive {
            text.push_str(&format!(
                "; workers of einhorn master {master}, which is running: stop it, or bind another address"
            ));
        } else {
            text.push_str(&format!(
                "; workers of einhorn master {master}, which is no longer running (killed with SIGKILL?): they keep the port until they exit"
            ));
        }
    }
    text.push_str(&format!(
        "; stop them (kill -USR2 {pids}: a graceful stop for workers on graceful-listener; kill -KILL if they do not exit) or bind another address",
        pids = pids.join(" ")
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_tables_and_only_listeners() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1137 1 0 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2000 1 0 100 0 0 10 0
";
        assert_eq!(
            parse_listeners(v4, false),
            vec![("0.0.0.0:2024".parse().unwrap(), 1137)]
        );
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 77 1 0 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 78 1 0 100 0 0 10 0
";
        assert_eq!(
            parse_listeners(v6, true),
            vec![
                ("[::1]:8080".parse().unwrap(), 77),
                ("[::ffff:127.0.0.1]:8081".parse().unwrap(), 78)
            ]
        );
        assert!(parse_listeners("header\nnot a table line\n", false).is_empty());
    }

    #[test]
    fn wildcards_and_mapped_addresses_conflict() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(conflicts(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(conflicts(a("127.0.0.1:80"), a("0.0.0.0:80")));
        assert!(conflicts(a("[::]:80"), a("127.0.0.1:80")));
        assert!(conflicts(a("[::ffff:127.0.0.1]:80"), a("127.0.0.1:80")));
        assert!(!conflicts(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(!conflicts(a("127.0.0.1:80"), a("127.0.0.1:81")));
    }

    #[test]
    fn finds_this_process_listening() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let found = listening_on(addr);
        let me = std::process::id() as Pid;
        assert!(
            found.holders.iter().any(|h| h.pid == me),
            "{found:?} should hold {addr}"
        );
        drop(listener);
        assert!(listening_on(addr).holders.iter().all(|h| h.pid != me));
    }

    #[test]
    fn the_hint_without_holders_suggests_reuse_addr() {
        let text = hint(&Holders::default(), false);
        assert!(text.contains("`,r`"), "{text}");
        assert!(!hint(&Holders::default(), true).contains("`,r`"));
    }
}
