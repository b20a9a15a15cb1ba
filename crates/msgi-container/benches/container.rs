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
use msgi_container::{decode, Container, ContainerRef};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Login {
    message_type: String,
    source_id: String,
    source_sub_id: String,
    target_id: String,
    target_sub_id: String,
    user: String,
    token: String,
    device: String,
    locale: String,
    timestamp: i64,
    version: u32,
    remember: bool,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct LoginRef<'a> {
    message_type: &'a str,
    source_id: &'a str,
    source_sub_id: &'a str,
    target_id: &'a str,
    target_sub_id: &'a str,
    user: &'a str,
    token: &'a str,
    device: &'a str,
    locale: &'a str,
    timestamp: i64,
    version: u32,
    remember: bool,
}

fn login() -> Login {
    Login {
        message_type: "user_login".into(),
        source_id: "client-7f3a".into(),
        source_sub_id: "".into(),
        target_id: "auth-server".into(),
        target_sub_id: "eu-1".into(),
        user: "alice@example.com".into(),
        token: "c2VjcmV0LXRva2VuLWZvci1hbGljZS0xMjM0NTY3ODkw".into(),
        device: "ios-17.2 iPhone15,3".into(),
        locale: "en-GB".into(),
        timestamp: 1_700_000_000_123,
        version: 42,
        remember: true,
    }
}

fn container(l: &Login) -> Container {
    Container::builder(l.message_type.clone())
        .source(l.source_id.clone(), l.source_sub_id.clone())
        .target(l.target_id.clone(), l.target_sub_id.clone())
        .value("user", l.user.as_str())
        .value("token", l.token.as_str())
        .value("device", l.device.as_str())
        .value("locale", l.locale.as_str())
        .value("timestamp", l.timestamp)
        .value("version", l.version)
        .value("remember", l.remember)
        .build()
        .unwrap()
}

/// What a handler reads from a container: every field, typed.
fn read(c: &Container) -> LoginRef<'_> {
    LoginRef {
        message_type: c.message_type(),
        source_id: c.source_id(),
        source_sub_id: c.source_sub_id(),
        target_id: c.target_id(),
        target_sub_id: c.target_sub_id(),
        user: c.get("user").unwrap(),
        token: c.get("token").unwrap(),
        device: c.get("device").unwrap(),
        locale: c.get("locale").unwrap(),
        timestamp: c.get("timestamp").unwrap(),
        version: c.get("version").unwrap(),
        remember: c.get("remember").unwrap(),
    }
}

/// The same, read in place.
fn read_ref<'a>(c: &ContainerRef<'a>) -> LoginRef<'a> {
    LoginRef {
        message_type: c.message_type(),
        source_id: c.source_id(),
        source_sub_id: c.source_sub_id(),
        target_id: c.target_id(),
        target_sub_id: c.target_sub_id(),
        user: c.get("user").unwrap(),
        token: c.get("token").unwrap(),
        device: c.get("device").unwrap(),
        locale: c.get("locale").unwrap(),
        timestamp: c.get("timestamp").unwrap(),
        version: c.get("version").unwrap(),
        remember: c.get("remember").unwrap(),
    }
}

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
