//! Ours against the baseline, for the book: `axum-hello` (einhorn-axum) and `axum-baseline`
//! (`axum::serve(..).with_graceful_shutdown`, written by hand) under the same upgrades and
//! the same keep-alive load. A measurement, not a check: ignored by default.
//!
//! `cargo build --workspace --examples && cargo test --test http_compare -- --ignored --nocapture`
//! (`HTTP_COMPARE_RUNS=N` for more runs of each.)

mod http_support;

use std::time::Duration;

use http_support::{UpgradePlan, upgrades_under_load};

#[test]
#[ignore = "a measurement for the book; run it by hand"]
fn ours_against_axum_serve_with_graceful_shutdown() {
    let plan = UpgradePlan {
        workers: 2,
        upgrades: 10,
        connections: 32,
        pause: Duration::from_millis(500),
        slow_request: false,
    };
    let runs: usize = std::env::var("HTTP_COMPARE_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    eprintln!("plan: {plan:?}");
    for run in 1..=runs {
        for example in ["axum-baseline", "axum-hello"] {
            let outcome = upgrades_under_load(example, &plan);
            eprintln!("run {run} {example}: {}", outcome.report);
        }
    }
}
