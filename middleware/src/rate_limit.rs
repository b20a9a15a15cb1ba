//! Token-bucket rate limiting by frames per second and bytes per second,
//! per session and across all sessions.
//!
//! Two policies:
//! - [`RatePolicy::Delay`]: `poll_ready` stays pending while a bucket is in
//!   debt. The session driver does not read the next frame until the
//!   service is ready, so the sender is slowed by TCP backpressure.
//! - [`RatePolicy::Reject`]: a frame over the limit is not passed on; it is
//!   answered with ERROR `rate limited`, with its request id when it had
//!   one, and the session goes on.
//!
//! Buckets hold one second of their rate. A frame larger than a whole
//! second of bytes is let through when the bucket is full and leaves it in
//! debt, so no frame size is refused for ever.
//!
//! ## Sharing
//!
//! The global buckets live behind an `Arc` made when the layer is built:
//! every service the layer makes, and every clone of them, shares them.
//! The per-session buckets belong to one service value, and **a clone starts
//! with fresh per-session buckets**, as a clone of tower's `ConcurrencyLimit`
//! starts without a permit. msgi servers clone the service (or make one)
//! for each session, so "per clone" is "per session".
//!
//! tower's own `RateLimit` limits requests only, is not `Clone`, and so
//! cannot be shared by the clones a server makes; this one is, counts bytes
//! as well, and can answer instead of waiting.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use msgi::Frame;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

/// What to do with a frame over the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RatePolicy {
    /// Wait (backpressure on the reader).
    Delay,
    /// Answer ERROR `rate limited`.
    Reject,
}

/// A rate: frames per second, bytes per second, or both.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limit {
    /// Frames per second.
    pub frames_per_sec: Option<f64>,
    /// Payload bytes per second.
    pub bytes_per_sec: Option<f64>,
}

impl Limit {
    /// At most `n` frames per second.
    pub fn frames(n: f64) -> Self {
        Limit {
            frames_per_sec: Some(n),
            bytes_per_sec: None,
        }
    }

    /// At most `n` payload bytes per second.
    pub fn bytes(n: f64) -> Self {
        Limit {
            frames_per_sec: None,
            bytes_per_sec: Some(n),
        }
    }

    /// Adds a bytes-per-second limit.
    pub fn and_bytes(mut self, n: f64) -> Self {
        self.bytes_per_sec = Some(n);
        self
    }

    fn buckets(&self, now: Instant) -> Buckets {
        Buckets {
            frames: self.frames_per_sec.map(|r| Bucket::new(r, now)),
            bytes: self.bytes_per_sec.map(|r| Bucket::new(r, now)),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64, now: Instant) -> Self {
        let rate = rate.max(f64::MIN_POSITIVE);
        Bucket {
            rate,
            tokens: rate,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        self.last = now;
    }

    /// Time until the bucket is out of debt.
    fn wait(&self) -> Duration {
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    fn allows(&self, n: f64) -> bool {
        self.tokens >= n.min(self.rate)
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Buckets {
    frames: Option<Bucket>,
    bytes: Option<Bucket>,
}

impl Buckets {
    fn each(&mut self) -> impl Iterator<Item = (&mut Bucket, bool)> {
        self.frames
            .iter_mut()
            .map(|b| (b, true))
            .chain(self.bytes.iter_mut().map(|b| (b, false)))
    }

    fn refill(&mut self, now: Instant) {
        self.each().for_each(|(b, _)| b.refill(now));
    }

    fn wait(&mut self) -> Duration {
        self.each().map(|(b, _)| b.wait()).max().unwrap_or_default()
    }

    fn allows(&mut self, bytes: f64) -> bool {
        self.each()
            .all(|(b, frames)| b.allows(if frames { 1.0 } else { bytes }))
    }

    fn take(&mut self, bytes: f64) {
        self.each()
            .for_each(|(b, frames)| b.tokens -= if frames { 1.0 } else { bytes });
    }
}

/// Applies [`RateLimit`] to a service.
#[derive(Clone)]
pub struct RateLimitLayer {
    policy: RatePolicy,
    per_session: Limit,
    global: Option<Arc<Mutex<Buckets>>>,
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("policy", &self.policy)
            .field("per_session", &self.per_session)
            .field("global", &self.global.is_some())
            .finish()
    }
}

impl RateLimitLayer {
    /// No limits yet, with this policy.
    pub fn new(policy: RatePolicy) -> Self {
        RateLimitLayer {
            policy,
            per_session: Limit::default(),
            global: None,
        }
    }

    /// Limits each session (each service clone) to `limit`.
    pub fn per_session(mut self, limit: Limit) -> Self {
        self.per_session = limit;
        self
    }

    /// Limits all sessions together to `limit`.
    pub fn global(mut self, limit: Limit) -> Self {
        self.global = Some(Arc::new(Mutex::new(limit.buckets(Instant::now()))));
        self
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            policy: self.policy,
            limit: self.per_session,
            session: self.per_session.buckets(Instant::now()),
            global: self.global.clone(),
            sleep: None,
        }
    }
}

/// Limits the frames and bytes the inner service receives.
pub struct RateLimit<S> {
    inner: S,
    policy: RatePolicy,
    limit: Limit,
    session: Buckets,
    global: Option<Arc<Mutex<Buckets>>>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S: Clone> Clone for RateLimit<S> {
    fn clone(&self) -> Self {
        // A clone serves another session: fresh per-session buckets, shared
        // global ones.
        RateLimit {
            inner: self.inner.clone(),
            policy: self.policy,
            limit: self.limit,
            session: self.limit.buckets(Instant::now()),
            global: self.global.clone(),
            sleep: None,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<S> RateLimit<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn with_global<R>(&self, f: impl FnOnce(&mut Buckets) -> R) -> Option<R> {
        self.global
            .as_ref()
            .map(|g| f(&mut g.lock().unwrap_or_else(PoisonError::into_inner)))
    }
}

impl<S> Service<Frame> for RateLimit<S>
where
    S: Service<Frame, Response = Option<Frame>>,
{
    type Response = Option<Frame>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        if self.policy == RatePolicy::Delay {
            loop {
                let now = Instant::now();
                self.session.refill(now);
                let global_wait = self
                    .with_global(|g| {
                        g.refill(now);
                        g.wait()
                    })
                    .unwrap_or_default();
                let wait = self.session.wait().max(global_wait);
                if wait.is_zero() {
                    self.sleep = None;
                    break;
                }
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
                sleep.as_mut().reset(now + wait);
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, frame: Frame) -> Self::Future {
        let bytes = frame.payload().len() as f64;
        let now = Instant::now();
        if self.policy == RatePolicy::Reject {
            self.session.refill(now);
            let session_ok = self.session.allows(bytes);
            let global_ok = self
                .with_global(|g| {
                    g.refill(now);
                    let ok = session_ok && g.allows(bytes);
                    if ok {
                        g.take(bytes);
                    }
                    ok
                })
                .unwrap_or(session_ok);
            if !global_ok {
                let mut error = Frame::error("rate limited");
                error.set_request_id(frame.request_id());
                return ResponseFuture::limited(error);
            }
            self.session.take(bytes);
        } else {
            self.session.take(bytes);
            self.with_global(|g| g.take(bytes));
        }
        ResponseFuture::inner(self.inner.call(frame))
    }
}

pin_project_lite::pin_project! {
    /// The response of [`RateLimit`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F> {
        Inner { #[pin] fut: F },
        Limited { answer: Option<Frame> },
    }
}

impl<F> ResponseFuture<F> {
    fn inner(fut: F) -> Self {
        ResponseFuture {
            state: State::Inner { fut },
        }
    }

    fn limited(answer: Frame) -> Self {
        ResponseFuture {
            state: State::Limited {
                answer: Some(answer),
            },
        }
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Option<Frame>, E>>,
{
    type Output = Result<Option<Frame>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { fut } => fut.poll(cx),
            StateProj::Limited { answer } => Poll::Ready(Ok(answer.take())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msgi::Kind;
    use tower::ServiceExt;
    use tower_test::mock;

    fn echo() -> impl Service<
        Frame,
        Response = Option<Frame>,
        Error = std::convert::Infallible,
        Future = impl Future<Output = Result<Option<Frame>, std::convert::Infallible>>,
    > + Clone {
        tower::service_fn(|f: Frame| async move { Ok(Some(f)) })
    }

    /// One call through `svc`, waiting for readiness; the answer.
    async fn call<S>(svc: &mut S, frame: Frame) -> Frame
    where
        S: Service<Frame, Response = Option<Frame>, Error = std::convert::Infallible>,
    {
        let answer = svc.ready().await.unwrap().call(frame).await.unwrap();
        answer.expect("every call is answered")
    }

    #[tokio::test(start_paused = true)]
    async fn reject_answers_rate_limited_with_the_id() {
        let layer = RateLimitLayer::new(RatePolicy::Reject).per_session(Limit::frames(2.0));
        let mut svc = layer.layer(echo());
        for i in 0..2 {
            let out = call(&mut svc, Frame::data("x").with_request_id(i)).await;
            assert_eq!(out.kind(), Kind::DATA);
        }
        let out = call(&mut svc, Frame::data("x").with_request_id(7)).await;
        assert_eq!(out, Frame::error("rate limited").with_request_id(7));
        // A clone is another session with its own budget...
        let mut other = svc.clone();
        assert_eq!(call(&mut other, Frame::data("y")).await.kind(), Kind::DATA);
        // ...and time refills.
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(call(&mut svc, Frame::data("x")).await.kind(), Kind::DATA);
    }

    #[tokio::test(start_paused = true)]
    async fn global_limit_is_shared_by_clones() {
        let layer = RateLimitLayer::new(RatePolicy::Reject).global(Limit::bytes(10.0));
        let mut a = layer.layer(echo());
        let mut b = a.clone();
        assert_eq!(
            call(&mut a, Frame::data("12345678")).await.kind(),
            Kind::DATA
        );
        let out = call(&mut b, Frame::data("12345678")).await;
        assert_eq!(out.kind(), Kind::ERROR, "b shares a's byte budget");
    }

    #[tokio::test(start_paused = true)]
    async fn delay_holds_readiness_until_refilled() {
        let (inner, mut handle) = mock::pair::<Frame, Option<Frame>>();
        handle.allow(10);
        let mut svc = RateLimitLayer::new(RatePolicy::Delay)
            .per_session(Limit::frames(1.0))
            .layer(inner);
        let mut task = tokio_test_ready(&mut svc);
        assert!(task.is_ready());
        let _call = svc.call(Frame::data("a"));
        let _ = handle.next_request().await.unwrap();
        // The bucket (one frame per second) is empty now, not in debt.
        assert!(tokio_test_ready(&mut svc).is_ready());
        let _call = svc.call(Frame::data("b"));
        let _ = handle.next_request().await.unwrap();
        // Now in debt by one frame: not ready until a second has passed.
        task = tokio_test_ready(&mut svc);
        assert!(task.is_pending());
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(tokio_test_ready(&mut svc).is_pending());
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(tokio_test_ready(&mut svc).is_ready());
    }

    fn tokio_test_ready<S: Service<Frame>>(svc: &mut S) -> Poll<Result<(), S::Error>> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        svc.poll_ready(&mut cx)
    }
}
