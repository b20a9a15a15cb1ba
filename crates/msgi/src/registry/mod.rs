//! The sessions of one node: lookup by session id or client id, sending
//! to one session, broadcasting, closing sessions, and the seam to the
//! other nodes of a cluster ([`Backplane`]).
//!
//! The registry is only touched when sessions come and go and when the
//! application pushes frames; the request path of a session never takes its
//! lock. Sends never block: see [`Session::send`] for what happens when a
//! session's outbox is full.
//!
//! A registry is one node. Build it where you like ([`Registry::new`], or
//! [`Registry::builder`] with a node id and a backplane) and give it to
//! several servers ([`ServerBuilder::registry`](crate::ServerBuilder::registry)),
//! a TCP one and a WebSocket one, so they share sessions and client ids.
//! Local delivery is the fast path: a broadcast queues the frame for every
//! local session directly, then hands one envelope to the backplane, if
//! there is one; without a backplane nothing else happens.

mod backplane;
mod memory;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::accept::ConnectInfo;
use crate::session::{CloseReason, NodeId, OutboxLimits, SendError, Session, SessionId};
use msgi_proto::Frame;

pub use backplane::{Backplane, BackplaneError, Envelope, LocalNode, Target};
pub use memory::MemoryBackplane;

/// Sessions a broadcast copies out of the registry per visit of its lock:
/// a broadcast allocates nothing, and the lock is never held while the
/// caller's filter runs or for more than this many sessions.
const BROADCAST_BATCH: usize = 32;

/// How often a registry whose node id was drawn at random draws again when
/// the backplane says the id is taken.
const NODE_ID_DRAWS: usize = 8;

/// The live sessions of one node. Cheap to clone; all clones share state.
///
/// ```
/// use msgi::{Frame, Registry, Server};
///
/// // One registry, built outside the server, shared by two servers.
/// let registry = Registry::new();
/// let tcp = Server::builder().registry(registry.clone()).build()?;
/// let other = Server::builder().registry(registry.clone()).build()?;
/// assert_eq!(tcp.registry().node_id(), other.registry().node_id());
/// assert_eq!(registry.connection_count(), 0);
/// assert_eq!(registry.broadcast(Frame::data("hello")).queued, 0);
/// # Ok::<(), msgi::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    node: NodeId,
    /// Sessions handed out so far (the serial part of the next id).
    next_id: AtomicU64,
    maps: RwLock<Maps>,
    /// Set once the backplane has attached this node; the registry calls
    /// it only then, never under `maps`' lock.
    backplane: OnceLock<Arc<dyn Backplane>>,
}

#[derive(Default)]
struct Maps {
    /// Ordered by id, so a broadcast can walk it in batches, resuming after
    /// the last id it saw (ids only grow).
    sessions: BTreeMap<SessionId, Session>,
    /// Announced client ids only. Default client ids (a session id in
    /// decimal) are not stored; an announced id can never be digits only,
    /// so the two never collide.
    clients: HashMap<Arc<str>, SessionId>,
}

/// Which session, on which node, holds a client id: what a cluster knows
/// about a session (a [`Session`] handle exists only on its own node).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Presence {
    session: SessionId,
    client_id: Arc<str>,
}

impl Presence {
    /// Session `session` holds `client_id`.
    pub fn new(session: SessionId, client_id: impl Into<Arc<str>>) -> Presence {
        Presence {
            session,
            client_id: client_id.into(),
        }
    }

    /// The node the session is on.
    pub fn node(&self) -> NodeId {
        self.session.node()
    }

    /// The session's id.
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }
}

/// Where a frame taken by [`Registry::send`] or
/// [`Registry::send_to_client`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Sent {
    /// Into a local session's outbox (as [`Session::send`] returning `Ok`).
    Queued,
    /// To the backplane, for another node: queued there, not yet delivered.
    /// Whether that node had the session and took the frame is reported
    /// on that node ([`LocalNode::deliver`]).
    Forwarded,
}

/// What a broadcast (or a delivery from the backplane) did, counted as it
/// happened: how many local sessions took the frame, how many refused it
/// and why, and whether the frame went on to the other nodes.
///
/// Each local session counts once, in exactly one of the first five
/// fields. What happens on other nodes is counted there (see
/// [`LocalNode::deliver`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// Sessions that queued the frame ([`Session::send`] returned `Ok`).
    pub queued: usize,
    /// Sessions that no longer take pushes ([`SendError::Closed`]).
    pub closed: usize,
    /// Sessions whose outbox was full, now closing as slow consumers
    /// ([`SendError::SlowConsumer`]).
    pub slow_consumers: usize,
    /// Sessions whose framing cannot send a frame this large
    /// ([`SendError::TooLarge`]).
    pub too_large: usize,
    /// A frame for one session or client id found nobody here
    /// ([`SendError::NoSuchSession`]; only in a [`LocalNode::deliver`]
    /// report).
    pub no_such_session: usize,
    /// Whether the frame went on to the other nodes.
    pub remote: Remote,
}

/// Whether a broadcast was handed to the backplane.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Remote {
    /// No: there is no backplane, or the call reaches local sessions only
    /// ([`Registry::broadcast_filter`], [`LocalNode::deliver`]).
    #[default]
    NotSent,
    /// The backplane queued it for the other nodes.
    Queued,
    /// The backplane refused it: the other nodes will not get it.
    Refused(BackplaneError),
}

impl Delivery {
    /// The report of one send.
    fn one(result: Result<(), SendError>) -> Delivery {
        let mut delivery = Delivery::default();
        delivery.count(result);
        delivery
    }

    fn count(&mut self, result: Result<(), SendError>) {
        match result {
            Ok(()) => self.queued += 1,
            Err(SendError::Closed) => self.closed += 1,
            Err(SendError::SlowConsumer) => self.slow_consumers += 1,
            Err(SendError::TooLarge { .. }) => self.too_large += 1,
            Err(SendError::NoSuchSession) => self.no_such_session += 1,
            Err(SendError::Backplane(e)) => self.remote = Remote::Refused(e),
        }
    }

    /// Local sessions (or recipients) that did not take the frame.
    pub fn refused(&self) -> usize {
        self.closed + self.slow_consumers + self.too_large + self.no_such_session
    }

    /// Adds `other`'s counts to these (a backplane summing what the nodes
    /// report); `remote` is kept.
    pub fn add(&mut self, other: &Delivery) {
        self.queued += other.queued;
        self.closed += other.closed;
        self.slow_consumers += other.slow_consumers;
        self.too_large += other.too_large;
        self.no_such_session += other.no_such_session;
    }
}

/// Settings for a [`Registry`]. Made by [`Registry::builder`].
#[derive(Debug, Default)]
pub struct RegistryBuilder {
    node: Option<NodeId>,
    backplane: Option<Arc<dyn Backplane>>,
}

impl RegistryBuilder {
    /// This node's id (default: [`NodeId::random`]).
    pub fn node_id(mut self, node: NodeId) -> RegistryBuilder {
        self.node = Some(node);
        self
    }

    /// Joins the cluster behind `backplane` (default: none, a registry of
    /// local sessions only).
    pub fn backplane(mut self, backplane: Arc<dyn Backplane>) -> RegistryBuilder {
        self.backplane = Some(backplane);
        self
    }

    /// The registry, attached to its backplane. A node id drawn at random
    /// that the backplane says is taken is drawn again (up to 8 times); a
    /// node id that was set is not.
    pub fn build(self) -> Result<Registry, BackplaneError> {
        let Some(backplane) = self.backplane else {
            return Ok(Registry::local(self.node.unwrap_or_else(NodeId::random)));
        };
        let mut draws = 0;
        loop {
            let node = self.node.unwrap_or_else(NodeId::random);
            let registry = Registry::local(node);
            match backplane.attach(LocalNode::new(node, Arc::downgrade(&registry.inner))) {
                Ok(()) => {
                    // Only this thread sets it, once: it cannot be set yet.
                    let _ = registry.inner.backplane.set(backplane);
                    return Ok(registry);
                }
                Err(BackplaneError::NodeIdTaken(_))
                    if self.node.is_none() && draws + 1 < NODE_ID_DRAWS =>
                {
                    draws += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Default for Registry {
    fn default() -> Registry {
        Registry::new()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(backplane) = self.backplane.get() {
            backplane.detach(self.node);
        }
    }
}

impl Inner {
    fn read(&self) -> RwLockReadGuard<'_, Maps> {
        self.maps.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Maps> {
        self.maps.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn backplane(&self) -> Option<&Arc<dyn Backplane>> {
        self.backplane.get()
    }

    fn get(&self, id: SessionId) -> Option<Session> {
        self.read().sessions.get(&id).cloned()
    }

    /// The local session holding `client_id`, announced or default.
    fn get_by_client_id(&self, client_id: &str) -> Option<Session> {
        match SessionId::parse_decimal(client_id) {
            Some(id) => self.get(id).filter(|s| s.announced_client_id().is_none()),
            None => {
                let maps = self.read();
                let id = maps.clients.get(client_id)?;
                maps.sessions.get(id).cloned()
            }
        }
    }

    fn local_send(&self, id: SessionId, frame: Frame) -> Result<(), SendError> {
        self.get(id).ok_or(SendError::NoSuchSession)?.send(frame)
    }

    fn local_send_to_client(&self, client_id: &str, frame: Frame) -> Result<(), SendError> {
        self.get_by_client_id(client_id)
            .ok_or(SendError::NoSuchSession)?
            .send(frame)
    }

    fn presence(&self, client_id: &str) -> Option<Presence> {
        let session = self.get_by_client_id(client_id)?;
        Some(Presence::new(session.id(), client_id))
    }

    /// Closes the local holder of `by`'s client id unless it is `by`'s
    /// session, and forgets the id here at once (sends for it go to the
    /// backplane from now on).
    fn take_over(&self, by: &Presence) -> bool {
        let holder = {
            let mut maps = self.write();
            match maps.clients.get(by.client_id()) {
                Some(id) if *id != by.session() => {
                    let id = *id;
                    maps.clients.remove(by.client_id());
                    maps.sessions.get(&id).cloned()
                }
                _ => None,
            }
        };
        holder.is_some_and(|s| s.close_with(CloseReason::ClientIdTakenOver))
    }
}

/// Queues `frame` (its extensions cleared by the caller) for every local
/// session for which `filter` returns true, without allocating: the
/// sessions are copied out of the map 32 at a time onto the stack, and
/// sent to outside the lock.
fn deliver_local(
    inner: &Inner,
    frame: &Frame,
    mut filter: impl FnMut(&Session) -> bool,
) -> Delivery {
    let mut delivery = Delivery::default();
    // The last id of the previous batch: ids only grow, so the next batch
    // resumes after it.
    let mut after: Option<SessionId> = None;
    loop {
        let mut batch: [Option<Session>; BROADCAST_BATCH] = Default::default();
        let mut taken = 0;
        {
            let maps = inner.read();
            let start = after.map_or(Bound::Unbounded, Bound::Excluded);
            let sessions = maps.sessions.range((start, Bound::Unbounded));
            for (slot, session) in batch.iter_mut().zip(sessions.map(|(_, s)| s)) {
                *slot = Some(session.clone());
                taken += 1;
            }
        }
        // The filter is the caller's code: the lock is released here.
        for session in batch.iter().flatten() {
            if filter(session) {
                delivery.count(session.send(frame.clone()));
            }
        }
        match batch.iter().flatten().last() {
            Some(last) if taken == BROADCAST_BATCH => after = Some(last.id()),
            _ => return delivery,
        }
    }
}

/// Queues `frame` (its extensions cleared by the caller) for every local
/// session, without allocating and without copying a session handle:
/// there is no caller's code to run, so each batch of 32 sessions is sent
/// to under the registry's read lock (a push never blocks and never takes
/// that lock), which is then released before the next batch.
fn deliver_all(inner: &Inner, frame: &Frame) -> Delivery {
    let mut delivery = Delivery::default();
    let mut after: Option<SessionId> = None;
    loop {
        let maps = inner.read();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut taken = 0;
        for (id, session) in maps
            .sessions
            .range((start, Bound::Unbounded))
            .take(BROADCAST_BATCH)
        {
            delivery.count(session.send(frame.clone()));
            after = Some(*id);
            taken += 1;
        }
        drop(maps);
        if taken < BROADCAST_BATCH {
            return delivery;
        }
    }
}

impl Registry {
    /// An empty registry of local sessions, with a node id drawn at random
    /// and no backplane.
    pub fn new() -> Registry {
        Registry::local(NodeId::random())
    }

    /// Settings for a registry: a node id, a backplane.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    fn local(node: NodeId) -> Registry {
        Registry {
            inner: Arc::new(Inner {
                node,
                next_id: AtomicU64::new(0),
                maps: RwLock::new(Maps::default()),
                backplane: OnceLock::new(),
            }),
        }
    }

    /// This node's id: the top bits of every session id it hands out.
    pub fn node_id(&self) -> NodeId {
        self.inner.node
    }

    /// Creates and registers a session for a newly accepted peer.
    pub(crate) fn register(&self, remote: ConnectInfo, outbox: Arc<OutboxLimits>) -> Session {
        let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let id = SessionId::nth(self.inner.node, n);
        let session = Session::new(id, remote, outbox);
        self.inner.write().sessions.insert(id, session.clone());
        session
    }

    /// Removes a session that has ended, and withdraws its announced
    /// client id from the cluster.
    pub(crate) fn remove(&self, session: &Session) {
        let client_id = session.announced_client_id();
        let held = {
            let mut maps = self.inner.write();
            maps.sessions.remove(&session.id());
            match &client_id {
                Some(client_id) if maps.clients.get(client_id) == Some(&session.id()) => {
                    maps.clients.remove(client_id);
                    true
                }
                _ => false,
            }
        };
        // A session taken over by another node was forgotten here then;
        // the backplane keeps the id for its new holder either way.
        if let (Some(backplane), Some(client_id), true) = (self.inner.backplane(), client_id, held)
        {
            let presence = Presence::new(session.id(), client_id);
            if let Err(e) = backplane.withdraw(&presence) {
                tracing::warn!(error = %e, session = %session.id(), "withdrawing a client id failed");
            }
        }
    }

    /// Gives `session` the client id it announced. A session that held the
    /// id before is closed with [`CloseReason::ClientIdTakenOver`]: the
    /// newest announcement wins, so a client that reconnects before its old
    /// connection is noticed dead is not locked out. With a backplane, the
    /// id is announced to the cluster first (a session on another node
    /// holding it is closed there); if the backplane refuses, nothing
    /// changes and its error is returned.
    pub(crate) fn set_client_id(
        &self,
        session: &Session,
        client_id: String,
    ) -> Result<(), BackplaneError> {
        let client_id: Arc<str> = Arc::from(client_id);
        if let Some(backplane) = self.inner.backplane() {
            backplane.announce(&Presence::new(session.id(), client_id.clone()))?;
        }
        let (previous, withdrawn) = {
            let mut maps = self.inner.write();
            let mut withdrawn = None;
            if let Some(old_id) = session.announced_client_id() {
                if maps.clients.get(&old_id) == Some(&session.id()) && old_id != client_id {
                    maps.clients.remove(&old_id);
                    withdrawn = Some(old_id);
                }
            }
            session.set_client_id(client_id.clone());
            let previous = maps
                .clients
                .insert(client_id, session.id())
                .filter(|other| *other != session.id())
                .and_then(|other| maps.sessions.get(&other).cloned());
            (previous, withdrawn)
        };
        if let (Some(backplane), Some(old_id)) = (self.inner.backplane(), withdrawn) {
            if let Err(e) = backplane.withdraw(&Presence::new(session.id(), old_id)) {
                tracing::warn!(error = %e, session = %session.id(), "withdrawing a client id failed");
            }
        }
        if let Some(previous) = previous {
            previous.close_with(CloseReason::ClientIdTakenOver);
        }
        Ok(())
    }

    /// The local session with this id.
    pub fn get(&self, id: SessionId) -> Option<Session> {
        self.inner.get(id)
    }

    /// The local session holding this client id. A session that announced
    /// none is found by its session id in decimal (as
    /// [`Session::client_id`] spells it: no sign, no leading zero).
    /// Announced ids are never digits only, so a peer cannot announce
    /// another session's default id. Sessions of other nodes have no
    /// handle here: see [`lookup`](Registry::lookup).
    pub fn get_by_client_id(&self, client_id: &str) -> Option<Session> {
        self.inner.get_by_client_id(client_id)
    }

    /// The local session holding `client_id`, as a descriptor.
    pub fn presence(&self, client_id: &str) -> Option<Presence> {
        self.inner.presence(client_id)
    }

    /// Which session, on which node, holds `client_id`: this node's first,
    /// then the backplane's answer. Without a backplane, as
    /// [`presence`](Registry::presence).
    pub async fn lookup(&self, client_id: &str) -> Result<Option<Presence>, BackplaneError> {
        if let Some(presence) = self.inner.presence(client_id) {
            return Ok(Some(presence));
        }
        let ours =
            SessionId::parse_decimal(client_id).is_some_and(|id| id.node() == self.inner.node);
        match self.inner.backplane() {
            Some(backplane) if !ours => backplane.lookup(client_id).await,
            _ => Ok(None),
        }
    }

    /// Queues a frame for one session: a local one as [`Session::send`]
    /// does ([`Sent::Queued`]); one of another node through the backplane
    /// ([`Sent::Forwarded`], or [`SendError::Backplane`] if it refused).
    /// Without a backplane, a session of another node is
    /// [`SendError::NoSuchSession`].
    pub fn send(&self, id: SessionId, frame: Frame) -> Result<Sent, SendError> {
        if id.node() == self.inner.node {
            return self.inner.local_send(id, frame).map(|()| Sent::Queued);
        }
        self.forward(Target::Session(id), frame)
    }

    /// Queues a frame for the session holding `client_id`: a local one at
    /// once ([`Sent::Queued`]); otherwise through the backplane, to the
    /// node holding it ([`Sent::Forwarded`]). A default client id names its
    /// node itself, so one of this node that is not here is
    /// [`SendError::NoSuchSession`] without asking the backplane.
    pub fn send_to_client(&self, client_id: &str, frame: Frame) -> Result<Sent, SendError> {
        if let Some(session) = self.inner.get_by_client_id(client_id) {
            return session.send(frame).map(|()| Sent::Queued);
        }
        let ours =
            SessionId::parse_decimal(client_id).is_some_and(|id| id.node() == self.inner.node);
        if ours {
            return Err(SendError::NoSuchSession);
        }
        self.forward(Target::Client(Arc::from(client_id)), frame)
    }

    fn forward(&self, to: Target, frame: Frame) -> Result<Sent, SendError> {
        let backplane = self.inner.backplane().ok_or(SendError::NoSuchSession)?;
        backplane
            .publish(Envelope::new(self.inner.node, to, frame))
            .map(|()| Sent::Forwarded)
            .map_err(SendError::Backplane)
    }

    /// Queues a frame for every session of the cluster: first for every
    /// local session, directly, then, with a backplane, one envelope for
    /// the other nodes. Returns what happened here (see [`Delivery`]):
    /// sessions whose outbox is full are closed as slow consumers and
    /// counted so; nobody waits for them.
    ///
    /// The local part allocates nothing: it walks the registry in batches
    /// of 32 sessions, one visit of the registry's lock each, and each
    /// session gets a clone of the frame, whose payload is shared. A
    /// session that joins while a broadcast runs may or may not get it;
    /// one that has left is skipped.
    pub fn broadcast(&self, mut frame: Frame) -> Delivery {
        // Extensions never reach the wire; do not clone them per session.
        frame.extensions_mut().clear();
        let mut delivery = deliver_all(&self.inner, &frame);
        if let Some(backplane) = self.inner.backplane() {
            delivery.remote =
                match backplane.publish(Envelope::new(self.inner.node, Target::All, frame)) {
                    Ok(()) => Remote::Queued,
                    Err(e) => Remote::Refused(e),
                };
        }
        delivery
    }

    /// Queues a frame for every local session for which `filter` returns
    /// true. A filter is code, which does not travel: other nodes are not
    /// reached.
    ///
    /// Sessions are visited in id order, a few at a time: the registry's
    /// lock is taken once per batch and released before `filter` runs, so
    /// `filter` may use the registry itself. A session that joins while a
    /// broadcast runs may or may not get it; one that has left is skipped.
    pub fn broadcast_filter(
        &self,
        mut frame: Frame,
        filter: impl FnMut(&Session) -> bool,
    ) -> Delivery {
        frame.extensions_mut().clear();
        deliver_local(&self.inner, &frame, filter)
    }

    /// Number of live local sessions (of every server sharing this registry).
    pub fn connection_count(&self) -> usize {
        self.inner.read().sessions.len()
    }

    /// Closes a local session gracefully with `reason` (see
    /// [`Session::close`]). Returns false if there is no such session or it
    /// was already closing.
    pub fn disconnect(&self, id: SessionId, reason: impl Into<String>) -> bool {
        self.get(id).is_some_and(|s| s.close(reason))
    }

    /// A snapshot of the live local sessions.
    pub fn sessions(&self) -> Vec<Session> {
        self.inner.read().sessions.values().cloned().collect()
    }

    /// Closes the sessions of the server whose outbox limits are `server`
    /// (its shutdown), leaving those of other servers sharing the registry.
    pub(crate) fn close_served_with(&self, server: &Arc<OutboxLimits>, reason: CloseReason) {
        for session in self.sessions() {
            if session.served_with(server) {
                session.close_with(reason.clone());
            }
        }
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("node", &self.inner.node)
            .field("connections", &self.connection_count())
            .field("backplane", &self.inner.backplane())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(frames: u32) -> Arc<OutboxLimits> {
        crate::session::limits(frames)
    }

    #[test]
    fn client_id_takeover() {
        let registry = Registry::new();
        let a = registry.register(ConnectInfo::new(), limits(8));
        let b = registry.register(ConnectInfo::new(), limits(8));
        let a_default = a.id().to_string();
        assert_eq!(registry.get_by_client_id(&a_default), Some(a.clone()));
        registry.set_client_id(&a, "alice".into()).unwrap();
        assert_eq!(registry.get_by_client_id(&a_default), None);
        assert_eq!(registry.get_by_client_id("alice"), Some(a.clone()));
        registry.set_client_id(&b, "alice".into()).unwrap();
        assert!(a.is_closing());
        assert_eq!(registry.get_by_client_id("alice"), Some(b.clone()));
        // The old session leaving must not drop the new owner's mapping.
        registry.remove(&a);
        assert_eq!(registry.get_by_client_id("alice"), Some(b.clone()));
        registry.remove(&b);
        assert_eq!(registry.connection_count(), 0);
        assert_eq!(registry.get_by_client_id("alice"), None);
    }

    #[test]
    fn default_client_ids_are_canonical_and_cannot_be_announced() {
        let registry = Registry::new();
        let a = registry.register(ConnectInfo::new(), limits(8));
        let default = a.id().to_string();
        assert_eq!(registry.get_by_client_id(&default), Some(a.clone()));
        assert_eq!(registry.get_by_client_id(&format!("0{default}")), None);
        assert_eq!(registry.get_by_client_id(&format!("+{default}")), None);
        assert_eq!(registry.get_by_client_id(""), None);
        // What a handshake could announce never resolves to a default id.
        assert!(msgi_proto::session::parse_client_id(default.as_bytes()).is_err());
        let b = registry.register(ConnectInfo::new(), limits(8));
        let plus = format!("+{default}");
        registry.set_client_id(&b, plus.clone()).unwrap();
        assert_eq!(registry.get_by_client_id(&default), Some(a.clone()));
        assert_eq!(registry.get_by_client_id(&plus), Some(b));
        assert!(!a.is_closing());
    }

    #[test]
    fn session_ids_carry_the_node_and_count_from_one() {
        let node = NodeId::new(5).unwrap();
        let registry = Registry::builder().node_id(node).build().unwrap();
        let a = registry.register(ConnectInfo::new(), limits(8));
        let b = registry.register(ConnectInfo::new(), limits(8));
        assert_eq!(registry.node_id(), node);
        assert_eq!((a.id().node(), b.id().node()), (node, node));
        assert_eq!(a.id().as_u64(), (5 << 44) | 1);
        assert_eq!(b.id().as_u64(), (5 << 44) | 2);
        // WELCOME and the default client id spell it in decimal.
        assert_eq!(a.client_id(), ((5u64 << 44) | 1).to_string());
        assert_eq!(SessionId::parse_decimal(&a.client_id()), Some(a.id()));
        // Another node hands out other ids for the same count.
        let other = Registry::builder()
            .node_id(NodeId::new(6).unwrap())
            .build()
            .unwrap();
        assert_ne!(other.register(ConnectInfo::new(), limits(8)).id(), a.id());
        // Random node ids by default.
        assert_ne!(
            (0..4)
                .map(|_| Registry::new().node_id())
                .collect::<std::collections::HashSet<_>>()
                .len(),
            1
        );
    }

    #[test]
    fn broadcast_reaches_every_session_across_batches() {
        let registry = Registry::new();
        let sessions: Vec<_> = (0..BROADCAST_BATCH * 2 + 5)
            .map(|_| registry.register(ConnectInfo::new(), limits(4)))
            .collect();
        registry.remove(&sessions[BROADCAST_BATCH]);
        assert_eq!(
            registry.broadcast(Frame::data("x")).queued,
            sessions.len() - 1
        );
        let mut visited = Vec::new();
        let inner = registry.clone();
        let sent = registry.broadcast_filter(Frame::data("y"), |s| {
            // May use the registry: no lock is held while this runs.
            visited.push(s.id());
            inner.get(s.id()).is_some() && s.id().as_u64() % 2 == 0
        });
        assert_eq!(visited.len(), sessions.len() - 1);
        assert!(
            visited.windows(2).all(|w| w[0] < w[1]),
            "each once, in order"
        );
        assert_eq!(
            sent.queued,
            visited.iter().filter(|id| id.as_u64() % 2 == 0).count()
        );
    }

    #[test]
    fn a_broadcast_filter_may_use_the_registry() {
        let registry = Registry::new();
        let a = registry.register(ConnectInfo::new(), limits(4));
        let _b = registry.register(ConnectInfo::new(), limits(4));
        let inner = registry.clone();
        let sent = registry.broadcast_filter(Frame::data("x"), |s| {
            inner.get(s.id()).is_some() && s.id() != a.id()
        });
        assert_eq!(sent.queued, 1);
    }

    #[test]
    fn a_broadcast_reports_each_refusal_by_cause() {
        let registry = Registry::new();
        let full = registry.register(ConnectInfo::new(), limits(1));
        let closed = registry.register(ConnectInfo::new(), limits(8));
        let small = registry.register(
            ConnectInfo::new(),
            Arc::new(OutboxLimits {
                max_frame_len: 12,
                ..*limits(8)
            }),
        );
        let _fine = registry.register(ConnectInfo::new(), limits(8));
        assert_eq!(full.send(Frame::data("x")), Ok(()));
        closed.close_outbox();
        let delivery = registry.broadcast(Frame::data("news"));
        assert_eq!(
            delivery,
            Delivery {
                queued: 1,
                closed: 1,
                slow_consumers: 1,
                too_large: 1,
                no_such_session: 0,
                remote: Remote::NotSent,
            }
        );
        assert_eq!(delivery.refused(), 3);
        assert!(full.is_closing() && !small.is_closing());
        // Filtered out sessions are not counted at all.
        let delivery = registry.broadcast_filter(Frame::data("x"), |s| s.id() == small.id());
        assert_eq!((delivery.queued, delivery.refused()), (1, 0));
    }

    #[test]
    fn sends_to_unknown_sessions_without_a_backplane() {
        let registry = Registry::new();
        let a = registry.register(ConnectInfo::new(), limits(8));
        assert_eq!(registry.send(a.id(), Frame::data("z")), Ok(Sent::Queued));
        let missing = SessionId::nth(registry.node_id(), 99);
        assert_eq!(
            registry.send(missing, Frame::data("z")),
            Err(SendError::NoSuchSession)
        );
        let elsewhere = SessionId::nth(
            NodeId::new(registry.node_id().get() % NodeId::MAX + 1).unwrap(),
            0,
        );
        assert_eq!(
            registry.send(elsewhere, Frame::data("z")),
            Err(SendError::NoSuchSession)
        );
        assert_eq!(
            registry.send_to_client(&elsewhere.to_string(), Frame::data("z")),
            Err(SendError::NoSuchSession)
        );
        assert_eq!(
            registry.send_to_client("nobody", Frame::data("z")),
            Err(SendError::NoSuchSession)
        );
    }

    #[test]
    fn what_a_receiving_node_refuses_is_reported_to_the_backplane() {
        let bus = Arc::new(MemoryBackplane::new());
        let a = Registry::builder().backplane(bus.clone()).build().unwrap();
        let b = Registry::builder().backplane(bus.clone()).build().unwrap();
        let full = b.register(ConnectInfo::new(), limits(1));
        let closed = b.register(ConnectInfo::new(), limits(8));
        let fine = b.register(ConnectInfo::new(), limits(8));
        closed.close_outbox();
        assert_eq!(full.send(Frame::data("first")), Ok(()));

        let delivery = a.broadcast(Frame::data("news"));
        assert_eq!((delivery.queued, delivery.remote), (0, Remote::Queued));
        let reported = bus.reported();
        assert_eq!(
            (reported.queued, reported.closed, reported.slow_consumers),
            (1, 1, 1)
        );
        assert!(full.is_closing() && !fine.is_closing());
        // A session of B that has ended: forwarded, reported missing.
        b.remove(&fine);
        assert_eq!(a.send(fine.id(), Frame::data("x")), Ok(Sent::Forwarded));
        assert_eq!(bus.reported().no_such_session, 1);
        // Extensions do not cross nodes (they could hold a `Session`).
        let mut frame = Frame::data("y");
        frame.extensions_mut().insert(closed.clone());
        assert!(Envelope::new(a.node_id(), Target::All, frame)
            .frame()
            .extensions()
            .is_empty());
    }

    #[test]
    fn a_registry_without_handles_finds_nobody() {
        let bus = Arc::new(MemoryBackplane::new());
        let a = Registry::builder().backplane(bus.clone()).build().unwrap();
        let b = Registry::builder().backplane(bus.clone()).build().unwrap();
        let session = b.register(ConnectInfo::new(), limits(8));
        let node = LocalNode::new(b.node_id(), Arc::downgrade(&b.inner));
        let id = session.id();
        drop(session);
        drop(b);
        // B's registry is gone: it left the bus, and its handle delivers
        // to nobody.
        assert_eq!(bus.nodes(), vec![a.node_id()]);
        let delivery = node.deliver(&Envelope::new(
            a.node_id(),
            Target::Session(id),
            Frame::data("x"),
        ));
        assert_eq!(delivery.no_such_session, 1);
        assert!(node.presence(&id.to_string()).is_none());
    }

    #[test]
    fn servers_sharing_a_registry_close_only_their_own_sessions() {
        let registry = Registry::new();
        let (one, two) = (limits(8), limits(8));
        let a = registry.register(ConnectInfo::new(), one.clone());
        let b = registry.register(ConnectInfo::new(), two);
        registry.close_served_with(&one, CloseReason::ServerShutdown);
        assert!(a.is_closing());
        assert!(!b.is_closing());
    }
}
