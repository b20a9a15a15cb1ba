//! HMAC-SHA256 authentication of every frame: the AUTHENTICATED flag.
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
//! [`HmacKeys`] is shared by every session. [`HmacKeys::rotate`] makes a new
//! key current for signing at once, and keeps accepting the previous key for
//! a grace period, so peers can switch over without a flag day.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use ::hmac::{Hmac, KeyInit, Mac};
use bytes::{BufMut, BytesMut};
use msgi::{BoxError, Flags, Frame, FrameTransform, Side, Transformed};
use sha2::Sha256;
use tokio::time::Instant;
use tower::Layer;

/// Bytes the layer appends to a payload: key id, sequence, tag.
pub const TRAILER_LEN: usize = 2 + 8 + 32;

/// The key id that signed a received frame; in the frame's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AuthenticatedKey(pub u16);

/// Why a frame failed authentication.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HmacError {
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
    retire_at: Option<Instant>,
}

struct Ring {
    current: Key,
    previous: Vec<Key>,
}

/// The keys of an HMAC-authenticated deployment: one current key for
/// signing, older ones still accepted until their grace period ends.
/// Clones share the ring, so a rotation reaches every session.
#[derive(Clone)]
pub struct HmacKeys {
    ring: Arc<RwLock<Ring>>,
}

impl fmt::Debug for HmacKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ring = self.ring.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("HmacKeys")
            .field("current", &ring.current.id)
            .field(
                "previous",
                &ring.previous.iter().map(|k| k.id).collect::<Vec<_>>(),
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
    /// A ring whose current key is `key`, with id `id`.
    pub fn new(id: u16, key: &[u8]) -> Self {
        HmacKeys {
            ring: Arc::new(RwLock::new(Ring {
                current: Key {
                    id,
                    mac: prepared(key),
                    retire_at: None,
                },
                previous: Vec::new(),
            })),
        }
    }

    /// Signs with `key` (id `id`) from now on; the previous current key is
    /// still accepted for `grace`.
    pub fn rotate(&self, id: u16, key: &[u8], grace: Duration) {
        let mut ring = self.ring.write().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        ring.previous
            .retain(|k| k.retire_at.is_some_and(|t| t > now) && k.id != id);
        let mut old = std::mem::replace(
            &mut ring.current,
            Key {
                id,
                mac: prepared(key),
                retire_at: None,
            },
        );
        old.retire_at = Some(now + grace);
        if old.id != id {
            ring.previous.push(old);
        }
    }

    /// The id of the key used for signing.
    pub fn current_id(&self) -> u16 {
        self.ring
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .current
            .id
    }

    fn signer(&self) -> (u16, Hmac<Sha256>) {
        let ring = self.ring.read().unwrap_or_else(PoisonError::into_inner);
        (ring.current.id, ring.current.mac.clone())
    }

    fn verifier(&self, id: u16) -> Option<Hmac<Sha256>> {
        let ring = self.ring.read().unwrap_or_else(PoisonError::into_inner);
        if ring.current.id == id {
            return Some(ring.current.mac.clone());
        }
        let now = Instant::now();
        ring.previous
            .iter()
            .find(|k| k.id == id && k.retire_at.is_some_and(|t| t > now))
            .map(|k| k.mac.clone())
    }
}

/// HMAC settings; a [`Layer`] over a framing.
#[derive(Clone, Debug)]
pub struct HmacLayer {
    keys: HmacKeys,
}

impl HmacLayer {
    /// Authenticate with the keys in `keys`.
    pub fn new(keys: HmacKeys) -> Self {
        HmacLayer { keys }
    }
}

impl HmacLayer {
    /// The transform this layer installs, for building stacks by hand.
    pub fn transform(&self) -> Authenticator {
        Authenticator {
            keys: self.keys.clone(),
            side: Side::Client,
            sent: 0,
            received: 0,
        }
    }
}

impl<C> Layer<C> for HmacLayer {
    type Service = Authentication<C>;

    fn layer(&self, inner: C) -> Authentication<C> {
        Transformed::new(self.transform(), inner)
    }
}

/// A framing `C` with HMAC authentication.
pub type Authentication<C> = Transformed<Authenticator, C>;

/// The HMAC transform of one session.
#[derive(Clone, Debug)]
pub struct Authenticator {
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

impl FrameTransform for Authenticator {
    fn start_session(&mut self, side: Side) {
        self.side = side;
        self.sent = 0;
        self.received = 0;
    }

    fn decode(&mut self, mut frame: Frame) -> Result<Frame, BoxError> {
        if !frame.flags().contains(Flags::AUTHENTICATED) {
            return Err(HmacError::Missing.into());
        }
        let payload = frame.payload().clone();
        let len = payload.len();
        let Some(data_len) = len.checked_sub(TRAILER_LEN) else {
            return Err(HmacError::Truncated(len).into());
        };
        let (data, trailer) = payload.split_at(data_len);
        let (key_id, rest) = trailer.split_at(2);
        let (seq, tag) = rest.split_at(8);
        let truncated = |_| HmacError::Truncated(len);
        let key_id = u16::from_be_bytes(key_id.try_into().map_err(truncated)?);
        let seq = u64::from_be_bytes(seq.try_into().map_err(truncated)?);
        let mut mac = self
            .keys
            .verifier(key_id)
            .ok_or(HmacError::UnknownKey(key_id))?;
        feed(&mut mac, &frame, self.side.peer(), data, key_id, seq);
        mac.verify_slice(tag).map_err(|_| HmacError::BadTag)?;
        if seq != self.received {
            return Err(HmacError::Sequence {
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
        let (key_id, mut mac) = self.keys.signer();
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

    fn pair(keys: &HmacKeys) -> (Authenticator, Authenticator) {
        let mut client = HmacLayer::new(keys.clone()).transform();
        let mut server = client.clone();
        client.start_session(Side::Client);
        server.start_session(Side::Server);
        (client, server)
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
                .downcast_ref::<HmacError>(),
            Some(HmacError::Sequence {
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
            err.downcast_ref::<HmacError>(),
            Some(HmacError::UnknownKey(1))
        ));
    }
}
