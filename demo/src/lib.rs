//! What the demo runs, beside its workers and the master: real processes reaped on drop, a
//! real `einhorn-master`, a keep-alive load client, and the upgrades under load it reports on.
//!
//! The workspace's tests and benchmarks use the same pieces (the root package's test support
//! re-exports them), so that what the demo shows is what the tests assert.
//! - [`harness`] starts real processes and guarantees they are reaped;
//! - [`master`] runs the real `einhorn-master`;
//! - [`load`] is a keep-alive HTTP/1.1 load client;
//! - [`upgrades`] runs workers under the master through upgrades under load (the demo and
//!   the load benchmark).

pub mod harness;
pub mod load;
pub mod master;
pub mod upgrades;

/// Prints a run's results as the demo and the benchmark do: as JSON on stdout with `json`,
/// else as `text`; and as JSON to the file `json_out` too, when given (tests read it there:
/// a captured stdout interleaves with stderr).
///
/// # Errors
/// When the file cannot be written, naming it.
pub fn print_results(
    results: &impl serde::Serialize,
    text: impl FnOnce() -> String,
    json: bool,
    json_out: Option<&std::path::Path>,
) -> Result<(), String> {
    let encoded = serde_json::to_string_pretty(results).map_err(|e| e.to_string())?;
    if let Some(path) = json_out {
        std::fs::write(path, &encoded)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if json {
        println!("{encoded}");
    } else {
        print!("{}", text());
    }
    Ok(())
}
