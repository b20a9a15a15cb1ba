//! Payload encryption with ChaCha20-Poly1305 (RFC 8439) under
//! per-session, per-direction keys: the ENCRYPTED flag. [`Encrypt`] is the settings, a
//! [`MakeTransform`]; [`EncryptSession`] one session's transform.
//!
//! The keys come from the session's pre-shared-key handshake
//! ([`crate::psk`]): each direction has its own key, derived from the
//! pre-shared key and both ends' fresh randomness, so no two sessions, and
//! not the two directions of one session, ever share a key. Until the
//! handshake's [`SessionKeys`] arrive (a connection that did not run the
//! handshake), every frame is refused in both directions
//! ([`EncryptError::NoSessionKeys`]).
//!
//! Every frame of the session is sealed, in both directions, the session's
//! own frames (PING, HEARTBEAT, ERROR, DISCONNECT) and pushes included. A
//! received frame without the flag, with a bad tag, truncated, replayed,
//! reordered, from another session, from the other direction or under
//! another key is refused: the session ends with an ERROR and nothing
//! reaches the handler.
//!
//! ## Wire format
//!
//! ```text
//! payload = counter (8) ‖ ciphertext (as long as the plaintext) ‖ tag (16)
//! nonce (12 bytes) = direction (1) ‖ 00 00 00 ‖ counter (8)
//! associated data = type (2) ‖ request id (4, zero when uncorrelated) ‖ sequence (8)
//! key = HKDF-Expand-Label(traffic secret of the sending side, "key", "", 32)
//! ```
//!
//! The counter counts the frames this side *sealed* on the connection (every
//! [`encode`](FrameTransform::encode), sent or not), from 0, so no nonce is
//! ever used twice under a key; it is sent because a sealed frame may end up
//! not written (over the maximum frame size once sealed). The sequence counts
//! the frames this side sealed *and wrote*, from 0 (see
//! `FrameTransform::commit`); it is not sent: the receiver uses the one it
//! expects next, so a replayed, reordered or dropped frame fails
//! authentication. docs/PROTOCOL.md section 4 has every byte.
//!
//! ## Speed
//!
//! The wire contract fixes the ChaCha20-Poly1305 family; ring's
//! ChaCha20-Poly1305 is hand-tuned (AVX2 and NEON where the CPU has them,
//! chosen at run time, no backend flag). Per frame a session sends
//! (`Framing::encode_into`, through [`FrameTransform::encode_split`]): a
//! payload only the frame holds (an echo of what was opened, a payload the
//! application gave away) is sealed where it lies, and the counter and tag
//! go around it as small pieces ([`msgi::Outgoing`]) that the codec writes
//! beside it, with the HMAC trailer after them: no allocation, no copy (a
//! large payload is then written from its own buffer; a small one is copied
//! into the packed write buffer, as without encryption). A payload held
//! elsewhere too (a broadcast) is copied once into a buffer of its own.
//! Through `Framing::encode` (one buffer): one allocation with room at its
//! end for the HMAC trailer ([`SessionParams::tail_room`]) and one copy.
//! Per frame received: opened where it is when the payload's buffer is the
//! frame's alone (no copy), else copied once into a buffer of its own. No
//! system call. Figures in docs/BENCHMARKS.md.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Buf, BufMut, BytesMut};
use msgi::{
    BoxError, Flags, Frame, FrameTransform, MakeTransform, Outgoing, SessionKeys, SessionParams,
    Side,
};
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305};

use crate::psk::{expand_label, Named};

/// Counter bytes at the start of an encrypted payload.
pub const COUNTER_LEN: usize = 8;
/// Tag bytes at the end of an encrypted payload.
pub const TAG_LEN: usize = 16;
/// Bytes encryption adds to a payload.
pub const OVERHEAD: usize = COUNTER_LEN + TAG_LEN;

/// Why an encrypted frame was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncryptError {
    /// A frame without the ENCRYPTED flag arrived on an encrypted session.
    #[error("plaintext frame on an encrypted session")]
    Plaintext,
    /// The payload is shorter than a counter and a tag.
    #[error("encrypted payload too short ({0} bytes)")]
    Truncated(usize),
    /// The tag did not verify: tampered, replayed, reordered, from another
    /// session or direction, or another key.
    #[error(
        "decryption failed (tampered, replayed, reordered, from another session or wrong key)"
    )]
    Decrypt,
    /// The connection ran no pre-shared-key handshake, so there is no key.
    #[error("no session keys: the connection did not run the pre-shared-key handshake")]
    NoSessionKeys,
}

/// Encryption settings: makes each session's [`EncryptSession`]. Add it to
/// a [`Wire`](msgi::Wire) with `.encrypt()` ([`WireExt`](crate::WireExt)),
/// and run the pre-shared-key handshake ([`crate::psk::Psk`]) on the
/// connections, which gives the keys.
#[derive(Clone, Copy, Debug, Default)]
pub struct Encrypt {
    _private: (),
}

impl Encrypt {
    /// Encrypt every frame under the session's handshake keys.
    pub fn new() -> Self {
        Encrypt::default()
    }
}

impl Named for Encrypt {
    fn name(&self) -> Option<&'static str> {
        Some("encrypt")
    }
}

impl MakeTransform for Encrypt {
    type Transform = EncryptSession;

    fn make_transform(&self, params: SessionParams) -> EncryptSession {
        EncryptSession {
            keys: None,
            side: params.side,
            // Beside `side`, in what would be padding: no session grows.
            tail_room: u32::try_from(params.tail_room).unwrap_or(u32::MAX),
            sent: 0,
            received: 0,
            sealed: AtomicU64::new(0),
        }
    }

    fn max_overhead(&self) -> usize {
        OVERHEAD
    }
}

/// One session's two keys (boxed, only in sessions that encrypt).
struct Keys {
    seal: LessSafeKey,
    open: LessSafeKey,
}

/// The encryption transform of one session (made by [`Encrypt`]); refuses
/// every frame until the handshake's keys arrive
/// ([`FrameTransform::set_session_keys`]).
///
/// Nonces never repeat, however the transform is driven: the nonce counter
/// advances on every [`encode`](FrameTransform::encode) (committed or not),
/// the authenticated sequence only on [`commit`](FrameTransform::commit). Two
/// `encode`s without a `commit` give two frames with the same sequence (the
/// peer accepts at most one of them) under two nonces. Not `Clone`: a copy
/// would seal under the same nonces.
pub struct EncryptSession {
    keys: Option<Box<Keys>>,
    side: Side,
    /// Room left at the end of each sealed payload for the transforms
    /// nearer the wire (the HMAC trailer), so they append in place.
    tail_room: u32,
    /// Frames sent and committed: the authenticated sequence.
    sent: u64,
    received: u64,
    /// Frames sealed, committed or not: the nonce counter. An atomic only
    /// because `encode` takes `&self` (one uncontended add per frame).
    sealed: AtomicU64,
}

impl fmt::Debug for EncryptSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptSession")
            .field("side", &self.side)
            .field("keyed", &self.keys.is_some())
            .field("sent", &self.sent)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

/// The key of the frames `side` sends, from the session's keys.
fn direction_key(keys: &SessionKeys, side: Side) -> Option<LessSafeKey> {
    let key = expand_label(keys.sent_by(side), b"key", b"").ok()?;
    let key = UnboundKey::new(&CHACHA20_POLY1305, &key).ok()?;
    Some(LessSafeKey::new(key))
}

fn nonce(from: Side, counter: u64) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[0] = from.direction_byte();
    nonce[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(nonce)
}

/// The associated data of a frame of `type_field` (ENCRYPTED set).
fn associated_data(frame: &Frame, type_field: u16, seq: u64) -> [u8; 14] {
    let mut ad = [0u8; 14];
    ad[..2].copy_from_slice(&type_field.to_be_bytes());
    ad[2..6].copy_from_slice(&frame.request_id().unwrap_or(0).to_be_bytes());
    ad[6..].copy_from_slice(&seq.to_be_bytes());
    ad
}

impl EncryptSession {
    /// Seals `frame` under nonce counter `counter` and the next sequence
    /// number. Only for test vectors (the documented worked example): the
    /// caller owns the counter, and a counter used twice leaks the XOR of
    /// the plaintexts and allows forgeries.
    /// [`encode`](FrameTransform::encode) counts itself. It changes no
    /// state: [`commit`](FrameTransform::commit) moves to the next sequence.
    pub fn seal_with_counter(&self, mut frame: Frame, counter: u64) -> Result<Frame, BoxError> {
        let keys = self.keys.as_ref().ok_or(EncryptError::NoSessionKeys)?;
        let flags = frame.flags().with(Flags::ENCRYPTED);
        frame.set_flags(flags);
        let ad = associated_data(&frame, frame.type_field(), self.sent);
        let plain = frame.payload();
        let room = usize::try_from(self.tail_room).unwrap_or(0);
        let mut out = BytesMut::with_capacity(plain.len().saturating_add(OVERHEAD + room));
        out.put_u64(counter);
        out.put_slice(plain);
        let tag = keys
            .seal
            .seal_in_place_separate_tag(
                nonce(self.side, counter),
                Aad::from(ad),
                &mut out[COUNTER_LEN..],
            )
            .map_err(|_| EncryptError::Decrypt)?;
        out.put_slice(tag.as_ref());
        *frame.payload_mut() = out.freeze();
        Ok(frame)
    }
}

impl FrameTransform for EncryptSession {
    fn set_session_keys(&mut self, keys: &SessionKeys) {
        self.keys = match (
            direction_key(keys, self.side),
            direction_key(keys, self.side.peer()),
        ) {
            (Some(seal), Some(open)) => Some(Box::new(Keys { seal, open })),
            _ => None,
        };
    }

    fn decode(&mut self, mut frame: Frame) -> Result<Frame, BoxError> {
        let keys = self.keys.as_ref().ok_or(EncryptError::NoSessionKeys)?;
        if !frame.flags().contains(Flags::ENCRYPTED) {
            return Err(EncryptError::Plaintext.into());
        }
        let sealed = frame.payload();
        let len = sealed.len();
        let Some(cipher_len) = len.checked_sub(OVERHEAD) else {
            return Err(EncryptError::Truncated(len).into());
        };
        let truncated = |_| EncryptError::Truncated(len);
        let counter = sealed
            .get(..COUNTER_LEN)
            .ok_or(EncryptError::Truncated(len))?;
        let counter = u64::from_be_bytes(counter.try_into().map_err(truncated)?);
        let tag = sealed
            .get(COUNTER_LEN + cipher_len..)
            .ok_or(EncryptError::Truncated(len))?;
        let tag = Tag::try_from(tag).map_err(|_| EncryptError::Truncated(len))?;
        let ad = associated_data(&frame, frame.type_field(), self.received);
        let nonce = nonce(self.side.peer(), counter);
        let cipher = COUNTER_LEN..COUNTER_LEN + cipher_len;
        let plain = match std::mem::take(frame.payload_mut()).try_into_mut() {
            // The frame's own buffer (a small frame copied out of the read
            // buffer): opened where it is.
            Ok(mut buf) => {
                let text = buf
                    .get_mut(cipher.clone())
                    .ok_or(EncryptError::Truncated(len))?;
                keys.open
                    .open_in_place_separate_tag(nonce, Aad::from(ad), tag, text, 0..)
                    .map_err(|_| EncryptError::Decrypt)?;
                buf.truncate(cipher.end);
                buf.advance(COUNTER_LEN);
                buf
            }
            // Shared with the read buffer (frames split off it): copied once.
            Err(shared) => {
                let text = shared.get(cipher).ok_or(EncryptError::Truncated(len))?;
                let mut buf = BytesMut::from(text);
                keys.open
                    .open_in_place_separate_tag(nonce, Aad::from(ad), tag, &mut buf, 0..)
                    .map_err(|_| EncryptError::Decrypt)?;
                buf
            }
        };
        self.received += 1;
        *frame.payload_mut() = plain.freeze();
        let flags = frame.flags().without(Flags::ENCRYPTED);
        frame.set_flags(flags);
        Ok(frame)
    }

    /// Seals under the next nonce counter: it advances here, on every seal,
    /// so no nonce seals two frames even without a
    /// [`commit`](FrameTransform::commit) between them; the authenticated
    /// sequence does not.
    fn encode(&self, frame: Frame) -> Result<Frame, BoxError> {
        if self.keys.is_none() {
            return Err(EncryptError::NoSessionKeys.into());
        }
        // 2^64 seals cannot happen (centuries at a billion frames a second).
        let counter = self.sealed.fetch_add(1, Ordering::Relaxed);
        self.seal_with_counter(frame, counter)
    }

    /// Seals the payload where it lies when only this frame holds it (the
    /// payload a server opened and echoes, or any payload the application
    /// gave away): the counter goes into the head and the tag into the
    /// tail, and the payload itself is neither allocated nor copied. A
    /// payload held elsewhere too (a broadcast, a `Bytes` the caller kept)
    /// is copied once into a buffer of its own and sealed there. The bytes
    /// on the wire are those of [`encode`](FrameTransform::encode).
    fn encode_split(&self, out: &mut Outgoing) -> Result<(), BoxError> {
        let keys = self.keys.as_ref().ok_or(EncryptError::NoSessionKeys)?;
        if !out.is_whole() {
            // Pieces from a transform nearer the application: one buffer.
            let whole = std::mem::take(out).join();
            out.frame = self.encode(whole)?;
            return Ok(());
        }
        let frame = &mut out.frame;
        let counter = self.sealed.fetch_add(1, Ordering::Relaxed);
        let flags = frame.flags().with(Flags::ENCRYPTED);
        frame.set_flags(flags);
        let ad = associated_data(frame, frame.type_field(), self.sent);
        let mut text = match std::mem::take(frame.payload_mut()).try_into_mut() {
            Ok(own) => own,
            Err(shared) => BytesMut::from(&shared[..]),
        };
        let tag = keys
            .seal
            .seal_in_place_separate_tag(nonce(self.side, counter), Aad::from(ad), &mut text)
            .map_err(|_| EncryptError::Decrypt)?;
        *frame.payload_mut() = text.freeze();
        // Both fit: 8 bytes of `Outgoing::HEAD`, 16 of `Outgoing::TAIL`.
        let placed =
            out.head.try_extend(&counter.to_be_bytes()) && out.tail.try_extend(tag.as_ref());
        debug_assert!(placed, "a counter and a tag fit an empty head and tail");
        Ok(())
    }

    /// The frame sealed under the current sequence was written: the next
    /// one uses the next sequence.
    fn commit(&mut self) {
        self.sent += 1;
    }

    fn max_overhead(&self) -> usize {
        OVERHEAD
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

    fn pair(keys: &SessionKeys) -> (EncryptSession, EncryptSession) {
        let make = Encrypt::new();
        let mut client = make.make_transform(SessionParams::new(Side::Client, 1 << 20));
        let mut server = make.make_transform(SessionParams::new(Side::Server, 1 << 20));
        client.set_session_keys(keys);
        server.set_session_keys(keys);
        (client, server)
    }

    fn refused(t: &mut EncryptSession, frame: Frame) -> String {
        t.decode(frame).unwrap_err().to_string()
    }

    #[test]
    fn round_trip_in_both_directions() {
        let (mut client, mut server) = pair(&SessionKeys::new([1; 32], [2; 32]));
        for i in 0..3u32 {
            let f = Frame::data(format!("secret {i}")).with_request_id(i);
            let sealed = send(&mut client, f.clone());
            assert!(sealed.flags().contains(Flags::ENCRYPTED));
            assert!(!sealed.payload().windows(6).any(|w| w == b"secret"));
            assert_eq!(sealed.payload().len(), f.payload().len() + OVERHEAD);
            assert_eq!(server.decode(sealed).unwrap(), f);
            let back = send(&mut server, Frame::heartbeat());
            assert_eq!(client.decode(back).unwrap(), Frame::heartbeat());
        }
    }

    #[test]
    fn without_keys_nothing_is_sealed_or_opened() {
        let make = Encrypt::new();
        let mut bare = make.make_transform(SessionParams::new(Side::Server, 1 << 20));
        let err = bare.encode(Frame::data("x")).unwrap_err();
        assert!(matches!(
            err.downcast_ref(),
            Some(EncryptError::NoSessionKeys)
        ));
        let (mut client, _) = pair(&SessionKeys::new([1; 32], [2; 32]));
        let sealed = send(&mut client, Frame::data("x"));
        assert!(refused(&mut bare, sealed).starts_with("no session keys"));
        assert!(!format!("{client:?}").contains("1, 1"), "no key in Debug");
    }

    #[test]
    fn every_kind_of_bad_frame_is_refused() {
        let keys = SessionKeys::new([1; 32], [2; 32]);
        let (mut client, server) = pair(&keys);
        let first = send(&mut client, Frame::data("one"));
        let second = send(&mut client, Frame::data("two"));
        let fresh = || pair(&keys).1;

        // Reordered: the second frame first.
        assert!(refused(&mut fresh(), second.clone()).starts_with("decryption failed"));
        // Tampered payload, tampered header (request id), truncated.
        let mut tampered = first.clone();
        let mut bytes = tampered.payload().to_vec();
        bytes[COUNTER_LEN] ^= 1;
        *tampered.payload_mut() = bytes.into();
        assert!(fresh().decode(tampered).is_err());
        assert!(fresh().decode(first.clone().with_request_id(1)).is_err());
        let mut short = first.clone();
        *short.payload_mut() = first.payload().slice(..20);
        assert!(refused(&mut fresh(), short).starts_with("encrypted payload too short"));
        // A changed counter is another nonce: refused.
        let mut recounted = first.clone();
        let mut bytes = recounted.payload().to_vec();
        bytes[7] ^= 1;
        *recounted.payload_mut() = bytes.into();
        assert!(fresh().decode(recounted).is_err());
        // Plaintext.
        assert!(refused(&mut fresh(), Frame::data("one")).starts_with("plaintext frame"));
        // Reflected: the server's own frame back to it (another key).
        let reflected = send(&mut fresh(), Frame::data("x"));
        assert!(fresh().decode(reflected).is_err());
        // Another session's keys.
        let (mut other, _) = pair(&SessionKeys::new([3; 32], [2; 32]));
        assert!(fresh()
            .decode(send(&mut other, Frame::data("one")))
            .is_err());

        // In order it works; then a replay of the first fails.
        let mut server = server;
        server.decode(first.clone()).unwrap();
        server.decode(second).unwrap();
        assert!(server.decode(first).is_err());
    }

    #[test]
    fn encode_twice_without_commit_never_reuses_a_nonce() {
        let keys = SessionKeys::new([1; 32], [2; 32]);
        let (client, mut server) = pair(&keys);
        let counter = |f: &Frame| f.payload().slice(..COUNTER_LEN);
        let first = client.encode(Frame::data("one")).unwrap();
        let second = client.encode(Frame::data("two")).unwrap();
        assert_ne!(
            counter(&first),
            counter(&second),
            "two frames under one nonce"
        );
        // The sequence did not move: either frame is the peer's frame 0,
        // and only one of them is accepted.
        assert_eq!(pair(&keys).1.decode(second).unwrap(), Frame::data("two"));
        assert_eq!(server.decode(first).unwrap(), Frame::data("one"));
    }
}
