//! HMAC-SHA256 authentication of every frame: the AUTHENTICATED flag.
//! [`Sign`] is the settings, a [`MakeTransform`]; [`SignSession`] one
//! session's transform.
//!
//! Each frame carries a key id, a sequence number and a tag over its header
//! fields and payload. A receiver refuses frames without the flag, with an
//! unknown or retired key id, a bad tag (checked in constant time), or a
//! sequence number other than the next one expected (replays and
//! reordering). The key id of an accepted frame is put in the frame's
//! extensions as [`AuthenticatedKey`], so handlers can see who signed it.
//!
//! ## Wire format
//!
//! ```text
//! payload = data ‖ key id (2) ‖ sequence (8) ‖ tag (32)
//! tag = HMAC-SHA256(key, type (2) ‖ request id (4, zero when uncorrelated) ‖ direction (1)
//!                        ‖ data ‖ key id (2) ‖ sequence (8))
//! ```
//!
//! `type` is the frame's type field with AUTHENTICATED set; direction is
//! `0x01` client to server, `0x02` server to client; the sequence counts
//! the frames this layer signed and that were written (a frame refused
//! further down, such as one over the maximum frame size, uses no number)
//! in that direction on this connection, from 0.
//!
//! ## Key rotation
//!
//! [`HmacKeys`] is shared by every session (clones share the ring). Both
//! ends hold their own ring, so a rotation must never have one end sign
//! with a key the other does not accept yet. The staged way, with no frame
//! refused at any point:
//!
//! 1. **Accept** the new key on every peer: [`HmacKeys::accept`]`(2, key)`.
//!    Nothing is signed with it yet.
//! 2. Once every peer accepts it, **sign** with it, peer by peer, in any
//!    order: [`HmacKeys::sign_with`]`(2)`. The key signed with before stays
//!    accepted, so frames still signed with it by the others pass.
//! 3. Once every peer signs with the new key, **retire** the old one on
//!    every peer: [`HmacKeys::retire`]`(1)` (or [`HmacKeys::retire_after`]).
//!
//! [`HmacKeys::rotate`] does steps 1 and 2 at once on one end and retires
//! the old key after a grace period; the other end refuses the new key's
//! frames until it accepts it, so use `rotate` only where every peer
//! already accepts the new key (or shares this ring).

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use ::hmac::{Hmac, KeyInit, Mac};
use bytes::{BufMut, BytesMut};
use msgi::{BoxError, Flags, Frame, FrameTransform, MakeTransform, SessionParams, Side};
use sha2::Sha256;
use tokio::time::Instant;

/// Bytes the layer appends to a payload: key id, sequence, tag.
pub const TRAILER_LEN: usize = 2 + 8 + 32;

/// The key id that signed a received frame; in the frame's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AuthenticatedKey(pub u16);

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
    /// The key id is not (or no longer) accepted.
    #[error("unknown or retired key id {0}")]
    UnknownKey(u16),
    /// The tag did not verify.
    #[error("authentication failed")]
    BadTag,
    /// The ring has no key to sign with (cannot happen through the
    /// [`HmacKeys`] API; kept as an error rather than a panic).
    #[error("no signing key")]
    NoSigningKey,
    /// The sequence number is not the next one: a replay or reordering.
    #[error("replayed or reordered frame (sequence {got}, expected {expected})")]
    Sequence {
        /// The sequence number in the frame.
        got: u64,
        /// The one expected.
        expected: u64,
    },
}

struct Key {
    id: u16,
    mac: Hmac<Sha256>,
    /// When the key stops being accepted; `None`: until retired.
    retire_at: Option<Instant>,
}

impl Key {
    fn is_live(&self, now: Instant) -> bool {
        self.retire_at.is_none_or(|t| t > now)
    }
}

struct Ring {
    /// The id of the key frames are signed with; always in `keys`, never
    /// scheduled for retirement.
    signing: u16,
    /// Every accepted key, the signing one included.
    keys: Vec<Key>,
}

impl Ring {
    fn get(&self, id: u16, now: Instant) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == id && k.is_live(now))
    }

    fn prune(&mut self, now: Instant) {
        self.keys.retain(|k| k.is_live(now));
    }
}

/// Why a key-ring change was refused; the ring is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyRingError {
    /// The id is not (or no longer) an accepted key.
    #[error("key id {0} is not an accepted key")]
    NotAccepted(u16),
    /// The id names the key frames are signed with, which cannot be
    /// replaced or retired: sign with another key first.
    #[error("key id {0} is the signing key")]
    SigningKey(u16),
}

/// The keys of an HMAC-authenticated deployment: one key for signing,
/// and every key accepted when verifying (the signing one included, older
/// and newer ones during a rotation). Clones share the ring, so a change
/// reaches every session. Rotation steps: [module docs](self).
#[derive(Clone)]
pub struct HmacKeys {
    ring: Arc<RwLock<Ring>>,
}

impl fmt::Debug for HmacKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ring = self.read();
        f.debug_struct("HmacKeys")
            .field("signing", &ring.signing)
            .field(
                "accepted",
                &ring.keys.iter().map(|k| k.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn prepared(key: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length.
    <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

impl HmacKeys {
    /// A ring that signs with `key` (id `id`) and accepts only it.
    pub fn new(id: u16, key: &[u8]) -> Self {
        HmacKeys {
            ring: Arc::new(RwLock::new(Ring {
                signing: id,
                keys: vec![Key {
                    id,
                    mac: prepared(key),
                    retire_at: None,
                }],
            })),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Ring> {
        self.ring.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Ring> {
        self.ring.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Step 1 of a rotation: accepts frames signed with `key` (id `id`)
    /// from now on, without signing with it. An accepted key of the same
    /// id is replaced; the signing key's id is refused.
    pub fn accept(&self, id: u16, key: &[u8]) -> Result<(), KeyRingError> {
        let mut ring = self.write();
        if ring.signing == id {
            return Err(KeyRingError::SigningKey(id));
        }
        ring.prune(Instant::now());
        ring.keys.retain(|k| k.id != id);
        ring.keys.push(Key {
            id,
            mac: prepared(key),
            retire_at: None,
        });
        Ok(())
    }

    /// Step 2: signs with the accepted key `id` from now on. The key signed
    /// with before stays accepted until it is retired.
    pub fn sign_with(&self, id: u16) -> Result<(), KeyRingError> {
        let mut ring = self.write();
        let now = Instant::now();
        if ring.get(id, now).is_none() {
            return Err(KeyRingError::NotAccepted(id));
        }
        if let Some(key) = ring.keys.iter_mut().find(|k| k.id == id) {
            // Signing with it makes it permanent until signing moves on.
            key.retire_at = None;
        }
        ring.signing = id;
        Ok(())
    }

    /// Step 3: stops accepting key `id` now. The signing key is refused.
    pub fn retire(&self, id: u16) -> Result<(), KeyRingError> {
        self.retire_after(id, Duration::ZERO)
    }

    /// Stops accepting key `id` once `grace` has passed (a grace too long
    /// for the clock means never). The signing key is refused.
    pub fn retire_after(&self, id: u16, grace: Duration) -> Result<(), KeyRingError> {
        let mut ring = self.write();
        let now = Instant::now();
        if ring.signing == id {
            return Err(KeyRingError::SigningKey(id));
        }
        let key = ring
            .keys
            .iter_mut()
            .find(|k| k.id == id && k.is_live(now))
            .ok_or(KeyRingError::NotAccepted(id))?;
        key.retire_at = now.checked_add(grace);
        if grace.is_zero() {
            ring.prune(now);
        }
        Ok(())
    }

    /// Signs with `key` (id `id`) from now on, at once, and keeps accepting
    /// the key signed with before for `grace` (a grace too long for the
    /// clock means until retired).
    ///
    /// This is steps 1 and 2 of a rotation in one go on **this** end: a
    /// peer that does not accept key `id` yet refuses every frame signed
    /// with it. Between ends with separate rings, use [`accept`], then
    /// [`sign_with`], then [`retire`] (module docs).
    ///
    /// [`accept`]: HmacKeys::accept
    /// [`sign_with`]: HmacKeys::sign_with
    /// [`retire`]: HmacKeys::retire
    pub fn rotate(&self, id: u16, key: &[u8], grace: Duration) {
        let mut ring = self.write();
        let now = Instant::now();
        ring.prune(now);
        let previous = ring.signing;
        ring.keys.retain(|k| k.id != id);
        ring.keys.push(Key {
            id,
            mac: prepared(key),
            retire_at: None,
        });
        ring.signing = id;
        if previous != id {
            if let Some(old) = ring.keys.iter_mut().find(|k| k.id == previous) {
                old.retire_at = now.checked_add(grace);
            }
        }
    }

    /// The id of the key used for signing.
    pub fn current_id(&self) -> u16 {
        self.read().signing
    }

    /// The ids of the keys accepted now, the signing one included.
    pub fn accepted_ids(&self) -> Vec<u16> {
        let now = Instant::now();
        let ring = self.read();
        ring.keys
            .iter()
            .filter(|k| k.is_live(now))
            .map(|k| k.id)
            .collect()
    }

    /// The signing key (always in the ring: it cannot be retired or
    /// replaced while it signs).
    fn signer(&self) -> Option<(u16, Hmac<Sha256>)> {
        let ring = self.read();
        let key = ring.keys.iter().find(|k| k.id == ring.signing)?;
        Some((key.id, key.mac.clone()))
    }

    fn verifier(&self, id: u16) -> Option<Hmac<Sha256>> {
        self.read().get(id, Instant::now()).map(|k| k.mac.clone())
    }
}

/// HMAC settings: makes each session's [`SignSession`]. Every session
/// shares the key ring (that is what makes a rotation reach them all); each
/// gets its own sequences, from 0. Add it to a [`Wire`](msgi::Wire) with
/// `.sign(keys)` ([`WireExt`](crate::WireExt)).
#[derive(Clone, Debug)]
pub struct Sign {
    keys: HmacKeys,
}

impl Sign {
    /// Authenticate with the keys in `keys`.
    pub fn new(keys: HmacKeys) -> Self {
        Sign { keys }
    }
}

impl MakeTransform for Sign {
    type Transform = SignSession;

    fn make_transform(&self, params: SessionParams) -> SignSession {
        SignSession {
            keys: self.keys.clone(),
            side: params.side,
            sent: 0,
            received: 0,
        }
    }

    fn max_overhead(&self) -> usize {
        TRAILER_LEN
    }
}

/// The HMAC transform of one session (made by [`Sign`]).
#[derive(Clone, Debug)]
pub struct SignSession {
    keys: HmacKeys,
    side: Side,
    sent: u64,
    received: u64,
}

fn feed(mac: &mut Hmac<Sha256>, frame: &Frame, from: Side, data: &[u8], key_id: u16, seq: u64) {
    mac.update(&frame.type_field().to_be_bytes());
    mac.update(&frame.request_id().unwrap_or(0).to_be_bytes());
    mac.update(&[from.direction_byte()]);
    mac.update(data);
    mac.update(&key_id.to_be_bytes());
    mac.update(&seq.to_be_bytes());
}

impl FrameTransform for SignSession {
    fn decode(&mut self, mut frame: Frame) -> Result<Frame, BoxError> {
        if !frame.flags().contains(Flags::AUTHENTICATED) {
            return Err(SignError::Missing.into());
        }
        let payload = frame.payload().clone();
        let len = payload.len();
        let Some(data_len) = len.checked_sub(TRAILER_LEN) else {
            return Err(SignError::Truncated(len).into());
        };
        let (data, trailer) = payload.split_at(data_len);
        let (key_id, rest) = trailer.split_at(2);
        let (seq, tag) = rest.split_at(8);
        let truncated = |_| SignError::Truncated(len);
        let key_id = u16::from_be_bytes(key_id.try_into().map_err(truncated)?);
        let seq = u64::from_be_bytes(seq.try_into().map_err(truncated)?);
        let mut mac = self
            .keys
            .verifier(key_id)
            .ok_or(SignError::UnknownKey(key_id))?;
        feed(&mut mac, &frame, self.side.peer(), data, key_id, seq);
        mac.verify_slice(tag).map_err(|_| SignError::BadTag)?;
        if seq != self.received {
            return Err(SignError::Sequence {
                got: seq,
                expected: self.received,
            }
            .into());
        }
        self.received += 1;
        *frame.payload_mut() = payload.slice(..data_len);
        let flags = frame.flags().without(Flags::AUTHENTICATED);
        frame.set_flags(flags);
        frame.extensions_mut().insert(AuthenticatedKey(key_id));
        Ok(frame)
    }

    fn encode(&self, mut frame: Frame) -> Result<Frame, BoxError> {
        let flags = frame.flags().with(Flags::AUTHENTICATED);
        frame.set_flags(flags);
        let (key_id, mut mac) = self.keys.signer().ok_or(SignError::NoSigningKey)?;
        let seq = self.sent;
        feed(&mut mac, &frame, self.side, frame.payload(), key_id, seq);
        let tag = mac.finalize().into_bytes();
        let mut out = BytesMut::with_capacity(frame.payload().len() + TRAILER_LEN);
        out.put_slice(frame.payload());
        out.put_u16(key_id);
        out.put_u64(seq);
        out.put_slice(&tag);
        *frame.payload_mut() = out.freeze();
        Ok(frame)
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

    fn session(keys: &HmacKeys, side: Side) -> SignSession {
        Sign::new(keys.clone()).make_transform(SessionParams::new(side, 1 << 20))
    }

    fn pair(keys: &HmacKeys) -> (SignSession, SignSession) {
        (session(keys, Side::Client), session(keys, Side::Server))
    }

    #[test]
    fn round_trip_and_key_id_in_extensions() {
        let keys = HmacKeys::new(1, b"secret");
        let (mut client, mut server) = pair(&keys);
        let f = Frame::data("hello").with_request_id(4);
        let signed = send(&mut client, f.clone());
        assert_eq!(signed.payload().len(), 5 + TRAILER_LEN);
        let got = server.decode(signed).unwrap();
        assert_eq!(got, f);
        assert_eq!(
            got.extensions().get::<AuthenticatedKey>(),
            Some(&AuthenticatedKey(1))
        );
    }

    #[test]
    fn bad_frames_are_refused() {
        let keys = HmacKeys::new(1, b"secret");
        let (mut client, mut server) = pair(&keys);
        let first = send(&mut client, Frame::data("one"));
        let second = send(&mut client, Frame::data("two"));
        assert!(matches!(
            server
                .clone()
                .decode(second.clone())
                .unwrap_err()
                .downcast_ref::<SignError>(),
            Some(SignError::Sequence {
                got: 1,
                expected: 0
            })
        ));
        let mut tampered = first.clone();
        let mut bytes = tampered.payload().to_vec();
        bytes[0] ^= 0x20;
        *tampered.payload_mut() = bytes.into();
        assert!(server.clone().decode(tampered).is_err());
        assert!(server.clone().decode(Frame::data("one")).is_err());
        assert!(server
            .clone()
            .decode(first.clone().with_request_id(9))
            .is_err());
        let other = HmacKeys::new(1, b"other");
        let (mut mallory, _) = pair(&other);
        assert!(server
            .clone()
            .decode(send(&mut mallory, Frame::data("one")))
            .is_err());
        server.decode(first.clone()).unwrap();
        server.decode(second).unwrap();
        assert!(server.decode(first).is_err(), "replay");
    }

    #[tokio::test(start_paused = true)]
    async fn rotation_accepts_the_old_key_for_the_grace_period() {
        let keys = HmacKeys::new(1, b"old");
        let (mut client, mut server) = pair(&keys);
        let old_signed = send(&mut client, Frame::data("a"));
        keys.rotate(2, b"new", Duration::from_secs(10));
        assert_eq!(keys.current_id(), 2);
        let new_signed = send(&mut client, Frame::data("b"));
        let a = server.decode(old_signed).unwrap();
        assert_eq!(
            a.extensions().get::<AuthenticatedKey>(),
            Some(&AuthenticatedKey(1))
        );
        let b = server.decode(new_signed).unwrap();
        assert_eq!(
            b.extensions().get::<AuthenticatedKey>(),
            Some(&AuthenticatedKey(2))
        );

        // A peer still signing with key 1 is refused after the grace period.
        let stale = HmacKeys::new(1, b"old");
        let (mut late, _) = pair(&stale);
        let mut fresh_server = pair(&keys).1;
        let early = send(&mut late, Frame::data("c"));
        assert!(fresh_server.clone().decode(early.clone()).is_ok());
        tokio::time::advance(Duration::from_secs(11)).await;
        let err = fresh_server.decode(early).unwrap_err();
        assert!(matches!(
            err.downcast_ref::<SignError>(),
            Some(SignError::UnknownKey(1))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn staged_rotation_refuses_nothing_and_checks_its_steps() {
        let server_keys = HmacKeys::new(1, b"one");
        let client_keys = HmacKeys::new(1, b"one");
        let mut client = session(&client_keys, Side::Client);
        let mut server = session(&server_keys, Side::Server);
        let mut both_ways = |want_up: u16, want_down: u16| {
            let up = server.decode(send(&mut client, Frame::data("up"))).unwrap();
            let down = client
                .decode(send(&mut server, Frame::data("down")))
                .unwrap();
            assert_eq!(up.extensions().get(), Some(&AuthenticatedKey(want_up)));
            assert_eq!(down.extensions().get(), Some(&AuthenticatedKey(want_down)));
        };
        both_ways(1, 1);
        // 1. Accept, both ends; nothing signs with it yet.
        assert_eq!(client_keys.sign_with(2), Err(KeyRingError::NotAccepted(2)));
        server_keys.accept(2, b"two").unwrap();
        client_keys.accept(2, b"two").unwrap();
        assert_eq!(client_keys.current_id(), 1);
        both_ways(1, 1);
        // 2. Sign with it, one end first.
        client_keys.sign_with(2).unwrap();
        both_ways(2, 1);
        server_keys.sign_with(2).unwrap();
        both_ways(2, 2);
        // 3. Retire the old key; the signing key cannot be retired.
        assert_eq!(server_keys.retire(2), Err(KeyRingError::SigningKey(2)));
        assert_eq!(
            server_keys.accept(2, b"x"),
            Err(KeyRingError::SigningKey(2))
        );
        server_keys.retire(1).unwrap();
        client_keys.retire_after(1, Duration::from_secs(5)).unwrap();
        assert_eq!(server_keys.accepted_ids(), vec![2]);
        assert_eq!(client_keys.accepted_ids(), vec![1, 2]);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(client_keys.accepted_ids(), vec![2]);
        assert_eq!(server_keys.retire(1), Err(KeyRingError::NotAccepted(1)));
        both_ways(2, 2);

        // A frame still signed with the retired key is refused.
        let stale = HmacKeys::new(1, b"one");
        let mut late = session(&stale, Side::Client);
        let mut fresh = session(&server_keys, Side::Server);
        let err = fresh.decode(send(&mut late, Frame::data("x"))).unwrap_err();
        assert!(matches!(
            err.downcast_ref::<SignError>(),
            Some(SignError::UnknownKey(1))
        ));
        // A grace too long for the clock means "until retired", not a panic.
        server_keys.accept(3, b"three").unwrap();
        server_keys.retire_after(3, Duration::MAX).unwrap();
        server_keys.rotate(4, b"four", Duration::MAX);
        assert_eq!(server_keys.accepted_ids(), vec![2, 3, 4]);
    }
}
