//! PROTOCOL.md sections 1 and 3 over real loopback sockets, byte for byte.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use msgi::{CloseReason, Frame, Kind, Server};
use support::{echo, serve, within, RawPeer};
use tokio::io::AsyncWriteExt;

const PING_HI: [u8; 12] = [
    0x4D, 0x53, 0x47, 0x49, 0, 0, 0, 0x0C, 0x00, 0x01, 0x68, 0x69,
];
const PONG_HI: [u8; 12] = [
    0x4D, 0x53, 0x47, 0x49, 0, 0, 0, 0x0C, 0x00, 0x02, 0x68, 0x69,
];
const DATA_7: [u8; 17] = [
    0x4D, 0x53, 0x47, 0x49, 0, 0, 0, 0x11, 0x10, 0x10, 0, 0, 0, 7, 0x61, 0x62, 0x63,
];

#[tokio::test]
async fn worked_example_byte_for_byte() {
    let mut server = serve(Server::builder(), echo()).await;
    let mut peer = RawPeer::connect(server.addr).await;
    peer.write(&PING_HI).await;
    peer.write(&DATA_7).await;
    // Half-close: the server still answers what it received, then closes.
    peer.stream.shutdown().await.unwrap();
    let bytes = peer.read_to_end().await;
    assert_eq!(bytes, [&PONG_HI[..], &DATA_7[..]].concat());
    assert_eq!(server.next_end().await.1, CloseReason::PeerClosed);
    server.shutdown().await;
}

#[tokio::test]
async fn every_kind_does_what_the_contract_says() {
    let mut server = serve(Server::builder(), echo()).await;
    let mut peer = RawPeer::connect(server.addr).await;

    // PING correlated: PONG, same payload, same id.
    peer.send(Frame::ping("x").with_request_id(5)).await;
    let pong = peer.recv_skip_heartbeats().await.unwrap();
    assert_eq!(pong, Frame::new(Kind::PONG, "x").with_request_id(5));

    // HEARTBEAT, PONG and ERROR are never answered; the next answer is the PING's.
    peer.send(Frame::heartbeat()).await;
    peer.send(Frame::new(Kind::PONG, "stray")).await;
    peer.send(Frame::error("client-side trouble")).await;
    peer.send(Frame::ping("after")).await;
    assert_eq!(
        peer.recv_skip_heartbeats().await.unwrap(),
        Frame::new(Kind::PONG, "after")
    );

    // DATA, CONTROL and application kinds reach the service (echo).
    for kind in [
        Kind::DATA,
        Kind::CONTROL,
        Kind::app(0x100).unwrap(),
        Kind::app(0xFFF).unwrap(),
    ] {
        let frame = Frame::new(kind, "payload").with_request_id(kind.get().into());
        peer.send(frame.clone()).await;
        assert_eq!(peer.recv_skip_heartbeats().await.unwrap(), frame);
        let one_way = Frame::new(kind, "");
        peer.send(one_way.clone()).await;
        assert_eq!(peer.recv_skip_heartbeats().await.unwrap(), one_way);
    }

    // Reserved kinds: ERROR (with the request id when correlated), session stays open.
    peer.write(&hex("4d5347490000000a0000")).await;
    let err = peer.recv_skip_heartbeats().await.unwrap();
    assert_eq!((err.kind(), err.request_id()), (Kind::ERROR, None));
    peer.write(&hex("4d5347490000000e10ab00000009")).await;
    let err = peer.recv_skip_heartbeats().await.unwrap();
    assert_eq!((err.kind(), err.request_id()), (Kind::ERROR, Some(9)));
    assert!(err.payload_text().contains("reserved kind"));
    peer.send(Frame::ping("still open")).await;
    assert_eq!(
        peer.recv_skip_heartbeats().await.unwrap().payload(),
        "still open"
    );

    // DISCONNECT: graceful close.
    peer.send(Frame::disconnect("client done")).await;
    peer.expect_closed().await;
    assert_eq!(
        server.next_end().await.1,
        CloseReason::PeerDisconnect("client done".into())
    );
    server.shutdown().await;
}

/// Sends `bytes`, expects an ERROR whose reason starts with `reason`, then
/// the close; the service must never have seen a frame.
async fn violation(bytes: &[u8], reason: &str) {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let service = tower::service_fn(move |f: Frame| {
        seen.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, std::convert::Infallible>(Some(f)) }
    });
    let mut server = serve(Server::builder(), service).await;
    let mut bystander = RawPeer::connect(server.addr).await;
    bystander.send(Frame::ping("before")).await;
    assert!(bystander.recv_skip_heartbeats().await.is_some());

    let mut peer = RawPeer::connect(server.addr).await;
    peer.write(bytes).await;
    let err = peer
        .recv_skip_heartbeats()
        .await
        .expect("an ERROR before the close");
    assert_eq!(err.kind(), Kind::ERROR, "{bytes:x?}");
    assert!(
        err.payload_text().starts_with(reason),
        "reason {:?} does not start with {reason:?}",
        err.payload_text()
    );
    peer.expect_closed().await;
    let (_, why) = server.next_end().await;
    assert!(
        matches!(why, CloseReason::ProtocolViolation { .. }),
        "{why:?}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "nothing of the bad frame reaches the service"
    );

    // Nobody else was disturbed.
    bystander.send(Frame::ping("after")).await;
    assert_eq!(
        bystander.recv_skip_heartbeats().await.unwrap().payload(),
        "after"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn bad_magic() {
    violation(&hex("585347490000000c00106869"), "bad magic").await;
}

#[tokio::test]
async fn garbage_text() {
    violation(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "bad magic").await;
}

#[tokio::test]
async fn length_below_header() {
    violation(&hex("4d534749000000050010"), "length below header").await;
}

#[tokio::test]
async fn correlated_length_12() {
    violation(
        &hex("4d5347490000000c10100000"),
        "length below correlated header",
    )
    .await;
}

#[tokio::test]
async fn oversized_length_is_answered_from_the_header_alone() {
    // Only the 10 header bytes are sent: the answer must not wait for a payload.
    violation(
        &hex("4d534749001000010010"),
        "frame too large (max 1048576)",
    )
    .await;
    violation(&hex("4d534749ffffffff0010"), "frame too large").await;
}

#[tokio::test]
async fn transform_flags_without_a_transform_are_refused() {
    // DATA with COMPRESSED set, on a server that runs no compression.
    violation(
        &hex("4d5347490000000c80106869"),
        "unsupported flags COMPRESSED",
    )
    .await;
    violation(
        &hex("4d5347490000000f50100000000178"),
        "unsupported flags ENCRYPTED",
    )
    .await;
}

#[tokio::test]
async fn configured_max_frame_size_is_enforced() {
    let mut server = serve(Server::builder().max_frame_size(64), echo()).await;
    let mut peer = RawPeer::connect(server.addr).await;
    peer.send(Frame::data(vec![1u8; 54])).await; // exactly 64 bytes: fine
    assert_eq!(
        peer.recv_skip_heartbeats().await.unwrap().payload().len(),
        54
    );
    peer.send(Frame::data(vec![1u8; 55])).await;
    let err = peer.recv_skip_heartbeats().await.unwrap();
    assert!(err.payload_text().starts_with("frame too large (max 64)"));
    peer.expect_closed().await;
    server.shutdown().await;
}

#[tokio::test]
async fn truncated_frame_then_vanish() {
    let mut server = serve(Server::builder(), echo()).await;
    let mut peer = RawPeer::connect(server.addr).await;
    peer.write(&DATA_7[..12]).await;
    drop(peer);
    let (_, why) = server.next_end().await;
    assert!(matches!(why, CloseReason::PeerReset(_)), "{why:?}");
    // The server goes on.
    let mut next = RawPeer::connect(server.addr).await;
    next.write(&PING_HI).await;
    assert_eq!(next.recv_skip_heartbeats().await.unwrap().payload(), "hi");
    server.shutdown().await;
}

#[tokio::test]
async fn idle_timeout_sends_disconnect() {
    let builder = Server::builder()
        .idle_timeout(Some(Duration::from_millis(300)))
        .heartbeat_interval(None);
    let mut server = serve(builder, echo()).await;
    let mut peer = RawPeer::connect(server.addr).await;
    peer.write(&PING_HI).await;
    assert_eq!(peer.recv().await.unwrap().kind(), Kind::PONG);
    let bye = peer.recv().await.unwrap();
    assert_eq!(bye, Frame::disconnect("idle timeout"));
    peer.expect_closed().await;
    assert_eq!(server.next_end().await.1, CloseReason::IdleTimeout);
    server.shutdown().await;
}

#[tokio::test]
async fn heartbeats_are_sent_when_quiet() {
    let builder = Server::builder().heartbeat_interval(Some(Duration::from_millis(50)));
    let mut server = serve(builder, echo()).await;
    let mut peer = RawPeer::connect(server.addr).await;
    peer.send(Frame::heartbeat()).await;
    assert_eq!(peer.recv().await.unwrap(), Frame::heartbeat());
    server.shutdown().await;
}

#[tokio::test]
async fn silent_connection_hits_the_handshake_timeout() {
    let builder = Server::builder().handshake_timeout(Some(Duration::from_millis(200)));
    let mut server = serve(builder, echo()).await;
    let mut peer = RawPeer::connect(server.addr).await;
    let bye = peer.recv_skip_heartbeats().await.unwrap();
    assert_eq!(bye, Frame::disconnect("handshake timeout"));
    peer.expect_closed().await;
    assert_eq!(server.next_end().await.1, CloseReason::HandshakeTimeout);
    server.shutdown().await;
}

#[tokio::test]
async fn handshake_sets_client_id_and_data_without_it_is_served() {
    let mut server = serve(Server::builder(), echo()).await;
    let mut named = RawPeer::connect(server.addr).await;
    named
        .send(Frame::control("HELLO alice").with_request_id(1))
        .await;
    let welcome = named.recv_skip_heartbeats().await.unwrap();
    assert_eq!(welcome.kind(), Kind::CONTROL);
    assert_eq!(welcome.request_id(), Some(1));
    assert!(welcome.payload_text().starts_with("WELCOME "));
    let session = server
        .registry
        .get_by_client_id("alice")
        .expect("registered as alice");
    assert_eq!(welcome.payload_text(), format!("WELCOME {}", session.id()));

    let mut anonymous = RawPeer::connect(server.addr).await;
    anonymous.send(Frame::data("straight away")).await;
    assert_eq!(
        anonymous.recv_skip_heartbeats().await.unwrap().payload(),
        "straight away"
    );

    let mut invalid = RawPeer::connect(server.addr).await;
    invalid
        .send(Frame::control("HELLO ").with_request_id(3))
        .await;
    let err = invalid.recv_skip_heartbeats().await.unwrap();
    assert_eq!((err.kind(), err.request_id()), (Kind::ERROR, Some(3)));
    invalid.send(Frame::ping("open")).await;
    assert_eq!(
        invalid.recv_skip_heartbeats().await.unwrap().payload(),
        "open"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn max_connections_refuses_with_server_full() {
    let mut server = serve(Server::builder().max_connections(1), echo()).await;
    let mut first = RawPeer::connect(server.addr).await;
    first.write(&PING_HI).await;
    assert!(first.recv().await.is_some());

    let mut second = RawPeer::connect(server.addr).await;
    let err = second.recv().await.unwrap();
    assert_eq!(err.kind(), Kind::ERROR);
    assert!(err.payload_text().starts_with("server full"));
    second.expect_closed().await;

    first.write(&PING_HI).await;
    assert_eq!(first.recv_skip_heartbeats().await.unwrap().payload(), "hi");
    assert_eq!(server.registry.connection_count(), 1);
    drop(first);
    server.next_end().await;
    // The slot is free again.
    let mut third = RawPeer::connect(server.addr).await;
    third.write(&PING_HI).await;
    assert_eq!(
        third.recv_skip_heartbeats().await.unwrap().kind(),
        Kind::PONG
    );
    server.shutdown().await;
}

#[tokio::test]
async fn failing_handler_answers_error_with_the_id_and_lives_on() {
    let service = tower::service_fn(|f: Frame| async move {
        if f.payload() == "fail" {
            Err("handler failed".into())
        } else if f.payload() == "silent" {
            Ok(None)
        } else {
            Ok::<_, msgi::BoxError>(Some(f))
        }
    });
    let mut server = serve(Server::builder(), service).await;
    let mut peer = RawPeer::connect(server.addr).await;
    peer.send(Frame::data("fail").with_request_id(11)).await;
    let err = peer.recv_skip_heartbeats().await.unwrap();
    assert_eq!(err, Frame::error("handler failed").with_request_id(11));
    peer.send(Frame::data("silent").with_request_id(12)).await;
    let err = peer.recv_skip_heartbeats().await.unwrap();
    assert_eq!((err.kind(), err.request_id()), (Kind::ERROR, Some(12)));
    peer.send(Frame::data("ok").with_request_id(13)).await;
    assert_eq!(
        peer.recv_skip_heartbeats().await.unwrap(),
        Frame::data("ok").with_request_id(13)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn slow_consumer_is_dropped_and_others_are_not() {
    let builder = Server::builder().outbox_capacity(8);
    let mut server = serve(builder, echo()).await;
    let mut slow = RawPeer::connect(server.addr).await;
    slow.write(&PING_HI).await;
    assert!(slow.recv().await.is_some());
    let mut healthy = RawPeer::connect(server.addr).await;
    healthy.write(&PING_HI).await;
    assert!(healthy.recv().await.is_some());
    let slow_id = server
        .registry
        .sessions()
        .into_iter()
        .map(|s| s.id())
        .min()
        .unwrap();

    // The slow peer never reads again; push until its queue overflows.
    let big = bytes::Bytes::from(vec![0u8; 60 * 1024]);
    let result = within(async {
        loop {
            match server.registry.send(slow_id, Frame::data(big.clone())) {
                Ok(_) => tokio::task::yield_now().await,
                Err(e) => return e,
            }
        }
    })
    .await;
    assert_eq!(result, msgi::SendError::SlowConsumer);
    let (id, why) = server.next_end().await;
    assert_eq!((id, why), (slow_id, CloseReason::SlowConsumer));

    healthy.send(Frame::ping("fine")).await;
    assert_eq!(
        healthy.recv_skip_heartbeats().await.unwrap().payload(),
        "fine"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_answers_in_flight_requests_first() {
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let gate_in = gate.clone();
    let service = tower::service_fn(move |f: Frame| {
        let started_tx = started_tx.clone();
        let gate = gate_in.clone();
        async move {
            let _ = started_tx.send(());
            let _permit = gate.acquire().await.unwrap();
            Ok::<_, std::convert::Infallible>(Some(f))
        }
    });
    let mut server = serve(Server::builder(), service).await;
    let mut peer = RawPeer::connect(server.addr).await;
    peer.send(Frame::data("slow").with_request_id(21)).await;
    within(started.recv()).await.unwrap();

    server.begin_shutdown();
    // Let the shutdown reach the session before the handler finishes.
    within(async {
        while !server.registry.sessions().iter().all(|s| s.is_closing()) {
            tokio::task::yield_now().await;
        }
    })
    .await;
    gate.add_permits(1);

    assert_eq!(
        peer.recv_skip_heartbeats().await.unwrap(),
        Frame::data("slow").with_request_id(21)
    );
    assert_eq!(
        peer.recv_skip_heartbeats().await.unwrap(),
        Frame::disconnect("server shutdown")
    );
    peer.expect_closed().await;
    assert_eq!(server.next_end().await.1, CloseReason::ServerShutdown);
    server.shutdown().await;
}

#[tokio::test]
async fn peer_disconnect_still_gets_earlier_answers() {
    let service = tower::service_fn(|f: Frame| async move {
        tokio::task::yield_now().await;
        Ok::<_, std::convert::Infallible>(Some(f))
    });
    let mut server = serve(Server::builder(), service).await;
    let mut peer = RawPeer::connect(server.addr).await;
    for id in 0..10u32 {
        peer.send(Frame::data("q").with_request_id(id)).await;
    }
    peer.send(Frame::disconnect("bye")).await;
    let mut ids = Vec::new();
    while let Some(frame) = peer.recv().await {
        if frame.kind() == Kind::DATA {
            ids.extend(frame.request_id());
        }
    }
    ids.sort_unstable();
    assert_eq!(ids, (0..10).collect::<Vec<_>>());
    assert_eq!(
        server.next_end().await.1,
        CloseReason::PeerDisconnect("bye".into())
    );
    server.shutdown().await;
}

#[tokio::test]
async fn disconnect_hook_runs_exactly_once_per_session() {
    let mut server = serve(Server::builder(), echo()).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let mut peer = RawPeer::connect(server.addr).await;
        peer.write(&PING_HI).await;
        assert!(peer.recv().await.is_some());
        match i % 3 {
            0 => drop(peer),
            1 => peer.send(Frame::disconnect("")).await,
            _ => peer.write(b"junk").await,
        }
        ids.push(server.next_end().await.0);
    }
    let session = {
        let mut peer = RawPeer::connect(server.addr).await;
        peer.write(&PING_HI).await;
        assert!(peer.recv().await.is_some());
        let s = server.registry.sessions().pop().unwrap();
        assert!(server.registry.disconnect(s.id(), "kicked"));
        assert_eq!(
            peer.recv_skip_heartbeats().await.unwrap(),
            Frame::disconnect("kicked")
        );
        s
    };
    let (id, why) = server.next_end().await;
    assert_eq!(
        (id, why),
        (session.id(), CloseReason::Closed("kicked".into()))
    );
    server.shutdown().await;
    ids.push(id);
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 7);
    assert!(
        server.ended.try_recv().is_err(),
        "no second report for any session"
    );
    assert_eq!(server.registry.connection_count(), 0);
}

#[tokio::test]
async fn many_correlated_requests_in_flight_answer_out_of_order() {
    let service = tower::service_fn(|f: Frame| async move {
        // Later requests finish first.
        let id = f.request_id().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(u64::from(50 - id))).await;
        Ok::<_, std::convert::Infallible>(Some(f))
    });
    let mut server = serve(Server::builder(), service).await;
    let mut peer = RawPeer::connect(server.addr).await;
    for id in 0..50u32 {
        peer.send(Frame::data(id.to_string()).with_request_id(id))
            .await;
    }
    let mut seen = Vec::new();
    while seen.len() < 50 {
        let f = peer.recv_skip_heartbeats().await.unwrap();
        assert_eq!(f.payload_text(), f.request_id().unwrap().to_string());
        seen.push(f.request_id().unwrap());
    }
    assert_ne!(
        seen,
        (0..50).collect::<Vec<_>>(),
        "answers came in completion order"
    );
    seen.sort_unstable();
    assert_eq!(seen, (0..50).collect::<Vec<_>>());
    server.shutdown().await;
}

#[tokio::test]
async fn line_codec_serves_text_clients() {
    let mut server = serve(Server::builder().framing(msgi::LineCodec::new()), echo()).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"hello\r\nworld\n").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut out = Vec::new();
    within(tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut out))
        .await
        .unwrap();
    assert_eq!(out, b"hello\nworld\n");
    server.shutdown().await;
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn a_panicking_handler_ends_only_its_session_and_the_hook_still_runs() {
    let service = tower::service_fn(|f: Frame| async move {
        if f.payload() == "boom" {
            panic!("handler bug");
        }
        Ok::<_, std::convert::Infallible>(Some(f))
    });
    let mut server = serve(Server::builder(), service).await;
    let mut bystander = RawPeer::connect(server.addr).await;
    bystander.send(Frame::data("before")).await;
    assert!(bystander.recv_skip_heartbeats().await.is_some());

    let mut victim = RawPeer::connect(server.addr).await;
    victim.send(Frame::data("boom")).await;
    victim.expect_closed().await;
    assert_eq!(server.next_end().await.1, CloseReason::Aborted);

    bystander.send(Frame::data("after")).await;
    assert_eq!(
        bystander.recv_skip_heartbeats().await.unwrap().payload(),
        "after"
    );
    server.shutdown().await;
}

// PROTOCOL.md, "Shutting down a server": a request the server has not
// answered when DISCONNECT `server shutdown` arrives was not handed to the
// application.
#[tokio::test]
async fn a_request_unanswered_at_shutdown_never_reached_the_application() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let service = tower::service_fn(move |f: Frame| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, std::convert::Infallible>(Some(f)) }
    });
    let mut server = serve(Server::builder(), service).await;
    let mut peer = RawPeer::connect(server.addr).await;
    peer.send(Frame::data("before").with_request_id(1)).await;
    assert_eq!(
        peer.recv_skip_heartbeats().await.unwrap(),
        Frame::data("before").with_request_id(1)
    );

    server.begin_shutdown();
    within(async {
        while !server.registry.sessions().iter().all(|s| s.is_closing()) {
            tokio::task::yield_now().await;
        }
    })
    .await;
    peer.send(Frame::data("after").with_request_id(2)).await;

    assert_eq!(
        peer.recv_skip_heartbeats().await.unwrap(),
        Frame::disconnect("server shutdown")
    );
    // Close our side too, as a client does on DISCONNECT: the server stops lingering.
    peer.stream.shutdown().await.unwrap();
    peer.expect_closed().await;
    assert_eq!(server.next_end().await.1, CloseReason::ServerShutdown);
    server.shutdown().await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

// PROTOCOL.md, "Shutting down a server": past the drain deadline a session
// is closed without DISCONNECT, its unanswered requests' fate unknown.
#[tokio::test]
async fn past_the_drain_timeout_a_session_closes_without_disconnect() {
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let service = tower::service_fn(move |_: Frame| {
        let _ = started_tx.send(());
        std::future::pending::<Result<Option<Frame>, std::convert::Infallible>>()
    });
    let builder = Server::builder().drain_timeout(Duration::from_millis(100));
    let mut server = serve(builder, service).await;
    let mut peer = RawPeer::connect(server.addr).await;
    peer.send(Frame::data("stuck").with_request_id(3)).await;
    within(started.recv()).await.unwrap();

    server.begin_shutdown();
    loop {
        match peer.recv().await {
            Some(frame) if frame.kind() == Kind::HEARTBEAT => {}
            Some(frame) => panic!("expected a close without a frame, got {frame:?}"),
            None => break,
        }
    }
    server.shutdown().await;
}
