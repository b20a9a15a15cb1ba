//! The transport seam: [`Transport`], a framed connection the session
//! driver is generic over (frames in, frames out), and [`ByteStream`], its
//! implementation over a byte stream and a [`Framing`].
//!
//! A byte stream (TCP, Unix, TLS) is framed by the server's framing; a
//! message transport (WebSocket: one binary message is one frame) carries
//! frames as they are. Both implement [`Transport`], so the driver never
//! assumes a byte stream. [`IntoTransport`] says how an accepted
//! connection becomes a transport given the server's framing.
//!
//! Unlike `tokio_util::codec::Framed`, a [`ByteStream`] frees its read and
//! write buffers whenever the connection goes quiet, so an idle session
//! holds no buffer, and it writes everything queued with one vectored write
//! per wake-up.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use tokio::time::Sleep;

use msgi_proto::Frame;
use msgi_proto::{CodecError, Framing, WriteBuf, RESERVE_AHEAD};

/// The room a read gets: the read buffer is topped up to this much free
/// space when less than an eighth of it is left (and on the first read
/// after the session went quiet, which freed the buffer). As large as the
/// reference server's, so a pipelining client's burst of up to 64 KiB (32
/// calls of 1 KiB are 33,216 bytes) is taken with one read, and that read,
/// returning less than the room it had, tells tokio the socket is drained
/// (no second read ending in `EAGAIN`). With 32 KiB every such burst took
/// two reads. [`READ_SLACK`] more, so that a frame with a 64 KiB payload
/// (its header and a wire transform's overhead included) fits in one chunk.
const READ_CHUNK: usize = 64 * 1024 + READ_SLACK;

/// The room a read chunk has beyond 64 KiB: more than a frame's header and
/// any wire transform's overhead (40 bytes for encryption). With a chunk of
/// exactly 64 KiB, a frame of a 64 KiB payload never fitted: its first 64
/// KiB were read, then copied into a buffer of the frame's size to read its
/// last bytes (a 64 KiB copy and a second read per frame).
const READ_SLACK: usize = 256;

/// Why a [`Transport`] could not read a frame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The bytes (or the message) broke the framing: the peer broke the
    /// protocol. The session answers with ERROR and closes.
    #[error(transparent)]
    Codec(CodecError),
    /// The transport failed, or closed in the middle of a frame (kind
    /// [`UnexpectedEof`](io::ErrorKind::UnexpectedEof)).
    #[error(transparent)]
    Reset(io::Error),
}

/// A framed connection: what a session reads frames from and writes frames
/// to. The session driver is generic over it (no boxing, no dynamic call per
/// frame).
///
/// [`ByteStream`] implements it for any `AsyncRead + AsyncWrite` with a
/// [`Framing`]; a message transport (a WebSocket, an in-memory channel of
/// frames) implements it directly, one message per frame. The contract is
/// the one the driver relies on:
///
/// - [`poll_frame`](Transport::poll_frame) is `Ready(Ok(None))` on a clean
///   end between frames, and may be polled again after `Pending`;
/// - [`queue`](Transport::queue) never blocks: it adds the frame to a write
///   queue (encoding it if the transport encodes), and fails without
///   changing anything if the frame cannot be sent (too large, refused by a
///   transform), so the session can send an ERROR instead;
///   [`pending_write`](Transport::pending_write) is that queue's size in
///   bytes, which the session keeps bounded (it stops reading above its
///   high-water mark);
/// - [`poll_write`](Transport::poll_write) writes and flushes the whole
///   queue, and [`take_written`](Transport::take_written) says how many
///   bytes went out since it was last asked (the heartbeat clock counts
///   them as activity);
/// - a transport should release its buffers when idle: an idle session is
///   mostly its transport's memory.
pub trait Transport: Send + 'static {
    /// Whether frames carry the binary MSGI header (false for text lines,
    /// which have no handshake or request ids).
    fn is_binary(&self) -> bool;

    /// The next frame; `Ok(None)` on a clean end of stream between frames.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Frame>, ReadError>>;

    /// The next complete frame already in the transport's read buffer,
    /// without reading from the peer (`Ok(None)` when there is none): what
    /// a server shutting down hands on. The default holds none (a
    /// transport that reads no frame ahead).
    ///
    /// # Errors
    ///
    /// The buffered bytes break the framing.
    fn buffered_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        Ok(None)
    }

    /// Adds a frame to the write queue, or refuses it without change.
    ///
    /// # Errors
    ///
    /// The frame cannot be sent: over the maximum frame size, or refused
    /// by a wire transform.
    fn queue(&mut self, frame: Frame) -> Result<(), CodecError>;

    /// Bytes (or, for a message transport, an estimate of the bytes)
    /// queued and not yet written.
    fn pending_write(&self) -> usize;

    /// Writes as much of the queue as the connection takes: `Ready(Ok(()))`
    /// once the queue is empty and flushed, `Pending` while some remains.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Bytes written since the last call.
    fn take_written(&mut self) -> usize;

    /// Closes the write side (after the last frame was written).
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Reads and throws away what the peer still sends, until it closes
    /// (or fails). Used after a final frame so that unread input does not
    /// turn our close into a reset that could destroy that frame in flight.
    fn poll_discard(&mut self, cx: &mut Context<'_>) -> Poll<()>;
}

/// An accepted connection that becomes a [`Transport`] given the server's
/// framing `C` (one copy per session, already started for the server side).
///
/// Implemented for tokio's TCP and Unix streams and its in-memory
/// [`DuplexStream`](tokio::io::DuplexStream), for [`Plain`] (any other
/// byte stream), and for every [`Transport`] (which keeps its own framing:
/// a message transport that wants the server's framing, to run the wire
/// transforms on each message, implements this trait itself).
pub trait IntoTransport<C>: Send + 'static {
    /// The transport it becomes.
    type Transport: Transport;

    /// Makes the transport.
    fn into_transport(self, framing: C) -> Self::Transport;
}

/// Any byte stream, to be framed by the server's framing: what an accept
/// step returns for a stream type this crate does not know (a TLS stream).
#[derive(Debug)]
pub struct Plain<T>(pub T);

impl<T, C> IntoTransport<C> for Plain<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Framing + Send + 'static,
{
    type Transport = ByteStream<T, C>;

    fn into_transport(self, framing: C) -> ByteStream<T, C> {
        ByteStream::new(self.0, framing)
    }
}

macro_rules! byte_streams {
    ($($(#[$m:meta])* $t:ty),*) => {$(
        $(#[$m])*
        impl<C: Framing + Send + 'static> IntoTransport<C> for $t {
            type Transport = ByteStream<$t, C>;

            fn into_transport(self, framing: C) -> ByteStream<$t, C> {
                ByteStream::new(self, framing)
            }
        }
    )*};
}

byte_streams!(
    tokio::net::TcpStream,
    #[cfg(unix)]
    tokio::net::UnixStream,
    tokio::io::DuplexStream
);

impl<X: Transport, C> IntoTransport<C> for X {
    type Transport = X;

    fn into_transport(self, _framing: C) -> X {
        self
    }
}

/// A byte stream framed by a [`Framing`]: the [`Transport`] of TCP, Unix
/// and (later) TLS sessions, and of the client. It owns the read buffer
/// (dropped whenever a read would block with nothing buffered) and the write
/// queue (small frames packed, large payloads kept as their own `Bytes`,
/// one vectored write per wake-up, released once flushed).
pub struct ByteStream<T, C> {
    io: T,
    codec: C,
    rbuf: BytesMut,
    wbuf: WriteBuf,
    needs_flush: bool,
    /// Bytes the last write that emptied the queue wrote (at most
    /// [`RESERVE_AHEAD`]) when what it wrote was queued after a read (the
    /// answers to what was read); 0 otherwise: the size the packed buffer
    /// starts at ([`WriteBuf::start`]) when the next bytes are read.
    write_hint: u32,
    /// Bytes were read since the write queue was last emptied (or found
    /// empty). With `write_hint`, five bytes in what was the padding after
    /// `needs_flush`: a session is no larger for them.
    read_since_write: bool,
    written: usize,
}

impl<T, C> std::fmt::Debug for ByteStream<T, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByteStream")
            .field("buffered", &self.rbuf.len())
            .field("pending_write", &self.wbuf.len())
            .finish_non_exhaustive()
    }
}

impl<T, C> ByteStream<T, C>
where
    T: AsyncRead + AsyncWrite + Unpin,
    C: Framing,
{
    /// Frames `io` with `codec` (already started for its side).
    pub fn new(io: T, codec: C) -> Self {
        ByteStream {
            io,
            codec,
            rbuf: BytesMut::new(),
            wbuf: WriteBuf::new(),
            needs_flush: false,
            write_hint: 0,
            read_since_write: false,
            written: 0,
        }
    }

    pub(crate) fn is_binary(&self) -> bool {
        self.codec.is_binary()
    }

    /// The next frame; `Ok(None)` on a clean end of stream between frames.
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Frame>, ReadError>> {
        loop {
            match self.codec.decode(&mut self.rbuf) {
                Ok(Some(frame)) => return Poll::Ready(Ok(Some(frame))),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(ReadError::Codec(e))),
            }
            let mut free = self.rbuf.capacity() - self.rbuf.len();
            if free < READ_CHUNK && self.rbuf.is_empty() && self.rbuf.try_reclaim(READ_CHUNK) {
                // Nothing buffered, and every frame split from the chunk is
                // gone: the whole chunk again, without an allocation (a
                // burst of up to 64 KiB stays one read). Not the allocation
                // a large frame left behind, though: kept under small frames
                // it would be pinned by any one a handler holds.
                if self.rbuf.capacity() > READ_CHUNK + READ_CHUNK / 2 {
                    self.rbuf = BytesMut::new();
                    free = 0;
                } else {
                    free = self.rbuf.capacity();
                }
            }
            // Exactly one chunk more, never `reserve`'s doubling, and not
            // while a large partial frame is buffered (the decoder has made
            // room for its rest; copying it to add a chunk would cost more
            // than the one more read it saves).
            if free < READ_CHUNK / 8 && (self.rbuf.len() <= READ_CHUNK || free == 0) {
                msgi_proto::reserve_at_most(&mut self.rbuf, READ_CHUNK);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf) {
                Poll::Ready(Ok(0)) if self.rbuf.is_empty() => return Poll::Ready(Ok(None)),
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(ReadError::Reset(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "end of stream inside a frame",
                    ))))
                }
                Poll::Ready(Ok(_)) => {
                    // Bytes in: answers follow if the last ones did. Once
                    // per read rather than per frame queued (a check there
                    // stood in the way of passing the frame straight to the
                    // framing). A stream whose reads are not answered at
                    // once (a client, a slow handler) has no hint and grows
                    // its buffer from 8 KiB as it queues.
                    self.read_since_write = true;
                    if self.write_hint > 0 {
                        self.wbuf.start(self.write_hint as usize);
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(ReadError::Reset(e))),
                // The buffer is kept (the answers to what was read are
                // written next, and the next read, if any, goes into the
                // rest of the chunk); `poll_write` gives it back once a
                // round has nothing to write, or its write would block.
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Encodes a frame into the write queue.
    pub(crate) fn queue(&mut self, frame: Frame) -> Result<(), CodecError> {
        self.codec.encode_into(frame, &mut self.wbuf)
    }

    /// Bytes waiting to be written.
    pub(crate) fn pending_write(&self) -> usize {
        self.wbuf.len()
    }

    /// Writes as much of the queue as the transport takes: `Ready(Ok(()))`
    /// once the queue is empty and flushed, `Pending` while bytes remain.
    /// [`take_written`](ByteStream::take_written) tells whether any went out.
    ///
    /// Called with nothing to write and nothing to flush (a round of the
    /// session's task that wrote nothing: the connection is quiet), it
    /// gives back the read buffer if it holds no byte, and the write
    /// buffer: an idle session holds neither. A write that would block
    /// gives back an empty read buffer too: a session whose peer does not
    /// read holds no read chunk.
    pub(crate) fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.wbuf.is_empty() && !self.needs_flush {
            if self.rbuf.is_empty() {
                self.rbuf = BytesMut::new();
            }
            if std::mem::take(&mut self.read_since_write) {
                // Read, and nothing to answer at once: the next read does
                // not start a buffer that would go unused.
                self.write_hint = 0;
            }
            self.wbuf.release();
            return Poll::Ready(Ok(()));
        }
        let mut wrote = 0;
        while !self.wbuf.is_empty() {
            let mut slices = [IoSlice::new(&[]); WriteBuf::MAX_IOVECS];
            let count = self.wbuf.chunks_vectored(&mut slices);
            let n = match Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Blocked on the peer (a lagging subscriber): an empty
                    // read chunk would be kept for as long as it does not
                    // read. Not reached by a busy session whose writes
                    // complete: it keeps its chunk.
                    if self.rbuf.is_empty() {
                        self.rbuf = BytesMut::new();
                    }
                    return Poll::Pending;
                }
            };
            self.wbuf.advance(n);
            self.written += n;
            wrote += n;
            self.needs_flush = true;
        }
        if wrote > 0 {
            // What this write emptied the queue of, if it answered reads:
            // the size of the next burst's buffer.
            self.write_hint = if std::mem::take(&mut self.read_since_write) {
                u32::try_from(wrote.min(RESERVE_AHEAD)).unwrap_or(u32::MAX)
            } else {
                0
            };
        }
        if self.needs_flush {
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.needs_flush = false;
        }
        self.wbuf.release();
        Poll::Ready(Ok(()))
    }

    /// Bytes written since the last call.
    pub(crate) fn take_written(&mut self) -> usize {
        std::mem::take(&mut self.written)
    }

    pub(crate) fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    /// Reads and throws away what the peer still sends, until it closes.
    /// Used after a final frame so that unread input does not turn our
    /// close into a reset that could destroy that frame in flight.
    pub(crate) fn poll_discard(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.rbuf = BytesMut::new();
        let mut scratch = [0u8; 1024];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T, C> Transport for ByteStream<T, C>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Framing + Send + 'static,
{
    fn is_binary(&self) -> bool {
        ByteStream::is_binary(self)
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Frame>, ReadError>> {
        ByteStream::poll_frame(self, cx)
    }

    fn buffered_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        self.codec.decode(&mut self.rbuf).map_err(ReadError::Codec)
    }

    fn queue(&mut self, frame: Frame) -> Result<(), CodecError> {
        ByteStream::queue(self, frame)
    }

    fn pending_write(&self) -> usize {
        ByteStream::pending_write(self)
    }

    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ByteStream::poll_write(self, cx)
    }

    fn take_written(&mut self) -> usize {
        ByteStream::take_written(self)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ByteStream::poll_shutdown(self, cx)
    }

    fn poll_discard(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        ByteStream::poll_discard(self, cx)
    }
}

/// One timer a driver re-arms to whatever deadline its protocol asks for.
pub(crate) struct Alarm {
    sleep: Pin<Box<Sleep>>,
    armed_for: Option<Instant>,
}

impl Alarm {
    pub(crate) fn new() -> Self {
        Alarm {
            sleep: Box::pin(tokio::time::sleep_until(tokio::time::Instant::now())),
            armed_for: None,
        }
    }

    /// Arms the timer for `deadline` (if not already) and polls it: true
    /// once the deadline has passed. `deadline` is a std `Instant` on
    /// tokio's clock (from [`now`]).
    pub(crate) fn poll_at(&mut self, deadline: Instant, cx: &mut Context<'_>) -> bool {
        if self.armed_for != Some(deadline) {
            self.sleep
                .as_mut()
                .reset(tokio::time::Instant::from_std(deadline));
            self.armed_for = Some(deadline);
        }
        self.sleep.as_mut().poll(cx).is_ready()
    }
}

/// The current time as the sans-IO rules take it: tokio's clock (so a test
/// with paused time controls it), as a std `Instant`.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
mod tests {
    use super::*;
    use msgi_proto::FrameCodec;
    use tokio::io::AsyncWriteExt;

    /// Counts the reads that returned bytes.
    struct CountingReads<T> {
        io: T,
        reads: usize,
    }

    impl<T: AsyncRead + Unpin> AsyncRead for CountingReads<T> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let before = buf.filled().len();
            let polled = Pin::new(&mut self.io).poll_read(cx, buf);
            if buf.filled().len() > before {
                self.reads += 1;
            }
            polled
        }
    }

    impl<T: AsyncWrite + Unpin> AsyncWrite for CountingReads<T> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.io).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// A pipelining client's burst (32 calls of 1 KiB: 33,216 bytes, and
    /// up to 64 KiB) is taken with one read, burst after burst (with a
    /// 32 KiB read chunk each took two: one read system call per 32
    /// messages more than the reference server makes).
    #[tokio::test]
    async fn a_burst_of_up_to_64_kib_is_one_read() {
        let (mut peer, io) = tokio::io::duplex(1 << 20);
        let mut transport = ByteStream::new(CountingReads { io, reads: 0 }, FrameCodec::new());
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        for (calls, size) in [(32, 1024), (32, 1024), (32, 1024), (60, 1024), (3, 20_000)] {
            let mut burst = BytesMut::new();
            for id in 0..calls {
                let frame = Frame::data(vec![7u8; size]).with_request_id(id);
                msgi_proto::Framing::encode(&mut FrameCodec::new(), frame, &mut burst)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            assert!(burst.len() <= 64 * 1024, "{}", burst.len());
            peer.write_all(&burst)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let reads = transport.io.reads;
            let mut frames = 0;
            while let Poll::Ready(frame) = transport.poll_frame(&mut cx) {
                let frame = frame
                    .unwrap_or_else(|e| panic!("{e}"))
                    .unwrap_or_else(|| panic!("end of stream"));
                assert_eq!(frame.payload().len(), size);
                frames += 1;
            }
            assert_eq!(frames, calls);
            assert_eq!(
                transport.io.reads - reads,
                1,
                "a burst of {} bytes took more than one read",
                burst.len()
            );
        }
    }

    fn encoded(frames: impl IntoIterator<Item = Frame>) -> BytesMut {
        let mut wire = BytesMut::new();
        for frame in frames {
            msgi_proto::Framing::encode(&mut FrameCodec::new(), frame, &mut wire)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        wire
    }

    /// Reads every complete frame the stream has, until it would block.
    fn read_all<T, C>(transport: &mut ByteStream<T, C>) -> Vec<Frame>
    where
        T: AsyncRead + AsyncWrite + Unpin,
        C: Framing,
    {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut frames = Vec::new();
        while let Poll::Ready(frame) = transport.poll_frame(&mut cx) {
            frames.push(
                frame
                    .unwrap_or_else(|e| panic!("{e}"))
                    .unwrap_or_else(|| panic!("end of stream")),
            );
        }
        frames
    }

    /// A frame of a 64 KiB payload (header and request id included) is
    /// read with one read into one buffer it fills, frame after frame, and
    /// handed over unshared: with a read chunk of exactly 64 KiB, its first
    /// 64 KiB were read, copied into a buffer of the frame's size, and its
    /// last 14 bytes took a second read.
    #[tokio::test]
    async fn a_frame_of_a_64_kib_payload_is_one_read_and_no_copy() {
        let (mut peer, io) = tokio::io::duplex(1 << 20);
        let mut transport = ByteStream::new(CountingReads { io, reads: 0 }, FrameCodec::new());
        for id in 0..3u8 {
            let frame = Frame::data(vec![id; 64 * 1024]).with_request_id(u32::from(id));
            peer.write_all(&encoded([frame]))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let reads = transport.io.reads;
            let mut frames = read_all(&mut transport);
            assert_eq!(transport.io.reads - reads, 1, "frame {id}");
            assert_eq!(frames.len(), 1);
            let payload = std::mem::take(frames[0].payload_mut());
            assert!(payload.iter().all(|b| *b == id));
            assert!(
                payload.try_into_mut().is_ok(),
                "frame {id}: the frame alone holds its buffer"
            );
        }
    }

    /// While a session is busy, the next read goes into the chunk the last
    /// one used (taken back whole once every frame split from it is gone:
    /// no allocation); a frame still held keeps its bytes (its part of the
    /// chunk is not read into again), and each burst's frames carry their
    /// own. The answers of a burst are packed into one buffer started at the
    /// size the last burst wrote. A round that has nothing to write gives
    /// both buffers back: a quiet session holds none.
    #[tokio::test]
    async fn a_busy_stream_reuses_its_buffers_and_a_quiet_one_holds_none() {
        let (mut peer, io) = tokio::io::duplex(1 << 20);
        let mut transport = ByteStream::new(io, FrameCodec::new());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let burst =
            |byte: u8| encoded((0..32).map(|id| Frame::data(vec![byte; 1024]).with_request_id(id)));
        let mut kept: Option<Frame> = None;
        let mut first_chunk = 0;
        for (round, byte) in [1u8, 2, 3].into_iter().enumerate() {
            let wire = burst(byte);
            peer.write_all(&wire)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let frames = read_all(&mut transport);
            assert_eq!(frames.len(), 32);
            for frame in &frames {
                assert!(frame.payload().iter().all(|b| *b == byte), "burst {byte}");
            }
            let start = frames[0].payload().as_ptr() as usize;
            match round {
                0 => first_chunk = start,
                1 => assert_eq!(start, first_chunk, "not read into the same chunk"),
                _ => assert_ne!(start, first_chunk, "read over a frame still held"),
            }
            if round == 1 {
                // Held over the next burst (shares the chunk).
                kept = Some(frames[0].clone());
            }
            for frame in frames {
                transport.queue(frame).unwrap_or_else(|e| panic!("{e}"));
            }
            if round > 0 {
                assert_eq!(
                    transport.wbuf.capacity(),
                    wire.len().next_power_of_two(),
                    "not started at the last burst's size"
                );
                let mut slices = [IoSlice::new(&[]); WriteBuf::MAX_IOVECS];
                assert_eq!(transport.wbuf.chunks_vectored(&mut slices), 1);
            }
            assert!(transport.poll_write(&mut cx).is_ready());
            assert_eq!(transport.take_written(), wire.len());
            assert!(transport.rbuf.capacity() > 0, "not kept while busy");
            let mut echoed = vec![0u8; wire.len()];
            tokio::io::AsyncReadExt::read_exact(&mut peer, &mut echoed)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(echoed, wire.to_vec());
        }
        let kept = kept.unwrap_or_else(|| panic!("no frame held"));
        assert!(
            kept.payload().iter().all(|b| *b == 2),
            "a held frame changed"
        );

        // Quiet: a read that would block, then a round with nothing to write.
        assert!(transport.poll_frame(&mut cx).is_pending());
        assert!(transport.poll_write(&mut cx).is_ready());
        assert_eq!(
            transport.rbuf.capacity(),
            0,
            "a quiet stream holds a read buffer"
        );
        assert_eq!(
            transport.wbuf.capacity(),
            0,
            "a quiet stream holds a write buffer"
        );
    }

    /// A session whose writes stay blocked (a lagging subscriber whose peer
    /// does not read) holds no empty read buffer: a round whose write
    /// would block gives back the read chunk, as a round with nothing to
    /// write does (10,000 laggers kept 64 KiB each). The busy path, whose
    /// writes complete, keeps its chunk
    /// (`a_busy_stream_reuses_its_buffers_and_a_quiet_one_holds_none`).
    #[tokio::test]
    async fn a_stream_whose_writes_are_blocked_holds_no_empty_read_buffer() {
        let (mut peer, io) = tokio::io::duplex(1024);
        let mut transport = ByteStream::new(io, FrameCodec::new());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        peer.write_all(&encoded([Frame::data(vec![1u8; 100])]))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let frames = read_all(&mut transport);
        assert_eq!(frames.len(), 1);
        assert!(transport.rbuf.capacity() > 0, "read into a chunk");
        for _ in 0..16 {
            transport
                .queue(Frame::data(vec![2u8; 1024]))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        for round in 0..3 {
            assert!(transport.poll_frame(&mut cx).is_pending(), "round {round}");
            assert!(transport.poll_write(&mut cx).is_pending(), "round {round}");
            assert!(transport.pending_write() > 0);
            assert_eq!(
                transport.rbuf.capacity(),
                0,
                "round {round}: a blocked stream holds an empty read buffer"
            );
        }
        // Bytes that arrived while blocked are kept, not dropped.
        let mut drained = vec![0u8; 1024];
        let n = tokio::io::AsyncReadExt::read(&mut peer, &mut drained)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(n > 0);
        peer.write_all(&encoded([Frame::data(vec![3u8; 10])])[..5])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(transport.poll_frame(&mut cx).is_pending());
        let _ = transport.poll_write(&mut cx);
        assert_eq!(transport.rbuf.len(), 5, "a partial frame was dropped");
    }

    /// The allocation a large frame leaves behind is not kept under small
    /// frames (ARCHITECTURE: a buffer reused must be within 32 KiB of what
    /// is needed). The reviewer's case of session 7: a frame a little over
    /// one read chunk arrives with small frames behind it, so it is split
    /// off a buffer of two chunks that also holds the start of the next
    /// frames; each frame is dropped as soon as it is read (as a session
    /// does), so when the buffer is empty it is unique again and
    /// `try_reclaim` would hand back all of it. Kept, it stayed under every
    /// later burst.
    #[tokio::test]
    async fn the_allocation_a_large_frame_left_behind_is_not_kept_under_small_frames() {
        let (mut peer, io) = tokio::io::duplex(1 << 20);
        let mut transport = ByteStream::new(io, FrameCodec::new());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let bound = READ_CHUNK + READ_CHUNK / 2;
        let mut wire = encoded([Frame::data(vec![7u8; 70_000])]);
        let large = wire.len();
        wire.extend_from_slice(&encoded(
            (0..10).map(|id| Frame::data(vec![8u8; 100]).with_request_id(id)),
        ));
        peer.write_all(&wire)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut sizes = Vec::new();
        let mut behind = 0;
        while let Poll::Ready(frame) = transport.poll_frame(&mut cx) {
            let frame = frame
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("end of stream"));
            if sizes.is_empty() {
                // Split off the front of the buffer: what is left of it.
                behind = transport.rbuf.len();
                assert!(
                    transport.rbuf.capacity() + large > bound,
                    "the case did not arise: read into {} bytes",
                    transport.rbuf.capacity() + large
                );
            }
            sizes.push(frame.payload().len());
            // Dropped here: nothing holds the large frame's buffer.
        }
        assert_eq!(sizes.len(), 11);
        assert_eq!(sizes[0], 70_000);
        assert!(
            behind > 0,
            "no bytes of the next frames behind the large one"
        );
        assert!(
            transport.rbuf.capacity() <= bound,
            "an empty buffer kept {} bytes a large frame left behind",
            transport.rbuf.capacity()
        );
        for burst in 0..3u32 {
            peer.write_all(&encoded((0..32).map(|id| {
                Frame::data(vec![9u8; 1024]).with_request_id(burst * 32 + id)
            })))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
            let mut frames = 0;
            while let Poll::Ready(frame) = transport.poll_frame(&mut cx) {
                let frame = frame
                    .unwrap_or_else(|e| panic!("{e}"))
                    .unwrap_or_else(|| panic!("end of stream"));
                assert_eq!(frame.payload().len(), 1024);
                frames += 1;
                assert!(
                    transport.rbuf.capacity() + transport.rbuf.len() <= bound,
                    "burst {burst}: small frames read into {} bytes",
                    transport.rbuf.capacity() + transport.rbuf.len()
                );
            }
            assert_eq!(frames, 32);
        }
    }

    /// Counts the write calls; takes every byte (vectored).
    struct CountingWrites<T> {
        io: T,
        writes: usize,
    }

    impl<T: AsyncRead + Unpin> AsyncRead for CountingWrites<T> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl<T: AsyncWrite + Unpin> AsyncWrite for CountingWrites<T> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes += 1;
            Pin::new(&mut self.io).poll_write(cx, buf)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.writes += 1;
            Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// A wake-up's answers (small frames packed, large payloads as their
    /// own slices) go out in one vectored write when the transport takes
    /// them all.
    #[tokio::test]
    async fn a_round_of_answers_is_one_vectored_write() {
        let (_peer, io) = tokio::io::duplex(1024);
        let mut transport = ByteStream::new(CountingWrites { io, writes: 0 }, FrameCodec::new());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut queued = 0;
        for id in 0..40u32 {
            let size = if id % 8 == 0 { 20_000 } else { 1024 };
            let frame = Frame::data(vec![1u8; size]).with_request_id(id);
            queued += frame.wire_len();
            transport.queue(frame).unwrap_or_else(|e| panic!("{e}"));
        }
        let mut slices = [IoSlice::new(&[]); WriteBuf::MAX_IOVECS];
        assert!(
            transport.wbuf.chunks_vectored(&mut slices) > 1,
            "several slices"
        );
        assert!(transport.poll_write(&mut cx).is_ready());
        assert_eq!(transport.take_written(), queued);
        assert_eq!(transport.io.writes, 1, "more than one write for one round");
    }

    /// A stream whose reads are not answered in the same round (a client
    /// reading answers, a slow handler) starts no write buffer when it
    /// reads: one read left unanswered clears the hint, and a write that
    /// answers no read sets none.
    #[tokio::test]
    async fn reads_not_answered_at_once_start_no_write_buffer() {
        let (mut peer, io) = tokio::io::duplex(1 << 20);
        let mut transport = ByteStream::new(io, FrameCodec::new());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut drain = vec![0u8; 1 << 16];
        // Answered in the same round: the next read starts a buffer.
        peer.write_all(&encoded([Frame::data(vec![1u8; 1024])]))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for frame in read_all(&mut transport) {
            transport.queue(frame).unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(transport.poll_write(&mut cx).is_ready());
        let n = tokio::io::AsyncReadExt::read(&mut peer, &mut drain)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n, encoded([Frame::data(vec![1u8; 1024])]).len());
        peer.write_all(&encoded([Frame::data(vec![2u8; 1024])]))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let unanswered = read_all(&mut transport);
        assert!(transport.wbuf.capacity() > 0, "started for the answers");
        // Not answered in this round: released, and the hint cleared.
        assert!(transport.poll_write(&mut cx).is_ready());
        assert_eq!(transport.wbuf.capacity(), 0);
        peer.write_all(&encoded([Frame::data(vec![3u8; 1024])]))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let more = read_all(&mut transport);
        assert_eq!(transport.wbuf.capacity(), 0, "a buffer started for nothing");
        assert!(transport.poll_write(&mut cx).is_ready());
        // Written later, in a round that read nothing: still no hint.
        for frame in unanswered.into_iter().chain(more) {
            transport.queue(frame).unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(transport.poll_write(&mut cx).is_ready());
        peer.write_all(&encoded([Frame::data(vec![4u8; 1024])]))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = read_all(&mut transport);
        assert_eq!(transport.wbuf.capacity(), 0, "a buffer started for nothing");
    }

    /// Through the transport's read path too, a frame trickled in one byte
    /// at a time holds at most 64 KiB (plus one read chunk) ahead of what
    /// arrived, and is read whole (issue 7, item 10).
    #[tokio::test]
    async fn a_trickled_frame_does_not_grow_the_read_buffer_per_read() {
        let (mut peer, io) = tokio::io::duplex(1 << 20);
        let mut transport = ByteStream::new(io, FrameCodec::new());
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut wire = BytesMut::new();
        msgi_proto::Framing::encode(
            &mut FrameCodec::new(),
            Frame::data(vec![9u8; 100_000]),
            &mut wire,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let (header, body) = wire.split_at(10);
        peer.write_all(header)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(transport.poll_frame(&mut cx).is_pending());
        for (i, byte) in body.iter().enumerate() {
            peer.write_all(&[*byte])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            match transport.poll_frame(&mut cx) {
                Poll::Pending => {}
                Poll::Ready(Ok(Some(frame))) => {
                    assert_eq!(i, body.len() - 1);
                    assert_eq!(frame.payload().len(), 100_000);
                    return;
                }
                other => panic!("{other:?}"),
            }
            let received = transport.rbuf.len();
            assert_eq!(received, 11 + i);
            let bound = received + RESERVE_AHEAD.max(received) + READ_CHUNK;
            assert!(
                transport.rbuf.capacity() <= bound,
                "{received} bytes received, capacity {}",
                transport.rbuf.capacity()
            );
        }
        panic!("the frame was never read");
    }
}
