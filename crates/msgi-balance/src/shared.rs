//! [`Shared`]: one service (the balancer) shared by every clone, called in
//! place when it is ready at once, and queued behind tower's `Buffer` when
//! it is not.
//!
//! tower's `Buffer` alone costs every request a channel send, a oneshot
//! and a hop to its worker task and back. Here a request is handed to the
//! worker only when the service is not ready at once (or others already
//! wait in the queue, which keeps their order): the caller takes the lock,
//! polls the service's readiness and calls it, all in its own task. The
//! worker, which polls with a real waker, is what waits.
//!
//! Why no wake-up is lost: the caller polls with a waker that does
//! nothing, which may replace a registration the worker made. A caller
//! polls only if no request is queued, checked under the lock; a request
//! queued later is polled by the worker after that (the worker needs the
//! lock too), so the worker's registration is always the last one while
//! it has something to wait for.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use msgi::{BoxError, Frame};
use tower::buffer::future::ResponseFuture;
use tower::buffer::Buffer;
use tower::Service;

struct Core<S> {
    svc: S,
    /// The queue's worker saw the service ready and calls it next (in the
    /// same poll): a caller must not take that readiness.
    worker_ready: bool,
}

struct State<S> {
    core: Mutex<Core<S>>,
    /// Requests in the queue: handed to the buffer and not yet called or
    /// dropped.
    queued: AtomicUsize,
}

impl<S> State<S> {
    fn lock(&self) -> MutexGuard<'_, Core<S>> {
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A request in the queue, counted in `queued` for as long as it lives.
pub(crate) struct Queued<S> {
    frame: Frame,
    _counted: Counted<S>,
}

struct Counted<S>(Arc<State<S>>);

impl<S> Drop for Counted<S> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The buffer worker's view of the shared service.
struct Lane<S> {
    state: Arc<State<S>>,
}

impl<S> Service<Queued<S>> for Lane<S>
where
    S: Service<Frame>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        let mut core = self.state.lock();
        let ready = core.svc.poll_ready(cx);
        core.worker_ready = matches!(ready, Poll::Ready(Ok(())));
        ready
    }

    fn call(&mut self, request: Queued<S>) -> S::Future {
        let Queued { frame, _counted } = request;
        let mut core = self.state.lock();
        core.worker_ready = false;
        let future = core.svc.call(frame);
        // Uncounted while the lock is held: a caller that sees no request
        // queued polls after this one was called.
        drop(_counted);
        future
    }
}

/// One service shared by every clone (see the module's documentation).
/// Readiness is a place in the queue (`bound` requests), as tower's
/// `Buffer`'s; the service itself is polled when called.
pub(crate) struct Shared<S: Service<Frame>> {
    state: Arc<State<S>>,
    buffer: Buffer<Queued<S>, S::Future>,
}

impl<S> Clone for Shared<S>
where
    S: Service<Frame> + Send + 'static,
    S::Future: Send,
{
    fn clone(&self) -> Self {
        Shared {
            state: self.state.clone(),
            buffer: self.buffer.clone(),
        }
    }
}

impl<S: Service<Frame>> fmt::Debug for Shared<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("queued", &self.state.queued.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<S> Shared<S>
where
    S: Service<Frame> + Send + 'static,
    S::Error: Into<BoxError> + Send + Sync,
    S::Future: Send + 'static,
{
    /// Shares `svc`; at most `bound` requests wait in the queue. Spawns the
    /// queue's worker in the current tokio runtime.
    pub(crate) fn new(svc: S, bound: usize) -> Self {
        let state = Arc::new(State {
            core: Mutex::new(Core {
                svc,
                worker_ready: false,
            }),
            queued: AtomicUsize::new(0),
        });
        let buffer = Buffer::new(
            Lane {
                state: state.clone(),
            },
            bound,
        );
        Shared { state, buffer }
    }
}

impl<S> Service<Frame> for Shared<S>
where
    S: Service<Frame> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = SharedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // A place in the queue (kept by this handle until a request goes
        // there: a call made in place leaves it reserved for the next).
        self.buffer.poll_ready(cx)
    }

    fn call(&mut self, frame: Frame) -> SharedFuture<S::Future> {
        if self.state.queued.load(Ordering::SeqCst) == 0 {
            let mut core = self.state.lock();
            if !core.worker_ready && self.state.queued.load(Ordering::SeqCst) == 0 {
                let mut cx = Context::from_waker(Waker::noop());
                match core.svc.poll_ready(&mut cx) {
                    Poll::Ready(Ok(())) => return SharedFuture::called(core.svc.call(frame)),
                    Poll::Ready(Err(error)) => return SharedFuture::failed(error.into()),
                    // The worker waits for it.
                    Poll::Pending => {}
                }
            }
        }
        self.state.queued.fetch_add(1, Ordering::SeqCst);
        let request = Queued {
            frame,
            _counted: Counted(self.state.clone()),
        };
        SharedFuture::queued(self.buffer.call(request))
    }
}

pin_project_lite::pin_project! {
    /// The answer of a shared balancer ([`Balanced`](crate::Balanced),
    /// [`Keyed`](crate::Keyed)): called in place, or through the queue.
    pub struct SharedFuture<F> {
        #[pin]
        inner: Inner<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = Proj]
    enum Inner<F> {
        // Called in place.
        Called { #[pin] future: F },
        // Waiting in the queue for the balancer to be ready.
        Queued { #[pin] future: ResponseFuture<F> },
        // The balancer failed.
        Failed { error: Option<BoxError> },
    }
}

impl<F> SharedFuture<F> {
    fn called(future: F) -> Self {
        SharedFuture {
            inner: Inner::Called { future },
        }
    }

    fn queued(future: ResponseFuture<F>) -> Self {
        SharedFuture {
            inner: Inner::Queued { future },
        }
    }

    fn failed(error: BoxError) -> Self {
        SharedFuture {
            inner: Inner::Failed { error: Some(error) },
        }
    }
}

impl<F> fmt::Debug for SharedFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.inner {
            Inner::Called { .. } => "called",
            Inner::Queued { .. } => "queued",
            Inner::Failed { .. } => "failed",
        };
        f.debug_tuple("SharedFuture").field(&state).finish()
    }
}

impl<F, T, E> Future for SharedFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            Proj::Called { future } => future.poll(cx).map_err(Into::into),
            Proj::Queued { future } => future.poll(cx),
            Proj::Failed { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "polled after completion".into()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;
    use tower::ServiceExt;

    /// Ready only while `ready` is set; records what it is called with.
    #[derive(Clone, Default)]
    struct Gate {
        ready: Arc<AtomicBool>,
        waker: Arc<futures_util::task::AtomicWaker>,
        calls: Arc<Mutex<Vec<String>>>,
    }

    impl Gate {
        fn set(&self, ready: bool) {
            self.ready.store(ready, Ordering::SeqCst);
            self.waker.wake();
        }

        fn calls(&self) -> Vec<String> {
            self.calls
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }
    }

    impl Service<Frame> for Gate {
        type Response = Option<Frame>;
        type Error = BoxError;
        type Future = std::future::Ready<Result<Option<Frame>, BoxError>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            self.waker.register(cx.waker());
            if self.ready.load(Ordering::SeqCst) {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }

        fn call(&mut self, frame: Frame) -> Self::Future {
            let text = frame.payload_text().into_owned();
            self.calls
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(text);
            std::future::ready(Ok(Some(frame)))
        }
    }

    #[tokio::test]
    async fn called_in_place_when_ready_else_queued_in_order_until_ready() {
        let gate = Gate::default();
        gate.set(true);
        let mut shared = Shared::new(gate.clone(), 8);
        // Ready at once: called within `call`, in this task.
        let answer = shared.ready().await.unwrap().call(Frame::data("a"));
        assert_eq!(gate.calls(), ["a"], "called in place");
        assert!(answer.await.unwrap().is_some());
        // Not ready: queued; a later request queues behind it (no overtaking)
        // even once the service is ready again, until the worker runs.
        gate.set(false);
        let b = shared.ready().await.unwrap().call(Frame::data("b"));
        let mut other = shared.clone();
        let c = other.ready().await.unwrap().call(Frame::data("c"));
        tokio::task::yield_now().await;
        assert_eq!(gate.calls(), ["a"]);
        gate.set(true);
        let d = shared.ready().await.unwrap().call(Frame::data("d"));
        let answers = tokio::time::timeout(Duration::from_secs(5), async {
            (b.await, c.await, d.await)
        })
        .await
        .expect("the worker serves the queue once the service is ready");
        assert!(answers.0.is_ok() && answers.1.is_ok() && answers.2.is_ok());
        assert_eq!(gate.calls(), ["a", "b", "c", "d"]);
        // Queue drained: in place again.
        let e = shared.ready().await.unwrap().call(Frame::data("e"));
        assert_eq!(gate.calls().last().map(String::as_str), Some("e"));
        assert!(e.await.is_ok());
        assert_eq!(shared.state.queued.load(Ordering::SeqCst), 0);
    }
}
