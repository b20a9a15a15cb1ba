//! The registry over real sessions: a broadcast allocates nothing per
//! delivery, and a session gone quiet after a burst of pushes gives back the
//! buffer the burst grew.
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
async fn a_broadcast_allocates_nothing_per_delivery() {
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
    // The first push a session takes gives it a small outbox buffer, which
    // it keeps while it takes a few pushes at a time.
    assert_eq!(server.registry.broadcast(frame.clone()).queued, 70);
    for peer in &mut peers {
        assert_eq!(peer.recv_skip_heartbeats().await.unwrap(), frame);
    }

    // No await inside a measured region: this single-threaded runtime runs
    // nothing else meanwhile. A broadcast to 70 quiet sessions allocates
    // nothing: no snapshot of the sessions (before: one per broadcast), no
    // outbox buffer.
    let region = Region::new(GLOBAL);
    assert_eq!(server.registry.broadcast(frame.clone()).queued, 70);
    let quiet = region.change();
    assert_eq!(
        quiet.allocations + quiet.reallocations,
        0,
        "a broadcast to 70 quiet sessions: {quiet:?}"
    );
    // Three more before the sessions run: four queued each, still in the
    // buffer they have.
    let region = Region::new(GLOBAL);
    for _ in 0..3 {
        assert_eq!(server.registry.broadcast(frame.clone()).queued, 70);
    }
    let busy = region.change();
    assert_eq!(
        busy.allocations + busy.reallocations,
        0,
        "three more broadcasts to 70 busy sessions: {busy:?}"
    );
    for peer in &mut peers {
        for _ in 0..4 {
            assert_eq!(peer.recv_skip_heartbeats().await.unwrap(), frame);
        }
    }

    // A burst grows each outbox; a session that goes quiet after it gives
    // that buffer back, so the next broadcast makes one small buffer each.
    // (20 queued: a 32-slot buffer, which only the quiet session frees.)
    // The burst outgrows the small buffer once per session: one jump to
    // 32 slots, not a chain of doublings.
    let region = Region::new(GLOBAL);
    for _ in 0..20 {
        assert_eq!(server.registry.broadcast(frame.clone()).queued, 70);
    }
    let burst = region.change();
    assert_eq!(
        (burst.allocations, burst.reallocations),
        (0, 70),
        "a burst of 20 broadcasts to 70 sessions: {burst:?}"
    );
    for peer in &mut peers {
        for _ in 0..20 {
            assert_eq!(peer.recv_skip_heartbeats().await.unwrap(), frame);
        }
    }
    let region = Region::new(GLOBAL);
    assert_eq!(server.registry.broadcast(frame.clone()).queued, 70);
    let after_burst = region.change();
    assert_eq!(
        (after_burst.allocations, after_burst.reallocations),
        (70, 0),
        "after a burst, quiet sessions hold no large buffer"
    );
    for peer in &mut peers {
        assert_eq!(peer.recv_skip_heartbeats().await.unwrap(), frame);
    }
    server.shutdown().await;
}
