//! Payload encryption with XChaCha20-Poly1305 and a pre-shared key: the
//! ENCRYPTED flag. [`Encrypt`] is the settings, a [`MakeTransform`];
//! [`EncryptSession`] one session's transform.
//!
//! Every frame of the session is sealed, in both directions, the session's
//! own frames (PING, HEARTBEAT, ERROR, DISCONNECT) and pushes included. A
//! received frame without the flag, with a bad tag, truncated, replayed,
//! reordered, from the other direction or under another key is refused: the
//! session ends with an ERROR and nothing reaches the handler.
//!
//! ## Wire format
//!
//! ```text
//! payload = nonce (24 bytes) ‖ ciphertext (as long as the plaintext) ‖ tag (16 bytes)
//! associated data = type (2) ‖ request id (4, zero when uncorrelated) ‖ direction (1) ‖ sequence (8)
//! ```
//!
//! `type` is the frame's type field with ENCRYPTED set, as this layer sends
//! it; direction is `0x01` client to server, `0x02` server to client; the
//! sequence counts the frames this layer sealed and that were written (see
//! `FrameTransform::commit`) in that direction on this
//! connection, from 0. The sequence is not sent: the receiver uses the one
//! it expects, so a replayed or reordered frame fails authentication.
//!
//! ## Nonces
//!
//! One pre-shared key serves every session, across restarts, with no key
//! exchange, so a nonce must never repeat across sessions. XChaCha20's
//! 192-bit nonces make that easy: this layer draws 16 random bytes from the
//! operating system when a connection's transform is made and appends an 8-byte count of
//! the frames sealed so far (advanced by every seal, even of a frame that
//! is then not written, so it equals the sequence as long as every sealed
//! frame is sent), so nonces are unique within a connection by construction and
//! across connections with overwhelming probability, without a system call
//! per frame. Receivers do not interpret the nonce; any unique 24 bytes will
//! do. The price is 24 bytes per frame.
//!
//! ## Speed
//!
//! poly1305's AVX2 backend is slow for messaging-sized frames (it prepares
//! the key for every message); build with `--cfg poly1305_backend="soft"`
//! (as this workspace's `.cargo/config.toml` does) for about 3x faster
//! sealing below a few KiB. Figures in docs/BENCHMARKS.md.
//!
//! ## Replays
//!
//! What this does not stop: without a handshake in which the server
//! contributes fresh randomness, a recording of a whole session can be
//! replayed from its first frame as a new session. Use TLS where that
//! matters.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use msgi::{BoxError, Flags, Frame, FrameTransform, MakeTransform, SessionParams, Side};

/// Nonce bytes at the start of an encrypted payload.
pub const NONCE_LEN: usize = 24;
/// Tag bytes at the end of an encrypted payload.
pub const TAG_LEN: usize = 16;

/// Why an encrypted frame was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncryptError {
    /// A frame without the ENCRYPTED flag arrived on an encrypted session.
    #[error("plaintext frame on an encrypted session")]
    Plaintext,
    /// The payload is shorter than a nonce and a tag.
    #[error("encrypted payload too short ({0} bytes)")]
    Truncated(usize),
    /// The tag did not verify: tampered, replayed, reordered, or another key.
    #[error("decryption failed (tampered, replayed, reordered or wrong key)")]
    Decrypt,
    /// No randomness for the connection's nonces.
    #[error("no random nonce prefix available: {0}")]
    Random(String),
}

/// A 32-byte pre-shared key.
#[derive(Clone)]
pub struct EncryptionKey(Arc<XChaCha20Poly1305>);

impl EncryptionKey {
    /// A key from exactly 32 bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        EncryptionKey(Arc::new(XChaCha20Poly1305::new(&bytes.into())))
    }

    /// A key from a slice, which must be 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let bytes: [u8; 32] = bytes.try_into().ok()?;
        Some(EncryptionKey::new(bytes))
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey(..)")
    }
}

/// Encryption settings: makes each session's [`EncryptSession`], with a
/// nonce prefix of its own. Add it to a [`Wire`](msgi::Wire) with
/// `.encrypt(key)` ([`WireExt`](crate::WireExt)).
#[derive(Clone, Debug)]
pub struct Encrypt {
    key: EncryptionKey,
}

impl Encrypt {
    /// Encrypt with `key`.
    pub fn new(key: EncryptionKey) -> Self {
        Encrypt { key }
    }
}

impl MakeTransform for Encrypt {
    type Transform = EncryptSession;

    /// Draws the session's nonce prefix from the operating system (if that
    /// fails, every seal of the session fails with [`EncryptError::Random`]).
    fn make_transform(&self, params: SessionParams) -> EncryptSession {
        EncryptSession {
            key: self.key.clone(),
            side: params.side,
            sent: 0,
            received: 0,
            sealed: AtomicU64::new(0),
            nonce_prefix: NoncePrefix::draw(),
        }
    }

    fn max_overhead(&self) -> usize {
        NONCE_LEN + TAG_LEN
    }
}

/// The encryption transform of one session (made by [`Encrypt`]).
///
/// Nonces never repeat, however the transform is driven: the nonce is the
/// connection's random prefix followed by a count of the frames *sealed*,
/// advanced by every [`encode`](FrameTransform::encode) (committed or not),
/// while the authenticated sequence advances only on
/// [`commit`](FrameTransform::commit). Two `encode`s without a `commit`
/// give two frames with the same sequence (the peer accepts at most one of
/// them) but never two frames under one nonce. A clone draws its own
/// prefix (so a sending half and a receiving half may be split off by
/// cloning).
#[derive(Debug)]
pub struct EncryptSession {
    key: EncryptionKey,
    side: Side,
    /// Frames sent and committed: the authenticated sequence.
    sent: u64,
    received: u64,
    /// Frames sealed under `nonce_prefix`, committed or not: the last 8
    /// bytes of the nonce. An atomic only because `encode` takes `&self`
    /// (one uncontended add per frame, next to the AEAD).
    sealed: AtomicU64,
    /// Random first 16 bytes of this connection's nonces.
    nonce_prefix: NoncePrefix,
}

/// The random part of a connection's nonces.
#[derive(Debug, Clone, Copy)]
enum NoncePrefix {
    /// Drawn from the operating system.
    Drawn([u8; 16]),
    /// The operating system gave no randomness: nothing may be sealed.
    Failed(getrandom::Error),
}

impl NoncePrefix {
    fn draw() -> NoncePrefix {
        let mut prefix = [0u8; 16];
        match getrandom::fill(&mut prefix) {
            Ok(()) => NoncePrefix::Drawn(prefix),
            Err(e) => NoncePrefix::Failed(e),
        }
    }
}

impl Clone for EncryptSession {
    /// A clone gets a fresh nonce prefix (and nonce count), so the original
    /// and the clone never seal under one nonce; it keeps the sequences, so
    /// either may go on with the session.
    fn clone(&self) -> Self {
        let nonce_prefix = match self.nonce_prefix {
            NoncePrefix::Drawn(_) => NoncePrefix::draw(),
            other => other,
        };
        EncryptSession {
            key: self.key.clone(),
            side: self.side,
            sent: self.sent,
            received: self.received,
            sealed: AtomicU64::new(0),
            nonce_prefix,
        }
    }
}

/// The associated data for a frame of `type_field` (ENCRYPTED set) sent by `from`.
fn associated_data(frame: &Frame, type_field: u16, from: Side, seq: u64) -> [u8; 15] {
    let mut ad = [0u8; 15];
    ad[..2].copy_from_slice(&type_field.to_be_bytes());
    ad[2..6].copy_from_slice(&frame.request_id().unwrap_or(0).to_be_bytes());
    ad[6] = from.direction_byte();
    ad[7..].copy_from_slice(&seq.to_be_bytes());
    ad
}

impl EncryptSession {
    /// Seals `frame` with the given nonce and the next sequence number.
    /// Only for test vectors (the documented worked example): the caller
    /// owns the nonce, and a nonce used twice under a key leaks the XOR of
    /// the plaintexts and allows forgeries. [`encode`](FrameTransform::encode)
    /// draws unique nonces itself. It changes no state:
    /// [`commit`](FrameTransform::commit) moves to the next sequence.
    pub fn seal_with_nonce(
        &self,
        mut frame: Frame,
        nonce: [u8; NONCE_LEN],
    ) -> Result<Frame, BoxError> {
        let flags = frame.flags().with(Flags::ENCRYPTED);
        frame.set_flags(flags);
        let ad = associated_data(&frame, frame.type_field(), self.side, self.sent);
        let plain = frame.payload();
        let mut out = BytesMut::with_capacity(NONCE_LEN + plain.len() + TAG_LEN);
        out.put_slice(&nonce);
        out.put_slice(plain);
        let tag = self
            .key
            .0
            .encrypt_inout_detached(&XNonce::from(nonce), &ad, (&mut out[NONCE_LEN..]).into())
            .map_err(|_| EncryptError::Decrypt)?;
        out.put_slice(&tag);
        *frame.payload_mut() = out.freeze();
        Ok(frame)
    }
}

impl FrameTransform for EncryptSession {
    fn decode(&mut self, mut frame: Frame) -> Result<Frame, BoxError> {
        if !frame.flags().contains(Flags::ENCRYPTED) {
            return Err(EncryptError::Plaintext.into());
        }
        let sealed = frame.payload();
        let len = sealed.len();
        if len < NONCE_LEN + TAG_LEN {
            return Err(EncryptError::Truncated(len).into());
        }
        let ad = associated_data(&frame, frame.type_field(), self.side.peer(), self.received);
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (cipher, tag) = rest.split_at(rest.len() - TAG_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| EncryptError::Truncated(len))?;
        let tag = Tag::try_from(tag).map_err(|_| EncryptError::Truncated(len))?;
        let mut plain = BytesMut::from(cipher);
        self.key
            .0
            .decrypt_inout_detached(&nonce, &ad, (&mut plain[..]).into(), &tag)
            .map_err(|_| EncryptError::Decrypt)?;
        self.received += 1;
        *frame.payload_mut() = plain.freeze();
        let flags = frame.flags().without(Flags::ENCRYPTED);
        frame.set_flags(flags);
        Ok(frame)
    }

    /// Seals under the next nonce: the nonce count advances here, on every
    /// seal, so no nonce seals two frames even without a
    /// [`commit`](FrameTransform::commit) between them; the authenticated
    /// sequence does not.
    fn encode(&self, frame: Frame) -> Result<Frame, BoxError> {
        let prefix = match self.nonce_prefix {
            NoncePrefix::Drawn(prefix) => prefix,
            NoncePrefix::Failed(e) => return Err(EncryptError::Random(e.to_string()).into()),
        };
        // 2^64 seals under one prefix cannot happen (centuries at a
        // billion frames a second), so the count never wraps in practice.
        let count = self.sealed.fetch_add(1, Ordering::Relaxed);
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..16].copy_from_slice(&prefix);
        nonce[16..].copy_from_slice(&count.to_be_bytes());
        self.seal_with_nonce(frame, nonce)
    }

    /// The frame sealed under the current sequence was written: the next
    /// one uses the next sequence.
    fn commit(&mut self) {
        self.sent += 1;
    }

    fn max_overhead(&self) -> usize {
        NONCE_LEN + TAG_LEN
    }
}

/// Reads a key file: 32 raw bytes, or 64 hex digits (whitespace around ignored).
pub fn key_from_file_contents(contents: &[u8]) -> Option<EncryptionKey> {
    if contents.len() == 32 {
        return EncryptionKey::from_slice(contents);
    }
    let text = std::str::from_utf8(contents).ok()?.trim();
    // Hex digits only: `u8::from_str_radix` alone would also take a sign (`+f`).
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut key = [0u8; 32];
    for (byte, pair) in key.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(EncryptionKey::new(key))
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

    fn pair(key: [u8; 32]) -> (EncryptSession, EncryptSession) {
        let make = Encrypt::new(EncryptionKey::new(key));
        let client = make.make_transform(SessionParams::new(Side::Client, 1 << 20));
        let server = make.make_transform(SessionParams::new(Side::Server, 1 << 20));
        (client, server)
    }

    #[test]
    fn round_trip_in_both_directions() {
        let (mut client, mut server) = pair([7; 32]);
        for i in 0..3u32 {
            let f = Frame::data(format!("secret {i}")).with_request_id(i);
            let sealed = send(&mut client, f.clone());
            assert!(sealed.flags().contains(Flags::ENCRYPTED));
            assert!(!sealed.payload().windows(6).any(|w| w == b"secret"));
            assert_eq!(
                sealed.payload().len(),
                f.payload().len() + NONCE_LEN + TAG_LEN
            );
            assert_eq!(server.decode(sealed).unwrap(), f);
            let back = send(&mut server, Frame::heartbeat());
            assert_eq!(client.decode(back).unwrap(), Frame::heartbeat());
        }
    }

    #[test]
    fn every_kind_of_bad_frame_is_refused() {
        let (mut client, mut server) = pair([1; 32]);
        let first = send(&mut client, Frame::data("one"));
        let second = send(&mut client, Frame::data("two"));

        // Reordered: the second frame first.
        assert!(server.clone().decode(second.clone()).is_err());
        // Tampered payload, tampered header (request id), truncated.
        let mut tampered = first.clone();
        let mut bytes = tampered.payload().to_vec();
        bytes[NONCE_LEN] ^= 1;
        *tampered.payload_mut() = bytes.into();
        assert!(server.clone().decode(tampered).is_err());
        assert!(server
            .clone()
            .decode(first.clone().with_request_id(1))
            .is_err());
        let mut short = first.clone();
        *short.payload_mut() = first.payload().slice(..30);
        assert!(server.clone().decode(short).is_err());
        // Plaintext, and the other direction reflected back.
        assert!(server.clone().decode(Frame::data("one")).is_err());
        let reflected = server.clone().encode(Frame::data("x")).unwrap();
        assert!(server.clone().decode(reflected).is_err());
        // Wrong key.
        let (mut other, _) = pair([2; 32]);
        assert!(server
            .clone()
            .decode(send(&mut other, Frame::data("one")))
            .is_err());

        // In order it works; then a replay of the first fails.
        server.decode(first.clone()).unwrap();
        server.decode(second).unwrap();
        assert!(server.decode(first).is_err());
    }

    #[test]
    fn nonces_differ_between_frames_and_connections() {
        let (mut a, _) = pair([5; 32]);
        let (mut b, _) = pair([5; 32]);
        let n = |f: Frame| f.payload().slice(..NONCE_LEN);
        let a0 = n(send(&mut a, Frame::data("x")));
        let a1 = n(send(&mut a, Frame::data("x")));
        let b0 = n(send(&mut b, Frame::data("x")));
        assert_ne!(a0, a1);
        assert_ne!(a0, b0);
        assert_eq!(a0[..16], a1[..16], "one prefix per connection");
    }

    #[test]
    fn encode_twice_without_commit_never_reuses_a_nonce() {
        let (client, mut server) = pair([3; 32]);
        let n = |f: &Frame| f.payload().slice(..NONCE_LEN);
        let first = client.encode(Frame::data("one")).unwrap();
        let second = client.encode(Frame::data("two")).unwrap();
        assert_ne!(n(&first), n(&second), "two frames sealed under one nonce");
        // A clone of the started transform seals under a nonce of its own.
        let third = client.clone().encode(Frame::data("three")).unwrap();
        assert_ne!(n(&third), n(&first));
        assert_ne!(n(&third), n(&second));
        // The sequence did not move: either frame is the peer's frame 0,
        // and only one of them is accepted.
        assert_eq!(server.clone().decode(second).unwrap(), Frame::data("two"));
        assert_eq!(server.decode(first).unwrap(), Frame::data("one"));
        assert!(server.decode(third).is_err(), "frame 0 again");
    }

    #[test]
    fn key_files() {
        assert!(key_from_file_contents(&[9u8; 32]).is_some());
        let hex = "00".repeat(32) + "\n";
        assert!(key_from_file_contents(hex.as_bytes()).is_some());
        assert!(key_from_file_contents(b"short").is_none());
        // A sign is not a hex digit, though `u8::from_str_radix` takes one.
        let signed = format!("+f{}", "0".repeat(62));
        assert!(key_from_file_contents(signed.as_bytes()).is_none());
        let upper = "AB".repeat(32);
        assert!(key_from_file_contents(upper.as_bytes()).is_some());
    }
}
