//! The registry over real sessions: a broadcast costs no allocation that
//! grows with the number of sessions.
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
async fn a_broadcast_allocates_nothing_per_session() {
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

    // The first push to a session makes its outbox's buffer; after that,
    // a broadcast must allocate nothing (no snapshot of the sessions).
    assert_eq!(server.registry.broadcast(frame.clone()), 70);
    for peer in &mut peers {
        assert_eq!(peer.recv_skip_heartbeats().await.unwrap(), frame);
    }
    // No await in between: this single-threaded runtime runs nothing else
    // while the broadcast is measured.
    let region = Region::new(GLOBAL);
    let sent = server.registry.broadcast(frame.clone());
    let stats = region.change();
    assert_eq!(sent, 70);
    assert_eq!(
        stats.allocations + stats.reallocations,
        0,
        "one broadcast to 70 sessions: {stats:?}"
    );
    for peer in &mut peers {
        assert_eq!(peer.recv_skip_heartbeats().await.unwrap(), frame);
    }
    server.shutdown().await;
}
