//! A login-sized container against bincode, postcard and serde_json on the same data.
//!
//! `cargo bench -p msgi-container --bench container`
//!
//! Each format encodes the same 12 fields (the header's five, seven values) into a fresh
//! buffer, and decodes them back. The other formats decode into a struct, either owning
//! its strings (`String`, one allocation each) or borrowing them from the input (`&str`);
//! a container decodes into named values whose strings are slices of the payload's
//! `Bytes` (`Container`, one reference count per string), or is read in place
//! (`ContainerRef`, `&str` views like bincode's borrowed decode: the fair comparison);
//! `decode+read` also reads every field through the typed getters, which is what a
//! handler does and what a struct decode includes.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use msgi_container::{decode, ContainerRef};

mod common;
use common::{container, login, read, read_ref, Login, LoginRef};

fn bench(c: &mut Criterion) {
    let l = login();
    let cont = container(&l);
    let cfg = bincode::config::standard();

    let payload: Bytes = cont.encode();
    let bin = bincode::serde::encode_to_vec(&l, cfg).unwrap();
    let post = postcard::to_allocvec(&l).unwrap();
    let json = serde_json::to_vec(&l).unwrap();

    // Same data everywhere.
    assert_eq!(read(&decode(&payload).unwrap()).user, l.user);
    let (borrowed, _): (LoginRef<'_>, usize) =
        bincode::serde::borrow_decode_from_slice(&bin, cfg).unwrap();
    assert_eq!(read_ref(&ContainerRef::decode(&payload).unwrap()), borrowed);
    let (back, _): (Login, usize) = bincode::serde::decode_from_slice(&bin, cfg).unwrap();
    assert_eq!(back, l);
    eprintln!(
        "login sizes: msgi-container {} B, bincode {} B, postcard {} B, serde_json {} B",
        payload.len(),
        bin.len(),
        post.len(),
        json.len()
    );

    let mut g = c.benchmark_group("login/encode");
    g.bench_function("msgi-container", |b| b.iter(|| black_box(&cont).encode()));
    g.bench_function("bincode", |b| {
        b.iter(|| bincode::serde::encode_to_vec(black_box(&l), cfg).unwrap())
    });
    g.bench_function("postcard", |b| {
        b.iter(|| postcard::to_allocvec(black_box(&l)).unwrap())
    });
    g.bench_function("serde_json", |b| {
        b.iter(|| serde_json::to_vec(black_box(&l)).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("login/decode");
    g.bench_function("msgi-container", |b| {
        b.iter(|| decode(black_box(&payload)).unwrap())
    });
    g.bench_function("msgi-container decode+read", |b| {
        b.iter(|| {
            let c = decode(black_box(&payload)).unwrap();
            black_box(read(&c));
        })
    });
    g.bench_function("msgi-container ref", |b| {
        b.iter(|| ContainerRef::decode(black_box(&payload)).unwrap())
    });
    g.bench_function("msgi-container ref decode+read", |b| {
        b.iter(|| {
            let c = ContainerRef::decode(black_box(&payload)).unwrap();
            black_box(read_ref(&c));
        })
    });
    g.bench_function("bincode owned", |b| {
        b.iter(|| {
            let (v, _): (Login, usize) =
                bincode::serde::decode_from_slice(black_box(&bin), cfg).unwrap();
            v
        })
    });
    g.bench_function("bincode borrowed", |b| {
        b.iter(|| {
            let (v, _): (LoginRef<'_>, usize) =
                bincode::serde::borrow_decode_from_slice(black_box(&bin), cfg).unwrap();
            black_box(v);
        })
    });
    g.bench_function("postcard owned", |b| {
        b.iter(|| postcard::from_bytes::<Login>(black_box(&post)).unwrap())
    });
    g.bench_function("postcard borrowed", |b| {
        b.iter(|| {
            black_box(postcard::from_bytes::<LoginRef<'_>>(black_box(&post)).unwrap());
        })
    });
    g.bench_function("serde_json owned", |b| {
        b.iter(|| serde_json::from_slice::<Login>(black_box(&json)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
