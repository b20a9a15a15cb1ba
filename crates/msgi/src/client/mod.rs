//! The client: one connection to a server, shared by every clone of a
//! [`Client`] handle.
//!
//! A background task owns the connection. Handles talk to it through one
//! bounded queue, the *outbox*: one-way [`send`](Client::send)s and
//! correlated calls (the [`Service`] implementation, [`Client::call`],
//! [`Client::ping`]) wait there in order. With [`Reconnect`] set, a lost
//! connection is re-established with exponential backoff and jitter; what
//! is sent in the meantime waits (calls at most the queue timeout).
//! Correlated calls get an answer or a [`ClientError`]; one-way frames are
//! written, or handed back by [`Client::take_unsent`] once the client has
//! given up (two exceptions, logged: a frame a wire transform refuses when
//! it is written for another reason than its size, and frames still queued
//! when every handle is gone, with nobody left to hand them to). Written is
//! not delivered: a plain one-way frame is at most once once its bytes are
//! written (a frame written just before the connection drops may be lost).
//! With [`ClientBuilder::acknowledged`] the server acknowledges what it
//! handed to its application and the client sends the rest again after a
//! reconnect (docs/RELIABILITY.md).
mod builder;
mod connection;
mod connector;
mod error;
mod forward;
mod gate;
mod handle;
mod incoming;
mod service;

pub use builder::{ClientBuilder, Reconnect};
pub use connector::{Connected, TcpConnector};
pub use error::{ClientError, CloseCause};
pub use forward::{Forward, ForwardFuture};
pub use handle::Client;
pub use incoming::Incoming;
pub use service::ResponseFuture;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use gate::CallGate;
use msgi_proto::Frame;

/// The connection state handles see.
#[derive(Debug, Clone)]
pub(super) enum Status {
    /// Connecting again after a lost connection.
    Connecting,
    Connected,
    /// Stopped for good, and why.
    Done(ClientError),
}

pub(super) const CONNECTING: u8 = 0;
pub(super) const CONNECTED: u8 = 1;
pub(super) const DONE: u8 = 2;

/// What the handles and the connection task share.
pub(super) struct Shared {
    /// The status as a number, read on every `poll_ready`.
    state: AtomicU8,
    /// The status, to wait for a change.
    status: watch::Sender<Status>,
    /// Why the client stopped, set as it starts stopping: before the outbox
    /// is closed (so a refused sender learns why), and before the status
    /// says `Done` (which comes last, once unsent frames can be taken).
    stop_reason: std::sync::OnceLock<ClientError>,
    /// One place per call reserved or in flight (`max_concurrent_requests`).
    calls: CallGate,
    /// Frames larger than this ([`Frame::wire_len`]) are refused by `send`
    /// before they are queued: the framing's [`MakeFraming::max_sendable`](crate::MakeFraming::max_sendable),
    /// its maximum frame size less what its transforms may add.
    max_sendable: usize,
    /// How long a call may wait for a connection (`None`: for ever).
    queue_timeout: Option<Duration>,
    /// Set by [`Client::close`].
    close_requested: CancellationToken,
    /// Wakes the connection task: a close request, an abandoned call.
    task_waker: AtomicWaker,
    /// A caller dropped an answer it was waiting for.
    abandoned: AtomicBool,
    incoming: Mutex<Option<Incoming>>,
    /// Wire bytes of the pushes queued for [`Incoming`].
    incoming_held: Arc<AtomicUsize>,
    pushes_dropped: AtomicU64,
    /// Push recovery: the last RESUMED said the pushes were kept.
    recovered: AtomicBool,
    /// Push recovery: pushes the server said were lost, over the run.
    missed_pushes: AtomicU64,
    /// Push recovery: RESUMED answers that said `fresh`, over the run.
    fresh_resumes: AtomicU64,
    unsent: Mutex<Vec<Frame>>,
    /// Acknowledged delivery: the highest number acknowledged, the frames
    /// kept unacknowledged,
    /// and the one-way frames the task took off the outbox.
    acks: watch::Sender<(u64, usize, u64)>,
    /// Acknowledged delivery is on.
    acknowledged: bool,
    /// One-way frames accepted into the outbox.
    sends_queued: AtomicU64,
    /// What the connector recorded about the latest connection
    /// ([`Client::connect_info`]); replaced on each (re)connection.
    connect_info: Mutex<Arc<crate::ConnectInfo>>,
}

impl Shared {
    fn set_status(&self, status: Status) {
        let state = match status {
            Status::Connecting => CONNECTING,
            Status::Connected => CONNECTED,
            Status::Done(_) => DONE,
        };
        if let Status::Done(reason) = &status {
            let _ = self.stop_reason.set(reason.clone());
        }
        // The number first: whoever the status change wakes sees it.
        self.state.store(state, Ordering::Release);
        self.status.send_replace(status);
    }

    fn done_reason(&self) -> Option<ClientError> {
        self.stop_reason.get().cloned()
    }

    fn closed_error(&self) -> ClientError {
        self.done_reason()
            .unwrap_or_else(|| ClientError::Closed(CloseCause::TaskEnded))
    }
}

/// Marks the client stopped if its task ends without saying why (the
/// runtime shut down), so that nothing waits for it for ever.
pub(super) struct DoneGuard(pub(super) Arc<Shared>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        if self.0.state.load(Ordering::Acquire) != DONE {
            let _ = self
                .0
                .stop_reason
                .set(ClientError::Closed(CloseCause::TaskEnded));
            self.0.set_status(Status::Done(self.0.closed_error()));
        }
        self.0.calls.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let policy = Reconnect {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            multiplier: 2.0,
            max_attempts: None,
        };
        for _ in 0..100 {
            let d0 = policy.delay(0);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
            let d3 = policy.delay(3);
            assert!(d3 >= Duration::from_millis(400) && d3 <= Duration::from_millis(800));
            let d20 = policy.delay(20);
            assert!(d20 >= Duration::from_millis(500) && d20 <= Duration::from_secs(1));
        }
    }
}

#[cfg(test)]
mod assertions {
    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_are_send_and_sync() {
        send_sync::<super::Client>();
        send_sync::<super::ResponseFuture>();
        send_sync::<super::Incoming>();
        send_sync::<super::ClientError>();
    }
}
