//! Issue 7, item 12: what a kept small payload holds, and what the decoder
//! spends per frame, measured with `msgi::FrameCodec` and a counting
//! clock and the resident memory (Linux); no sockets, one thread.
//!
//! ```text
//! cargo run --release -p msgi-middleware --example payload_pinning
//! ```
//!
//! - *pipelined*: a stream of frames read 32 KiB at a time (a busy peer);
//!   payloads dropped at once, as an echo does.
//! - *one per read*: each read holds one frame (a request/response peer).
//! - *kept*: 5,000 sessions each send one 16-byte frame, read into a fresh
//!   32 KiB chunk, and the handler keeps the payload.

use std::time::Instant;

use bytes::BytesMut;
use msgi::Framing as _;
use msgi::{Frame, FrameCodec};

/// Resident memory in bytes (Linux; 0 elsewhere).
fn resident() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

const CHUNK: usize = 32 * 1024;

fn wire(frames: usize, payload: usize) -> Vec<u8> {
    let mut out = BytesMut::new();
    for _ in 0..frames {
        FrameCodec::new()
            .encode(Frame::data(vec![b'x'; payload]), &mut out)
            .expect("encodes");
    }
    out.to_vec()
}

/// ns per frame, reading `per_read` bytes at a time.
fn decode(payload: usize, per_read: usize, frames: usize) -> f64 {
    let stream = wire(frames, payload);
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::new();
    let (mut n, mut at) = (0, 0);
    let start = Instant::now();
    while at < stream.len() {
        if buf.capacity() - buf.len() < CHUNK / 8 {
            buf.reserve(CHUNK);
        }
        let take = per_read
            .min(buf.capacity() - buf.len())
            .min(stream.len() - at);
        buf.extend_from_slice(&stream[at..at + take]);
        at += take;
        while let Some(frame) = codec.decode(&mut buf).expect("decodes") {
            std::hint::black_box(&frame);
            n += 1;
        }
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn kept(sessions: usize, payload: usize) -> f64 {
    let one = wire(1, payload);
    let before = resident();
    let mut keep = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let mut buf = BytesMut::with_capacity(CHUNK);
        buf.extend_from_slice(&one);
        let frame = FrameCodec::new()
            .decode(&mut buf)
            .expect("decodes")
            .expect("whole");
        keep.push(frame.into_payload());
    }
    let held = resident().saturating_sub(before) as f64 / 1e6;
    drop(keep);
    held
}

fn main() {
    for payload in [16usize, 64, 512, 4096] {
        let best = |per_read: usize, frames: usize| {
            (0..5)
                .map(|_| decode(payload, per_read, frames))
                .fold(f64::MAX, f64::min)
        };
        let pipelined = best(CHUNK, 400_000);
        let one_per_read = best(payload + 10, 100_000);
        println!(
            "payload {payload:5} B: pipelined {pipelined:6.1} ns/frame; one per read {one_per_read:6.1} ns/frame"
        );
    }
    println!(
        "5,000 kept 16-byte payloads: resident memory +{:.1} MB",
        kept(5000, 16)
    );
}
