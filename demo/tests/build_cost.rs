//! What the README's first command costs: the demo's build holds only what the demo runs, and
//! a second build compiles nothing.
//!
//! Both run the cargo that runs the tests (`CARGO`) on this workspace, in the same target
//! directory, so the second build costs only cargo's check that everything is fresh.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

/// The demo's package.
const DEMO: &str = "graceful-listener-demo";

/// What the demo must not build: the benchmarks', the property tests', the other frameworks'
/// and the WebSocket tests' stacks, and the workspace's test support.
const NOT_IN_THE_DEMO: [&str; 6] = [
    "criterion",
    "proptest",
    "actix-web",
    "warp",
    "tungstenite",
    "graceful-listener-suite",
];

/// `cargo ARGS` on this workspace, as a user would type it: without the variables cargo sets
/// for a test (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...). Build scripts that read one of those
/// would see it changed and rebuild their crate, and the crates above it, on every run.
fn cargo(args: &[&str]) -> Output {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the demo is a folder of the workspace");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(args).current_dir(workspace);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let set_by_cargo = [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
            "OUT_DIR",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix));
        if set_by_cargo {
            cmd.env_remove(&*name);
        }
    }
    let output = cmd.output().expect("run cargo");
    assert!(
        output.status.success(),
        "cargo {} failed ({}):\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn the_demo_builds_no_benchmark_property_test_actix_warp_or_websocket_stack() {
    let tree = cargo(&["tree", "-p", DEMO, "-e", "normal", "--prefix", "none"]);
    let tree = String::from_utf8_lossy(&tree.stdout);
    let crates: BTreeSet<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert!(crates.contains("einhorn-master"), "{tree}");
    assert!(crates.contains("einhorn-axum"), "{tree}");
    let found: Vec<&str> = NOT_IN_THE_DEMO
        .into_iter()
        .filter(|name| crates.contains(name))
        .collect();
    assert!(
        found.is_empty(),
        "the demo's dependency tree holds {found:?}; `cargo tree -p {DEMO} -e normal -i NAME` \
         says through what:\n{tree}"
    );
}

#[test]
fn a_second_build_of_the_demo_compiles_nothing() {
    let build = ["build", "-p", DEMO, "--message-format", "json"];
    cargo(&build);
    let second = cargo(&build);
    let compiled: Vec<String> = String::from_utf8_lossy(&second.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact" && message["fresh"] == false)
        .map(|message| message["target"]["name"].to_string())
        .collect();
    assert!(
        compiled.is_empty(),
        "the second build compiled {compiled:?}; `cargo build -p {DEMO} -v` says why \
         (a line `Dirty ...`)"
    );
}
