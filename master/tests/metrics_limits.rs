//! The `/metrics` endpoint against ordinary and hostile clients, over real sockets on
//! 127.0.0.1: its routes, half-sent requests held open (the process's fds stay bounded, a
//! good request is answered once the head timeout has closed them), oversized heads, and the
//! server thread's signal mask. Every wait is bounded.
//!
//! The tests count this process's fds, so they run one at a time ([`SERIAL`]): each starts
//! its own server with a recorder of its own (only one can be the process's).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use einhorn_master::metrics_http::{Limits, MAX_CONNECTIONS, MetricsServer, THREAD_NAME, bind};
use einhorn_master::reexec::MASTER_SIGNALS;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use support::{WAIT, status_field, wait_until};

static SERIAL: Mutex<()> = Mutex::new(());

/// Short enough that the squatters' test waits for a few rounds of it only.
const HEAD_TIMEOUT: Duration = Duration::from_millis(300);

/// A server on an ephemeral port with its own recorder (kept to record into), and its
/// thread's id.
fn start() -> (MetricsServer, PrometheusRecorder, i32) {
    let before = server_threads();
    let recorder = PrometheusBuilder::new().build_recorder();
    let listener = bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    let limits = Limits {
        head_timeout: HEAD_TIMEOUT,
        ..Limits::default()
    };
    let server = MetricsServer::start(listener, recorder.handle(), limits).expect("start");
    // The thread names itself once running.
    let mut tid = None;
    let named = wait_until(WAIT, || {
        tid = server_threads().into_iter().find(|t| !before.contains(t));
        tid.is_some()
    });
    assert!(named, "no new {THREAD_NAME} thread");
    (server, recorder, tid.unwrap())
}

/// The ids of this process's threads named [`THREAD_NAME`].
fn server_threads() -> Vec<i32> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end() == THREAD_NAME)
        })
        .filter_map(|task| task.file_name().to_str()?.parse().ok())
        .collect()
}

/// Sends `request` and reads the whole response (the server closes after one); what was
/// read when the server closed or reset the connection, or the read timed out.
fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    // A refused oversized head may reset the connection before all of it is written.
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

fn get(addr: SocketAddr, target: &str) -> String {
    exchange(
        addr,
        format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )
}

/// This process's open fds.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn get_metrics_answers_with_the_metrics_other_paths_404_other_methods_405() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (server, recorder, _) = start();
    metrics::with_local_recorder(&recorder, || {
        metrics::counter!("metrics_limits_test_total").increment(7);
    });
    let addr = server.addr();

    for target in ["/metrics", "/metrics?name[]=x"] {
        let response = get(addr, target);
        assert!(
            response.starts_with("HTTP/1.1 200 OK\r\n"),
            "{target}: {response}"
        );
        let lower = response.to_ascii_lowercase();
        assert!(
            lower.contains("content-type: text/plain; version=0.0.4\r\n"),
            "{response}"
        );
        assert!(lower.contains("connection: close\r\n"), "{response}");
        assert!(
            response.contains("metrics_limits_test_total 7\n"),
            "{response}"
        );
    }

    let response = get(addr, "/");
    assert!(response.starts_with("HTTP/1.1 404 "), "{response}");
    let response = get(addr, "/metricsx");
    assert!(response.starts_with("HTTP/1.1 404 "), "{response}");

    let response = exchange(
        addr,
        format!("POST /metrics HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    );
    assert!(response.starts_with("HTTP/1.1 405 "), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("allow: get\r\n"),
        "{response}"
    );
}

#[test]
fn the_listener_is_the_one_handed_in_and_stays_open() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (addr, fd) = {
        let (server, _recorder, _) = start();
        (server.addr(), server.fd())
    };
    // The fd is the listening socket, still open after the handle (and the recorder) are gone.
    let bound: nix::sys::socket::SockaddrStorage =
        nix::sys::socket::getsockname(fd).expect("getsockname on the listener's fd");
    assert_eq!(bound.as_sockaddr_in().map(|a| a.port()), Some(addr.port()));
    assert!(get(addr, "/metrics").starts_with("HTTP/1.1 200 "));
}

#[test]
fn half_sent_requests_hold_at_most_the_limit_of_fds_and_time_out() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const SQUATTERS: usize = 200;
    // Sockets of the server's own (an accepted connection or two in flight) on top of the
    // limit, and the odd fd another thread of the test harness opens.
    const MARGIN: usize = 8;
    let (server, _recorder, _) = start();
    let addr = server.addr();
    // Served once before the baseline: whatever the server opens once for all is counted in.
    assert!(get(addr, "/metrics").starts_with("HTTP/1.1 200 "));
    let baseline = open_fds();

    let squatters: Vec<TcpStream> = (0..SQUATTERS)
        .map(|_| {
            let mut stream = TcpStream::connect(addr).expect("connect");
            stream.write_all(b"GET /metr").expect("send half a request");
            stream
        })
        .collect();
    // The squatters' own sockets are this process's fds too: they are not the server's.
    let servers_fds = || open_fds().saturating_sub(baseline + SQUATTERS);

    // A good request waits behind them until the head timeout has closed enough of them;
    // the server's fds are sampled all along.
    let good = std::thread::spawn(move || get(addr, "/metrics"));
    let mut most = 0;
    let deadline = Instant::now() + WAIT;
    while !good.is_finished() {
        most = most.max(servers_fds());
        assert!(Instant::now() < deadline, "no answer within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    let response = good.join().unwrap();
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert!(
        most <= MAX_CONNECTIONS + MARGIN,
        "the server held {most} fds for {SQUATTERS} half-sent requests (limit {MAX_CONNECTIONS})"
    );
    assert!(most > 0, "the squatters were never accepted");

    drop(squatters);
    assert!(
        wait_until(WAIT, || open_fds() <= baseline),
        "fds did not return to {baseline} after the clients closed: {}",
        open_fds()
    );
}

#[test]
fn an_oversized_head_is_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (server, _recorder, _) = start();
    let addr = server.addr();
    let filler = "a".repeat(100);
    let headers: String = (0..92)
        .map(|i| format!("X-Filler-{i}: {filler}\r\n"))
        .collect();
    assert!(headers.len() >= 9 * 1024);
    let response = exchange(
        addr,
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n").as_bytes(),
    );
    assert!(
        !response.starts_with("HTTP/1.1 200 "),
        "an oversized head was answered: {response}"
    );
    // The server goes on.
    assert!(get(addr, "/metrics").starts_with("HTTP/1.1 200 "));
}

#[test]
fn the_server_thread_has_the_master_signals_blocked() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_server, _recorder, tid) = start();
    let master: u64 = MASTER_SIGNALS.iter().map(|&s| 1u64 << (s as i32 - 1)).sum();
    let blocked =
        |tid: i32| status_field(tid, "SigBlk").and_then(|mask| u64::from_str_radix(&mask, 16).ok());
    let mask = blocked(tid).expect("SigBlk");
    assert_eq!(
        mask & master,
        master,
        "{THREAD_NAME} thread {tid}: SigBlk {mask:x}"
    );
    // The caller's mask is as it was: this thread blocks none of them.
    let own = blocked(nix::unistd::gettid().as_raw()).expect("SigBlk");
    assert_eq!(own & master, 0, "the caller's SigBlk {own:x}");
}

/// The CPU time of a thread of this process, in clock ticks, from its `stat` file (opened
/// ahead: out of fds, none could be opened; read afresh from offset 0).
fn cpu_ticks(stat: &std::fs::File) -> u64 {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 1024];
    let n = stat.read_at(&mut buf, 0).expect("read stat");
    let stat = std::str::from_utf8(&buf[..n]).unwrap();
    // After the command's closing parenthesis: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn out_of_fds_the_accept_loop_backs_off_instead_of_spinning() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (server, _recorder, tid) = start();
    let addr = server.addr();
    // The client's socket made before the process runs out of fds, connected after: the
    // server's accept is what fails.
    let client = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let stat = std::fs::File::open(format!("/proc/self/task/{tid}/stat")).unwrap();
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let highest = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|fd| fd.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, highest + 1, hard).unwrap();
    // The holes below the limit filled: no fd is left to allocate (bounded by the limit).
    let mut fillers = Vec::new();
    while let Ok(file) = std::fs::File::open("/dev/null") {
        fillers.push(file);
        assert!(
            fillers.len() as u64 <= highest,
            "the fd limit does not hold"
        );
    }

    client.connect(&addr.into()).expect("connect");
    let mut client = TcpStream::from(client);
    client.set_read_timeout(Some(WAIT)).unwrap();
    client
        .write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    // A server spinning on EMFILE would take a whole core: it retries every 100 ms.
    let before = cpu_ticks(&stat);
    let began = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let took = cpu_ticks(&stat) - before;
    let elapsed = began.elapsed();
    drop(fillers);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    // 100 ticks a second: a spinning thread would show close to 100.
    assert!(
        took <= 20,
        "the accept loop took {took} ticks of CPU in {elapsed:?} out of fds"
    );

    // With fds again, the waiting connection is accepted and answered.
    let mut response = Vec::new();
    let _ = client.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
}
