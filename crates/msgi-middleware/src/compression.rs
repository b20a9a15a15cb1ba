//! Payload compression with zlib (RFC 1950, deflate in a zlib wrapper, as
//! HTTP's `deflate` coding) via flate2: the COMPRESSED flag. [`Deflate`] is
//! the settings, a [`MakeTransform`]; [`DeflateSession`] one session's
//! transform.
//!
//! Outbound, a payload of at least `threshold` bytes is compressed, and sent
//! compressed only if that made it smaller; otherwise the frame goes out
//! unchanged, without the flag. Inbound, a COMPRESSED payload is inflated
//! with a hard cap: output that would make the frame larger than the
//! maximum frame size is a protocol violation, detected as soon as the
//! inflater passes the cap, never an allocation.
//!
//! This is a wire transform: it lives in the session's framing, so pushed
//! frames are compressed too, not only answers.
//!
//! ```
//! use msgi::{Client, FrameCodec, Server, Wire};
//! use msgi_middleware::WireExt;
//!
//! let framing = Wire::new(FrameCodec::new()).deflate(256);
//! let server = Server::builder().framing(framing.clone()).build()?;
//! let client = Client::builder().framing(framing);
//! # let _ = (server, client);
//! # Ok::<(), msgi::ConfigError>(())
//! ```
//!
//! The deflate state (about 256 KiB at any level) is kept per worker thread
//! and reused, not per session, so idle sessions cost nothing.

use std::cell::RefCell;
use std::fmt;

use bytes::Bytes;
use flate2::{Compress, Decompress, FlushCompress, FlushDecompress, Status};
use msgi::{BoxError, ConfigError, Flags, Frame, FrameTransform, MakeTransform, SessionParams};

/// The default threshold: payloads below it are sent as they are.
///
/// Compressing and inflating a frame costs about 5 µs whatever its size up
/// to 1 KiB (resetting the deflate state dominates). At 1 KiB a text
/// payload shrinks by about 950 bytes, some 7.6 µs of a 1 Gbit/s link:
/// about where compression starts to pay. Slower links favour a lower
/// threshold. Measurements: docs/BENCHMARKS.md.
pub const DEFAULT_THRESHOLD: usize = 1024;

/// Why a compressed frame was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeflateError {
    /// Inflating the payload would exceed the maximum frame size.
    #[error("decompressed payload exceeds the maximum frame size ({max} bytes)")]
    TooLarge {
        /// The most the payload may inflate to.
        max: usize,
    },
    /// The payload is not a complete zlib stream.
    #[error("bad compressed payload: {0}")]
    Corrupt(String),
}

/// Compression settings: makes each session's [`DeflateSession`]. Add it
/// to a [`Wire`](msgi::Wire) with `.deflate(threshold)` ([`WireExt`](crate::WireExt))
/// or `.transform(Deflate::new()..)`.
///
/// Named for the algorithm, not `CompressionLayer`: in tower-http that name
/// compresses HTTP bodies around a service, and this is no service layer.
#[derive(Clone, Copy, Debug)]
pub struct Deflate {
    threshold: usize,
    level: u32,
}

impl Default for Deflate {
    fn default() -> Self {
        Deflate::new()
    }
}

impl Deflate {
    /// Compress payloads of [`DEFAULT_THRESHOLD`] bytes or more, at level 1.
    pub fn new() -> Self {
        Deflate {
            threshold: DEFAULT_THRESHOLD,
            level: 1,
        }
    }

    /// Compress payloads of at least `bytes` bytes.
    pub fn threshold(mut self, bytes: usize) -> Self {
        self.threshold = bytes;
        self
    }

    /// zlib level, 0 (store) to 9 (smallest); default 1 (fastest). A level
    /// above 9 is refused, not silently lowered.
    pub fn level(mut self, level: u32) -> Result<Self, ConfigError> {
        if level > 9 {
            return Err(ConfigError::new(
                "level",
                format!("zlib levels are 0 to 9, not {level}"),
            ));
        }
        self.level = level;
        Ok(self)
    }
}

#[cfg(feature = "psk")]
impl crate::psk::Named for Deflate {
    fn name(&self) -> Option<&'static str> {
        Some("deflate")
    }
}

impl MakeTransform for Deflate {
    type Transform = DeflateSession;

    fn make_transform(&self, params: SessionParams) -> DeflateSession {
        DeflateSession {
            threshold: self.threshold,
            level: self.level,
            max_frame_size: params.max_frame_size,
        }
    }

    /// 0: a payload is sent compressed only when that made it smaller.
    fn max_overhead(&self) -> usize {
        0
    }
}

/// The compression transform of one session (made by [`Deflate`]).
#[derive(Clone)]
pub struct DeflateSession {
    threshold: usize,
    level: u32,
    max_frame_size: usize,
}

impl fmt::Debug for DeflateSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeflateSession")
            .field("threshold", &self.threshold)
            .field("level", &self.level)
            .finish()
    }
}

thread_local! {
    static DEFLATE: RefCell<Option<(u32, Compress)>> = const { RefCell::new(None) };
    static INFLATE: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// zlib-compresses `input`; `None` if the result would not be smaller.
pub fn compress(input: &[u8], level: u32) -> Option<Vec<u8>> {
    DEFLATE.with(|cell| {
        let mut cell = cell.borrow_mut();
        let deflate = match &mut *cell {
            Some((l, d)) if *l == level => {
                d.reset();
                d
            }
            slot => {
                let d = Compress::new(flate2::Compression::new(level), true);
                &mut slot.insert((level, d)).1
            }
        };
        // Room for one byte less than the input: if it does not fit, it is
        // not worth sending compressed.
        let mut out = Vec::with_capacity(input.len().saturating_sub(1));
        match deflate.compress_vec(input, &mut out, FlushCompress::Finish) {
            Ok(Status::StreamEnd) => Some(out),
            _ => None,
        }
    })
}

/// Inflates a zlib stream, refusing to produce more than `limit` bytes.
pub fn decompress(input: &[u8], limit: usize) -> Result<Vec<u8>, DeflateError> {
    INFLATE.with(|cell| {
        let mut cell = cell.borrow_mut();
        let inflate = cell.get_or_insert_with(|| Decompress::new(true));
        inflate.reset(true);
        let cap = limit.saturating_add(1);
        // A first guess of four times the input, at least 64 bytes, but never
        // past the cap (which may be below 64 with a small maximum frame size).
        let mut out = Vec::with_capacity(input.len().saturating_mul(4).max(64).min(cap));
        loop {
            let consumed = usize::try_from(inflate.total_in()).unwrap_or(usize::MAX);
            let rest = input.get(consumed..).unwrap_or_default();
            let before = (inflate.total_in(), inflate.total_out());
            let status = inflate
                .decompress_vec(rest, &mut out, FlushDecompress::None)
                .map_err(|e| DeflateError::Corrupt(e.to_string()))?;
            if out.len() > limit {
                return Err(DeflateError::TooLarge { max: limit });
            }
            match status {
                Status::StreamEnd => {
                    if inflate.total_in() != input.len() as u64 {
                        return Err(DeflateError::Corrupt("trailing bytes".into()));
                    }
                    return Ok(out);
                }
                _ if out.len() == out.capacity() => {
                    // Grow, but never past one byte over the limit.
                    let more = out.capacity().min(cap - out.len());
                    out.reserve_exact(more);
                }
                _ if before == (inflate.total_in(), inflate.total_out()) => {
                    return Err(DeflateError::Corrupt("truncated stream".into()));
                }
                _ => {}
            }
        }
    })
}

impl FrameTransform for DeflateSession {
    fn set_max_frame_size(&mut self, max: usize) {
        self.max_frame_size = max;
    }

    fn decode(&mut self, mut frame: Frame) -> Result<Frame, BoxError> {
        if !frame.flags().contains(Flags::COMPRESSED) {
            return Ok(frame);
        }
        let limit = self.max_frame_size.saturating_sub(frame.header_len());
        let plain = decompress(frame.payload(), limit)?;
        *frame.payload_mut() = Bytes::from(plain);
        let flags = frame.flags().without(Flags::COMPRESSED);
        frame.set_flags(flags);
        Ok(frame)
    }

    /// Stateless: the default `commit` does nothing, and `max_overhead` is
    /// 0 because a payload is sent compressed only when that made it smaller.
    fn encode(&self, mut frame: Frame) -> Result<Frame, BoxError> {
        if frame.payload().len() < self.threshold || frame.flags().contains(Flags::COMPRESSED) {
            return Ok(frame);
        }
        if let Some(packed) = compress(frame.payload(), self.level) {
            *frame.payload_mut() = Bytes::from(packed);
            let flags = frame.flags().with(Flags::COMPRESSED);
            frame.set_flags(flags);
        }
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transform() -> DeflateSession {
        Deflate::new()
            .threshold(16)
            .make_transform(SessionParams::new(msgi::Side::Client, 1024))
    }

    #[test]
    fn compressible_payloads_round_trip_and_small_ones_pass() {
        let mut c = transform();
        let text = Frame::data("hello hello hello hello hello hello").with_request_id(3);
        let packed = c.encode(text.clone()).unwrap();
        assert!(packed.flags().contains(Flags::COMPRESSED));
        assert!(packed.payload().len() < text.payload().len());
        assert_eq!(c.decode(packed).unwrap(), text);

        let small = Frame::data("tiny");
        assert_eq!(c.encode(small.clone()).unwrap(), small);
        let random: Vec<u8> = (0..200u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let noise = Frame::data(random);
        let out = c.encode(noise.clone()).unwrap();
        assert!(!out.flags().contains(Flags::COMPRESSED) || out.payload().len() < 200);
    }

    #[test]
    fn zip_bomb_is_refused_at_the_cap() {
        let bomb = compress(&vec![0u8; 10 * 1024 * 1024], 9).unwrap();
        assert!(bomb.len() < 20 * 1024);
        let mut c = transform();
        let frame = Frame::data(bomb).with_flags(Flags::COMPRESSED);
        let err = c.decode(frame).unwrap_err();
        assert!(
            err.to_string().starts_with("decompressed payload exceeds"),
            "{err}"
        );
        // Exactly at the cap is fine.
        let fits = compress(&[7u8; 1014], 6).unwrap();
        assert_eq!(decompress(&fits, 1014).unwrap().len(), 1014);
        assert!(decompress(&fits, 1013).is_err());
    }

    #[test]
    fn corrupt_and_truncated_streams_are_refused() {
        let good = compress(&[1u8; 500], 6).unwrap();
        assert!(decompress(&good[..good.len() - 3], 1000).is_err());
        assert!(decompress(b"not zlib at all", 1000).is_err());
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decompress(&trailing, 1000).is_err());
    }

    /// A maximum frame size below 73 bytes made the first output guess
    /// larger than the cap, and `clamp` panicked (issue 7, item 6).
    #[test]
    fn a_tiny_maximum_frame_size_does_not_panic() {
        let mut c = transform();
        c.set_max_frame_size(64);
        let text = Frame::data("hello hello hello hello hello hello");
        let packed = c.encode(text.clone()).unwrap();
        assert!(packed.flags().contains(Flags::COMPRESSED));
        assert_eq!(c.decode(packed).unwrap(), text);
        for limit in 0..80 {
            let _ = decompress(&compress(&[1u8; 100], 6).unwrap(), limit);
        }
    }

    #[test]
    fn levels_are_checked_when_built() {
        assert!(Deflate::new().level(9).is_ok());
        assert_eq!(Deflate::new().level(10).unwrap_err().setting(), "level");
    }
}
