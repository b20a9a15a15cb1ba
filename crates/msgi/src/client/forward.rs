//! [`Forward`]: a [`Client`] as a server's handler, so that a server (a
//! gateway) can pass its requests on to another server.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::Service;

use super::handle::Client;
use super::service::ResponseFuture;
use super::ClientError;
use msgi_proto::Frame;

/// Forwards frames to a server through a [`Client`], in the shape of a
/// server's handler (`Service<Frame, Response = Option<Frame>>`):
///
/// - a one-way frame (no request id) is sent one-way and answers `None`
///   (nothing goes back);
/// - a correlated request is called upstream and the upstream answer is the
///   response (the serving side puts its caller's request id on it);
/// - an upstream ERROR answer is returned as that ERROR frame, payload
///   untouched, not as an `Err`: the caller sees the upstream's own ERROR.
///
/// `Err` is the client's own failure ([`ClientError::ConnectionLost`],
/// [`ClientError::NotConnected`], ...), which a server answers with an
/// ERROR carrying the request id. Readiness is the client's
/// ([`Client`]'s `poll_ready`), so a balancer over several `Forward`s sees
/// which upstream can take a request. Clones start without a reservation,
/// as [`Client`]'s do.
#[derive(Clone)]
pub struct Forward {
    client: Client,
}

impl Forward {
    /// Forwards through `client`.
    pub fn new(client: Client) -> Self {
        Forward { client }
    }

    /// The client forwarded through.
    pub fn get_ref(&self) -> &Client {
        &self.client
    }

    /// The client back.
    pub fn into_inner(self) -> Client {
        self.client
    }
}

impl fmt::Debug for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forward")
            .field("client", &self.client)
            .finish()
    }
}

impl Service<Frame> for Forward {
    type Response = Option<Frame>;
    type Error = ClientError;
    type Future = ForwardFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        self.client.poll_ready(cx)
    }

    fn call(&mut self, frame: Frame) -> ForwardFuture {
        match frame.request_id() {
            None => ForwardFuture(Inner::Sent(Some(self.client.send_reserved(frame)))),
            Some(_) => ForwardFuture(Inner::Called(self.client.call_reserved(frame, true))),
        }
    }
}

/// The response of [`Forward`].
pub struct ForwardFuture(Inner);

enum Inner {
    Sent(Option<Result<(), ClientError>>),
    Called(ResponseFuture),
}

impl fmt::Debug for ForwardFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwardFuture").finish_non_exhaustive()
    }
}

impl Future for ForwardFuture {
    type Output = Result<Option<Frame>, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Inner::Sent(sent) => Poll::Ready(match sent.take() {
                Some(sent) => sent.map(|()| None),
                None => Err(ClientError::NotReady),
            }),
            Inner::Called(answer) => Pin::new(answer).poll(cx).map(|r| r.map(Some)),
        }
    }
}
