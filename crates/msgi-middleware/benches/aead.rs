//! What the ENCRYPTED and AUTHENTICATED transforms' primitives cost on one
//! core: ring's ChaCha20-Poly1305 (the wire contract's AEAD) sealing and
//! opening 1 KiB and 64 KiB in place (what the transforms do per frame),
//! and HMAC-SHA256 over 1 KiB and 64 KiB (the contract's MAC). Criterion
//! reports each as time and throughput (bytes/s). For the TLS
//! comparison, ring's AES-128-GCM and AES-256-GCM sealing the same sizes
//! (the TLS 1.3 suites rustls's ring provider offers). `cargo bench -p
//! msgi-middleware --bench aead`; figures in docs/BENCHMARKS.md.

#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use ring::aead::{
    Aad, Algorithm, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305,
};
use ring::hmac;

const SIZES: [usize; 2] = [1024, 64 * 1024];

fn seal_with(c: &mut Criterion, group: &str, algorithm: &'static Algorithm) {
    let mut group = c.benchmark_group(group);
    let Ok(key) = UnboundKey::new(algorithm, &[7; 32][..algorithm.key_len()]) else {
        panic!("a key of the algorithm's length");
    };
    let key = LessSafeKey::new(key);
    for size in SIZES {
        let mut buf = vec![0x5au8; size];
        let mut counter = 0u64;
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("seal", size), &size, |b, _| {
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
    group.finish();
}

/// Opening in place, as the server does with each received frame: each
/// iteration opens a fresh copy of one sealed buffer (the copy is made
/// outside the timing: criterion's batched setup), so every open verifies.
fn open_chacha(c: &mut Criterion) {
    let mut group = c.benchmark_group("aead_open_chacha20-poly1305");
    let Ok(key) = UnboundKey::new(&CHACHA20_POLY1305, &[7; 32]) else {
        panic!("a 32-byte key");
    };
    let key = LessSafeKey::new(key);
    let nonce = || Nonce::assume_unique_for_key([0u8; 12]);
    for size in SIZES {
        let mut sealed = vec![0x5au8; size];
        let Ok(tag) = key.seal_in_place_separate_tag(nonce(), Aad::from([0u8; 14]), &mut sealed)
        else {
            panic!("sealing fails only past ChaCha20's length limit");
        };
        sealed.extend_from_slice(tag.as_ref());
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("open", size), &size, |b, _| {
            b.iter_batched_ref(
                || sealed.clone(),
                |buf| {
                    let opened = key.open_in_place(nonce(), Aad::from([0u8; 14]), buf);
                    assert!(opened.is_ok(), "the tag verifies");
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

fn seal(c: &mut Criterion) {
    // The name the earlier figures used for ChaCha20-Poly1305.
    seal_with(c, "aead_seal_chacha20-poly1305", &CHACHA20_POLY1305);
    seal_with(c, "aead_seal_aes-128-gcm", &AES_128_GCM);
    seal_with(c, "aead_seal_aes-256-gcm", &AES_256_GCM);
}

fn mac(c: &mut Criterion) {
    let mut group = c.benchmark_group("hmac_sha256");
    let key = hmac::Key::new(hmac::HMAC_SHA256, &[9; 32]);
    for size in SIZES {
        let buf = vec![0x5au8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("sign", size), &size, |b, _| {
            b.iter(|| hmac::sign(&key, &buf))
        });
    }
    group.finish();
}

criterion_group!(benches, seal, open_chacha, mac);
criterion_main!(benches);
