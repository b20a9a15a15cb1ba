//! [`ReadAhead`]: the transport under rustls, read in large chunks.
//!
//! rustls reads its input at most 4 KiB at a time (its deframer buffer
//! grows by `READ_SIZE` = 4096 per read), so a TLS session under load made
//! one `read` system call per 4 KiB where a plain session makes one per
//! 64 KiB (msgi's `ByteStream`): eight or more for a burst of 32 answers of 1 KiB.
//! `ReadAhead` reads up to [`READ_AHEAD`] bytes from the transport in one
//! call and hands them to rustls from memory. The buffer is dropped as soon
//! as a read would block with nothing buffered, so an idle session keeps
//! nothing.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most bytes [`ReadAhead`] reads from its transport in one call (the
/// same as a plain session's read).
pub const READ_AHEAD: usize = 64 * 1024;

/// A byte stream whose reads are made [`READ_AHEAD`] bytes at a time into a
/// buffer of its own, however little each caller asks for; writes go
/// straight through (vectored writes too). What [`TlsAcceptor`](crate::TlsAcceptor)
/// and [`TlsConnector`](crate::TlsConnector) put under rustls.
#[derive(Debug)]
pub struct ReadAhead<T> {
    io: T,
    buf: BytesMut,
}

impl<T> ReadAhead<T> {
    /// Wraps `io`; allocates nothing until the first read.
    pub fn new(io: T) -> ReadAhead<T> {
        ReadAhead {
            io,
            buf: BytesMut::new(),
        }
    }

    /// The transport.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// The transport, mutably (reading from it directly skips what is
    /// buffered).
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.io
    }

    /// Bytes read from the transport and not yet handed on.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            if out.remaining() >= READ_AHEAD {
                // As large as a chunk: no need to go through the buffer.
                this.buf = BytesMut::new();
                return Pin::new(&mut this.io).poll_read(cx, out);
            }
            this.buf.clear();
            this.buf.reserve(READ_AHEAD);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.buf) {
                Poll::Pending => {
                    // Nothing to read: an idle session keeps no buffer.
                    this.buf = BytesMut::new();
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // End of stream: `out` stays empty.
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(_)) => {}
            }
        }
        let n = out.remaining().min(this.buf.len());
        out.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadAhead<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Counts the reads that reach the transport.
    struct Counted<T> {
        io: T,
        reads: usize,
    }

    impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = &mut *self;
            let polled = Pin::new(&mut this.io).poll_read(cx, out);
            if polled.is_ready() {
                this.reads += 1;
            }
            polled
        }
    }

    #[tokio::test]
    async fn small_reads_are_served_from_one_large_read_and_an_idle_stream_keeps_no_buffer() {
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let sent: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        tx.write_all(&sent).await.unwrap();
        let mut ahead = ReadAhead::new(Counted { io: rx, reads: 0 });
        let mut got = vec![0u8; sent.len()];
        // rustls asks 4 KiB at a time; so do we.
        for chunk in got.chunks_mut(4096) {
            ahead.read_exact(chunk).await.unwrap();
        }
        assert_eq!(got, sent);
        assert_eq!(ahead.get_ref().reads, 1, "one read of the transport");
        assert_eq!(ahead.buffered(), 0);
        // Nothing more to read: the read blocks and the buffer is freed.
        let mut one = [0u8; 1];
        let blocked = std::future::poll_fn(|cx| {
            let mut out = ReadBuf::new(&mut one);
            Poll::Ready(Pin::new(&mut ahead).poll_read(cx, &mut out).is_pending())
        })
        .await;
        assert!(blocked, "nothing was sent");
        assert_eq!(ahead.buf.capacity(), 0, "an idle stream holds no buffer");
        // Then the end of the stream reads as such.
        drop(tx);
        assert_eq!(ahead.read(&mut one).await.unwrap(), 0);
    }
}
