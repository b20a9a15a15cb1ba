//! The registry over real sessions: a broadcast allocates nothing but, for
//! a session gone quiet since its last push, that session's outbox buffer.
//!
//! This file holds one test only: the allocation count is process-wide.

#![allow(clippy::unwrap_used)]

mod support;

use std::alloc::System;

use msgi::{Frame, Kind, Server};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use support::{echo, serve, RawPeer};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[tokio::test]
async fn a_broadcast_allocates_only_the_outbox_buffers_of_quiet_sessions() {
    let mut server = serve(Server::builder(), echo()).await;
    let mut peers = Vec::new();
    for _ in 0..70 {
        let mut peer = RawPeer::connect(server.addr).await;
        peer.send(Frame::ping("")).await;
        assert_eq!(
            peer.recv_skip_heartbeats().await.unwrap().kind(),
            Kind::PONG
        );
        peers.push(peer);
    }
    assert_eq!(server.registry.connection_count(), 70);
    let frame = Frame::data(bytes::Bytes::from_static(b"news"));

    // Every session has taken a push and gone quiet since: it gave its
    // outbox's buffer back (an idle session holds none), so the next
    // broadcast makes one buffer per session and nothing else (no snapshot
    // of the sessions). Before, an idle session kept its buffer.
    assert_eq!(server.registry.broadcast(frame.clone()), 70);
    for peer in &mut peers {
        assert_eq!(peer.recv_skip_heartbeats().await.unwrap(), frame);
    }
    // No await in between: this single-threaded runtime runs nothing else
    // while the broadcasts are measured, so the sessions stay busy (their
    // tasks have not run since the first push).
    let region = Region::new(GLOBAL);
    let sent = server.registry.broadcast(frame.clone());
    let refill = region.change();
    assert_eq!(sent, 70);
    assert_eq!(
        (refill.allocations, refill.reallocations),
        (70, 0),
        "first broadcast to 70 quiet sessions: one outbox buffer each"
    );
    // Further broadcasts to the busy sessions reuse those buffers.
    let region = Region::new(GLOBAL);
    for _ in 0..3 {
        assert_eq!(server.registry.broadcast(frame.clone()), 70);
    }
    let stats = region.change();
    assert_eq!(
        stats.allocations + stats.reallocations,
        0,
        "three more broadcasts to 70 busy sessions: {stats:?}"
    );
    for peer in &mut peers {
        for _ in 0..4 {
            assert_eq!(peer.recv_skip_heartbeats().await.unwrap(), frame);
        }
    }
    server.shutdown().await;
}
