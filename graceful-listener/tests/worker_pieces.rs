//! The `Worker` pieces in process, stopped from code: a stop asked through the handle, a
//! host's own connections counted with `track`, several listeners sharing one stop, and the
//! async `on_stop` waited for, or abandoned at the deadline. (`ShutdownSignal::current` is
//! per process, so it is tested through the examples, one process each.)

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use graceful_listener::{Bind, StdListener, StopCause, Worker, WorkerOptions};

fn loopback() -> Bind {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test]
async fn a_stop_asked_by_code_drains_the_hosts_own_connections() {
    let mut worker = Worker::new(WorkerOptions::default().ack(false)).unwrap();
    let StdListener::Tcp(std_listener) = worker.listen_std(&loopback()).unwrap() else {
        panic!("a TCP listener");
    };
    let mut tokio_listener = worker.listen(&loopback()).unwrap();
    let handle = worker.handle();

    // A connection the host accepted itself, and one from the worker's own listener.
    let client = std::net::TcpStream::connect(std_listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = std_listener.accept().unwrap();
    let guard = handle.track(accepted.as_fd());
    let addr = tokio_listener.local_addr().as_tcp().unwrap();
    let _other_client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (conn, _) = tokio_listener.accept().await.unwrap();
    assert_eq!((handle.live(), handle.accepted()), (2, 2));

    worker.ready().await.unwrap();
    handle.stop();
    let stop = worker.stopped().await;
    assert_eq!(stop.cause(), StopCause::Requested);
    assert!(worker.shutdown_signal().is_stopping());
    assert!(
        tokio_listener.accept().await.is_none(),
        "every listener stops with the worker"
    );

    let closer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(conn);
        drop(guard);
        drop(accepted);
        drop(client);
    });
    let report = worker.drain(stop).await;
    closer.await.unwrap();
    assert_eq!(report.cause, StopCause::Requested);
    assert_eq!((report.served, report.drained, report.forced), (2, 2, 0));
    assert!(report.is_clean());
    assert!(
        report.drain_time >= Duration::from_millis(100),
        "{report:?}"
    );
}

#[tokio::test]
async fn an_async_on_stop_is_awaited_and_abandoned_at_the_deadline() {
    // Awaited: the drain waits for it even with no connection open.
    let finished = Arc::new(AtomicBool::new(false));
    let options = WorkerOptions::default().ack(false).on_stop_async({
        let finished = finished.clone();
        || async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            finished.store(true, Ordering::SeqCst);
        }
    });
    let worker = Worker::new(options).unwrap();
    let started = Instant::now();
    let report = worker.drain(graceful_listener::Stop::server_ended()).await;
    assert!(
        finished.load(Ordering::SeqCst),
        "the drain waited for on_stop"
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(report.is_clean());

    // Abandoned: one slower than the drain timeout does not hold the worker.
    let options = WorkerOptions::default()
        .ack(false)
        .drain_timeout(Duration::from_millis(200))
        .on_stop_async(std::future::pending::<()>);
    let worker = Worker::new(options).unwrap();
    let started = Instant::now();
    let report = worker.drain(graceful_listener::Stop::server_ended()).await;
    let took = started.elapsed();
    assert!(
        (Duration::from_millis(200)..Duration::from_secs(3)).contains(&took),
        "{took:?}"
    );
    assert_eq!(report.forced, 0, "nothing to cut: only on_stop was late");
}

#[tokio::test]
async fn a_connection_accepted_in_a_race_with_the_stop_is_drained_and_counted() {
    // A host accepting on its own thread (actix-web's) can count a connection after the stop
    // began; here `on_stop` does it. The drain waits for it, and the report counts it.
    let slot: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>> = Arc::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle_slot: Arc<std::sync::OnceLock<graceful_listener::ListenerHandle>> = Arc::default();
    let options = WorkerOptions::default().ack(false).on_stop({
        let (slot, handle_slot) = (slot.clone(), handle_slot.clone());
        move || {
            let client = std::net::TcpStream::connect(addr).unwrap();
            let (accepted, _) = listener.accept().unwrap();
            let guard = handle_slot.get().unwrap().track(accepted.as_fd());
            *slot.lock().unwrap() = Some(std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                drop((guard, accepted, client));
            }));
        }
    });
    let worker = Worker::new(options).unwrap();
    handle_slot.set(worker.handle()).unwrap();
    let report = worker.drain(graceful_listener::Stop::server_ended()).await;
    slot.lock()
        .unwrap()
        .take()
        .expect("on_stop ran")
        .join()
        .unwrap();
    assert_eq!(
        (report.served, report.drained, report.forced),
        (1, 1, 0),
        "{report:?}"
    );
    assert!(report.drain_time >= Duration::from_millis(50), "{report:?}");
}
