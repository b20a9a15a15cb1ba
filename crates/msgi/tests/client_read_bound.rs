//! The client task reads at most 64 frames per wake-up before it drains the
//! events they made and encodes the replies they owe (docs/ARCHITECTURE.md,
//! "the client's read bound"), over a real loopback socket.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures_util::task::AtomicWaker;
use msgi::{Client, Frame, FrameCodec, Framing, Kind};
use support::within;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// A TCP stream whose reads wait for a gate, and which records the size
/// of every write the client makes.
struct Recording {
    inner: TcpStream,
    open: Arc<AtomicBool>,
    waker: Arc<AtomicWaker>,
    writes: Arc<Mutex<Vec<usize>>>,
}

impl AsyncRead for Recording {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.waker.register(cx.waker());
        if !self.open.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Recording {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &written {
            self.writes.lock().unwrap().push(*n);
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &written {
            self.writes.lock().unwrap().push(*n);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn the_client_reads_at_most_64_frames_before_answering_them() {
    const PINGS: usize = 1000;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(AtomicBool::new(true));
    let waker = Arc::new(AtomicWaker::new());
    let writes = Arc::new(Mutex::new(Vec::new()));
    let (o, w, r) = (open.clone(), waker.clone(), writes.clone());
    let connecting = tokio::spawn(within(Client::builder().connect_with(move || {
        let (open, waker, writes) = (o.clone(), w.clone(), r.clone());
        Box::pin(async move {
            let inner = TcpStream::connect(addr).await?;
            Ok(Recording {
                inner,
                open,
                waker,
                writes,
            })
        }) as Pin<Box<dyn std::future::Future<Output = std::io::Result<Recording>> + Send>>
    })));
    let (mut server, _) = within(listener.accept()).await.unwrap();
    let client = within(connecting).await.unwrap().unwrap();

    // The client reads nothing until every PING is in its socket.
    open.store(false, Ordering::Release);
    let mut codec = FrameCodec::new();
    let mut flood = BytesMut::new();
    for _ in 0..PINGS {
        codec.encode(Frame::ping(""), &mut flood).unwrap();
    }
    within(server.write_all(&flood)).await.unwrap();
    writes.lock().unwrap().clear();
    open.store(true, Ordering::Release);
    waker.wake();

    // Every PING is answered...
    let pong = Frame::ping("").wire_len();
    let mut got = BytesMut::new();
    while got.len() < PINGS * pong {
        let mut chunk = [0u8; 4096];
        let n = within(server.read(&mut chunk)).await.unwrap();
        assert!(n > 0, "the client closed");
        got.extend_from_slice(&chunk[..n]);
    }
    let mut pongs = 0;
    while let Some(frame) = codec.decode(&mut got).unwrap() {
        assert_eq!(frame.kind(), Kind::PONG);
        pongs += 1;
    }
    assert_eq!(pongs, PINGS);
    // ... and no write carried the answers to more than 64 of them: the
    // task answered each batch of 64 before it read on.
    let writes = writes.lock().unwrap().clone();
    assert!(writes.len() >= PINGS / 64, "{writes:?}");
    assert!(
        writes.iter().all(|&n| n <= 64 * pong),
        "a write of more than 64 PONGs: {writes:?}"
    );
    drop(client);
}
