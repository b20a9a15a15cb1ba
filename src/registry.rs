//! The sessions of one server: lookup by session id or client id, sending
//! to one session, broadcasting, and closing sessions.
//!
//! The registry is only touched when sessions come and go and when the
//! application pushes frames; the request path of a session never takes its
//! lock. Sends never block: see [`Session::send`] for what happens when a
//! session's outbox is full.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::frame::Frame;
use crate::session::{CloseReason, PeerAddr, SendError, Session, SessionId};

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
    sessions: HashMap<SessionId, Session>,
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

    /// Creates and registers a session for a newly accepted peer, whose
    /// framing sends frames of at most `max_frame_len` bytes
    /// (`Framing::max_encoded_len`).
    pub(crate) fn register(
        &self,
        remote: PeerAddr,
        outbox_capacity: usize,
        max_frame_len: usize,
    ) -> Session {
        let id = SessionId(self.inner.next_id.fetch_add(1, Ordering::Relaxed) + 1);
        let session = Session::new(id, remote, outbox_capacity, max_frame_len);
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
    /// is found by its session id in decimal.
    pub fn get_by_client_id(&self, client_id: &str) -> Option<Session> {
        let maps = self.read();
        if let Some(id) = maps.clients.get(client_id) {
            return maps.sessions.get(id).cloned();
        }
        let id = SessionId(client_id.parse().ok()?);
        maps.sessions
            .get(&id)
            .filter(|s| s.announced_client_id().is_none())
            .cloned()
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
    /// count; nobody waits for them.
    pub fn broadcast(&self, frame: Frame) -> usize {
        self.broadcast_filter(frame, |_| true)
    }

    /// Queues a frame for every session for which `filter` returns true.
    pub fn broadcast_filter(
        &self,
        mut frame: Frame,
        mut filter: impl FnMut(&Session) -> bool,
    ) -> usize {
        // Extensions never reach the wire; do not clone them per session.
        frame.extensions_mut().clear();
        // The filter is the caller's code: run it without holding the lock,
        // so it may use the registry itself.
        self.sessions()
            .iter()
            .filter(|s| filter(s))
            .filter(|s| s.send(frame.clone()).is_ok())
            .count()
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
        let a = registry.register(PeerAddr::Unknown, 8, usize::MAX);
        let b = registry.register(PeerAddr::Unknown, 8, usize::MAX);
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
    fn a_broadcast_filter_may_use_the_registry() {
        let registry = Registry::new();
        let a = registry.register(PeerAddr::Unknown, 4, usize::MAX);
        let _b = registry.register(PeerAddr::Unknown, 4, usize::MAX);
        let inner = registry.clone();
        let sent = registry.broadcast_filter(Frame::data("x"), |s| {
            inner.get(s.id()).is_some() && s.id() != a.id()
        });
        assert_eq!(sent, 1);
    }

    #[test]
    fn broadcast_counts_and_filters() {
        let registry = Registry::new();
        let a = registry.register(PeerAddr::Unknown, 1, usize::MAX);
        let _b = registry.register(PeerAddr::Unknown, 1, usize::MAX);
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
