//! Shared pieces of the msgi fuzz targets: a simulated read loop that feeds
//! a [`Framing`] the way `msgi`'s transport does, in arbitrary splits, and
//! checks the read buffer's memory bound after every step.

use bytes::BytesMut;
use msgi_proto::{reserve_at_most, CodecError, Frame, Framing, RESERVE_AHEAD};

/// The transport's read chunk (`msgi::transport::READ_CHUNK`, private there).
pub const READ_CHUNK: usize = 32 * 1024;

/// A stream to feed a decoder, read off the fuzzer's bytes:
///
/// ```text
/// [cfg: u8][pad: u16 BE][at: u16 BE][n: u8][n split bytes][stream ..]
/// ```
///
/// `pad * 8` zero bytes are inserted into the stream after its first `at`
/// bytes (so a short input can carry the body of a large frame, and more
/// frames after it). Split byte `s` means a read of
/// `(s & 0x7f) + 1` bytes, times 1024 when `s & 0x80`; the splits are used
/// in a cycle (one read of everything when there are none), for the first
/// [`MAX_SPLIT_READS`] reads.
#[derive(Debug)]
pub struct Stream {
    /// A free byte for the target's own settings; its top bit set means a
    /// busy peer: the read loop never sees a quiet moment, so it keeps an
    /// empty buffer instead of giving it back.
    pub cfg: u8,
    /// The bytes that arrive.
    pub bytes: Vec<u8>,
    /// Read sizes, used in a cycle.
    pub splits: Vec<usize>,
}

impl Stream {
    /// Parses the layout above; `None` when the input is too short.
    pub fn parse(data: &[u8]) -> Option<Stream> {
        let (&cfg, rest) = data.split_first()?;
        let (pad, rest) = rest.split_at_checked(2)?;
        let pad = usize::from(u16::from_be_bytes([pad[0], pad[1]])) * 8;
        let (at, rest) = rest.split_at_checked(2)?;
        let at = usize::from(u16::from_be_bytes([at[0], at[1]]));
        let (&n, rest) = rest.split_first()?;
        let (splits, stream) = rest.split_at_checked(usize::from(n).min(rest.len()))?;
        let splits = splits
            .iter()
            .map(|&s| {
                let n = usize::from(s & 0x7f) + 1;
                if s & 0x80 != 0 {
                    n * 1024
                } else {
                    n
                }
            })
            .collect();
        let (head, tail) = stream.split_at(at.min(stream.len()));
        let mut bytes = Vec::with_capacity(stream.len() + pad);
        bytes.extend_from_slice(head);
        bytes.resize(head.len() + pad, 0);
        bytes.extend_from_slice(tail);
        Some(Stream { cfg, bytes, splits })
    }
}

/// Reads sized by the splits; the rest of the stream comes in reads as
/// large as the buffer's room.
pub const MAX_SPLIT_READS: usize = 4096;

/// How a simulated read loop ended.
#[derive(Debug)]
pub enum End {
    /// Every byte was read; this many were left in the buffer (an
    /// incomplete frame).
    Eof(usize),
    /// The decoder refused the stream; `at` is the offset of the first byte
    /// not yet decoded into a frame.
    Refused {
        /// The decoder's error.
        error: CodecError,
        /// Offset of the first byte not consumed by a frame.
        at: usize,
    },
}

/// The documented bound on the read buffer (docs/ARCHITECTURE.md, "Memory
/// bounds"): what has arrived, plus room ahead of at most 64 KiB while fewer
/// than 64 KiB have arrived and at most as much as arrived past that, plus
/// one read chunk.
pub fn read_buffer_bound(buffered: usize) -> usize {
    buffered + RESERVE_AHEAD.max(buffered) + READ_CHUNK
}

/// Feeds `stream` to `framing` as msgi's transport reads a socket: before
/// each read it makes room by the transport's rule (one exact chunk when
/// little room is left), a read fills at most the room there is, then the
/// decoder runs until it needs more bytes; an empty buffer is given back
/// between reads unless the peer is busy (see [`Stream::cfg`]). `on_frame(frame, consumed)` gets each
/// frame with the offset where it started in the stream; it returns the
/// number of bytes it accounts for, so the loop can check that frames
/// consume exactly the bytes they came from.
///
/// Panics (a finding) when the buffer's capacity goes over
/// [`read_buffer_bound`] or the bytes consumed do not add up.
pub fn read_loop<F: Framing>(
    framing: &mut F,
    stream: &Stream,
    mut on_frame: impl FnMut(&Frame, usize) -> usize,
) -> End {
    let mut rbuf = BytesMut::new();
    let mut read = 0usize; // bytes moved into rbuf
    let mut consumed = 0usize; // bytes accounted for by frames
    let mut split = 0usize;
    loop {
        loop {
            match framing.decode(&mut rbuf) {
                Ok(Some(frame)) => {
                    consumed += on_frame(&frame, consumed);
                    assert_eq!(
                        consumed + rbuf.len(),
                        read,
                        "frames consumed {consumed} bytes, {} buffered, {read} read",
                        rbuf.len()
                    );
                }
                Ok(None) => break,
                Err(error) => {
                    return End::Refused {
                        error,
                        at: consumed,
                    }
                }
            }
        }
        assert_eq!(consumed + rbuf.len(), read);
        assert!(
            rbuf.capacity() <= read_buffer_bound(rbuf.len()),
            "read buffer capacity {} for {} buffered bytes (bound {})",
            rbuf.capacity(),
            rbuf.len(),
            read_buffer_bound(rbuf.len())
        );
        if read == stream.bytes.len() {
            return End::Eof(rbuf.len());
        }
        if rbuf.is_empty() && stream.cfg & 0x80 == 0 {
            // The transport gives the buffer back when a read would block
            // with nothing buffered (not when more bytes are there at once).
            rbuf = BytesMut::new();
        }
        let free = rbuf.capacity() - rbuf.len();
        if free < READ_CHUNK / 8 && (rbuf.len() <= READ_CHUNK || free == 0) {
            reserve_at_most(&mut rbuf, READ_CHUNK);
        }
        let free = rbuf.capacity() - rbuf.len();
        assert!(free > 0, "no room to read into");
        // After many small reads the rest arrives in whole reads, which
        // keeps one execution fast without losing the trickle.
        let want = if stream.splits.is_empty() || split >= MAX_SPLIT_READS {
            usize::MAX
        } else {
            stream.splits[split % stream.splits.len()]
        };
        split += 1;
        let n = want.min(free).min(stream.bytes.len() - read);
        let before = rbuf.capacity();
        rbuf.extend_from_slice(&stream.bytes[read..read + n]);
        assert_eq!(rbuf.capacity(), before, "a read never grows the buffer");
        read += n;
    }
}
