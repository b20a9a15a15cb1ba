//! Two nodes in one process, joined by a `MemoryBackplane`, each serving
//! real loopback sessions: broadcasts, sends by client id and by session
//! id, presence and takeover cross nodes; a registry shared by two servers;
//! a backplane that refuses.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use msgi::{
    Backplane, BackplaneError, CloseReason, Envelope, Frame, Kind, LocalNode, MemoryBackplane,
    NodeId, Presence, Registry, Remote, SendError, Sent, Server, SessionId,
};
use support::{echo, serve, RawPeer, TestServer};

/// A node: a registry on `bus` and a server using it.
async fn node(bus: &Arc<MemoryBackplane>) -> (Registry, TestServer) {
    let registry = Registry::builder().backplane(bus.clone()).build().unwrap();
    let server = serve(Server::builder().registry(registry.clone()), echo()).await;
    (registry, server)
}

/// A peer that is registered (its ping answered).
async fn peer(server: &TestServer) -> RawPeer {
    let mut peer = RawPeer::connect(server.addr).await;
    peer.send(Frame::ping("")).await;
    assert_eq!(
        peer.recv_skip_heartbeats().await.unwrap().kind(),
        Kind::PONG
    );
    peer
}

/// A peer that announced `client_id`; returns its session id from WELCOME.
async fn hello(server: &TestServer, client_id: &str) -> (RawPeer, SessionId) {
    let mut peer = RawPeer::connect(server.addr).await;
    peer.send(Frame::control(format!("HELLO {client_id}")).with_request_id(1))
        .await;
    let welcome = peer.recv_skip_heartbeats().await.unwrap();
    let text = welcome.payload_text();
    let id = text
        .strip_prefix("WELCOME ")
        .and_then(SessionId::parse_decimal)
        .unwrap_or_else(|| panic!("not a WELCOME: {text}"));
    (peer, id)
}

#[tokio::test]
async fn a_broadcast_on_one_node_reaches_the_clients_of_the_other() {
    let bus = Arc::new(MemoryBackplane::new());
    let (a, mut server_a) = node(&bus).await;
    let (b, mut server_b) = node(&bus).await;
    assert_ne!(a.node_id(), b.node_id());
    let mut on_a = peer(&server_a).await;
    let mut on_b = peer(&server_b).await;

    let delivery = a.broadcast(Frame::data("to everyone"));
    assert_eq!(delivery.queued, 1, "the local session, directly");
    assert_eq!(delivery.remote, Remote::Queued);
    assert_eq!(
        on_a.recv_skip_heartbeats().await.unwrap(),
        Frame::data("to everyone")
    );
    assert_eq!(
        on_b.recv_skip_heartbeats().await.unwrap(),
        Frame::data("to everyone")
    );
    // Node B reported its delivery to the bus; A's own was not sent back.
    assert_eq!(bus.reported().queued, 1);

    // A filter does not travel: only local sessions.
    let delivery = b.broadcast_filter(Frame::data("b only"), |_| true);
    assert_eq!((delivery.queued, delivery.remote), (1, Remote::NotSent));
    assert_eq!(
        on_b.recv_skip_heartbeats().await.unwrap(),
        Frame::data("b only")
    );
    on_a.send(Frame::ping("still here")).await;
    assert_eq!(
        on_a.recv_skip_heartbeats().await.unwrap(),
        Frame::new(Kind::PONG, "still here")
    );

    drop((on_a, on_b));
    server_a.shutdown().await;
    server_b.shutdown().await;
}

#[tokio::test]
async fn sends_by_client_id_and_session_id_cross_nodes() {
    let bus = Arc::new(MemoryBackplane::new());
    let (a, mut server_a) = node(&bus).await;
    let (b, mut server_b) = node(&bus).await;
    let (mut bob, bob_id) = hello(&server_b, "bob").await;
    let mut anonymous = peer(&server_b).await;
    let anonymous_id = b
        .sessions()
        .into_iter()
        .find(|s| s.id() != bob_id)
        .unwrap()
        .id();
    assert_eq!(
        (bob_id.node(), anonymous_id.node()),
        (b.node_id(), b.node_id())
    );

    // By announced client id.
    assert_eq!(
        a.send_to_client("bob", Frame::data("hi bob")),
        Ok(Sent::Forwarded)
    );
    assert_eq!(
        bob.recv_skip_heartbeats().await.unwrap(),
        Frame::data("hi bob")
    );
    // By session id, routed by its node bits.
    assert_eq!(a.send(bob_id, Frame::data("by id")), Ok(Sent::Forwarded));
    assert_eq!(
        bob.recv_skip_heartbeats().await.unwrap(),
        Frame::data("by id")
    );
    // By default client id (the session id in decimal).
    assert_eq!(
        a.send_to_client(&anonymous_id.to_string(), Frame::data("by default id")),
        Ok(Sent::Forwarded)
    );
    assert_eq!(
        anonymous.recv_skip_heartbeats().await.unwrap(),
        Frame::data("by default id")
    );
    // On the node itself, the same calls stay local.
    assert_eq!(
        b.send_to_client("bob", Frame::data("local")),
        Ok(Sent::Queued)
    );
    assert_eq!(
        bob.recv_skip_heartbeats().await.unwrap(),
        Frame::data("local")
    );

    // Presence: descriptors across nodes, handles only locally.
    let presence = a.lookup("bob").await.unwrap().unwrap();
    assert_eq!(presence, Presence::new(bob_id, "bob"));
    assert_eq!(presence.node(), b.node_id());
    assert!(
        a.get_by_client_id("bob").is_none(),
        "no handle on another node"
    );
    assert_eq!(
        a.lookup(&anonymous_id.to_string())
            .await
            .unwrap()
            .map(|p| p.session()),
        Some(anonymous_id)
    );
    assert_eq!(a.lookup("nobody").await.unwrap(), None);

    // Nobody there: queued on the bus, reported by it as lost.
    let before = bus.reported().no_such_session;
    assert_eq!(
        a.send_to_client("nobody", Frame::data("x")),
        Ok(Sent::Forwarded)
    );
    assert_eq!(bus.reported().no_such_session, before + 1);
    // A default id of A's own node is answered without the bus.
    let missing_here = SessionId::from_u64((u64::from(a.node_id().get()) << 44) | 999).unwrap();
    assert_eq!(
        a.send_to_client(&missing_here.to_string(), Frame::data("x")),
        Err(SendError::NoSuchSession)
    );

    drop((bob, anonymous));
    server_a.shutdown().await;
    server_b.shutdown().await;
}

#[tokio::test]
async fn the_newest_announcement_wins_across_nodes() {
    let bus = Arc::new(MemoryBackplane::new());
    let (a, mut server_a) = node(&bus).await;
    let (b, mut server_b) = node(&bus).await;
    let (mut old, old_id) = hello(&server_a, "carol").await;
    let (mut new, new_id) = hello(&server_b, "carol").await;

    // The older session, on the other node, is closed as taken over.
    assert_eq!(
        old.recv_skip_heartbeats().await.unwrap(),
        Frame::disconnect("client id taken over")
    );
    old.expect_closed().await;
    drop(old);
    assert_eq!(
        server_a.next_end().await,
        (old_id, CloseReason::ClientIdTakenOver)
    );
    // Its end did not withdraw the id from its successor.
    assert_eq!(
        a.lookup("carol").await.unwrap(),
        Some(Presence::new(new_id, "carol"))
    );
    assert_eq!(
        a.send_to_client("carol", Frame::data("for the new")),
        Ok(Sent::Forwarded)
    );
    assert_eq!(
        new.recv_skip_heartbeats().await.unwrap(),
        Frame::data("for the new")
    );

    // When the holder ends, the id is gone from the cluster.
    drop(new);
    assert_eq!(server_b.next_end().await.0, new_id);
    assert_eq!(a.lookup("carol").await.unwrap(), None);
    assert_eq!(b.lookup("carol").await.unwrap(), None);

    server_a.shutdown().await;
    server_b.shutdown().await;
}

#[tokio::test]
async fn servers_sharing_one_registry_share_sessions_and_shut_down_apart() {
    let registry = Registry::new();
    let mut one = serve(Server::builder().registry(registry.clone()), echo()).await;
    let mut two = serve(Server::builder().registry(registry.clone()), echo()).await;
    let mut on_one = peer(&one).await;
    let mut on_two = peer(&two).await;
    assert_eq!(registry.connection_count(), 2);

    assert_eq!(registry.broadcast(Frame::data("both")).queued, 2);
    assert_eq!(
        on_one.recv_skip_heartbeats().await.unwrap(),
        Frame::data("both")
    );
    assert_eq!(
        on_two.recv_skip_heartbeats().await.unwrap(),
        Frame::data("both")
    );

    // One client id space: an announcement on the second server takes the
    // id over from the first.
    let (mut dave, _) = hello(&one, "dave").await;
    let (mut dave2, dave2_id) = hello(&two, "dave").await;
    assert_eq!(
        dave.recv_skip_heartbeats().await.unwrap(),
        Frame::disconnect("client id taken over")
    );
    assert_eq!(registry.get_by_client_id("dave").unwrap().id(), dave2_id);

    // Shutting down the first server leaves the second one's sessions.
    one.begin_shutdown();
    assert_eq!(
        on_one.recv_skip_heartbeats().await.unwrap(),
        Frame::disconnect("server shutdown")
    );
    drop((on_one, dave));
    one.shutdown().await;
    on_two.send(Frame::ping("two")).await;
    assert_eq!(
        on_two.recv_skip_heartbeats().await.unwrap(),
        Frame::new(Kind::PONG, "two")
    );
    dave2.send(Frame::ping("dave")).await;
    assert_eq!(
        dave2.recv_skip_heartbeats().await.unwrap(),
        Frame::new(Kind::PONG, "dave")
    );
    assert_eq!(registry.connection_count(), 2);
    drop((on_two, dave2));
    two.shutdown().await;
}

/// A backplane whose queue is always full (or, once `open`, takes
/// everything and drops it): what a bus that is down looks like.
#[derive(Debug, Default)]
struct Full {
    open: AtomicBool,
}

impl Full {
    fn check(&self) -> Result<(), BackplaneError> {
        if self.open.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(BackplaneError::Full)
        }
    }
}

impl Backplane for Full {
    fn attach(&self, _: LocalNode) -> Result<(), BackplaneError> {
        Ok(())
    }
    fn detach(&self, _: NodeId) {}
    fn publish(&self, _: Envelope) -> Result<(), BackplaneError> {
        self.check()
    }
    fn announce(&self, _: &Presence) -> Result<(), BackplaneError> {
        self.check()
    }
    fn withdraw(&self, _: &Presence) -> Result<(), BackplaneError> {
        self.check()
    }
    fn lookup<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<Presence>, BackplaneError>> {
        Box::pin(async move { self.check().map(|()| None) })
    }
}

#[tokio::test]
async fn what_the_backplane_refuses_is_reported() {
    let full = Arc::new(Full::default());
    let registry = Registry::builder().backplane(full.clone()).build().unwrap();
    let mut server = serve(Server::builder().registry(registry.clone()), echo()).await;
    let mut local = peer(&server).await;

    // A broadcast still reaches the local sessions; the report says the
    // other nodes will not get it.
    let delivery = registry.broadcast(Frame::data("news"));
    assert_eq!(delivery.queued, 1);
    assert_eq!(delivery.remote, Remote::Refused(BackplaneError::Full));
    assert_eq!(
        local.recv_skip_heartbeats().await.unwrap(),
        Frame::data("news")
    );
    // A send for another node fails with the backplane's error as source.
    let elsewhere =
        SessionId::from_u64((u64::from(registry.node_id().get() % NodeId::MAX + 1) << 44) | 1)
            .unwrap();
    let refused = registry.send(elsewhere, Frame::data("x")).unwrap_err();
    assert_eq!(refused, SendError::Backplane(BackplaneError::Full));
    assert!(std::error::Error::source(&refused).is_some());
    assert_eq!(registry.lookup("someone").await, Err(BackplaneError::Full));

    // An announcement the cluster did not take is refused: the session
    // keeps its session id as client id.
    let mut named = RawPeer::connect(server.addr).await;
    named
        .send(Frame::control("HELLO erin").with_request_id(3))
        .await;
    let answer = named.recv_skip_heartbeats().await.unwrap();
    assert_eq!(answer.kind(), Kind::ERROR);
    assert_eq!(answer.request_id(), Some(3));
    assert!(
        answer.payload_text().starts_with("invalid client id: "),
        "{}",
        answer.payload_text()
    );
    assert!(registry.get_by_client_id("erin").is_none());
    assert_eq!(registry.connection_count(), 2);
    let default_ids: Vec<_> = registry.sessions().iter().map(|s| s.client_id()).collect();
    assert!(default_ids
        .iter()
        .all(|id| SessionId::parse_decimal(id).is_some()));

    full.open.store(true, Ordering::SeqCst);
    let (erin, _) = hello(&server, "erin").await;
    assert!(registry.get_by_client_id("erin").is_some());
    drop((local, named, erin));
    server.shutdown().await;
}

#[test]
fn node_ids_are_unique_on_a_backplane() {
    let bus = Arc::new(MemoryBackplane::new());
    let seven = NodeId::new(7).unwrap();
    let a = Registry::builder()
        .node_id(seven)
        .backplane(bus.clone())
        .build()
        .unwrap();
    assert_eq!(
        Registry::builder()
            .node_id(seven)
            .backplane(bus.clone())
            .build()
            .unwrap_err(),
        BackplaneError::NodeIdTaken(seven)
    );
    let b = Registry::builder().backplane(bus.clone()).build().unwrap();
    assert_eq!(bus.nodes().len(), 2);
    // The failed attempt did not detach the node holding the id; dropping
    // a registry does.
    drop(a);
    assert_eq!(bus.nodes(), vec![b.node_id()]);
    let again = Registry::builder()
        .node_id(seven)
        .backplane(bus.clone())
        .build();
    assert!(again.is_ok());
}

/// A backplane that says the node id is taken for the first `taken`
/// attaches.
#[derive(Debug)]
struct Taken {
    taken: std::sync::atomic::AtomicUsize,
    tried: std::sync::Mutex<Vec<NodeId>>,
}

impl Taken {
    fn new(taken: usize) -> Arc<Taken> {
        Arc::new(Taken {
            taken: taken.into(),
            tried: Default::default(),
        })
    }
}

impl Backplane for Taken {
    fn attach(&self, node: LocalNode) -> Result<(), BackplaneError> {
        self.tried.lock().unwrap().push(node.id());
        let left = self.taken.load(Ordering::SeqCst);
        if left == 0 {
            return Ok(());
        }
        self.taken.store(left - 1, Ordering::SeqCst);
        Err(BackplaneError::NodeIdTaken(node.id()))
    }
    fn detach(&self, _: NodeId) {}
    fn publish(&self, _: Envelope) -> Result<(), BackplaneError> {
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

#[test]
fn a_node_id_drawn_at_random_is_drawn_again_when_taken() {
    let bus = Taken::new(3);
    let registry = Registry::builder().backplane(bus.clone()).build().unwrap();
    let tried = bus.tried.lock().unwrap().clone();
    assert_eq!(tried.len(), 4);
    assert_eq!(tried.last(), Some(&registry.node_id()));
    // Up to 8 draws, then the error.
    let bus = Taken::new(100);
    let err = Registry::builder()
        .backplane(bus.clone())
        .build()
        .unwrap_err();
    assert!(matches!(err, BackplaneError::NodeIdTaken(_)));
    assert_eq!(bus.tried.lock().unwrap().len(), 8);
    // A node id that was set is not replaced.
    let bus = Taken::new(1);
    let seven = NodeId::new(7).unwrap();
    assert_eq!(
        Registry::builder()
            .node_id(seven)
            .backplane(bus.clone())
            .build()
            .unwrap_err(),
        BackplaneError::NodeIdTaken(seven)
    );
    assert_eq!(bus.tried.lock().unwrap().len(), 1);
}
