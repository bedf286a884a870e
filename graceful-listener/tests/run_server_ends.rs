//! `run` when the server ends on its own, before any stop signal: it reports why, drains
//! what is open, and never treats the ended server as still running.

use std::time::Duration;

use graceful_listener::{Bind, GracefulListener, Run, RunError, StopCause};
use tokio::io::AsyncWriteExt;

fn loopback() -> Bind {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test]
async fn a_server_that_returns_ends_the_run_with_a_report() {
    let report = Run::new(|_listener: GracefulListener| async { Ok(()) })
        .bind(loopback())
        .ack(false)
        .drain_timeout(Duration::from_secs(5))
        .await
        .expect("a clean end is not an error");
    assert_eq!(report.cause, StopCause::ServerEnded);
    assert_eq!((report.served, report.drained, report.forced), (0, 0, 0));
}

#[tokio::test]
async fn a_server_that_fails_is_a_serve_error() {
    let result = Run::new(|_listener: GracefulListener| async {
        Err(std::io::Error::other("database unreachable"))
    })
    .bind(loopback())
    .ack(false)
    .await;
    match result {
        Err(RunError::Serve(e)) => assert_eq!(e.to_string(), "database unreachable"),
        other => panic!("expected a serve error, got {other:?}"),
    }
}

#[tokio::test]
async fn connections_left_by_an_ended_server_are_drained() {
    // The server hands one connection to a task that finishes it after 200 ms, then returns.
    let server = |mut listener: GracefulListener| async move {
        let addr = listener.local_addr().as_tcp().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await?;
        let (mut conn, _) = listener.accept().await.expect("a connection");
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = conn.write_all(b"bye\n").await;
            drop(client);
        });
        Ok(())
    };
    let report = Run::new(server)
        .bind(loopback())
        .ack(false)
        .drain_timeout(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(report.cause, StopCause::ServerEnded);
    assert_eq!((report.served, report.drained, report.forced), (1, 1, 0));
    assert!(report.drain_time < Duration::from_secs(5), "{report:?}");
}

#[tokio::test]
async fn a_server_that_panics_is_a_serve_error_naming_the_panic() {
    let result = Run::new(|_listener: GracefulListener| async {
        panic!("boom");
        #[allow(unreachable_code)]
        Ok(())
    })
    .bind(loopback())
    .ack(false)
    .await;
    match result {
        Err(RunError::Serve(e)) => assert_eq!(e.to_string(), "the server panicked: boom"),
        other => panic!("expected a serve error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_server_serving_in_its_own_future_is_run_through_the_drain() {
    // The server keeps its connection in its own future (no task of its own) and finishes it
    // 100 ms into the drain: `run` must go on polling it, or the drain would time out.
    let server = |mut listener: GracefulListener| async move {
        let addr = listener.local_addr().as_tcp().unwrap();
        let mut client = tokio::net::TcpStream::connect(addr).await?;
        let (mut conn, _) = listener.accept().await.expect("a connection");
        let signal = listener.shutdown_signal();
        listener.handle().stop();
        assert!(listener.accept().await.is_none(), "stopped");
        signal.stopping().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        conn.write_all(b"bye\n").await?;
        drop(conn);
        let mut said = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut client, &mut said).await?;
        assert_eq!(said, "bye\n");
        Ok(())
    };
    let report = Run::new(server)
        .bind(loopback())
        .ack(false)
        .drain_timeout(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(report.cause, StopCause::Requested);
    assert_eq!((report.served, report.drained, report.forced), (1, 1, 0));
    assert!(
        report.drain_time >= Duration::from_millis(100),
        "{report:?}"
    );
    assert!(report.drain_time < Duration::from_secs(5), "{report:?}");
}
