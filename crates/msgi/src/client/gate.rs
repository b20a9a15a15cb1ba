//! The call limit: at most `max` calls reserved or in flight.
//!
//! A counter on the fast path (one compare-and-swap to take a place, one
//! subtraction and one load to give it back); [`tokio::sync::Notify`] only
//! while someone waits at the limit. tokio's `Semaphore` would take its
//! wait-list lock on every release, that is on every answer. A waiter is a
//! `Notified` future: dropping it (a caller that gave up) unlinks it, so
//! cancelled waiters leave nothing behind, and a returned place wakes one
//! waiter, not all of them (a waiter woken and dropped before it took the
//! place passes the wake-up on).

use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The gate is closed: the client has stopped for good.
#[derive(Debug)]
pub(super) struct GateClosed;

#[derive(Debug)]
pub(super) struct CallGate {
    max: usize,
    used: AtomicUsize,
    closed: AtomicBool,
    /// Takers past the fast path (waiting or about to); a place given back
    /// wakes one only when this is not zero.
    waiters: AtomicUsize,
    notify: Notify,
}

/// Counts a taker in [`CallGate::waiters`] for as long as it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl CallGate {
    pub(super) fn new(max: usize) -> CallGate {
        CallGate {
            max,
            used: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            waiters: AtomicUsize::new(0),
            notify: Notify::new(),
        }
    }

    /// Places taken.
    pub(super) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takers waiting at the limit.
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.waiters.load(Ordering::SeqCst)
    }

    /// Takes a place without waiting, unless the gate is closed.
    pub(super) fn try_take(&self) -> Option<Result<(), GateClosed>> {
        if self.closed.load(Ordering::SeqCst) {
            return Some(Err(GateClosed));
        }
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                (used < self.max).then_some(used + 1)
            })
            .ok()
            .map(|_| Ok(()))
    }

    /// Takes a place, waiting at the limit. The caller owns the place until
    /// it calls [`give_back`](CallGate::give_back). Dropping the future
    /// while it waits leaves nothing behind.
    pub(super) async fn take(&self) -> Result<(), GateClosed> {
        if let Some(taken) = self.try_take() {
            return taken;
        }
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiters);
        loop {
            let mut notified = pin!(self.notify.notified());
            notified.as_mut().enable();
            // A place given back, or a close, before we registered is seen
            // here: `waiters` was counted first, so the giver either saw it
            // (and notifies) or gave back before this.
            if let Some(taken) = self.try_take() {
                return taken;
            }
            notified.await;
        }
    }

    /// Gives a place back and wakes one waiter, if any.
    pub(super) fn give_back(&self) {
        self.used.fetch_sub(1, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.notify.notify_one();
        }
    }

    /// Refuses every later `take`; wakes the waiting ones to learn it.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn flag() -> (Arc<Flag>, Waker) {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        (flag, waker)
    }

    #[test]
    fn waits_at_the_limit_and_is_woken_by_a_give_back() {
        let gate = CallGate::new(2);
        let (flag, waker) = flag();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(gate.try_take(), Some(Ok(()))));
        assert!(matches!(gate.try_take(), Some(Ok(()))));
        assert_eq!(gate.used(), 2);
        let mut take = Box::pin(gate.take());
        assert!(take.as_mut().poll(&mut cx).is_pending());
        assert!(take.as_mut().poll(&mut cx).is_pending());
        assert_eq!(gate.waiting(), 1, "counted once");
        gate.give_back();
        assert!(flag.0.load(Ordering::SeqCst), "woken");
        assert!(matches!(take.as_mut().poll(&mut cx), Poll::Ready(Ok(()))));
        drop(take);
        assert_eq!(gate.waiting(), 0);
        gate.close();
        gate.give_back();
        assert!(matches!(gate.try_take(), Some(Err(_))));
    }

    /// Review 2, item 4: a waiter that gives up (its future dropped while
    /// pending) leaves nothing behind; many of them do not grow the gate.
    #[test]
    fn a_dropped_waiter_leaves_nothing_behind() {
        let gate = CallGate::new(1);
        assert!(matches!(gate.try_take(), Some(Ok(()))));
        for _ in 0..1000 {
            let (_, waker) = flag();
            let mut cx = Context::from_waker(&waker);
            let mut take = Box::pin(gate.take());
            assert!(take.as_mut().poll(&mut cx).is_pending());
            assert_eq!(gate.waiting(), 1);
        }
        assert_eq!(gate.waiting(), 0);
        // And the gate still works: a new waiter is woken by a give-back.
        let (flag, waker) = flag();
        let mut cx = Context::from_waker(&waker);
        let mut take = Box::pin(gate.take());
        assert!(take.as_mut().poll(&mut cx).is_pending());
        gate.give_back();
        assert!(flag.0.load(Ordering::SeqCst));
        assert!(matches!(take.as_mut().poll(&mut cx), Poll::Ready(Ok(()))));
    }

    /// Review 2, item 4: one place given back wakes one waiter; a woken
    /// waiter dropped before it took the place passes the wake-up on.
    #[test]
    fn a_given_back_place_wakes_one_waiter() {
        let gate = CallGate::new(1);
        assert!(matches!(gate.try_take(), Some(Ok(()))));
        let (flag_a, waker_a) = flag();
        let (flag_b, waker_b) = flag();
        let mut a = Box::pin(gate.take());
        let mut b = Box::pin(gate.take());
        assert!(a
            .as_mut()
            .poll(&mut Context::from_waker(&waker_a))
            .is_pending());
        assert!(b
            .as_mut()
            .poll(&mut Context::from_waker(&waker_b))
            .is_pending());
        gate.give_back();
        assert!(flag_a.0.load(Ordering::SeqCst), "the first waiter is woken");
        assert!(!flag_b.0.load(Ordering::SeqCst), "only one");
        drop(a);
        assert!(flag_b.0.load(Ordering::SeqCst), "the wake-up passed on");
        let mut cx = Context::from_waker(&waker_b);
        assert!(matches!(b.as_mut().poll(&mut cx), Poll::Ready(Ok(()))));
    }
}
