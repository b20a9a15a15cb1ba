//! Acknowledged delivery over loopback: a client sends numbered one-way
//! frames at full speed while its server is killed (its runtime dropped,
//! every socket with it) or shut down gracefully, and restarted on the
//! same port, several times.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use msgi::delivery::{AckLayer, AckStore};
use msgi::{Client, ClientError, Frame, Kind, Reconnect, Server, Session};
use support::{runtime, within, Node, PipePeer, Port, RawPeer};
use tokio::sync::watch;
use tower::{Service, ServiceBuilder};

/// The application: records each frame's number when it is handed over
/// (`call`), which is what an acknowledgement covers.
#[derive(Clone)]
struct Record {
    seen: Arc<Mutex<Vec<u64>>>,
    count: Arc<watch::Sender<usize>>,
}

impl Service<Frame> for Record {
    type Response = Option<Frame>;
    type Error = Infallible;
    type Future = Ready<Result<Option<Frame>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, frame: Frame) -> Self::Future {
        let n: u64 = frame.payload_text().parse().expect("a number");
        let len = {
            let mut seen = self.seen.lock().unwrap();
            seen.push(n);
            seen.len()
        };
        self.count.send_replace(len);
        ready(Ok(None))
    }
}

/// A server in a runtime of its own, the application behind the layer.
fn start(port: &Port, store: &AckStore, app: &Record) -> Node {
    let service = ServiceBuilder::new()
        .layer(AckLayer::new(store.clone()))
        .service(app.clone());
    Node::start(port, service)
}

/// ACKs only from the timer, 20 ms after a frame: a stop finds frames
/// handed to the application and not acknowledged yet, which the client
/// sends again and the server must recognise.
fn store() -> AckStore {
    AckStore::builder()
        .ack_every(1 << 20)
        .ack_delay(Duration::from_millis(20))
        .build()
        .unwrap()
}

struct Run {
    seen: Vec<u64>,
    acknowledged: u64,
}

/// How the server stops in a [`run`].
#[derive(Clone, Copy, PartialEq)]
enum Stops {
    /// Killed and shut down in turn; the next server keeps the store.
    KeepingTheStore,
    /// Killed and shut down in turn; a new, empty store after each kill.
    Crashing,
    /// Shut down gracefully each time, a new, empty store each time (a
    /// process restarted).
    GracefullyRestarted,
}

/// Sends `total` numbered frames while the server is stopped `restarts`
/// times, as `stops` says.
fn run(total: u64, restarts: usize, stops: Stops) -> Run {
    let client_rt = runtime();
    let port = Port::reserve();
    let addr = port.addr();
    let (count, mut counted) = watch::channel(0);
    let app = Record {
        seen: Arc::new(Mutex::new(Vec::new())),
        count: Arc::new(count),
    };
    let mut store = store();
    let mut node = start(&port, &store, &app);
    let client = client_rt
        .block_on(within(
            Client::builder()
                .client_id("numbered")
                .reconnect(Reconnect {
                    initial_delay: Duration::from_millis(5),
                    max_delay: Duration::from_millis(40),
                    multiplier: 2.0,
                    max_attempts: None,
                })
                .acknowledged(4096, 4 << 20)
                .connect(addr),
        ))
        .unwrap();
    let sender = client.clone();
    let sending = client_rt.spawn(async move {
        for n in 0..total {
            sender.send(Frame::data(n.to_string())).await?;
        }
        Ok::<_, ClientError>(())
    });
    for round in 0..restarts {
        // Stop it while frames are flowing.
        let at = (round + 1) * total as usize / (restarts + 1);
        client_rt
            .block_on(within(counted.wait_for(|n| *n >= at)))
            .unwrap();
        if round % 2 == 0 && stops != Stops::GracefullyRestarted {
            node.kill();
            if stops == Stops::Crashing {
                store = self::store();
            }
        } else {
            node.shutdown(&client_rt);
            if stops == Stops::GracefullyRestarted {
                store = self::store();
            }
        }
        node = start(&port, &store, &app);
    }
    client_rt.block_on(within(sending)).unwrap().unwrap();
    client_rt
        .block_on(within(client.wait_acknowledged()))
        .unwrap();
    let acknowledged = client.acknowledged();
    assert_eq!(client.unacknowledged(), 0);
    client_rt.block_on(within(client.close()));
    node.shutdown(&client_rt);
    let seen = app.seen.lock().unwrap().clone();
    Run { seen, acknowledged }
}

#[test]
fn reconnects_to_a_live_server_lose_and_repeat_nothing() {
    const TOTAL: u64 = 20_000;
    let run = run(TOTAL, 6, Stops::KeepingTheStore);
    assert_eq!(run.acknowledged, TOTAL);
    // Each frame once, in the order sent: nothing lost, nothing twice.
    let first_wrong = run.seen.iter().zip(0..).find(|(seen, n)| **seen != *n);
    assert_eq!(first_wrong, None, "at the handler");
    assert_eq!(run.seen.len() as u64, TOTAL, "more at the handler");
}

#[test]
fn a_crash_loses_nothing_acknowledged_delivery_sends_it_again() {
    const TOTAL: u64 = 20_000;
    let run = run(TOTAL, 6, Stops::Crashing);
    assert_eq!(run.acknowledged, TOTAL);
    let mut seen = run.seen.clone();
    seen.sort_unstable();
    seen.dedup();
    // At least once: every number, some twice (handed, not acknowledged
    // before the crash).
    assert_eq!(seen, (0..TOTAL).collect::<Vec<_>>());
}

#[test]
fn graceful_restarts_with_an_empty_store_repeat_nothing() {
    const TOTAL: u64 = 20_000;
    // Each server knows nothing of the one before: only its DISCONNECT
    // `server shutdown; last N` tells the client what was taken.
    let run = run(TOTAL, 4, Stops::GracefullyRestarted);
    assert_eq!(run.acknowledged, TOTAL);
    let first_wrong = run.seen.iter().zip(0..).find(|(seen, n)| **seen != *n);
    assert_eq!(first_wrong, None, "at the handler");
    assert_eq!(run.seen.len() as u64, TOTAL, "more at the handler");
}

/// Takes the first frame at once, then is not ready until the session
/// closes: the frames the server read meanwhile wait in its read buffer
/// when a shutdown begins.
#[derive(Clone)]
struct HeldAfterFirst {
    seen: Arc<Mutex<Vec<String>>>,
    session: Arc<Mutex<Option<Session>>>,
    /// Told when a frame waits behind the first.
    held: Arc<watch::Sender<bool>>,
}

impl Service<Frame> for HeldAfterFirst {
    type Response = Option<Frame>;
    type Error = Infallible;
    type Future = Ready<Result<Option<Frame>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The session's close wakes its driver, which asks again.
        match &*self.session.lock().unwrap() {
            Some(session) if !session.is_closing() => {
                self.held.send_replace(true);
                Poll::Pending
            }
            _ => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, frame: Frame) -> Self::Future {
        if frame.request_id().is_none() {
            let session = frame.extensions().get::<Session>().cloned();
            self.session
                .lock()
                .unwrap()
                .get_or_insert_with(|| session.unwrap());
            self.seen
                .lock()
                .unwrap()
                .push(frame.payload_text().into_owned());
        }
        ready(Ok(None))
    }
}

/// Frames the server had read when its shutdown began reach the handler;
/// a client of acknowledged delivery is told in the DISCONNECT which.
async fn shutdown_with_frames_read(acknowledged: bool) -> (Vec<String>, Frame) {
    let (held, mut waiting) = watch::channel(false);
    let app = HeldAfterFirst {
        seen: Arc::default(),
        session: Arc::default(),
        held: Arc::new(held),
    };
    let service = ServiceBuilder::new()
        .option_layer(acknowledged.then(|| AckLayer::new(AckStore::new())))
        .service(app.clone());
    let mut server = support::serve(Server::builder(), service).await;
    let mut peer = RawPeer::connect(server.addr).await;
    if acknowledged {
        peer.send(Frame::control("HELLO alice").with_request_id(0))
            .await;
        assert!(peer
            .recv()
            .await
            .unwrap()
            .payload_text()
            .starts_with("WELCOME"));
        peer.send(Frame::control("RESUME 9 1").with_request_id(1))
            .await;
        assert_eq!(peer.recv().await.unwrap().payload_text(), "RESUMED 0");
    }
    peer.send(Frame::data("0")).await;
    // Nine more in one write: read together, they wait behind the first.
    let mut batch = Vec::new();
    for n in 1..10 {
        batch.extend_from_slice(&peer.encode(Frame::data(n.to_string())));
    }
    peer.write(&batch).await;
    within(waiting.wait_for(|held| *held)).await.unwrap();
    server.begin_shutdown();
    let farewell = loop {
        let frame = peer.recv().await.expect("a DISCONNECT before the close");
        if frame.kind() == Kind::DISCONNECT {
            break frame;
        }
    };
    server.shutdown().await;
    let seen = app.seen.lock().unwrap().clone();
    (seen, farewell)
}

#[tokio::test]
async fn a_graceful_shutdown_hands_on_the_frames_it_read() {
    let (seen, farewell) = shutdown_with_frames_read(false).await;
    let numbers: Vec<String> = (0..10).map(|n| n.to_string()).collect();
    assert_eq!(seen, numbers);
    assert_eq!(farewell.payload_text(), "server shutdown");
}

#[tokio::test]
async fn a_shutdown_tells_a_client_of_acknowledged_delivery_the_last_frame_taken() {
    let (seen, farewell) = shutdown_with_frames_read(true).await;
    let numbers: Vec<String> = (0..10).map(|n| n.to_string()).collect();
    assert_eq!(seen, numbers);
    assert_eq!(farewell.payload_text(), "server shutdown; last 10");
}

/// The restart tests' port is theirs from before the first server to
/// after the last: another program cannot take it between a server's
/// crash and the next one's start (a bind without `SO_REUSEADDR`, as most
/// programs' would be, is refused), and each next server gets it
/// (support's [`Port`]). No connection is made before the checks: a
/// connection's TIME_WAIT would refuse such a bind by itself.
#[cfg(target_os = "linux")]
#[test]
fn a_crashed_servers_port_stays_the_tests_until_the_next_server_binds_it() {
    let rt = runtime();
    let port = Port::reserve();
    let echo = || tower::service_fn(|frame: Frame| async move { Ok::<_, Infallible>(Some(frame)) });
    let another_program_binds = |when: &str| {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        let bound = socket.bind(port.addr()).map(|()| socket);
        assert_eq!(
            bound.as_ref().err().map(std::io::Error::kind),
            Some(std::io::ErrorKind::AddrInUse),
            "{when}: another program took the port"
        );
    };
    another_program_binds("before the first server");
    for round in 0..3 {
        // Node::start binds (SO_REUSEADDR) or panics.
        Node::start(&port, echo()).kill();
        another_program_binds(&format!("after crash {round}"));
    }
    let node = Node::start(&port, echo());
    let mut peer = rt.block_on(RawPeer::connect(port.addr()));
    rt.block_on(peer.send(Frame::data("up").with_request_id(1)));
    let answer = rt.block_on(peer.recv()).unwrap();
    assert_eq!(answer.payload_text(), "up");
    // Closed first: a graceful shutdown would wait for the peer's close.
    drop(peer);
    node.shutdown(&rt);
}

/// The application of the tests below: keeps the text of each uncorrelated
/// frame handed to it, echoes a request (a probe: its answer comes after
/// every frame sent before it was handed on or dropped).
#[derive(Clone, Default)]
struct Texts(Arc<Mutex<Vec<String>>>);

impl Service<Frame> for Texts {
    type Response = Option<Frame>;
    type Error = Infallible;
    type Future = Ready<Result<Option<Frame>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, frame: Frame) -> Self::Future {
        if frame.request_id().is_some() {
            return ready(Ok(Some(frame)));
        }
        self.0
            .lock()
            .unwrap()
            .push(frame.payload_text().into_owned());
        ready(Ok(None))
    }
}

impl Texts {
    fn seen(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// A server on pipes with neither heartbeats nor an idle timeout (paused
/// time jumps to the next timer whenever every task waits).
fn serve_quiet(
    store: &AckStore,
    app: &Texts,
) -> (
    support::TestServer,
    tokio::sync::mpsc::UnboundedSender<tokio::io::DuplexStream>,
) {
    support::serve_pipes(
        Server::builder()
            .heartbeat_interval(None)
            .idle_timeout(None),
        ServiceBuilder::new()
            .layer(AckLayer::new(store.clone()))
            .service(app.clone()),
    )
}

/// Sends a probe request and waits for its echo.
async fn probe(peer: &mut PipePeer, id: u32) {
    assert_eq!(peer.ask("probe", id).await, "probe");
}

/// Every setting of an `AckStore` is checked when it is built, the error
/// naming it (docs: `AckStoreBuilder::build`).
#[test]
fn an_ack_store_with_a_zero_setting_is_refused_naming_it() {
    let named = |b: msgi::delivery::AckStoreBuilder| b.build().map(drop).map_err(|e| e.setting());
    let second = Duration::from_secs(1);
    assert_eq!(named(AckStore::builder()), Ok(()));
    assert_eq!(
        named(AckStore::builder().max_clients(0)),
        Err("max_clients")
    );
    assert_eq!(named(AckStore::builder().ack_every(0)), Err("ack_every"));
    assert_eq!(
        named(AckStore::builder().ack_delay(Duration::ZERO)),
        Err("ack_delay")
    );
    for (frames, bytes, grace, clients) in [
        (0, 1024, second, 1),
        (10, 0, second, 1),
        (10, 1024, Duration::ZERO, 1),
        (10, 1024, second, 0),
    ] {
        assert_eq!(
            named(AckStore::builder().recover_pushes(frames, bytes, grace, clients)),
            Err("recover_pushes"),
            "{frames} {bytes} {grace:?} {clients}"
        );
    }
    assert_eq!(
        named(AckStore::builder().recover_pushes(10, 1024, second, 1)),
        Ok(())
    );
}

/// ACKs go at once every `ack_every` frames handed on, otherwise
/// `ack_delay` after the first frame not acknowledged (docs:
/// `AckStoreBuilder::ack_every`, `ack_delay`; PROTOCOL.md *When ACKs go*).
#[tokio::test(start_paused = true)]
async fn acks_go_every_ack_every_frames_at_once_and_after_ack_delay_otherwise() {
    let delay = Duration::from_secs(1);
    let store = AckStore::builder()
        .ack_every(4)
        .ack_delay(delay)
        .build()
        .unwrap();
    let app = Texts::default();
    let (mut server, pipes) = serve_quiet(&store, &app);
    let mut peer = PipePeer::hello(&pipes, "ada").await;
    assert_eq!(peer.ask("RESUME 9 1", 2).await, "RESUMED 0");
    let ack = |f: &Frame| (f.kind(), msgi::proto::delivery::parse_ack(f));
    let acked = |n: u64| (msgi::proto::delivery::ACK, Some(n));

    // Four in one write: ACK 4 at once (the clock has not moved).
    let start = tokio::time::Instant::now();
    let mut batch = Vec::new();
    for n in 1..=4 {
        support::write_frame(&mut batch, Frame::data(n.to_string())).await;
    }
    tokio::io::AsyncWriteExt::write_all(&mut peer.io, &batch)
        .await
        .unwrap();
    let first = peer.recv().await.unwrap();
    assert_eq!(ack(&first), acked(4));
    assert_eq!(start.elapsed(), Duration::ZERO, "at once");

    // One more: its ACK waits ack_delay.
    let start = tokio::time::Instant::now();
    peer.send(Frame::data("5")).await;
    let second = peer.recv().await.unwrap();
    assert_eq!(ack(&second), acked(5));
    let waited = start.elapsed();
    assert!(
        waited >= delay && waited < delay + Duration::from_millis(100),
        "{waited:?}"
    );
    assert_eq!(app.seen(), ["1", "2", "3", "4", "5"]);
    drop(peer);
    server.shutdown().await;
}

/// At most `max_clients` client ids: a RESUME from a new one when the store
/// is full is answered ERROR `acknowledged delivery unavailable: too many
/// clients`, while the entry in the way is connected, or closed for less
/// than `keep_for` after its last frame; after that it is forgotten and
/// the newcomer taken (docs: `AckStoreBuilder::max_clients`, `keep_for`;
/// PROTOCOL.md *What the server keeps, and for how long*).
#[tokio::test(start_paused = true)]
async fn a_full_store_takes_a_new_client_id_only_in_place_of_one_gone_for_keep_for() {
    let keep_for = Duration::from_secs(10);
    let store = AckStore::builder()
        .max_clients(1)
        .keep_for(keep_for)
        .build()
        .unwrap();
    let app = Texts::default();
    let (mut server, pipes) = serve_quiet(&store, &app);
    const FULL: &str = "acknowledged delivery unavailable: too many clients";
    let mut amy = PipePeer::hello(&pipes, "amy").await;
    assert_eq!(amy.ask("RESUME 9 1", 2).await, "RESUMED 0");
    let bob = |n: u32| {
        let pipes = pipes.clone();
        async move {
            let mut bob = PipePeer::hello(&pipes, "bob").await;
            bob.ask("RESUME 5 1", n).await
        }
    };
    assert_eq!(bob(2).await, FULL, "amy connected");
    tokio::time::advance(keep_for * 2).await;
    assert_eq!(bob(3).await, FULL, "amy connected, however long");
    // Amy's last frame, then she goes.
    amy.send(Frame::data("a1")).await;
    probe(&mut amy, 3).await;
    let last_frame = tokio::time::Instant::now();
    drop(amy);
    server.next_end().await;
    server.next_end().await;
    server.next_end().await;
    assert_eq!(store.last_handed("amy"), Some(1));
    tokio::time::advance(keep_for - Duration::from_secs(1)).await;
    assert_eq!(bob(4).await, FULL, "amy gone for less than keep_for");
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(last_frame.elapsed() > keep_for);
    assert_eq!(bob(5).await, "RESUMED 0", "amy forgotten");
    assert_eq!(store.clients(), 1);
    assert_eq!(store.last_handed("amy"), None);
    assert_eq!(store.last_handed("bob"), Some(0));
    server.shutdown().await;
}

/// A frame of a connection that is no longer its client id's newest
/// (another connection of the same id resumed since, here at a second
/// server sharing the store) is dropped: not handed on, not numbered
/// (module docs; PROTOCOL.md *What the server does with a numbered frame*).
#[tokio::test(start_paused = true)]
async fn a_frame_of_a_replaced_connection_is_dropped_and_not_numbered() {
    let store = AckStore::new();
    let app = Texts::default();
    let (mut one, pipes_one) = serve_quiet(&store, &app);
    let (mut two, pipes_two) = serve_quiet(&store, &app);
    let mut old = PipePeer::hello(&pipes_one, "cid").await;
    assert_eq!(old.ask("RESUME 9 1", 2).await, "RESUMED 0");
    old.send(Frame::data("old 1")).await;
    probe(&mut old, 3).await;
    let mut new = PipePeer::hello(&pipes_two, "cid").await;
    assert_eq!(new.ask("RESUME 9 2", 2).await, "RESUMED 1");
    old.send(Frame::data("old 2")).await;
    probe(&mut old, 4).await;
    assert_eq!(app.seen(), ["old 1"], "the replaced connection's frame");
    assert_eq!(store.last_handed("cid"), Some(1), "not numbered");
    new.send(Frame::data("new 2")).await;
    probe(&mut new, 3).await;
    assert_eq!(app.seen(), ["old 1", "new 2"]);
    assert_eq!(store.last_handed("cid"), Some(2));
    drop((old, new));
    one.shutdown().await;
    two.shutdown().await;
}

/// The ERROR answers of a RESUME the store cannot take (PROTOCOL.md,
/// section 3, *Acknowledged delivery*: the reasons of msgi): one before
/// HELLO, and malformed ones (a zero epoch or first, a word too many, not
/// canonical decimal); the session lives on and a good RESUME is answered.
#[tokio::test(start_paused = true)]
async fn a_resume_the_store_cannot_take_is_answered_with_an_error_saying_why() {
    let store = AckStore::new();
    let app = Texts::default();
    let (mut server, pipes) = serve_quiet(&store, &app);
    let mut anonymous = PipePeer::dial(&pipes);
    assert_eq!(
        anonymous.ask("RESUME 9 1", 1).await,
        "acknowledged delivery needs a client id (HELLO first)"
    );
    let mut peer = PipePeer::hello(&pipes, "eve").await;
    for (bad, n) in [
        "RESUME 0 1",
        "RESUME 9 0",
        "RESUME 9 1 2 3",
        "RESUME 9 01",
        "RESUME 9",
    ]
    .into_iter()
    .zip(2..)
    {
        let answer = peer.ask(bad, n).await;
        assert!(answer.starts_with("bad RESUME: "), "{bad}: {answer}");
    }
    assert_eq!(store.clients(), 0, "nothing kept for a refused RESUME");
    assert_eq!(peer.ask("RESUME 9 1", 10).await, "RESUMED 0");
    assert_eq!(store.clients(), 1);
    drop((anonymous, peer));
    server.shutdown().await;
}
