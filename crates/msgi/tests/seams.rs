//! The server's seams: a message transport through `serve_connection`, the
//! accept step, typed connection info, the observer.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use msgi::{
    Accepted, CloseReason, CodecError, ConnectInfo, Frame, Kind, Observer, ReadError, Rejection,
    Server, Session, Transport,
};
use support::{dial, echo, read_frame, within, write_frame, Pipes, RawPeer};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::PollSender;

/// A message transport: frames go over a pair of bounded channels, one
/// message per frame, no bytes and no codec.
struct Frames {
    rx: mpsc::Receiver<Frame>,
    tx: PollSender<Frame>,
    queued: VecDeque<Frame>,
    queued_bytes: usize,
    written: usize,
}

impl Frames {
    /// The server's end and the peer's (its sender and receiver).
    fn pair(capacity: usize) -> (Frames, mpsc::Sender<Frame>, mpsc::Receiver<Frame>) {
        let (to_server, rx) = mpsc::channel(capacity);
        let (tx, from_server) = mpsc::channel(capacity);
        let frames = Frames {
            rx,
            tx: PollSender::new(tx),
            queued: VecDeque::new(),
            queued_bytes: 0,
            written: 0,
        };
        (frames, to_server, from_server)
    }
}

impl Transport for Frames {
    fn is_binary(&self) -> bool {
        true
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Frame>, ReadError>> {
        self.rx.poll_recv(cx).map(Ok)
    }

    fn queue(&mut self, frame: Frame) -> Result<(), CodecError> {
        self.queued_bytes += frame.wire_len();
        self.queued.push_back(frame);
        Ok(())
    }

    fn pending_write(&self) -> usize {
        self.queued_bytes
    }

    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(frame) = self.queued.pop_front() {
            match self.tx.poll_reserve(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                Poll::Pending => {
                    self.queued.push_front(frame);
                    return Poll::Pending;
                }
            }
            let len = frame.wire_len();
            if self.tx.send_item(frame).is_err() {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            self.queued_bytes -= len;
            self.written += len;
        }
        Poll::Ready(Ok(()))
    }

    fn take_written(&mut self) -> usize {
        std::mem::take(&mut self.written)
    }

    fn poll_shutdown(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tx.close();
        Poll::Ready(Ok(()))
    }

    fn poll_discard(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while let Some(frame) = std::task::ready!(self.rx.poll_recv(cx)) {
            drop(frame);
        }
        Poll::Ready(())
    }
}

/// What an embedding server (or an accept step) knows about a peer.
#[derive(Debug, Clone, PartialEq)]
struct Upgrade {
    path: &'static str,
}

/// The session ends it saw, from the disconnect hook.
fn ends() -> (
    mpsc::UnboundedSender<CloseReason>,
    mpsc::UnboundedReceiver<CloseReason>,
) {
    mpsc::unbounded_channel()
}

#[tokio::test]
async fn a_message_transport_carries_a_session_through_serve_connection() {
    let (ended_tx, mut ended) = ends();
    let server = Server::builder()
        .on_disconnect(move |_, reason| {
            let _ = ended_tx.send(reason.clone());
        })
        .build()
        .expect("valid settings");
    let registry = server.registry();
    let (frames, to_server, mut from_server) = Frames::pair(4);
    let mut info = ConnectInfo::new();
    info.insert(Upgrade { path: "/msgi" });
    let who = tower::service_fn(|frame: Frame| async move {
        let session = frame.extensions().get::<Session>().cloned();
        let path = session.and_then(|s| s.connect_info::<Upgrade>().map(|u| u.path));
        Ok::<_, std::convert::Infallible>(Some(Frame::data(path.unwrap_or("none"))))
    });
    let serving = tokio::spawn(server.serve_connection(frames, info, who));

    to_server
        .send(msgi::proto::session::hello_frame("embedded").with_request_id(0))
        .await
        .unwrap();
    let welcome = within(from_server.recv()).await.expect("WELCOME");
    assert_eq!(welcome.kind(), Kind::CONTROL);
    assert_eq!(welcome.request_id(), Some(0));
    for id in 1..=3 {
        to_server
            .send(Frame::data("who").with_request_id(id))
            .await
            .unwrap();
        let answer = within(from_server.recv()).await.expect("an answer");
        assert_eq!(answer.request_id(), Some(id));
        assert_eq!(
            answer.payload(),
            "/msgi",
            "the connect info reached the handler"
        );
    }
    let session = registry
        .get_by_client_id("embedded")
        .expect("the session joined the server's registry");
    assert_eq!(session.peer_addr(), None);
    drop(session);

    // The peer ends the stream between frames: a clean close.
    drop(to_server);
    within(serving).await.unwrap();
    assert_eq!(within(ended.recv()).await, Some(CloseReason::PeerClosed));
    assert_eq!(registry.connection_count(), 0);
}

#[tokio::test]
async fn serve_connection_joins_the_servers_cap_and_shutdown() {
    let (ended_tx, mut ended) = ends();
    let server = Server::builder()
        .max_connections(2)
        .drain_timeout(Duration::from_secs(5))
        .on_disconnect(move |_, reason| {
            let _ = ended_tx.send(reason.clone());
        })
        .build()
        .expect("valid settings");
    let embedded = server.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(
        server
            .serve(listener, echo())
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            }),
    );

    // One session from the listener, one embedded: the cap (2) is shared.
    let mut tcp = within(RawPeer::connect(addr)).await;
    tcp.send(Frame::data("tcp").with_request_id(1)).await;
    assert_eq!(
        within(tcp.recv()).await.map(|f| f.request_id()),
        Some(Some(1))
    );
    let (mut ours, theirs) = tokio::io::duplex(64 * 1024);
    let upgraded = tokio::spawn(embedded.serve_connection(theirs, ConnectInfo::new(), echo()));
    let mut buf = BytesMut::new();
    write_frame(&mut ours, Frame::data("pipe").with_request_id(2)).await;
    let answer = within(read_frame(&mut ours, &mut buf))
        .await
        .expect("answer");
    assert_eq!(answer.payload(), "pipe");

    // A third connection, embedded, is over the cap.
    let (mut third, theirs) = tokio::io::duplex(64 * 1024);
    within(embedded.serve_connection(theirs, ConnectInfo::new(), echo())).await;
    let mut third_buf = BytesMut::new();
    let refused = within(read_frame(&mut third, &mut third_buf))
        .await
        .expect("ERROR server full");
    assert_eq!(refused.kind(), Kind::ERROR);
    assert!(
        refused.payload_text().contains("server full"),
        "{refused:?}"
    );

    // The listener's graceful shutdown closes the embedded session too, and
    // waits for it.
    stop.send(()).unwrap();
    let farewell = within(read_frame(&mut ours, &mut buf))
        .await
        .expect("DISCONNECT");
    assert_eq!(farewell.kind(), Kind::DISCONNECT);
    assert_eq!(farewell.payload(), "server shutdown");
    drop(ours);
    drop(tcp);
    within(serving).await.unwrap().unwrap();
    assert!(
        upgraded.is_finished(),
        "shutdown waited for the embedded session"
    );
    within(upgraded).await.unwrap();
    for _ in 0..2 {
        assert_eq!(
            within(ended.recv()).await,
            Some(CloseReason::ServerShutdown)
        );
    }

    // After shutdown, an embedded connection is told so at once.
    let (mut late, theirs) = tokio::io::duplex(64 * 1024);
    within(embedded.serve_connection(theirs, ConnectInfo::new(), echo())).await;
    let mut late_buf = BytesMut::new();
    let last = within(read_frame(&mut late, &mut late_buf))
        .await
        .expect("DISCONNECT");
    assert_eq!(last.kind(), Kind::DISCONNECT);
    assert_eq!(last.payload(), "server shutdown");
}

/// Counts what the observer is told.
#[derive(Default)]
struct Counts {
    opened: AtomicUsize,
    closed: Mutex<Vec<&'static str>>,
    rejected: Mutex<Vec<Rejection>>,
}

#[derive(Clone, Default)]
struct Counting(Arc<Counts>);

impl Observer for Counting {
    fn session_opened(&self, _session: &Session) {
        self.0.opened.fetch_add(1, Ordering::SeqCst);
    }

    fn session_closed(&self, _session: &Session, reason: &CloseReason) {
        self.0.closed.lock().unwrap().push(reason.kind());
    }

    fn connection_rejected(&self, rejection: Rejection) {
        self.0.rejected.lock().unwrap().push(rejection);
    }
}

/// An accept step that holds the first connection until `release` (a
/// handshake that never finishes) and lets the others through, recording
/// what it learnt in their connect info.
#[derive(Clone)]
struct SlowFirst {
    seen: Arc<AtomicUsize>,
    release: Arc<Notify>,
}

impl<Io: Send + 'static> tower::Service<Accepted<Io>> for SlowFirst {
    type Response = Accepted<Io>;
    type Error = io::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<Accepted<Io>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut incoming: Accepted<Io>) -> Self::Future {
        let n = self.seen.fetch_add(1, Ordering::SeqCst);
        let release = self.release.clone();
        Box::pin(async move {
            if n == 0 {
                release.notified().await;
            }
            incoming.info_mut().insert(Upgrade { path: "handshaken" });
            Ok(incoming)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_accept_step_holds_back_no_one_and_times_out() {
    let counts = Counting::default();
    let step = SlowFirst {
        seen: Arc::new(AtomicUsize::new(0)),
        release: Arc::new(Notify::new()),
    };
    let server = Server::builder()
        .handshake_timeout(Some(Duration::from_secs(3)))
        .observer(counts.clone())
        .accept(step.clone())
        .build()
        .expect("valid settings");
    let (pipes, tx) = Pipes::new(Vec::new());
    let (stop, stopped) = oneshot::channel::<()>();
    let path = tower::service_fn(|frame: Frame| async move {
        let session = frame.extensions().get::<Session>().cloned();
        let path = session.and_then(|s| s.connect_info::<Upgrade>().map(|u| u.path));
        Ok::<_, std::convert::Infallible>(Some(Frame::data(path.unwrap_or("none"))))
    });
    let serving = tokio::spawn(server.serve(pipes, path).with_graceful_shutdown(async {
        let _ = stopped.await;
    }));

    let mut slow = dial(&tx);
    let mut fast = dial(&tx);
    let mut buf = BytesMut::new();
    write_frame(&mut fast, Frame::data("hi").with_request_id(7)).await;
    let answer = within(read_frame(&mut fast, &mut buf))
        .await
        .expect("answer");
    assert_eq!(answer.request_id(), Some(7));
    assert_eq!(answer.payload(), "handshaken", "the step's connect info");
    assert_eq!(step.seen.load(Ordering::SeqCst), 2);

    // The first connection's step passes the handshake timeout: it is
    // closed (no session, no frame) and counted.
    let mut rest = Vec::new();
    let n = within(slow.read_to_end(&mut rest)).await.unwrap();
    assert_eq!(n, 0, "closed without a word");
    drop(slow);
    assert_eq!(
        *counts.0.rejected.lock().unwrap(),
        [Rejection::AcceptTimeout]
    );
    assert_eq!(counts.0.opened.load(Ordering::SeqCst), 1);

    drop(fast);
    stop.send(()).unwrap();
    within(serving).await.unwrap().unwrap();
    assert_eq!(counts.0.closed.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_tcp_session_knows_its_peer_address() {
    let who = tower::service_fn(|frame: Frame| async move {
        let session = frame.extensions().get::<Session>().cloned();
        let typed = session
            .as_ref()
            .and_then(|s| s.connect_info::<SocketAddr>().copied());
        let addr = session.as_ref().and_then(Session::peer_addr);
        assert_eq!(typed, addr, "peer_addr is the typed SocketAddr");
        let text = addr.map_or_else(|| "none".to_string(), |a| a.to_string());
        Ok::<_, std::convert::Infallible>(Some(Frame::data(text)))
    });
    let mut server = support::serve(Server::builder(), who).await;
    let mut peer = within(RawPeer::connect(server.addr)).await;
    let local = peer.stream.local_addr().unwrap();
    peer.send(Frame::data("who").with_request_id(1)).await;
    let answer = within(peer.recv()).await.expect("answer");
    assert_eq!(answer.payload_text(), local.to_string());
    drop(peer);
    within(server.shutdown()).await;
}

#[tokio::test]
async fn a_counting_observer_sees_a_real_socket_session() {
    let counts = Counting::default();
    let mut server = support::serve(
        Server::builder()
            .max_connections(1)
            .observer(counts.clone()),
        echo(),
    )
    .await;
    let mut peer = within(RawPeer::connect(server.addr)).await;
    peer.send(Frame::data("one").with_request_id(1)).await;
    assert!(within(peer.recv()).await.is_some());
    // Over the cap: rejected and counted.
    let mut second = within(RawPeer::connect(server.addr)).await;
    let refused = within(second.recv()).await.expect("ERROR server full");
    assert_eq!(refused.kind(), Kind::ERROR);
    assert_eq!(*counts.0.rejected.lock().unwrap(), [Rejection::ServerFull]);
    peer.send(Frame::disconnect("bye")).await;
    let (_, reason) = within(server.next_end()).await;
    assert_eq!(reason.kind(), "peer_disconnect");
    assert_eq!(*counts.0.closed.lock().unwrap(), ["peer_disconnect"]);
    assert_eq!(counts.0.opened.load(Ordering::SeqCst), 1);
    within(server.shutdown()).await;
}

#[tokio::test]
async fn a_violation_says_its_kind() {
    let mut server = support::serve(Server::builder(), echo()).await;
    let mut peer = within(RawPeer::connect(server.addr)).await;
    peer.write(b"NOPE and more bytes").await;
    let (_, reason) = within(server.next_end()).await;
    match &reason {
        CloseReason::ProtocolViolation { kind, detail } => {
            assert_eq!(*kind, msgi::Violation::Framing);
            assert_eq!(kind.label(), "framing");
            assert_eq!(detail, "bad magic");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(reason.kind(), "protocol_violation");
    let _ = peer.read_to_end().await;
    within(server.shutdown()).await;
}

#[test]
fn close_kinds_are_a_bounded_set() {
    let reasons = [
        CloseReason::PeerDisconnect("any text".into()),
        CloseReason::PeerClosed,
        CloseReason::PeerReset(io::ErrorKind::ConnectionReset),
        CloseReason::IdleTimeout,
        CloseReason::HandshakeTimeout,
        CloseReason::ProtocolViolation {
            kind: msgi::Violation::TooLarge,
            detail: "frame too large".into(),
        },
        CloseReason::ServerShutdown,
        CloseReason::SlowConsumer,
        CloseReason::ClientIdTakenOver,
        CloseReason::Closed("kicked by admin 42".into()),
        CloseReason::ServiceFailed("db down".into()),
        CloseReason::Aborted,
        CloseReason::DrainTimeout(Box::new(CloseReason::IdleTimeout)),
    ];
    let kinds: std::collections::BTreeSet<_> = reasons.iter().map(CloseReason::kind).collect();
    assert_eq!(kinds.len(), reasons.len(), "one label per variant");
    for kind in &kinds {
        assert!(
            kind.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{kind}"
        );
    }
    // No text reaches the label.
    assert_eq!(CloseReason::Closed("x".into()).kind(), "closed");
}

/// An accept step that fails the first connection and never finishes the
/// others.
#[derive(Clone, Default)]
struct FailThenHang(Arc<AtomicUsize>);

impl<Io: Send + 'static> tower::Service<Accepted<Io>> for FailThenHang {
    type Response = Accepted<Io>;
    type Error = io::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<Accepted<Io>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _incoming: Accepted<Io>) -> Self::Future {
        if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
            Box::pin(async { Err(io::Error::other("bad handshake")) })
        } else {
            Box::pin(std::future::pending())
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_accept_step_ends_its_connection_and_shutdown_drops_the_rest() {
    let counts = Counting::default();
    let step = FailThenHang::default();
    let server = Server::builder()
        .handshake_timeout(None)
        .observer(counts.clone())
        .accept(step.clone())
        .build()
        .expect("valid settings");
    let (pipes, tx) = Pipes::new(Vec::new());
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(pipes, echo()).with_graceful_shutdown(async {
        let _ = stopped.await;
    }));
    let mut failed = dial(&tx);
    let mut rest = Vec::new();
    assert_eq!(within(failed.read_to_end(&mut rest)).await.unwrap(), 0);
    assert_eq!(
        *counts.0.rejected.lock().unwrap(),
        [Rejection::AcceptFailed]
    );

    // A step that never finishes (no handshake timeout) does not hold up
    // shutdown: it is dropped.
    let mut hanging = dial(&tx);
    within(async {
        while step.0.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    stop.send(()).unwrap();
    within(serving).await.unwrap().unwrap();
    assert_eq!(within(hanging.read_to_end(&mut rest)).await.unwrap(), 0);
    assert_eq!(
        *counts.0.rejected.lock().unwrap(),
        [Rejection::AcceptFailed, Rejection::ServerShutdown]
    );
    assert_eq!(counts.0.opened.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_per_ip_cap_is_reported() {
    let counts = Counting::default();
    let mut server = support::serve(
        Server::builder()
            .max_connections_per_ip(Some(1))
            .observer(counts.clone()),
        echo(),
    )
    .await;
    let mut first = within(RawPeer::connect(server.addr)).await;
    first.send(Frame::data("one").with_request_id(1)).await;
    assert!(within(first.recv()).await.is_some());
    let mut second = within(RawPeer::connect(server.addr)).await;
    let refused = within(second.recv()).await.expect("ERROR");
    assert_eq!(refused.kind(), Kind::ERROR);
    assert_eq!(
        refused.payload_text(),
        "too many connections from this address"
    );
    assert_eq!(
        *counts.0.rejected.lock().unwrap(),
        [Rejection::TooManyFromAddress]
    );
    assert_eq!(
        Rejection::TooManyFromAddress.kind(),
        "too_many_from_address"
    );
    drop(first);
    within(server.shutdown()).await;
}
