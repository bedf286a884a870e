//! An HTTP/2 load client as many applications run one: hyper-util's pooled client, HTTP/2
//! with prior knowledge, N tasks sending requests back to back through it, multiplexed on
//! the connections the pool keeps. The pool retries what it knows was not sent; every other
//! failure is counted, with the first few errors kept.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::load::parse_pid;

/// What an HTTP/2 load run saw.
#[derive(Debug, Clone, Default)]
pub struct H2Report {
    /// Requests answered with a 2xx status and a whole body.
    pub ok: u64,
    /// Requests that failed.
    pub failed: u64,
    /// The first errors, as text.
    pub first_errors: Vec<String>,
    /// Answers by worker pid.
    pub pids: BTreeMap<u32, u64>,
}

impl fmt::Display for H2Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ok, {} failed, pids {:?}",
            self.ok, self.failed, self.pids
        )?;
        if !self.first_errors.is_empty() {
            write!(f, ", first errors: {:?}", self.first_errors)?;
        }
        Ok(())
    }
}

/// An HTTP/2 load run in progress on its own thread.
#[derive(Debug)]
pub struct H2Load {
    shared: Arc<Mutex<H2Report>>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

/// Starts `tasks` tasks sending `GET /` to `addr` through one pooled HTTP/2 client, each
/// request bounded by `timeout`, until stopped.
///
/// # Panics
/// When the thread or its runtime cannot be created.
pub fn start(addr: SocketAddr, tasks: usize, timeout: Duration) -> H2Load {
    start_with(addr, tasks, timeout, None)
}

/// As [`start`], over TLS with this client configuration when given (`https://`, ALPN `h2`).
///
/// # Panics
/// As [`start`].
pub fn start_with(
    addr: SocketAddr,
    tasks: usize,
    timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> H2Load {
    let shared = Arc::new(Mutex::new(H2Report::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let thread = std::thread::Builder::new()
        .name("load-h2".to_owned())
        .spawn({
            let (shared, stop) = (shared.clone(), stop.clone());
            move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .expect("load runtime");
                runtime.block_on(drive(addr, tasks, timeout, tls, shared, stop));
            }
        })
        .expect("load thread");
    H2Load {
        shared,
        stop,
        thread,
    }
}

impl H2Load {
    /// What the run has seen so far.
    pub fn snapshot(&self) -> H2Report {
        self.shared.lock().unwrap().clone()
    }

    /// Waits until `n` more requests have been answered than now; `false` if that takes
    /// longer than `timeout`. Before an upgrade: load is flowing on the workers it replaces.
    pub fn wait_answers(&self, n: u64, timeout: Duration) -> bool {
        let target = self.snapshot().ok + n;
        crate::harness::wait_until(timeout, || self.snapshot().ok >= target)
    }

    /// Ends the run (requests in flight complete) and returns its report.
    ///
    /// # Panics
    /// When the load thread panicked.
    pub fn stop(self) -> H2Report {
        self.stop.store(true, Ordering::Release);
        self.thread.join().expect("load thread panicked");
        self.shared.lock().unwrap().clone()
    }
}

async fn drive(
    addr: SocketAddr,
    tasks: usize,
    timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
    shared: Arc<Mutex<H2Report>>,
    stop: Arc<AtomicBool>,
) {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    let (connector, scheme) = match tls {
        Some(config) => (
            hyper_rustls::HttpsConnectorBuilder::new()
                // The connector offers `h2` itself (and refuses a configuration with ALPN).
                .with_tls_config({
                    let mut config = (*config).clone();
                    config.alpn_protocols.clear();
                    config
                })
                .https_only()
                .enable_http2()
                .wrap_connector(http),
            "https",
        ),
        None => (
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(plain_placeholder())
                .https_or_http()
                .enable_http2()
                .wrap_connector(http),
            "http",
        ),
    };
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector);
    let uri: hyper::Uri = format!("{scheme}://{addr}/").parse().expect("uri");
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let (client, uri, shared, stop) =
            (client.clone(), uri.clone(), shared.clone(), stop.clone());
        set.spawn(async move {
            while !stop.load(Ordering::Acquire) {
                let outcome = tokio::time::timeout(timeout, async {
                    let response = client
                        .get(uri.clone())
                        .await
                        .map_err(|e| format!("{e:?}"))?;
                    let status = response.status();
                    let body = response
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| format!("body: {e:?}"))?
                        .to_bytes();
                    if !status.is_success() {
                        return Err(format!("status {status}"));
                    }
                    Ok(parse_pid(&body))
                })
                .await
                .unwrap_or_else(|_| Err("timeout".to_owned()));
                let mut report = shared.lock().unwrap();
                match outcome {
                    Ok(pid) => {
                        report.ok += 1;
                        if let Some(pid) = pid {
                            *report.pids.entry(pid).or_default() += 1;
                        }
                    }
                    Err(e) => {
                        report.failed += 1;
                        if report.first_errors.len() < 5 {
                            report.first_errors.push(e);
                        }
                    }
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
}

/// A client configuration for a connector that only ever speaks plain `http://`: never used
/// for a handshake.
fn plain_placeholder() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}
