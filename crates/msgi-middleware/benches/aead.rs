//! Which AEAD the ENCRYPTED transform uses: ring's AES-256-GCM against its
//! ChaCha20-Poly1305, sealing 1 KiB and 64 KiB payloads in place (what the
//! transform does per frame, less the copy). `cargo bench -p msgi-middleware
//! --bench aead`; the choice and the figures are in docs/BENCHMARKS.md.

#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};

fn seal(c: &mut Criterion) {
    let mut group = c.benchmark_group("aead_seal");
    for (name, alg) in [
        ("aes-256-gcm", &AES_256_GCM),
        ("chacha20-poly1305", &CHACHA20_POLY1305),
    ] {
        let Ok(key) = UnboundKey::new(alg, &[7; 32]) else {
            panic!("a 32-byte key fits both algorithms");
        };
        let key = LessSafeKey::new(key);
        for size in [1024usize, 64 * 1024] {
            let mut buf = vec![0x5au8; size];
            let mut counter = 0u64;
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_with_input(BenchmarkId::new(name, size), &size, |b, _| {
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
            });
        }
    }
    group.finish();
}

criterion_group!(benches, seal);
criterion_main!(benches);
