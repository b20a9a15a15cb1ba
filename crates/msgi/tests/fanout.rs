//! Broadcast under load over real sockets: a session whose own requests
//! broadcast (to every session, itself included) is not closed as a slow
//! consumer while its peer reads everything.

#![allow(clippy::unwrap_used)]

mod support;

use msgi::{Frame, Kind, Server};
use support::{serve, within, RawPeer};

/// A publisher that pipelines many more requests than its outbox holds,
/// each broadcast to everyone (itself too), gets every answer and every
/// delivery: the session moves its own pushes to the socket between
/// requests. Before, the driver handled every request the socket held
/// before it took a push, so the publisher's own copies overflowed its
/// outbox and the server closed it as a slow consumer although it read
/// everything; `msgi bench fanout --rate 4000000` then waited forever for
/// answers that would never come.
#[tokio::test]
async fn a_publisher_flooding_its_own_outbox_is_not_a_slow_consumer() {
    const OUTBOX: usize = 8;
    const PUBLISHES: u32 = 200;
    let builder = Server::builder().outbox_capacity(OUTBOX);
    // The registry is the server's; the service reaches it once serving.
    let registry = std::sync::Arc::new(std::sync::OnceLock::<msgi::Registry>::new());
    let service = {
        let registry = registry.clone();
        tower::service_fn(move |frame: Frame| {
            let queued = registry.get().map_or(0, |r| {
                r.broadcast(Frame::data(frame.payload().clone())).queued
            });
            let mut answer = Frame::data(format!("{queued}"));
            answer.set_request_id(frame.request_id());
            async move { Ok::<_, std::convert::Infallible>(Some(answer)) }
        })
    };
    let mut server = serve(builder, service).await;
    registry.set(server.registry.clone()).unwrap();

    let mut peer = RawPeer::connect(server.addr).await;
    // Every request in one write: the server finds them all in one read.
    let mut burst = Vec::new();
    for i in 0..PUBLISHES {
        let mut frame = Frame::data(format!("p{i}"));
        frame.set_request_id(Some(i + 1));
        burst.extend_from_slice(&peer.encode(frame));
    }
    peer.write(&burst).await;
    let (mut answers, mut deliveries) = (0, 0);
    while answers < PUBLISHES || deliveries < PUBLISHES {
        let frame = peer
            .recv_skip_heartbeats()
            .await
            .unwrap_or_else(|| panic!("closed after {answers} answers, {deliveries} deliveries"));
        assert_eq!(frame.kind(), Kind::DATA, "{frame:?}");
        match frame.request_id() {
            Some(_) => {
                assert_eq!(frame.payload_text(), "1", "queued for the one session");
                answers += 1;
            }
            None => {
                assert_eq!(frame.payload_text(), format!("p{deliveries}"));
                deliveries += 1;
            }
        }
    }
    assert_eq!(server.registry.connection_count(), 1);
    within(server.shutdown()).await;
}
