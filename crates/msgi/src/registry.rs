//! The sessions of one server: lookup by session id or client id, sending
//! to one session, broadcasting, and closing sessions.
//!
//! The registry is only touched when sessions come and go and when the
//! application pushes frames; the request path of a session never takes its
//! lock. Sends never block: see [`Session::send`] for what happens when a
//! session's outbox is full.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::session::{CloseReason, OutboxLimits, PeerAddr, SendError, Session, SessionId};
use msgi_proto::Frame;

/// Sessions a broadcast copies out of the registry per visit of its lock:
/// a broadcast allocates nothing, and the lock is never held while the
/// caller's filter runs or for more than this many sessions.
const BROADCAST_BATCH: usize = 32;

/// The live sessions of a server. Cheap to clone; all clones share state.
///
/// ```
/// use msgi::{Frame, Server};
///
/// let server = Server::builder().build()?;
/// let registry = server.registry();
/// assert_eq!(registry.connection_count(), 0);
/// assert_eq!(registry.broadcast(Frame::data("hello")), 0);
/// # Ok::<(), msgi::ConfigError>(())
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: AtomicU64,
    maps: RwLock<Maps>,
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

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, Maps> {
        self.inner
            .maps
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Maps> {
        self.inner
            .maps
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates and registers a session for a newly accepted peer.
    pub(crate) fn register(&self, remote: PeerAddr, outbox: Arc<OutboxLimits>) -> Session {
        let id = SessionId(self.inner.next_id.fetch_add(1, Ordering::Relaxed) + 1);
        let session = Session::new(id, remote, outbox);
        self.write().sessions.insert(id, session.clone());
        session
    }

    /// Removes a session that has ended.
    pub(crate) fn remove(&self, session: &Session) {
        let client_id = session.announced_client_id();
        let mut maps = self.write();
        maps.sessions.remove(&session.id());
        if let Some(client_id) = client_id {
            if maps.clients.get(&client_id) == Some(&session.id()) {
                maps.clients.remove(&client_id);
            }
        }
    }

    /// Gives `session` the client id it announced. A session that held the
    /// id before is closed with [`CloseReason::ClientIdTakenOver`]: the
    /// newest announcement wins, so a client that reconnects before its old
    /// connection is noticed dead is not locked out.
    pub(crate) fn set_client_id(&self, session: &Session, client_id: String) {
        let client_id: Arc<str> = Arc::from(client_id);
        let previous = {
            let mut maps = self.write();
            if let Some(old_id) = session.announced_client_id() {
                if maps.clients.get(&old_id) == Some(&session.id()) {
                    maps.clients.remove(&old_id);
                }
            }
            session.set_client_id(client_id.clone());
            maps.clients
                .insert(client_id, session.id())
                .filter(|other| *other != session.id())
                .and_then(|other| maps.sessions.get(&other).cloned())
        };
        if let Some(previous) = previous {
            previous.close_with(CloseReason::ClientIdTakenOver);
        }
    }

    /// The session with this id.
    pub fn get(&self, id: SessionId) -> Option<Session> {
        self.read().sessions.get(&id).cloned()
    }

    /// The session holding this client id. A session that announced none
    /// is found by its session id in decimal (as [`Session::client_id`]
    /// spells it: no sign, no leading zero). Announced ids are never digits
    /// only, so a peer cannot announce another session's default id.
    pub fn get_by_client_id(&self, client_id: &str) -> Option<Session> {
        match default_client_id(client_id) {
            Some(id) => self
                .read()
                .sessions
                .get(&id)
                .filter(|s| s.announced_client_id().is_none())
                .cloned(),
            None => {
                let maps = self.read();
                let id = maps.clients.get(client_id)?;
                maps.sessions.get(id).cloned()
            }
        }
    }

    /// Queues a frame for one session (see [`Session::send`]).
    pub fn send(&self, id: SessionId, frame: Frame) -> Result<(), SendError> {
        self.get(id).ok_or(SendError::NoSuchSession)?.send(frame)
    }

    /// Queues a frame for the session holding `client_id`.
    pub fn send_to_client(&self, client_id: &str, frame: Frame) -> Result<(), SendError> {
        self.get_by_client_id(client_id)
            .ok_or(SendError::NoSuchSession)?
            .send(frame)
    }

    /// Queues a frame for every session; returns how many took it.
    ///
    /// Sessions whose outbox is full are closed as slow consumers and do not
    /// count; nobody waits for them. A broadcast allocates nothing: it
    /// walks the registry in small batches (see
    /// [`broadcast_filter`](Registry::broadcast_filter)) and each session
    /// gets a clone of the frame, whose payload is shared.
    pub fn broadcast(&self, frame: Frame) -> usize {
        self.broadcast_filter(frame, |_| true)
    }

    /// Queues a frame for every session for which `filter` returns true.
    ///
    /// Sessions are visited in id order, a few at a time: the registry's
    /// lock is taken once per batch and released before `filter` runs, so
    /// `filter` may use the registry itself. A session that joins while a
    /// broadcast runs may or may not get it; one that has left is skipped.
    pub fn broadcast_filter(
        &self,
        mut frame: Frame,
        mut filter: impl FnMut(&Session) -> bool,
    ) -> usize {
        // Extensions never reach the wire; do not clone them per session.
        frame.extensions_mut().clear();
        let mut sent = 0;
        let mut from = SessionId(0);
        loop {
            let mut batch: [Option<Session>; BROADCAST_BATCH] = Default::default();
            let mut taken = 0;
            for (slot, session) in batch
                .iter_mut()
                .zip(self.read().sessions.range(from..).map(|(_, s)| s))
            {
                *slot = Some(session.clone());
                taken += 1;
            }
            // The filter is the caller's code: the lock is released here.
            for session in batch.iter().flatten() {
                if filter(session) && session.send(frame.clone()).is_ok() {
                    sent += 1;
                }
            }
            match batch.iter().flatten().last() {
                Some(last) if taken == BROADCAST_BATCH => {
                    from = SessionId(last.id().0.saturating_add(1));
                }
                _ => return sent,
            }
        }
    }

    /// Number of live sessions.
    pub fn connection_count(&self) -> usize {
        self.read().sessions.len()
    }

    /// Closes a session gracefully with `reason` (see [`Session::close`]).
    /// Returns false if there is no such session or it was already closing.
    pub fn disconnect(&self, id: SessionId, reason: impl Into<String>) -> bool {
        self.get(id).is_some_and(|s| s.close(reason))
    }

    /// A snapshot of the live sessions.
    pub fn sessions(&self) -> Vec<Session> {
        self.read().sessions.values().cloned().collect()
    }

    pub(crate) fn close_all(&self, reason: CloseReason) {
        for session in self.sessions() {
            session.close_with(reason.clone());
        }
    }
}

/// The session id a default client id names: canonical decimal only, as
/// [`SessionId`]'s `Display` writes it (`7`, not `07` or `+7`).
fn default_client_id(client_id: &str) -> Option<SessionId> {
    let canonical = !client_id.is_empty()
        && client_id.bytes().all(|b| b.is_ascii_digit())
        && (client_id == "0" || !client_id.starts_with('0'));
    if !canonical {
        return None;
    }
    client_id.parse().ok().map(SessionId)
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("connections", &self.connection_count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_takeover() {
        let registry = Registry::new();
        let a = registry.register(PeerAddr::Unknown, crate::session::limits(8));
        let b = registry.register(PeerAddr::Unknown, crate::session::limits(8));
        assert_eq!(registry.get_by_client_id("1"), Some(a.clone()));
        registry.set_client_id(&a, "alice".into());
        assert_eq!(registry.get_by_client_id("1"), None);
        assert_eq!(registry.get_by_client_id("alice"), Some(a.clone()));
        registry.set_client_id(&b, "alice".into());
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
        let a = registry.register(PeerAddr::Unknown, crate::session::limits(8));
        assert_eq!(registry.get_by_client_id("1"), Some(a.clone()));
        assert_eq!(registry.get_by_client_id("01"), None);
        assert_eq!(registry.get_by_client_id("+1"), None);
        assert_eq!(registry.get_by_client_id(""), None);
        // What a handshake could announce never resolves to a default id.
        assert!(msgi_proto::session::parse_client_id(b"1").is_err());
        let b = registry.register(PeerAddr::Unknown, crate::session::limits(8));
        registry.set_client_id(&b, "+1".into());
        assert_eq!(registry.get_by_client_id("1"), Some(a.clone()));
        assert_eq!(registry.get_by_client_id("+1"), Some(b));
        assert!(!a.is_closing());
    }

    #[test]
    fn broadcast_reaches_every_session_across_batches() {
        let registry = Registry::new();
        let sessions: Vec<_> = (0..BROADCAST_BATCH * 2 + 5)
            .map(|_| registry.register(PeerAddr::Unknown, crate::session::limits(4)))
            .collect();
        registry.remove(&sessions[BROADCAST_BATCH]);
        assert_eq!(registry.broadcast(Frame::data("x")), sessions.len() - 1);
        let mut visited = Vec::new();
        let inner = registry.clone();
        let sent = registry.broadcast_filter(Frame::data("y"), |s| {
            // May use the registry: no lock is held while this runs.
            visited.push(s.id());
            inner.get(s.id()).is_some() && s.id().0 % 2 == 0
        });
        assert_eq!(visited.len(), sessions.len() - 1);
        assert!(
            visited.windows(2).all(|w| w[0] < w[1]),
            "each once, in order"
        );
        assert_eq!(sent, visited.iter().filter(|id| id.0 % 2 == 0).count());
    }

    #[test]
    fn a_broadcast_filter_may_use_the_registry() {
        let registry = Registry::new();
        let a = registry.register(PeerAddr::Unknown, crate::session::limits(4));
        let _b = registry.register(PeerAddr::Unknown, crate::session::limits(4));
        let inner = registry.clone();
        let sent = registry.broadcast_filter(Frame::data("x"), |s| {
            inner.get(s.id()).is_some() && s.id() != a.id()
        });
        assert_eq!(sent, 1);
    }

    #[test]
    fn broadcast_counts_and_filters() {
        let registry = Registry::new();
        let a = registry.register(PeerAddr::Unknown, crate::session::limits(1));
        let _b = registry.register(PeerAddr::Unknown, crate::session::limits(1));
        assert_eq!(
            registry.broadcast_filter(Frame::data("x"), |s| s.id() != a.id()),
            1
        );
        assert_eq!(registry.broadcast(Frame::data("y")), 1, "b is full now");
        assert_eq!(
            registry.send(SessionId(99), Frame::data("z")),
            Err(SendError::NoSuchSession)
        );
    }
}
