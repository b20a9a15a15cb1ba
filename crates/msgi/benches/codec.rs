//! The MSGI codec: encoding (packed and zero-copy) and decoding one frame.
//!
//! `cargo bench --bench codec`
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use msgi::{Frame, FrameCodec, Framing, WriteBuf};

const SIZES: [usize; 3] = [64, 1024, 64 * 1024];

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for size in SIZES {
        let frame = Frame::data(Bytes::from(vec![7u8; size])).with_request_id(9);
        let mut wire = BytesMut::new();
        FrameCodec::new().encode(frame.clone(), &mut wire).unwrap();
        let wire = wire.freeze();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(
            BenchmarkId::new("encode (BytesMut)", size),
            &frame,
            |b, f| {
                let mut codec = FrameCodec::new();
                let mut out = BytesMut::with_capacity(size + 64);
                b.iter(|| {
                    out.clear();
                    codec.encode(f.clone(), &mut out).unwrap();
                    black_box(&out);
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("encode (WriteBuf)", size),
            &frame,
            |b, f| {
                let mut codec = FrameCodec::new();
                b.iter(|| {
                    let mut out = WriteBuf::new();
                    codec.encode_into(f.clone(), &mut out).unwrap();
                    black_box(out.len());
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("decode", size), &wire, |b, w| {
            let mut codec = FrameCodec::new();
            b.iter(|| {
                let mut buf = BytesMut::from(&w[..]);
                black_box(codec.decode(&mut buf).unwrap());
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
    targets = codec
}
criterion_main!(benches);
