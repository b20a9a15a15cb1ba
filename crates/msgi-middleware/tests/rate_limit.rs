//! The per-session rate limit is per session whatever the service clones
//! (issue 7, item 22): a handler that clones the limited service for every
//! request (`svc.clone().oneshot(frame)`, as `Steer` or a custom
//! make-service do) is still limited, and two sessions have separate limits.
//! Over real loopback sockets.

#![allow(clippy::unwrap_used)]

#[path = "../../msgi/tests/support/mod.rs"]
mod support;

use std::convert::Infallible;
use std::time::Duration;

use msgi::{Client, ClientError, Frame, Server};
use msgi_middleware::{Limit, RateLimitLayer, RatePolicy};
use support::{serve, within, TestServer};
use tower::{Layer, ServiceExt};

/// One frame per 100 s: the first frame of a session passes, the next is
/// over the limit for far longer than any test runs.
fn layer(policy: RatePolicy) -> RateLimitLayer {
    RateLimitLayer::new(policy).per_session(Limit::frames(0.01).unwrap())
}

/// A handler that runs every request through a fresh clone of the limited
/// echo service.
async fn server(policy: RatePolicy) -> TestServer {
    // A call held by the limit must not hold the test's shutdown for long.
    let builder = Server::builder().drain_timeout(Duration::from_millis(200));
    let limited = layer(policy).layer(tower::service_fn(|f: Frame| async move {
        Ok::<_, Infallible>(Some(Frame::data(f.payload().clone())))
    }));
    let handler = tower::service_fn(move |f: Frame| limited.clone().oneshot(f));
    serve(builder, handler).await
}

async fn client(server: &TestServer) -> Client {
    within(Client::connect(server.addr)).await.unwrap()
}

#[tokio::test]
async fn reject_a_clone_per_request_is_limited_per_session() {
    let mut server = server(RatePolicy::Reject).await;
    let (a, b) = (client(&server).await, client(&server).await);

    assert!(within(a.call(Frame::data("a1"))).await.is_ok());
    assert_eq!(
        within(a.call(Frame::data("a2"))).await.unwrap_err(),
        ClientError::Remote("rate limited".into())
    );
    // Another session has a budget of its own.
    assert!(within(b.call(Frame::data("b1"))).await.is_ok());
    assert_eq!(
        within(b.call(Frame::data("b2"))).await.unwrap_err(),
        ClientError::Remote("rate limited".into())
    );
    a.close().await;
    b.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn delay_a_clone_per_request_is_held_per_session() {
    let mut server = server(RatePolicy::Delay).await;
    let (a, b) = (client(&server).await, client(&server).await);

    assert!(within(a.call(Frame::data("a1"))).await.is_ok());
    // The second frame of session a owes 100 s: it is not answered...
    let held = tokio::time::timeout(Duration::from_millis(300), a.call(Frame::data("a2"))).await;
    assert!(held.is_err(), "answered at once: {held:?}");
    // ...while session b, limited on its own, is served at once.
    assert!(within(b.call(Frame::data("b1"))).await.is_ok());
    a.close().await;
    b.close().await;
    server.shutdown().await;
}

/// One limited service shared by every session (behind a `Buffer`) waits,
/// before any session's next request, for the debt of the session that
/// called last (as the module docs and docs/PROTOCOL.md section 5 say).
#[tokio::test]
async fn delay_one_service_shared_by_sessions_waits_on_the_last_callers_debt() {
    let builder = Server::builder().drain_timeout(Duration::from_millis(200));
    let limited = layer(RatePolicy::Delay).layer(tower::service_fn(|f: Frame| async move {
        Ok::<_, Infallible>(Some(Frame::data(f.payload().clone())))
    }));
    let shared = tower::buffer::Buffer::new(limited, 16);
    let handler = tower::service_fn(move |f: Frame| {
        let shared = shared.clone();
        async move { shared.oneshot(f).await.map_err(|e| e.to_string()) }
    });
    let mut server = serve(builder, handler).await;
    let (a, b) = (client(&server).await, client(&server).await);

    // Session a's first frame passes and leaves a in debt for 100 s...
    assert!(within(a.call(Frame::data("a1"))).await.is_ok());
    // ...and session b, with a budget of its own, waits for a's debt.
    let held = tokio::time::timeout(Duration::from_millis(300), b.call(Frame::data("b1"))).await;
    assert!(held.is_err(), "answered at once: {held:?}");
    a.close().await;
    b.close().await;
    server.shutdown().await;
}
