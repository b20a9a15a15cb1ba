//! [`Pool`]: N connections to one server behind one `Service`.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use msgi::proto::text::PeerText;
use msgi::{BoxError, ClientError, ConfigError, Frame, Kind, MakeFraming};
use tower::Service;

use crate::balanced::{Balanced, Builder};
use crate::discover::Upstreams;

/// Connections to one server, balanced as [`Balanced`] does (p2c on
/// load, each connection supervised and reconnected): for a client that
/// outgrows one connection. A `Service<Frame, Response = Frame>` for
/// correlated calls (a frame without a request id is sent correlated, and
/// its answer comes back without one); an ERROR answer is
/// [`ClientError::Remote`], as for a [`Client`](msgi::Client). Clones
/// share the connections.
#[derive(Clone)]
pub struct Pool {
    inner: Balanced,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

impl Pool {
    /// `connections` connections to `addr` with the default settings.
    pub fn new(addr: SocketAddr, connections: usize) -> Result<Pool, ConfigError> {
        Pool::with_builder(addr, connections, Builder::default())
    }

    /// `connections` connections to `addr` made as `builder` says.
    pub fn with_builder<C>(
        addr: SocketAddr,
        connections: usize,
        builder: Builder<C>,
    ) -> Result<Pool, ConfigError>
    where
        C: MakeFraming + Clone + fmt::Debug + Send + Sync + 'static,
    {
        let inner = builder
            .connections_per_upstream(connections)
            .build(&Upstreams::from([addr]))?;
        Ok(Pool { inner })
    }
}

impl Service<Frame> for Pool {
    type Response = Frame;
    type Error = BoxError;
    type Future = PoolFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut frame: Frame) -> PoolFuture {
        let id = frame.request_id();
        if id.is_none() {
            // Any id makes it correlated: the connection puts its own on
            // the wire.
            frame.set_request_id(Some(1));
        }
        PoolFuture {
            inner: self.inner.call(frame),
            id,
        }
    }
}

/// The answer of a [`Pool`] call.
pub struct PoolFuture {
    inner: <Balanced as Service<Frame>>::Future,
    id: Option<u32>,
}

impl fmt::Debug for PoolFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolFuture").finish_non_exhaustive()
    }
}

impl Future for PoolFuture {
    type Output = Result<Frame, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let answer = ready!(Pin::new(&mut self.inner).poll(cx))?;
        Poll::Ready(match answer {
            Some(mut answer) if answer.kind() != Kind::ERROR => {
                answer.set_request_id(self.id);
                Ok(answer)
            }
            Some(error) => Err(ClientError::Remote(PeerText(error.payload()).to_string()).into()),
            None => Err(ClientError::NotReady.into()),
        })
    }
}
