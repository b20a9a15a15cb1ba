//! `FrameCodec::decode` fed arbitrary bytes in arbitrary splits.
//!
//! Checks: never panics; every frame re-encodes to exactly the bytes it was
//! decoded from (so consumed bytes == frames re-encoded); no frame is over
//! the maximum frame size; the read buffer's capacity never goes over the
//! documented bound (`msgi_fuzz::read_buffer_bound`); an error is only
//! returned for bytes that really break the header rules.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use msgi_fuzz::{read_loop, End, Stream};
use msgi_proto::{CodecError, FrameCodec, Framing, CORRELATED_HEADER_LEN, HEADER_LEN, MAGIC};

fuzz_target!(|data: &[u8]| {
    let Some(stream) = Stream::parse(data) else {
        return;
    };
    let max = match stream.cfg % 5 {
        0 => msgi_proto::DEFAULT_MAX_FRAME_SIZE,
        1 => CORRELATED_HEADER_LEN,
        2 => HEADER_LEN + usize::from(stream.cfg),
        3 => 100_000,
        _ => 4 * 1024 * 1024,
    };
    let mut codec = FrameCodec::with_max_frame_size(max);
    let mut encoder = codec;
    let end = read_loop(&mut codec, &stream, |frame, at| {
        assert!(
            frame.wire_len() <= max,
            "frame of {} over {max}",
            frame.wire_len()
        );
        let mut out = BytesMut::new();
        encoder
            .encode(frame.clone(), &mut out)
            .expect("a decoded frame re-encodes");
        assert_eq!(
            &out[..],
            &stream.bytes[at..at + out.len()],
            "frame re-encodes to other bytes than it came from"
        );
        out.len()
    });
    if let End::Refused { error, at } = end {
        // The refusal is justified by the bytes at `at`.
        let rest = &stream.bytes[at..];
        let header = |i: usize| {
            rest.get(i..i + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        match error {
            CodecError::BadMagic => {
                let n = rest.len().min(4);
                assert_ne!(&rest[..n], &MAGIC[..n]);
            }
            CodecError::LengthBelowHeader { length } => {
                assert_eq!(header(4), Some(length));
                assert!((length as usize) < HEADER_LEN);
            }
            CodecError::LengthBelowCorrelatedHeader { length } => {
                assert_eq!(header(4), Some(length));
                assert!((length as usize) < CORRELATED_HEADER_LEN);
                assert!(rest.get(8).is_some_and(|b| b & 0x10 != 0));
            }
            CodecError::FrameTooLarge { length, max: m } => {
                assert_eq!(m, max);
                assert_eq!(header(4).map(u64::from), Some(length));
                assert!(length as usize > max);
            }
            other => panic!("unexpected decode error {other:?}"),
        }
    }
});
