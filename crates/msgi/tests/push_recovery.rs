//! Push recovery over loopback (docs/RELIABILITY.md, *Server to client*):
//! numbered pushes to a client id reach it once each, in order, while its
//! connections are cut (the server killed or shut down and replaced, its
//! store kept); a client away is kept for within its bounds and grace
//! period, and told what was lost; by default a push to a client that is
//! away is refused to the pusher.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use msgi::delivery::{AckLayer, AckStore, PushError};
use msgi::proto::delivery::{parse_push, pushed_frame, resume_frame_with_pushes, PUSH};
use msgi::{Client, Frame, Kind, Reconnect, SendError, Server};
use support::{runtime, within, Node, PipePeer, Port, RawPeer};
use tokio::sync::watch;
use tower::ServiceBuilder;

/// A server in a runtime of its own, serving nothing but the layer.
fn start(port: &Port, store: &AckStore) -> Node {
    let service = ServiceBuilder::new()
        .layer(AckLayer::new(store.clone()))
        .service(tower::service_fn(|_: Frame| async {
            Ok::<_, std::convert::Infallible>(None)
        }));
    Node::start(port, service)
}

fn store(frames: usize, grace: Duration) -> AckStore {
    AckStore::builder()
        .recover_pushes(frames, 1 << 20, grace, 16)
        .build()
        .unwrap()
}

async fn client(addr: SocketAddr, id: &str) -> Client {
    within(
        Client::builder()
            .client_id(id)
            .reconnect(Reconnect {
                initial_delay: Duration::from_millis(5),
                max_delay: Duration::from_millis(40),
                multiplier: 2.0,
                max_attempts: None,
            })
            .acknowledged(1024, 1 << 20)
            .recover_pushes(true)
            .incoming_capacity(1 << 16)
            .incoming_bytes(64 << 20)
            .connect(addr),
    )
    .await
    .unwrap()
}

/// Pushes `n` until the store takes it: a full buffer (the client away or
/// behind) or a client id not resumed yet is the pusher's to retry, once
/// the store says something changed.
async fn push_until_taken(store: &AckStore, id: &str, n: u64) {
    loop {
        let changed = store.pushes_changed();
        match store.push(id, &Frame::data(n.to_string())) {
            Ok(_) => return,
            Err(PushError::Full | PushError::UnknownClient) => within(changed).await,
            Err(e) => panic!("push {n}: {e}"),
        }
    }
}

#[test]
fn pushes_to_a_client_whose_connections_are_cut_arrive_once_each_in_order() {
    const TOTAL: u64 = 20_000;
    const RESTARTS: usize = 6;
    let client_rt = runtime();
    let port = Port::reserve();
    let addr = port.addr();
    // Fewer kept than the session's outbox holds (1024): a resend after a
    // reconnect always fits.
    let store = store(1000, Duration::from_secs(60));
    let mut node = start(&port, &store);
    let client = client_rt.block_on(client(addr, "carol"));
    let mut incoming = client.incoming().unwrap();
    let (count, mut counted) = watch::channel(0usize);
    let receiving = client_rt.spawn(async move {
        let mut seen = Vec::new();
        while (seen.len() as u64) < TOTAL {
            let Some(frame) = incoming.recv().await else {
                break;
            };
            seen.push(frame.payload_text().parse::<u64>().unwrap());
            count.send_replace(seen.len());
        }
        seen
    });
    let pusher = store.clone();
    let pushing = client_rt.spawn(async move {
        for n in 0..TOTAL {
            push_until_taken(&pusher, "carol", n).await;
        }
    });
    for round in 0..RESTARTS {
        let at = (round + 1) * TOTAL as usize / (RESTARTS + 1);
        client_rt
            .block_on(within(counted.wait_for(|n| *n >= at)))
            .unwrap();
        if round % 2 == 0 {
            node.kill();
        } else {
            node.shutdown(&client_rt);
        }
        node = start(&port, &store);
    }
    client_rt.block_on(within(pushing)).unwrap();
    let seen = client_rt.block_on(within(receiving)).unwrap();
    let first_wrong = seen.iter().zip(0..).find(|(seen, n)| **seen != *n);
    assert_eq!(first_wrong, None, "at the client");
    assert_eq!(seen.len() as u64, TOTAL);
    assert!(client.recovered(), "the store was kept: recovered");
    assert_eq!(client.missed_pushes(), 0);
    assert_eq!(client.pushes_dropped(), 0);
    client_rt.block_on(within(client.close()));
    node.shutdown(&client_rt);
}

/// Pushes `text` once the client has resumed (until then the store does
/// not know it, or still holds it expired).
async fn first_push(store: &AckStore, id: &str, text: &str) -> Result<u64, PushError> {
    within(async {
        loop {
            let changed = store.pushes_changed();
            match store.push(id, &Frame::data(text.to_owned())) {
                Err(PushError::UnknownClient | PushError::Expired) => changed.await,
                other => return other,
            }
        }
    })
    .await
}

/// Until the client's PUSHED for everything has reached the store.
async fn all_acknowledged(store: &AckStore, id: &str) {
    within(async {
        loop {
            let changed = store.pushes_changed();
            if store.pushes_kept(id) == Some(0) {
                return;
            }
            changed.await;
        }
    })
    .await;
}

async fn texts(incoming: &mut msgi::Incoming, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let frame = within(incoming.recv()).await.unwrap();
        out.push(frame.payload_text().into_owned());
    }
    out
}

#[test]
fn a_client_away_gets_what_was_kept_and_learns_what_was_missed() {
    let rt = runtime();
    let port = Port::reserve();
    let addr = port.addr();
    let store = store(3, Duration::from_millis(1));
    let node = start(&port, &store);
    let client = rt.block_on(client(addr, "dave"));
    let mut incoming = client.incoming().unwrap();
    assert_eq!(rt.block_on(first_push(&store, "dave", "p1")), Ok(1));
    assert_eq!(rt.block_on(texts(&mut incoming, 1)), ["p1"]);
    assert!(!client.recovered(), "a first connection recovers nothing");
    rt.block_on(all_acknowledged(&store, "dave"));

    // Away (the server shut down, its sessions closed): three are kept,
    // the fourth is refused to the pusher (buffer full), which may push
    // it again later.
    node.shutdown(&rt);
    let taken: Vec<_> = ["p2", "p3", "p4", "p5"]
        .iter()
        .map(|t| store.push("dave", &Frame::data(*t)))
        .collect();
    assert_eq!(taken, [Ok(2), Ok(3), Ok(4), Err(PushError::Full)]);
    let node = start(&port, &store);
    assert_eq!(rt.block_on(texts(&mut incoming, 3)), ["p2", "p3", "p4"]);
    assert!(client.recovered());
    assert_eq!(client.missed_pushes(), 0);
    rt.block_on(all_acknowledged(&store, "dave"));

    // Away longer than the grace period (1 ms, counted from the first
    // push that found it away): what was kept is dropped, later pushes are
    // refused, and the client is told how many.
    node.shutdown(&rt);
    assert_eq!(store.push("dave", &Frame::data("p6")), Ok(5));
    // The grace period is the thing under test: let it pass.
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(5)).await });
    assert_eq!(
        store.push("dave", &Frame::data("p7")),
        Err(PushError::Expired)
    );
    let node = start(&port, &store);
    // The next push after it came back is the first it gets.
    assert_eq!(rt.block_on(first_push(&store, "dave", "p8")), Ok(6));
    assert_eq!(rt.block_on(texts(&mut incoming, 1)), ["p8"]);
    assert!(!client.recovered(), "the grace period passed: fresh");
    // p6 was accepted and dropped: the client is told; p7 was refused:
    // the pusher was told.
    assert_eq!(client.missed_pushes(), 1);
    rt.block_on(within(client.close()));
    node.shutdown(&rt);
}

/// A crash: the server's process, and its store with it, is gone; the
/// next server starts with an empty store. The client is told it starts
/// fresh (`recovered()` false, no count: the server that counted is gone),
/// the push kept by the dead server is lost (that is what `fresh` reports),
/// and the new server's pushes reach it: they are numbered above what the
/// client has, not from 1 again (which it would drop as duplicates).
#[test]
fn after_a_crash_the_client_is_told_it_starts_fresh_and_gets_the_new_pushes() {
    let rt = runtime();
    let port = Port::reserve();
    let addr = port.addr();
    let dead = store(16, Duration::from_secs(60));
    let node = start(&port, &dead);
    let client = rt.block_on(client(addr, "frank"));
    let mut incoming = client.incoming().unwrap();
    assert_eq!(rt.block_on(first_push(&dead, "frank", "a1")), Ok(1));
    assert_eq!(dead.push("frank", &Frame::data("a2")), Ok(2));
    assert_eq!(rt.block_on(texts(&mut incoming, 2)), ["a1", "a2"]);
    rt.block_on(all_acknowledged(&dead, "frank"));
    node.kill();
    // Kept by the dead server while the client is away: lost with it.
    assert_eq!(dead.push("frank", &Frame::data("a3")), Ok(3));

    let new = store(16, Duration::from_secs(60));
    let node = start(&port, &new);
    // Numbered after the 2 the client said it has.
    assert_eq!(rt.block_on(first_push(&new, "frank", "b1")), Ok(3));
    assert_eq!(new.push("frank", &Frame::data("b2")), Ok(4));
    assert_eq!(rt.block_on(texts(&mut incoming, 2)), ["b1", "b2"]);
    assert!(!client.recovered(), "a server without the store: fresh");
    assert_eq!(
        client.missed_pushes(),
        0,
        "no count: it died with the store"
    );
    assert_eq!(
        client.fresh_resumes(),
        2,
        "the first connection and the crash"
    );
    rt.block_on(within(client.close()));
    node.shutdown(&rt);
}

/// Two servers with stores of their own, the client going from one to the
/// other and back (as behind a balancer): the push the first kept while the
/// client was at the second is numbered below what the client has from the
/// second, so it cannot be sent under the client's numbering. It is dropped
/// and counted (`missed`, `fresh`), and the next push arrives.
#[test]
fn a_server_whose_numbers_the_client_has_passed_drops_what_it_kept_and_says_so() {
    let rt = runtime();
    let port = Port::reserve();
    let addr = port.addr();
    let (one, two) = (
        store(16, Duration::from_secs(60)),
        store(16, Duration::from_secs(60)),
    );
    let node = start(&port, &one);
    let client = rt.block_on(client(addr, "gina"));
    let mut incoming = client.incoming().unwrap();
    assert_eq!(rt.block_on(first_push(&one, "gina", "a1")), Ok(1));
    assert_eq!(rt.block_on(texts(&mut incoming, 1)), ["a1"]);
    rt.block_on(all_acknowledged(&one, "gina"));
    node.kill();
    let node = start(&port, &two);
    assert_eq!(rt.block_on(first_push(&two, "gina", "b1")), Ok(2));
    assert_eq!(two.push("gina", &Frame::data("b2")), Ok(3));
    assert_eq!(rt.block_on(texts(&mut incoming, 2)), ["b1", "b2"]);
    rt.block_on(all_acknowledged(&two, "gina"));
    node.kill();
    // The first server keeps a push for gina, numbered 2: she has 3.
    assert_eq!(one.push("gina", &Frame::data("a2")), Ok(2));
    let node = start(&port, &one);
    rt.block_on(within(async {
        loop {
            let changed = one.pushes_changed();
            if one.pushes_kept("gina") == Some(0) {
                break;
            }
            changed.await;
        }
    }));
    assert_eq!(one.push("gina", &Frame::data("a3")), Ok(4));
    assert_eq!(rt.block_on(texts(&mut incoming, 1)), ["a3"]);
    assert!(!client.recovered());
    assert_eq!(client.missed_pushes(), 1, "a2, dropped and counted");
    assert_eq!(client.fresh_resumes(), 3);
    rt.block_on(within(client.close()));
    node.shutdown(&rt);
}

/// A reconnect sends every kept push at once into the session's outbox:
/// a buffer as large as the outbox would close the session as a slow
/// consumer at every reconnect. The settings refuse it when built.
#[test]
fn the_kept_pushes_must_stay_below_the_session_outbox() {
    let grace = Duration::from_secs(60);
    let build = |frames, bytes, outbox: Option<(usize, usize)>| {
        let mut b = AckStore::builder().recover_pushes(frames, bytes, grace, 4);
        if let Some((f, by)) = outbox {
            b = b.session_outbox(f, by);
        }
        b.build().map(drop).map_err(|e| e.setting())
    };
    // The server's defaults: 1024 frames, 4 MiB, each frame counted with
    // 14 header bytes (a PUSH's wire length has 10: 4 more per frame).
    assert_eq!(build(1000, 1 << 20, None), Ok(()));
    assert_eq!(build(1024, 1 << 20, None), Err("recover_pushes"));
    assert_eq!(build(1000, 4 << 20, None), Err("recover_pushes"));
    assert_eq!(build(1000, (4 << 20) - 4000, None), Err("recover_pushes"));
    assert_eq!(build(1000, (4 << 20) - 4001, None), Ok(()));
    // A server built with another outbox says so.
    assert_eq!(
        build(1000, 1 << 20, Some((512, 8 << 20))),
        Err("recover_pushes")
    );
    assert_eq!(build(2000, 1 << 20, Some((4096, 8 << 20))), Ok(()));
    assert_eq!(build(10, 100, Some((0, 100))), Err("session_outbox"));
}

#[tokio::test]
async fn by_default_a_push_to_a_client_that_is_away_is_refused_to_the_pusher() {
    let store = AckStore::new();
    let server = support::serve(
        Server::builder(),
        ServiceBuilder::new()
            .layer(AckLayer::new(store.clone()))
            .service(support::echo()),
    )
    .await;
    assert_eq!(
        store.push("erin", &Frame::data("x")),
        Err(PushError::Off),
        "no push recovery unless asked for"
    );
    // The registry's push to a client id with no session: refused at once.
    assert_eq!(
        server
            .registry
            .send_to_client("erin", Frame::data("x"))
            .err(),
        Some(SendError::NoSuchSession)
    );
}

/// A server with push recovery in front of echo, on 127.0.0.1:0.
async fn serve_echo(store: &AckStore) -> support::TestServer {
    support::serve(
        Server::builder(),
        ServiceBuilder::new()
            .layer(AckLayer::new(store.clone()))
            .service(support::echo()),
    )
    .await
}

/// A raw client `id` that resumed with push recovery, saying it has the
/// pushes up to `pushes`, at a store that kept nothing for it (`fresh`).
async fn resumed_raw(addr: SocketAddr, id: &str, pushes: u64) -> RawPeer {
    let mut peer = RawPeer::connect(addr).await;
    peer.send(Frame::control(format!("HELLO {id}")).with_request_id(1))
        .await;
    let welcome = peer.recv_skip_heartbeats().await.unwrap();
    assert!(welcome.payload_text().starts_with("WELCOME"), "{welcome:?}");
    peer.send(resume_frame_with_pushes(7, 1, pushes).with_request_id(2))
        .await;
    let resumed = peer.recv_skip_heartbeats().await.unwrap();
    assert_eq!(resumed.payload_text(), "RESUMED 0 fresh 0");
    peer
}

/// Sends a correlated probe and checks that its echo is the next frame:
/// the session handles frames in order, so what was sent before it has
/// been handled, and nothing the store sent came in between (a push is
/// queued in the session before `push` returns).
async fn next_is_the_echo(peer: &mut RawPeer, probe: u32) {
    peer.send(Frame::data("probe").with_request_id(probe)).await;
    let frame = peer.recv_skip_heartbeats().await.unwrap();
    assert_eq!(frame.request_id(), Some(probe), "nothing before: {frame:?}");
}

/// Push numbers are `u64`s and never wrap: the last a push takes is
/// 2^64 - 2 (one more would leave no next number). A client whose RESUME
/// says it has pushes up to 2^64 - 3 gets that last number; after it every
/// push is refused with `NumbersExhausted` (nothing kept, nothing sent),
/// also once the client has acknowledged it, and at once for a client that
/// says it has 2^64 - 1.
#[tokio::test]
async fn push_numbers_that_run_out_are_refused_never_wrapped() {
    let store = store(16, Duration::from_secs(60));
    let server = serve_echo(&store).await;
    let mut peer = resumed_raw(server.addr, "hal", u64::MAX - 2).await;
    assert_eq!(
        store.push("hal", &Frame::data("last")),
        Ok(u64::MAX - 1),
        "numbered on from what the client has"
    );
    let push = peer.recv_skip_heartbeats().await.unwrap();
    assert_eq!(push.kind(), PUSH);
    let (n, carried) = parse_push(push.payload()).unwrap();
    assert_eq!((n, carried.kind()), (u64::MAX - 1, Kind::DATA));
    assert_eq!(carried.payload_text(), "last");
    assert_eq!(
        store.push("hal", &Frame::data("none")),
        Err(PushError::NumbersExhausted)
    );
    assert_eq!(store.pushes_kept("hal"), Some(1), "nothing more kept");
    next_is_the_echo(&mut peer, 10).await;
    // The client has it: still no number left.
    peer.send(pushed_frame(u64::MAX - 1)).await;
    next_is_the_echo(&mut peer, 11).await;
    assert_eq!(store.pushes_kept("hal"), Some(0));
    assert_eq!(
        store.push("hal", &Frame::data("none")),
        Err(PushError::NumbersExhausted)
    );
    next_is_the_echo(&mut peer, 12).await;

    let mut peer = resumed_raw(server.addr, "ida", u64::MAX).await;
    assert_eq!(
        store.push("ida", &Frame::data("none")),
        Err(PushError::NumbersExhausted)
    );
    assert_eq!(store.pushes_kept("ida"), Some(0));
    next_is_the_echo(&mut peer, 13).await;
}

/// `pushes_changed` sees every change from when it is made, whether it
/// was polled before the change or not (the pushers' retry loops rely on
/// it: they make it, push, and only then await it); one made after a
/// change waits for the next. Both changes: a client id resuming with
/// push recovery, and a client saying it has pushes (`PUSHED`). Each
/// change is known to have happened when the peer reads the answer of a
/// frame sent after it (RESUMED, or a probe's echo), before any of the
/// futures is polled again.
#[tokio::test]
async fn pushes_changed_sees_a_change_made_before_its_first_poll_or_between_two() {
    use futures_util::FutureExt;
    use std::pin::pin;

    let store = store(16, Duration::from_secs(60));
    let server = serve_echo(&store).await;

    // A client id resumes with push recovery.
    let mut unpolled = pin!(store.pushes_changed());
    let mut polled = pin!(store.pushes_changed());
    assert_eq!(polled.as_mut().now_or_never(), None, "no change yet");
    let mut peer = resumed_raw(server.addr, "jo", 0).await;
    assert_eq!(unpolled.as_mut().now_or_never(), Some(()), "unpolled");
    assert_eq!(polled.as_mut().now_or_never(), Some(()), "polled before");
    let mut after = pin!(store.pushes_changed());
    assert_eq!(after.as_mut().now_or_never(), None, "made after the change");

    // The client says it has a push.
    assert_eq!(store.push("jo", &Frame::data("p1")), Ok(1));
    let push = peer.recv_skip_heartbeats().await.unwrap();
    assert_eq!(parse_push(push.payload()).map(|(n, _)| n), Some(1));
    let mut unpolled = pin!(store.pushes_changed());
    let mut polled = pin!(store.pushes_changed());
    assert_eq!(polled.as_mut().now_or_never(), None, "no change yet");
    assert_eq!(store.pushes_kept("jo"), Some(1));
    peer.send(pushed_frame(1)).await;
    next_is_the_echo(&mut peer, 10).await;
    assert_eq!(store.pushes_kept("jo"), Some(0), "PUSHED was handled");
    assert_eq!(unpolled.as_mut().now_or_never(), Some(()), "unpolled");
    assert_eq!(polled.as_mut().now_or_never(), Some(()), "polled before");
    assert_eq!(after.as_mut().now_or_never(), Some(()), "the next change");
}

/// A server with push recovery in front of echo, on pipes, with neither
/// heartbeats nor an idle timeout (for paused time).
fn serve_echo_pipes(
    store: &AckStore,
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
            .service(support::echo()),
    )
}

/// The number of a PUSH frame, and its carried text.
fn pushed(frame: &Frame) -> (u64, String) {
    assert_eq!(frame.kind(), PUSH, "{frame:?}");
    let (n, carried) = parse_push(frame.payload()).unwrap();
    (n, carried.payload_text().into_owned())
}

/// Which pushes are refused to the pusher, and that a refusal uses no
/// number and sends nothing (docs: `PushError`): a client id that resumed
/// without asking for push recovery is `UnknownClient`; a frame that is
/// correlated, has flags or is of a kind not delivered is `NotPushable`.
#[tokio::test(start_paused = true)]
async fn refused_pushes_use_no_number_and_send_nothing() {
    let store = store(16, Duration::from_secs(60));
    let (mut server, pipes) = serve_echo_pipes(&store);
    let mut kim = PipePeer::hello(&pipes, "kim").await;
    assert_eq!(kim.ask("RESUME 9 1", 2).await, "RESUMED 0", "did not ask");
    assert_eq!(
        store.push("kim", &Frame::data("x")),
        Err(PushError::UnknownClient)
    );
    assert_eq!(store.pushes_kept("kim"), None);
    assert_eq!(kim.ask("probe", 3).await, "probe", "nothing sent");

    let mut lea = PipePeer::hello(&pipes, "lea").await;
    assert_eq!(lea.ask("RESUME 9 1 0", 2).await, "RESUMED 0 fresh 0");
    for frame in [
        Frame::data("correlated").with_request_id(7),
        Frame::data("flagged").with_flags(msgi::Flags::COMPRESSED),
        Frame::new(Kind::PING, "ping"),
        Frame::new(Kind::ERROR, "error"),
    ] {
        assert_eq!(
            store.push("lea", &frame),
            Err(PushError::NotPushable),
            "{frame:?}"
        );
    }
    assert_eq!(store.pushes_kept("lea"), Some(0));
    assert_eq!(store.push("lea", &Frame::data("first")), Ok(1));
    assert_eq!(pushed(&lea.recv().await.unwrap()), (1, "first".into()));
    let app = Frame::new(Kind::app(0x123).unwrap(), "app");
    assert_eq!(store.push("lea", &app), Ok(2));
    assert_eq!(pushed(&lea.recv().await.unwrap()), (2, "app".into()));
    assert_eq!(lea.ask("probe", 3).await, "probe");
    drop((kim, lea));
    server.shutdown().await;
}

/// A push into an empty buffer is always taken, even one larger than the
/// byte bound; beyond the bound the next is refused (`Full`) until the
/// client says it has what was kept (docs: `AckStoreBuilder::recover_pushes`).
#[tokio::test(start_paused = true)]
async fn a_push_into_an_empty_buffer_is_taken_whatever_its_size() {
    let store = AckStore::builder()
        .recover_pushes(16, 64, Duration::from_secs(60), 4)
        .build()
        .unwrap();
    let (mut server, pipes) = serve_echo_pipes(&store);
    let mut mia = PipePeer::hello(&pipes, "mia").await;
    assert_eq!(mia.ask("RESUME 9 1 0", 2).await, "RESUMED 0 fresh 0");
    let big = "b".repeat(1000);
    assert_eq!(store.push("mia", &Frame::data(big.clone())), Ok(1));
    assert_eq!(
        store.push("mia", &Frame::data("small")),
        Err(PushError::Full)
    );
    assert_eq!(pushed(&mia.recv().await.unwrap()), (1, big));
    mia.send(pushed_frame(1)).await;
    assert_eq!(mia.ask("probe", 3).await, "probe");
    assert_eq!(store.pushes_kept("mia"), Some(0));
    assert_eq!(store.push("mia", &Frame::data("small")), Ok(2));
    assert_eq!(pushed(&mia.recv().await.unwrap()), (2, "small".into()));
    drop(mia);
    server.shutdown().await;
}

/// A connection of the client id that did not ask for push recovery gets
/// no PUSH: the pushes are kept for the next connection that asks, and sent
/// to it after its RESUMED (`recovered`).
#[tokio::test(start_paused = true)]
async fn pushes_are_kept_for_a_connection_that_asks_not_sent_to_one_that_did_not() {
    let store = store(16, Duration::from_secs(60));
    let (mut server, pipes) = serve_echo_pipes(&store);
    let mut asks = PipePeer::hello(&pipes, "ned").await;
    assert_eq!(asks.ask("RESUME 9 1 0", 2).await, "RESUMED 0 fresh 0");
    drop(asks);
    server.next_end().await;
    let mut plain = PipePeer::hello(&pipes, "ned").await;
    assert_eq!(plain.ask("RESUME 9 1", 2).await, "RESUMED 0");
    assert_eq!(store.push("ned", &Frame::data("kept")), Ok(1));
    assert_eq!(plain.ask("probe", 3).await, "probe", "no PUSH before");
    assert_eq!(store.pushes_kept("ned"), Some(1));
    drop(plain);
    server.next_end().await;
    let mut asks = PipePeer::hello(&pipes, "ned").await;
    assert_eq!(asks.ask("RESUME 9 1 0", 2).await, "RESUMED 0 recovered 0");
    assert_eq!(pushed(&asks.recv().await.unwrap()), (1, "kept".into()));
    drop(asks);
    server.shutdown().await;
}

/// At most `clients` client ids have pushes kept: one that asks when every
/// place is taken is answered without push recovery, until a client holding
/// a place has been away for longer than the grace period (counted from the
/// first push that found it away); then its place is given to the newcomer.
/// What was kept for the one that lost its place was accepted and dropped:
/// when it comes back it is told `fresh` with that count in `missed`, as
/// for any client away past the grace period ("every loss is told",
/// docs/RELIABILITY.md).
#[tokio::test(start_paused = true)]
async fn a_place_for_pushes_is_given_only_after_its_holder_is_away_past_the_grace_period() {
    let grace = Duration::from_secs(5);
    let store = AckStore::builder()
        .recover_pushes(16, 1 << 20, grace, 1)
        .build()
        .unwrap();
    let (mut server, pipes) = serve_echo_pipes(&store);
    let mut amy = PipePeer::hello(&pipes, "amy").await;
    assert_eq!(amy.ask("RESUME 9 1 0", 2).await, "RESUMED 0 fresh 0");
    let ask = |id: &'static str, resume: &'static str| {
        let pipes = pipes.clone();
        async move {
            let mut peer = PipePeer::hello(&pipes, id).await;
            let answer = peer.ask(resume, 2).await;
            (peer, answer)
        }
    };
    let (bob, answer) = ask("bob", "RESUME 5 1 0").await;
    assert_eq!(answer, "RESUMED 0", "amy holds the only place");
    assert_eq!(
        store.push("bob", &Frame::data("x")),
        Err(PushError::UnknownClient)
    );
    drop(bob);
    drop(amy);
    server.next_end().await;
    server.next_end().await;
    // Away, but no push found her away yet: her place is hers.
    tokio::time::advance(grace * 2).await;
    let (bob, answer) = ask("bob", "RESUME 5 1 0").await;
    assert_eq!(answer, "RESUMED 0", "amy away, not past the grace period");
    drop(bob);
    server.next_end().await;
    assert_eq!(store.push("amy", &Frame::data("a1")), Ok(1));
    tokio::time::advance(grace - Duration::from_secs(1)).await;
    let (bob, answer) = ask("bob", "RESUME 5 1 0").await;
    assert_eq!(answer, "RESUMED 0", "within the grace period");
    drop(bob);
    server.next_end().await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let (mut bob, answer) = ask("bob", "RESUME 5 1 0").await;
    assert_eq!(answer, "RESUMED 0 fresh 0", "amy's place");
    assert_eq!(store.push("bob", &Frame::data("b1")), Ok(1));
    assert_eq!(pushed(&bob.recv().await.unwrap()), (1, "b1".into()));
    assert_eq!(
        store.push("amy", &Frame::data("a2")),
        Err(PushError::UnknownClient),
        "amy has no place now"
    );
    // Bob goes, and is away past the grace period: amy may have the place
    // back, and is told that a1 was lost.
    drop(bob);
    server.next_end().await;
    assert_eq!(store.push("bob", &Frame::data("b2")), Ok(2));
    tokio::time::advance(grace).await;
    let (mut amy, answer) = ask("amy", "RESUME 9 1 0").await;
    assert_eq!(answer, "RESUMED 0 fresh 1", "a1, accepted and dropped");
    // Numbered on: 1 was a1's (never reused).
    assert_eq!(store.push("amy", &Frame::data("a3")), Ok(2));
    assert_eq!(pushed(&amy.recv().await.unwrap()), (2, "a3".into()));
    drop(amy);
    server.shutdown().await;
}
