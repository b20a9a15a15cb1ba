//! Property tests of the encryption and HMAC transforms' buffer paths: a
//! received payload only the frame holds is opened where it is, a shared one
//! is copied once; the HMAC trailer goes in place into the room the
//! encryption transform leaves. Every path round-trips, every path refuses
//! a tampered byte, and the in-place paths really are in place.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use msgi::{Frame, FrameTransform, Kind, MakeTransform, SessionKeys, SessionParams, Side};
use msgi_middleware::{encryption, hmac, Encrypt, EncryptSession, Sign, SignSession};
use proptest::prelude::*;

/// One end's encryption transform (with room for the HMAC trailer when
/// `signed`, as a `Wire` with `.encrypt().sign()` makes it) and HMAC
/// transform, keyed as the handshake keys them.
fn end(side: Side, signed: bool) -> (EncryptSession, SignSession) {
    let keys = SessionKeys::new([5; 32], [6; 32]);
    let mut params = SessionParams::new(side, 1 << 20);
    params.tail_room = if signed { hmac::TRAILER_LEN } else { 0 };
    let mut enc = Encrypt::new().make_transform(params);
    let mut sign = Sign::new().make_transform(SessionParams::new(side, 1 << 20));
    enc.set_session_keys(&keys);
    sign.set_session_keys(&keys);
    (enc, sign)
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    (
        prop::sample::select(vec![Kind::DATA, Kind::CONTROL, Kind::app(0x123).unwrap()]),
        prop::option::of(any::<u32>()),
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            prop::collection::vec(any::<u8>(), 4000..9000),
        ],
    )
        .prop_map(|(kind, id, payload)| {
            let mut f = Frame::new(kind, payload);
            f.set_request_id(id);
            f
        })
}

/// `frame` with its payload in a buffer of its own (as the codec copies a
/// small frame out of the read buffer), or shared with a second holder
/// (as frames split off the read buffer are); the holder is returned.
fn received(mut frame: Frame, shared: bool) -> (Frame, Option<Bytes>) {
    let own = Bytes::from(frame.payload().to_vec());
    let holder = shared.then(|| own.clone());
    *frame.payload_mut() = own;
    (frame, holder)
}

/// Encrypts then signs, committing both (the frame was written).
fn send(enc: &mut EncryptSession, sign: &mut SignSession, frame: Frame) -> Frame {
    let sealed = enc.encode(frame).unwrap();
    let at = sealed.payload().as_ptr();
    let signed = sign.encode(sealed).unwrap();
    assert_eq!(
        signed.payload().as_ptr(),
        at,
        "the trailer is appended in place"
    );
    enc.commit();
    sign.commit();
    signed
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn encrypt_then_sign_round_trips_on_every_path(
        frames in prop::collection::vec((arb_frame(), any::<bool>()), 1..6),
    ) {
        let (mut c_enc, mut c_sign) = end(Side::Client, true);
        let (mut s_enc, mut s_sign) = end(Side::Server, true);
        for (frame, shared) in frames {
            let wire = send(&mut c_enc, &mut c_sign, frame.clone());
            let (wire, holder) = received(wire, shared);
            let got = s_enc.decode(s_sign.decode(wire).unwrap()).unwrap();
            prop_assert_eq!(&got, &frame);
            drop(holder);
            // And back: the echo of what was opened.
            let back = send(&mut s_enc, &mut s_sign, got);
            let (back, holder) = received(back, !shared);
            prop_assert_eq!(c_enc.decode(c_sign.decode(back).unwrap()).unwrap(), frame);
            drop(holder);
        }
    }

    #[test]
    fn encryption_opens_in_place_only_what_the_frame_alone_holds(
        frame in arb_frame(),
        shared in any::<bool>(),
    ) {
        let (c_enc, _) = end(Side::Client, false);
        let (mut s_enc, _) = end(Side::Server, false);
        let (wire, holder) = received(c_enc.encode(frame.clone()).unwrap(), shared);
        let sealed_at = wire.payload().as_ptr() as usize;
        let got = s_enc.decode(wire).unwrap();
        let opened_at = got.payload().as_ptr() as usize;
        prop_assert_eq!(&got, &frame);
        if !frame.payload().is_empty() {
            // In place: the plaintext starts after the counter, in the same
            // buffer. Shared: a copy (the other holder still reads the
            // ciphertext).
            prop_assert_eq!(opened_at == sealed_at + encryption::COUNTER_LEN, !shared);
        }
        if let Some(holder) = holder {
            prop_assert!(holder.len() == frame.payload().len() + encryption::OVERHEAD);
        }
    }

    #[test]
    fn a_flipped_bit_is_refused_on_every_path(
        frame in arb_frame(),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
        shared in any::<bool>(),
        signed in any::<bool>(),
    ) {
        let (mut c_enc, mut c_sign) = end(Side::Client, signed);
        let (mut s_enc, mut s_sign) = end(Side::Server, signed);
        let wire = if signed {
            send(&mut c_enc, &mut c_sign, frame)
        } else {
            c_enc.encode(frame).unwrap()
        };
        let mut bytes = wire.payload().to_vec();
        let i = at.index(bytes.len());
        bytes[i] ^= 1 << bit;
        let mut tampered = wire.clone();
        *tampered.payload_mut() = bytes.into();
        let (tampered, _holder) = received(tampered, shared);
        let result = if signed {
            s_sign.decode(tampered).and_then(|f| s_enc.decode(f))
        } else {
            s_enc.decode(tampered)
        };
        prop_assert!(result.is_err());
        // The untouched frame is still accepted: the refusal moved nothing.
        let (wire, _holder) = received(wire, shared);
        let opened = if signed {
            s_sign.decode(wire).and_then(|f| s_enc.decode(f))
        } else {
            s_enc.decode(wire)
        };
        prop_assert!(opened.is_ok());
    }
}

/// A large sealed frame that fills the server's read buffer (one frame per
/// read, the usual case at 64 KiB) reaches the encryption transform
/// unshared (the codec hands the whole buffer over) and is opened where it
/// was read: no copy of the payload on the way in.
#[test]
fn a_large_frame_that_fills_the_read_buffer_is_opened_where_it_was_read() {
    use bytes::BytesMut;
    use msgi::{FrameCodec, Framing, MakeFraming, Wire};
    use msgi_middleware::WireExt;

    for signed in [false, true] {
        let wire = Wire::new(FrameCodec::new())
            .encrypt()
            .transform(signed.then(Sign::new));
        let keys = SessionKeys::new([5; 32], [6; 32]);
        let mut client = wire.make_framing(Side::Client);
        let mut server = wire.make_framing(Side::Server);
        client.set_session_keys(&keys);
        server.set_session_keys(&keys);
        let payload: Vec<u8> = (0..64 * 1024).map(|i| i as u8).collect();
        let mut sent = BytesMut::new();
        client
            .encode(Frame::data(payload.clone()).with_request_id(1), &mut sent)
            .unwrap();
        // What one read gives the server: exactly this frame.
        let mut read = BytesMut::with_capacity(sent.len());
        read.extend_from_slice(&sent);
        let range = read.as_ptr_range();
        let opened = server.decode(&mut read).unwrap().unwrap();
        assert_eq!(opened.payload(), &payload[..], "signed: {signed}");
        assert!(
            range.contains(&opened.payload().as_ptr()),
            "opened in the read buffer (signed: {signed})"
        );
    }
}

/// A streaming peer's read holds a large sealed frame and the start of the
/// next one: the first is still opened where it was read (the codec moves
/// the few bytes after it to a new read buffer), and the next one decodes
/// once the rest of it arrives.
#[test]
fn a_large_frame_followed_by_the_next_ones_start_is_opened_where_it_was_read() {
    use bytes::BytesMut;
    use msgi::{FrameCodec, Framing, MakeFraming, Wire};
    use msgi_middleware::WireExt;

    for signed in [false, true] {
        let wire = Wire::new(FrameCodec::new())
            .encrypt()
            .transform(signed.then(Sign::new));
        let keys = SessionKeys::new([5; 32], [6; 32]);
        let mut client = wire.make_framing(Side::Client);
        let mut server = wire.make_framing(Side::Server);
        client.set_session_keys(&keys);
        server.set_session_keys(&keys);
        let payload: Vec<u8> = (0..64 * 1024).map(|i| (i / 3) as u8).collect();
        let mut sent = BytesMut::new();
        client
            .encode(Frame::data(payload.clone()), &mut sent)
            .unwrap();
        let first = sent.len();
        client
            .encode(Frame::data(payload.clone()), &mut sent)
            .unwrap();
        let mut read = BytesMut::with_capacity(first + 300);
        read.extend_from_slice(&sent[..first + 300]);
        let range = read.as_ptr_range();
        let opened = server.decode(&mut read).unwrap().unwrap();
        assert_eq!(opened.payload(), &payload[..], "signed: {signed}");
        assert!(
            range.contains(&opened.payload().as_ptr()),
            "opened in the read buffer (signed: {signed})"
        );
        assert!(server.decode(&mut read).unwrap().is_none());
        read.extend_from_slice(&sent[first + 300..]);
        let next = server.decode(&mut read).unwrap().unwrap();
        assert_eq!(next.payload(), &payload[..], "signed: {signed}");
    }
}

/// The send path every session uses (`Framing::encode_into`): the
/// encryption transform seals a payload only the frame holds where it lies
/// and leaves the counter and the tag (and the HMAC trailer) as small
/// pieces the codec writes around it ([`msgi::Outgoing`]). These check
/// that path against the joined one (`Framing::encode`, one buffer) byte
/// for byte, that the peer opens it, that a large payload is sealed in its
/// own buffer and written from there (no copy), and that a flipped bit is
/// refused without moving the sequence.
mod split {
    use super::*;
    use bytes::{Buf, BytesMut};
    use msgi::{Framing, MakeFraming, Wire, WriteBuf};
    use msgi_middleware::WireExt;

    /// Both ends' framings of one session, encryption with or without HMAC.
    fn ends(signed: bool) -> (impl Framing, impl Framing) {
        let wire = Wire::new(msgi::FrameCodec::new())
            .encrypt()
            .transform(signed.then(Sign::new));
        let keys = SessionKeys::new([5; 32], [6; 32]);
        let mut client = wire.make_framing(Side::Client);
        let mut server = wire.make_framing(Side::Server);
        client.set_session_keys(&keys);
        server.set_session_keys(&keys);
        (client, server)
    }

    /// Every byte queued in `buf`, and the start of each slice.
    fn written(buf: &WriteBuf) -> (Vec<u8>, Vec<*const u8>) {
        let mut slices = [std::io::IoSlice::new(&[]); WriteBuf::MAX_IOVECS];
        let n = buf.chunks_vectored(&mut slices);
        let starts = slices[..n].iter().map(|s| s.as_ptr()).collect();
        (
            slices[..n].iter().flat_map(|s| s.iter().copied()).collect(),
            starts,
        )
    }

    /// `frame` with a payload only it holds (`own`) or one a second
    /// holder keeps too.
    fn payload(frame: &Frame, own: bool) -> (Frame, Option<Bytes>) {
        let mut f = frame.clone();
        let bytes = Bytes::from(frame.payload().to_vec());
        let holder = (!own).then(|| bytes.clone());
        *f.payload_mut() = bytes;
        (f, holder)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn the_split_path_writes_the_joined_bytes_and_round_trips(
            frames in prop::collection::vec((arb_frame(), any::<bool>()), 1..5),
            signed in any::<bool>(),
        ) {
            let (mut split, _) = ends(signed);
            let (mut joined, _) = ends(signed);
            let (_, mut peer) = ends(signed);
            for (frame, own) in frames {
                let (f, holder) = payload(&frame, own);
                let mut out = WriteBuf::new();
                split.encode_into(f, &mut out).unwrap();
                let mut one = BytesMut::new();
                joined.encode(frame.clone(), &mut one).unwrap();
                let (bytes, _) = written(&out);
                prop_assert_eq!(&bytes[..], &one[..], "byte for byte");
                // The payload a second holder kept was not sealed under it.
                if let Some(holder) = holder {
                    prop_assert_eq!(&holder[..], &frame.payload()[..]);
                }
                let mut read = BytesMut::from(&bytes[..]);
                prop_assert_eq!(peer.decode(&mut read).unwrap().unwrap(), frame);
                prop_assert!(read.is_empty());
            }
        }

        #[test]
        fn a_flipped_bit_of_a_split_frame_is_refused_and_moves_nothing(
            frame in arb_frame(),
            own in any::<bool>(),
            signed in any::<bool>(),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let (mut client, _) = ends(signed);
            let (_, mut server) = ends(signed);
            let (f, _holder) = payload(&frame, own);
            let mut out = WriteBuf::new();
            client.encode_into(f, &mut out).unwrap();
            let (bytes, _) = written(&out);
            // Any bit after the length field (a flipped length is another
            // frame boundary, not a forgery).
            let i = 8 + at.index(bytes.len() - 8);
            let mut tampered = bytes.clone();
            tampered[i] ^= 1 << bit;
            let mut read = BytesMut::from(&tampered[..]);
            prop_assert!(!matches!(server.decode(&mut read), Ok(Some(_))));
            // The untouched frame is still the peer's next one.
            let mut read = BytesMut::from(&bytes[..]);
            prop_assert_eq!(server.decode(&mut read).unwrap().unwrap(), frame);
        }
    }

    /// A large payload only the frame holds (what a server opened and
    /// echoes) is sealed where it lies and written from there: the
    /// ciphertext is the vectored write's middle slice, at the payload's
    /// own address.
    #[test]
    fn a_large_payload_the_frame_alone_holds_is_sealed_and_written_where_it_lies() {
        for signed in [false, true] {
            let (mut client, _) = ends(signed);
            let (_, mut server) = ends(signed);
            let data: Vec<u8> = (0..64 * 1024).map(|i| (i * 7) as u8).collect();
            let payload = Bytes::from(data.clone());
            let at = payload.as_ptr();
            let mut out = WriteBuf::new();
            client
                .encode_into(Frame::data(payload).with_request_id(3), &mut out)
                .unwrap();
            let (bytes, starts) = written(&out);
            assert_eq!(
                starts.len(),
                3,
                "header and counter, ciphertext, tag (signed: {signed})"
            );
            assert_eq!(starts[1], at, "sealed in its own buffer (signed: {signed})");
            assert_ne!(&bytes[22..22 + 64], &data[..64], "sealed, not plain");
            let mut read = BytesMut::from(&bytes[..]);
            let opened = server.decode(&mut read).unwrap().unwrap();
            assert_eq!(opened.payload().chunk(), &data[..]);
            // Written out, the write buffer lets it go.
            out.advance(bytes.len());
            assert!(out.is_empty());
        }
    }
}
