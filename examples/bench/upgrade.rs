//! Repeated upgrades under `einhorn-master`: our workers beside each framework's baseline
//! (the same routes with the framework's own graceful stop), under HTTP/1.1 keep-alive load
//! from the in-repo client, and under HTTP/2 from hyper-util's pooled client and h2load.

use std::time::Duration;

use graceful_listener_suite::harness::{is_alive, wait_until};
use graceful_listener_suite::upgrades::{
    self, Contender, ContenderResult, Programs, UpgradeConfig, serving_pids, start_master,
    stop_master,
};
use graceful_listener_suite::{h2load, load_h2};
use serde::Serialize;

/// Ours and the baseline of one framework, under HTTP/1.1 load.
#[derive(Debug, Serialize)]
pub(crate) struct Http1Upgrades {
    pub(crate) framework: String,
    pub(crate) workers: usize,
    pub(crate) ours: ContenderResult,
    pub(crate) baseline: ContenderResult,
}

pub(crate) fn http1(framework: &str, config: &UpgradeConfig) -> Result<Http1Upgrades, String> {
    let [ours, baseline] = upgrades::contenders(framework)
        .ok_or_else(|| format!("{framework} has no baseline to compare with"))?;
    Ok(Http1Upgrades {
        framework: framework.to_owned(),
        workers: config.workers,
        ours: upgrades::run(&ours, config)?,
        baseline: upgrades::run(&baseline, config)?,
    })
}

/// One contender under HTTP/2 load across upgrades.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Http2Result {
    pub(crate) upgrades: usize,
    /// hyper-util's pooled client (64 tasks): requests answered, and failed.
    pub(crate) pooled_ok: u64,
    pub(crate) pooled_failed: u64,
    pub(crate) pooled_first_errors: Vec<String>,
    /// h2load, one run per upgrade (`None`: not installed).
    pub(crate) h2load: Option<H2loadCounts>,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct H2loadCounts {
    /// Requests sent that got a 2xx.
    pub(crate) succeeded: usize,
    /// Requests sent that did not.
    pub(crate) sent_and_failed: usize,
    /// Requests h2load queued after reading a GOAWAY and never sent (see the book).
    pub(crate) never_sent: usize,
}

#[derive(Debug, Serialize)]
pub(crate) struct Http2Upgrades {
    pub(crate) framework: String,
    pub(crate) ours: Http2Result,
    pub(crate) baseline: Http2Result,
}

/// Upgrades of 2 workers with HTTP/2 load from both clients; `upgrades` rounds.
fn http2_run(contender: &Contender, upgrades: usize) -> Result<Http2Result, String> {
    let master = start_master(&Programs::workspace(), contender, 2, 1);
    let addr = master.addr(0);
    let pooled = load_h2::start(addr, 64, Duration::from_secs(10));
    let logs = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut counts = h2load::installed().then(H2loadCounts::default);
    for round in 1..=upgrades {
        let log_path = logs.path().join(format!("round-{round}.log"));
        let h2load = match counts {
            Some(_) => {
                let proc = h2load::spawn(addr, &log_path);
                proc.wait_for_line(
                    "Main benchmark duration is started",
                    Duration::from_secs(30),
                )
                .ok_or_else(|| format!("h2load did not start:\n{}", proc.output()))?;
                Some(proc)
            }
            None => None,
        };
        // Load flowing on the old workers before the upgrade.
        if !pooled.wait_answers(200, Duration::from_secs(30)) {
            return Err(format!("upgrade {round}: no load before it"));
        }
        let old = serving_pids(&master)?;
        einhorn_master::client::upgrade(&master.socket, upgrades::CONTROL_TIMEOUT)
            .map_err(|e| format!("upgrade {round}: {e}"))?;
        if !wait_until(Duration::from_secs(30), || {
            old.iter().all(|&pid| !is_alive(pid))
        }) {
            return Err(format!(
                "upgrade {round}: old workers still alive after 30 s"
            ));
        }
        if let (Some(mut proc), Some(counts)) = (h2load, counts.as_mut()) {
            proc.wait_timeout(Duration::from_secs(30))
                .ok_or_else(|| format!("h2load did not finish:\n{}", proc.output()))?;
            let log = h2load::read_log(&std::fs::read_to_string(&log_path).unwrap_or_default());
            counts.succeeded += log.succeeded;
            counts.sent_and_failed += log.failed.len();
            counts.never_sent += log.never_sent;
        }
    }
    let report = pooled.stop();
    stop_master(master)?;
    Ok(Http2Result {
        upgrades,
        pooled_ok: report.ok,
        pooled_failed: report.failed,
        pooled_first_errors: report.first_errors.iter().take(3).cloned().collect(),
        h2load: counts,
    })
}

pub(crate) fn http2(framework: &str, upgrades: usize) -> Result<Http2Upgrades, String> {
    let [ours, baseline] = upgrades::contenders(framework)
        .ok_or_else(|| format!("{framework} has no baseline to compare with"))?;
    Ok(Http2Upgrades {
        framework: framework.to_owned(),
        ours: http2_run(&ours, upgrades)?,
        baseline: http2_run(&baseline, upgrades)?,
    })
}
