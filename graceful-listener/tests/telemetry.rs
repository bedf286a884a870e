//! A worker's metrics land in the recorder the application installed: connections accepted,
//! active and drained, responses by class, the warm-up, readiness and drain times. One test:
//! the recorder is the process's.

use std::time::Duration;

use graceful_listener::telemetry::{self, record_response};
use graceful_listener::{Bind, Worker, WorkerOptions};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[tokio::test]
async fn a_worker_records_into_the_installed_recorder() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let mut worker = Worker::new(WorkerOptions::default().ack(false).warm_up(|| async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok::<(), std::io::Error>(())
    }))
    .unwrap();
    let bind: Bind = "127.0.0.1:0".parse().unwrap();
    let mut listener = worker.listen(&bind).unwrap();
    worker.warm_up().await.unwrap();
    worker.ready().await.unwrap();
    let addr = listener.local_addr().as_tcp().unwrap();
    let mut conns = Vec::new();
    for _ in 0..3 {
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (conn, _) = listener.accept().await.unwrap();
        conns.push((client, conn));
    }
    for status in [200, 204, 302, 503] {
        record_response(status);
    }
    worker.handle().stop();
    let stop = worker.stopped().await;
    // Closed once the drain has begun: drained, not gone before the stop.
    let closer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(conns);
    });
    let report = worker.drain(stop).await;
    closer.await.unwrap();
    assert_eq!((report.served, report.drained, report.forced), (3, 3, 0));

    let snapshot = snapshotter.snapshot().into_vec();
    let value = |name: &str, class: Option<&str>| {
        snapshot
            .iter()
            .find(|(key, _, _, _)| {
                let key = key.key();
                key.name() == name
                    && class
                        .is_none_or(|c| key.labels().any(|l| l.key() == "class" && l.value() == c))
            })
            .map(|(_, _, _, value)| value)
            .unwrap_or_else(|| panic!("no {name} {class:?} in {snapshot:?}"))
    };
    assert_eq!(
        value(telemetry::CONNECTIONS_ACCEPTED, None),
        &DebugValue::Counter(3)
    );
    assert_eq!(
        value(telemetry::CONNECTIONS_DRAINED, None),
        &DebugValue::Counter(3)
    );
    assert_eq!(
        value(telemetry::CONNECTIONS_FORCED, None),
        &DebugValue::Counter(0)
    );
    assert_eq!(
        value(telemetry::RESPONSES, Some("2xx")),
        &DebugValue::Counter(2)
    );
    assert_eq!(
        value(telemetry::RESPONSES, Some("3xx")),
        &DebugValue::Counter(1)
    );
    assert_eq!(
        value(telemetry::RESPONSES, Some("5xx")),
        &DebugValue::Counter(1)
    );
    let DebugValue::Gauge(active) = value(telemetry::CONNECTIONS_ACTIVE, None) else {
        panic!("a gauge");
    };
    assert_eq!(active.into_inner(), 0.0);
    for histogram in [
        telemetry::WARM_UP_SECONDS,
        telemetry::READY_SECONDS,
        telemetry::DRAIN_SECONDS,
    ] {
        let DebugValue::Histogram(samples) = value(histogram, None) else {
            panic!("{histogram} is a histogram");
        };
        assert_eq!(samples.len(), 1, "{histogram}");
    }
    let DebugValue::Histogram(warm_up) = value(telemetry::WARM_UP_SECONDS, None) else {
        unreachable!()
    };
    assert!(warm_up[0].into_inner() >= 0.02, "{warm_up:?}");
}
