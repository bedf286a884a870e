//! The demo, in a short configuration: ours loses no request across upgrades, and every
//! upgrade replaces every worker. (The baseline's failures are reported, not asserted: they
//! depend on timing.)
//!
//! The axum run uses this package's own master and workers; the actix-web one the
//! workspace's examples, which `cargo test --workspace` builds.

use std::process::Command;
use std::time::Duration;

use graceful_listener_demo::harness::Proc;

#[test]
fn axum_ours_loses_no_request_and_every_upgrade_replaces_every_pid() {
    ours_loses_no_request_and_every_upgrade_replaces_every_pid("axum");
}

#[test]
fn actix_ours_loses_no_request_and_every_upgrade_replaces_every_pid() {
    ours_loses_no_request_and_every_upgrade_replaces_every_pid("actix");
}

fn ours_loses_no_request_and_every_upgrade_replaces_every_pid(framework: &str) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let results = dir.path().join("demo.json");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_demo"));
    cmd.args(["--framework", framework])
        .arg("--json-out")
        .arg(&results);
    cmd.args(["--workers", "3", "--upgrades", "3", "--connections", "16"])
        .args(["--interval", "0.7"]);
    let mut demo = Proc::spawn(cmd).expect("start the demo");
    let status = demo
        .wait_timeout(Duration::from_secs(240))
        .expect("the demo finishes");
    assert!(status.success(), "{}", demo.output());
    let json = std::fs::read_to_string(&results).expect("the JSON summary");
    let summary: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");

    let results = summary["results"].as_array().unwrap();
    let ours = results
        .iter()
        .find(|r| r["key"] == "ours")
        .expect("ours ran");
    assert!(ours["counts"]["ok"].as_u64().unwrap() > 0, "{ours:#}");
    assert_eq!(
        ours["counts"]["failed"], 0,
        "ours must not lose a request: {ours:#}"
    );
    let upgrades = ours["upgrades"].as_array().unwrap();
    assert_eq!(upgrades.len(), 3);
    for upgrade in upgrades {
        assert_eq!(upgrade["replaced_every_pid"], true, "{upgrade:#}");
        assert_eq!(
            upgrade["new_pids"].as_array().unwrap().len(),
            3,
            "{upgrade:#}"
        );
        assert!(upgrade["error"].is_null(), "{upgrade:#}");
    }
    let baseline = results
        .iter()
        .find(|r| r["key"] == "baseline")
        .expect("baseline ran");
    assert_eq!(summary["framework"], framework);
    eprintln!(
        "{framework} baseline failed requests: {}",
        baseline["counts"]["failed"]
    );
}
