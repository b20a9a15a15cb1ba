//! How the client opens a transport: a connector is a tower
//! `Service<Target>` whose response is the byte stream (as hyper-util's
//! `HttpConnector` and tonic's connectors are), called once per connection
//! and again for each reconnect. [`TcpConnector`] is the default; any
//! service answering an `AsyncRead + AsyncWrite` (TLS over TCP, a Unix
//! socket, an in-memory pipe) works through
//! [`ClientBuilder::connect_with_connector`](super::ClientBuilder::connect_with_connector).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};
use tower::Service;

use super::ClientError;
use crate::accept::{Accepted, ConnectInfo};
use msgi_proto::BoxError;

/// A transport being opened, and what its connector learned.
pub(super) type Connecting<T> =
    Pin<Box<dyn Future<Output = Result<(T, ConnectInfo), ClientError>> + Send>>;

/// What a connector answers: a byte stream (any `AsyncRead + AsyncWrite`,
/// with nothing more to say), or an [`Accepted`] (a byte stream and the
/// [`ConnectInfo`] its upgrade recorded). The client takes the
/// [`SessionKeys`](crate::SessionKeys) of a pre-shared-key handshake out of
/// that info and hands them to the connection's transforms.
pub trait Connected: Send + 'static {
    /// The byte stream the client frames.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The stream and what the connector learned about the connection.
    fn into_connected(self) -> (Self::Io, ConnectInfo);
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Connected for T {
    type Io = T;

    fn into_connected(self) -> (T, ConnectInfo) {
        (self, ConnectInfo::new())
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Connected for Accepted<T> {
    type Io = T;

    fn into_connected(self) -> (T, ConnectInfo) {
        self.into_parts()
    }
}

/// Opens TCP connections with `TCP_NODELAY` set as configured: each
/// address the target resolves to is tried in turn, and an error names the
/// last one tried ([`ClientError::Connect`], its source the
/// [`io::Error`]).
#[derive(Debug, Clone, Copy)]
pub struct TcpConnector {
    nodelay: bool,
}

impl Default for TcpConnector {
    fn default() -> Self {
        TcpConnector { nodelay: true }
    }
}

impl TcpConnector {
    /// A connector with `TCP_NODELAY` on.
    pub fn new() -> Self {
        TcpConnector::default()
    }

    /// Sets `TCP_NODELAY` on each connection (default true).
    pub fn nodelay(mut self, nodelay: bool) -> Self {
        self.nodelay = nodelay;
        self
    }
}

impl<A> Service<A> for TcpConnector
where
    A: ToSocketAddrs + Send + 'static,
{
    type Response = TcpStream;
    type Error = ClientError;
    type Future = Pin<Box<dyn Future<Output = Result<TcpStream, ClientError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, target: A) -> Self::Future {
        Box::pin(tcp_connect(target, self.nodelay))
    }
}

async fn tcp_connect<A: ToSocketAddrs>(addr: A, nodelay: bool) -> Result<TcpStream, ClientError> {
    let addrs = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| ClientError::connect("the host (name lookup)", e))?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                stream
                    .set_nodelay(nodelay)
                    .map_err(|e| ClientError::connect(addr, e))?;
                return Ok(stream);
            }
            Err(e) => last = Some(ClientError::connect(addr, e)),
        }
    }
    Err(last.unwrap_or_else(|| {
        ClientError::connect(
            "the host (name lookup)",
            io::Error::new(io::ErrorKind::NotFound, "no address"),
        )
    }))
}

/// A connector's error as the client reports it: a [`ClientError`] as it
/// is (the TCP connector's names the address), an [`io::Error`] or any
/// other error as [`ClientError::Connect`] to `the transport`, with the
/// error as its source.
fn connect_error(error: BoxError) -> ClientError {
    let error = match error.downcast::<ClientError>() {
        Ok(error) => return *error,
        Err(error) => error,
    };
    let error = match error.downcast::<io::Error>() {
        Ok(error) => *error,
        Err(error) => io::Error::other(error),
    };
    ClientError::connect("the transport", error)
}

/// What the task holds: a connector service and its target, behind one
/// object-safe face.
trait Open<T>: Send {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ClientError>>;
    fn open(&mut self) -> Connecting<T>;
}

struct ServiceOpen<S, A> {
    service: S,
    target: A,
}

impl<S, A> Open<<S::Response as Connected>::Io> for ServiceOpen<S, A>
where
    S: Service<A> + Send,
    S::Response: Connected,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    A: Clone + Send,
{
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        self.service
            .poll_ready(cx)
            .map_err(|e| connect_error(e.into()))
    }

    fn open(&mut self) -> Connecting<<S::Response as Connected>::Io> {
        let opening = self.service.call(self.target.clone());
        Box::pin(async move {
            opening
                .await
                .map(Connected::into_connected)
                .map_err(|e| connect_error(e.into()))
        })
    }
}

/// Opens one transport per connection; again for each reconnect.
pub(super) struct Connector<T>(Box<dyn Open<T>>);

impl<T> Connector<T> {
    pub(super) fn new<S, A>(service: S, target: A) -> Self
    where
        S: Service<A> + Send + 'static,
        S::Response: Connected<Io = T>,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        A: Clone + Send + 'static,
    {
        Connector(Box::new(ServiceOpen { service, target }))
    }

    /// Ready to open (as tower requires before each call).
    pub(super) fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        self.0.poll_ready(cx)
    }

    /// Starts opening; call after `poll_ready` returned `Ready(Ok)`.
    pub(super) fn open(&mut self) -> Connecting<T> {
        self.0.open()
    }
}

/// A connector made of a closure (what
/// [`ClientBuilder::connect_with`](super::ClientBuilder::connect_with)
/// takes): each call runs it.
#[derive(Clone)]
pub(super) struct FnConnector<F>(pub(super) F);

impl<F, T> Service<()> for FnConnector<F>
where
    F: FnMut() -> Pin<Box<dyn Future<Output = io::Result<T>> + Send>>,
{
    type Response = T;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<T>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> Self::Future {
        (self.0)()
    }
}
