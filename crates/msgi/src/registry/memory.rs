//! [`MemoryBackplane`]: the registries of one process joined as a cluster.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures_util::future::BoxFuture;

use super::backplane::{Backplane, BackplaneError, Envelope, LocalNode, Target};
use super::{Delivery, Presence};
use crate::session::{NodeId, SessionId};

/// A backplane inside one process: every registry attached to it is a
/// node, and it delivers envelopes by calling the receiving nodes at once
/// (on the publisher's thread, outside its own lock).
///
/// It keeps the promises of [`Backplane`] and is what the cluster tests
/// run on; it also joins registries that must stay apart in one process
/// (two tenants with their own client ids, a test of a cluster-aware
/// application). What the receiving nodes report is added up in
/// [`reported`](MemoryBackplane::reported).
///
/// ```
/// use std::sync::Arc;
/// use msgi::{Frame, MemoryBackplane, Registry};
///
/// let bus = Arc::new(MemoryBackplane::new());
/// let a = Registry::builder().backplane(bus.clone()).build()?;
/// let b = Registry::builder().backplane(bus.clone()).build()?;
/// assert_ne!(a.node_id(), b.node_id());
/// let delivery = a.broadcast(Frame::data("to every node"));
/// assert_eq!(delivery.remote, msgi::Remote::Queued);
/// # Ok::<(), msgi::BackplaneError>(())
/// ```
#[derive(Default)]
pub struct MemoryBackplane {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    nodes: BTreeMap<NodeId, LocalNode>,
    /// Announced client ids and who holds them.
    clients: HashMap<Arc<str>, Presence>,
    /// What the receiving nodes reported, added up.
    reported: Delivery,
}

impl MemoryBackplane {
    /// A backplane with no node attached.
    pub fn new() -> MemoryBackplane {
        MemoryBackplane::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The attached nodes.
    pub fn nodes(&self) -> Vec<NodeId> {
        self.state().nodes.keys().copied().collect()
    }

    /// What the receiving nodes' deliveries reported, added up: frames
    /// queued, and refused (closed sessions, slow consumers, frames too
    /// large, nobody there).
    pub fn reported(&self) -> Delivery {
        self.state().reported.clone()
    }

    /// The node a default client id (a session id in decimal) or an
    /// announced one is on.
    fn node_of(state: &State, client_id: &str) -> Option<LocalNode> {
        let node = match SessionId::parse_decimal(client_id) {
            Some(id) => id.node(),
            None => state.clients.get(client_id)?.node(),
        };
        state.nodes.get(&node).cloned()
    }
}

impl Backplane for MemoryBackplane {
    fn attach(&self, node: LocalNode) -> Result<(), BackplaneError> {
        let mut state = self.state();
        if state.nodes.contains_key(&node.id()) {
            return Err(BackplaneError::NodeIdTaken(node.id()));
        }
        state.nodes.insert(node.id(), node);
        Ok(())
    }

    fn detach(&self, node: NodeId) {
        let mut state = self.state();
        state.nodes.remove(&node);
        state.clients.retain(|_, presence| presence.node() != node);
    }

    fn publish(&self, envelope: Envelope) -> Result<(), BackplaneError> {
        // Receivers are called outside the lock: a delivery may drop the
        // last handle of a registry, whose drop detaches it from here.
        let receivers: Vec<LocalNode> = {
            let state = self.state();
            match envelope.to() {
                Target::All => state
                    .nodes
                    .values()
                    .filter(|n| n.id() != envelope.from())
                    .cloned()
                    .collect(),
                Target::Session(id) => state.nodes.get(&id.node()).cloned().into_iter().collect(),
                Target::Client(client_id) => MemoryBackplane::node_of(&state, client_id)
                    .into_iter()
                    .collect(),
            }
        };
        let mut report = Delivery::default();
        if receivers.is_empty() && !matches!(envelope.to(), Target::All) {
            report.no_such_session = 1;
        }
        for node in &receivers {
            report.add(&node.deliver(&envelope));
        }
        self.state().reported.add(&report);
        Ok(())
    }

    fn announce(&self, presence: &Presence) -> Result<(), BackplaneError> {
        let previous = {
            let mut state = self.state();
            let previous = state
                .clients
                .insert(Arc::from(presence.client_id()), presence.clone());
            // A node handles its own sessions' takeovers itself.
            previous
                .filter(|p| p.node() != presence.node())
                .and_then(|p| state.nodes.get(&p.node()).cloned())
        };
        if let Some(node) = previous {
            node.take_over(presence);
        }
        Ok(())
    }

    fn withdraw(&self, presence: &Presence) -> Result<(), BackplaneError> {
        let mut state = self.state();
        if state.clients.get(presence.client_id()) == Some(presence) {
            state.clients.remove(presence.client_id());
        }
        Ok(())
    }

    fn lookup<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Presence>, BackplaneError>> {
        let node = MemoryBackplane::node_of(&self.state(), client_id);
        let presence = node.and_then(|node| node.presence(client_id));
        Box::pin(async move { Ok(presence) })
    }
}

impl fmt::Debug for MemoryBackplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("MemoryBackplane")
            .field("nodes", &state.nodes.keys().collect::<Vec<_>>())
            .field("clients", &state.clients.len())
            .finish()
    }
}
