//! What the ENCRYPTED transform's AEAD costs: ring's ChaCha20-Poly1305
//! (the wire contract's family), sealing 1 KiB and 64 KiB payloads in place
//! (what the transform does per frame, less the copy). `cargo bench -p
//! msgi-middleware --bench aead`; figures in docs/BENCHMARKS.md.

#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

fn seal(c: &mut Criterion) {
    let mut group = c.benchmark_group("aead_seal");
    let Ok(key) = UnboundKey::new(&CHACHA20_POLY1305, &[7; 32]) else {
        panic!("a 32-byte key fits ChaCha20-Poly1305");
    };
    let key = LessSafeKey::new(key);
    for size in [1024usize, 64 * 1024] {
        let mut buf = vec![0x5au8; size];
        let mut counter = 0u64;
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(
            BenchmarkId::new("chacha20-poly1305", size),
            &size,
            |b, _| {
                b.iter(|| {
                    counter += 1;
                    let mut nonce = [0u8; 12];
                    nonce[4..].copy_from_slice(&counter.to_be_bytes());
                    key.seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from([0u8; 14]),
                        &mut buf,
                    )
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, seal);
criterion_main!(benches);
