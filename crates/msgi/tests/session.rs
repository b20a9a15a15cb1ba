//! Sessions over real loopback sockets, and over in-memory pipes for the
//! tests on paused time: the idle timer against our own backpressure,
//! pushes across a close, the outbox and in-flight byte bounds, client ids,
//! and peer text.

#![allow(clippy::unwrap_used)]

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use msgi::Framing as _;
use msgi::{CloseReason, Frame, FrameCodec, Kind, SendError, Server, Session};
use support::{dial, echo, serve, serve_pipes, within, RawPeer};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

fn wire(frame: Frame) -> BytesMut {
    let mut out = BytesMut::new();
    FrameCodec::new().encode(frame, &mut out).unwrap();
    out
}

/// The only session of `server`, once a PING has gone through.
async fn only_session(server: &support::TestServer, peer: &mut RawPeer) -> Session {
    peer.send(Frame::ping("ready")).await;
    assert_eq!(
        peer.recv_skip_heartbeats().await.unwrap().kind(),
        Kind::PONG
    );
    let sessions = server.registry.sessions();
    assert_eq!(sessions.len(), 1);
    sessions.into_iter().next().unwrap()
}

/// Sends requests 1..=`requests` to a server on pipes, heartbeats every
/// second until every one is answered (nothing else may arrive before),
/// then stops sending and returns what the server sends until it closes.
///
/// In-memory pipes, not loopback: on paused time the clock jumps to the
/// next timer whenever the runtime parks, and a heartbeat still on its way
/// through the OS on a busy machine would let the idle timer fire.
async fn heartbeat_until_answered(
    pipes: &mpsc::UnboundedSender<DuplexStream>,
    requests: u32,
) -> Option<Frame> {
    let mut stream = dial(pipes);
    for id in 1..=requests {
        stream
            .write_all(&wire(Frame::data("slow").with_request_id(id)))
            .await
            .unwrap();
    }
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::new();
    let mut beat = tokio::time::interval(Duration::from_secs(1));
    let mut answered = Vec::new();
    within(async {
        while answered.len() < requests as usize {
            if let Some(frame) = codec.decode(&mut buf).unwrap() {
                assert_eq!(frame.kind(), Kind::DATA, "before the answers: {frame:?}");
                answered.push(frame.request_id().unwrap());
                continue;
            }
            tokio::select! {
                read = stream.read_buf(&mut buf) => {
                    assert!(read.unwrap() > 0, "closed before the answers");
                }
                _ = beat.tick() => {
                    stream.write_all(&wire(Frame::heartbeat())).await.unwrap();
                }
            }
        }
    })
    .await;
    answered.sort_unstable();
    assert_eq!(answered, (1..=requests).collect::<Vec<_>>());

    let mut rest = Vec::new();
    within(stream.read_to_end(&mut rest)).await.unwrap();
    buf.extend_from_slice(&rest);
    codec.decode(&mut buf).unwrap()
}

/// Item 2: while the session stops reading because its requests fill
/// `max_concurrent_requests`, the peer's HEARTBEATs sit unread; that must not
/// count as the peer being idle.
#[tokio::test(start_paused = true)]
async fn a_handler_slower_than_the_idle_timeout_does_not_idle_out_a_live_peer() {
    let slow = tower::service_fn(|frame: Frame| async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok::<_, Infallible>(Some(frame))
    });
    let builder = Server::builder()
        .idle_timeout(Some(Duration::from_secs(2)))
        .heartbeat_interval(None)
        .max_concurrent_requests(2);
    let (mut server, pipes) = serve_pipes(builder, slow);
    // Two requests hold the session for 5 s and the third waits, while the
    // peer heartbeats every second, within the 2 s idle timeout.
    let last = heartbeat_until_answered(&pipes, 3).await;
    // A peer that really goes silent is still found idle.
    assert_eq!(last, Some(Frame::disconnect("idle timeout")));
    assert_eq!(server.next_end().await.1, CloseReason::IdleTimeout);
    server.shutdown().await;
}

/// Item 2: the same while the service is not ready (as under a rate
/// limit's *delay* policy): here a concurrency limit of one in front of a
/// handler slower than the idle timeout.
#[tokio::test(start_paused = true)]
async fn a_service_not_ready_for_longer_than_the_idle_timeout_does_not_idle_out_a_live_peer() {
    let slow = tower::ServiceBuilder::new()
        .concurrency_limit(1)
        .service_fn(|frame: Frame| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, Infallible>(Some(frame))
        });
    let builder = Server::builder()
        .idle_timeout(Some(Duration::from_secs(2)))
        .heartbeat_interval(None);
    let (mut server, pipes) = serve_pipes(builder, slow);
    let last = heartbeat_until_answered(&pipes, 2).await;
    assert_eq!(last, Some(Frame::disconnect("idle timeout")));
    assert_eq!(server.next_end().await.1, CloseReason::IdleTimeout);
    server.shutdown().await;
}

/// Item 8: a HELLO with another session's default client id must not take
/// over that session's pushes.
#[tokio::test]
async fn a_hello_cannot_take_another_sessions_default_client_id() {
    let mut server = serve(Server::builder(), echo()).await;
    let mut first = RawPeer::connect(server.addr).await;
    let victim = only_session(&server, &mut first).await;
    let victim_id = victim.client_id();
    assert_eq!(victim_id, victim.id().to_string());

    let mut spoofer = RawPeer::connect(server.addr).await;
    spoofer
        .send(Frame::control(format!("HELLO {victim_id}")).with_request_id(1))
        .await;
    let refused = spoofer.recv_skip_heartbeats().await.unwrap();
    assert_eq!(
        (refused.kind(), refused.request_id()),
        (Kind::ERROR, Some(1)),
        "{refused:?}"
    );
    assert_eq!(
        refused.payload_text(),
        "invalid client id: digits only (reserved for session ids)"
    );

    server
        .registry
        .send_to_client(&victim_id, Frame::data("for the first"))
        .unwrap();
    assert_eq!(
        first.recv_skip_heartbeats().await.unwrap(),
        Frame::data("for the first")
    );
    // The spoofer got nothing: its next frame is the answer to its PING.
    spoofer.send(Frame::ping("next")).await;
    assert_eq!(
        spoofer.recv_skip_heartbeats().await.unwrap(),
        Frame::new(Kind::PONG, "next")
    );
    assert!(!victim.is_closing());
    server.shutdown().await;
}

/// Item 4: a push that got `Ok` before a graceful close is written before
/// the DISCONNECT, even when the write queue was above its high-water mark
/// when the close came.
#[tokio::test]
async fn pushes_taken_before_a_close_are_written_before_its_disconnect() {
    let builder = Server::builder().outbox_bytes(64 << 20);
    let mut server = serve(builder, echo()).await;
    let mut peer = RawPeer::connect(server.addr).await;
    let session = only_session(&server, &mut peer).await;

    // 16 MiB: far more than the write queue's 1 MiB high-water mark plus
    // what the kernel buffers while the peer does not read.
    let chunk = Bytes::from(vec![7u8; 32 * 1024]);
    for _ in 0..512 {
        session.send(Frame::data(chunk.clone())).unwrap();
    }
    assert!(session.close("bye"));

    let mut pushes = 0;
    loop {
        match peer.recv().await {
            Some(frame) if frame.kind() == Kind::DATA => {
                assert_eq!(frame.payload(), &chunk);
                pushes += 1;
            }
            Some(frame) if frame.kind() == Kind::HEARTBEAT => {}
            Some(frame) => {
                assert_eq!(frame, Frame::disconnect("bye"));
                break;
            }
            None => panic!("closed after {pushes} pushes, without DISCONNECT"),
        }
    }
    assert_eq!(pushes, 512, "every push that got Ok was written");
    assert_eq!(server.next_end().await.1, CloseReason::Closed("bye".into()));
    server.shutdown().await;
}

/// Item 5: the outbox is bounded in bytes by default (4 MiB), not only in
/// frames (1024 of up to 1 MiB each).
#[tokio::test]
async fn the_outbox_is_bounded_in_bytes_by_default() {
    let mut server = serve(Server::builder(), echo()).await;
    let mut peer = RawPeer::connect(server.addr).await;
    let session = only_session(&server, &mut peer).await;

    // This test's task does not yield, so the session's task moves nothing
    // out of the outbox meanwhile: exactly what fits in 4 MiB is taken.
    let chunk = Bytes::from(vec![0u8; 64 * 1024]);
    let mut taken = 0usize;
    let refused = loop {
        if taken == 1000 {
            break None;
        }
        match session.send(Frame::data(chunk.clone())) {
            Ok(()) => taken += 1,
            Err(e) => break Some(e),
        }
    };
    assert_eq!(refused, Some(SendError::SlowConsumer), "{taken} taken");
    assert_eq!(taken, (4 << 20) / (64 * 1024 + 14));
    let (id, why) = server.next_end().await;
    assert_eq!((id, why), (session.id(), CloseReason::SlowConsumer));
    server.shutdown().await;
}

/// Item 11: what a session's requests hold in the service is bounded in
/// bytes (4 MiB by default), not only in count (64).
#[tokio::test(start_paused = true)]
async fn requests_in_the_service_are_bounded_in_bytes() {
    let started = Arc::new(AtomicUsize::new(0));
    let active = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let service = {
        let (started, active, most, gate) =
            (started.clone(), active.clone(), most.clone(), gate.clone());
        tower::service_fn(move |frame: Frame| {
            let (started, active, most, gate) =
                (started.clone(), active.clone(), most.clone(), gate.clone());
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                gate.acquire().await.unwrap().forget();
                active.fetch_sub(1, Ordering::SeqCst);
                let mut answer = Frame::data("done");
                answer.set_request_id(frame.request_id());
                Ok::<_, Infallible>(Some(answer))
            }
        })
    };
    // Pipes: on paused time, bytes still crossing loopback would let the
    // clock run ahead of what the session has read.
    let (mut server, pipes) = serve_pipes(Server::builder(), service);
    let (mut rd, mut wr) = tokio::io::split(dial(&pipes));
    let half_mib = Bytes::from(vec![1u8; 512 * 1024]);
    let writer = tokio::spawn(async move {
        for id in 0..20 {
            let frame = Frame::data(half_mib.clone()).with_request_id(id);
            wr.write_all(&wire(frame)).await.unwrap();
        }
        wr
    });

    // Paused time advances only when every task is idle: step it until
    // the service holds 8 requests (8 x 512 KiB = 4 MiB), then a while more
    // to see that the session reads no further.
    within(async {
        while started.load(Ordering::SeqCst) < 8 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(started.load(Ordering::SeqCst), 8, "8 x 512 KiB = 4 MiB");

    gate.add_permits(20);
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::new();
    let mut answers = 0;
    within(async {
        while answers < 20 {
            match codec.decode(&mut buf).unwrap() {
                Some(frame) => {
                    assert_eq!(frame.payload(), "done");
                    answers += 1;
                }
                None => assert!(rd.read_buf(&mut buf).await.unwrap() > 0),
            }
        }
    })
    .await;
    assert_eq!(started.load(Ordering::SeqCst), 20);
    assert!(
        most.load(Ordering::SeqCst) <= 8,
        "at most 4 MiB in the service"
    );
    drop(within(writer).await.unwrap());
    server.shutdown().await;
}

/// Item 11: a request larger than the whole budget is still served.
#[tokio::test]
async fn a_request_larger_than_the_in_flight_byte_budget_is_served() {
    let builder = Server::builder().max_concurrent_request_bytes(1000);
    let mut server = serve(builder, echo()).await;
    let mut peer = RawPeer::connect(server.addr).await;
    let big = Bytes::from(vec![3u8; 100 * 1024]);
    peer.send(Frame::data(big.clone()).with_request_id(1)).await;
    peer.send(Frame::data(big.clone()).with_request_id(2)).await;
    for id in 1..=2 {
        assert_eq!(
            peer.recv_skip_heartbeats().await.unwrap(),
            Frame::data(big.clone()).with_request_id(id)
        );
    }
    server.shutdown().await;
}

/// Item 5: a DISCONNECT reason is the peer's text; what reaches the close
/// reason (and the logs) is escaped and capped.
#[tokio::test]
async fn a_peer_disconnect_reason_is_escaped_and_capped() {
    let mut server = serve(Server::builder(), echo()).await;
    let mut peer = RawPeer::connect(server.addr).await;
    let mut reason = b"bye\x1b[2J\r\n".to_vec();
    reason.resize(100_000, b'x');
    peer.send(Frame::new(Kind::DISCONNECT, reason)).await;
    peer.expect_closed().await;
    let CloseReason::PeerDisconnect(shown) = server.next_end().await.1 else {
        panic!("expected a peer disconnect");
    };
    let start: String = shown.chars().take(300).collect();
    assert!(shown.starts_with("bye\\u{1b}[2J\\r\\n"), "{start:?}");
    assert!(shown.ends_with("…(100000 bytes)"), "{start:?}");
    assert!(!shown.chars().any(char::is_control), "{start:?}");
    server.shutdown().await;
}

/// Items 5 and 11: the byte budgets are settings checked by `build`.
#[test]
fn byte_budgets_are_validated() {
    let refused = |builder: msgi::ServerBuilder| match builder.build() {
        Ok(_) => panic!("settings accepted"),
        Err(e) => e,
    };
    let e = refused(Server::builder().outbox_bytes(0));
    assert_eq!(
        (e.setting(), e.reason()),
        ("outbox_bytes", "must be at least 1")
    );
    let e = refused(Server::builder().max_concurrent_request_bytes(0));
    assert_eq!(e.setting(), "max_concurrent_request_bytes");
    if let Ok(too_many) = usize::try_from(u64::from(u32::MAX) + 1) {
        let e = refused(Server::builder().outbox_bytes(too_many));
        assert_eq!(e.setting(), "outbox_bytes");
        let e = refused(Server::builder().outbox_capacity(too_many));
        assert_eq!(e.setting(), "outbox_capacity");
    }
    assert!(Server::builder()
        .outbox_bytes(1)
        .max_concurrent_request_bytes(usize::MAX)
        .build()
        .is_ok());
}
