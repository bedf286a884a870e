//! Each HTTP example under the real `einhorn-master`: repeated upgrades while a keep-alive
//! load client hammers the shared socket finish with zero failed requests and zero
//! connection errors; every upgrade replaces every pid; a slow request in flight at an
//! upgrade completes with 200; old workers exit 0 once drained.

mod http_support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use graceful_listener_suite::load::{self, LoadConfig};
use http_support::{HttpMaster, WAIT};

for_each_framework!(upgrades_under_keep_alive_load_lose_nothing);

const WORKERS: usize = 2;
const UPGRADES: usize = 5;
const CONNECTIONS: usize = 16;

fn upgrades_under_keep_alive_load_lose_nothing(example: &str) {
    let master = HttpMaster::start(example, WORKERS, &["--drain-timeout", "10"]);
    let mut current = master.wait_serving(WORKERS);
    let mut generations = vec![current.clone()];
    // Bounded in time in any case; stopped as soon as the upgrades are done.
    let load = load::start(
        LoadConfig::new(master.addr)
            .connections(CONNECTIONS)
            .duration(Duration::from_secs(120))
            .timeout(Duration::from_secs(10)),
    );
    let answered = |pids: &[u32]| {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if load.snapshot().pids.keys().any(|p| pids.contains(p)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    };
    assert!(
        answered(&current),
        "the first workers never answered:\n{}",
        master.proc.output()
    );

    for round in 1..=UPGRADES {
        // A slow request on an accepted keep-alive connection, in flight at the upgrade.
        let slow = (round == 1).then(|| {
            let mut conn = TcpStream::connect_timeout(&master.addr, WAIT).unwrap();
            conn.set_read_timeout(Some(WAIT)).unwrap();
            conn.write_all(b"GET /sleep/1500 HTTP/1.1\r\nhost: test\r\n\r\n")
                .unwrap();
            std::thread::spawn(move || {
                let mut response = Vec::new();
                conn.read_to_end(&mut response)
                    .map(|_| String::from_utf8_lossy(&response).into_owned())
            })
        });
        std::thread::sleep(Duration::from_millis(300));
        master.upgrade();
        let new = master.wait_serving(WORKERS);
        assert!(
            new.iter().all(|p| !current.contains(p)),
            "round {round}: old {current:?}, new {new:?}"
        );
        assert!(
            answered(&new),
            "round {round}: no new worker answered:\n{}",
            master.proc.output()
        );
        for pid in &current {
            let exit = master.wait_exited(*pid);
            assert!(
                exit.contains("(exit status 0)"),
                "round {round}: {exit}\n{}",
                master.proc.output()
            );
        }
        if let Some(slow) = slow {
            let response = slow.join().unwrap().expect("the slow request is answered");
            assert!(response.starts_with("HTTP/1.1 200"), "{response}");
            let pid = graceful_listener_suite::load::parse_pid(response.as_bytes()).unwrap();
            assert!(
                current.contains(&pid),
                "answered by {pid}, not an old worker {current:?}"
            );
        }
        current = new;
        generations.push(current.clone());
    }
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    eprintln!(
        "{example}: {UPGRADES} upgrades of {WORKERS} workers, {CONNECTIONS} keep-alive connections: {report}"
    );

    assert_eq!(report.failed(), 0, "{report}\n{}", master.proc.output());
    assert!(
        report.ok >= 100,
        "too little traffic to mean anything: {report}"
    );
    let all: BTreeSet<u32> = generations.iter().flatten().copied().collect();
    for pid in report.pids.keys() {
        assert!(all.contains(pid), "answer from unknown pid {pid}: {report}");
    }
    for (i, generation) in generations.iter().enumerate() {
        assert!(
            generation.iter().any(|p| report.pids.contains_key(p)),
            "generation {i} ({generation:?}) never answered: {report}"
        );
    }
}
