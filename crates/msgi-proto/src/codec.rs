//! Byte framing: turning a stream of bytes into [`Frame`]s and back.
//!
//! [`FrameCodec`] is the MSGI wire format. It checks every header field as
//! soon as its bytes have arrived, before it reserves room for the rest of a
//! frame, so a hostile length never becomes an allocation. The payload of a
//! decoded frame is split off the read buffer without copying, except a
//! payload under 4 KiB whose frame ends the bytes read so far: that one is
//! copied out, so a handler that keeps it does not keep the whole read chunk
//! alive (at most one small copy per read; docs/BENCHMARKS.md).
//!
//! [`LineCodec`] frames newline-terminated text instead, so the same server
//! and service can answer a telnet-style client. Both implement [`Framing`],
//! which is what a session is generic over.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::frame::{
    Flags, Frame, Kind, CORRELATED_HEADER_LEN, DEFAULT_MAX_FRAME_SIZE, HEADER_LEN, MAGIC,
};

/// Why bytes could not be framed. Every variant but `Io` is a protocol
/// violation by the peer (or, when encoding, by the local application).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The first four bytes are not `MSGI`.
    #[error("bad magic")]
    BadMagic,
    /// The length field is smaller than the 10-byte header.
    #[error("length below header ({length} < 10)")]
    LengthBelowHeader {
        /// The length field as received.
        length: u32,
    },
    /// A correlated frame whose length cannot hold the 14-byte header.
    #[error("length below correlated header ({length} < 14)")]
    LengthBelowCorrelatedHeader {
        /// The length field as received.
        length: u32,
    },
    /// The frame is larger than the configured maximum.
    #[error("frame too large (max {max}): {length} bytes")]
    FrameTooLarge {
        /// The frame length (from the header, or of the frame being encoded).
        length: u64,
        /// The configured maximum frame size.
        max: usize,
    },
    /// A text line longer than the configured maximum.
    #[error("line too long (max {max})")]
    LineTooLong {
        /// The configured maximum line length.
        max: usize,
    },
    /// A wire transform (decompression, decryption, authentication)
    /// refused the frame, or could not apply itself to an outgoing one.
    /// Its `Display` and `source` are the transform's error's own, so an
    /// error chain prints its message once.
    #[error(transparent)]
    Transform(crate::BoxError),
    /// A message transport (a WebSocket) received a message that is not
    /// one whole frame: a text message, part of a frame, more than one
    /// frame, or a message its own protocol refuses. Its `Display` and
    /// `source` are the transport's error's own.
    #[error(transparent)]
    Message(crate::BoxError),
    /// The transport failed (`Display` and `source` are the I/O error's).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl CodecError {
    /// True when the error is the peer's fault (anything but I/O).
    #[inline]
    pub fn is_protocol_violation(&self) -> bool {
        !matches!(self, CodecError::Io(_))
    }
}

/// Bytes waiting to be written: small frames are packed into one buffer,
/// large payloads are kept as their own [`Bytes`] and written with a
/// vectored write, so they are never copied.
#[derive(Debug, Default)]
pub struct WriteBuf {
    chunks: VecDeque<Bytes>,
    tail: BytesMut,
    len: usize,
}

/// Payloads at least this large are written from their own buffer.
const ZERO_COPY_THRESHOLD: usize = 4096;

/// The most a decoder reserves beyond the bytes it has for an incomplete
/// frame, while it has fewer than this; past it, at most as many bytes as it
/// has (so a large frame's buffer grows geometrically: each byte is copied
/// about once, and the buffer never holds more than twice what the peer
/// actually sent).
pub const RESERVE_AHEAD: usize = 64 * 1024;

/// Makes room for `additional` more bytes in `buf`, unlike
/// `BytesMut::reserve` (which may double the buffer) never growing its
/// capacity past `buf.len() + additional` plus 32 KiB. Space
/// already allocated is reused when the buffer is no longer shared and its
/// allocation is not more than that; otherwise one buffer of exactly the
/// size needed is allocated and the bytes are copied into it. So the
/// allocation a large frame left behind (its payload dropped since) is
/// freed, not kept under the next small frame.
pub fn reserve_at_most(buf: &mut BytesMut, additional: usize) {
    if buf.capacity() - buf.len() >= additional {
        return;
    }
    let needed = buf.len().saturating_add(additional);
    // `try_reclaim` hands back the whole allocation, however large.
    if buf.try_reclaim(additional) && buf.capacity() <= needed.saturating_add(RECLAIM_SLACK) {
        return;
    }
    let mut grown = BytesMut::with_capacity(needed);
    grown.extend_from_slice(buf);
    *buf = grown;
}

/// How much more than asked [`reserve_at_most`] keeps of an allocation it
/// reuses (half of [`RESERVE_AHEAD`]): enough that a read buffer reuses its
/// chunk when a few bytes of a frame are carried over, little enough that
/// the buffer stays within the bound of docs/ARCHITECTURE.md.
const RECLAIM_SLACK: usize = RESERVE_AHEAD / 2;

/// The smallest buffer [`WriteBuf::reserve`] starts for packed frames.
const WRITE_CHUNK: usize = 8 * 1024;

/// The most slices handed to one vectored write.
const MAX_IOVECS: usize = 64;

impl WriteBuf {
    /// An empty buffer; allocates nothing.
    #[inline]
    pub fn new() -> WriteBuf {
        WriteBuf::default()
    }

    /// Bytes queued.
    #[inline]
    pub fn len(&self) -> usize {
        self.len + self.tail.len()
    }

    /// True when nothing is queued.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends bytes to the packed buffer (they are copied).
    #[inline]
    pub fn put_slice(&mut self, bytes: &[u8]) {
        self.tail.extend_from_slice(bytes);
    }

    /// The packed buffer, to encode into directly (call
    /// [`reserve`](WriteBuf::reserve) first: growing it by itself copies
    /// what it holds).
    #[inline]
    pub fn tail_mut(&mut self) -> &mut BytesMut {
        &mut self.tail
    }

    /// Makes room for `additional` more bytes in the packed buffer without
    /// copying what it holds: when the buffer lacks room, the bytes packed
    /// so far are queued as a chunk of their own (one more slice in the
    /// vectored write) and a new buffer is started, twice the size of the
    /// last one (at least 8 KiB, at most [`RESERVE_AHEAD`], never
    /// less than `additional`). So a burst of answers costs a few
    /// allocations per write and no copy, where growing one buffer by
    /// reallocation copied every byte again at each doubling.
    #[inline]
    pub fn reserve(&mut self, additional: usize) {
        if self.tail.capacity() - self.tail.len() < additional {
            self.grow(additional);
        }
    }

    /// Starts the packed buffer at room for about `expected` bytes, if it
    /// holds no allocation (it was [released](WriteBuf::release)): `expected`
    /// rounded up to a power of two, at least 8 KiB, at most
    /// [`RESERVE_AHEAD`]. A writer that remembers how much its last burst
    /// wrote starts the next burst's buffer at that size, so a burst of the
    /// same size is packed into one buffer: one allocation, one slice in
    /// the vectored write, where growing from 8 KiB took three buffers (8,
    /// 16 and 32 KiB for 32 answers of 1 KiB), two shared headers and a
    /// queue of slices. Does nothing when the buffer has an allocation.
    #[inline]
    pub fn start(&mut self, expected: usize) {
        if self.tail.capacity() == 0 {
            self.start_at(expected);
        }
    }

    #[cold]
    fn start_at(&mut self, expected: usize) {
        let size = expected
            .checked_next_power_of_two()
            .unwrap_or(RESERVE_AHEAD)
            .clamp(WRITE_CHUNK, RESERVE_AHEAD);
        self.tail = BytesMut::with_capacity(size);
    }

    #[cold]
    fn grow(&mut self, additional: usize) {
        let last = self.tail.capacity();
        if self.tail.is_empty() {
            // Written out since: the allocation is reused if it is ours
            // alone (nothing to copy).
            if self.tail.try_reclaim(additional) {
                return;
            }
        } else {
            let packed = self.tail.split().freeze();
            self.len += packed.len();
            self.chunks.push_back(packed);
        }
        let size = last
            .saturating_mul(2)
            .clamp(WRITE_CHUNK, RESERVE_AHEAD)
            .max(additional);
        self.tail = BytesMut::with_capacity(size);
    }

    /// Drops every byte queued after the first `len` (nothing if fewer are
    /// queued): undoes a partial write of a frame that was then refused.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            self.tail.truncate(len - self.len);
            return;
        }
        self.tail.clear();
        while self.len > len {
            let Some(last) = self.chunks.back_mut() else {
                break;
            };
            let excess = self.len - len;
            if excess >= last.len() {
                self.len -= last.len();
                self.chunks.pop_back();
            } else {
                last.truncate(last.len() - excess);
                self.len = len;
            }
        }
    }

    /// Appends a buffer without copying it (small ones are copied instead,
    /// which is cheaper than one more slice in the write).
    pub fn put_bytes(&mut self, bytes: Bytes) {
        if bytes.len() < ZERO_COPY_THRESHOLD {
            self.tail.extend_from_slice(&bytes);
            return;
        }
        if !self.tail.is_empty() {
            let packed = self.tail.split().freeze();
            self.len += packed.len();
            self.chunks.push_back(packed);
        }
        self.len += bytes.len();
        self.chunks.push_back(bytes);
    }

    /// Fills `dst` with slices of the queued bytes, in order; returns how many.
    pub fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for chunk in &self.chunks {
            if n == dst.len() {
                return n;
            }
            dst[n] = IoSlice::new(chunk);
            n += 1;
        }
        if n < dst.len() && !self.tail.is_empty() {
            dst[n] = IoSlice::new(&self.tail);
            n += 1;
        }
        n
    }

    /// Drops the first `cnt` bytes (they were written).
    pub fn advance(&mut self, mut cnt: usize) {
        while cnt > 0 {
            let Some(front) = self.chunks.front_mut() else {
                let n = cnt.min(self.tail.len());
                self.tail.advance(n);
                break;
            };
            if cnt >= front.len() {
                cnt -= front.len();
                self.len -= front.len();
                self.chunks.pop_front();
            } else {
                front.advance(cnt);
                self.len -= cnt;
                cnt = 0;
            }
        }
        if self.is_empty() {
            self.release_if_large();
        }
    }

    /// Bytes allocated for packing: the room of the packed buffer (0 once
    /// [released](WriteBuf::release)), not counting large payloads queued
    /// as they are.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.tail.capacity()
    }

    /// Frees the packed buffer's memory; used when a session goes idle.
    #[inline]
    pub fn release(&mut self) {
        if self.is_empty() {
            self.tail = BytesMut::new();
            self.chunks = VecDeque::new();
        }
    }

    fn release_if_large(&mut self) {
        // Keep a modest buffer for the next burst; drop anything a single
        // large frame made it grow to.
        if self.tail.capacity() > 64 * 1024 {
            self.tail = BytesMut::new();
        }
    }

    /// Number of slices a vectored write would use at most.
    pub const MAX_IOVECS: usize = MAX_IOVECS;
}

/// A byte framing a session can speak: a decoder and encoder of [`Frame`]s.
///
/// Implemented by [`FrameCodec`] (the MSGI wire) and [`LineCodec`] (text
/// lines), and by [`Transformed`](crate::Transformed) (a framing under wire
/// transforms). Decoders must never panic and must not allocate from a length
/// they have not checked.
///
/// A value is the framing of **one connection**. Servers and clients take a
/// [`MakeFraming`](crate::MakeFraming), which makes one per connection; a
/// `Clone` framing with no per-session state (`FrameCodec`, `LineCodec`) is
/// one itself, copied for each connection. A framing with per-session state
/// implements `MakeFraming` (or is built with [`Wire`](crate::Wire)) so that
/// each session starts fresh.
pub trait Framing: Send + 'static {
    /// Takes one frame off the front of `src`, or `Ok(None)` when `src` does
    /// not hold a whole frame yet (the framing may reserve room in `src` for
    /// the rest, never more than the limits in docs/ARCHITECTURE.md).
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError>;

    /// Encodes `frame` at the end of `dst`. On `Err` nothing was written
    /// and no state changed.
    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError>;

    /// Encodes `frame` into `dst`. The default encodes into the packed buffer;
    /// [`FrameCodec`] hands large payloads over without copying them.
    ///
    /// On `Err` nothing was written into `dst` and no state changed (a
    /// framing checks before it writes; transforms commit only after the
    /// framing below them succeeded), so the caller can send something else
    /// instead, such as an ERROR.
    fn encode_into(&mut self, frame: Frame, dst: &mut WriteBuf) -> Result<(), CodecError> {
        dst.reserve(frame.wire_len());
        self.encode(frame, dst.tail_mut())
    }

    /// Encodes a frame whose payload is in pieces
    /// ([`Outgoing`](crate::Outgoing): `head ‖ payload ‖ tail`, as a wire
    /// transform that seals in place leaves it), with the same bytes and the
    /// same contract as [`encode_into`](Framing::encode_into). The default
    /// joins the pieces (one copy when there are any) and calls
    /// `encode_into`; [`FrameCodec`] writes the pieces around the payload.
    ///
    /// On `Err`, `out` is left in no particular state and nothing was
    /// written.
    fn encode_split_into(
        &mut self,
        out: &mut crate::Outgoing,
        dst: &mut WriteBuf,
    ) -> Result<(), CodecError> {
        self.encode_into(std::mem::take(out).join(), dst)
    }

    /// The largest frame, as [`Frame::wire_len`] counts it before any
    /// transform, that this framing never refuses for size: the maximum
    /// frame size minus what the transforms may add
    /// ([`FrameTransform::max_overhead`](crate::FrameTransform::max_overhead)).
    /// Sessions refuse larger pushes up front
    /// (`msgi::SendError::TooLarge`). The default
    /// is [`max_frame_size`](Framing::max_frame_size); [`LineCodec`], which
    /// writes lines of any length, says `usize::MAX`.
    fn max_encoded_len(&self) -> usize {
        self.max_frame_size()
    }

    /// Sets the largest unit this framing accepts or sends, in bytes.
    fn set_max_frame_size(&mut self, max: usize);

    /// Hands the keys a transport upgrade established for this connection
    /// to its transforms ([`FrameTransform::set_session_keys`](crate::FrameTransform::set_session_keys)),
    /// before the first frame. The default ignores them (a framing without
    /// transforms).
    fn set_session_keys(&mut self, _keys: &crate::SessionKeys) {}

    /// The largest unit this framing accepts or sends, in bytes: the one
    /// source of truth for the limit (a server or client built with this
    /// framing uses it, it never overrides it).
    fn max_frame_size(&self) -> usize;

    /// Whether this framing carries request ids, kinds and flags. A session
    /// over a framing that does not (text lines) delivers every input as
    /// uncorrelated DATA and skips the handshake.
    fn is_binary(&self) -> bool {
        true
    }
}

/// The MSGI wire format.
///
/// ```
/// use bytes::BytesMut;
/// use msgi_proto::{Frame, FrameCodec, Framing};
///
/// let mut codec = FrameCodec::new();
/// let mut buf = BytesMut::new();
/// codec.encode(Frame::data("abc").with_request_id(7), &mut buf).unwrap();
/// assert_eq!(&buf[..], b"MSGI\x00\x00\x00\x11\x10\x10\x00\x00\x00\x07abc");
/// let frame = codec.decode(&mut buf).unwrap().unwrap();
/// assert_eq!(frame.request_id(), Some(7));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_frame_size: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new()
    }
}

impl FrameCodec {
    /// A codec with the default maximum frame size (1 MiB).
    #[inline]
    pub fn new() -> FrameCodec {
        FrameCodec::with_max_frame_size(DEFAULT_MAX_FRAME_SIZE)
    }

    /// A codec that rejects frames longer than `max` bytes, header included.
    ///
    /// The value is kept as given: a server or client built with a limit
    /// below the 14-byte correlated header or above what the 32-bit length
    /// field carries refuses it with a [`ConfigError`](crate::ConfigError)
    /// (`ServerBuilder::build`, `ClientBuilder::connect`). A codec used on
    /// its own with such a limit refuses every frame it cannot carry.
    #[inline]
    pub fn with_max_frame_size(max: usize) -> FrameCodec {
        FrameCodec {
            max_frame_size: max,
        }
    }

    /// The maximum frame size, header included.
    #[inline]
    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    fn check_outgoing(&self, frame: &Frame) -> Result<(), CodecError> {
        self.check_length(frame.wire_len())
    }

    fn check_length(&self, length: usize) -> Result<(), CodecError> {
        // Nothing longer than the 32-bit length field can be written,
        // whatever the configured limit.
        if length > self.max_frame_size || u32::try_from(length).is_err() {
            return Err(CodecError::FrameTooLarge {
                length: length as u64,
                max: self.max_frame_size,
            });
        }
        Ok(())
    }
}

/// Writes the header of `frame` (10 or 14 bytes) into `dst`.
#[inline]
pub fn encode_header(frame: &Frame, dst: &mut impl BufMut) {
    encode_header_of_len(frame, frame.wire_len(), dst);
}

/// Writes the header of a frame with `frame`'s header fields and `length`
/// bytes on the wire (checked to fit in 32 bits by the caller).
#[inline(always)]
fn encode_header_of_len(frame: &Frame, length: usize, dst: &mut impl BufMut) {
    // Built whole and copied with one `put_slice` (each `put_*` checks
    // and moves the buffer's length on its own).
    let mut header = [0u8; CORRELATED_HEADER_LEN];
    header[..4].copy_from_slice(&MAGIC);
    // `check_outgoing` bounds the length by the maximum frame size, which
    // fits in u32.
    header[4..8].copy_from_slice(&(length as u32).to_be_bytes());
    header[8..10].copy_from_slice(&frame.type_field().to_be_bytes());
    // Each arm copies a constant length (no `memcpy` call).
    match frame.request_id() {
        Some(id) => {
            header[HEADER_LEN..].copy_from_slice(&id.to_be_bytes());
            dst.put_slice(&header);
        }
        None => dst.put_slice(&header[..HEADER_LEN]),
    }
}

fn be_u32(src: &[u8], at: usize) -> Option<u32> {
    let bytes = src.get(at..at + 4)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

fn be_u16(src: &[u8], at: usize) -> Option<u16> {
    let bytes = src.get(at..at + 2)?;
    Some(u16::from_be_bytes([bytes[0], bytes[1]]))
}

impl FrameCodec {
    #[inline]
    fn decode_frame(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        // Check each field as soon as its bytes are here: a stream of garbage
        // fails on its first byte, an oversized length on its eighth.
        // A whole magic compared as one 4-byte value (the common case: a
        // slice comparison of unknown length is a call to `memcmp` per
        // frame); fewer bytes compared with as many of the magic.
        let magic_ok = match src.first_chunk::<4>() {
            Some(magic) => *magic == MAGIC,
            None => MAGIC.starts_with(&src[..]),
        };
        if !magic_ok {
            return Err(CodecError::BadMagic);
        }
        let Some(length) = be_u32(src, 4) else {
            return Ok(None);
        };
        if (length as usize) < HEADER_LEN {
            return Err(CodecError::LengthBelowHeader { length });
        }
        if length as usize > self.max_frame_size {
            return Err(CodecError::FrameTooLarge {
                length: u64::from(length),
                max: self.max_frame_size,
            });
        }
        let Some(type_field) = be_u16(src, 8) else {
            return Ok(None);
        };
        let flags = Flags::from_bits_truncate(type_field);
        let correlated = flags.contains(Flags::CORRELATED);
        if correlated && (length as usize) < CORRELATED_HEADER_LEN {
            return Err(CodecError::LengthBelowCorrelatedHeader { length });
        }
        let length = length as usize;
        if src.len() < length {
            // Grow with what arrives, not with what the header announces: a
            // peer that sends only headers of maximum-size frames must not
            // make every connection hold the maximum frame size, and one
            // that trickles a frame byte by byte must not make the buffer
            // grow with every byte (`reserve` would double it).
            // Grow only when the room left is small (not on every byte),
            // then to at most `ahead` of room.
            let remaining = length - src.len();
            if src.capacity() - src.len() < remaining.min(RESERVE_AHEAD / 8) {
                let ahead = RESERVE_AHEAD.max(src.len());
                reserve_at_most(src, remaining.min(ahead));
            }
            return Ok(None);
        }
        let request_id = if correlated {
            be_u32(src, HEADER_LEN)
        } else {
            None
        };
        let header = if correlated {
            CORRELATED_HEADER_LEN
        } else {
            HEADER_LEN
        };
        let payload = if length - header < ZERO_COPY_THRESHOLD && src.len() == length {
            // A small frame that ends what has been read (typical of a
            // request/response peer: one frame per read) is copied out, so a
            // handler that keeps its payload does not keep the whole read
            // chunk alive; the buffer stays unshared and is reused or freed.
            // A frame followed by more bytes (a busy, pipelining peer) is
            // split off without a copy: at most one copy per read.
            let payload = Bytes::copy_from_slice(src.get(header..length).unwrap_or_default());
            src.clear();
            payload
        } else if src.len() == length && src.capacity() - length < RESERVE_AHEAD / 8 {
            // A large frame that fills the read buffer: the next read needs
            // a new buffer either way (the transport makes room when less
            // than an eighth of its chunk is left), so the frame takes this
            // one whole, unshared, and a transform can open it in place
            // (decryption) instead of copying it out of a shared buffer.
            let mut bytes = std::mem::take(src).freeze();
            bytes.advance(header);
            bytes
        } else if flags.contains(Flags::ENCRYPTED)
            && length - header >= ZERO_COPY_THRESHOLD
            && src.len() - length < RESERVE_AHEAD / 8
        {
            // A large sealed frame followed by the start of the next (a
            // streaming peer): the few bytes after it (less than an eighth
            // of a read chunk) are copied into a new read buffer, and the
            // frame takes this one whole and unshared, so the decrypting
            // transform opens it in place instead of copying all of it out
            // of a shared buffer. Frames without ENCRYPTED are split off as
            // below (nothing will write into them).
            let after = src.get(length..).unwrap_or_default();
            // Room for the whole next frame when its header says how long
            // it is (within the limit and twice `RESERVE_AHEAD`), so the
            // next read ends where it ends and it too is handed over whole;
            // else a read chunk with room for a 64 KiB payload's frame.
            let next = be_u32(after, 4).map_or(0, |n| n as usize);
            let room =
                if next > after.len() && next <= self.max_frame_size && next <= 2 * RESERVE_AHEAD {
                    next
                } else {
                    RESERVE_AHEAD + RESERVE_AHEAD / 8
                };
            let mut rest = BytesMut::with_capacity(room.max(after.len()));
            rest.extend_from_slice(after);
            src.truncate(length);
            let mut bytes = std::mem::replace(src, rest).freeze();
            bytes.advance(header);
            bytes
        } else {
            // Frozen first: advancing a `Bytes` moves a pointer, where
            // advancing the `BytesMut` checks its kind and capacity.
            let mut bytes = src.split_to(length).freeze();
            bytes.advance(header);
            bytes
        };
        let kind = Kind::new(type_field & Kind::MAX).unwrap_or(Kind::DATA);
        let mut frame = Frame::new(kind, payload).with_flags(flags);
        frame.set_request_id(request_id);
        Ok(Some(frame))
    }
}

impl FrameCodec {
    fn encode_frame(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.check_outgoing(&frame)?;
        dst.reserve(frame.wire_len());
        encode_header(&frame, dst);
        dst.extend_from_slice(frame.payload());
        Ok(())
    }
}

impl Framing for FrameCodec {
    #[inline(always)]
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        self.decode_frame(src)
    }

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode_frame(frame, dst)
    }

    fn set_max_frame_size(&mut self, max: usize) {
        *self = FrameCodec::with_max_frame_size(max);
    }

    fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    #[inline]
    fn encode_into(&mut self, frame: Frame, dst: &mut WriteBuf) -> Result<(), CodecError> {
        self.check_outgoing(&frame)?;
        let packed = if frame.payload().len() < ZERO_COPY_THRESHOLD {
            frame.wire_len()
        } else {
            frame.header_len()
        };
        dst.reserve(packed);
        encode_header(&frame, dst.tail_mut());
        dst.put_bytes(frame.into_payload());
        Ok(())
    }

    /// The pieces go into the packed buffer around the payload, which is
    /// copied there when small and handed over when large (as
    /// `encode_into`): no copy to join them.
    #[inline]
    fn encode_split_into(
        &mut self,
        out: &mut crate::Outgoing,
        dst: &mut WriteBuf,
    ) -> Result<(), CodecError> {
        let length = out.wire_len();
        self.check_length(length)?;
        let body = out.frame.payload().len();
        let packed = if body < ZERO_COPY_THRESHOLD {
            length
        } else {
            length - body
        };
        dst.reserve(packed);
        encode_header_of_len(&out.frame, length, dst.tail_mut());
        // Skipped when empty (a whole frame): no call to copy nothing.
        if !out.head.is_empty() {
            dst.put_slice(out.head.as_slice());
        }
        dst.put_bytes(std::mem::take(out.frame.payload_mut()));
        if !out.tail.is_empty() {
            dst.put_slice(out.tail.as_slice());
        }
        Ok(())
    }
}

/// Newline-delimited text: each line in is a DATA frame, each frame out is
/// a line.
///
/// A trailing `\r` is stripped, so `telnet` and `nc -C` both work. Outgoing
/// DATA, CONTROL, application kinds and PONG are written as their payload;
/// ERROR and DISCONNECT as `ERROR <reason>` and `DISCONNECT <reason>`;
/// HEARTBEAT and PING are not written at all. Payloads are written as they
/// are: one holding a newline reads as two lines on the other side.
///
/// Wire transforms ([`Transformed`](crate::Transformed)) over a `LineCodec`
/// are not supported: a line carries no flags, so the peer cannot tell
/// what to undo. (A frame it drops is not counted by the transforms.)
#[derive(Debug, Clone, Copy)]
pub struct LineCodec {
    max_line: usize,
    scanned: usize,
}

impl Default for LineCodec {
    fn default() -> Self {
        LineCodec::new()
    }
}

impl LineCodec {
    /// A codec accepting lines up to 64 KiB.
    #[inline]
    pub fn new() -> LineCodec {
        LineCodec::with_max_line(64 * 1024)
    }

    /// A codec accepting lines up to `max` bytes (newline excluded).
    #[inline]
    pub fn with_max_line(max: usize) -> LineCodec {
        LineCodec {
            max_line: max,
            scanned: 0,
        }
    }
}

impl LineCodec {
    fn decode_frame(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let start = self.scanned.min(src.len());
        let newline = src
            .get(start..)
            .and_then(|rest| rest.iter().position(|b| *b == b'\n'));
        let Some(pos) = newline.map(|p| start + p) else {
            if src.len() > self.max_line {
                return Err(CodecError::LineTooLong { max: self.max_line });
            }
            self.scanned = src.len();
            return Ok(None);
        };
        self.scanned = 0;
        if pos > self.max_line {
            return Err(CodecError::LineTooLong { max: self.max_line });
        }
        let mut line = src.split_to(pos + 1);
        line.truncate(pos);
        if line.last() == Some(&b'\r') {
            line.truncate(pos - 1);
        }
        Ok(Some(Frame::data(line.freeze())))
    }
}

impl LineCodec {
    fn encode_frame(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        let prefix: &[u8] = match frame.kind() {
            Kind::HEARTBEAT | Kind::PING => return Ok(()),
            Kind::ERROR => b"ERROR ",
            Kind::DISCONNECT => b"DISCONNECT ",
            _ => b"",
        };
        dst.reserve(prefix.len() + frame.payload().len() + 1);
        dst.extend_from_slice(prefix);
        dst.extend_from_slice(frame.payload());
        dst.put_u8(b'\n');
        Ok(())
    }
}

impl Framing for LineCodec {
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        self.decode_frame(src)
    }

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode_frame(frame, dst)
    }

    fn set_max_frame_size(&mut self, max: usize) {
        self.max_line = max;
    }

    /// The maximum line length.
    fn max_frame_size(&self) -> usize {
        self.max_line
    }

    /// Outgoing lines are not limited (the limit is on what is read).
    fn max_encoded_len(&self) -> usize {
        usize::MAX
    }

    fn is_binary(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(buf: &WriteBuf) -> Vec<u8> {
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let n = buf.chunks_vectored(&mut slices);
        slices[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    /// A burst of small answers is packed without moving what was packed
    /// before (growing one buffer by reallocation copied it at each
    /// doubling: about 600 instructions per 1 KiB answer), in order, in a
    /// few buffers none larger than needed twice over.
    #[test]
    fn packing_a_burst_never_moves_what_is_packed() {
        let mut codec = FrameCodec::new();
        let mut buf = WriteBuf::new();
        let frame = |i: u32| Frame::data(vec![i as u8; 1024]).with_request_id(i);
        codec.encode_into(frame(0), &mut buf).unwrap();
        let first = buf.tail.as_ptr();
        let mut expected = BytesMut::new();
        codec.encode(frame(0), &mut expected).unwrap();
        for i in 1..100 {
            codec.encode_into(frame(i), &mut buf).unwrap();
            codec.encode(frame(i), &mut expected).unwrap();
        }
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let n = buf.chunks_vectored(&mut slices);
        assert_eq!(slices[0].as_ptr(), first, "the first answer was moved");
        assert!((2..=6).contains(&n), "{n} buffers for 100 answers");
        assert!(slices[..n].iter().all(|s| s.len() <= RESERVE_AHEAD));
        assert_eq!(queued(&buf), expected);
        assert_eq!(buf.len(), expected.len());
    }

    /// Once written out, the packed buffer's allocation takes the next
    /// answer (no new allocation while a burst goes on).
    #[test]
    fn a_written_buffer_is_reused() {
        let mut codec = FrameCodec::new();
        let mut buf = WriteBuf::new();
        codec.encode_into(Frame::data("one"), &mut buf).unwrap();
        let start = buf.tail.as_ptr() as usize;
        let capacity = buf.tail.capacity();
        assert!(capacity >= WRITE_CHUNK);
        buf.advance(buf.len());
        codec.encode_into(Frame::data("two"), &mut buf).unwrap();
        let at = buf.tail.as_ptr() as usize;
        assert!((start..start + capacity).contains(&at), "a new allocation");
        assert_eq!(queued(&buf), b"MSGI\0\0\0\x0d\0\x10two");
    }

    /// A buffer started at the size of the last burst packs a burst of
    /// that size into one allocation: one slice, nothing moved, the bytes
    /// in order. A buffer that has an allocation is not started again, and
    /// the size is bounded (8 KiB to 64 KiB, whatever the hint).
    #[test]
    fn a_started_buffer_packs_a_burst_of_its_size_in_one_allocation() {
        let mut codec = FrameCodec::new();
        let frame = |i: u32| Frame::data(vec![i as u8; 1024]).with_request_id(i);
        let burst = 32 * frame(0).wire_len();
        let mut buf = WriteBuf::new();
        assert_eq!(buf.capacity(), 0);
        buf.start(burst);
        let first = buf.tail.as_ptr();
        assert_eq!(buf.capacity(), burst.next_power_of_two());
        let mut expected = BytesMut::new();
        for i in 0..32 {
            buf.start(burst);
            codec.encode_into(frame(i), &mut buf).unwrap();
            codec.encode(frame(i), &mut expected).unwrap();
        }
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        assert_eq!(buf.chunks_vectored(&mut slices), 1, "one buffer");
        assert_eq!(slices[0].as_ptr(), first, "not moved");
        assert_eq!(queued(&buf), expected);
        buf.advance(buf.len());
        buf.release();
        assert_eq!(buf.capacity(), 0, "released");

        for (hint, size) in [
            (0, WRITE_CHUNK),
            (100, WRITE_CHUNK),
            (usize::MAX, RESERVE_AHEAD),
        ] {
            let mut buf = WriteBuf::new();
            buf.start(hint);
            assert_eq!(buf.capacity(), size, "hint {hint}");
        }
    }

    #[test]
    fn write_buf_truncate_cuts_back_across_chunks() {
        let big = Bytes::from(vec![7u8; ZERO_COPY_THRESHOLD]);
        let mut buf = WriteBuf::new();
        buf.put_slice(b"abc");
        let mark = buf.len();
        buf.put_bytes(big.clone());
        buf.put_slice(b"tail");
        buf.truncate(mark);
        assert_eq!(buf.len(), 3);
        assert_eq!(queued(&buf), b"abc");
        // Cut inside a large chunk, then in the packed tail.
        buf.put_bytes(big);
        buf.truncate(5);
        assert_eq!(queued(&buf), b"abc\x07\x07");
        buf.put_slice(b"xyz");
        buf.truncate(6);
        assert_eq!(queued(&buf), b"abc\x07\x07x");
        buf.truncate(100);
        assert_eq!(buf.len(), 6);
    }

    fn decode_all(codec: &mut FrameCodec, bytes: &[u8]) -> Result<Vec<Frame>, CodecError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(frame) = codec.decode(&mut buf)? {
            out.push(frame);
        }
        Ok(out)
    }

    #[test]
    fn worked_example_from_the_contract() {
        let mut codec = FrameCodec::new();
        let frames = decode_all(&mut codec, b"MSGI\x00\x00\x00\x0c\x00\x01hi").unwrap();
        assert_eq!(frames, vec![Frame::ping("hi")]);
    }

    #[test]
    fn garbage_fails_on_first_byte() {
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::from(&b"G"[..]);
        assert!(matches!(codec.decode(&mut buf), Err(CodecError::BadMagic)));
    }

    #[test]
    fn the_magic_is_checked_byte_by_byte_and_whole() {
        let mut codec = FrameCodec::new();
        for prefix in [&b"M"[..], b"MS", b"MSG"] {
            let mut buf = BytesMut::from(prefix);
            assert!(matches!(codec.decode(&mut buf), Ok(None)), "{prefix:?}");
        }
        for bad in [
            &b"MX"[..],
            b"MSX",
            b"MSGX",
            b"MSGX\x00\x00\x00\x0c\x00\x01hi",
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(
                matches!(codec.decode(&mut buf), Err(CodecError::BadMagic)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn oversized_length_does_not_reserve() {
        let mut codec = FrameCodec::with_max_frame_size(100);
        let mut buf = BytesMut::from(&b"MSGI\x00\x00\x00\x65"[..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            CodecError::FrameTooLarge {
                length: 101,
                max: 100
            }
        ));
        assert!(buf.capacity() < 100);
    }

    #[test]
    fn a_partial_large_frame_reserves_only_a_chunk_ahead() {
        let mut codec = FrameCodec::new();
        // The header of a 1 MiB frame, then nothing more.
        let mut buf = BytesMut::from(&b"MSGI\x00\x10\x00\x00\x00\x10"[..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(
            buf.capacity() <= 10 + RESERVE_AHEAD + 64,
            "{}",
            buf.capacity()
        );
        // Fed in pieces, the whole frame still decodes.
        let mut whole = BytesMut::new();
        codec
            .encode(Frame::data(vec![3u8; 1_000_000]), &mut whole)
            .unwrap();
        let mut buf = BytesMut::new();
        let mut got = None;
        for piece in whole.chunks(50_000) {
            buf.extend_from_slice(piece);
            if let Some(f) = codec.decode(&mut buf).unwrap() {
                got = Some(f);
            }
        }
        assert_eq!(got.map(|f| f.payload().len()), Some(1_000_000));
    }

    /// Found by fuzzing (fuzz target `frame_codec`): after a large frame
    /// is decoded and dropped, the next partial frame must not make the
    /// buffer keep the large frame's whole allocation (`try_reclaim` hands
    /// back all of it): the buffer holds what arrived plus room ahead.
    #[test]
    fn a_large_frame_gone_does_not_leave_its_buffer_behind() {
        let mut codec = FrameCodec::new();
        let mut wire = BytesMut::new();
        codec
            .encode(Frame::data(vec![1u8; 200_000]), &mut wire)
            .unwrap();
        wire.extend_from_slice(b"MSGI\x00\x00\x00\x20\x00\x10");
        let mut buf = BytesMut::new();
        let mut frames = 0;
        for piece in wire.chunks(32 * 1024) {
            if buf.capacity() - buf.len() < piece.len() {
                reserve_at_most(&mut buf, piece.len());
            }
            buf.extend_from_slice(piece);
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                assert_eq!(frame.payload().len(), 200_000);
                frames += 1;
            }
            assert!(
                buf.capacity() <= bound(buf.len()) + 32 * 1024,
                "{} bytes buffered, capacity {}",
                buf.len(),
                buf.capacity()
            );
        }
        assert_eq!((frames, buf.len()), (1, 10));
        // One more read chunk, as the transport makes room for it.
        reserve_at_most(&mut buf, 32 * 1024);
        assert!(
            buf.capacity() <= 10 + 32 * 1024 + RESERVE_AHEAD,
            "capacity {}",
            buf.capacity()
        );
    }

    /// What a buffer may hold for an incomplete frame of which `received`
    /// bytes arrived (issue 7, item 10).
    fn bound(received: usize) -> usize {
        received + RESERVE_AHEAD.max(received) + 64
    }

    /// A peer that sends the header of a maximum-size frame, then one byte
    /// at a time, makes the buffer hold no more than 64 KiB ahead of what
    /// it sent: it used to grow with every byte.
    #[test]
    fn a_trickled_frame_holds_at_most_64_kib_ahead() {
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"MSGI\x00\x10\x00\x00\x00\x10");
        assert!(codec.decode(&mut buf).unwrap().is_none());
        for i in 0..100_000u32 {
            buf.extend_from_slice(&[i as u8]);
            assert!(codec.decode(&mut buf).unwrap().is_none());
            let received = buf.len();
            let limit = if received < RESERVE_AHEAD {
                received + RESERVE_AHEAD + 64
            } else {
                bound(received)
            };
            assert!(
                buf.capacity() <= limit,
                "{} bytes received, capacity {}",
                received,
                buf.capacity()
            );
        }
    }

    proptest::proptest! {
        /// However a frame is cut into pieces, the buffer stays within the
        /// bound and the frame decodes whole.
        #[test]
        fn any_split_stays_within_the_bound(
            len in 10usize..300_000,
            cuts in proptest::collection::vec(1usize..70_000, 1..40),
        ) {
            let mut codec = FrameCodec::new();
            let mut whole = BytesMut::new();
            codec.encode(Frame::data(vec![5u8; len - 10]), &mut whole).unwrap();
            let mut buf = BytesMut::new();
            let mut at = 0;
            let mut cut = cuts.iter().cycle();
            let mut got = None;
            while at < whole.len() {
                let n = (*cut.next().unwrap()).min(whole.len() - at);
                // A reader that makes exactly the room it reads into.
                reserve_at_most(&mut buf, n);
                buf.extend_from_slice(&whole[at..at + n]);
                at += n;
                match codec.decode(&mut buf).unwrap() {
                    Some(f) => got = Some(f),
                    None => proptest::prop_assert!(
                        buf.capacity() <= bound(buf.len()),
                        "{} received, capacity {}", buf.len(), buf.capacity()
                    ),
                }
            }
            proptest::prop_assert_eq!(got.map(|f| f.payload().len()), Some(len - 10));
        }
    }

    /// A one-frame read: the buffer of a request/response peer.
    fn read_chunk_with(frames: &[Frame]) -> BytesMut {
        let mut buf = BytesMut::with_capacity(32 * 1024);
        for f in frames {
            FrameCodec::new().encode(f.clone(), &mut buf).unwrap();
        }
        buf
    }

    /// A handler that keeps a small payload must not keep the 32 KiB read
    /// chunk alive (issue 7, item 12): a small frame that ends the bytes
    /// read is copied out, and the read buffer stays unshared.
    #[test]
    fn a_small_payload_does_not_pin_the_read_chunk() {
        let mut codec = FrameCodec::new();
        let mut buf = read_chunk_with(&[Frame::data(vec![7u8; 16]).with_request_id(3)]);
        let frame = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(frame.payload(), &vec![7u8; 16]);
        assert_eq!(frame.request_id(), Some(3));
        assert!(buf.is_empty());
        // No other handle shares the chunk: it can be taken back whole.
        assert!(
            buf.try_reclaim(32 * 1024),
            "the payload pins the read chunk"
        );
    }

    /// The zero-copy path stays for large payloads, and for frames followed
    /// by more bytes (a pipelining peer: no copy, no allocation per frame).
    #[test]
    fn large_or_pipelined_payloads_are_not_copied() {
        let mut codec = FrameCodec::new();
        let mut buf = read_chunk_with(&[Frame::data(vec![1u8; ZERO_COPY_THRESHOLD])]);
        let big = codec.decode(&mut buf).unwrap().unwrap();
        assert!(
            !buf.try_reclaim(32 * 1024),
            "a large payload is shared, not copied"
        );
        drop(big);

        let mut buf = read_chunk_with(&[Frame::data("first"), Frame::data("second")]);
        let first = codec.decode(&mut buf).unwrap().unwrap();
        assert!(
            !buf.try_reclaim(32 * 1024),
            "split off the chunk, not copied"
        );
        let second = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(first.payload(), "first");
        assert_eq!(second.payload(), "second");
    }

    /// A large frame that ends a read buffer with too little room left for
    /// the next read (which allocates a new buffer either way) is handed
    /// over unshared, the whole buffer, without a copy: a transform that
    /// opens a payload in place (decryption) can, where a payload shared
    /// with the read buffer is copied first (issue 9). Followed by more
    /// bytes, it is split off as before.
    #[test]
    fn a_large_frame_that_fills_the_read_buffer_is_handed_over_unshared() {
        let mut codec = FrameCodec::new();
        let mut wire = BytesMut::new();
        let frame = Frame::data(vec![3u8; 64 * 1024]).with_request_id(9);
        codec.encode(frame, &mut wire).unwrap();
        let mut buf = BytesMut::with_capacity(wire.len());
        buf.extend_from_slice(&wire);
        let start = buf.as_ptr();
        let mut got = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(got.request_id(), Some(9));
        assert_eq!(got.payload().len(), 64 * 1024);
        assert_eq!(
            got.payload().as_ptr(),
            start.wrapping_add(CORRELATED_HEADER_LEN),
            "not copied"
        );
        assert_eq!(
            (buf.len(), buf.capacity()),
            (0, 0),
            "the next read starts afresh"
        );
        let payload = std::mem::take(got.payload_mut());
        assert!(payload.try_into_mut().is_ok(), "the frame alone holds it");

        // More bytes after it: split off, shared with what follows.
        let mut buf = BytesMut::with_capacity(wire.len() + 10);
        buf.extend_from_slice(&wire);
        buf.extend_from_slice(b"MSGI\x00\x00");
        let mut got = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(buf.len(), 6);
        let payload = std::mem::take(got.payload_mut());
        assert!(
            payload.try_into_mut().is_err(),
            "shared with the read buffer"
        );
    }

    /// A large ENCRYPTED frame followed by the start of the next one (a
    /// streaming peer's read) is handed over unshared, so it can be opened
    /// in place; the bytes after it move to a new read buffer and the next
    /// frame decodes from there. A plain frame in the same place is split
    /// off, shared, as before.
    #[test]
    fn a_large_sealed_frame_followed_by_a_few_bytes_is_handed_over_unshared() {
        let mut codec = FrameCodec::new();
        let sealed = |id: u32| {
            Frame::data(vec![id as u8; 64 * 1024])
                .with_request_id(id)
                .with_flags(Flags::ENCRYPTED)
        };
        let mut wire = BytesMut::new();
        codec.encode(sealed(1), &mut wire).unwrap();
        let first = wire.len();
        codec.encode(sealed(2), &mut wire).unwrap();
        // One read: the first frame and 100 bytes of the second.
        let mut buf = BytesMut::with_capacity(first + 256);
        buf.extend_from_slice(&wire[..first + 100]);
        let start = buf.as_ptr();
        let mut got = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(got.request_id(), Some(1));
        assert_eq!(
            got.payload().as_ptr(),
            start.wrapping_add(CORRELATED_HEADER_LEN)
        );
        let payload = std::mem::take(got.payload_mut());
        assert!(payload.try_into_mut().is_ok(), "the frame alone holds it");
        assert_eq!(
            &buf[..],
            &wire[first..first + 100],
            "the rest kept, in order"
        );
        assert_eq!(buf.capacity(), first, "room for exactly the next frame");
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&wire[first + 100..]);
        let second = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(second.request_id(), Some(2));
        assert_eq!(second.payload(), &vec![2u8; 64 * 1024][..]);
        assert!(buf.is_empty());

        // Without ENCRYPTED: split off, shared with what follows.
        let mut plain = BytesMut::new();
        codec
            .encode(Frame::data(vec![3u8; 64 * 1024]), &mut plain)
            .unwrap();
        let len = plain.len();
        plain.extend_from_slice(&wire[..100]);
        let mut got = codec.decode(&mut plain).unwrap().unwrap();
        assert_eq!(plain.len(), 100);
        assert_eq!(got.payload().len(), len - HEADER_LEN);
        let payload = std::mem::take(got.payload_mut());
        assert!(
            payload.try_into_mut().is_err(),
            "shared with the read buffer"
        );
    }

    /// Adds 8 bytes to each payload, refuses the payload "fail", and counts
    /// its commits.
    #[derive(Default)]
    struct Padded {
        commits: u32,
    }

    impl crate::FrameTransform for Padded {
        fn decode(&mut self, frame: Frame) -> Result<Frame, crate::BoxError> {
            Ok(frame)
        }
        fn encode(&self, frame: Frame) -> Result<Frame, crate::BoxError> {
            if &frame.payload()[..] == b"fail" {
                return Err("refused".into());
            }
            let mut payload = BytesMut::from(&frame.payload()[..]);
            payload.extend_from_slice(&[0u8; 8]);
            Ok(Frame::data(payload.freeze()))
        }
        fn commit(&mut self) {
            self.commits += 1;
        }
    }

    /// Sending is transactional (docs/ARCHITECTURE.md, "Where each rule
    /// lives"): `Transformed::encode_into` runs `encode_split` then the
    /// framing, and commits only a frame written. A frame the transform
    /// refuses, or that its output makes too large for the codec (checked
    /// before anything is written), leaves no byte and no commit, on the
    /// packed path and the joined one.
    #[test]
    fn a_frame_refused_below_the_transform_is_not_written_nor_committed() {
        let mut t = crate::Transformed::new(Padded::default(), FrameCodec::with_max_frame_size(20));
        let mut out = WriteBuf::new();
        let mut bytes = BytesMut::new();
        // 10 + 3 + 8 = 21 bytes: over the limit once transformed.
        for payload in [&b"abc"[..], b"fail"] {
            assert!(t.encode_into(Frame::data(payload), &mut out).is_err());
            assert!(Framing::encode(&mut t, Frame::data(payload), &mut bytes).is_err());
        }
        assert_eq!(
            (out.len(), bytes.len()),
            (0, 0),
            "a refused frame wrote bytes"
        );
        assert_eq!(t.transform().commits, 0, "a refused frame was committed");
        // 10 + 2 + 8 = 20: written and committed, once per path.
        t.encode_into(Frame::data("ab"), &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        Framing::encode(&mut t, Frame::data("ab"), &mut bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((out.len(), bytes.len()), (20, 20));
        assert_eq!(t.transform().commits, 2);
    }

    #[test]
    fn outgoing_frame_over_max_is_refused() {
        let mut codec = FrameCodec::with_max_frame_size(20);
        let mut buf = BytesMut::new();
        assert!(codec.encode(Frame::data(vec![0u8; 11]), &mut buf).is_err());
        assert!(codec.encode(Frame::data(vec![0u8; 10]), &mut buf).is_ok());
    }

    /// The write queue packs small frames into one buffer and keeps a
    /// payload of 4 KiB or more as its own `Bytes` (a slice of the write,
    /// not copied): docs/ARCHITECTURE.md's request path.
    #[test]
    fn a_payload_of_4_kib_is_queued_as_its_own_slice_a_smaller_one_packed() {
        let mut codec = FrameCodec::new();
        let mut wb = WriteBuf::new();
        let large = Bytes::from(vec![7u8; ZERO_COPY_THRESHOLD]);
        let small = Bytes::from(vec![8u8; ZERO_COPY_THRESHOLD - 1]);
        codec.encode_into(Frame::data("a"), &mut wb).unwrap();
        codec
            .encode_into(Frame::data(large.clone()), &mut wb)
            .unwrap();
        codec
            .encode_into(Frame::data(small.clone()), &mut wb)
            .unwrap();
        codec.encode_into(Frame::data("b"), &mut wb).unwrap();
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let n = wb.chunks_vectored(&mut slices);
        let slices = &slices[..n];
        assert!(
            slices
                .iter()
                .any(|s| s.as_ptr() == large.as_ptr() && s.len() == large.len()),
            "the 4 KiB payload was copied"
        );
        assert!(
            slices.iter().all(|s| s.as_ptr() != small.as_ptr()),
            "a payload under 4 KiB was not packed"
        );
        // Header and "a" packed before it, the small frame and "b" after.
        assert_eq!(n, 3);
        let flat: Vec<u8> = slices.iter().flat_map(|s| s.iter().copied()).collect();
        let frames = decode_all(&mut codec, &flat).unwrap();
        let payloads: Vec<&[u8]> = frames.iter().map(|f| &f.payload()[..]).collect();
        assert_eq!(payloads, [&b"a"[..], &large[..], &small[..], b"b"]);
    }

    #[test]
    fn write_buf_keeps_order_across_chunks() {
        let mut codec = FrameCodec::new();
        let mut wb = WriteBuf::new();
        let big = Bytes::from(vec![7u8; 5000]);
        codec.encode_into(Frame::data("a"), &mut wb).unwrap();
        codec
            .encode_into(Frame::data(big.clone()), &mut wb)
            .unwrap();
        codec.encode_into(Frame::data("b"), &mut wb).unwrap();
        let mut slices = [IoSlice::new(&[]); 8];
        let n = wb.chunks_vectored(&mut slices);
        let flat: Vec<u8> = slices[..n].iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(flat.len(), wb.len());
        let frames = decode_all(&mut codec, &flat).unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[1].payload(), &big);
        wb.advance(13);
        assert_eq!(wb.len(), flat.len() - 13);
        wb.advance(wb.len());
        assert!(wb.is_empty());
    }

    #[test]
    fn lines() {
        let mut codec = LineCodec::with_max_line(8);
        let mut buf = BytesMut::from(&b"hello\r\nwor"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Frame::data("hello")));
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"ld\n");
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Frame::data("world")));
        buf.extend_from_slice(b"123456789");
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::LineTooLong { max: 8 })
        ));
        let mut out = BytesMut::new();
        codec.encode(Frame::error("nope"), &mut out).unwrap();
        codec.encode(Frame::heartbeat(), &mut out).unwrap();
        assert_eq!(&out[..], b"ERROR nope\n");
    }
}
