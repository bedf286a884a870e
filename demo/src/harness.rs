//! Child processes for tests: output captured line by line, killed and reaped on drop.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The cargo profile directory the running test binary was built into (`target/debug`).
///
/// Test binaries live in `target/<profile>/deps/`; examples in `target/<profile>/examples/`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe has a parent").to_path_buf();
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    dir
}

/// Path of a workspace binary (`target/<profile>/<name>`), checked to exist.
///
/// # Panics
/// When the binary has not been built: run `cargo build --workspace` (or `cargo test --workspace`).
pub fn binary(name: &str) -> PathBuf {
    existing(profile_dir().join(name))
}

/// Path of a built example (`target/<profile>/examples/<name>`), checked to exist.
///
/// # Panics
/// When the example has not been built: run `cargo build --examples` (or `cargo test --workspace`).
pub fn example(name: &str) -> PathBuf {
    existing(profile_dir().join("examples").join(name))
}

fn existing(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is not built: run `cargo test --workspace` (it builds every binary and example)",
        path.display()
    );
    path
}

/// Lines a child wrote to stdout and stderr, in arrival order, with a way to wait for one.
#[derive(Default)]
struct Output {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
    /// Streams (stdout, stderr) not yet at end of file.
    open: Mutex<usize>,
    closed: Condvar,
}

/// After the child exits, how long to wait for the rest of its output. Its descendants may
/// hold the pipes open longer (a master's workers share its stdio), so this is bounded.
const OUTPUT_DRAIN: Duration = Duration::from_secs(1);

/// A running child process whose output is captured and which is killed and reaped on drop,
/// together with every process it started (found through `/proc`), so that a failing test
/// leaves nothing behind.
pub struct Proc {
    child: Child,
    name: String,
    output: Arc<Output>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr captured (stdin is null).
    pub fn spawn(mut cmd: Command) -> std::io::Result<Proc> {
        let name = cmd.get_program().to_string_lossy().into_owned();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let output = Arc::new(Output::default());
        *output.open.lock().unwrap() = 2;
        pump(child.stdout.take().expect("piped stdout"), output.clone());
        pump(child.stderr.take().expect("piped stderr"), output.clone());
        Ok(Proc {
            child,
            name,
            output,
            status: None,
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` to the child (an error if it is already reaped).
    pub fn signal(&self, signal: Signal) -> nix::Result<()> {
        if self.status.is_some() {
            return Err(nix::errno::Errno::ESRCH);
        }
        kill(Pid::from_raw(self.pid()), signal)
    }

    /// Waits up to `timeout` for the child to exit; `None` if it is still running then.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Fine enough for the benchmark's stop-to-exit times, cheap for a reaping check.
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The exit status if the child has exited (reaping it), without blocking.
    ///
    /// Once it has exited, the output it wrote before exiting is all in [`Proc::output`].
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
            if self.status.is_some() {
                self.drain_output();
            }
        }
        self.status
    }

    /// Waits (bounded) until the output pipes reach end of file.
    fn drain_output(&self) {
        let open = self.output.open.lock().unwrap();
        let _ = self
            .output
            .closed
            .wait_timeout_while(open, OUTPUT_DRAIN, |open| *open > 0);
    }

    /// Waits up to `timeout` for an output line containing `needle`; returns that line.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> Option<String> {
        self.wait_for_lines(needle, 1, timeout)
            .map(|mut v| v.pop().expect("one line"))
    }

    /// Waits up to `timeout` until `count` output lines contain `needle`; returns them.
    pub fn wait_for_lines(
        &self,
        needle: &str,
        count: usize,
        timeout: Duration,
    ) -> Option<Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.output.lines.lock().unwrap();
        loop {
            let found: Vec<String> = lines
                .iter()
                .filter(|l| l.contains(needle))
                .cloned()
                .collect();
            if found.len() >= count {
                return Some(found);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            lines = self.output.grew.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// Waits up to `timeout` for an output line containing any of `needles`; returns it.
    pub fn wait_for_any(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.output.lines.lock().unwrap();
        loop {
            if let Some(line) = lines.iter().find(|l| needles.iter().any(|n| l.contains(n))) {
                return Some(line.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            lines = self.output.grew.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// Everything the child has written so far, one line per line.
    pub fn output(&self) -> String {
        let lines = self.output.lines.lock().unwrap();
        let mut text = lines.join("\n");
        text.push('\n');
        text
    }

    /// Number of output lines that contain `needle` so far.
    pub fn count_lines(&self, needle: &str) -> usize {
        let lines = self.output.lines.lock().unwrap();
        lines.iter().filter(|l| l.contains(needle)).count()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            // Freeze the process first, so that a master cannot respawn the workers killed
            // below; then its descendants, found while they are still its descendants.
            let _ = kill(Pid::from_raw(self.pid()), Signal::SIGSTOP);
            for pid in descendants(self.pid()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- output of {} (pid {}) ----\n{}",
                self.name,
                self.pid(),
                self.output()
            );
        }
    }
}

fn pump(stream: impl Read + Send + 'static, output: Arc<Output>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            output.lines.lock().unwrap().push(line);
            output.grew.notify_all();
        }
        *output.open.lock().unwrap() -= 1;
        output.closed.notify_all();
    });
}

/// Every live descendant of `root` (children, grandchildren, ...), read from `/proc`.
pub fn descendants(root: i32) -> Vec<i32> {
    let mut parents: Vec<(i32, i32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = parent_pid(pid) {
                parents.push((pid, ppid));
            }
        }
    }
    let mut found: Vec<i32> = Vec::new();
    let mut seen: HashSet<i32> = HashSet::from([root]);
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid) in &parents {
            if ppid == parent && seen.insert(pid) {
                found.push(pid);
                frontier.push(pid);
            }
        }
    }
    found
}

/// The parent pid of `pid` from `/proc/<pid>/stat`, `None` if it is gone.
pub fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(1)?.parse().ok()
}

/// The state letter of a process (`R`, `S`, `Z` for a zombie, ...) from `/proc/<pid>/stat`;
/// `None` if it is gone.
pub fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    stat.get(stat.rfind(')')? + 2..)?.chars().next()
}

/// Whether a process with this pid exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    process_state(pid).is_some_and(|state| state != 'Z' && state != 'X')
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    wait_until_every(timeout, Duration::from_millis(10), cond)
}

/// Polls `cond` every `every` until it holds or `timeout` passes; returns whether it held.
/// For cheap conditions timed by a benchmark, where 10 ms would be the resolution.
pub fn wait_until_every(
    timeout: Duration,
    every: Duration,
    mut cond: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// A loopback TCP port that nothing listens on now, for a tool that must be told a port
/// (`systemd-socket-activate -l`, `start_server --port`).
///
/// It is chosen below the kernel's ephemeral range, so that the client connections other
/// tests make cannot take it, and it is checked free. Another test may still take it before
/// the tool binds it: callers retry with a new port when the tool says the address is in
/// use.
pub fn unused_loopback_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .clamp(2048, 65535);
    // Spread over the range below it, differently for each test process and call.
    let span = ephemeral_low - 1024;
    let seed = std::process::id().wrapping_mul(7919);
    for _ in 0..1000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 1024 + (seed.wrapping_add(n.wrapping_mul(104_729)) % span);
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free loopback port below {ephemeral_low}");
}

/// Starts a tool that binds loopback ports it is told (see [`unused_loopback_port`]), trying
/// new ports while it reports them taken: `command(ports)` makes the command for `count`
/// ports, and the tool is up once it prints a line containing `ready`.
///
/// # Panics
/// When five tries all find a port taken, or the tool prints neither line in `timeout`.
pub fn spawn_on_free_ports(
    count: usize,
    ready: &str,
    timeout: Duration,
    mut command: impl FnMut(&[u16]) -> Command,
) -> (Proc, Vec<u16>) {
    const TAKEN: &str = "Address already in use";
    for _ in 0..5 {
        let ports: Vec<u16> = (0..count).map(|_| unused_loopback_port()).collect();
        let proc = Proc::spawn(command(&ports)).expect("spawn the tool");
        match proc.wait_for_any(&[ready, TAKEN], timeout) {
            Some(line) if line.contains(ready) => return (proc, ports),
            Some(_) => continue, // dropping the process reaps it
            None => panic!(
                "the tool printed neither {ready:?} nor {TAKEN:?}:\n{}",
                proc.output()
            ),
        }
    }
    panic!("five tries, every time a port was taken");
}

/// The pids of the processes running exactly `argv` (their `/proc/PID/cmdline`).
pub fn pids_running(argv: &[&str]) -> Vec<i32> {
    let wanted: Vec<u8> = argv
        .iter()
        .flat_map(|arg| arg.bytes().chain(std::iter::once(0)))
        .collect();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == wanted))
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}
