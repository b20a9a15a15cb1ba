//! One connected peer: the [`Session`] handle the registry and handlers hold,
//! and why a session ended ([`CloseReason`]).
//!
//! A session's outbound frames wait in a bounded outbox. Pushing to a full
//! outbox (a peer that stopped reading) closes that session with
//! [`CloseReason::SlowConsumer`] instead of growing memory or blocking the
//! pusher; see [`Session::send`].

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::Context;
use std::time::SystemTime;

use crate::extensions::Extensions;
use futures_util::task::AtomicWaker;
use tokio::time::Instant;

use crate::frame::Frame;

/// A session's number, unique within one server for its lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a session's peer is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerAddr {
    /// A TCP peer.
    Tcp(SocketAddr),
    /// A Unix-domain socket peer (usually unnamed).
    Unix,
    /// A transport without an address (in-memory pipes, tests).
    Unknown,
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Tcp(addr) => addr.fmt(f),
            PeerAddr::Unix => f.write_str("unix"),
            PeerAddr::Unknown => f.write_str("unknown"),
        }
    }
}

/// Why a session ended. Passed to the disconnect hook, exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer sent DISCONNECT with this reason.
    PeerDisconnect(String),
    /// The peer closed the connection cleanly between frames.
    PeerClosed,
    /// The connection broke: reset, I/O error, or EOF in the middle of a frame.
    PeerReset(String),
    /// Nothing was received for the idle timeout.
    IdleTimeout,
    /// No first frame arrived within the handshake timeout.
    HandshakeTimeout,
    /// The peer broke the protocol; the reason was sent to it in an ERROR frame.
    ProtocolViolation(String),
    /// The server is shutting down.
    ServerShutdown,
    /// The session's outbound queue was full: the peer does not read fast enough.
    SlowConsumer,
    /// Another session announced the same client id and took it over.
    ClientIdTakenOver,
    /// Closed by the application (registry or session handle) with this reason.
    Closed(String),
    /// The service failed in `poll_ready` and cannot take more requests.
    ServiceFailed(String),
    /// The session task ended without a reason (a handler panicked).
    Aborted,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::PeerDisconnect(r) if r.is_empty() => f.write_str("peer disconnect"),
            CloseReason::PeerDisconnect(r) => write!(f, "peer disconnect: {r}"),
            CloseReason::PeerClosed => f.write_str("peer closed"),
            CloseReason::PeerReset(r) => write!(f, "connection reset: {r}"),
            CloseReason::IdleTimeout => f.write_str("idle timeout"),
            CloseReason::HandshakeTimeout => f.write_str("handshake timeout"),
            CloseReason::ProtocolViolation(r) => write!(f, "protocol violation: {r}"),
            CloseReason::ServerShutdown => f.write_str("server shutdown"),
            CloseReason::SlowConsumer => f.write_str("slow consumer"),
            CloseReason::ClientIdTakenOver => f.write_str("client id taken over"),
            CloseReason::Closed(r) => f.write_str(r),
            CloseReason::ServiceFailed(r) => write!(f, "service failed: {r}"),
            CloseReason::Aborted => f.write_str("aborted"),
        }
    }
}

/// Why a frame could not be queued for a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No session with that id (or client id) is connected.
    #[error("no such session")]
    NoSuchSession,
    /// The session is closing or closed.
    #[error("session closed")]
    Closed,
    /// The session's outbox was full; the session is being closed as a slow consumer.
    #[error("outbound queue full: session closed as slow consumer")]
    SlowConsumer,
    /// The session's framing cannot send a frame this large: its size plus
    /// what the session's wire transforms add (tags, nonces) is over the
    /// maximum frame size. Nothing was queued; the session goes on.
    #[error("frame too large to send: {length} bytes, at most {max}")]
    TooLarge {
        /// The frame's size ([`Frame::wire_len`]).
        length: usize,
        /// The largest frame this session's framing sends
        /// ([`Framing::max_encoded_len`](crate::Framing::max_encoded_len)).
        max: usize,
    },
}

/// A handle to one session. Cheap to clone.
///
/// Handlers find the session that sent a frame in the frame's extensions:
///
/// ```
/// use msgi::{Frame, Session};
///
/// fn who(frame: &Frame) -> Option<String> {
///     frame.extensions().get::<Session>().map(|s| s.client_id())
/// }
/// ```
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    id: SessionId,
    remote: PeerAddr,
    connected_at: SystemTime,
    started: Instant,
    /// Milliseconds after `started` at which the last frame was received.
    last_activity_ms: AtomicU64,
    /// The announced client id; `None` means the session id is the client id.
    client_id: Mutex<Option<Arc<str>>>,
    data: Mutex<Extensions>,
    outbox: Mutex<VecDeque<Frame>>,
    outbox_capacity: usize,
    /// The largest frame the session's framing is sure to encode
    /// (`Framing::max_encoded_len`); larger pushes are refused up front.
    max_frame_len: usize,
    outbox_closed: AtomicBool,
    close_reason: OnceLock<CloseReason>,
    waker: AtomicWaker,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks stays consistent even if a holder
    // panicked (every critical section is a single operation).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Session {
    pub(crate) fn new(
        id: SessionId,
        remote: PeerAddr,
        outbox_capacity: usize,
        max_frame_len: usize,
    ) -> Session {
        Session {
            inner: Arc::new(Inner {
                id,
                remote,
                connected_at: SystemTime::now(),
                started: Instant::now(),
                last_activity_ms: AtomicU64::new(0),
                client_id: Mutex::new(None),
                data: Mutex::new(Extensions::new()),
                outbox: Mutex::new(VecDeque::new()),
                outbox_capacity: outbox_capacity.max(1),
                max_frame_len,
                outbox_closed: AtomicBool::new(false),
                close_reason: OnceLock::new(),
                waker: AtomicWaker::new(),
            }),
        }
    }

    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.inner.id
    }

    /// The client id: announced in the handshake, or the session id as text.
    pub fn client_id(&self) -> String {
        match &*lock(&self.inner.client_id) {
            Some(id) => id.to_string(),
            None => self.inner.id.to_string(),
        }
    }

    /// The client id announced in the handshake, if any.
    pub(crate) fn announced_client_id(&self) -> Option<Arc<str>> {
        lock(&self.inner.client_id).clone()
    }

    pub(crate) fn set_client_id(&self, id: Arc<str>) {
        *lock(&self.inner.client_id) = Some(id);
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> &PeerAddr {
        &self.inner.remote
    }

    /// When the session was accepted (wall clock).
    pub fn connected_at(&self) -> SystemTime {
        self.inner.connected_at
    }

    /// When the last frame was received from the peer (the accept time if none).
    pub fn last_activity(&self) -> Instant {
        let ms = self.inner.last_activity_ms.load(Ordering::Relaxed);
        self.inner.started + std::time::Duration::from_millis(ms)
    }

    pub(crate) fn touch(&self, now: Instant) {
        let ms = now
            .saturating_duration_since(self.inner.started)
            .as_millis();
        self.inner
            .last_activity_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Stores a value of type `T` in the session's data, replacing and
    /// returning the previous one.
    pub fn insert_data<T: Clone + Send + Sync + 'static>(&self, value: T) -> Option<T> {
        lock(&self.inner.data).insert(value)
    }

    /// A clone of the session's value of type `T`.
    pub fn data<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        lock(&self.inner.data).get::<T>().cloned()
    }

    /// Runs `f` on the session's data, under the session's own lock: keep
    /// it brief, and do not call this session's data methods from inside `f`
    /// (the lock is not re-entrant).
    pub fn with_data<R>(&self, f: impl FnOnce(&mut Extensions) -> R) -> R {
        f(&mut lock(&self.inner.data))
    }

    /// Queues a frame for this session's peer.
    ///
    /// Never blocks. If the outbox already holds its capacity (the server's
    /// `outbound_queue`), the peer is not keeping up: the session is closed
    /// with [`CloseReason::SlowConsumer`] and this returns
    /// [`SendError::SlowConsumer`]. Frames queued before are not written.
    ///
    /// A frame the session's framing could not encode, because it is over
    /// the maximum frame size once the wire transforms have added their
    /// bytes, is refused here with [`SendError::TooLarge`], so that a frame
    /// accepted by `send` never fails to encode for its size later.
    pub fn send(&self, frame: Frame) -> Result<(), SendError> {
        let length = frame.wire_len();
        if length > self.inner.max_frame_len {
            return Err(SendError::TooLarge {
                length,
                max: self.inner.max_frame_len,
            });
        }
        if self.inner.outbox_closed.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        let mut queue = lock(&self.inner.outbox);
        if queue.len() >= self.inner.outbox_capacity {
            drop(queue);
            self.close_with(CloseReason::SlowConsumer);
            return Err(SendError::SlowConsumer);
        }
        queue.push_back(frame);
        drop(queue);
        self.inner.waker.wake();
        Ok(())
    }

    /// Closes the session gracefully: requests already received are
    /// answered, then the peer gets DISCONNECT with `reason` and the
    /// connection closes. Returns false if the session was already closing.
    pub fn close(&self, reason: impl Into<String>) -> bool {
        self.close_with(CloseReason::Closed(reason.into()))
    }

    pub(crate) fn close_with(&self, reason: CloseReason) -> bool {
        let first = self.inner.close_reason.set(reason).is_ok();
        if first {
            self.inner.waker.wake();
        }
        first
    }

    /// True once the session has been asked to close (by anyone but the peer).
    pub fn is_closing(&self) -> bool {
        self.inner.close_reason.get().is_some()
    }

    /// Registers the driver's waker, woken by pushes and close requests.
    pub(crate) fn register(&self, cx: &Context<'_>) {
        self.inner.waker.register(cx.waker());
    }

    /// The close request, if any (register first to be woken by one).
    pub(crate) fn close_requested(&self) -> Option<&CloseReason> {
        self.inner.close_reason.get()
    }

    /// Moves queued frames into `sink` while it accepts them; the driver's
    /// waker must have been registered first.
    pub(crate) fn drain_outbox(&self, mut sink: impl FnMut(Frame) -> bool) -> bool {
        let mut queue = lock(&self.inner.outbox);
        let mut moved = false;
        while let Some(frame) = queue.pop_front() {
            moved = true;
            if !sink(frame) {
                break;
            }
        }
        if queue.is_empty() && queue.capacity() > 32 {
            *queue = VecDeque::new();
        }
        moved
    }

    /// Refuses further frames and drops those still queued.
    pub(crate) fn close_outbox(&self) {
        self.inner.outbox_closed.store(true, Ordering::Release);
        *lock(&self.inner.outbox) = VecDeque::new();
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.inner.id)
            .field("client_id", &self.client_id())
            .field("remote", &self.inner.remote)
            .finish()
    }
}

impl PartialEq for Session {
    fn eq(&self, other: &Session) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_outbox_closes_as_slow_consumer() {
        let s = Session::new(SessionId(1), PeerAddr::Unknown, 2, usize::MAX);
        assert_eq!(s.send(Frame::data("a")), Ok(()));
        assert_eq!(s.send(Frame::data("b")), Ok(()));
        assert_eq!(s.send(Frame::data("c")), Err(SendError::SlowConsumer));
        assert!(s.is_closing());
        assert_eq!(s.close_requested(), Some(&CloseReason::SlowConsumer));
        s.close_outbox();
        assert_eq!(s.send(Frame::data("d")), Err(SendError::Closed));
    }

    #[test]
    fn a_frame_the_framing_cannot_send_is_refused_up_front() {
        let s = Session::new(SessionId(1), PeerAddr::Unknown, 2, 20);
        assert_eq!(s.send(Frame::data(vec![0u8; 10])), Ok(()));
        assert_eq!(
            s.send(Frame::data(vec![0u8; 11])),
            Err(SendError::TooLarge {
                length: 21,
                max: 20
            })
        );
        assert!(!s.is_closing(), "a refused push does not close the session");
        assert_eq!(s.send(Frame::data("ok")), Ok(()));
    }

    #[test]
    fn first_close_reason_wins() {
        let s = Session::new(SessionId(1), PeerAddr::Unknown, 2, usize::MAX);
        assert!(s.close("kicked"));
        assert!(!s.close_with(CloseReason::ServerShutdown));
        assert_eq!(
            s.close_requested(),
            Some(&CloseReason::Closed("kicked".into()))
        );
    }

    #[test]
    fn session_data() {
        let s = Session::new(SessionId(7), PeerAddr::Unknown, 2, usize::MAX);
        assert_eq!(s.client_id(), "7");
        assert_eq!(s.insert_data(5u32), None);
        assert_eq!(s.data::<u32>(), Some(5));
        s.with_data(|d| *d.get_mut::<u32>().unwrap() += 1);
        assert_eq!(s.data::<u32>(), Some(6));
    }
}
