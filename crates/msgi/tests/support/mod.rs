//! Helpers shared by the socket tests: a server on 127.0.0.1:0 and a raw
//! peer that speaks bytes, so the tests see exactly what is on the wire;
//! and a server on in-memory pipes, for tests on paused time.
#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use msgi::{
    CloseReason, ConnectInfo, Frame, FrameCodec, Framing, Listener, MakeFraming, Registry,
    ServerBuilder, Session, SessionId,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
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
    /// Where it listens; `0.0.0.0:0` for a server on pipes (see
    /// [`serve_pipes`]), which has no address.
    pub addr: SocketAddr,
    pub registry: Registry,
    /// Every session end, as (session id, reason), from the disconnect hook.
    pub ended: mpsc::UnboundedReceiver<(SessionId, CloseReason)>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// Starts `builder` on 127.0.0.1:0 serving `service`.
pub async fn serve<C, A, Io, S>(builder: ServerBuilder<C, A>, service: S) -> TestServer
where
    C: MakeFraming,
    A: tower::Service<msgi::Accepted<TcpStream>, Response = msgi::Accepted<Io>> + Send + 'static,
    A::Error: Into<msgi::BoxError>,
    A::Future: Send + 'static,
    Io: msgi::IntoTransport<C::Framing>,
    S: tower::Service<Frame, Response = Option<Frame>> + Clone + Send + 'static,
    S::Error: Into<msgi::BoxError>,
    S::Future: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    start(builder, listener, addr, service)
}

/// Starts `builder` on in-memory pipes serving `service`; connect to it
/// with [`dial`]. Nothing crosses the OS, so on paused time the clock
/// only moves when every task waits for a timer, never while bytes are on
/// their way (as they can be over loopback on a busy machine).
pub fn serve_pipes<C, S>(
    builder: ServerBuilder<C>,
    service: S,
) -> (TestServer, mpsc::UnboundedSender<DuplexStream>)
where
    C: MakeFraming,
    S: tower::Service<Frame, Response = Option<Frame>> + Clone + Send + 'static,
    S::Error: Into<msgi::BoxError>,
    S::Future: Send + 'static,
{
    let (pipes, tx) = Pipes::new(Vec::new());
    let addr = SocketAddr::from(([0, 0, 0, 0], 0));
    (start(builder, pipes, addr, service), tx)
}

fn start<C, A, Io, L, S>(
    builder: ServerBuilder<C, A>,
    listener: L,
    addr: SocketAddr,
    service: S,
) -> TestServer
where
    C: MakeFraming,
    L: Listener,
    A: tower::Service<msgi::Accepted<L::Io>, Response = msgi::Accepted<Io>> + Send + 'static,
    A::Error: Into<msgi::BoxError>,
    A::Future: Send + 'static,
    Io: msgi::IntoTransport<C::Framing>,
    S: tower::Service<Frame, Response = Option<Frame>> + Clone + Send + 'static,
    S::Error: Into<msgi::BoxError>,
    S::Future: Send + 'static,
{
    let (ended_tx, ended) = mpsc::unbounded_channel();
    let server = builder
        .on_disconnect(move |s: &Session, r: &CloseReason| {
            let _ = ended_tx.send((s.id(), r.clone()));
        })
        .build()
        .expect("valid settings");
    let registry = server.registry();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(
        server
            .serve(listener, service)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            }),
    );
    TestServer {
        addr,
        registry,
        ended,
        shutdown: Some(tx),
        task: Some(task),
    }
}

/// A listener over in-memory pipes; once its sender is gone it reports
/// itself gone (`NotConnected`), after any scripted errors.
pub struct Pipes {
    conns: mpsc::UnboundedReceiver<DuplexStream>,
    /// Errors returned, in order, before any connection.
    script: VecDeque<io::Error>,
    /// Every `accept` call.
    pub calls: Arc<AtomicUsize>,
}

impl Pipes {
    pub fn new(script: Vec<io::Error>) -> (Pipes, mpsc::UnboundedSender<DuplexStream>) {
        let (tx, conns) = mpsc::unbounded_channel();
        let pipes = Pipes {
            conns,
            script: script.into(),
            calls: Arc::new(AtomicUsize::new(0)),
        };
        (pipes, tx)
    }
}

impl Listener for Pipes {
    type Io = DuplexStream;

    async fn accept(&mut self) -> io::Result<(DuplexStream, ConnectInfo)> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(e) = self.script.pop_front() {
            return Err(e);
        }
        match self.conns.recv().await {
            Some(io) => Ok((io, ConnectInfo::new())),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

/// Connects a new in-memory peer to the server on `pipes`.
pub fn dial(pipes: &mpsc::UnboundedSender<DuplexStream>) -> DuplexStream {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    pipes.send(theirs).unwrap();
    ours
}

/// A raw peer on in-memory pipes (see [`serve_pipes`]): for tests on
/// paused time.
pub struct PipePeer {
    pub io: DuplexStream,
    buf: BytesMut,
}

impl PipePeer {
    pub fn dial(pipes: &mpsc::UnboundedSender<DuplexStream>) -> PipePeer {
        PipePeer {
            io: dial(pipes),
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, frame: Frame) {
        write_frame(&mut self.io, frame).await;
    }

    /// The next frame that is not a HEARTBEAT, or `None` at EOF.
    pub async fn recv(&mut self) -> Option<Frame> {
        within(async {
            loop {
                let frame = read_frame(&mut self.io, &mut self.buf).await?;
                if frame.kind() != msgi::Kind::HEARTBEAT {
                    return Some(frame);
                }
            }
        })
        .await
    }

    /// HELLO `client_id`, and its WELCOME.
    pub async fn hello(pipes: &mpsc::UnboundedSender<DuplexStream>, client_id: &str) -> PipePeer {
        let mut peer = PipePeer::dial(pipes);
        peer.send(Frame::control(format!("HELLO {client_id}")).with_request_id(1))
            .await;
        let welcome = peer.recv().await.expect("WELCOME");
        assert!(welcome.payload_text().starts_with("WELCOME"), "{welcome:?}");
        peer
    }

    /// Sends `request` correlated and returns the answer's text.
    pub async fn ask(&mut self, request: &str, id: u32) -> String {
        self.send(Frame::control(request.to_owned()).with_request_id(id))
            .await;
        let answer = self.recv().await.expect("an answer");
        assert_eq!(answer.request_id(), Some(id), "{answer:?}");
        answer.payload_text().into_owned()
    }
}

/// The next frame from `io`, or `None` at EOF.
pub async fn read_frame(io: &mut (impl AsyncRead + Unpin), buf: &mut BytesMut) -> Option<Frame> {
    let mut codec = FrameCodec::new();
    loop {
        if let Some(frame) = codec.decode(buf).unwrap() {
            return Some(frame);
        }
        if io.read_buf(buf).await.unwrap() == 0 {
            return None;
        }
    }
}

/// Writes `frame` to `io`.
pub async fn write_frame(io: &mut (impl AsyncWrite + Unpin), frame: Frame) {
    let mut out = BytesMut::new();
    FrameCodec::new().encode(frame, &mut out).unwrap();
    io.write_all(&out).await.unwrap();
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
    /// Connects with `codec`: one connection's framing (for a wire stack,
    /// `wire.make_framing(Side::Client)`).
    pub async fn connect_with(addr: SocketAddr, codec: C) -> RawPeer<C> {
        let stream = within(TcpStream::connect(addr)).await.unwrap();
        stream.set_nodelay(true).unwrap();
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

/// A runtime with one worker thread: a test's server or client side of its
/// own, which the test can drop at once as a crash.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// A port on 127.0.0.1 kept for a test's servers while they stop and
/// start again on it (one address for a reconnecting client), never
/// released until the test drops it: no other program can take it between
/// a server's stop and the next one's start.
///
/// How (Linux, socket(7)): it holds a socket bound with `SO_REUSEADDR` that
/// never listens. A server's listener also sets `SO_REUSEADDR` (std's and
/// tokio's do on Unix), and such a socket may bind a port unless another
/// socket listens on it: each server in turn binds and listens. Meanwhile
/// the kernel never hands the port to an outgoing connection or to a
/// `bind` to port 0 (it is bound), and refuses it to a `bind` without
/// `SO_REUSEADDR`. Elsewhere (BSD semantics would refuse the servers too)
/// the port is probed and released, and another program could take it in
/// between.
pub struct Port {
    addr: SocketAddr,
    _held: Option<tokio::net::TcpSocket>,
}

impl Port {
    pub fn reserve() -> Port {
        if cfg!(target_os = "linux") {
            let held = tokio::net::TcpSocket::new_v4().unwrap();
            held.set_reuseaddr(true).unwrap();
            held.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
            let addr = held.local_addr().unwrap();
            return Port {
                addr,
                _held: Some(held),
            };
        }
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        Port { addr, _held: None }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A server in a runtime of its own on a [`Port`]: killed (its runtime
/// dropped, every task and socket at once, as in a crash) or shut down
/// gracefully, then started again on the same port.
pub struct Node {
    rt: tokio::runtime::Runtime,
    stop: oneshot::Sender<()>,
    done: JoinHandle<io::Result<()>>,
}

impl Node {
    /// A default server on `port` serving `service`.
    pub fn start<S>(port: &Port, service: S) -> Node
    where
        S: tower::Service<Frame, Response = Option<Frame>> + Clone + Send + 'static,
        S::Error: Into<msgi::BoxError>,
        S::Future: Send + 'static,
    {
        let rt = runtime();
        // SO_REUSEADDR (std sets it on Unix): binds the port `port` holds.
        let listener = std::net::TcpListener::bind(port.addr()).unwrap();
        listener.set_nonblocking(true).unwrap();
        let listener = {
            let _entered = rt.enter();
            TcpListener::from_std(listener).unwrap()
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let done = rt.spawn(
            msgi::Server::builder()
                .build()
                .unwrap()
                .serve(listener, service)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                }),
        );
        Node { rt, stop, done }
    }

    /// Drops the runtime: every task and socket goes at once, as in a
    /// crash (what lives outside it, such as a store, stays).
    pub fn kill(self) {
        // The signal outlives the runtime: no graceful shutdown starts.
        let Node { rt, stop, done } = self;
        rt.shutdown_timeout(Duration::from_secs(5));
        drop((stop, done));
    }

    /// A graceful shutdown, awaited on `client_rt`.
    pub fn shutdown(self, client_rt: &tokio::runtime::Runtime) {
        let _ = self.stop.send(());
        client_rt.block_on(within(self.done)).unwrap().unwrap();
        self.rt.shutdown_timeout(Duration::from_secs(5));
    }
}
