//! Helpers shared by the socket tests: a server on 127.0.0.1:0 and a raw
//! peer that speaks bytes, so the tests see exactly what is on the wire.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use msgi::{CloseReason, Frame, FrameCodec, Framing, Registry, ServerBuilder, Session, SessionId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Every wait in the tests is bounded by this.
pub const LIMIT: Duration = Duration::from_secs(20);

/// Awaits `fut`, failing the test if it takes longer than [`LIMIT`].
pub async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, fut)
        .await
        .expect("test step timed out")
}

/// A running server and what the tests need to observe it.
pub struct TestServer {
    pub addr: SocketAddr,
    pub registry: Registry,
    /// Every session end, as (session id, reason), from the disconnect hook.
    pub ended: mpsc::UnboundedReceiver<(SessionId, CloseReason)>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// Starts `builder` on 127.0.0.1:0 serving `service`.
pub async fn serve<C, S>(builder: ServerBuilder<C>, service: S) -> TestServer
where
    C: Framing + Clone,
    S: tower::Service<Frame, Response = Option<Frame>> + Clone + Send + 'static,
    S::Error: Into<msgi::BoxError>,
    S::Future: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ended_tx, ended) = mpsc::unbounded_channel();
    let server = builder
        .on_disconnect(move |s: &Session, r: &CloseReason| {
            let _ = ended_tx.send((s.id(), r.clone()));
        })
        .build()
        .expect("valid settings");
    let registry = server.registry();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve_with_shutdown(listener, service, async {
        let _ = rx.await;
    }));
    TestServer {
        addr,
        registry,
        ended,
        shutdown: Some(tx),
        task: Some(task),
    }
}

impl TestServer {
    /// Starts the graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Shuts down and waits until `serve` has returned.
    pub async fn shutdown(&mut self) {
        self.begin_shutdown();
        if let Some(task) = self.task.take() {
            within(task).await.unwrap().unwrap();
        }
    }

    /// The next session end reported by the disconnect hook.
    pub async fn next_end(&mut self) -> (SessionId, CloseReason) {
        within(self.ended.recv()).await.expect("server gone")
    }
}

/// An echo service: answers every delivered frame with itself.
pub fn echo() -> impl tower::Service<
    Frame,
    Response = Option<Frame>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<Option<Frame>, std::convert::Infallible>> + Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(|frame: Frame| async move {
        let mut answer =
            Frame::new(frame.kind(), frame.payload().clone()).with_flags(frame.flags());
        answer.set_request_id(frame.request_id());
        Ok(Some(answer))
    })
}

/// A peer that reads and writes raw bytes, framing them with `C` (the
/// plain MSGI codec unless a test stacks transforms on it).
pub struct RawPeer<C = FrameCodec> {
    pub stream: TcpStream,
    buf: BytesMut,
    pub codec: C,
}

impl RawPeer {
    pub async fn connect(addr: SocketAddr) -> RawPeer {
        RawPeer::connect_with(addr, FrameCodec::new()).await
    }
}

impl<C: Framing> RawPeer<C> {
    pub async fn connect_with(addr: SocketAddr, mut codec: C) -> RawPeer<C> {
        let stream = within(TcpStream::connect(addr)).await.unwrap();
        stream.set_nodelay(true).unwrap();
        codec.start_session(msgi::Side::Client);
        RawPeer {
            stream,
            buf: BytesMut::new(),
            codec,
        }
    }

    /// The bytes `frame` becomes on the wire under this peer's framing.
    pub fn encode(&mut self, frame: Frame) -> BytesMut {
        let mut out = BytesMut::new();
        self.codec.encode(frame, &mut out).unwrap();
        out
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    pub async fn send(&mut self, frame: Frame) {
        let out = self.encode(frame);
        self.write(&out).await;
    }

    /// The next frame, or `None` if the server closed the connection.
    pub async fn recv(&mut self) -> Option<Frame> {
        within(async {
            loop {
                if let Some(frame) = self
                    .codec
                    .decode(&mut self.buf)
                    .expect("server sent a bad frame")
                {
                    return Some(frame);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
    }

    /// The next frame that is not a HEARTBEAT.
    pub async fn recv_skip_heartbeats(&mut self) -> Option<Frame> {
        loop {
            let frame = self.recv().await?;
            if frame.kind() != msgi::Kind::HEARTBEAT {
                return Some(frame);
            }
        }
    }

    /// Waits until the server closes the connection; returns the bytes read
    /// after any complete frames.
    pub async fn expect_closed(&mut self) {
        if let Some(frame) = self.recv().await {
            panic!("expected the connection to close, got {frame:?}");
        }
    }

    /// Raw bytes until the server closes the connection.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut out = self.buf.split().to_vec();
        within(self.stream.read_to_end(&mut out)).await.ok();
        out
    }
}
