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
//! ## Settings are checked when built
//!
//! A [`Limit`] is valid by construction: [`Limit::frames`], [`Limit::bytes`]
//! and [`Limit::and_bytes`] return a [`msgi::ConfigError`] for a rate that is
//! zero, negative, NaN or infinite, so a layer built from limits cannot fail
//! or panic later. (tower-http's layers are plain builders with infallible
//! setters; the value that can be wrong is the one that is checked.) Waits
//! are computed with checked arithmetic: a debt too long for the clock
//! means "not before a very long time", never a panic.
//!
//! ## Sharing: per session means per session, whatever is cloned
//!
//! The per-session buckets are kept **in the session** (its data, see
//! [`msgi::Session::with_data`]), keyed by the layer, and found through the
//! [`msgi::Session`] the server puts in every request's extensions. So every
//! clone of the service charges the same buckets for the same session:
//! `svc.clone().oneshot(frame)` per request, `tower::steer::Steer`, a
//! custom make-service, or one service shared by several sessions all see
//! one bucket per session, as tower's `ConcurrencyLimit` clones share one
//! semaphore. Two sessions never share a bucket. A frame that carries no
//! session (a service used outside a msgi server) is charged to buckets
//! that belong to the service value and all its clones together.
//!
//! The global buckets are made when the layer is built and shared by every
//! service it makes. They are lock-free: each bucket is one atomic
//! theoretical arrival time (GCRA), so sessions on different threads do not
//! queue on a mutex.
//!
//! With [`RatePolicy::Delay`], a service value remembers the session of
//! its **last** call, and its `poll_ready` stays pending while that
//! session's buckets (or the global ones) are in debt; a call whose session
//! is in debt when it is made (a session other than the remembered one)
//! has its answer's future wait until the debt is paid, then run the inner
//! call's future. What that means for a session depends on how the service
//! is shared:
//!
//! - one service per session (a server clones the service it was given for
//!   each session): `poll_ready` waits on the session's own debt, so the
//!   session stops reading until it has paid;
//! - a fresh clone per request (`svc.clone().oneshot(frame)`): a clone
//!   never called has no session, so it is ready at once and the answer
//!   waits instead. The session goes on reading and delays each request,
//!   until `max_concurrent_requests` (or `max_concurrent_request_bytes`)
//!   requests wait; then it stops reading. The handler still runs no
//!   faster than the limit;
//! - one service shared by several sessions (behind `tower::buffer::Buffer`):
//!   `poll_ready` waits on the debt of whichever session called last, so a
//!   session in debt holds back every session's next request until it has
//!   paid. Give each session its own service if that matters.
//!
//! The remembered session is a [`msgi::Session`] handle (a clone): a service
//! shared by several sessions keeps the last caller's session state (its
//! data and outbox) allocated after that session ended, until its next call
//! of another session or until the service is dropped. One service per
//! session is dropped with its session.
//!
//! tower's own `RateLimit` limits requests only, is not `Clone`, and so
//! cannot be shared by the clones a server makes; this one is, counts bytes
//! as well, and can answer instead of waiting.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use msgi::{ConfigError, Frame, Session};
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

/// A rate: frames per second, bytes per second, or both. Valid by
/// construction (every rate finite and above zero).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limit {
    frames_per_sec: Option<f64>,
    bytes_per_sec: Option<f64>,
}

fn check_rate(setting: &'static str, n: f64) -> Result<f64, ConfigError> {
    if n.is_finite() && n > 0.0 {
        Ok(n)
    } else {
        Err(ConfigError::new(
            setting,
            format!("must be a finite number above 0, not {n}"),
        ))
    }
}

impl Limit {
    /// At most `n` frames per second; `n` must be finite and above 0.
    pub fn frames(n: f64) -> Result<Self, ConfigError> {
        Ok(Limit {
            frames_per_sec: Some(check_rate("frames_per_sec", n)?),
            bytes_per_sec: None,
        })
    }

    /// At most `n` payload bytes per second; `n` must be finite and above 0.
    pub fn bytes(n: f64) -> Result<Self, ConfigError> {
        Ok(Limit {
            frames_per_sec: None,
            bytes_per_sec: Some(check_rate("bytes_per_sec", n)?),
        })
    }

    /// Adds a bytes-per-second limit; `n` must be finite and above 0.
    pub fn and_bytes(mut self, n: f64) -> Result<Self, ConfigError> {
        self.bytes_per_sec = Some(check_rate("bytes_per_sec", n)?);
        Ok(self)
    }

    /// The frames-per-second rate, if limited.
    pub fn frames_per_sec(&self) -> Option<f64> {
        self.frames_per_sec
    }

    /// The bytes-per-second rate, if limited.
    pub fn bytes_per_sec(&self) -> Option<f64> {
        self.bytes_per_sec
    }

    fn buckets(&self) -> Buckets {
        Buckets {
            frames: self.frames_per_sec.map(Gcra::new),
            bytes: self.bytes_per_sec.map(Gcra::new),
        }
    }
}

/// What a full bucket holds: one second, in nanoseconds of "credit".
const CAPACITY_NS: u64 = 1_000_000_000;

/// One token bucket as a generic cell rate algorithm: the state is the
/// theoretical arrival time (TAT), in nanoseconds since the layer's epoch.
/// The bucket is full when `tat <= now`, empty when `tat == now + 1 s`, in
/// debt beyond. Updated with compare-and-swap, never under a lock.
#[derive(Debug)]
struct Gcra {
    /// Nanoseconds of credit one unit (frame or byte) costs: 1e9 / rate.
    ns_per_unit: f64,
    tat: AtomicU64,
}

impl Gcra {
    fn new(rate: f64) -> Self {
        Gcra {
            ns_per_unit: 1e9 / rate,
            tat: AtomicU64::new(0),
        }
    }

    /// The cost of `units`, in nanoseconds (saturating: `as` does).
    fn cost(&self, units: f64) -> u64 {
        (units * self.ns_per_unit) as u64
    }

    /// How long until the bucket is out of debt.
    fn debt(&self, now: u64) -> u64 {
        self.tat
            .load(Ordering::Acquire)
            .saturating_sub(now.saturating_add(CAPACITY_NS))
    }

    /// Charges `cost` if the bucket holds it (or is full, for a cost over
    /// its capacity); false and unchanged otherwise.
    fn try_take(&self, now: u64, cost: u64) -> bool {
        self.tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                let start = tat.max(now);
                let used = start - now;
                (used.saturating_add(cost.min(CAPACITY_NS)) <= CAPACITY_NS)
                    .then(|| start.saturating_add(cost))
            })
            .is_ok()
    }

    /// Charges `cost` whatever the bucket holds (it may go into debt).
    fn take(&self, now: u64, cost: u64) {
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(tat.max(now).saturating_add(cost))
            });
    }

    /// Gives back a charge that did not go through.
    fn refund(&self, cost: u64) {
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(tat.saturating_sub(cost))
            });
    }
}

#[derive(Debug, Default)]
struct Buckets {
    frames: Option<Gcra>,
    bytes: Option<Gcra>,
}

impl Buckets {
    fn each(&self) -> impl Iterator<Item = (&Gcra, bool)> {
        self.frames
            .iter()
            .map(|b| (b, true))
            .chain(self.bytes.iter().map(|b| (b, false)))
    }

    fn debt(&self, now: u64) -> u64 {
        self.each().map(|(b, _)| b.debt(now)).max().unwrap_or(0)
    }

    fn cost(b: &Gcra, frames: bool, bytes: f64) -> u64 {
        b.cost(if frames { 1.0 } else { bytes })
    }

    fn take(&self, now: u64, bytes: f64) {
        self.each()
            .for_each(|(b, frames)| b.take(now, Self::cost(b, frames, bytes)));
    }

    /// Charges every bucket, or none: true if all held the frame.
    fn try_take(&self, now: u64, bytes: f64) -> bool {
        for (taken, (b, frames)) in self.each().enumerate() {
            if !b.try_take(now, Self::cost(b, frames, bytes)) {
                self.each()
                    .take(taken)
                    .for_each(|(b, frames)| b.refund(Self::cost(b, frames, bytes)));
                return false;
            }
        }
        true
    }

    fn refund(&self, bytes: f64) {
        self.each()
            .for_each(|(b, frames)| b.refund(Self::cost(b, frames, bytes)));
    }
}

/// A clock in nanoseconds since `epoch` (saturating), the buckets' unit.
fn nanos_since(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

/// `now + wait`, or a very distant deadline when that overflows the clock.
fn deadline_after(now: Instant, wait_ns: u64) -> Instant {
    let wait = Duration::from_nanos(wait_ns);
    now.checked_add(wait)
        .or_else(|| now.checked_add(Duration::from_secs(86_400 * 365 * 30)))
        .unwrap_or(now)
}

/// The per-session buckets of every rate-limit layer, in the session's data.
#[derive(Clone, Default)]
struct SessionBuckets(Vec<(u64, Arc<Buckets>)>);

/// What a layer's services share: settings, the epoch, global buckets.
#[derive(Debug)]
struct Shared {
    /// Tells this layer's per-session buckets apart from another layer's in
    /// the same session's data.
    key: u64,
    policy: RatePolicy,
    per_session: Limit,
    global_limit: Option<Limit>,
    global: Buckets,
    epoch: Instant,
}

static NEXT_KEY: AtomicU64 = AtomicU64::new(0);

impl Shared {
    fn new(policy: RatePolicy, per_session: Limit, global: Option<Limit>) -> Arc<Self> {
        Arc::new(Shared {
            key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
            policy,
            per_session,
            global_limit: global,
            global: global.map(|g| g.buckets()).unwrap_or_default(),
            epoch: Instant::now(),
        })
    }

    /// This layer's buckets for `session`, made on first use.
    fn buckets_of(&self, session: &Session) -> Arc<Buckets> {
        session.with_data(|data| {
            if let Some(all) = data.get_mut::<SessionBuckets>() {
                if let Some((_, b)) = all.0.iter().find(|(k, _)| *k == self.key) {
                    return b.clone();
                }
                let b = Arc::new(self.per_session.buckets());
                all.0.push((self.key, b.clone()));
                return b;
            }
            let b = Arc::new(self.per_session.buckets());
            data.insert(SessionBuckets(vec![(self.key, b.clone())]));
            b
        })
    }
}

/// Applies [`RateLimit`] to a service.
///
/// ```
/// use msgi_middleware::{Limit, RateLimitLayer, RatePolicy};
///
/// # fn main() -> Result<(), msgi::ConfigError> {
/// let layer = RateLimitLayer::new(RatePolicy::Reject)
///     .per_session(Limit::frames(100.0)?.and_bytes(1e6)?)
///     .global(Limit::frames(10_000.0)?);
/// # let _ = layer;
/// assert!(Limit::frames(0.0).is_err());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("policy", &self.shared.policy)
            .field("per_session", &self.shared.per_session)
            .field("global", &self.shared.global_limit)
            .finish()
    }
}

impl RateLimitLayer {
    /// No limits yet, with this policy.
    pub fn new(policy: RatePolicy) -> Self {
        RateLimitLayer {
            shared: Shared::new(policy, Limit::default(), None),
        }
    }

    /// Limits each session to `limit`.
    pub fn per_session(self, limit: Limit) -> Self {
        RateLimitLayer {
            shared: Shared::new(self.shared.policy, limit, self.shared.global_limit),
        }
    }

    /// Limits all sessions together to `limit`.
    pub fn global(self, limit: Limit) -> Self {
        RateLimitLayer {
            shared: Shared::new(self.shared.policy, self.shared.per_session, Some(limit)),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            shared: self.shared.clone(),
            unattached: Arc::new(self.shared.per_session.buckets()),
            current: None,
            sleep: None,
        }
    }
}

/// Limits the frames and bytes the inner service receives.
///
/// Clones share everything: the per-session buckets live in each session,
/// the global ones in the layer (see the [module docs](self)).
pub struct RateLimit<S> {
    inner: S,
    shared: Arc<Shared>,
    /// The per-session buckets of frames that carry no session, shared by
    /// this value and its clones.
    unattached: Arc<Buckets>,
    /// The session of the last call and its buckets, so that `poll_ready`
    /// can hold back on its debt and a call of the same session does not
    /// look its buckets up again (a strong handle: see the module docs).
    current: Option<(Session, Arc<Buckets>)>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S: Clone> Clone for RateLimit<S> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            unattached: self.unattached.clone(),
            current: self.current.clone(),
            sleep: None,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("policy", &self.shared.policy)
            .field("per_session", &self.shared.per_session)
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

    /// The per-session buckets `poll_ready` waits on.
    fn ready_buckets(&self) -> &Buckets {
        match &self.current {
            Some((_, b)) => b,
            None => &self.unattached,
        }
    }

    /// The per-session buckets for `frame`'s session.
    fn buckets_for(&mut self, frame: &Frame) -> Arc<Buckets> {
        let Some(session) = frame.extensions().get::<Session>() else {
            return self.unattached.clone();
        };
        if let Some((known, b)) = &self.current {
            if known == session {
                return b.clone();
            }
        }
        let b = self.shared.buckets_of(session);
        self.current = Some((session.clone(), b.clone()));
        b
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
        if self.shared.policy == RatePolicy::Delay {
            loop {
                let now = Instant::now();
                let t = nanos_since(self.shared.epoch, now);
                let wait = self.ready_buckets().debt(t).max(self.shared.global.debt(t));
                if wait == 0 {
                    self.sleep = None;
                    break;
                }
                let deadline = deadline_after(now, wait);
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                sleep.as_mut().reset(deadline);
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, frame: Frame) -> Self::Future {
        let bytes = frame.payload().len() as f64;
        let session = self.buckets_for(&frame);
        let now = Instant::now();
        let t = nanos_since(self.shared.epoch, now);
        let global = &self.shared.global;
        match self.shared.policy {
            RatePolicy::Reject => {
                if !session.try_take(t, bytes) {
                    return ResponseFuture::limited(&frame);
                }
                if !global.try_take(t, bytes) {
                    session.refund(bytes);
                    return ResponseFuture::limited(&frame);
                }
                ResponseFuture::inner(self.inner.call(frame), None)
            }
            RatePolicy::Delay => {
                // Zero unless `poll_ready` did not know this session (a
                // fresh clone): then the call waits here for the debt.
                let wait = session.debt(t).max(global.debt(t));
                session.take(t, bytes);
                global.take(t, bytes);
                let delay = (wait > 0)
                    .then(|| Box::pin(tokio::time::sleep_until(deadline_after(now, wait))));
                ResponseFuture::inner(self.inner.call(frame), delay)
            }
        }
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
        Inner {
            // Boxed, and only when a call must wait (see the module docs),
            // so the usual future stays small.
            delay: Option<Pin<Box<Sleep>>>,
            #[pin]
            fut: F,
        },
        Limited { answer: Option<Frame> },
    }
}

impl<F> ResponseFuture<F> {
    fn inner(fut: F, delay: Option<Pin<Box<Sleep>>>) -> Self {
        ResponseFuture {
            state: State::Inner { delay, fut },
        }
    }

    fn limited(frame: &Frame) -> Self {
        let mut answer = Frame::error("rate limited");
        answer.set_request_id(frame.request_id());
        answer.extensions_mut().insert(crate::Refused::RateLimit);
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
            StateProj::Inner { delay, fut } => {
                if let Some(sleep) = delay {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    *delay = None;
                }
                fut.poll(cx)
            }
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
        let layer =
            RateLimitLayer::new(RatePolicy::Reject).per_session(Limit::frames(2.0).unwrap());
        let mut svc = layer.layer(echo());
        for i in 0..2 {
            let out = call(&mut svc, Frame::data("x").with_request_id(i)).await;
            assert_eq!(out.kind(), Kind::DATA);
        }
        let out = call(&mut svc, Frame::data("x").with_request_id(7)).await;
        assert_eq!(out, Frame::error("rate limited").with_request_id(7));
        assert_eq!(
            out.extensions().get::<crate::Refused>(),
            Some(&crate::Refused::RateLimit)
        );
        // A clone charges the same budget (these frames carry no session,
        // so the value and its clones are one "session")...
        let mut other = svc.clone();
        assert_eq!(call(&mut other, Frame::data("y")).await.kind(), Kind::ERROR);
        // ...and time refills.
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(call(&mut svc, Frame::data("x")).await.kind(), Kind::DATA);
    }

    #[tokio::test(start_paused = true)]
    async fn global_limit_is_shared_by_clones() {
        let layer = RateLimitLayer::new(RatePolicy::Reject).global(Limit::bytes(10.0).unwrap());
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
            .per_session(Limit::frames(1.0).unwrap())
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

    #[test]
    fn rates_are_checked_when_built() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let e = Limit::frames(bad).unwrap_err();
            assert_eq!(e.setting(), "frames_per_sec");
            assert_eq!(Limit::bytes(bad).unwrap_err().setting(), "bytes_per_sec");
            let ok = Limit::frames(1.0).unwrap();
            assert_eq!(ok.and_bytes(bad).unwrap_err().setting(), "bytes_per_sec");
        }
        let l = Limit::frames(3.0).unwrap().and_bytes(5.0).unwrap();
        assert_eq!(
            (l.frames_per_sec(), l.bytes_per_sec()),
            (Some(3.0), Some(5.0))
        );
    }

    /// The smallest rates leave a debt longer than the clock can count:
    /// waiting is "a very long time", never a panic (issue 7, item 6).
    #[tokio::test(start_paused = true)]
    async fn a_tiny_rate_waits_without_overflowing_time() {
        let mut svc = RateLimitLayer::new(RatePolicy::Delay)
            .per_session(Limit::frames(f64::MIN_POSITIVE).unwrap())
            .global(Limit::bytes(1e-300).unwrap())
            .layer(echo());
        assert!(tokio_test_ready(&mut svc).is_ready());
        let _ = svc.call(Frame::data("a")).await;
        assert!(tokio_test_ready(&mut svc).is_pending());
        tokio::time::advance(Duration::from_secs(86_400 * 365)).await;
        assert!(tokio_test_ready(&mut svc).is_pending());
        // A fresh clone, called without waiting, delays its answer instead.
        let mut fresh = svc.clone();
        let mut answer = std::pin::pin!(fresh.call(Frame::data("b")));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(answer.as_mut().poll(&mut cx).is_pending());
    }

    /// `svc.clone().oneshot(frame)` per request is limited like one service.
    #[tokio::test(start_paused = true)]
    async fn a_clone_per_request_is_limited() {
        let svc = RateLimitLayer::new(RatePolicy::Reject)
            .per_session(Limit::frames(2.0).unwrap())
            .layer(echo());
        let mut kinds = Vec::new();
        for _ in 0..3 {
            let answer = svc.clone().oneshot(Frame::data("x")).await.unwrap();
            kinds.push(answer.unwrap().kind());
        }
        assert_eq!(kinds, [Kind::DATA, Kind::DATA, Kind::ERROR]);
    }
}
