//! [`Balanced`]: p2c over the endpoints of a set of [`Upstreams`], shared
//! by every session of a server; [`FailFast`], the bounded wait when no
//! upstream is ready; [`Builder`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use msgi::{BoxError, ConfigError, Frame, FrameCodec, MakeFraming};
use tokio::time::{Instant, Sleep};
use tower::balance::p2c::Balance;
use tower::Service;

use crate::affinity::{Affinity, KeyFn};
use crate::discover::{Discovery, Upstreams};
use crate::endpoint::Settings;
use crate::error::Error;
use crate::shared::{Shared, SharedFuture};

/// Bounds how long a request waits for the inner service to be ready
/// (tower's p2c stays `Pending` while no endpoint is ready, for ever if
/// none comes back). After `wait`, `poll_ready` says ready and the call
/// fails at once with [`Error::NoUpstream`]; while the inner service stays
/// unready after that, every request fails at once (no new wait) until it
/// is ready again.
pub struct FailFast<S> {
    inner: S,
    wait: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    down: bool,
    fail_next: bool,
}

impl<S: fmt::Debug> fmt::Debug for FailFast<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailFast")
            .field("inner", &self.inner)
            .field("wait", &self.wait)
            .field("down", &self.down)
            .finish()
    }
}

impl<S> FailFast<S> {
    /// Wraps `inner`, waiting at most `wait` for it.
    pub fn new(inner: S, wait: Duration) -> Self {
        FailFast {
            inner,
            wait,
            timer: None,
            armed: false,
            down: false,
            fail_next: false,
        }
    }

    /// The service inside.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, Req> Service<Req> for FailFast<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = FailFastFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(result) => {
                self.armed = false;
                self.down = false;
                self.fail_next = false;
                Poll::Ready(result.map_err(Into::into))
            }
            Poll::Pending if self.down => {
                self.fail_next = true;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if !self.armed {
                    let deadline = Instant::now() + self.wait;
                    match &mut self.timer {
                        Some(timer) => timer.as_mut().reset(deadline),
                        None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                    self.armed = true;
                }
                if let Some(timer) = &mut self.timer {
                    ready!(timer.as_mut().poll(cx));
                }
                self.armed = false;
                self.down = true;
                self.fail_next = true;
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, req: Req) -> FailFastFuture<S::Future> {
        if std::mem::take(&mut self.fail_next) {
            return FailFastFuture {
                inner: None,
                waited: self.wait,
            };
        }
        FailFastFuture {
            inner: Some(self.inner.call(req)),
            waited: self.wait,
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of [`FailFast`].
    pub struct FailFastFuture<F> {
        #[pin]
        inner: Option<F>,
        waited: Duration,
    }
}

impl<F> fmt::Debug for FailFastFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailFastFuture").finish_non_exhaustive()
    }
}

impl<F, T, E> Future for FailFastFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.as_pin_mut() {
            None => Poll::Ready(Err(Error::NoUpstream(*this.waited).into())),
            Some(inner) => inner.poll(cx).map_err(Into::into),
        }
    }
}

type P2c = Balance<Discovery, Frame>;

/// p2c's two random picks per request from fastrand's generator (wyrand)
/// instead of tower's default, which runs SipHash for every number (2.5% of
/// a forwarded request's instructions by callgrind). Seeded from the
/// thread's generator, so no two balancers pick alike.
struct FastRng(fastrand::Rng);

impl FastRng {
    fn new() -> Self {
        FastRng(fastrand::Rng::with_seed(fastrand::u64(..)))
    }
}

impl tower::util::rng::Rng for FastRng {
    fn next_u64(&mut self) -> u64 {
        self.0.u64(..)
    }
}
type P2cFuture = <P2c as Service<Frame>>::Future;

/// Requests spread over the upstreams of a set by tower's p2c (power of
/// two choices on [`Endpoint`](crate::Endpoint) load), one balancer shared
/// by every clone (a server clones its handler per session, and all
/// sessions share the upstream connections).
///
/// A server's handler (`Service<Frame, Response = Option<Frame>>`), as
/// [`msgi::Forward`]: one-way frames are sent one-way and answer `None`,
/// a correlated request gets the upstream's answer (its ERROR included, as
/// an ERROR frame), the request id the upstream connection used being
/// replaced by the caller's by the serving side. `Err` is an
/// [`Error`] (boxed): no upstream ready within the bounded wait, the
/// upstream lost with the request in flight, ... which a server answers
/// with an ERROR carrying the request id.
///
/// The balancer is called in the caller's task, under a lock, when it is
/// ready at once; otherwise the request waits in a queue (tower's
/// `Buffer`, `buffer` requests) whose worker task waits for the balancer,
/// and while requests wait there later ones queue behind them. Readiness
/// is a place in that queue; the balancer behind it is ready when an
/// endpoint is, or once the bounded wait is over.
#[derive(Clone)]
pub struct Balanced {
    shared: Shared<FailFast<P2c>>,
}

impl fmt::Debug for Balanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balanced")
            .field("shared", &self.shared)
            .finish()
    }
}

impl Service<Frame> for Balanced {
    type Response = Option<Frame>;
    type Error = BoxError;
    type Future = SharedFuture<FailFastFuture<P2cFuture>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.shared.poll_ready(cx)
    }

    fn call(&mut self, frame: Frame) -> Self::Future {
        self.shared.call(frame)
    }
}

/// Settings for a [`Balanced`] service (or a key-routed one, or a pool).
#[derive(Debug, Clone)]
pub struct Builder<C = FrameCodec> {
    settings: Settings<C>,
    connections: usize,
    fail_after: Duration,
    buffer: usize,
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new(Settings::default())
    }
}

impl<C> Builder<C>
where
    C: MakeFraming + Clone + fmt::Debug + Send + Sync + 'static,
{
    /// Each upstream connection made and watched as `settings` say.
    pub fn new(settings: Settings<C>) -> Self {
        Builder {
            settings,
            connections: 1,
            fail_after: Duration::from_secs(2),
            buffer: 1024,
        }
    }

    /// Connections per upstream (default 1), each an endpoint of its own.
    pub fn connections_per_upstream(mut self, connections: usize) -> Self {
        self.connections = connections;
        self
    }

    /// How long a request waits for an upstream to be ready before it
    /// fails with [`Error::NoUpstream`] (default 2 s).
    pub fn fail_after(mut self, wait: Duration) -> Self {
        self.fail_after = wait;
        self
    }

    /// Requests the shared balancer queues (default 1024): `poll_ready`
    /// waits while it holds that many.
    pub fn buffer(mut self, requests: usize) -> Self {
        self.buffer = requests;
        self
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.settings.validate()?;
        if self.connections == 0 || self.connections > 1024 {
            return Err(ConfigError::new(
                "connections_per_upstream",
                "must be between 1 and 1024",
            ));
        }
        if self.buffer == 0 || self.buffer > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(ConfigError::new(
                "buffer",
                "must be at least 1 (and at most what tokio's semaphore takes)",
            ));
        }
        if self.fail_after.is_zero() || self.fail_after > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "fail_after",
                "must be above zero and at most an hour",
            ));
        }
        Ok(())
    }

    /// The balancer over `upstreams` (which may change while it runs).
    /// Spawns the balancer's task and one supervising task per connection
    /// in the current tokio runtime.
    pub fn build(self, upstreams: &Upstreams) -> Result<Balanced, ConfigError> {
        self.validate()?;
        let discovery = Discovery::new(upstreams, self.settings, self.connections);
        let p2c = FailFast::new(
            Balance::from_rng(discovery, FastRng::new()),
            self.fail_after,
        );
        Ok(Balanced {
            shared: Shared::new(p2c, self.buffer),
        })
    }

    /// Key-routed instead of balanced: frames with the same key (from
    /// `key`) go to the same upstream while it is up (rendezvous hashing),
    /// and move only when it is down. See [`Affinity`].
    pub fn build_affinity<K: KeyFn>(
        self,
        upstreams: &Upstreams,
        key: K,
    ) -> Result<crate::Keyed, ConfigError> {
        self.validate()?;
        let discovery = Discovery::new(upstreams, self.settings, self.connections);
        let key: crate::affinity::BoxKeyFn = Box::new(key);
        let affinity = FailFast::new(Affinity::new(discovery, key), self.fail_after);
        Ok(crate::Keyed::new(Shared::new(affinity, self.buffer)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tower::ServiceExt;

    /// Ready only while `ready` is set (woken through `waker`).
    #[derive(Clone)]
    struct Gate(Arc<AtomicBool>, Arc<futures_util::task::AtomicWaker>);

    impl Gate {
        fn set(&self, ready: bool) {
            self.0.store(ready, Ordering::Relaxed);
            self.1.wake();
        }
    }

    impl Service<u8> for Gate {
        type Response = u8;
        type Error = BoxError;
        type Future = std::future::Ready<Result<u8, BoxError>>;
        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            self.1.register(cx.waker());
            if self.0.load(Ordering::Relaxed) {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
        fn call(&mut self, r: u8) -> Self::Future {
            std::future::ready(Ok(r))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waits_the_bound_then_fails_at_once_until_ready_again() {
        let gate = Gate(Arc::new(AtomicBool::new(false)), Default::default());
        let mut svc = FailFast::new(gate.clone(), Duration::from_secs(2));
        let start = Instant::now();
        let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert!(matches!(
            err.downcast_ref::<Error>(),
            Some(Error::NoUpstream(d)) if *d == Duration::from_secs(2)
        ));
        // Still down: no new wait.
        let start = Instant::now();
        assert!(svc.ready().await.unwrap().call(2).await.is_err());
        assert_eq!(start.elapsed(), Duration::ZERO);
        // Back: served, and a later outage waits the bound again.
        gate.set(true);
        assert_eq!(svc.ready().await.unwrap().call(3).await.unwrap(), 3);
        gate.set(false);
        let start = Instant::now();
        assert!(svc.ready().await.unwrap().call(4).await.is_err());
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }
}
