//! The cases of `benches/container.rs` in a plain loop, for instruction counts under
//! callgrind (deterministic, unlike wall-clock time on a shared machine):
//!
//! ```sh
//! cargo bench -p msgi-container --bench instructions --no-run   # prints the binary's path
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null BINARY CASE ITERATIONS
//! ```
//!
//! Instructions per operation = (total at 11,000 iterations - total at 1,000) / 10,000,
//! which leaves out the setup and the first iterations. `BINARY list` prints the cases;
//! `crates/msgi-container/benches/instructions.sh` runs them all and prints the table of
//! docs/BENCHMARKS.md. Without arguments (as `cargo bench` runs it) it checks that every
//! case runs and exits.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use bytes::Bytes;
use msgi_container::{decode, ContainerRef};

mod common;
use common::{container, login, read, read_ref, Login, LoginRef};

const CASES: &[&str] = &[
    "encode/msgi-container",
    "encode/bincode",
    "encode/postcard",
    "encode/serde_json",
    "decode/msgi-container",
    "decode/msgi-container+read",
    "decode/msgi-container-ref",
    "decode/msgi-container-ref+read",
    "decode/bincode-owned",
    "decode/bincode-borrowed",
    "decode/postcard-owned",
    "decode/postcard-borrowed",
    "decode/serde_json-owned",
    "decode/serde_json-borrowed",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [case, n] if !case.starts_with('-') => run(case, n.parse().unwrap()),
        [list] if list == "list" => CASES.iter().for_each(|c| println!("{c}")),
        // `cargo bench` passes `--bench`: run each case a little, as a check.
        _ => CASES.iter().for_each(|c| run(c, 10)),
    }
}

fn run(case: &str, n: u64) {
    let l = login();
    let cont = container(&l);
    let cfg = bincode::config::standard();
    let payload: Bytes = cont.encode();
    let bin = bincode::serde::encode_to_vec(&l, cfg).unwrap();
    let post = postcard::to_allocvec(&l).unwrap();
    let json = serde_json::to_vec(&l).unwrap();
    // Same data everywhere.
    let (borrowed, _): (LoginRef<'_>, usize) =
        bincode::serde::borrow_decode_from_slice(&bin, cfg).unwrap();
    assert_eq!(read(&decode(&payload).unwrap()), borrowed);
    assert_eq!(read_ref(&ContainerRef::decode(&payload).unwrap()), borrowed);

    for _ in 0..n {
        match case {
            "encode/msgi-container" => drop(black_box(black_box(&cont).encode())),
            "encode/bincode" => drop(black_box(
                bincode::serde::encode_to_vec(black_box(&l), cfg).unwrap(),
            )),
            "encode/postcard" => drop(black_box(postcard::to_allocvec(black_box(&l)).unwrap())),
            "encode/serde_json" => drop(black_box(serde_json::to_vec(black_box(&l)).unwrap())),
            "decode/msgi-container" => drop(black_box(decode(black_box(&payload)).unwrap())),
            "decode/msgi-container+read" => {
                let c = decode(black_box(&payload)).unwrap();
                black_box(read(&c));
            }
            "decode/msgi-container-ref" => drop(black_box(
                ContainerRef::decode(black_box(&payload)).unwrap(),
            )),
            "decode/msgi-container-ref+read" => {
                let c = ContainerRef::decode(black_box(&payload)).unwrap();
                black_box(read_ref(&c));
            }
            "decode/bincode-owned" => {
                let (v, _): (Login, usize) =
                    bincode::serde::decode_from_slice(black_box(&bin), cfg).unwrap();
                drop(black_box(v));
            }
            "decode/bincode-borrowed" => {
                let (v, _): (LoginRef<'_>, usize) =
                    bincode::serde::borrow_decode_from_slice(black_box(&bin), cfg).unwrap();
                black_box(v);
            }
            "decode/postcard-owned" => {
                drop(black_box(
                    postcard::from_bytes::<Login>(black_box(&post)).unwrap(),
                ));
            }
            "decode/postcard-borrowed" => {
                black_box(postcard::from_bytes::<LoginRef<'_>>(black_box(&post)).unwrap());
            }
            "decode/serde_json-owned" => {
                drop(black_box(
                    serde_json::from_slice::<Login>(black_box(&json)).unwrap(),
                ));
            }
            "decode/serde_json-borrowed" => {
                black_box(serde_json::from_slice::<LoginRef<'_>>(black_box(&json)).unwrap());
            }
            other => panic!("unknown case {other:?}; `list` prints them"),
        }
    }
}
