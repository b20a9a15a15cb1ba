//! The server's own settings and limits over real loopback sockets: the
//! framing's maximum frame size, shutdown bounds, accept errors, per-address
//! connection limits.

#![allow(clippy::unwrap_used)]

mod support;

use std::convert::Infallible;
use std::future::Ready;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use msgi::Framing as _;
use msgi::{
    CloseReason, ConnectInfo, Frame, FrameCodec, Kind, LineCodec, Listener, SendError, Server,
    Session,
};
use support::{dial, echo, read_frame, serve, within, write_frame, Pipes, RawPeer, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

#[tokio::test]
async fn a_framings_own_max_frame_size_is_served() {
    // Before, `build()` overwrote the codec's 64 with the builder's 1 MiB.
    let builder = Server::builder().framing(FrameCodec::with_max_frame_size(64));
    let mut server = serve(builder, echo()).await;
    let mut peer = RawPeer::connect(server.addr).await;
    peer.send(Frame::data(vec![1u8; 54])).await; // exactly 64 bytes: fine
    let answer = peer.recv_skip_heartbeats().await.unwrap();
    assert_eq!(answer.payload().len(), 54);
    peer.send(Frame::data(vec![1u8; 55])).await; // 65 bytes
    let err = peer.recv_skip_heartbeats().await.unwrap();
    assert_eq!(err.kind(), msgi::Kind::ERROR);
    assert!(
        err.payload_text().starts_with("frame too large (max 64)"),
        "{}",
        err.payload_text()
    );
    peer.expect_closed().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_line_codecs_own_max_line_is_served() {
    let builder = Server::builder().framing(LineCodec::with_max_line(80));
    let mut server = serve(builder, echo()).await;
    let mut peer = RawPeer::connect_with(server.addr, LineCodec::new()).await;
    let mut line = vec![b'a'; 80];
    line.push(b'\n');
    peer.write(&line).await;
    assert_eq!(peer.recv().await.unwrap().payload().len(), 80);
    let mut long = vec![b'b'; 81];
    long.push(b'\n');
    peer.stream.write_all(&long).await.unwrap();
    let err = peer.recv().await.unwrap();
    assert_eq!(err.kind(), msgi::Kind::DATA);
    assert!(
        err.payload_text()
            .starts_with("ERROR line too long (max 80)"),
        "{}",
        err.payload_text()
    );
    peer.expect_closed().await;
    server.shutdown().await;
}

// ---- in-memory connections, for tests on paused time ----

/// A service that answers nothing; only its type matters here.
#[derive(Clone)]
struct Nothing;

impl tower::Service<Frame> for Nothing {
    type Response = Option<Frame>;
    type Error = Infallible;
    type Future = Ready<Result<Option<Frame>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _frame: Frame) -> Self::Future {
        std::future::ready(Ok(None))
    }
}

/// A make-service that is never ready; says so the first time it is asked.
#[derive(Clone)]
struct NeverReady(Arc<Notify>);

impl tower::Service<Session> for NeverReady {
    type Response = Nothing;
    type Error = Infallible;
    type Future = Ready<Result<Nothing, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.notify_one();
        Poll::Pending
    }

    fn call(&mut self, _session: Session) -> Self::Future {
        std::future::ready(Ok(Nothing))
    }
}

const DRAIN: Duration = Duration::from_millis(500);

/// A little beyond the drain deadline: the peers in these tests never close
/// their end, so the server's farewell waits for them until the deadline.
const DRAIN_AND_A_TICK: Duration = Duration::from_millis(501);

#[tokio::test(start_paused = true)]
async fn shutdown_is_bounded_when_the_make_service_is_never_ready() {
    let (pipes, tx) = Pipes::new(Vec::new());
    let asked = Arc::new(Notify::new());
    let server = Server::builder()
        .drain_timeout(DRAIN)
        .build()
        .expect("valid settings");
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(
        server
            .serve(pipes, msgi::PerSession(NeverReady(asked.clone())))
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            }),
    );
    let mut peer = dial(&tx);
    asked.notified().await; // the accept loop waits for the make-service
    let start = Instant::now();
    stop.send(()).unwrap();
    // Before, the accept loop awaited poll_ready without racing shutdown:
    // serve never returned.
    let served = tokio::time::timeout(DRAIN_AND_A_TICK, serving).await;
    assert!(served.is_ok(), "shutdown outlived the drain deadline");
    served.unwrap().unwrap().unwrap();
    assert!(start.elapsed() <= DRAIN);
    let mut buf = BytesMut::new();
    let bye = read_frame(&mut peer, &mut buf).await.unwrap();
    assert_eq!(bye.kind(), Kind::DISCONNECT);
    assert_eq!(bye.payload_text(), "server shutdown");
}

/// A server whose make-service never finishes making a service; `connected`
/// is told of each session (the hook runs while its service is being made).
fn never_making(
    connected: mpsc::UnboundedSender<Session>,
    ended: mpsc::UnboundedSender<CloseReason>,
) -> Server {
    Server::builder()
        .drain_timeout(DRAIN)
        .on_connect(move |s| {
            let _ = connected.send(s.clone());
        })
        .on_disconnect(move |_, r| {
            let _ = ended.send(r.clone());
        })
        .build()
        .expect("valid settings")
}

fn pending_make() -> impl tower::Service<
    Session,
    Response = Nothing,
    Error = Infallible,
    Future = std::future::Pending<Result<Nothing, Infallible>>,
> + Clone
       + Send {
    tower::service_fn(|_: Session| std::future::pending::<Result<Nothing, Infallible>>())
}

#[tokio::test(start_paused = true)]
async fn shutdown_is_bounded_when_the_make_service_never_resolves() {
    let (pipes, tx) = Pipes::new(Vec::new());
    let (connected_tx, mut connected) = mpsc::unbounded_channel();
    let (ended_tx, mut ended) = mpsc::unbounded_channel();
    let server = never_making(connected_tx, ended_tx);
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(
        server
            .serve(pipes, msgi::PerSession(pending_make()))
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            }),
    );
    let mut peer = dial(&tx);
    // Sent before the service exists: never read, never answered.
    write_frame(&mut peer, Frame::data("early").with_request_id(1)).await;
    connected.recv().await.unwrap();
    let start = Instant::now();
    stop.send(()).unwrap();
    // Before, `SessionTask::Making` was not told to close: serve never returned.
    let served = tokio::time::timeout(DRAIN_AND_A_TICK, serving).await;
    assert!(served.is_ok(), "shutdown outlived the drain deadline");
    served.unwrap().unwrap().unwrap();
    assert!(start.elapsed() <= DRAIN);
    let mut buf = BytesMut::new();
    let bye = read_frame(&mut peer, &mut buf).await.unwrap();
    assert_eq!(bye.kind(), Kind::DISCONNECT);
    assert_eq!(bye.payload_text(), "server shutdown");
    assert!(
        read_frame(&mut peer, &mut buf).await.is_none(),
        "closed after it"
    );
    assert_eq!(ended.recv().await.unwrap(), CloseReason::ServerShutdown);
}

#[tokio::test(start_paused = true)]
async fn a_session_closed_while_its_service_is_made_is_closed() {
    let (pipes, tx) = Pipes::new(Vec::new());
    let (connected_tx, mut connected) = mpsc::unbounded_channel();
    let (ended_tx, mut ended) = mpsc::unbounded_channel();
    let server = never_making(connected_tx, ended_tx);
    let registry = server.registry();
    let (_stop, stopped) = oneshot::channel::<()>();
    let _serving = tokio::spawn(
        server
            .serve(pipes, msgi::PerSession(pending_make()))
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            }),
    );
    let mut peer = dial(&tx);
    let session = connected.recv().await.unwrap();
    assert!(registry.disconnect(session.id(), "maintenance"));
    let mut buf = BytesMut::new();
    let bye = tokio::time::timeout(DRAIN_AND_A_TICK, read_frame(&mut peer, &mut buf))
        .await
        .expect("closed within the drain deadline")
        .unwrap();
    assert_eq!(bye.kind(), Kind::DISCONNECT);
    assert_eq!(bye.payload_text(), "maintenance");
    drop(peer);
    assert_eq!(
        ended.recv().await.unwrap(),
        CloseReason::Closed("maintenance".into())
    );
    assert_eq!(registry.connection_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_slow_consumer_closed_while_its_service_is_made_gets_nothing() {
    let (pipes, tx) = Pipes::new(Vec::new());
    let (ended_tx, mut ended) = mpsc::unbounded_channel();
    let server = Server::builder()
        .outbox_capacity(1)
        .on_connect(|s| {
            for _ in 0..2 {
                let _ = s.send(Frame::data("welcome"));
            }
        })
        .on_disconnect(move |_, r| {
            let _ = ended_tx.send(r.clone());
        })
        .build()
        .expect("valid settings");
    let (_stop, stopped) = oneshot::channel::<()>();
    let _serving = tokio::spawn(
        server
            .serve(pipes, msgi::PerSession(pending_make()))
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            }),
    );
    let mut peer = dial(&tx);
    assert_eq!(ended.recv().await.unwrap(), CloseReason::SlowConsumer);
    let mut buf = BytesMut::new();
    assert!(read_frame(&mut peer, &mut buf).await.is_none());
}

// ---- accept errors ----

/// Serves on `pipes` (which fails its first accepts), connects, and
/// returns how much (paused) time passed until a PING was answered.
async fn time_to_serve_after(script: Vec<io::Error>) -> Duration {
    let errors = script.len();
    let (pipes, tx) = Pipes::new(script);
    let calls = pipes.calls.clone();
    let server = Server::builder().build().expect("valid settings");
    let start = Instant::now();
    let (_stop, stopped) = oneshot::channel::<()>();
    let _serving = tokio::spawn(server.serve(pipes, echo()).with_graceful_shutdown(async {
        let _ = stopped.await;
    }));
    let mut peer = dial(&tx);
    write_frame(&mut peer, Frame::ping("hi")).await;
    let mut buf = BytesMut::new();
    let pong = within(read_frame(&mut peer, &mut buf))
        .await
        .expect("served after the errors");
    assert_eq!(
        (pong.kind(), pong.payload_text()),
        (Kind::PONG, "hi".into())
    );
    // One call per error, one for the connection, one waiting: no spin.
    assert_eq!(calls.load(Ordering::SeqCst), errors + 2);
    start.elapsed()
}

/// Resource errors, and errors outside any list (EPROTO, ENETDOWN, EPERM
/// ended the server before), are retried after a back-off: the loop does
/// not spin on a lasting error.
#[cfg(unix)]
#[tokio::test(start_paused = true)]
async fn accept_errors_back_off_and_the_server_recovers() {
    let os = io::Error::from_raw_os_error;
    let script = vec![
        os(libc::EMFILE),
        os(libc::ENFILE),
        os(libc::ENOBUFS),
        os(libc::ENOMEM),
        os(libc::ENETDOWN),
        os(libc::EPERM),
        io::Error::other("a custom listener's trouble"),
    ];
    let errors = script.len();
    let elapsed = time_to_serve_after(script).await;
    // It waited 1, 2, 4, ... ms between them.
    let backoff = Duration::from_millis((1 << errors) - 1);
    assert!(elapsed >= backoff, "{elapsed:?}");
}

/// One connection's trouble (aborted or reset before it was accepted, a
/// custom listener's failed handshake) is retried at once: a peer that
/// keeps failing its connections must not make the next accept wait.
#[cfg(unix)]
#[tokio::test(start_paused = true)]
async fn connection_errors_are_retried_at_once() {
    let os = io::Error::from_raw_os_error;
    let mut script = vec![
        os(libc::ECONNABORTED),
        os(libc::EPROTO),
        os(libc::ECONNRESET),
        io::Error::new(io::ErrorKind::ConnectionAborted, "TLS handshake failed"),
        io::ErrorKind::ConnectionRefused.into(),
    ];
    // Many of them: with any back-off this would add up to seconds.
    for _ in 0..100 {
        script.push(io::ErrorKind::ConnectionReset.into());
    }
    let elapsed = time_to_serve_after(script).await;
    // Paused time: any back-off sleep would have moved the clock.
    assert_eq!(elapsed, Duration::ZERO);
}

#[cfg(unix)]
#[tokio::test(start_paused = true)]
async fn a_listener_that_is_gone_ends_serve() {
    let (pipes, _tx) = Pipes::new(vec![io::Error::from_raw_os_error(libc::EBADF)]);
    let calls = pipes.calls.clone();
    let server = Server::builder().build().expect("valid settings");
    let e = server
        .serve(pipes, echo())
        .await
        .expect_err("a bad descriptor ends serve");
    assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // What an in-memory listener says when its source has closed.
    let (pipes, tx) = Pipes::new(Vec::new());
    drop(tx);
    let server = Server::builder().build().expect("valid settings");
    let e = server.serve(pipes, echo()).await.expect_err("gone");
    assert_eq!(e.kind(), io::ErrorKind::NotConnected);
}

/// Counts failed accepts of a TCP listener, and says when one failed for
/// want of a descriptor.
#[cfg(unix)]
struct CountingListener {
    inner: tokio::net::TcpListener,
    errors: Arc<AtomicUsize>,
    out_of_descriptors: Arc<Notify>,
}

#[cfg(unix)]
impl Listener for CountingListener {
    type Io = tokio::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(tokio::net::TcpStream, ConnectInfo)> {
        let accepted = <tokio::net::TcpListener as Listener>::accept(&mut self.inner).await;
        if let Err(e) = &accepted {
            self.errors.fetch_add(1, Ordering::SeqCst);
            if e.raw_os_error() == Some(libc::EMFILE) {
                self.out_of_descriptors.notify_one();
            }
        }
        accepted
    }
}

/// Run by `accept_recovers_when_out_of_descriptors` in a child process
/// whose descriptor limit is 64 (`ulimit -n 64`), so that the limit does not
/// disturb the other tests.
#[cfg(unix)]
#[test]
#[ignore = "run under `ulimit -n 64` by accept_recovers_when_out_of_descriptors"]
fn out_of_descriptors_child() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let inner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = inner.local_addr().unwrap();
        let errors = Arc::new(AtomicUsize::new(0));
        let out_of_descriptors = Arc::new(Notify::new());
        let listener = CountingListener {
            inner,
            errors: errors.clone(),
            out_of_descriptors: out_of_descriptors.clone(),
        };
        let server = Server::builder().build().expect("valid settings");
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(
            server
                .serve(listener, echo())
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                }),
        );
        // Use up every descriptor (each connection costs one here and one
        // in the server), keeping one spare.
        let spare = std::fs::File::open("/dev/null").unwrap();
        let mut clients = Vec::new();
        loop {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(stream) => clients.push(stream),
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                    break;
                }
            }
            assert!(clients.len() < 1000, "the descriptor limit is not in force");
        }
        // The spare's descriptor goes to one more client (this task runs on
        // until the connect is under way), whose connection the server
        // cannot accept.
        drop(spare);
        clients.push(
            support::within(tokio::net::TcpStream::connect(addr))
                .await
                .unwrap(),
        );
        support::within(out_of_descriptors.notified()).await;
        // Descriptors come back: a new client is served.
        drop(clients);
        let mut peer = RawPeer::connect(addr).await;
        peer.send(Frame::ping("again")).await;
        let pong = peer.recv_skip_heartbeats().await.expect("served");
        assert_eq!(pong.payload_text(), "again");
        let failed = errors.load(Ordering::SeqCst);
        assert!(failed < 20, "accept failed {failed} times: it spins");
        drop(peer);
        stop.send(()).unwrap();
        support::within(serving).await.unwrap().unwrap();
    });
}

#[cfg(unix)]
#[tokio::test]
async fn accept_recovers_when_out_of_descriptors() {
    let exe = std::env::current_exe().unwrap();
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 64 && exec "$0" --exact out_of_descriptors_child --ignored --test-threads=1"#)
        .arg(exe)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = support::within(child.wait_with_output()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "{stdout}");
}

// ---- per-IP connection limit ----

#[tokio::test]
async fn one_address_cannot_take_every_slot() {
    let builder = Server::builder().max_connections_per_ip(Some(2));
    let mut server = serve(builder, echo()).await;
    let mut peers = Vec::new();
    for name in ["a", "b"] {
        let mut peer = RawPeer::connect(server.addr).await;
        peer.send(Frame::ping(name)).await;
        assert_eq!(peer.recv_skip_heartbeats().await.unwrap().payload(), name);
        peers.push(peer);
    }
    let mut third = RawPeer::connect(server.addr).await;
    let refused = third.recv().await.expect("an ERROR");
    assert_eq!(refused.kind(), Kind::ERROR);
    assert_eq!(
        refused.payload_text(),
        "too many connections from this address"
    );
    third.expect_closed().await;
    assert_eq!(server.registry.connection_count(), 2);

    // A session's end gives its place back.
    drop(peers.remove(0));
    let (_, why) = server.next_end().await;
    assert_eq!(why, CloseReason::PeerClosed);
    let mut next = RawPeer::connect(server.addr).await;
    next.send(Frame::ping("c")).await;
    assert_eq!(next.recv_skip_heartbeats().await.unwrap().payload(), "c");
    drop((peers, next));
    server.shutdown().await;
}

#[cfg(unix)]
#[tokio::test]
async fn unix_peers_are_not_limited_per_ip() {
    let dir = std::env::temp_dir().join(format!("msgi-per-ip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("msgi.sock");
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let server = Server::builder()
        .max_connections_per_ip(Some(1))
        .build()
        .expect("valid settings");
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(
        server
            .serve(listener, echo())
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            }),
    );
    let mut streams = Vec::new();
    for name in ["one", "two", "three"] {
        let mut stream = support::within(tokio::net::UnixStream::connect(&path))
            .await
            .unwrap();
        let mut out = BytesMut::new();
        FrameCodec::new()
            .encode(Frame::ping(name), &mut out)
            .unwrap();
        stream.write_all(&out).await.unwrap();
        let mut buf = BytesMut::new();
        let answer = support::within(async {
            loop {
                if let Some(f) = FrameCodec::new().decode(&mut buf).unwrap() {
                    return f;
                }
                assert!(stream.read_buf(&mut buf).await.unwrap() > 0, "closed");
            }
        })
        .await;
        assert_eq!(
            (answer.kind(), answer.payload_text()),
            (Kind::PONG, name.into())
        );
        streams.push(stream);
    }
    stop.send(()).unwrap();
    drop(streams);
    support::within(serving).await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- settings ----

#[tokio::test]
async fn huge_durations_mean_never_not_a_panic() {
    let builder = Server::builder()
        .idle_timeout(Some(Duration::MAX))
        .heartbeat_interval(Some(Duration::MAX))
        .handshake_timeout(Some(Duration::MAX))
        .drain_timeout(Duration::MAX);
    let mut server = serve(builder, echo()).await;
    let mut peer = RawPeer::connect(server.addr).await;
    peer.send(Frame::ping("still here")).await;
    assert_eq!(peer.recv().await.unwrap().payload(), "still here");
    server.begin_shutdown();
    let bye = peer.recv().await.expect("DISCONNECT");
    assert_eq!(
        (bye.kind(), bye.payload_text()),
        (Kind::DISCONNECT, "server shutdown".into())
    );
    drop(peer);
    let (_, why) = server.next_end().await;
    assert_eq!(why, CloseReason::ServerShutdown);
    server.shutdown().await;
}

// ---- how sessions close ----

/// The only session of `server`, once it is running (answered a PING).
async fn running_session(server: &TestServer, peer: &mut RawPeer) -> Session {
    peer.send(Frame::ping("")).await;
    assert_eq!(
        peer.recv_skip_heartbeats().await.unwrap().kind(),
        Kind::PONG
    );
    server.registry.sessions().pop().expect("one session")
}

#[tokio::test]
async fn a_full_outbox_during_a_graceful_close_ends_as_slow_consumer() {
    let mut server = serve(Server::builder().outbox_capacity(2), echo()).await;
    let mut peer = RawPeer::connect(server.addr).await;
    let session = running_session(&server, &mut peer).await;
    // No await in between: the session's task does not run meanwhile.
    assert!(session.close("bye"));
    assert_eq!(session.send(Frame::data("a")), Ok(()));
    assert_eq!(session.send(Frame::data("b")), Ok(()));
    assert_eq!(session.send(Frame::data("c")), Err(SendError::SlowConsumer));
    // Before, the graceful close kept the session going: this push was
    // taken and written after the lost "c".
    assert_eq!(session.send(Frame::data("d")), Err(SendError::Closed));
    let (_, why) = server.next_end().await;
    assert_eq!(why, CloseReason::SlowConsumer);
    while let Some(frame) = within(peer.recv()).await {
        assert_ne!(
            frame.payload_text(),
            "d",
            "a push taken after a refused one"
        );
    }
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_push_taken_while_the_service_is_made_is_written_on_a_graceful_close() {
    let (pipes, tx) = Pipes::new(Vec::new());
    let (ended_tx, mut ended) = mpsc::unbounded_channel();
    let (conn_tx, mut connected) = mpsc::unbounded_channel::<Session>();
    let server = Server::builder()
        .drain_timeout(DRAIN)
        .on_connect(move |s| {
            assert_eq!(s.send(Frame::data("welcome")), Ok(()));
            let _ = conn_tx.send(s.clone());
        })
        .on_disconnect(move |_, r| {
            let _ = ended_tx.send(r.clone());
        })
        .build()
        .expect("valid settings");
    let registry = server.registry();
    let (_stop, stopped) = oneshot::channel::<()>();
    let _serving = tokio::spawn(
        server
            .serve(pipes, msgi::PerSession(pending_make()))
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            }),
    );
    let mut peer = dial(&tx);
    let session = connected.recv().await.unwrap();
    assert!(registry.disconnect(session.id(), "maintenance"));
    // Taken before the session's task saw the close: written too.
    assert_eq!(session.send(Frame::data("news")), Ok(()));
    let mut buf = BytesMut::new();
    // Before, the peer got the DISCONNECT alone: both pushes were dropped.
    let first = read_frame(&mut peer, &mut buf).await.unwrap();
    assert_eq!(first, Frame::data("welcome"));
    let second = read_frame(&mut peer, &mut buf).await.unwrap();
    assert_eq!(second, Frame::data("news"));
    assert_eq!(session.send(Frame::data("late")), Err(SendError::Closed));
    let bye = read_frame(&mut peer, &mut buf).await.unwrap();
    assert_eq!(bye.kind(), Kind::DISCONNECT);
    assert_eq!(bye.payload_text(), "maintenance");
    assert!(read_frame(&mut peer, &mut buf).await.is_none());
    drop(peer);
    assert_eq!(
        ended.recv().await.unwrap(),
        CloseReason::Closed("maintenance".into())
    );
}

/// A server over `pipes` whose handler never answers; `called` hears of
/// every request handed to it, `connected` of every session, `ended` of
/// every close reason.
fn never_answering(
    pipes: Pipes,
    called: mpsc::UnboundedSender<()>,
    connected: mpsc::UnboundedSender<Session>,
    ended: mpsc::UnboundedSender<CloseReason>,
) -> tokio::task::JoinHandle<io::Result<()>> {
    let server = Server::builder()
        .drain_timeout(DRAIN)
        .on_connect(move |s| {
            let _ = connected.send(s.clone());
        })
        .on_disconnect(move |_, r| {
            let _ = ended.send(r.clone());
        })
        .build()
        .expect("valid settings");
    let make = tower::service_fn(move |_: Session| {
        let called = called.clone();
        std::future::ready(Ok::<_, Infallible>(tower::service_fn(move |_: Frame| {
            let _ = called.send(());
            std::future::pending::<Result<Option<Frame>, Infallible>>()
        })))
    });
    tokio::spawn(
        server
            .serve(pipes, msgi::PerSession(make))
            .with_graceful_shutdown(std::future::pending()),
    )
}

#[tokio::test(start_paused = true)]
async fn a_drain_cut_short_by_its_deadline_says_so() {
    let (pipes, tx) = Pipes::new(Vec::new());
    let (called_tx, mut called) = mpsc::unbounded_channel();
    let (conn_tx, mut connected) = mpsc::unbounded_channel();
    let (ended_tx, mut ended) = mpsc::unbounded_channel();
    let _serving = never_answering(pipes, called_tx, conn_tx, ended_tx);
    let mut peer = dial(&tx);
    let session = connected.recv().await.unwrap();
    write_frame(&mut peer, Frame::data("never answered").with_request_id(1)).await;
    called.recv().await.unwrap();
    let start = Instant::now();
    assert!(session.close("maintenance"));
    // Before, the reason was `Closed("maintenance")`, as if the drain had
    // completed.
    assert_eq!(
        ended.recv().await.unwrap(),
        CloseReason::DrainTimeout(Box::new(CloseReason::Closed("maintenance".into())))
    );
    assert!(start.elapsed() >= DRAIN);
    let mut buf = BytesMut::new();
    assert!(
        read_frame(&mut peer, &mut buf).await.is_none(),
        "no farewell"
    );
}

#[tokio::test(start_paused = true)]
async fn a_close_during_the_peers_drain_is_refused_not_ignored() {
    let (pipes, tx) = Pipes::new(Vec::new());
    let (called_tx, mut called) = mpsc::unbounded_channel();
    let (conn_tx, mut connected) = mpsc::unbounded_channel();
    let (ended_tx, mut ended) = mpsc::unbounded_channel();
    let _serving = never_answering(pipes, called_tx, conn_tx, ended_tx);
    let mut peer = dial(&tx);
    let session = connected.recv().await.unwrap();
    // One write: the session reads both in the same pass, so it is
    // draining for the peer once the handler has the request.
    let mut out = BytesMut::new();
    let mut codec = FrameCodec::new();
    codec
        .encode(Frame::data("pending").with_request_id(1), &mut out)
        .unwrap();
    codec.encode(Frame::disconnect("bye"), &mut out).unwrap();
    peer.write_all(&out).await.unwrap();
    called.recv().await.unwrap();
    assert!(session.is_closing());
    // Before, this returned true and nothing happened.
    assert!(!session.close("too late"));
    assert_eq!(
        ended.recv().await.unwrap(),
        CloseReason::DrainTimeout(Box::new(CloseReason::PeerDisconnect("bye".into())))
    );
}

#[tokio::test]
async fn an_over_long_close_reason_is_cut_to_fit_the_disconnect() {
    let builder = Server::builder().framing(FrameCodec::with_max_frame_size(64));
    let mut server = serve(builder, echo()).await;
    let mut peer = RawPeer::connect(server.addr).await;
    let session = running_session(&server, &mut peer).await;
    let reason = "x".repeat(100);
    assert!(server.registry.disconnect(session.id(), reason.clone()));
    // Before, the DISCONNECT was over 64 bytes and became ERROR
    // `answer not sent: ...`.
    let bye = within(peer.recv_skip_heartbeats()).await.unwrap();
    assert_eq!(bye.kind(), Kind::DISCONNECT);
    assert_eq!(bye.payload_text(), "x".repeat(54));
    drop(peer);
    let (_, why) = server.next_end().await;
    assert_eq!(why, CloseReason::Closed(reason));
    server.shutdown().await;
}

#[derive(Clone)]
struct Marker(#[allow(dead_code)] Arc<()>);

#[tokio::test]
async fn a_panicking_disconnect_hook_still_releases_the_session() {
    let marker = Arc::new(());
    let weak = Arc::downgrade(&marker);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::builder()
        .on_connect(move |s| {
            // The session's data holds the session: only `release` breaks
            // the cycle.
            s.insert_data(s.clone());
            s.insert_data(Marker(marker.clone()));
        })
        .on_disconnect(|_, _| panic!("disconnect hook fails (on purpose)"))
        .build()
        .expect("valid settings");
    let registry = server.registry();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(
        server
            .serve(listener, echo())
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            }),
    );
    let mut peer = RawPeer::connect(addr).await;
    peer.send(Frame::ping("")).await;
    assert_eq!(
        peer.recv_skip_heartbeats().await.unwrap().kind(),
        Kind::PONG
    );
    drop(peer);
    stop.send(()).unwrap();
    // `serve` returns once every session task has ended.
    within(serving).await.unwrap().unwrap();
    assert_eq!(registry.connection_count(), 0);
    // Before, the panic skipped `release`: the session kept itself (and
    // its data) alive.
    assert!(
        weak.upgrade().is_none(),
        "the session's data was not released"
    );
}

/// A transform that appends the frame's sequence number (one byte) to
/// every payload it sends, counting frames written.
#[derive(Debug, Default)]
struct Numbered {
    next: u8,
}

/// Makes each session's `Numbered`, from 0.
#[derive(Debug, Clone, Copy)]
struct MakeNumbered;

impl msgi::MakeTransform for MakeNumbered {
    type Transform = Numbered;

    fn make_transform(&self, _params: msgi::SessionParams) -> Numbered {
        Numbered::default()
    }

    fn max_overhead(&self) -> usize {
        1
    }
}

impl msgi::FrameTransform for Numbered {
    fn decode(&mut self, frame: Frame) -> Result<Frame, msgi::BoxError> {
        Ok(frame)
    }

    fn encode(&self, frame: Frame) -> Result<Frame, msgi::BoxError> {
        let mut payload = frame.payload().to_vec();
        payload.push(b'0' + self.next);
        Ok(Frame::new(frame.kind(), payload))
    }

    fn commit(&mut self) {
        self.next += 1;
    }

    fn max_overhead(&self) -> usize {
        1
    }
}

#[tokio::test(start_paused = true)]
async fn pushes_written_before_the_service_is_made_go_through_the_sessions_transforms() {
    let (pipes, tx) = Pipes::new(Vec::new());
    let (conn_tx, mut connected) = mpsc::unbounded_channel::<Session>();
    let server = Server::builder()
        .framing(msgi::Wire::new(FrameCodec::new()).transform(MakeNumbered))
        .drain_timeout(DRAIN)
        .on_connect(move |s| {
            assert_eq!(s.send(Frame::data("welcome")), Ok(()));
            let _ = conn_tx.send(s.clone());
        })
        .build()
        .expect("valid settings");
    let registry = server.registry();
    let (_stop, stopped) = oneshot::channel::<()>();
    let _serving = tokio::spawn(
        server
            .serve(pipes, msgi::PerSession(pending_make()))
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            }),
    );
    let mut peer = dial(&tx);
    let session = connected.recv().await.unwrap();
    assert!(registry.disconnect(session.id(), "bye"));
    let mut buf = BytesMut::new();
    let first = read_frame(&mut peer, &mut buf).await.unwrap();
    assert_eq!(first, Frame::data("welcome0"));
    let bye = read_frame(&mut peer, &mut buf).await.unwrap();
    assert_eq!(
        (bye.kind(), bye.payload_text()),
        (Kind::DISCONNECT, "bye1".into())
    );
}
