//! The observer hook: what only the runtime sees, reported to an
//! [`Observer`] set with [`ServerBuilder::observer`](crate::ServerBuilder::observer).

use crate::session::{CloseReason, Session};

/// Why a connection got no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rejection {
    /// Over `max_connections`: told ERROR `server full`.
    ServerFull,
    /// Over `max_connections_per_ip`: told ERROR `too many connections
    /// from this address`.
    TooManyFromAddress,
    /// The accept step (a TLS handshake) did not finish within the
    /// handshake timeout.
    AcceptTimeout,
    /// The accept step failed.
    AcceptFailed,
    /// The server was shutting down.
    ServerShutdown,
}

impl Rejection {
    /// A bounded, metrics-safe label.
    pub fn kind(self) -> &'static str {
        match self {
            Rejection::ServerFull => "server_full",
            Rejection::TooManyFromAddress => "too_many_from_address",
            Rejection::AcceptTimeout => "accept_timeout",
            Rejection::AcceptFailed => "accept_failed",
            Rejection::ServerShutdown => "server_shutdown",
        }
    }
}

/// Told what only the runtime sees, set with
/// [`ServerBuilder::observer`](crate::ServerBuilder::observer): metrics plug
/// in here (this crate adds no metrics dependency).
///
/// Every method does nothing by default; implement those you need. Without
/// an observer each report is one branch; with one, a report is a dynamic
/// call with plain values (no allocation per frame). Methods are called from
/// the connection's task (or the accept loop), so they must be quick and
/// must not block.
#[allow(unused_variables)]
pub trait Observer: Send + Sync + 'static {
    /// A session started (after the accept step, before its first frame).
    fn session_opened(&self, session: &Session) {}

    /// A session ended, once, with its reason
    /// ([`CloseReason::kind`] is a bounded label).
    fn session_closed(&self, session: &Session, reason: &CloseReason) {}

    /// A connection got no session.
    fn connection_rejected(&self, rejection: Rejection) {}
}
