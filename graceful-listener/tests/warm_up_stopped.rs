//! A stop signal during the warm-up: the worker never starts its server (so never accepts)
//! and leaves at once with a report. Alone in its test binary: the signal is the process's.

use std::time::Duration;

use graceful_listener::{GracefulListener, Run, StopCause};

#[tokio::test]
async fn a_stop_during_the_warm_up_leaves_without_ever_serving() {
    let server = |_listener: GracefulListener| async {
        panic!("the server must not start after a stop during the warm-up")
    };
    let report = Run::new(server)
        .bind("127.0.0.1:0".parse().unwrap())
        .ack(false)
        .warm_up(|| async {
            // SAFETY: kill(2) on our own pid; the worker handles SIGUSR2 by now.
            unsafe { libc::kill(libc::getpid(), libc::SIGUSR2) };
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<(), std::io::Error>(())
        })
        .await
        .unwrap();
    assert_eq!(report.cause, StopCause::Signal("SIGUSR2"));
    assert_eq!((report.served, report.forced), (0, 0));
}
