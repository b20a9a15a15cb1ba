//! A frame through the whole server session path, in memory: a client
//! writes correlated DATA frames into an in-process pipe, the session
//! decodes them, runs the echo service and writes the answers back.
//! No sockets, so this is msgi's own cost per frame.
//!
//! `cargo bench --bench session`
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use msgi::Framing as _;
use msgi::{ConnectInfo, Frame, FrameCodec, Listener, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

/// Connections handed over a channel: in-memory pipes.
struct Pipes(mpsc::Receiver<DuplexStream>);

impl Listener for Pipes {
    type Io = DuplexStream;

    async fn accept(&mut self) -> std::io::Result<(DuplexStream, ConnectInfo)> {
        match self.0.recv().await {
            Some(io) => Ok((io, ConnectInfo::new())),
            None => std::future::pending().await,
        }
    }
}

fn session(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (tx, rx) = mpsc::channel(1);
    let echo =
        tower::service_fn(|f: Frame| async move { Ok::<_, std::convert::Infallible>(Some(f)) });
    rt.spawn(
        Server::builder()
            .build()
            .expect("valid settings")
            .serve(Pipes(rx), echo),
    );

    let mut group = c.benchmark_group("session path");
    for (size, batch) in [(64usize, 1usize), (1024, 1), (1024, 32), (64 * 1024, 1)] {
        let (client, server_end) = tokio::io::duplex(1 << 20);
        rt.block_on(tx.send(server_end)).unwrap();
        let mut client = client;
        let mut codec = FrameCodec::new();
        let mut request = BytesMut::new();
        for id in 0..batch as u32 {
            codec
                .encode(
                    Frame::data(Bytes::from(vec![1u8; size])).with_request_id(id),
                    &mut request,
                )
                .unwrap();
        }
        let request = request.freeze();
        let mut buf = BytesMut::with_capacity(2 << 20);
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(
            BenchmarkId::new(format!("{size} B"), format!("{batch} in flight")),
            |b| {
                b.iter(|| {
                    rt.block_on(async {
                        client.write_all(&request).await.unwrap();
                        let mut answers = 0;
                        while answers < batch {
                            match codec.decode(&mut buf).unwrap() {
                                Some(f) => {
                                    answers += 1;
                                    black_box(f);
                                }
                                None => {
                                    client.read_buf(&mut buf).await.unwrap();
                                }
                            }
                        }
                    })
                })
            },
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = session
}
criterion_main!(benches);
