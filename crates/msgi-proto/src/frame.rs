//! The MSGI frame: a cheap value type for one message on the wire.
//!
//! A [`Frame`] is what the codec decodes from the socket and what every
//! service, layer and client sees. Cloning one is cheap: the payload is a
//! reference-counted [`Bytes`] and the extensions are empty unless someone
//! put something there.

use std::fmt;

use bytes::Bytes;

use crate::extensions::Extensions;
use crate::text::PeerText;

/// The four bytes every frame starts with: ASCII `MSGI`.
pub const MAGIC: [u8; 4] = *b"MSGI";

/// Size of the fixed header: magic, length and type.
pub const HEADER_LEN: usize = 10;

/// Size of the header when the frame carries a request id.
pub const CORRELATED_HEADER_LEN: usize = 14;

/// The default maximum frame size, header included: 1 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 1024 * 1024;

/// The kind of a frame: the low 12 bits of the type field.
///
/// Kinds `0x100`–`0xFFF` are free for applications; the named constants are
/// the kinds the protocol defines. Everything else below `0x100` is reserved.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kind(u16);

impl Kind {
    /// Asks the peer to answer with a [`Kind::PONG`] carrying the same payload.
    pub const PING: Kind = Kind(0x001);
    /// The answer to a [`Kind::PING`].
    pub const PONG: Kind = Kind(0x002);
    /// Application data, delivered to the service.
    pub const DATA: Kind = Kind(0x010);
    /// Application control, delivered to the service (the handshake is one).
    pub const CONTROL: Kind = Kind(0x020);
    /// An error report; the payload is a UTF-8 reason.
    pub const ERROR: Kind = Kind(0x030);
    /// Keeps the session alive; never answered, never delivered.
    pub const HEARTBEAT: Kind = Kind(0x040);
    /// Graceful close; the payload is a UTF-8 reason.
    pub const DISCONNECT: Kind = Kind(0x050);

    /// The smallest application-defined kind.
    pub const APP_MIN: u16 = 0x100;
    /// The largest kind that fits in 12 bits.
    pub const MAX: u16 = 0xFFF;

    /// Makes a kind from its numeric value, or `None` if it does not fit in 12 bits.
    #[inline]
    pub const fn new(value: u16) -> Option<Kind> {
        if value <= Self::MAX {
            Some(Kind(value))
        } else {
            None
        }
    }

    /// An application-defined kind (`0x100`–`0xFFF`), or `None` outside that range.
    #[inline]
    pub const fn app(value: u16) -> Option<Kind> {
        if value >= Self::APP_MIN && value <= Self::MAX {
            Some(Kind(value))
        } else {
            None
        }
    }

    /// The numeric value (12 bits).
    #[inline]
    pub const fn get(self) -> u16 {
        self.0
    }

    /// True for the kinds that reach the user's service: DATA, CONTROL and
    /// application kinds.
    #[inline]
    pub const fn is_delivered(self) -> bool {
        matches!(self.0, 0x010 | 0x020) || self.0 >= Self::APP_MIN
    }

    /// True for `0x000` and the unassigned kinds below `0x100`.
    #[inline]
    pub const fn is_reserved(self) -> bool {
        self.0 < Self::APP_MIN
            && !matches!(
                self.0,
                0x001 | 0x002 | 0x010 | 0x020 | 0x030 | 0x040 | 0x050
            )
    }
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            Kind::PING => "PING",
            Kind::PONG => "PONG",
            Kind::DATA => "DATA",
            Kind::CONTROL => "CONTROL",
            Kind::ERROR => "ERROR",
            Kind::HEARTBEAT => "HEARTBEAT",
            Kind::DISCONNECT => "DISCONNECT",
            _ => return write!(f, "Kind({:#05x})", self.0),
        };
        f.write_str(name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The flags of a frame: the high 4 bits of the type field.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u16);

impl Flags {
    /// No flag set.
    pub const EMPTY: Flags = Flags(0);
    /// The payload is compressed.
    pub const COMPRESSED: Flags = Flags(0x8000);
    /// The payload is AEAD-sealed.
    pub const ENCRYPTED: Flags = Flags(0x4000);
    /// The payload carries an HMAC tag.
    pub const AUTHENTICATED: Flags = Flags(0x2000);
    /// A 4-byte request id follows the type field.
    pub const CORRELATED: Flags = Flags(0x1000);

    const MASK: u16 = 0xF000;

    /// Flags from the high bits of `bits`; the low 12 bits are ignored.
    #[inline]
    pub const fn from_bits_truncate(bits: u16) -> Flags {
        Flags(bits & Self::MASK)
    }

    /// The raw bits (always within `0xF000`).
    #[inline]
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// True if every flag in `other` is set in `self`.
    #[inline]
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// True if no flag is set.
    #[inline]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// `self` with the flags of `other` added.
    #[must_use]
    #[inline]
    pub const fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    /// `self` with the flags of `other` removed.
    #[must_use]
    #[inline]
    pub const fn without(self, other: Flags) -> Flags {
        Flags(self.0 & !other.0)
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        self.with(rhs)
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("EMPTY");
        }
        let names = [
            (Flags::COMPRESSED, "COMPRESSED"),
            (Flags::ENCRYPTED, "ENCRYPTED"),
            (Flags::AUTHENTICATED, "AUTHENTICATED"),
            (Flags::CORRELATED, "CORRELATED"),
        ];
        let mut first = true;
        for (flag, name) in names {
            if self.contains(flag) {
                if !first {
                    f.write_str(" | ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// One MSGI frame.
///
/// The `CORRELATED` flag is not stored: it is set on the wire exactly when
/// the frame has a [request id](Frame::request_id). The other flags describe
/// transforms applied to the payload and are carried as they are.
///
/// [`Extensions`] carry typed context alongside a frame inside one process
/// (the `msgi::Session` that received it, an authenticated key
/// id); they never reach the wire.
#[derive(Clone, Default)]
pub struct Frame {
    kind: u16,
    flags: Flags,
    request_id: Option<u32>,
    payload: Bytes,
    extensions: Extensions,
}

impl Frame {
    /// A frame of the given kind and payload, uncorrelated, no flags.
    pub fn new(kind: Kind, payload: impl Into<Bytes>) -> Frame {
        Frame {
            kind: kind.get(),
            flags: Flags::EMPTY,
            request_id: None,
            payload: payload.into(),
            extensions: Extensions::new(),
        }
    }

    /// A DATA frame.
    #[inline]
    pub fn data(payload: impl Into<Bytes>) -> Frame {
        Frame::new(Kind::DATA, payload)
    }

    /// A CONTROL frame.
    #[inline]
    pub fn control(payload: impl Into<Bytes>) -> Frame {
        Frame::new(Kind::CONTROL, payload)
    }

    /// An ERROR frame with a UTF-8 reason.
    #[inline]
    pub fn error(reason: impl Into<String>) -> Frame {
        Frame::new(Kind::ERROR, Bytes::from(reason.into()))
    }

    /// A PING frame.
    #[inline]
    pub fn ping(payload: impl Into<Bytes>) -> Frame {
        Frame::new(Kind::PING, payload)
    }

    /// A HEARTBEAT frame (empty payload).
    #[inline]
    pub fn heartbeat() -> Frame {
        Frame::new(Kind::HEARTBEAT, Bytes::new())
    }

    /// A DISCONNECT frame with a UTF-8 reason.
    #[inline]
    pub fn disconnect(reason: impl Into<String>) -> Frame {
        Frame::new(Kind::DISCONNECT, Bytes::from(reason.into()))
    }

    /// The frame's kind.
    #[inline]
    pub fn kind(&self) -> Kind {
        Kind(self.kind)
    }

    /// Changes the frame's kind.
    #[inline]
    pub fn set_kind(&mut self, kind: Kind) {
        self.kind = kind.get();
    }

    /// The flags as they go on the wire, `CORRELATED` included when the
    /// frame has a request id.
    #[inline]
    pub fn flags(&self) -> Flags {
        if self.request_id.is_some() {
            self.flags.with(Flags::CORRELATED)
        } else {
            self.flags
        }
    }

    /// Replaces the transform flags. `CORRELATED` in `flags` is ignored: use
    /// [`set_request_id`](Frame::set_request_id) for that.
    #[inline]
    pub fn set_flags(&mut self, flags: Flags) {
        self.flags = flags.without(Flags::CORRELATED);
    }

    /// The request id, present on correlated frames.
    #[inline]
    pub fn request_id(&self) -> Option<u32> {
        self.request_id
    }

    /// Sets or clears the request id (and so the `CORRELATED` flag).
    #[inline]
    pub fn set_request_id(&mut self, id: Option<u32>) {
        self.request_id = id;
    }

    /// The frame with the given request id.
    #[must_use]
    #[inline]
    pub fn with_request_id(mut self, id: u32) -> Frame {
        self.request_id = Some(id);
        self
    }

    /// The frame with the given transform flags (see [`set_flags`](Frame::set_flags)).
    #[must_use]
    #[inline]
    pub fn with_flags(mut self, flags: Flags) -> Frame {
        self.set_flags(flags);
        self
    }

    /// The payload.
    #[inline]
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The payload, mutably (to replace it in a transform).
    #[inline]
    pub fn payload_mut(&mut self) -> &mut Bytes {
        &mut self.payload
    }

    /// Takes the payload out of the frame.
    #[inline]
    pub fn into_payload(self) -> Bytes {
        self.payload
    }

    /// The payload as UTF-8 text, with invalid sequences replaced.
    #[inline]
    pub fn payload_text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.payload)
    }

    /// Typed context attached to this frame inside the process.
    #[inline]
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Typed context attached to this frame, mutably.
    #[inline]
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.extensions
    }

    /// Total length on the wire, header included.
    #[inline]
    pub fn wire_len(&self) -> usize {
        self.header_len() + self.payload.len()
    }

    /// Length of this frame's header on the wire (10 or 14 bytes).
    #[inline]
    pub fn header_len(&self) -> usize {
        if self.request_id.is_some() {
            CORRELATED_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }

    /// The 16-bit type field: flags OR kind.
    #[inline]
    pub fn type_field(&self) -> u16 {
        self.flags().bits() | self.kind
    }

    /// An answer to `self`: same request id, the given kind and payload.
    #[inline]
    pub fn reply(&self, kind: Kind, payload: impl Into<Bytes>) -> Frame {
        let mut frame = Frame::new(kind, payload);
        frame.request_id = self.request_id;
        frame
    }
}

/// Shows the kind, flags, request id, the payload's length and its first
/// 32 bytes as escaped text (`…` when there is more):
/// `Frame { kind: DATA, flags: EMPTY, request_id: None, payload_len: 5,
/// payload: "hello" }`.
impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("kind", &self.kind())
            .field("flags", &self.flags())
            .field("request_id", &self.request_id)
            .field("payload_len", &self.payload.len())
            .field("payload", &PayloadPreview(&self.payload))
            .finish()
    }
}

/// The most payload bytes `Frame`'s `Debug` shows.
const DEBUG_PAYLOAD_PREVIEW: usize = 32;

/// The start of a payload as escaped text, for `Frame`'s `Debug`.
struct PayloadPreview<'a>(&'a [u8]);

impl fmt::Debug for PayloadPreview<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.get(..DEBUG_PAYLOAD_PREVIEW).unwrap_or(self.0);
        if shown.len() < self.0.len() {
            // Do not cut a UTF-8 character in two: end before it.
            if let Err(e) = std::str::from_utf8(shown) {
                if e.error_len().is_none() {
                    shown = shown.get(..e.valid_up_to()).unwrap_or(shown);
                }
            }
        }
        write!(f, "{:?}", PeerText(shown))?;
        if shown.len() < self.0.len() {
            f.write_str("…")?;
        }
        Ok(())
    }
}

/// Equality on what goes on the wire; extensions are ignored.
impl PartialEq for Frame {
    fn eq(&self, other: &Frame) -> bool {
        self.kind == other.kind
            && self.flags == other.flags
            && self.request_id == other.request_id
            && self.payload == other.payload
    }
}

impl Eq for Frame {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_classes() {
        assert!(Kind::DATA.is_delivered());
        assert!(Kind::CONTROL.is_delivered());
        assert!(Kind::app(0x100).is_some_and(Kind::is_delivered));
        assert!(!Kind::PING.is_delivered());
        assert!(Kind::new(0).is_some_and(Kind::is_reserved));
        assert!(Kind::new(0x0AB).is_some_and(Kind::is_reserved));
        assert!(!Kind::HEARTBEAT.is_reserved());
        assert!(Kind::new(0x1000).is_none());
        assert!(Kind::app(0x0FF).is_none());
    }

    #[test]
    fn debug_previews_the_payload_escaped_and_truncated() {
        let short = format!("{:?}", Frame::data("hi\n\x1b[2J"));
        assert!(
            short.ends_with("payload_len: 7, payload: \"hi\\n\\u{1b}[2J\" }"),
            "{short}"
        );
        let long = format!("{:?}", Frame::data(vec![b'a'; 1 << 20]));
        assert!(
            long.ends_with(&format!(
                "payload_len: 1048576, payload: \"{}\"… }}",
                "a".repeat(32)
            )),
            "{long}"
        );
        // A character across the cut is left out whole, not shown broken.
        let text = format!("{}é", "a".repeat(31));
        let cut = format!("{:?}", Frame::data(text));
        assert!(
            cut.ends_with(&format!("payload: \"{}\"… }}", "a".repeat(31))),
            "{cut}"
        );
    }

    #[test]
    fn correlated_flag_follows_request_id() {
        let mut f = Frame::data("x").with_flags(Flags::CORRELATED | Flags::COMPRESSED);
        assert_eq!(f.flags(), Flags::COMPRESSED);
        f.set_request_id(Some(3));
        assert_eq!(f.flags(), Flags::COMPRESSED | Flags::CORRELATED);
        assert_eq!(f.type_field(), 0x9010);
        assert_eq!(f.wire_len(), 15);
    }
}
