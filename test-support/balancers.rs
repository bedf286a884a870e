//! Real load balancers in front of the workers: HAProxy and nginx, the Debian packages CI
//! installs, run as plain processes with the configurations the book's chapter "Behind a load
//! balancer, across a fleet" gives. Both pool idle keep-alive connections to their servers and
//! never retry a request that failed on one (`http-reuse always` + `retries 0`;
//! `keepalive` + `proxy_next_upstream off`), which is what an old worker's drain must not trip
//! over.
//!
//! Each is a [`Proc`] (killed and reaped on drop) with its files in a temporary directory.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::{Proc, unused_loopback_port, wait_until};

/// How long a balancer may take to start listening.
const START: Duration = Duration::from_secs(10);

/// Where a program is on `PATH` (or in `/usr/sbin`, where Debian puts both), if anywhere.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A HAProxy health check on each server: `option httpchk GET PATH`, every `inter`, down
/// after `fall` failures, up after `rise` successes.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// The path checked (`/readyz`).
    pub path: String,
    /// Between two checks of a server.
    pub inter: Duration,
    /// Failed checks in a row that mark a server down.
    pub fall: u32,
    /// Passed checks in a row that mark it up.
    pub rise: u32,
}

impl HealthCheck {
    /// `GET path` every 200 ms, down after 2 failures, up after 2 successes.
    pub fn new(path: &str) -> HealthCheck {
        HealthCheck {
            path: path.to_owned(),
            inter: Duration::from_millis(200),
            fall: 2,
            rise: 2,
        }
    }
}

/// The HAProxy configuration of the tests and the book: one frontend on `listen`, one
/// backend of `servers` (name, address) with `http-reuse always` and `retries 0`, idle pooled
/// connections purged every second (below any worker's keep-alive timeout), `option httplog`
/// to stdout, a stats socket at `stats`.
pub fn haproxy_config(
    listen: SocketAddr,
    servers: &[(String, SocketAddr)],
    check: Option<&HealthCheck>,
    stats: &Path,
) -> String {
    let mut text = format!(
        "global
    log stdout format raw local0 info
    stats socket {stats} level admin
    maxconn 4096

defaults
    mode http
    log global
    option httplog
    # A request that fails on a server is not tried again (an AWS ALB does not either).
    retries 0
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
    timeout check 1s

frontend clients
    bind {listen}
    default_backend app

backend app
    balance roundrobin
    # Any idle connection to a server serves any client's next request.
    http-reuse always
",
        stats = stats.display(),
    );
    if let Some(check) = check {
        text.push_str(&format!(
            "    option httpchk GET {path}
    default-server check inter {inter}ms fall {fall} rise {rise}
",
            path = check.path,
            inter = check.inter.as_millis(),
            fall = check.fall,
            rise = check.rise,
        ));
    }
    for (name, addr) in servers {
        // Idle connections it no longer needs are closed every second (default 5 s): below
        // the workers' keep-alive timeout, so that it is always the balancer that closes.
        text.push_str(&format!("    server {name} {addr} pool-purge-delay 1s\n"));
    }
    text
}

/// A running HAProxy.
pub struct Haproxy {
    /// The process; its stdout is the request log (`option httplog`).
    pub proc: Proc,
    /// Where clients connect.
    pub addr: SocketAddr,
    stats: PathBuf,
    _dir: tempfile::TempDir,
}

/// One line of HAProxy's `show stat` for a server, the fields the tests read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStat {
    /// The server's name.
    pub name: String,
    /// `UP`, `DOWN`, `no check`, ... (`UP 1/2` while rising).
    pub status: String,
    /// Streams (requests) sent to it.
    pub sessions: u64,
    /// Responses with a 2xx status.
    pub responses_2xx: u64,
    /// Responses with a 5xx status (its own or HAProxy's).
    pub responses_5xx: u64,
    /// Connection errors.
    pub connect_errors: u64,
    /// Response errors.
    pub response_errors: u64,
    /// How many times its health check took it from up to down.
    pub down_transitions: u64,
}

impl Haproxy {
    /// Starts HAProxy on a free loopback port in front of `servers`; `Err` with the reason
    /// when HAProxy is not installed.
    ///
    /// # Panics
    /// When it is installed but does not start.
    pub fn start(
        servers: &[(String, SocketAddr)],
        check: Option<&HealthCheck>,
    ) -> Result<Haproxy, String> {
        let program =
            find_program("haproxy").ok_or("haproxy is not installed (Debian: haproxy)")?;
        let dir = tempfile::tempdir().expect("tempdir");
        let stats = dir.path().join("stats.sock");
        let config = dir.path().join("haproxy.cfg");
        let (proc, addr) = start_listening("haproxy", |port| {
            let listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
            std::fs::write(&config, haproxy_config(listen, servers, check, &stats))
                .expect("write haproxy.cfg");
            let mut cmd = Command::new(&program);
            cmd.arg("-db").arg("-f").arg(&config);
            (cmd, listen)
        });
        Ok(Haproxy {
            proc,
            addr,
            stats,
            _dir: dir,
        })
    }

    /// Runs a command on HAProxy's stats socket (`show stat`, `show servers conn`, ...) and
    /// returns its answer.
    ///
    /// # Panics
    /// When the stats socket does not answer.
    pub fn command(&self, command: &str) -> String {
        let mut stream = UnixStream::connect(&self.stats).expect("haproxy stats socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        stream
            .write_all(format!("{command}\n").as_bytes())
            .expect("a command to haproxy");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("haproxy's answer");
        text
    }

    /// `show stat` for every server of the backend.
    ///
    /// # Panics
    /// When the stats socket does not answer.
    pub fn servers(&self) -> Vec<ServerStat> {
        parse_show_stat(&self.command("show stat"))
    }

    /// The stat line of server `name`.
    ///
    /// # Panics
    /// When there is no such server.
    pub fn server(&self, name: &str) -> ServerStat {
        self.servers()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no server {name} in haproxy's stats"))
    }

    /// Waits up to `timeout` until server `name`'s status starts with `status` (`UP`,
    /// `DOWN`); returns whether it did.
    pub fn wait_status(&self, name: &str, status: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.server(name).status.starts_with(status))
    }

    /// The request log lines (`option httplog`) whose termination state is not `----`
    /// (a normal end): each names the side and the phase of an abnormal one.
    pub fn abnormal_log_lines(&self) -> Vec<String> {
        self.proc
            .output()
            .lines()
            .filter(|l| l.contains("\"GET ") && !l.contains(" ---- "))
            .map(str::to_owned)
            .collect()
    }
}

/// Parses `show stat` CSV: the server lines of every backend.
fn parse_show_stat(text: &str) -> Vec<ServerStat> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let columns: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
    let at = |name: &str| columns.iter().position(|c| *c == name);
    let (Some(sv), Some(status), Some(stot), Some(h2), Some(h5), Some(econ), Some(eresp)) = (
        at("svname"),
        at("status"),
        at("stot"),
        at("hrsp_2xx"),
        at("hrsp_5xx"),
        at("econ"),
        at("eresp"),
    ) else {
        return Vec::new();
    };
    let chkdown = at("chkdown");
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > sv && f[sv] != "FRONTEND" && f[sv] != "BACKEND")
        .map(|f| {
            let num = |i: usize| f.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
            ServerStat {
                name: f[sv].to_owned(),
                status: f.get(status).copied().unwrap_or_default().to_owned(),
                sessions: num(stot),
                responses_2xx: num(h2),
                responses_5xx: num(h5),
                connect_errors: num(econ),
                response_errors: num(eresp),
                down_transitions: chkdown.map_or(0, num),
            }
        })
        .collect()
}

/// The nginx configuration of the tests and the book: a server on `listen` proxying to an
/// upstream of `servers` with a pool of idle keep-alive connections closed after 4 s idle
/// (below any worker's keep-alive timeout), and no retry on another server.
pub fn nginx_config(listen: SocketAddr, servers: &[SocketAddr], dir: &Path) -> String {
    let upstreams: String = servers
        .iter()
        .map(|addr| format!("        server {addr};\n"))
        .collect();
    format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream app {{
{upstreams}        keepalive 64;
        keepalive_timeout 4s;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            # A request that fails on a server is not tried again.
            proxy_next_upstream off;
        }}
    }}
}}
",
        dir = dir.display(),
    )
}

/// A running nginx (one process: no master, no daemon).
pub struct Nginx {
    /// The process; its stderr is the error log.
    pub proc: Proc,
    /// Where clients connect.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx on a free loopback port in front of `servers`; `Err` with the reason
    /// when nginx is not installed.
    ///
    /// # Panics
    /// When it is installed but does not start.
    pub fn start(servers: &[SocketAddr]) -> Result<Nginx, String> {
        let program = find_program("nginx").ok_or("nginx is not installed (Debian: nginx)")?;
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("nginx.conf");
        let (proc, addr) = start_listening("nginx", |port| {
            let listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
            std::fs::write(&config, nginx_config(listen, servers, dir.path()))
                .expect("write nginx.conf");
            let mut cmd = Command::new(&program);
            cmd.arg("-p").arg(dir.path()).arg("-c").arg(&config);
            (cmd, listen)
        });
        Ok(Nginx {
            proc,
            addr,
            _dir: dir,
        })
    }
}

/// Starts a balancer on a free port (`command(port)`), trying another port while the one
/// chosen is taken; returns it once it accepts connections.
fn start_listening(
    what: &str,
    mut command: impl FnMut(u16) -> (Command, SocketAddr),
) -> (Proc, SocketAddr) {
    for _ in 0..5 {
        let (cmd, addr) = command(unused_loopback_port());
        let mut proc = Proc::spawn(cmd).unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let mut exited = false;
        let listening = wait_until(START, || {
            exited = proc.try_wait().is_some();
            exited || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
        });
        if listening && !exited {
            return (proc, addr);
        }
        let output = proc.output();
        if exited && output.contains("Address already in use") {
            continue;
        }
        panic!("{what} did not start:\n{output}");
    }
    panic!("{what}: five tries, every time the port was taken");
}

/// From a master's output (its workers share its stdio): every worker's drain time in
/// milliseconds, sorted, from the worker's `stopped` line, and how many connections the drains
/// cut at their timeout.
pub fn worker_drains(output: &str) -> (Vec<u64>, u64) {
    let field = |line: &str, name: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.parse().ok())
    };
    let stopped: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("graceful_listener::worker: stopped"))
        .collect();
    let mut times: Vec<u64> = stopped
        .iter()
        .filter_map(|l| field(l, "drain_ms="))
        .collect();
    times.sort_unstable();
    let forced = stopped.iter().filter_map(|l| field(l, "forced=")).sum();
    (times, forced)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configurations as the book shows them (with example addresses), so that the two
    /// cannot drift apart.
    fn book_configs() -> (String, String) {
        let servers: Vec<(String, SocketAddr)> = [2, 6, 10]
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let addr = SocketAddr::from(([10, 231, 1, *host], 8080));
                (format!("host{i}"), addr)
            })
            .collect();
        let haproxy = haproxy_config(
            "127.0.0.1:18080".parse().unwrap(),
            &servers,
            Some(&HealthCheck::new("/readyz")),
            Path::new("/tmp/haproxy/stats.sock"),
        );
        let nginx = nginx_config(
            "127.0.0.1:18081".parse().unwrap(),
            &["127.0.0.1:18090".parse().unwrap()],
            Path::new("/tmp/nginx"),
        );
        (haproxy, nginx)
    }

    #[test]
    fn the_book_shows_the_configurations_the_tests_run() {
        let book = include_str!("../book/src/fleet.md");
        let (haproxy, nginx) = book_configs();
        assert!(
            book.contains(&haproxy),
            "book/src/fleet.md should show, verbatim:\n{haproxy}"
        );
        assert!(
            book.contains(&nginx),
            "book/src/fleet.md should show, verbatim:\n{nginx}"
        );
    }

    #[test]
    fn parses_show_stat() {
        let text = "# pxname,svname,qcur,status,stot,econ,eresp,hrsp_2xx,hrsp_5xx,chkdown,\n\
                    clients,FRONTEND,,OPEN,10,,,9,1,,\n\
                    app,h1,0,UP,7,0,1,6,1,0,\n\
                    app,h2,0,DOWN 1/2,3,2,0,3,0,2,\n\
                    app,BACKEND,0,UP,10,2,1,9,1,1,\n";
        let servers = parse_show_stat(text);
        assert_eq!(servers.len(), 2);
        assert_eq!(
            servers[0],
            ServerStat {
                name: "h1".into(),
                status: "UP".into(),
                sessions: 7,
                responses_2xx: 6,
                responses_5xx: 1,
                connect_errors: 0,
                response_errors: 1,
                down_transitions: 0,
            }
        );
        assert_eq!(servers[1].status, "DOWN 1/2");
        assert_eq!(servers[1].down_transitions, 2);
        assert!(parse_show_stat("").is_empty());
    }
}
