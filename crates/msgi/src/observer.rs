//! The observer hook: what only the runtime sees (connections opened,
//! closed and rejected, frames and bytes by kind, write stalls, queue
//! depths, calls in flight, request latency), reported to an [`Observer`]
//! set with [`ServerBuilder::observer`](crate::ServerBuilder::observer).
//! Metrics plug in here; this crate adds no metrics dependency.
//!
//! Every method has a no-op default. Without an observer each call site is
//! one branch; with one, a call is a dynamic call with plain values (no
//! allocation per frame). Methods are called from the session's task (or
//! the accept loop), so they must be quick and must not block.

use std::time::Duration;

use crate::session::{CloseReason, Session};
use msgi_proto::Kind;

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

/// Told what the runtime sees. Every method does nothing by default;
/// implement those you need. See the [module docs](self).
#[allow(unused_variables)]
pub trait Observer: Send + Sync + 'static {
    /// A session started (after the accept step, before its first frame).
    fn session_opened(&self, session: &Session) {}

    /// A session ended, once, with its reason
    /// ([`CloseReason::kind`] is a bounded label).
    fn session_closed(&self, session: &Session, reason: &CloseReason) {}

    /// A connection got no session.
    fn connection_rejected(&self, rejection: Rejection) {}

    /// A frame was read: its kind and its size on the wire (as decoded,
    /// header included).
    fn frame_in(&self, kind: Kind, bytes: usize) {}

    /// A frame was queued for writing: its kind and its size as a frame
    /// (header included, before the wire transforms).
    fn frame_out(&self, kind: Kind, bytes: usize) {}

    /// Bytes went out on a connection (one wake-up's writes).
    fn bytes_written(&self, bytes: usize) {}

    /// A session stopped reading because its peer does not read what it
    /// writes (the write queue is above its high-water mark), with the
    /// bytes queued.
    fn write_stalled(&self, queued: usize) {}

    /// The depth of a session's queues when it moved pushes: frames still
    /// in the outbox is not known without a lock, so this reports the
    /// pushes just moved and the write queue's bytes after moving them.
    fn queues(&self, pushes_moved: usize, write_queue_bytes: usize) {}

    /// Calls of a session in the service after one was handed to it.
    fn in_flight(&self, calls: usize) {}

    /// A call was answered (or ended without an answer) this long after it
    /// was read.
    fn request_finished(&self, latency: Duration) {}
}
