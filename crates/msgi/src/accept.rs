//! What happens to a connection between [`Listener::accept`] and its
//! session: [`ConnectInfo`] (what the transport knows about the peer, read
//! back with [`Session::connect_info`]), [`Accepted`] (a connection and its
//! info) and the accept step, a `tower::Service<Accepted<Io>>` run inside the
//! connection's own task (a TLS handshake goes there); [`NoHandshake`] is
//! the default step, which passes the connection on as it is.
//!
//! [`Listener::accept`]: crate::Listener::accept
//! [`Session::connect_info`]: crate::Session::connect_info

use std::any::Any;
use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Ready};
use std::net::SocketAddr;
use std::task::{Context, Poll};

/// What the transport and the accept step know about a session's peer, by
/// type, in the manner of axum's `ConnectInfo`: a TCP listener records the
/// peer's [`SocketAddr`], a Unix listener its
/// [`tokio::net::unix::SocketAddr`]; an accept step adds what it learns (a
/// TLS step its peer certificates, SNI and ALPN; a WebSocket upgrade its
/// request's path and headers).
///
/// The IP peer address is kept inline (no allocation); other values go in a
/// map made on the first insert.
#[derive(Clone, Default)]
pub struct ConnectInfo {
    peer: Option<SocketAddr>,
    other: http::Extensions,
}

impl ConnectInfo {
    /// Nothing known (an in-memory pipe).
    pub fn new() -> Self {
        ConnectInfo::default()
    }

    /// Info holding the peer's IP address.
    pub fn from_peer_addr(addr: SocketAddr) -> Self {
        ConnectInfo {
            peer: Some(addr),
            other: http::Extensions::new(),
        }
    }

    /// Records `value`, replacing and returning the value of its type.
    pub fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) -> Option<T> {
        let any: &mut dyn Any = &mut Some(value);
        if let Some(addr) = any.downcast_mut::<Option<SocketAddr>>() {
            let old = std::mem::replace(&mut self.peer, addr.take());
            let old: &mut dyn Any = &mut { old };
            return old.downcast_mut::<Option<T>>().and_then(Option::take);
        }
        let value = any.downcast_mut::<Option<T>>().and_then(Option::take)?;
        self.other.insert(value)
    }

    /// The value of type `T`, if the transport or the accept step recorded one.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        let peer: &dyn Any = &self.peer;
        match peer.downcast_ref::<Option<T>>() {
            Some(addr) => addr.as_ref(),
            None => self.other.get::<T>(),
        }
    }

    /// Takes the value of type `T` out, if one was recorded: how the server
    /// and the client take the [`SessionKeys`](crate::SessionKeys) an
    /// accept step or a connector recorded, so that they reach the
    /// session's transforms and not the application.
    pub fn remove<T: Send + Sync + 'static>(&mut self) -> Option<T> {
        let peer: &mut dyn Any = &mut self.peer;
        match peer.downcast_mut::<Option<T>>() {
            Some(addr) => addr.take(),
            None => self.other.remove::<T>(),
        }
    }

    /// The peer's IP address ([`SocketAddr`]), if it has one.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }
}

impl fmt::Debug for ConnectInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectInfo")
            .field("peer_addr", &self.peer)
            .field("other", &self.other.len())
            .finish()
    }
}

/// A connection on its way to a session: the io and what is known about
/// the peer. [`Listener::accept`](crate::Listener::accept) returns the raw
/// io (fast: no handshake there); the server's accept step takes an
/// `Accepted<L::Io>` and returns an `Accepted` of what the session runs on.
#[derive(Debug)]
pub struct Accepted<Io> {
    io: Io,
    info: ConnectInfo,
}

impl<Io> Accepted<Io> {
    /// A connection and its info.
    pub fn new(io: Io, info: ConnectInfo) -> Self {
        Accepted { io, info }
    }

    /// The connection.
    pub fn io(&self) -> &Io {
        &self.io
    }

    /// The connection, to change it in place.
    pub fn io_mut(&mut self) -> &mut Io {
        &mut self.io
    }

    /// What is known about the peer.
    pub fn info(&self) -> &ConnectInfo {
        &self.info
    }

    /// What is known about the peer, to add to it.
    pub fn info_mut(&mut self) -> &mut ConnectInfo {
        &mut self.info
    }

    /// The connection and its info.
    pub fn into_parts(self) -> (Io, ConnectInfo) {
        (self.io, self.info)
    }

    /// Replaces the connection (the handshaken stream for the raw one),
    /// keeping the info.
    pub fn map_io<Io2>(self, f: impl FnOnce(Io) -> Io2) -> Accepted<Io2> {
        Accepted {
            io: f(self.io),
            info: self.info,
        }
    }
}

/// The default accept step: the connection goes to its session as it was
/// accepted.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHandshake;

impl<Io> tower::Service<Accepted<Io>> for NoHandshake {
    type Response = Accepted<Io>;
    type Error = Infallible;
    type Future = Ready<Result<Accepted<Io>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, incoming: Accepted<Io>) -> Self::Future {
        ready(Ok(incoming))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_info_is_typed() {
        let addr: SocketAddr = ([10, 0, 0, 1], 4000).into();
        let mut info = ConnectInfo::from_peer_addr(addr);
        assert_eq!(info.get::<SocketAddr>(), Some(&addr));
        assert_eq!(info.peer_addr(), Some(addr));
        assert_eq!(info.get::<String>(), None);
        assert_eq!(info.insert(String::from("h2")), None);
        assert_eq!(info.get::<String>().map(String::as_str), Some("h2"));
        let other: SocketAddr = ([10, 0, 0, 2], 1).into();
        assert_eq!(info.insert(other), Some(addr), "the address is replaced");
        assert_eq!(info.peer_addr(), Some(other));
        assert_eq!(info.remove::<String>().as_deref(), Some("h2"));
        assert_eq!(info.get::<String>(), None, "taken out");
        let empty = ConnectInfo::new();
        assert_eq!(empty.peer_addr(), None);
        assert_eq!(empty.get::<SocketAddr>(), None);
    }
}
