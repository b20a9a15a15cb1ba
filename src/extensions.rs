//! Typed context carried with a frame inside one process, in the manner of
//! `http::Extensions`.
//!
//! The session that received a frame is attached to every request, so it
//! has a slot of its own: attaching it costs no allocation. Other types go
//! into an `http::Extensions` map, allocated on first use.

use std::any::Any;
use std::fmt;

use crate::session::Session;

/// A map from type to value, at most one value per type.
///
/// ```
/// use msgi::Extensions;
///
/// #[derive(Clone, Debug, PartialEq)]
/// struct UserId(u64);
///
/// let mut ext = Extensions::new();
/// assert_eq!(ext.insert(UserId(7)), None);
/// assert_eq!(ext.get::<UserId>(), Some(&UserId(7)));
/// assert_eq!(ext.remove::<UserId>(), Some(UserId(7)));
/// assert!(ext.is_empty());
/// ```
#[derive(Clone, Default)]
pub struct Extensions {
    session: Option<Session>,
    other: http::Extensions,
}

/// Moves `value` out as a `U` if `T` and `U` are the same type.
fn cast<T: 'static, U: 'static>(value: T) -> Result<U, T> {
    let mut slot = Some(value);
    match (&mut slot as &mut dyn Any).downcast_mut::<Option<U>>() {
        Some(u) => u
            .take()
            .ok_or_else(|| unreachable!("the slot was just filled")),
        None => Err(slot.unwrap_or_else(|| unreachable!("the slot was not taken"))),
    }
}

impl Extensions {
    /// An empty map; allocates nothing.
    pub fn new() -> Extensions {
        Extensions::default()
    }

    /// Inserts a value, returning the previous value of that type.
    pub fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) -> Option<T> {
        match cast::<T, Session>(value) {
            Ok(session) => self
                .session
                .replace(session)
                .and_then(|old| cast::<Session, T>(old).ok()),
            Err(value) => self.other.insert(value),
        }
    }

    /// The value of type `T`, if any.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        match &self.session {
            Some(session) if std::any::TypeId::of::<T>() == std::any::TypeId::of::<Session>() => {
                (session as &dyn Any).downcast_ref()
            }
            _ => self.other.get(),
        }
    }

    /// The value of type `T`, mutably.
    pub fn get_mut<T: Send + Sync + 'static>(&mut self) -> Option<&mut T> {
        match &mut self.session {
            Some(session) if std::any::TypeId::of::<T>() == std::any::TypeId::of::<Session>() => {
                (session as &mut dyn Any).downcast_mut()
            }
            _ => self.other.get_mut(),
        }
    }

    /// Removes and returns the value of type `T`.
    pub fn remove<T: Send + Sync + 'static>(&mut self) -> Option<T> {
        if std::any::TypeId::of::<T>() == std::any::TypeId::of::<Session>() {
            return self.session.take().and_then(|s| cast::<Session, T>(s).ok());
        }
        self.other.remove()
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        self.session = None;
        self.other.clear();
    }

    /// True when the map holds nothing.
    pub fn is_empty(&self) -> bool {
        self.session.is_none() && self.other.is_empty()
    }

    /// Number of values held.
    pub fn len(&self) -> usize {
        usize::from(self.session.is_some()) + self.other.len()
    }
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extensions")
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{PeerAddr, SessionId};

    #[test]
    fn session_slot_and_other_types() {
        let mut ext = Extensions::new();
        let a = Session::new(SessionId(1), PeerAddr::Unknown, crate::session::limits(1));
        let b = Session::new(SessionId(2), PeerAddr::Unknown, crate::session::limits(1));
        assert!(ext.insert(a.clone()).is_none());
        assert_eq!(ext.insert(5u8), None);
        assert_eq!(ext.len(), 2);
        assert_eq!(ext.get::<Session>().map(Session::id), Some(SessionId(1)));
        assert_eq!(ext.insert(b).map(|s| s.id()), Some(SessionId(1)));
        assert_eq!(ext.get::<u8>(), Some(&5));
        *ext.get_mut::<u8>().unwrap() += 1;
        assert_eq!(ext.remove::<u8>(), Some(6));
        assert_eq!(ext.remove::<Session>().map(|s| s.id()), Some(SessionId(2)));
        assert!(ext.is_empty());
        assert!(ext.get::<Session>().is_none());
    }
}
