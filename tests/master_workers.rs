//! `custom-server` workers under the real `einhorn-master`: the ACK is counted, a crashed
//! worker is replaced, and the command socket stays usable around bad requests.

mod master_support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

use einhorn_master::pure::wire::decode_reply;
use master_support::{EchoClient, Master, WAIT, is_alive, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[test]
fn the_workers_ack_is_counted() {
    let master = Master::start(&["-n", "2"], &[]);
    let pids = master.wait_serving(2);
    for pid in &pids {
        master
            .proc
            .wait_for_line(&format!("worker {pid} ACKed"), WAIT)
            .expect("the master logs each ACK");
    }
    let state = master.state();
    assert_eq!(state.ack_mode, "manual");
    assert!(state.workers.iter().all(|w| w.acked));
    // Every worker serves the shared socket.
    let mut seen = master.answering_pids(16);
    seen.retain(|p| pids.contains(p));
    assert!(!seen.is_empty());
}

#[test]
fn a_killed_worker_is_replaced_and_serving_continues() {
    let master = Master::start(&["-n", "2"], &[]);
    let pids = master.wait_serving(2);
    let victim = pids[0];
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    let state = master.wait_state("a replacement ACKed", |s| {
        s.serving_pids().len() == 2 && !s.all_pids().contains(&victim)
    });
    assert!(!is_alive(victim));
    let now = state.serving_pids();
    assert!(now.contains(&pids[1]));
    for pid in master.answering_pids(8) {
        assert!(now.contains(&pid));
    }
    let exited = master
        .proc
        .wait_for_line(&format!("Exited worker {victim}"), WAIT)
        .unwrap();
    assert!(exited.contains("SIGKILL"), "{exited}");
}

#[test]
fn bad_requests_do_not_disturb_the_master_or_its_workers() {
    let master = Master::start(&["-n", "1"], &[]);
    let pids = master.wait_serving(1);
    drop(master.client());
    let stream = UnixStream::connect(&master.socket).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    for bad in [&b"%%%\n"[..], b"{]\n", b"42\n", b"{\"command\":17}\n"] {
        writer.write_all(bad).unwrap();
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line).unwrap();
        let reply = decode_reply(&line).unwrap();
        assert!(reply.error, "{bad:?}: {reply:?}");
    }
    // Same connection, then a worker-style ACK from a stranger, then business as usual.
    writer
        .write_all(b"{\"command\":\"worker:ack\",\"pid\":1}\n")
        .unwrap();
    assert_eq!(master.wait_serving(1), pids);
    assert_eq!(EchoClient::connect(master.addr).echo("ok"), pids[0]);
    master.upgrade();
    let new = master.wait_serving(1);
    assert_ne!(new, pids);
    assert!(wait_until(WAIT, || !is_alive(pids[0])));
}
