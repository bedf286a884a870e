//! The key ring the master hands to its workers (`EINHORN_KEYS_FD`), read as a worker reads
//! it: rotated on schedule (`--key-rotation`), the current key kept as the previous one, the
//! stable secret never changed; and the same ring after the master re-execs itself.

mod support;

use graceful_listener::keyring::{RECORD_LEN, Record};
use support::{Master, WAIT, environ, wait_until};

/// The ring worker `pid` reads now, through its own fd.
fn ring_of(pid: i32) -> Record {
    let fd = environ(pid)
        .into_iter()
        .find(|(k, _)| k == "EINHORN_KEYS_FD")
        .map(|(_, v)| v)
        .expect("EINHORN_KEYS_FD");
    // A read may race the master's write (a bad checksum): read again, bounded.
    let mut last = None;
    for _ in 0..100 {
        let bytes = std::fs::read(format!("/proc/{pid}/fd/{fd}")).expect("the worker's ring");
        assert_eq!(bytes.len(), RECORD_LEN);
        match Record::parse(&bytes) {
            Ok(record) => return record,
            Err(e) => last = Some(e),
        }
    }
    panic!("no whole ring in 100 reads: {last:?}");
}

#[test]
fn the_ring_rotates_on_schedule_and_outlives_a_reload_of_the_master() {
    let master = Master::start(
        &["-n", "1", "-m", "0", "--key-rotation", "1"],
        &["sleep", "1000"],
    );
    let worker = master.wait_serving(1)[0];
    let first = ring_of(worker);
    assert_eq!(first.rotation_secs, 1);
    master.wait_for_line("ticket keys rotated (serial");
    let mut second = first.clone();
    assert!(wait_until(WAIT, || {
        second = ring_of(worker);
        second.serial > first.serial
    }));
    assert_ne!(second.current, first.current);
    assert_eq!(
        second.stable, first.stable,
        "the stable secret never rotates"
    );
    if second.serial == first.serial + 1 {
        assert_eq!(second.previous.as_ref(), Some(&first.current));
    }

    // `reload`: the master execs itself; the ring is handed over, not made anew.
    let replies = master
        .client()
        .call_with("reload", &[], WAIT, |_| {})
        .unwrap_or_else(|e| panic!("reload: {e}\n{}", master.output()));
    assert!(
        !replies.last().is_some_and(|r| r.error),
        "{replies:?}\n{}",
        master.output()
    );
    master.wait_for_line("key ring taken over");
    let before = ring_of(worker).serial;
    assert!(wait_until(WAIT, || ring_of(worker).serial > before));
    let after = ring_of(worker);
    assert_eq!(after.stable, first.stable, "the same ring after the exec");
    // A worker started by the new master reads the same ring.
    master
        .client()
        .call_with("upgrade", &[], WAIT, |_| {})
        .unwrap_or_else(|e| panic!("upgrade: {e}\n{}", master.output()));
    let new = master.wait_serving(1)[0];
    assert_ne!(new, worker);
    assert_eq!(ring_of(new).stable, first.stable);
}
