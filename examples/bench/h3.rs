//! The HTTP/3 relay's cost: round trips on one request stream whose client datagrams reach
//! their worker directly, against one whose datagrams go through another worker's relay (a
//! worker draining after an upgrade, still finishing that request), alternated in rounds;
//! and the relaying worker's CPU time per datagram it relays.
//!
//! `h3-hello` under `einhorn-master -b 127.0.0.1:0,udp -n 1`: an echo request is started on
//! the first worker, an upgrade starts the second (which reads the socket from then on), and
//! a second echo request is started on it. Each round then times `--rounds` 1 KiB round
//! trips on each, in turn; the CPU time the second worker spends while only the relayed
//! stream runs, over the datagrams its client sent meanwhile (each of which it relayed), is
//! the cost per relayed datagram.

use std::time::Duration;

use graceful_listener_suite::h3::H3Clients;
use graceful_listener_suite::harness::example;
use graceful_listener_suite::master::Master;
use graceful_listener_suite::tls::TestCertificate;
use serde::Serialize;

use crate::engine::median;

/// The relay's figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RelayCost {
    /// Round trips timed on each stream.
    pub(crate) round_trips: usize,
    pub(crate) direct_p50_us: f64,
    pub(crate) direct_p99_us: f64,
    pub(crate) relayed_p50_us: f64,
    pub(crate) relayed_p99_us: f64,
    /// Median over the rounds of (relayed p99 - direct p99).
    pub(crate) added_p99_us: f64,
    /// The relaying worker's CPU time (user + system) per datagram it relayed.
    pub(crate) cpu_per_relayed_datagram_us: f64,
    /// The same worker's CPU time per datagram of its own stream (quinn's whole work on it).
    pub(crate) cpu_per_direct_datagram_us: f64,
}

/// A process's CPU time so far (user + system), from `/proc/PID/stat`.
fn cpu_time(pid: i32) -> Result<Duration, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / hz))
}

fn percentile(times: &mut [Duration], p: f64) -> f64 {
    times.sort_unstable();
    let i = ((times.len() as f64 - 1.0) * p).round() as usize;
    times[i].as_secs_f64() * 1e6
}

/// `round_trips` round trips on `stream`: their times, and `reader`'s CPU time per datagram
/// the client sent meanwhile, in microseconds.
async fn phase(
    stream: &mut graceful_listener_suite::h3::EchoStream,
    reader: i32,
    round_trips: usize,
) -> Result<(Vec<Duration>, f64), String> {
    let sent = stream.conn.stats().udp_tx.datagrams;
    let cpu = cpu_time(reader)?;
    let mut times = Vec::with_capacity(round_trips);
    for _ in 0..round_trips {
        times.push(stream.round(1024).await.map_err(|e| e.to_string())?);
    }
    let cpu = cpu_time(reader)?.saturating_sub(cpu);
    let datagrams = stream.conn.stats().udp_tx.datagrams - sent;
    Ok((times, cpu.as_secs_f64() * 1e6 / datagrams.max(1) as f64))
}

pub(crate) fn relay(pairs: usize, round_trips: usize) -> Result<RelayCost, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let cert = TestCertificate::new(dir.path());
    let mut command = vec![example("h3-hello").display().to_string()];
    command.extend(cert.worker_args());
    command.extend(["--drain-timeout".to_owned(), "600".to_owned()]);
    let master = Master::start(
        &["-b", "127.0.0.1:0,udp", "-n", "1", "-m", "manual"],
        &command,
    );
    let first = master.wait_serving(1)[0];
    let addr = master.addr(0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let measured = runtime.block_on(async {
        let clients = H3Clients::new(addr, cert.client_config(&[b"h3"]), 0);
        let mut old_client = clients.client();
        let mut relayed = old_client
            .echo_stream("/echo")
            .await
            .map_err(|e| e.to_string())?;
        relayed.round(1024).await.map_err(|e| e.to_string())?;
        // Blocking calls off the runtime's one thread: the clients' connections live on it.
        let reader = tokio::task::block_in_place(|| {
            einhorn_master::client::upgrade(&master.socket, Duration::from_secs(60))
                .map_err(|e| format!("upgrade: {e}"))?;
            master.wait_for_line("another worker reads the socket");
            let serving = master.state().serving_pids();
            serving
                .into_iter()
                .find(|&pid| pid != first)
                .ok_or_else(|| "no new worker after the upgrade".to_owned())
        })?;
        let mut new_client = clients.client();
        let mut direct = new_client
            .echo_stream("/echo")
            .await
            .map_err(|e| e.to_string())?;
        for _ in 0..100 {
            direct.round(1024).await.map_err(|e| e.to_string())?;
            relayed.round(1024).await.map_err(|e| e.to_string())?;
        }
        let (mut direct_all, mut relayed_all) = (Vec::new(), Vec::new());
        let (mut added, mut relay_cpu, mut direct_cpu) = (Vec::new(), Vec::new(), Vec::new());
        for pair in 0..pairs {
            // Alternate which goes first.
            let ((mut d, dc), (mut r, rc)) = if pair % 2 == 0 {
                let d = phase(&mut direct, reader, round_trips).await?;
                (d, phase(&mut relayed, reader, round_trips).await?)
            } else {
                let r = phase(&mut relayed, reader, round_trips).await?;
                (phase(&mut direct, reader, round_trips).await?, r)
            };
            added.push(percentile(&mut r, 0.99) - percentile(&mut d, 0.99));
            relay_cpu.push(rc);
            direct_cpu.push(dc);
            direct_all.extend(d);
            relayed_all.extend(r);
        }
        direct.finish().await.map_err(|e| e.to_string())?;
        relayed.finish().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(RelayCost {
            round_trips: direct_all.len(),
            direct_p50_us: percentile(&mut direct_all, 0.5),
            direct_p99_us: percentile(&mut direct_all, 0.99),
            relayed_p50_us: percentile(&mut relayed_all, 0.5),
            relayed_p99_us: percentile(&mut relayed_all, 0.99),
            added_p99_us: median(added),
            cpu_per_relayed_datagram_us: median(relay_cpu),
            cpu_per_direct_datagram_us: median(direct_cpu),
        })
    });
    measured.map_err(|e| format!("{e}\nthe master's output:\n{}", master.output()))
}
