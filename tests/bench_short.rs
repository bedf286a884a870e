//! The load benchmark's short mode, run as CI runs it: every section works end to end, and
//! what the short run can judge holds: ours loses no request in its upgrades (HTTP/1.1 for
//! axum, warp and actix; HTTP/2 for axum), hostile clients do not hold a worker past its
//! target, and the timeline picture is written. Ratios are not judged here: a short run on a
//! shared machine says nothing about speed.

use std::process::Command;
use std::time::Duration;

use graceful_listener_suite::harness::{Proc, example};

#[test]
fn the_short_benchmark_runs_every_section_and_ours_loses_nothing() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let svg = dir.path().join("timeline.svg");
    let results = dir.path().join("bench.json");
    let mut cmd = Command::new(example("bench"));
    cmd.args(["--short", "--svg"])
        .arg(&svg)
        .arg("--json-out")
        .arg(&results);
    let mut bench = Proc::spawn(cmd).expect("start the benchmark");
    let status = bench
        .wait_timeout(Duration::from_secs(600))
        .expect("the benchmark finishes");
    let output = bench.output();
    assert!(status.success(), "{output}");
    let json = std::fs::read_to_string(&results).expect("the JSON results");
    let summary: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");

    let engine = summary["engine"].as_array().unwrap();
    assert_eq!(engine.len(), 4, "{summary:#}");
    for result in engine {
        assert!(
            result["throughput"]["ours"]["rps"].as_f64().unwrap() > 0.0,
            "{result:#}"
        );
        assert!(result["memory"]["ours_bytes"].as_f64().unwrap() > 0.0);
    }
    for hostile in summary["hostile"].as_array().unwrap() {
        let (exit, target) = (
            hostile["exit_s"].as_f64().unwrap(),
            hostile["target_s"].as_f64().unwrap(),
        );
        // The target, with slack for a machine busy building and testing.
        assert!(exit <= target + 1.5, "{hostile:#}");
    }
    assert_eq!(summary["lifecycle"].as_array().unwrap().len(), 4);
    let upgrades = summary["upgrades"].as_array().unwrap();
    assert_eq!(upgrades.len(), 3, "axum, warp and actix have baselines");
    for run in upgrades {
        let ours = &run["ours"];
        assert_eq!(ours["counts"]["failed"], 0, "{ours:#}");
        assert!(ours["counts"]["ok"].as_u64().unwrap() > 0);
        assert!(!ours["timeline"].as_array().unwrap().is_empty());
        for upgrade in ours["upgrades"].as_array().unwrap() {
            assert_eq!(upgrade["replaced_every_pid"], true, "{upgrade:#}");
        }
    }
    let http2 = &summary["http2"][0]["ours"];
    assert_eq!(http2["pooled_failed"], 0, "{http2:#}");
    assert!(http2["pooled_ok"].as_u64().unwrap() > 0, "{http2:#}");
    if let Some(h2load) = http2["h2load"].as_object() {
        assert_eq!(h2load["sent_and_failed"], 0, "{http2:#}");
    }
    let picture = std::fs::read_to_string(&svg).expect("the timeline picture");
    assert!(picture.starts_with("<svg"), "{}", &picture[..100]);
    assert!(picture.contains("requests/s"));
}
