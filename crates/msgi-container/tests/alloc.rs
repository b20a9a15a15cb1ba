//! What decoding allocates, measured with a counting allocator. Without the test harness
//! (`harness = false` in Cargo.toml): the counter is global, and the harness's own thread
//! allocates while a test runs (seen once on a loaded machine: 6 allocations not the
//! decoder's), so the checks run in `main`, alone in the process.
#![allow(clippy::unwrap_used)]

use std::alloc::System;

use bytes::Bytes;
use msgi_container::{decode, Container, ContainerRef, DecodeError, Limits, Value};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out
}

fn main() {
    decoding_allocates_what_the_limits_allow_and_no_more();
    println!("alloc: ok");
}

fn decoding_allocates_what_the_limits_allow_and_no_more() {
    // A count of a billion values in 20 bytes fails before anything is allocated.
    let mut p = vec![1, 0, 0, 0, 0, 0];
    p.extend(varint(1_000_000_000));
    p.resize(20, 0);
    let p = Bytes::from(p);
    let region = Region::new(GLOBAL);
    let r = decode(&p);
    let used = region.change();
    assert!(matches!(r, Err(DecodeError::CountTooLarge { .. })));
    assert_eq!(used.allocations, 0, "{used:?}");

    // The same claim inside nested arrays (each claim small enough for the bytes left):
    // all claims are charged to max_values before anything is reserved, so what is
    // allocated stays below max_values values, whatever the nesting.
    let limits = Limits::new(32, 1000).unwrap();
    let mut body = vec![1, 0, 0, 0, 0, 0, 1, 1, b'a'];
    for _ in 0..32 {
        body.push(8);
        body.extend(varint(900));
    }
    body.resize(4000, 0);
    let p = Bytes::from(body);
    let region = Region::new(GLOBAL);
    let r = Container::decode_with(&p, &limits);
    let used = region.change();
    assert!(
        matches!(r, Err(DecodeError::TooManyValues { max: 1000, .. })),
        "{r:?}"
    );
    let bound = 1000 * std::mem::size_of::<Value>() + 1000 * 72;
    assert!(used.bytes_allocated <= bound, "{used:?} > {bound}");

    // A valid container: its strings are slices of the payload, so decoding allocates
    // only the vectors of values, not the text.
    let big = "x".repeat(100_000);
    let c = Container::builder("t")
        .value("a", big.as_str())
        .value("b", Bytes::from(vec![7u8; 100_000]))
        .build()
        .unwrap();
    let p = c.encode();
    let region = Region::new(GLOBAL);
    let d = decode(&p).unwrap();
    let used = region.change();
    assert_eq!(d, c);
    assert!(used.bytes_allocated < 1024, "{used:?}");

    // Read in place: one vector for the two values, nothing else.
    let region = Region::new(GLOBAL);
    let v = ContainerRef::decode(&p).unwrap();
    let used = region.change();
    assert_eq!(v.get::<&str>("a").unwrap().len(), 100_000);
    assert_eq!(used.allocations, 1, "{used:?}");
    assert!(used.bytes_allocated <= 2 * 64, "{used:?}");
    drop(v);

    // And the billion-value claim: nothing.
    let mut p = vec![1, 0, 0, 0, 0, 0];
    p.extend(varint(1_000_000_000));
    p.resize(20, 0);
    let region = Region::new(GLOBAL);
    let r = ContainerRef::decode(&p);
    let used = region.change();
    assert!(matches!(r, Err(DecodeError::CountTooLarge { .. })));
    assert_eq!(used.allocations, 0, "{used:?}");
}
