//! A broadcast on a node with a backplane: the local sessions get the frame
//! without an allocation per delivery, and the backplane gets one envelope
//! per broadcast, not one per session.
//!
//! This file holds one test only: the allocation count is process-wide.

#![allow(clippy::unwrap_used)]

mod support;

use std::alloc::System;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use msgi::{
    Backplane, BackplaneError, Envelope, Frame, Kind, LocalNode, NodeId, Presence, Registry,
    Remote, Server, Target,
};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use support::{echo, serve, RawPeer};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Counts the envelopes it is given (a bus client queueing them would
/// move each into its buffer; this one drops them).
#[derive(Debug, Default)]
struct Counting {
    broadcasts: AtomicUsize,
    others: AtomicUsize,
}

impl Backplane for Counting {
    fn attach(&self, _: LocalNode) -> Result<(), BackplaneError> {
        Ok(())
    }
    fn detach(&self, _: NodeId) {}
    fn publish(&self, envelope: Envelope) -> Result<(), BackplaneError> {
        match envelope.to() {
            Target::All => self.broadcasts.fetch_add(1, Ordering::SeqCst),
            _ => self.others.fetch_add(1, Ordering::SeqCst),
        };
        Ok(())
    }
    fn announce(&self, _: &Presence) -> Result<(), BackplaneError> {
        Ok(())
    }
    fn withdraw(&self, _: &Presence) -> Result<(), BackplaneError> {
        Ok(())
    }
    fn lookup<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<Presence>, BackplaneError>> {
        Box::pin(async { Ok(None) })
    }
}

#[tokio::test]
async fn a_broadcast_with_a_backplane_allocates_nothing_per_delivery() {
    let bus = Arc::new(Counting::default());
    let registry = Registry::builder().backplane(bus.clone()).build().unwrap();
    let mut server = serve(Server::builder().registry(registry.clone()), echo()).await;
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
    let frame = Frame::data(bytes::Bytes::from_static(b"news"));
    // The first push gives each session its small outbox buffer.
    assert_eq!(registry.broadcast(frame.clone()).queued, 70);
    for peer in &mut peers {
        assert_eq!(peer.recv_skip_heartbeats().await.unwrap(), frame);
    }

    // No await inside the measured region (single-threaded runtime).
    let region = Region::new(GLOBAL);
    let delivery = registry.broadcast(frame.clone());
    let change = region.change();
    assert_eq!((delivery.queued, delivery.remote), (70, Remote::Queued));
    assert_eq!(
        change.allocations + change.reallocations,
        0,
        "a broadcast to 70 quiet sessions and the backplane: {change:?}"
    );
    assert_eq!(
        bus.broadcasts.load(Ordering::SeqCst),
        2,
        "one envelope each"
    );
    assert_eq!(bus.others.load(Ordering::SeqCst), 0);
    for peer in &mut peers {
        assert_eq!(peer.recv_skip_heartbeats().await.unwrap(), frame);
    }
    drop(peers);
    server.shutdown().await;
}
