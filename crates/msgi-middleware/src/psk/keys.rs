//! The pre-shared key ring: ids, the key a client uses, the keys a server
//! accepts, and staged rotation.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use ring::hkdf;
use tokio::time::Instant;

struct Key {
    id: u16,
    /// The early secret: HKDF-Extract(32 zero bytes, the key).
    early: hkdf::Prk,
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
    /// The id names the key this end uses (signs with), which cannot be
    /// replaced or retired: sign with another key first.
    #[error("key id {0} is the signing key")]
    SigningKey(u16),
}

/// The pre-shared keys of a deployment, by id: the one a client's
/// handshake uses (the *signing* key, named so for the rotation steps), and
/// every key a server's handshake accepts (the signing one included, older
/// and newer ones during a rotation). Clones share the ring, so a change
/// reaches every later handshake (sessions keep the keys they derived).
///
/// A key should be 32 random bytes (`--key-file`): a recorded handshake
/// lets an attacker test guesses of the key offline, so a guessable one
/// (a password) is not safe.
///
/// Rotation without refusing anyone:
///
/// 1. **Accept** the new key on every server: [`PresharedKeys::accept`]`(2, key)`.
/// 2. Once every server accepts it, let clients **use** it, one by one:
///    [`PresharedKeys::sign_with`]`(2)` (servers keep accepting key 1).
/// 3. Once every client uses it, **retire** the old one on the servers:
///    [`PresharedKeys::retire`]`(1)` (or [`PresharedKeys::retire_after`]).
#[derive(Clone)]
pub struct PresharedKeys {
    ring: Arc<RwLock<Ring>>,
}

impl fmt::Debug for PresharedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ring = self.read();
        f.debug_struct("PresharedKeys")
            .field("signing", &ring.signing)
            .field(
                "accepted",
                &ring.keys.iter().map(|k| k.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// HKDF-Extract(salt = 32 zero bytes, IKM = key): TLS 1.3's early secret.
fn early_secret(key: &[u8]) -> hkdf::Prk {
    hkdf::Salt::new(hkdf::HKDF_SHA256, &[0; 32]).extract(key)
}

impl PresharedKeys {
    /// A ring that signs with `key` (id `id`) and accepts only it.
    pub fn new(id: u16, key: &[u8]) -> Self {
        PresharedKeys {
            ring: Arc::new(RwLock::new(Ring {
                signing: id,
                keys: vec![Key {
                    id,
                    early: early_secret(key),
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

    /// Step 1 of a rotation: accepts handshakes with `key` (id `id`)
    /// from now on, without using it for its own. An accepted key of the same
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
            early: early_secret(key),
            retire_at: None,
        });
        Ok(())
    }

    /// Step 2: uses the accepted key `id` for handshakes from now on. The key used
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
    /// peer that does not accept key `id` yet refuses every handshake made
    /// with it. Between ends with separate rings, use [`accept`], then
    /// [`sign_with`], then [`retire`] (module docs).
    ///
    /// [`accept`]: PresharedKeys::accept
    /// [`sign_with`]: PresharedKeys::sign_with
    /// [`retire`]: PresharedKeys::retire
    pub fn rotate(&self, id: u16, key: &[u8], grace: Duration) {
        let mut ring = self.write();
        let now = Instant::now();
        ring.prune(now);
        let previous = ring.signing;
        ring.keys.retain(|k| k.id != id);
        ring.keys.push(Key {
            id,
            early: early_secret(key),
            retire_at: None,
        });
        ring.signing = id;
        if previous != id {
            if let Some(old) = ring.keys.iter_mut().find(|k| k.id == previous) {
                old.retire_at = now.checked_add(grace);
            }
        }
    }

    /// The id of the key this end's handshakes use.
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

    /// The key a client's handshake uses: its id and early secret (always
    /// in the ring: it cannot be retired or replaced while it signs).
    pub(crate) fn signer(&self) -> Option<(u16, hkdf::Prk)> {
        let ring = self.read();
        let key = ring.keys.iter().find(|k| k.id == ring.signing)?;
        Some((key.id, key.early.clone()))
    }

    /// The early secret of accepted key `id`.
    pub(crate) fn verifier(&self, id: u16) -> Option<hkdf::Prk> {
        self.read().get(id, Instant::now()).map(|k| k.early.clone())
    }
}

/// Reads a key file: 32 raw bytes, or 64 hex digits (whitespace around
/// them ignored).
pub fn key_from_file_contents(contents: &[u8]) -> Option<[u8; 32]> {
    if let Ok(key) = <[u8; 32]>::try_from(contents) {
        return Some(key);
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
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files() {
        assert_eq!(key_from_file_contents(&[9u8; 32]), Some([9; 32]));
        let hex = "01".repeat(32) + "\n";
        assert_eq!(key_from_file_contents(hex.as_bytes()), Some([1; 32]));
        assert!(key_from_file_contents(b"short").is_none());
        // A sign is not a hex digit, though `u8::from_str_radix` takes one.
        let signed = format!("+f{}", "0".repeat(62));
        assert!(key_from_file_contents(signed.as_bytes()).is_none());
        let upper = "AB".repeat(32);
        assert_eq!(key_from_file_contents(upper.as_bytes()), Some([0xab; 32]));
    }

    #[tokio::test(start_paused = true)]
    async fn staged_rotation_checks_its_steps() {
        let keys = PresharedKeys::new(1, b"one");
        assert_eq!(keys.sign_with(2), Err(KeyRingError::NotAccepted(2)));
        keys.accept(2, b"two").unwrap();
        assert_eq!(keys.current_id(), 1);
        assert!(keys.verifier(2).is_some());
        keys.sign_with(2).unwrap();
        assert_eq!(keys.signer().map(|(id, _)| id), Some(2));
        assert_eq!(keys.retire(2), Err(KeyRingError::SigningKey(2)));
        assert_eq!(keys.accept(2, b"x"), Err(KeyRingError::SigningKey(2)));
        keys.retire_after(1, Duration::from_secs(5)).unwrap();
        assert_eq!(keys.accepted_ids(), vec![1, 2]);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(keys.accepted_ids(), vec![2]);
        assert!(keys.verifier(1).is_none(), "retired");
        assert_eq!(keys.retire(1), Err(KeyRingError::NotAccepted(1)));
        // rotate: new signing key at once, the old one for the grace period.
        keys.rotate(3, b"three", Duration::from_secs(10));
        assert_eq!(keys.current_id(), 3);
        assert!(keys.verifier(2).is_some());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(keys.verifier(2).is_none());
        // A grace too long for the clock means "until retired", not a panic.
        keys.accept(4, b"four").unwrap();
        keys.retire_after(4, Duration::MAX).unwrap();
        assert_eq!(keys.accepted_ids(), vec![3, 4]);
        assert!(!format!("{keys:?}").contains("three"));
    }
}
