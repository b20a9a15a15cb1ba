//! The serve entry, in axum's manner: [`Server::serve`] takes a listener and
//! a service (or a per-session maker, [`PerSession`]) and returns a
//! [`Serve`] future; [`Serve::with_graceful_shutdown`] adds the signal.
//!
//! [`Server::serve`]: crate::Server::serve

use std::fmt;
use std::future::{Future, Ready};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::Service;

use crate::session::Session;
use crate::BoxError;
use msgi_proto::Frame;

mod sealed {
    pub trait Sealed {}
}

/// What [`Server::serve`](crate::Server::serve) and
/// [`Server::serve_connection`](crate::Server::serve_connection) take: a
/// handler `Service<Frame>` (cloned for each session), or a make-service
/// wrapped in [`PerSession`] (called with each session's [`Session`] to make
/// that session's service, as axum's `IntoMakeService` makes one per
/// connection).
///
/// Sealed: implemented for every `Service<Frame, Response = Option<Frame>>`
/// that is `Clone + Send` with a `Send` future, and for [`PerSession`].
pub trait MakeSessionService: sealed::Sealed + Clone + Send + 'static {
    /// The service one session runs.
    #[doc(hidden)]
    type Service: Service<Frame, Response = Option<Frame>, Error: Into<BoxError>, Future: Send>
        + Send
        + 'static;
    /// Makes it.
    #[doc(hidden)]
    type MakeFuture: Future<Output = Result<Self::Service, BoxError>> + Send + 'static;

    /// Whether a service can be made now.
    #[doc(hidden)]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>;

    /// Makes the service of `session`.
    #[doc(hidden)]
    fn make(&mut self, session: Session) -> Self::MakeFuture;
}

impl<S> sealed::Sealed for S where S: Service<Frame> {}

impl<S> MakeSessionService for S
where
    S: Service<Frame, Response = Option<Frame>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Service = S;
    type MakeFuture = Ready<Result<S, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn make(&mut self, _session: Session) -> Self::MakeFuture {
        std::future::ready(Ok(self.clone()))
    }
}

/// A make-service (`tower::MakeService<Session, Frame>`: a
/// `Service<Session>` whose response is the session's `Service<Frame>`)
/// served once per session: per-session state lives in the service itself.
///
/// The maker is cloned for each connection, inside whose task it is asked
/// [`poll_ready`](Service::poll_ready) and called once the session exists
/// (after the accept step); a close meanwhile (shutdown, the application)
/// does not wait for it. Its errors close that session with
/// [`CloseReason::ServiceFailed`](crate::CloseReason::ServiceFailed).
///
/// ```no_run
/// use msgi::{Frame, PerSession, Server, Session};
/// use tower::service_fn;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let make = service_fn(|session: Session| async move {
///     let id = session.id();
///     Ok::<_, std::convert::Infallible>(service_fn(move |_: Frame| async move {
///         Ok::<_, std::convert::Infallible>(Some(Frame::data(id.to_string())))
///     }))
/// });
/// Server::builder().build()?.serve(listener, PerSession(make)).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct PerSession<M>(pub M);

impl<M> sealed::Sealed for PerSession<M> {}

impl<M, S> MakeSessionService for PerSession<M>
where
    M: Service<Session, Response = S> + Clone + Send + 'static,
    M::Error: Into<BoxError>,
    M::Future: Send + 'static,
    S: Service<Frame, Response = Option<Frame>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Service = S;
    type MakeFuture = Making<M::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn make(&mut self, session: Session) -> Self::MakeFuture {
        Making {
            fut: self.0.call(session),
        }
    }
}

pin_project_lite::pin_project! {
    /// A [`PerSession`] maker's future, its error boxed.
    #[doc(hidden)]
    #[derive(Debug)]
    pub struct Making<F> {
        #[pin]
        fut: F,
    }
}

impl<F, S, E> Future for Making<F>
where
    F: Future<Output = Result<S, E>>,
    E: Into<BoxError>,
{
    type Output = Result<S, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().fut.poll(cx).map_err(Into::into)
    }
}

/// The accept loop, given its shutdown signal.
pub(crate) type Run = Box<
    dyn FnOnce(
            Pin<Box<dyn Future<Output = ()> + Send>>,
        ) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send>>
        + Send,
>;

/// Runs the loop on first poll.
enum State {
    Start(Run),
    Running(Pin<Box<dyn Future<Output = io::Result<()>> + Send>>),
    Done,
}

impl State {
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        signal: impl FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Poll<io::Result<()>> {
        if matches!(self, State::Start(_)) {
            if let State::Start(run) = std::mem::replace(self, State::Done) {
                *self = State::Running(run(signal()));
            }
        }
        match self {
            State::Running(fut) => {
                let poll = fut.as_mut().poll(cx);
                if poll.is_ready() {
                    *self = State::Done;
                }
                poll
            }
            _ => Poll::Ready(Err(io::Error::other("Serve polled after it completed"))),
        }
    }
}

/// The future of [`Server::serve`](crate::Server::serve): it runs until the
/// listener is gone; add a shutdown signal with
/// [`with_graceful_shutdown`](Serve::with_graceful_shutdown).
///
/// # Errors
///
/// The listener's error when it is gone (see [`Listener`](crate::Listener)),
/// or the accept step's `poll_ready` error. Other accept errors are retried.
#[must_use = "a Serve does nothing until polled"]
pub struct Serve {
    state: State,
}

impl Serve {
    pub(crate) fn new(run: Run) -> Self {
        Serve {
            state: State::Start(run),
        }
    }

    /// Serves until `signal` completes, then shuts down gracefully: no new
    /// connections; connections still in their accept step are dropped;
    /// every session gets DISCONNECT `server shutdown` after its accepted
    /// requests are answered (a session whose service is still being made
    /// says it at once, having read nothing); and the future completes once
    /// every session has ended, within the drain timeout after `signal`
    /// (sessions of [`Server::serve_connection`](crate::Server::serve_connection)
    /// on this server included). The server stays shut down: a later
    /// `serve_connection` says DISCONNECT `server shutdown` at once.
    pub fn with_graceful_shutdown<G>(self, signal: G) -> WithGracefulShutdown<G>
    where
        G: Future<Output = ()> + Send + 'static,
    {
        WithGracefulShutdown {
            state: self.state,
            signal: Some(signal),
        }
    }
}

impl fmt::Debug for Serve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve").finish_non_exhaustive()
    }
}

impl Future for Serve {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.state
            .poll(cx, || Box::pin(std::future::pending::<()>()))
    }
}

/// [`Serve`] with a shutdown signal (see [`Serve::with_graceful_shutdown`]).
#[must_use = "a WithGracefulShutdown does nothing until polled"]
pub struct WithGracefulShutdown<G> {
    state: State,
    signal: Option<G>,
}

impl<G> fmt::Debug for WithGracefulShutdown<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithGracefulShutdown")
            .finish_non_exhaustive()
    }
}

impl<G: Future<Output = ()> + Send + 'static> Future for WithGracefulShutdown<G> {
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Never pinned in place: the signal is moved into the loop's box.
        let this = self.get_mut();
        let signal = &mut this.signal;
        this.state.poll(cx, || match signal.take() {
            Some(signal) => Box::pin(signal),
            None => Box::pin(std::future::pending::<()>()),
        })
    }
}

// The signal is never pinned in place (it is boxed when the loop starts).
impl<G> Unpin for WithGracefulShutdown<G> {}
