//! The inbound path of the wire transforms (msgi-middleware's compression,
//! encryption and HMAC), alone or stacked, made per connection by `Wire`
//! over `FrameCodec` as the server and client make them, fed by an honest peer's stack and then tampered with
//! (forged bytes, flipped bits, replays, dropped frames), in arbitrary
//! splits.
//!
//! Checks: never panics; a decoded frame's payload fits the maximum frame
//! size (decompression is bounded by it) and carries no flag of a transform
//! in the stack; as long as nothing was tampered with, every frame arrives
//! as it was sent, and one is refused only when it (plain, or as sent) is
//! over the receiver's maximum frame size; the read buffer stays within its
//! bound.
#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use msgi_fuzz::{read_loop, End, Stream};
use msgi_middleware::{Deflate, Encrypt, Sign};
use msgi_proto::{Flags, Frame, FrameCodec, Framing, Kind, MakeFraming, SessionKeys, Side, Wire};

#[derive(Arbitrary, Debug)]
enum Max {
    Default,
    Small(u16),
    Tiny(u8),
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// The honest peer sends a frame; `repeat` copies of the payload.
    Send {
        kind: u16,
        request_id: Option<u32>,
        payload: Vec<u8>,
        repeat: u16,
    },
    /// Forged bytes, as they are.
    Raw(Vec<u8>),
    /// Flips bits of a byte already sent (counted from the end).
    Flip { back: u16, xor: u8 },
    /// The last frame sent, again.
    Replay,
    /// The last frame sent is lost.
    Drop,
}

#[derive(Arbitrary, Debug)]
struct Input {
    stack: u8,
    server_max: Max,
    /// The peer ignores our limit (sends up to 4 MiB).
    peer_bigger: bool,
    threshold: u16,
    level: u8,
    ops: Vec<Op>,
    splits: Vec<u8>,
}

/// A frame the honest peer wrote: where, and what.
struct Sent {
    start: usize,
    end: usize,
    frame: Frame,
}

/// The transforms as a server or client makes them for one connection:
/// `Wire` over a codec with the given limit (the transforms learn it when
/// made), each transform present or not, keyed as the pre-shared-key
/// handshake keys it.
fn stack(input: &Input, keys: &SessionKeys, max: usize, side: Side) -> impl Framing {
    let deflate = (input.stack & 1 != 0).then(|| {
        Deflate::new()
            .threshold(usize::from(input.threshold))
            .level(u32::from(input.level % 10))
            .expect("levels 0 to 9 are valid")
    });
    let encrypt = (input.stack & 2 != 0).then(Encrypt::new);
    let sign = (input.stack & 4 != 0).then(Sign::new);
    let mut framing = Wire::new(FrameCodec::with_max_frame_size(max))
        .transform(deflate)
        .transform(encrypt)
        .transform(sign)
        .make_framing(side);
    framing.set_session_keys(keys);
    framing
}

/// Most bytes one input may make the peer send (keeps executions fast).
const BUDGET: usize = 6 * 1024 * 1024;

fuzz_target!(|input: Input| {
    let keys = SessionKeys::new([7; 32], [8; 32]);
    let server_max = match input.server_max {
        Max::Default => msgi_proto::DEFAULT_MAX_FRAME_SIZE,
        Max::Small(n) => 14 + usize::from(n),
        Max::Tiny(n) => 14 + usize::from(n % 64),
    };
    let peer_max = if input.peer_bigger {
        4 * 1024 * 1024
    } else {
        server_max
    };
    let mut peer = stack(&input, &keys, peer_max, Side::Client);
    let mut server = stack(&input, &keys, server_max, Side::Server);

    let mut wire = BytesMut::new();
    let mut sent: Vec<Sent> = Vec::new();
    // The first byte of the stream the peer did not write as it is.
    let mut tamper = usize::MAX;
    for op in &input.ops {
        if wire.len() > BUDGET {
            break;
        }
        match op {
            Op::Send {
                kind,
                request_id,
                payload,
                repeat,
            } => {
                let copies = usize::from(*repeat) + 1;
                if payload.len().saturating_mul(copies) > BUDGET {
                    continue;
                }
                let kind = Kind::new(kind & Kind::MAX).unwrap_or(Kind::DATA);
                let mut frame = Frame::new(kind, payload.repeat(copies));
                frame.set_request_id(*request_id);
                let start = wire.len();
                if peer.encode(frame.clone(), &mut wire).is_err() {
                    assert_eq!(wire.len(), start, "a refused frame writes nothing");
                    continue;
                }
                sent.push(Sent {
                    start,
                    end: wire.len(),
                    frame,
                });
            }
            Op::Raw(bytes) => {
                tamper = tamper.min(wire.len());
                wire.extend_from_slice(bytes);
            }
            Op::Flip { back, xor } => {
                let back = usize::from(*back);
                if *xor != 0 && back < wire.len() {
                    let at = wire.len() - 1 - back;
                    tamper = tamper.min(at);
                    wire[at] ^= xor;
                }
            }
            Op::Replay => {
                if let Some(last) = sent.last() {
                    tamper = tamper.min(wire.len());
                    let bytes = wire[last.start..last.end].to_vec();
                    wire.extend_from_slice(&bytes);
                }
            }
            Op::Drop => {
                if let Some(last) = sent.pop_if(|last| last.end == wire.len()) {
                    // The peer counted it: what follows is out of sequence.
                    tamper = tamper.min(last.start);
                    wire.truncate(last.start);
                }
            }
        }
    }
    let splits = input
        .splits
        .iter()
        .map(|&s| usize::from(s & 0x7f) * if s & 0x80 != 0 { 1024 } else { 1 } + 1)
        .collect();
    let stream = Stream {
        cfg: 0,
        bytes: wire.to_vec(),
        splits,
    };

    let overhead_flags = [
        (input.stack & 1 != 0, Flags::COMPRESSED),
        (input.stack & 2 != 0, Flags::ENCRYPTED),
        (input.stack & 4 != 0, Flags::AUTHENTICATED),
    ];
    let bytes = &stream.bytes;
    let end = read_loop(&mut server, &stream, |frame, at| {
        assert!(
            frame.wire_len() <= server_max,
            "decoded frame of {} bytes over the maximum {server_max}",
            frame.wire_len()
        );
        for (on, flag) in overhead_flags {
            assert!(
                !(on && frame.flags().contains(flag)),
                "flag {flag:?} left on {frame:?}"
            );
        }
        if let Some(s) = sent.iter().find(|s| s.start == at && s.end <= tamper) {
            assert_eq!(frame, &s.frame, "an untouched frame arrives as sent");
        }
        // The wire length of the frame just decoded is in its header.
        let len = bytes
            .get(at + 4..at + 8)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .expect("a decoded frame had a header");
        len
    });
    match end {
        End::Refused { error, at } => {
            if at < tamper {
                let s = sent
                    .iter()
                    .find(|s| s.start == at)
                    .expect("an untouched stream is refused only at a frame boundary");
                if s.end > tamper {
                    return;
                }
                let plain = s.frame.wire_len();
                let on_wire = s.end - s.start;
                assert!(
                    plain > server_max || on_wire > server_max,
                    "untouched frame ({plain} bytes, {on_wire} sent) refused: {error}"
                );
            }
        }
        End::Eof(left) => {
            if tamper == usize::MAX {
                assert_eq!(left, 0, "an untouched stream decodes to the end");
            }
        }
    }
});
