//! Typed context carried with a frame inside one process, in the manner of
//! `http::Extensions`.
//!
//! The runtime attaches the session that received a frame to every request.
//! The wire value must not depend on the runtime, so that handle goes into a
//! type-erased *shared slot*: one `Arc` the runtime made once per session,
//! cloned into each request (a reference count, no allocation), found again
//! by its type with [`Extensions::get`]. Other types go into an
//! `http::Extensions` map, allocated on first use.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// A map from type to value, at most one value per type.
///
/// ```
/// use msgi_proto::Extensions;
/// use std::sync::Arc;
///
/// #[derive(Clone, Debug, PartialEq)]
/// struct UserId(u64);
///
/// let mut ext = Extensions::new();
/// assert_eq!(ext.insert(UserId(7)), None);
/// assert_eq!(ext.get::<UserId>(), Some(&UserId(7)));
/// assert_eq!(ext.remove::<UserId>(), Some(UserId(7)));
/// assert!(ext.is_empty());
///
/// // A handle shared by many frames: one `Arc`, cloned, never reallocated.
/// #[derive(Clone, Debug, PartialEq)]
/// struct Conn(u32);
/// let shared: Arc<dyn std::any::Any + Send + Sync> = Arc::new(Conn(1));
/// ext.set_shared(shared.clone());
/// assert_eq!(ext.get::<Conn>(), Some(&Conn(1)));
/// ```
#[derive(Clone, Default)]
pub struct Extensions {
    shared: Option<Arc<dyn Any + Send + Sync>>,
    other: http::Extensions,
}

impl Extensions {
    /// An empty map; allocates nothing.
    #[inline]
    pub fn new() -> Extensions {
        Extensions::default()
    }

    /// Puts a shared value in the slot that costs no allocation, replacing
    /// the one there. Its type is the concrete type inside the `Arc`:
    /// [`get`](Extensions::get) finds it by that type. Meant for a handle the
    /// runtime attaches to every request (the session); values of the same
    /// type inserted with [`insert`](Extensions::insert) are shadowed by it.
    #[inline]
    pub fn set_shared(&mut self, value: Arc<dyn Any + Send + Sync>) {
        self.shared = Some(value);
    }

    /// Takes the shared slot's value out.
    #[inline]
    pub fn take_shared(&mut self) -> Option<Arc<dyn Any + Send + Sync>> {
        self.shared.take()
    }

    fn shared_is<T: 'static>(&self) -> bool {
        self.shared.as_deref().is_some_and(|s| s.is::<T>())
    }

    /// Inserts a value, returning the previous value of that type.
    ///
    /// A value of the shared slot's type replaces the shared value (the
    /// old one is returned if it can be cloned out).
    pub fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) -> Option<T> {
        if self.shared_is::<T>() {
            let old = self.remove::<T>();
            self.shared = Some(Arc::new(value));
            return old;
        }
        self.other.insert(value)
    }

    /// The value of type `T`, if any (the shared slot first).
    #[inline]
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        match self.shared.as_deref().and_then(|s| s.downcast_ref::<T>()) {
            Some(value) => Some(value),
            None => self.other.get(),
        }
    }

    /// The value of type `T`, mutably. A value in the shared slot is shared,
    /// so it is not reachable mutably.
    #[inline]
    pub fn get_mut<T: Send + Sync + 'static>(&mut self) -> Option<&mut T> {
        self.other.get_mut()
    }

    /// Removes and returns the value of type `T` (from the shared slot, a
    /// clone of it).
    #[inline]
    pub fn remove<T: Clone + Send + Sync + 'static>(&mut self) -> Option<T> {
        if self.shared_is::<T>() {
            let shared = self.shared.take()?;
            return shared.downcast_ref::<T>().cloned();
        }
        self.other.remove()
    }

    /// Removes everything.
    #[inline]
    pub fn clear(&mut self) {
        self.shared = None;
        self.other.clear();
    }

    /// True when the map holds nothing.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.shared.is_none() && self.other.is_empty()
    }

    /// Number of values held.
    #[inline]
    pub fn len(&self) -> usize {
        usize::from(self.shared.is_some()) + self.other.len()
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

    #[derive(Clone, Debug, PartialEq)]
    struct Handle(u32);

    #[test]
    fn shared_slot_and_other_types() {
        let mut ext = Extensions::new();
        let a: Arc<dyn Any + Send + Sync> = Arc::new(Handle(1));
        ext.set_shared(a.clone());
        assert_eq!(Arc::strong_count(&a), 2, "the slot holds the same Arc");
        assert_eq!(ext.insert(5u8), None);
        assert_eq!(ext.len(), 2);
        assert_eq!(ext.get::<Handle>(), Some(&Handle(1)));
        assert_eq!(ext.insert(Handle(2)), Some(Handle(1)));
        assert_eq!(ext.get::<Handle>(), Some(&Handle(2)));
        assert_eq!(ext.get::<u8>(), Some(&5));
        *ext.get_mut::<u8>().unwrap() += 1;
        assert_eq!(ext.remove::<u8>(), Some(6));
        assert_eq!(ext.remove::<Handle>(), Some(Handle(2)));
        assert!(ext.is_empty());
        assert!(ext.get::<Handle>().is_none());
    }

    #[test]
    fn a_value_of_another_type_does_not_reach_the_shared_slot() {
        let mut ext = Extensions::new();
        ext.set_shared(Arc::new(Handle(1)));
        assert_eq!(ext.insert(Handle2(3)), None);
        assert_eq!(ext.get::<Handle>(), Some(&Handle(1)));
        assert_eq!(ext.get::<Handle2>(), Some(&Handle2(3)));
        assert!(ext.take_shared().is_some());
        assert_eq!(ext.len(), 1);
    }

    #[derive(Clone, Debug, PartialEq)]
    struct Handle2(u32);
}
