//! The driver's call path over loopback: a call that finishes on its first
//! poll is answered at once (the box of the call before it reused, no trip
//! through the set of pending calls), a call that is pending goes to that
//! set; mixed in one pipelined burst, each request is answered exactly once
//! with its own answer.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::convert::Infallible;

use bytes::BytesMut;
use msgi::{Frame, Kind, Server};
use support::{serve, RawPeer};

/// How many times the call of request `id` is pending before it answers:
/// none for a third of them (answered on the first poll), once or twice
/// for the others.
fn pending_polls(id: u32) -> u32 {
    id % 3
}

#[tokio::test]
async fn ready_and_pending_calls_in_one_burst_are_each_answered_once() {
    let service = tower::service_fn(|frame: Frame| async move {
        for _ in 0..pending_polls(frame.request_id().unwrap_or(0)) {
            tokio::task::yield_now().await;
        }
        Ok::<_, Infallible>(Some(frame))
    });
    let mut server = serve(Server::builder(), service).await;
    let mut peer = RawPeer::connect(server.addr).await;

    // One write: the server reads them together, so ready and pending
    // calls alternate within one wake-up. Payloads of different sizes, so
    // an answer carrying another call's frame would show.
    const N: u32 = 96;
    let mut burst = BytesMut::new();
    for id in 1..=N {
        let payload = format!("request {id} {}", "x".repeat(id as usize * 7));
        burst.extend_from_slice(&peer.encode(Frame::data(payload).with_request_id(id)));
    }
    peer.write(&burst).await;

    let mut answered = BTreeSet::new();
    let mut at_once = Vec::new();
    for _ in 1..=N {
        let answer = peer.recv_skip_heartbeats().await.unwrap();
        let id = answer.request_id().unwrap();
        assert_eq!(answer.kind(), Kind::DATA);
        let payload = format!("request {id} {}", "x".repeat(id as usize * 7));
        assert_eq!(answer.payload(), payload.as_bytes(), "answer to {id}");
        assert!(answered.insert(id), "request {id} answered twice");
        if pending_polls(id) == 0 {
            at_once.push(id);
        }
    }
    assert_eq!(answered, (1..=N).collect());
    // Calls that finish on their first poll are answered as they are read.
    assert!(at_once.windows(2).all(|w| w[0] < w[1]), "{at_once:?}");

    // Nothing more was sent: the next frame is the answer to this PING.
    peer.send(Frame::ping("end")).await;
    assert_eq!(
        peer.recv_skip_heartbeats().await.unwrap(),
        Frame::new(Kind::PONG, "end")
    );
    server.shutdown().await;
}
