//! The cost of tracking a connection: accept, guard, drop through a [`GracefulListener`],
//! against a bare tokio accept of the same loopback connection.
//!
//! `cargo bench --bench tracking`. Both sides connect a client and accept it on the same
//! runtime; the difference between the two is what the tracking adds per connection.

// criterion_group! defines a public function it cannot document.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use graceful_listener::GracefulListener;
use tokio::net::{TcpListener, TcpStream};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn tracking(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("accept a loopback connection and drop it");

    // Both listeners sit behind the same kind of lock, so that it cancels out.
    let bare = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
    let bare_addr = bare.local_addr().expect("address");
    let bare = tokio::sync::Mutex::new(bare);
    group.bench_function("bare tokio accept", |b| {
        b.to_async(&rt).iter(|| async {
            let client = TcpStream::connect(bare_addr).await.expect("connect");
            let (server, _) = bare.lock().await.accept().await.expect("accept");
            drop(black_box(server));
            drop(client);
        });
    });

    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
    let addr = listener.local_addr().expect("address");
    let tracked = tokio::sync::Mutex::new(GracefulListener::from_tcp(listener));
    let handle = rt.block_on(tracked.lock()).handle();
    group.bench_function("GracefulListener accept + guard + drop", |b| {
        b.to_async(&rt).iter(|| async {
            let client = TcpStream::connect(addr).await.expect("connect");
            let (server, _) = tracked.lock().await.accept().await.expect("accept");
            drop(black_box(server));
            drop(client);
        });
    });
    group.finish();
    // Every tracked connection was released when dropped.
    assert_eq!(handle.live(), 0);
}

criterion_group!(benches, tracking);
criterion_main!(benches);
