//! The call limit: at most `max` calls reserved or in flight.
//!
//! A counter on the fast path (one compare-and-swap to take a place, one
//! subtraction to give it back); a lock only while someone waits at the
//! limit. tokio's `Semaphore` would take its wait-list lock on every
//! release, that is on every answer.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

/// The gate is closed: the client has stopped for good.
#[derive(Debug)]
pub(super) struct GateClosed;

#[derive(Debug)]
pub(super) struct CallGate {
    max: usize,
    used: AtomicUsize,
    closed: AtomicBool,
    /// Set while `waiters` may hold a waker (only at the limit).
    has_waiters: AtomicBool,
    waiters: Mutex<Vec<Waker>>,
}

impl CallGate {
    pub(super) fn new(max: usize) -> CallGate {
        CallGate {
            max,
            used: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            has_waiters: AtomicBool::new(false),
            waiters: Mutex::new(Vec::new()),
        }
    }

    /// Places taken.
    pub(super) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_take(&self) -> bool {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                (used < self.max).then_some(used + 1)
            })
            .is_ok()
    }

    /// Takes a place, or registers to be woken when one is given back.
    /// The caller owns the place until it calls [`give_back`](CallGate::give_back).
    pub(super) fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Result<(), GateClosed>> {
        if self.closed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(GateClosed));
        }
        if self.try_take() {
            return Poll::Ready(Ok(()));
        }
        {
            let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
            self.has_waiters.store(true, Ordering::SeqCst);
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
        }
        // A place given back before we registered is seen here.
        if self.closed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(GateClosed));
        }
        if self.try_take() {
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    }

    /// Takes a place, waiting at the limit.
    pub(super) async fn take(&self) -> Result<(), GateClosed> {
        std::future::poll_fn(|cx| self.poll_take(cx)).await
    }

    /// Gives a place back and wakes whoever waits for one.
    pub(super) fn give_back(&self) {
        self.used.fetch_sub(1, Ordering::SeqCst);
        if self.has_waiters.load(Ordering::SeqCst) {
            self.wake_all();
        }
    }

    /// Refuses every later `take`; wakes the waiting ones to learn it.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    fn wake_all(&self) {
        let wakers = {
            let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
            self.has_waiters.store(false, Ordering::SeqCst);
            std::mem::take(&mut *waiters)
        };
        for waker in wakers {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn waits_at_the_limit_and_is_woken_by_a_give_back() {
        let gate = CallGate::new(2);
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(gate.poll_take(&mut cx).is_ready());
        assert!(gate.poll_take(&mut cx).is_ready());
        assert_eq!(gate.used(), 2);
        assert!(gate.poll_take(&mut cx).is_pending());
        assert!(gate.poll_take(&mut cx).is_pending(), "registered once");
        gate.give_back();
        assert!(flag.0.load(Ordering::SeqCst), "woken");
        assert!(matches!(gate.poll_take(&mut cx), Poll::Ready(Ok(()))));
        gate.close();
        gate.give_back();
        assert!(matches!(gate.poll_take(&mut cx), Poll::Ready(Err(_))));
    }
}
