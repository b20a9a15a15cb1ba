//! Per-frame cost of each layer: a frame encoded by a client-side framing
//! and decoded by a server-side one (wire transforms), or one call through
//! the layer around a ready service (request layers).
//!
//! `cargo bench -p msgi-middleware --bench layers`
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use msgi::{Frame, FrameCodec, Framing, MakeFraming, SessionKeys, Side, Wire};
use msgi_middleware::{FrameTimeoutLayer, Limit, RateLimitLayer, RatePolicy, WireExt};
use tower::{Layer, Service, ServiceExt};

const SIZES: [usize; 3] = [64, 1024, 64 * 1024];

/// Text-like payload: compressible the way chat or JSON is.
fn text(len: usize) -> Vec<u8> {
    let words = b"the quick brown fox jumps over the lazy dog 0123456789 ";
    words.iter().copied().cycle().take(len).collect()
}

fn round_trip<M: MakeFraming>(c: &mut Criterion, name: &str, framing: M) {
    let mut group = c.benchmark_group(name);
    for size in SIZES {
        let mut client = framing.make_framing(Side::Client);
        let mut server = framing.make_framing(Side::Server);
        // What the pre-shared-key handshake gives both ends.
        let keys = SessionKeys::new([1; 32], [2; 32]);
        client.set_session_keys(&keys);
        server.set_session_keys(&keys);
        let frame = Frame::data(text(size)).with_request_id(1);
        let mut buf = BytesMut::with_capacity(2 * size + 128);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &frame, |b, frame| {
            b.iter(|| {
                client.encode(frame.clone(), &mut buf).unwrap();
                let got = server.decode(&mut buf).unwrap().unwrap();
                black_box(got);
            })
        });
    }
    group.finish();
}

fn wire(c: &mut Criterion) {
    round_trip(c, "plain codec", FrameCodec::new());
    round_trip(
        c,
        "compression",
        Wire::new(FrameCodec::new()).deflate(msgi_middleware::compression::DEFAULT_THRESHOLD),
    );
    round_trip(c, "encryption", Wire::new(FrameCodec::new()).encrypt());
    round_trip(c, "hmac", Wire::new(FrameCodec::new()).sign());
    round_trip(
        c,
        "encryption + hmac",
        Wire::new(FrameCodec::new()).encrypt().sign(),
    );
}

/// Compression around the threshold: is it worth compressing at this size?
fn threshold(c: &mut Criterion) {
    let mut group = c.benchmark_group("compression threshold");
    for size in [64usize, 128, 256, 512, 1024] {
        let payload = text(size);
        let packed = msgi_middleware::compression::compress(&payload, 1);
        eprintln!(
            "compression threshold: {size} B text -> {} B",
            packed.as_ref().map_or(size, Vec::len)
        );
        group.bench_with_input(
            BenchmarkId::new("compress+inflate", size),
            &payload,
            |b, p| {
                b.iter(|| {
                    let z = msgi_middleware::compression::compress(p, 1).unwrap_or_default();
                    black_box(msgi_middleware::compression::decompress(&z, 1 << 20).ok());
                })
            },
        );
    }
    group.finish();
}

fn request_layers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let echo =
        tower::service_fn(|f: Frame| async move { Ok::<_, std::convert::Infallible>(Some(f)) });
    let mut group = c.benchmark_group("request layers");
    for size in SIZES {
        let frame = Frame::data(text(size)).with_request_id(1);
        group.bench_with_input(BenchmarkId::new("none", size), &frame, |b, frame| {
            let mut svc = echo;
            b.iter(|| {
                rt.block_on(async {
                    black_box(svc.ready().await.unwrap().call(frame.clone()).await)
                })
            })
        });
        group.bench_with_input(
            BenchmarkId::new("frame timeout", size),
            &frame,
            |b, frame| {
                let mut svc = FrameTimeoutLayer::new(Duration::from_secs(5)).layer(echo);
                b.iter(|| {
                    rt.block_on(async {
                        black_box(svc.ready().await.unwrap().call(frame.clone()).await)
                    })
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("rate limit", size), &frame, |b, frame| {
            let layer = RateLimitLayer::new(RatePolicy::Reject)
                .per_session(Limit::frames(1e12).unwrap().and_bytes(1e15).unwrap())
                .global(Limit::frames(1e12).unwrap());
            let mut svc = layer.layer(echo);
            b.iter(|| {
                rt.block_on(async {
                    black_box(svc.ready().await.unwrap().call(frame.clone()).await)
                })
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30);
    targets = wire, threshold, request_layers
}
criterion_main!(benches);
