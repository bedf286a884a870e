//! The warm-up, in process: a failing step and one that outlasts its timeout end the worker
//! with an error naming them, before anything was accepted; a stop during the warm-up ends it
//! without an ACK; a good step lets the worker serve.

use std::time::{Duration, Instant};

use graceful_listener::{
    Bind, GracefulListener, Run, RunError, StopCause, WarmUpError, Worker, WorkerOptions,
};

fn loopback() -> Bind {
    "127.0.0.1:0".parse().unwrap()
}

/// A server that fails the test if it is ever started.
fn never_started(_listener: GracefulListener) -> std::future::Ready<std::io::Result<()>> {
    panic!("the server must not start when the warm-up fails")
}

#[tokio::test]
async fn a_failing_warm_up_ends_the_worker_naming_the_error_and_nothing_serves() {
    let result = Run::new(never_started)
        .bind(loopback())
        .ack(false)
        .warm_up(|| async { Err(std::io::Error::other("the cache is unreachable")) })
        .await;
    let Err(RunError::WarmUp(WarmUpError::Failed(error))) = result else {
        panic!("expected a failed warm-up, got {result:?}");
    };
    assert_eq!(error.to_string(), "the cache is unreachable");
}

#[tokio::test]
async fn a_warm_up_past_its_timeout_ends_the_worker() {
    let started = Instant::now();
    let result = Run::new(never_started)
        .bind(loopback())
        .ack(false)
        .warm_up(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<(), std::io::Error>(())
        })
        .warm_up_timeout(Duration::from_millis(200))
        .await;
    let err = result.unwrap_err();
    assert_eq!(err.to_string(), "warm-up did not finish within 200ms");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_good_warm_up_runs_before_the_worker_is_ready() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let warm = tx.clone();
    let ready = tx.clone();
    let mut worker = Worker::new(
        WorkerOptions::default()
            .ack(false)
            .warm_up(move || async move {
                warm.send("warm-up").unwrap();
                Ok::<(), std::io::Error>(())
            })
            .on_ready(move || ready.send("ready").unwrap()),
    )
    .unwrap();
    let _listener = worker.listen(&loopback()).unwrap();
    worker.warm_up().await.unwrap();
    worker.ready().await.unwrap();
    assert_eq!(rx.recv().await, Some("warm-up"));
    assert_eq!(rx.recv().await, Some("ready"));
    worker.handle().stop();
    let stop = worker.stopped().await;
    assert_eq!(stop.cause(), StopCause::Requested);
    let report = worker.drain(stop).await;
    assert!(report.is_clean());
    drop(tx);
}
