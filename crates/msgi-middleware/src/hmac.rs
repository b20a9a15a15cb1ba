//! HMAC-SHA256 authentication of every frame under per-session,
//! per-direction keys: the AUTHENTICATED flag. [`Sign`] is the settings, a
//! [`MakeTransform`]; [`SignSession`] one session's transform.
//!
//! The keys come from the session's pre-shared-key handshake
//! ([`crate::psk`]), one per direction, fresh for every session; which
//! pre-shared key the peer used is in the session's connect info
//! ([`AuthenticatedKey`](crate::psk::AuthenticatedKey)). Until the keys
//! arrive, every frame is refused ([`SignError::NoSessionKeys`]).
//!
//! Each frame carries a sequence number and a tag over its header fields,
//! payload and sequence. A receiver refuses frames without the flag, with a
//! bad tag (checked in constant time), or with a sequence number other than
//! the next one expected (replays, reordering, dropped frames).
//!
//! ## Wire format
//!
//! ```text
//! payload = data ‖ sequence (8) ‖ tag (32)
//! tag = HMAC-SHA256(key, type (2) ‖ request id (4, zero when uncorrelated) ‖ direction (1)
//!                        ‖ data ‖ sequence (8))
//! key = HKDF-Expand-Label(traffic secret of the sending side, "hmac", "", 32)
//! ```
//!
//! `type` is the frame's type field with AUTHENTICATED set; direction is
//! `0x01` client to server, `0x02` server to client; the sequence counts
//! the frames this layer signed and that were written (a frame refused
//! further down, such as one over the maximum frame size, uses no number)
//! in that direction on this connection, from 0.

use std::fmt;

use bytes::{BufMut, BytesMut};
use msgi::{
    BoxError, Flags, Frame, FrameTransform, MakeTransform, Outgoing, Piece, SessionKeys,
    SessionParams, Side,
};
use ring::hmac;

use crate::psk::{expand_label, Named};

/// Bytes the layer appends to a payload: sequence and tag.
pub const TRAILER_LEN: usize = 8 + 32;

/// Why a frame failed authentication.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// A frame without the AUTHENTICATED flag on an authenticated session.
    #[error("unauthenticated frame on an authenticated session")]
    Missing,
    /// The payload is too short to hold the trailer.
    #[error("authenticated payload too short ({0} bytes)")]
    Truncated(usize),
    /// The tag did not verify: tampered, another session or direction, or
    /// another key.
    #[error("authentication failed")]
    BadTag,
    /// The sequence number is not the next one: a replay or reordering.
    #[error("replayed or reordered frame (sequence {got}, expected {expected})")]
    Sequence {
        /// The sequence number in the frame.
        got: u64,
        /// The one expected.
        expected: u64,
    },
    /// The connection ran no pre-shared-key handshake, so there is no key.
    #[error("no session keys: the connection did not run the pre-shared-key handshake")]
    NoSessionKeys,
}

/// HMAC settings: makes each session's [`SignSession`]. Add it to a
/// [`Wire`](msgi::Wire) with `.sign()` ([`WireExt`](crate::WireExt)), and
/// run the pre-shared-key handshake ([`crate::psk::Psk`]) on the
/// connections, which gives the keys.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sign {
    _private: (),
}

impl Sign {
    /// Authenticate every frame under the session's handshake keys.
    pub fn new() -> Self {
        Sign::default()
    }
}

impl Named for Sign {
    fn name(&self) -> Option<&'static str> {
        Some("sign")
    }
}

impl MakeTransform for Sign {
    type Transform = SignSession;

    fn make_transform(&self, params: SessionParams) -> SignSession {
        SignSession {
            keys: None,
            side: params.side,
            sent: 0,
            received: 0,
        }
    }

    fn max_overhead(&self) -> usize {
        TRAILER_LEN
    }
}

struct Keys {
    sign: hmac::Key,
    verify: hmac::Key,
}

/// The HMAC transform of one session (made by [`Sign`]); refuses every
/// frame until the handshake's keys arrive
/// ([`FrameTransform::set_session_keys`]).
pub struct SignSession {
    keys: Option<Box<Keys>>,
    side: Side,
    sent: u64,
    received: u64,
}

impl fmt::Debug for SignSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignSession")
            .field("side", &self.side)
            .field("keyed", &self.keys.is_some())
            .field("sent", &self.sent)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

fn direction_key(keys: &SessionKeys, side: Side) -> Option<hmac::Key> {
    let key = expand_label(keys.sent_by(side), b"hmac", b"").ok()?;
    Some(hmac::Key::new(hmac::HMAC_SHA256, &key))
}

/// The fields before the payload: type (2) ‖ request id (4) ‖ direction (1).
fn header_fields(frame: &Frame, from: Side) -> [u8; 7] {
    let mut head = [0u8; 7];
    head[..2].copy_from_slice(&frame.type_field().to_be_bytes());
    head[2..6].copy_from_slice(&frame.request_id().unwrap_or(0).to_be_bytes());
    head[6] = from.direction_byte();
    head
}

fn tag(key: &hmac::Key, frame: &Frame, from: Side, data: &[u8], seq: u64) -> hmac::Tag {
    let mut mac = hmac::Context::with_key(key);
    mac.update(&header_fields(frame, from));
    mac.update(data);
    mac.update(&seq.to_be_bytes());
    mac.sign()
}

/// The tag of a received payload `data ‖ sequence ‖ tag`: `signed` is
/// `data ‖ sequence`, contiguous in the payload (two updates, no copy).
fn tag_of_received(key: &hmac::Key, frame: &Frame, from: Side, signed: &[u8]) -> hmac::Tag {
    let mut mac = hmac::Context::with_key(key);
    mac.update(&header_fields(frame, from));
    mac.update(signed);
    mac.sign()
}

/// The tag over a payload `head ‖ data ‖ tail` (an [`Outgoing`]'s
/// pieces): the same bytes as [`tag`] over the joined payload, fed in three
/// updates, each small piece beside the fields next to it (copied with
/// fixed-size moves, no call to copy a few bytes).
fn tag_of_pieces(
    key: &hmac::Key,
    frame: &Frame,
    from: Side,
    head: &Piece<{ Outgoing::HEAD }>,
    data: &[u8],
    tail: &Piece<{ Outgoing::TAIL }>,
    seq: u64,
) -> hmac::Tag {
    // type ‖ request id ‖ direction ‖ head.
    let mut first = [0u8; 7 + Outgoing::HEAD];
    first[..7].copy_from_slice(&header_fields(frame, from));
    first[7..].copy_from_slice(head.as_array());
    // tail ‖ sequence.
    let mut last = [0u8; Outgoing::TAIL + 8];
    last[..Outgoing::TAIL].copy_from_slice(tail.as_array());
    let n = tail.len();
    if let Some(at) = last.get_mut(n..n + 8) {
        at.copy_from_slice(&seq.to_be_bytes());
    }
    let mut mac = hmac::Context::with_key(key);
    mac.update(first.get(..7 + head.len()).unwrap_or_default());
    mac.update(data);
    mac.update(last.get(..n + 8).unwrap_or_default());
    mac.sign()
}

/// A copy of `data` followed by the trailer.
fn with_trailer(data: &[u8], seq: u64, tag: &hmac::Tag) -> BytesMut {
    let mut out = BytesMut::with_capacity(data.len() + TRAILER_LEN);
    out.put_slice(data);
    out.put_u64(seq);
    out.put_slice(tag.as_ref());
    out
}

/// Equal in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

impl FrameTransform for SignSession {
    fn set_session_keys(&mut self, keys: &SessionKeys) {
        self.keys = match (
            direction_key(keys, self.side),
            direction_key(keys, self.side.peer()),
        ) {
            (Some(sign), Some(verify)) => Some(Box::new(Keys { sign, verify })),
            _ => None,
        };
    }

    fn decode(&mut self, mut frame: Frame) -> Result<Frame, BoxError> {
        let keys = self.keys.as_ref().ok_or(SignError::NoSessionKeys)?;
        if !frame.flags().contains(Flags::AUTHENTICATED) {
            return Err(SignError::Missing.into());
        }
        let payload = frame.payload();
        let len = payload.len();
        let Some(data_len) = len.checked_sub(TRAILER_LEN) else {
            return Err(SignError::Truncated(len).into());
        };
        let (signed, got) = payload.split_at(data_len + 8);
        let seq = signed.get(data_len..).ok_or(SignError::Truncated(len))?;
        let seq = u64::from_be_bytes(seq.try_into().map_err(|_| SignError::Truncated(len))?);
        let want = tag_of_received(&keys.verify, &frame, self.side.peer(), signed);
        if !constant_time_eq(want.as_ref(), got) {
            return Err(SignError::BadTag.into());
        }
        if seq != self.received {
            return Err(SignError::Sequence {
                got: seq,
                expected: self.received,
            }
            .into());
        }
        self.received += 1;
        // No copy: the trailer is cut off the same buffer.
        frame.payload_mut().truncate(data_len);
        let flags = frame.flags().without(Flags::AUTHENTICATED);
        frame.set_flags(flags);
        Ok(frame)
    }

    fn encode(&self, mut frame: Frame) -> Result<Frame, BoxError> {
        let keys = self.keys.as_ref().ok_or(SignError::NoSessionKeys)?;
        let flags = frame.flags().with(Flags::AUTHENTICATED);
        frame.set_flags(flags);
        let seq = self.sent;
        let tag = tag(&keys.sign, &frame, self.side, frame.payload(), seq);
        let payload = std::mem::take(frame.payload_mut());
        let out = match payload.try_into_mut() {
            // A payload only this frame holds, with room at its end (the
            // encryption transform leaves it): the trailer goes in place.
            Ok(mut buf) if buf.capacity() - buf.len() >= TRAILER_LEN => {
                buf.put_u64(seq);
                buf.put_slice(tag.as_ref());
                buf
            }
            Ok(buf) => with_trailer(&buf, seq, &tag),
            Err(shared) => with_trailer(&shared, seq, &tag),
        };
        *frame.payload_mut() = out.freeze();
        Ok(frame)
    }

    /// Signs the pieces where they are and puts the trailer into the tail
    /// when it fits (after the encryption transform's tag it does): no
    /// allocation, no copy. When it does not fit, the pieces are joined
    /// (one copy) and the trailer appended. The bytes on the wire are those
    /// of [`encode`](FrameTransform::encode).
    fn encode_split(&self, out: &mut Outgoing) -> Result<(), BoxError> {
        let keys = self.keys.as_ref().ok_or(SignError::NoSessionKeys)?;
        let flags = out.frame.flags().with(Flags::AUTHENTICATED);
        out.frame.set_flags(flags);
        let seq = self.sent;
        let tag = tag_of_pieces(
            &keys.sign,
            &out.frame,
            self.side,
            &out.head,
            out.frame.payload(),
            &out.tail,
            seq,
        );
        let mut trailer = [0u8; TRAILER_LEN];
        trailer[..8].copy_from_slice(&seq.to_be_bytes());
        trailer[8..].copy_from_slice(tag.as_ref());
        if out.tail.try_extend(&trailer) {
            return Ok(());
        }
        let mut frame = std::mem::take(out).join();
        *frame.payload_mut() = with_trailer(frame.payload(), seq, &tag).freeze();
        out.frame = frame;
        Ok(())
    }

    /// The frame signed with the current sequence was written.
    fn commit(&mut self) {
        self.sent += 1;
    }

    fn max_overhead(&self) -> usize {
        TRAILER_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes and commits, as `Transformed` does for a frame it wrote.
    fn send<T: FrameTransform>(t: &mut T, frame: Frame) -> Frame {
        let out = t.encode(frame).unwrap();
        t.commit();
        out
    }

    fn session(keys: &SessionKeys, side: Side) -> SignSession {
        let mut s = Sign::new().make_transform(SessionParams::new(side, 1 << 20));
        s.set_session_keys(keys);
        s
    }

    fn error(t: &mut SignSession, frame: Frame) -> SignError {
        match t.decode(frame).unwrap_err().downcast::<SignError>() {
            Ok(e) => *e,
            Err(e) => panic!("not a SignError: {e}"),
        }
    }

    #[test]
    fn round_trip() {
        let keys = SessionKeys::new([1; 32], [2; 32]);
        let (mut client, mut server) = (session(&keys, Side::Client), session(&keys, Side::Server));
        let f = Frame::data("hello").with_request_id(4);
        let signed = send(&mut client, f.clone());
        assert_eq!(signed.payload().len(), 5 + TRAILER_LEN);
        assert_eq!(server.decode(signed).unwrap(), f);
        let back = send(&mut server, Frame::data("back"));
        assert_eq!(client.decode(back).unwrap(), Frame::data("back"));
    }

    #[test]
    fn bad_frames_are_refused() {
        let keys = SessionKeys::new([1; 32], [2; 32]);
        let mut client = session(&keys, Side::Client);
        let fresh = || session(&keys, Side::Server);
        let first = send(&mut client, Frame::data("one"));
        let second = send(&mut client, Frame::data("two"));
        assert!(matches!(
            error(&mut fresh(), second.clone()),
            SignError::Sequence {
                got: 1,
                expected: 0
            }
        ));
        let mut tampered = first.clone();
        let mut bytes = tampered.payload().to_vec();
        bytes[0] ^= 0x20;
        *tampered.payload_mut() = bytes.into();
        assert!(matches!(error(&mut fresh(), tampered), SignError::BadTag));
        assert!(matches!(
            error(&mut fresh(), Frame::data("one")),
            SignError::Missing
        ));
        assert!(matches!(
            error(&mut fresh(), first.clone().with_request_id(9)),
            SignError::BadTag
        ));
        // Reflected: a server frame back to a server (the other direction's key).
        let reflected = send(&mut fresh(), Frame::data("one"));
        assert!(matches!(error(&mut fresh(), reflected), SignError::BadTag));
        // Another session.
        let other = SessionKeys::new([3; 32], [2; 32]);
        let spliced = send(&mut session(&other, Side::Client), Frame::data("one"));
        assert!(matches!(error(&mut fresh(), spliced), SignError::BadTag));
        // No keys.
        let mut bare = Sign::new().make_transform(SessionParams::new(Side::Server, 1 << 20));
        assert!(matches!(
            error(&mut bare, first.clone()),
            SignError::NoSessionKeys
        ));
        assert!(bare.encode(Frame::data("x")).is_err());

        let mut server = fresh();
        server.decode(first.clone()).unwrap();
        server.decode(second).unwrap();
        assert!(
            matches!(error(&mut server, first), SignError::Sequence { .. }),
            "replay"
        );
    }
}
