//! The codec against the contract's test vectors, and property tests: any
//! frame survives the codec under any split of the byte stream, and no
//! input makes the decoder panic or over-allocate.

#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use msgi::Framing as _;
use msgi::{CodecError, Flags, Frame, FrameCodec, Kind};
use proptest::prelude::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn vectors() -> serde_json::Value {
    serde_json::from_str(include_str!("vectors/frames.json")).unwrap()
}

#[test]
fn valid_vectors_decode_and_re_encode() {
    let v = vectors();
    for case in v["valid"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let bytes = hex(case["hex"].as_str().unwrap());
        let mut buf = BytesMut::from(&bytes[..]);
        let frame = FrameCodec::new().decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty(), "{name}");
        assert_eq!(
            u64::from(frame.kind().get()),
            case["kind"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            u64::from(frame.flags().bits()),
            case["flags"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            frame.request_id().map(u64::from),
            case["request_id"].as_u64(),
            "{name}"
        );
        assert_eq!(
            frame.payload().as_ref(),
            hex(case["payload_hex"].as_str().unwrap()),
            "{name}"
        );
        let mut out = BytesMut::new();
        FrameCodec::new().encode(frame, &mut out).unwrap();
        assert_eq!(&out[..], &bytes[..], "{name} re-encodes byte for byte");
    }
}

#[test]
fn invalid_vectors_fail_as_soon_as_detectable() {
    let v = vectors();
    for case in v["invalid"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let bytes = hex(case["hex"].as_str().unwrap());
        let at = case["detectable_after_bytes"].as_u64().unwrap() as usize;
        let expected = case["error"].as_str().unwrap();
        let mut buf = BytesMut::from(&bytes[..at]);
        let err = FrameCodec::new().decode(&mut buf).unwrap_err();
        assert!(
            err.to_string().starts_with(expected),
            "{name}: {err} does not start with {expected}"
        );
        assert!(err.is_protocol_violation());
        // Fewer bytes than that must not be an error unless a byte already is wrong.
        if name != "bad_magic" {
            let mut short = BytesMut::from(&bytes[..at - 1]);
            assert!(
                FrameCodec::new().decode(&mut short).unwrap().is_none(),
                "{name}"
            );
        }
    }
}

#[test]
fn reserved_vectors_decode_as_frames() {
    // Reserved kinds are a session matter (answered with ERROR), not a codec error.
    let v = vectors();
    for case in v["reserved"].as_array().unwrap() {
        let bytes = hex(case["hex"].as_str().unwrap());
        let frame = FrameCodec::new()
            .decode(&mut BytesMut::from(&bytes[..]))
            .unwrap()
            .unwrap();
        assert!(frame.kind().is_reserved());
    }
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    (
        0u16..=0xFFF,
        prop::sample::select(vec![
            Flags::EMPTY,
            Flags::COMPRESSED,
            Flags::ENCRYPTED | Flags::AUTHENTICATED,
        ]),
        prop::option::of(any::<u32>()),
        prop::collection::vec(any::<u8>(), 0..2048),
    )
        .prop_map(|(kind, flags, id, payload)| {
            let mut f = Frame::new(Kind::new(kind).unwrap(), payload).with_flags(flags);
            f.set_request_id(id);
            f
        })
}

proptest! {
    #[test]
    fn frames_round_trip_under_any_split(
        frames in prop::collection::vec(arb_frame(), 1..8),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..16),
    ) {
        let mut codec = FrameCodec::new();
        let mut wire = BytesMut::new();
        for f in &frames {
            codec.encode(f.clone(), &mut wire).unwrap();
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        points.push(wire.len());
        points.sort_unstable();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut from = 0;
        for to in points {
            buf.extend_from_slice(&wire[from..to]);
            from = to;
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                decoded.push(f);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn arbitrary_input_never_panics_or_over_reserves(
        input in prop::collection::vec(any::<u8>(), 0..64),
        prefix in any::<bool>(),
        max in 14usize..4096,
    ) {
        let mut bytes = if prefix { b"MSGI".to_vec() } else { Vec::new() };
        bytes.extend_from_slice(&input);
        let mut codec = FrameCodec::with_max_frame_size(max);
        let mut buf = BytesMut::from(&bytes[..]);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => prop_assert!(f.wire_len() <= max),
                Ok(None) => break,
                Err(e) => {
                    prop_assert!(!matches!(e, CodecError::Io(_)));
                    break;
                }
            }
        }
        prop_assert!(buf.capacity() <= max.max(bytes.len()) + 64);
    }
}
