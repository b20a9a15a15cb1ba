//! The seam under the registry: what crosses nodes when several registries
//! form a cluster (a message bus such as NATS, or [`MemoryBackplane`] in one
//! process).
//!
//! A registry delivers to its own sessions itself, then hands what is for
//! other nodes to its backplane, once per send or broadcast: a broadcast
//! reaches the local sessions without touching the backplane's queue, and
//! a registry without a backplane pays nothing for the seam.
//!
//! [`MemoryBackplane`]: crate::MemoryBackplane

use std::error::Error as StdError;
use std::fmt;
use std::sync::{Arc, Weak};

use futures_util::future::BoxFuture;
use msgi_proto::Frame;

use super::{Delivery, Inner, Presence};
use crate::session::{NodeId, SessionId};

/// What connects the registries of a cluster: frames for other nodes'
/// sessions, broadcasts, and which node holds which client id.
///
/// Object-safe; a registry holds it as `Arc<dyn Backplane>`. Every method
/// but [`lookup`](Backplane::lookup) is called on the sender's thread while
/// it publishes, so it must not block: queue the work (a bus client's
/// bounded outgoing buffer) and say [`BackplaneError::Full`] when the queue
/// is full, rather than wait. The registry never calls the backplane while
/// it holds its own lock, so a backplane may call a [`LocalNode`] (its own
/// included) from inside any method.
///
/// # What an implementation promises
///
/// - [`attach`](Backplane::attach) refuses a node id already attached
///   ([`BackplaneError::NodeIdTaken`]): session ids are unique only while
///   node ids are.
/// - [`publish`](Backplane::publish): an envelope to [`Target::All`] is
///   given to [`LocalNode::deliver`] of every other attached node, never
///   back to its sender (which delivered it already); one to
///   [`Target::Session`] to the node of that session id
///   ([`SessionId::node`]); one to [`Target::Client`] to the node that
///   announced that client id, or, for a digits-only (default) client id,
///   to the node of the session id it spells. `Ok` means queued, not
///   delivered: what each receiving node's [`LocalNode::deliver`] reports
///   (closed sessions, slow consumers, frames too large, nobody there) is
///   the backplane's to count or carry back.
/// - [`announce`](Backplane::announce): the newest announcement of a client
///   id wins across the cluster; the node that held it before is told with
///   [`LocalNode::take_over`] (a node is not told about its own
///   announcements: its registry has handled them).
/// - [`withdraw`](Backplane::withdraw) removes a client id only while it
///   still names the withdrawing session: a session taken over that ends
///   later does not remove its successor.
pub trait Backplane: Send + Sync + fmt::Debug + 'static {
    /// Joins `node` to the cluster: from now on it receives what is for
    /// it through `node`'s methods. Called once, when the registry is
    /// built.
    fn attach(&self, node: LocalNode) -> Result<(), BackplaneError>;

    /// Leaves the cluster: called when the last handle of node `node`'s
    /// registry is dropped.
    fn detach(&self, node: NodeId);

    /// Queues `envelope` for the nodes it is for (see the trait's promises).
    fn publish(&self, envelope: Envelope) -> Result<(), BackplaneError>;

    /// Tells the cluster that `presence`'s session now holds its client id
    /// (an announced one: default client ids are never announced, their
    /// node is in the session id).
    fn announce(&self, presence: &Presence) -> Result<(), BackplaneError>;

    /// Tells the cluster that `presence`'s session no longer holds its
    /// client id.
    fn withdraw(&self, presence: &Presence) -> Result<(), BackplaneError>;

    /// Which session, on which node, holds `client_id` (announced, or a
    /// default one), as far as the cluster knows.
    fn lookup<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Presence>, BackplaneError>>;
}

/// Why a backplane did not take a message or an announcement.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BackplaneError {
    /// Its outgoing queue is full: nothing was queued.
    #[error("the backplane's queue is full")]
    Full,
    /// It is closed or lost its connection to the bus.
    #[error("the backplane is closed")]
    Closed,
    /// Another node with this id is attached already.
    #[error("node id {0} is already attached to the backplane")]
    NodeIdTaken(NodeId),
    /// Anything else, with its cause.
    #[error("the backplane failed")]
    Failed(#[source] Arc<dyn StdError + Send + Sync>),
}

impl PartialEq for BackplaneError {
    fn eq(&self, other: &BackplaneError) -> bool {
        match (self, other) {
            (BackplaneError::Full, BackplaneError::Full)
            | (BackplaneError::Closed, BackplaneError::Closed) => true,
            (BackplaneError::NodeIdTaken(a), BackplaneError::NodeIdTaken(b)) => a == b,
            (BackplaneError::Failed(a), BackplaneError::Failed(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for BackplaneError {}

/// Whom an [`Envelope`] is for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// One session, on the node its id names.
    Session(SessionId),
    /// The session holding this client id, wherever it is.
    Client(Arc<str>),
    /// Every session of every other node.
    All,
}

/// A frame on its way to other nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    from: NodeId,
    to: Target,
    frame: Frame,
}

impl Envelope {
    /// `frame` from node `from` for `to`; the frame's extensions are
    /// dropped (they never reach the wire, nor another node).
    pub fn new(from: NodeId, to: Target, mut frame: Frame) -> Envelope {
        frame.extensions_mut().clear();
        Envelope { from, to, frame }
    }

    /// The node that published it.
    pub fn from(&self) -> NodeId {
        self.from
    }

    /// Whom it is for.
    pub fn to(&self) -> &Target {
        &self.to
    }

    /// The frame.
    pub fn frame(&self) -> &Frame {
        &self.frame
    }
}

/// A backplane's handle on one node's registry: how what the cluster
/// sends reaches that node's sessions. Cheap to clone; it does not keep
/// the registry alive (once it is gone, deliveries find nobody).
#[derive(Clone)]
pub struct LocalNode {
    node: NodeId,
    registry: Weak<Inner>,
}

impl LocalNode {
    pub(super) fn new(node: NodeId, registry: Weak<Inner>) -> LocalNode {
        LocalNode { node, registry }
    }

    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.node
    }

    /// Delivers `envelope` to this node's sessions (never back to the
    /// backplane), and reports what happened: as
    /// [`Registry::broadcast`](crate::Registry::broadcast) for
    /// [`Target::All`], one refusal or one queued frame for a session or a
    /// client id (`no_such_session` when it is not here).
    pub fn deliver(&self, envelope: &Envelope) -> Delivery {
        let Some(inner) = self.registry.upgrade() else {
            return Delivery {
                no_such_session: usize::from(!matches!(envelope.to, Target::All)),
                ..Delivery::default()
            };
        };
        // The envelope's frame has no extensions (`Envelope::new`).
        let frame = &envelope.frame;
        match &envelope.to {
            Target::All => super::deliver_local(&inner, frame, |_| true),
            Target::Session(id) => Delivery::one(inner.local_send(*id, frame.clone())),
            Target::Client(client_id) => {
                Delivery::one(inner.local_send_to_client(client_id, frame.clone()))
            }
        }
    }

    /// Another node's session (`by`) announced a client id this node may
    /// hold: the local session holding it is closed with
    /// [`CloseReason::ClientIdTakenOver`](crate::CloseReason::ClientIdTakenOver),
    /// and the id no longer resolves here. Returns true if a session was
    /// closed.
    pub fn take_over(&self, by: &Presence) -> bool {
        self.registry
            .upgrade()
            .is_some_and(|inner| inner.take_over(by))
    }

    /// The local session holding `client_id` (announced, or a default id
    /// of this node), as a descriptor.
    pub fn presence(&self, client_id: &str) -> Option<Presence> {
        self.registry
            .upgrade()
            .and_then(|inner| inner.presence(client_id))
    }
}

impl fmt::Debug for LocalNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalNode")
            .field("node", &self.node)
            .field("alive", &(self.registry.strong_count() > 0))
            .finish()
    }
}
