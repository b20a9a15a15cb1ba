//! A per-request deadline that answers instead of failing.
//!
//! [`FrameTimeout`] gives the inner service `timeout` to answer. When it
//! takes longer, the request is dropped and answered with an ERROR frame
//! `timed out after N ms`, carrying the request's id when it had one, so the
//! peer gets its one answer and the session goes on.
//!
//! tower's `Timeout` fails the call with `Elapsed` instead, which changes
//! the error type; in an msgi server that error also becomes an ERROR frame
//! with the request id, but with tower's text and a boxed error at every
//! layer above it. `FrameTimeout` keeps the inner service's error type and
//! makes the timeout an ordinary answer that layers above can inspect.
//!
//! ```
//! use std::time::Duration;
//! use msgi::Frame;
//! use msgi_middleware::ServiceBuilderExt;
//! use tower::{service_fn, ServiceBuilder};
//!
//! let svc = ServiceBuilder::new()
//!     .frame_timeout(Duration::from_millis(250))
//!     .concurrency_limit(16)
//!     .service(service_fn(|f: Frame| async move { Ok::<_, std::convert::Infallible>(Some(f)) }));
//! # let _ = svc;
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use msgi::Frame;
use tokio::time::Sleep;
use tower::{Layer, Service};

/// Applies [`FrameTimeout`] to a service.
#[derive(Clone, Copy, Debug)]
pub struct FrameTimeoutLayer {
    timeout: Duration,
}

impl FrameTimeoutLayer {
    /// Requests get `timeout` to be answered.
    pub fn new(timeout: Duration) -> Self {
        FrameTimeoutLayer { timeout }
    }
}

impl<S> Layer<S> for FrameTimeoutLayer {
    type Service = FrameTimeout<S>;

    fn layer(&self, inner: S) -> FrameTimeout<S> {
        FrameTimeout::new(inner, self.timeout)
    }
}

/// Answers with an ERROR frame when the inner service is too slow.
#[derive(Clone, Debug)]
pub struct FrameTimeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S> FrameTimeout<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, timeout: Duration) -> Self {
        FrameTimeout { inner, timeout }
    }

    /// A layer for this middleware.
    pub fn layer(timeout: Duration) -> FrameTimeoutLayer {
        FrameTimeoutLayer::new(timeout)
    }

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
}

impl<S> Service<Frame> for FrameTimeout<S>
where
    S: Service<Frame, Response = Option<Frame>>,
{
    type Response = Option<Frame>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, frame: Frame) -> Self::Future {
        let request_id = frame.request_id();
        ResponseFuture {
            inner: self.inner.call(frame),
            sleep: tokio::time::sleep(self.timeout),
            request_id,
            timeout: self.timeout,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response of [`FrameTimeout`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        request_id: Option<u32>,
        timeout: Duration,
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Option<Frame>, E>>,
{
    type Output = Result<Option<Frame>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(out);
        }
        ready!(this.sleep.poll(cx));
        let mut error = Frame::error(format!("timed out after {} ms", this.timeout.as_millis()));
        error.set_request_id(*this.request_id);
        error.extensions_mut().insert(crate::Refused::Timeout);
        Poll::Ready(Ok(Some(error)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msgi::Kind;
    use tower_test::{assert_request_eq, mock};

    #[tokio::test(start_paused = true)]
    async fn slow_requests_are_answered_with_an_error_carrying_the_id() {
        let (svc, mut handle) = mock::pair::<Frame, Option<Frame>>();
        let mut svc = FrameTimeout::new(svc, Duration::from_millis(100));
        handle.allow(2);

        let slow = tower::ServiceExt::ready(&mut svc)
            .await
            .unwrap()
            .call(Frame::data("slow").with_request_id(5));
        let _pending = assert_request_eq!(handle, Frame::data("slow").with_request_id(5));
        let answer = slow.await.unwrap().unwrap();
        assert_eq!(answer.kind(), Kind::ERROR);
        assert_eq!(answer.request_id(), Some(5));
        assert_eq!(answer.payload_text(), "timed out after 100 ms");
        assert_eq!(
            answer.extensions().get::<crate::Refused>(),
            Some(&crate::Refused::Timeout)
        );

        let fast = tower::ServiceExt::ready(&mut svc)
            .await
            .unwrap()
            .call(Frame::data("fast"));
        let (_, reply) = handle.next_request().await.unwrap();
        reply.send_response(Some(Frame::data("done")));
        assert_eq!(fast.await.unwrap(), Some(Frame::data("done")));
    }

    #[tokio::test(start_paused = true)]
    async fn inner_errors_pass_through_unchanged() {
        let (svc, mut handle) = mock::pair::<Frame, Option<Frame>>();
        let mut svc = FrameTimeout::new(svc, Duration::from_secs(1));
        handle.allow(1);
        let call = tower::ServiceExt::ready(&mut svc)
            .await
            .unwrap()
            .call(Frame::data("x"));
        let (_, reply) = handle.next_request().await.unwrap();
        reply.send_error("boom");
        assert_eq!(call.await.unwrap_err().to_string(), "boom");
    }

    /// A timeout too long for the clock means "never", not a panic
    /// (issue 7, item 6).
    #[tokio::test(start_paused = true)]
    async fn a_huge_timeout_never_fires_and_does_not_panic() {
        let (svc, mut handle) = tower_test::mock::pair::<Frame, Option<Frame>>();
        handle.allow(1);
        let mut svc = FrameTimeout::new(svc, Duration::MAX);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(svc.poll_ready(&mut cx).is_ready());
        let mut answer = std::pin::pin!(svc.call(Frame::data("x")));
        assert!(answer.as_mut().poll(&mut cx).is_pending());
        // tokio puts a deadline past its clock about 30 years ahead.
        tokio::time::advance(Duration::from_secs(86_400 * 365 * 10)).await;
        assert!(answer.as_mut().poll(&mut cx).is_pending());
    }
}
