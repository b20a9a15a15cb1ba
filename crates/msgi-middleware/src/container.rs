//! Serving containers: dispatch by message type, and delivery by target id.
//!
//! [`ContainerRouter`] is a `Service<Frame>` for an msgi server. It decodes each frame's
//! payload as a [`Container`] (PROTOCOL.md section 6) once, and hands a
//! [`ContainerRequest`] (the container and the frame it came in, with the sender's
//! [`Session`] in its extensions) to the service routed for its message type, in the
//! manner of axum's `Router`, or to the fallback. A route answers with
//! `Option<Container>`; the router sends `Some` back as a DATA frame (with the request's
//! id when it had one, as every answer).
//!
//! [`DeliverToTarget`] is a route (or a fallback) that delivers a container to the
//! session whose client id is its target id, through the [`Registry`]; an unknown target
//! is an error the sender receives, never a silent drop.
//!
//! ```
//! use msgi::{Registry, Server};
//! use msgi_container::Container;
//! use msgi_middleware::container::{ContainerRequest, ContainerRouter, DeliverToTarget};
//! use tower::service_fn;
//!
//! # fn make(registry: Registry) -> Result<(), Box<dyn std::error::Error>> {
//! let router = ContainerRouter::builder()
//!     .route("user_login", service_fn(|req: ContainerRequest| async move {
//!         let user: &str = req.container().get("user")?;
//!         let answer = req.container().reply("response")
//!             .value("status", if user.is_empty() { "refused" } else { "ok" })
//!             .build()?;
//!         Ok::<_, msgi::BoxError>(Some(answer))
//!     }))
//!     .route("chat", DeliverToTarget::new(registry))
//!     .build()?;
//! # let _ = router;
//! # Ok(())
//! # }
//! ```
//!
//! # Errors the sender sees
//!
//! A route's error, like any handler's, is answered with an ERROR frame whose reason is
//! the error's text (with the request id when the request had one). The router's own:
//! `not a container: ...` (the payload does not decode), `no route for message type "x"`
//! (the default fallback), and, from `DeliverToTarget`, `unknown target "x"`,
//! `no target id` and `target "x" cannot take it: ...`.
//!
//! # Readiness and cost
//!
//! As axum's `Router`, the router is always ready and calls a clone of the route's service
//! (`oneshot`), so a route's own backpressure is not seen by the session: bound a slow
//! route with a layer of its own (`ConcurrencyLimit`, `LoadShed`, [`FrameTimeout`]).
//! Per request it allocates the decoded values (one vector per map or array, the strings
//! and bytes are slices of the payload), the boxed clone of the route and its boxed
//! future.
//!
//! [`FrameTimeout`]: crate::FrameTimeout

use std::collections::hash_map::{Entry, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use msgi::{BoxError, Frame, Registry, SendError, Session};
use msgi_container::{Container, DecodeError, Limits};
use tower::util::{BoxCloneSyncService, Oneshot};
use tower::{Service, ServiceExt};

/// A decoded container and the frame it came in.
#[derive(Debug)]
pub struct ContainerRequest {
    container: Container,
    frame: Frame,
}

impl ContainerRequest {
    /// A request as the router makes it (for tests of a route, or other dispatchers).
    pub fn new(container: Container, frame: Frame) -> Self {
        ContainerRequest { container, frame }
    }

    /// The container.
    pub fn container(&self) -> &Container {
        &self.container
    }

    /// The frame it came in: its kind, request id, payload (the encoded container) and
    /// extensions.
    pub fn frame(&self) -> &Frame {
        &self.frame
    }

    /// The session that sent it, when it came through an msgi server.
    pub fn session(&self) -> Option<&Session> {
        self.frame.extensions().get::<Session>()
    }

    /// The container and the frame.
    pub fn into_parts(self) -> (Container, Frame) {
        (self.container, self.frame)
    }
}

/// A route: any service of requests to optional answers, boxed.
type Route = BoxCloneSyncService<ContainerRequest, Option<Container>, BoxError>;

/// Why a container was not served (the text the sender receives in an ERROR frame).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The payload is not a container. The text includes the decoder's, since a session
    /// sends the peer only an error's own text; the decode error is kept to match on.
    #[error("not a container: {0}")]
    NotAContainer(DecodeError),
    /// No route for the message type, and no fallback was set.
    #[error("no route for message type {0:?}")]
    NoRoute(String),
    /// [`DeliverToTarget`]: the container names no target.
    #[error("no target id")]
    NoTarget,
    /// [`DeliverToTarget`]: no session holds the target's client id.
    #[error("unknown target {0:?}")]
    UnknownTarget(String),
    /// [`DeliverToTarget`]: the target's session did not take the frame. The text
    /// includes the session's reason, as for [`NotAContainer`](Self::NotAContainer).
    #[error("target {target:?} cannot take it: {reason}")]
    Undeliverable {
        /// The target id.
        target: String,
        /// Why.
        reason: SendError,
    },
    /// [`DeliverToTarget`]: the sender's client id cannot be the container's source id
    /// (it is longer than a source id may be), so the container is not forwarded with a
    /// source the sender chose.
    #[error("cannot set the source id to the sender's client id")]
    Unstampable(#[source] msgi_container::BuildError),
}

/// A route given twice, or a message type no container can have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// Two routes for one message type.
    #[error("message type {0:?} routed twice")]
    DuplicateRoute(String),
    /// A message type longer than a container's (255 bytes) would never match.
    #[error("message type of {0} bytes can never match (at most 255)")]
    MessageTypeTooLong(usize),
}

/// Builds a [`ContainerRouter`]. Mistakes are kept and returned by [`build`](Self::build).
#[must_use = "a builder does nothing until `build` is called"]
pub struct ContainerRouterBuilder {
    routes: HashMap<String, Route>,
    fallback: Option<Route>,
    limits: Limits,
    error: Option<RouterError>,
}

impl fmt::Debug for ContainerRouterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContainerRouterBuilder")
            .field("routes", &self.routes.keys().collect::<Vec<_>>())
            .field("fallback", &self.fallback.is_some())
            .field("limits", &self.limits)
            .finish()
    }
}

impl ContainerRouterBuilder {
    /// Containers of `message_type` go to `service`.
    pub fn route<S>(mut self, message_type: impl Into<String>, service: S) -> Self
    where
        S: Service<ContainerRequest, Response = Option<Container>> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let message_type = message_type.into();
        if message_type.len() > msgi_container::MAX_SHORT_LEN {
            self.keep(RouterError::MessageTypeTooLong(message_type.len()));
        } else {
            match self.routes.entry(message_type) {
                Entry::Occupied(e) => {
                    let e = RouterError::DuplicateRoute(e.key().clone());
                    self.keep(e);
                }
                Entry::Vacant(e) => {
                    e.insert(boxed(service));
                }
            }
        }
        self
    }

    /// Containers of any other message type go to `service` (by default they are
    /// answered with [`RouteError::NoRoute`]).
    pub fn fallback<S>(mut self, service: S) -> Self
    where
        S: Service<ContainerRequest, Response = Option<Container>> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.fallback = Some(boxed(service));
        self
    }

    /// The decoding limits (default [`Limits::DEFAULT`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    fn keep(&mut self, e: RouterError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    /// The router, or the first mistake made while building it.
    pub fn build(self) -> Result<ContainerRouter, RouterError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let fallback = self.fallback.unwrap_or_else(|| {
            boxed(tower::service_fn(|req: ContainerRequest| async move {
                Err::<Option<Container>, _>(RouteError::NoRoute(
                    req.container.message_type().to_owned(),
                ))
            }))
        });
        Ok(ContainerRouter {
            inner: Arc::new(Inner {
                routes: self.routes,
                fallback,
                limits: self.limits,
            }),
        })
    }
}

fn boxed<S>(service: S) -> Route
where
    S: Service<ContainerRequest, Response = Option<Container>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    BoxCloneSyncService::new(service.map_err(Into::into))
}

struct Inner {
    routes: HashMap<String, Route>,
    fallback: Route,
    limits: Limits,
}

/// Dispatches containers by message type (see the [module docs](self)). Clones share
/// their routes.
#[derive(Clone)]
pub struct ContainerRouter {
    inner: Arc<Inner>,
}

impl fmt::Debug for ContainerRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContainerRouter")
            .field("routes", &self.inner.routes.keys().collect::<Vec<_>>())
            .field("limits", &self.inner.limits)
            .finish()
    }
}

impl ContainerRouter {
    /// A builder without routes.
    pub fn builder() -> ContainerRouterBuilder {
        ContainerRouterBuilder {
            routes: HashMap::new(),
            fallback: None,
            limits: Limits::DEFAULT,
            error: None,
        }
    }
}

impl Service<Frame> for ContainerRouter {
    type Response = Option<Frame>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, frame: Frame) -> ResponseFuture {
        let container = match Container::decode_with(frame.payload(), &self.inner.limits) {
            Ok(c) => c,
            Err(e) => {
                return ResponseFuture {
                    state: State::Failed(Some(RouteError::NotAContainer(e).into())),
                }
            }
        };
        let route = self
            .inner
            .routes
            .get(container.message_type())
            .unwrap_or(&self.inner.fallback)
            .clone();
        ResponseFuture {
            state: State::Routed(route.oneshot(ContainerRequest { container, frame })),
        }
    }
}

/// The answer of a [`ContainerRouter`].
pub struct ResponseFuture {
    state: State,
}

// The failed state is the rare one; boxing the routed one would cost an allocation per
// request.
#[allow(clippy::large_enum_variant)]
enum State {
    Failed(Option<BoxError>),
    Routed(Oneshot<Route, ContainerRequest>),
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl Future for ResponseFuture {
    type Output = Result<Option<Frame>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Both states are Unpin (the route's future is boxed), so no projection.
        let this = self.get_mut();
        match &mut this.state {
            State::Failed(e) => Poll::Ready(Err(e
                .take()
                .unwrap_or_else(|| "ResponseFuture polled after completion".into()))),
            State::Routed(fut) => Pin::new(fut)
                .poll(cx)
                .map_ok(|answer| answer.map(|c| Frame::data(c.encode()))),
        }
    }
}

/// Delivers a container to the session whose client id is its target id (a route or a
/// fallback of [`ContainerRouter`]).
///
/// - The target's session gets a DATA frame holding the container as it came, except
///   that its source id is set to the sender's client id when it came through an msgi
///   server (so a receiver can trust it; the source sub-id is kept as sent).
/// - A container with an empty target id is [`RouteError::NoTarget`]; one whose target no
///   session holds is [`RouteError::UnknownTarget`]; a target session that refuses the
///   push (closing, slow consumer, too large) is [`RouteError::Undeliverable`]; a sender
///   whose client id cannot be a source id is [`RouteError::Unstampable`] (client ids
///   and source ids are both at most 255 bytes, so this does not happen with an msgi
///   server). The sender receives each as an ERROR.
/// - Once delivered, a correlated request is answered with a `delivered` container (from
///   the target to the sender, no values); a one-way frame is not answered.
#[derive(Clone, Debug)]
pub struct DeliverToTarget {
    registry: Registry,
}

impl DeliverToTarget {
    /// Delivers through `registry` (the server's, [`msgi::Server::registry`]).
    pub fn new(registry: Registry) -> Self {
        DeliverToTarget { registry }
    }

    fn deliver(&self, req: &ContainerRequest) -> Result<Option<Container>, RouteError> {
        let c = &req.container;
        let target = c.target_id();
        if target.is_empty() {
            return Err(RouteError::NoTarget);
        }
        let session = self
            .registry
            .get_by_client_id(target)
            .ok_or_else(|| RouteError::UnknownTarget(target.to_owned()))?;
        let payload: Bytes = match req.session().map(Session::client_id) {
            Some(sender) if sender != c.source_id() => {
                let mut stamped = c.clone();
                // A client id is at most 255 bytes (MAX_CLIENT_ID_LEN), as a source id
                // (MAX_SHORT_LEN): a test pins that the two agree. Should they ever not,
                // the container is refused rather than forwarded with a source the
                // receiver would trust and the sender chose.
                stamped
                    .set_source(sender, c.source_sub_id().to_owned())
                    .map_err(RouteError::Unstampable)?;
                stamped.encode()
            }
            _ => req.frame.payload().clone(),
        };
        session
            .send(Frame::data(payload))
            .map_err(|reason| RouteError::Undeliverable {
                target: target.to_owned(),
                reason,
            })?;
        if req.frame.request_id().is_none() {
            return Ok(None);
        }
        // "delivered" and ids taken from a valid container always fit.
        Ok(c.reply("delivered").build().ok())
    }
}

impl Service<ContainerRequest> for DeliverToTarget {
    type Response = Option<Container>;
    type Error = RouteError;
    type Future = std::future::Ready<Result<Option<Container>, RouteError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), RouteError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: ContainerRequest) -> Self::Future {
        std::future::ready(self.deliver(&req))
    }
}
