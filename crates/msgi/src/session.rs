//! One connected peer: the [`Session`] handle the registry and handlers hold,
//! and why a session ended ([`CloseReason`]).
//!
//! A session's outbound frames wait in an outbox bounded in frames and in
//! bytes. Pushing to a full outbox (a peer that stopped reading) closes that
//! session with [`CloseReason::SlowConsumer`] instead of growing memory or
//! blocking the pusher; see [`Session::send`].

use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::Context;
use std::time::SystemTime;

use futures_util::task::AtomicWaker;
use msgi_proto::{ConfigError, Extensions};

use crate::accept::ConnectInfo;
use msgi_proto::server::Violation;
use tokio::time::Instant;

use msgi_proto::{Frame, CORRELATED_HEADER_LEN};

/// Outbox slots an idle session may keep: the first push allocates this many
/// (the standard collections' smallest buffer for a value of `Frame`'s size),
/// about 256 bytes, so a session that takes a few pushes at a time allocates
/// once, not once per push.
pub(crate) const IDLE_OUTBOX_SLOTS: usize = 4;

thread_local! {
    /// Pushes queued by this thread, to any session (wrapping): a driver
    /// compares it before and after a request's handler ran to learn, with
    /// no lock and no atomic operation, whether the handler pushed.
    static PUSHES: Cell<u32> = const { Cell::new(0) };
}

/// How many pushes this thread has queued (wrapping); see [`PUSHES`].
#[inline]
pub(crate) fn pushes_on_this_thread() -> u32 {
    PUSHES.with(Cell::get)
}

/// Outbox slots a session grows to at once when a burst of pushes outgrows
/// its idle buffer (a broadcast stream faster than the session's wake-ups):
/// one reallocation per burst instead of a doubling chain (4, 8, 16, 32),
/// about 2 KiB while the burst lasts, given back when the session goes
/// quiet.
const BURST_OUTBOX_SLOTS: usize = 32;

/// A session's id: opaque, unique across the nodes of a cluster.
///
/// It prints (and parses) as a decimal number, which is what the peer sees
/// in `WELCOME <session-id>` and what a session that announced no client id
/// is addressed by ([`Session::client_id`]): no sign, no leading zero, at
/// most 20 digits (it fits in a `u64`).
///
/// Inside, it is 64 bits: the top [`NodeId::BITS`] bits are the id of the
/// node ([`Registry`](crate::Registry)) that accepted the session, the
/// other 44 bits count that node's sessions from 1. So two nodes never
/// hand out the same id while their node ids differ, a message for a
/// session is routed to its node by the id alone ([`SessionId::node`]), and
/// a node does not reuse an id until it has accepted 2^44 - 1 sessions
/// (17.6 trillion). Applications should not compute with the parts; use
/// [`node`](SessionId::node) and [`as_u64`](SessionId::as_u64) (a backplane
/// carrying ids between nodes) and the decimal text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

/// Bits of a [`SessionId`] that count a node's sessions.
const SERIAL_BITS: u32 = 64 - NodeId::BITS;
/// The largest serial number; after it a node starts again at 1.
const MAX_SERIAL: u64 = (1 << SERIAL_BITS) - 1;

impl SessionId {
    /// The `n`th id (counting from 0) that node `node` hands out.
    pub(crate) fn nth(node: NodeId, n: u64) -> SessionId {
        SessionId((u64::from(node.0) << SERIAL_BITS) | (n % MAX_SERIAL + 1))
    }

    /// The node that accepted this session.
    pub fn node(self) -> NodeId {
        // The top bits of a u64 shifted down fit in NodeId::BITS < 32 bits.
        NodeId(u32::try_from(self.0 >> SERIAL_BITS).unwrap_or(0))
    }

    /// The id as one 64-bit number (the decimal text is this number), for
    /// a backplane that carries ids between nodes.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// The id whose [`as_u64`](SessionId::as_u64) is `raw`, or `None` if no
    /// node hands out `raw` (node or serial part zero).
    pub fn from_u64(raw: u64) -> Option<SessionId> {
        let id = SessionId(raw);
        (id.node().0 != 0 && raw & MAX_SERIAL != 0).then_some(id)
    }

    /// The id a default client id names: canonical decimal only, as
    /// `Display` writes it (`7`, not `07` or `+7`), of an id some node can
    /// hand out.
    pub fn parse_decimal(text: &str) -> Option<SessionId> {
        let canonical =
            !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && !text.starts_with('0');
        if !canonical {
            return None;
        }
        text.parse().ok().and_then(SessionId::from_u64)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The id of a node: one [`Registry`](crate::Registry), shared by the
/// servers of one process (or of one part of it), in a cluster joined by a
/// [`Backplane`](crate::Backplane). A number from 1 to 2^20 - 1, the top
/// bits of every [`SessionId`] the node hands out.
///
/// By default a registry draws its node id at random
/// ([`NodeId::random`]); set it ([`RegistryBuilder::node_id`](crate::RegistryBuilder::node_id))
/// where a deployment can number its nodes (a StatefulSet ordinal), so that
/// ids are unique by construction rather than with high probability. A
/// backplane refuses a second node with an id already attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(u32);

impl NodeId {
    /// Bits of a [`SessionId`] that hold the node id.
    pub const BITS: u32 = 20;
    /// The largest node id.
    pub const MAX: u32 = (1 << NodeId::BITS) - 1;

    /// Node `id`, from 1 to [`NodeId::MAX`].
    pub fn new(id: u32) -> Result<NodeId, ConfigError> {
        if id == 0 || id > NodeId::MAX {
            return Err(ConfigError::new(
                "node_id",
                format_args!("must be from 1 to {}", NodeId::MAX),
            ));
        }
        Ok(NodeId(id))
    }

    /// A node id drawn at random (from a generator seeded by the operating
    /// system's randomness once per process). Two nodes drawing at random
    /// collide with probability about n² / 2^21 for n nodes (0.05% for
    /// 32 nodes); a backplane refuses the second one
    /// ([`BackplaneError::NodeIdTaken`](crate::BackplaneError::NodeIdTaken)),
    /// and a registry whose id was drawn draws again.
    pub fn random() -> NodeId {
        NodeId(fastrand::u32(1..=NodeId::MAX))
    }

    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a session ended. Passed to the disconnect hook (and the observer),
/// exactly once. [`kind`](CloseReason::kind) is a bounded label for
/// metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer sent DISCONNECT with this reason: the peer's text with
    /// control characters escaped, cut to its first 200 characters (the
    /// cut marked `…(N bytes)`), as it ends up in logs.
    PeerDisconnect(String),
    /// The peer closed the connection cleanly between frames.
    PeerClosed,
    /// The connection broke: reset, I/O error
    /// ([`UnexpectedEof`](std::io::ErrorKind::UnexpectedEof): the stream
    /// ended in the middle of a frame).
    PeerReset(std::io::ErrorKind),
    /// Nothing was received for the idle timeout.
    IdleTimeout,
    /// No first frame arrived within the handshake timeout.
    HandshakeTimeout,
    /// The peer broke the protocol; `detail` was sent to it in an ERROR frame.
    ProtocolViolation {
        /// What kind of rule was broken.
        kind: Violation,
        /// The text sent to the peer.
        detail: String,
    },
    /// The server is shutting down.
    ServerShutdown,
    /// The session's outbox was full: the peer does not read fast enough.
    SlowConsumer,
    /// Another session announced the same client id and took it over.
    ClientIdTakenOver,
    /// Closed by the application (registry or session handle) with this reason.
    Closed(String),
    /// The service (or the make-service, for this session) failed, and
    /// cannot take more requests; the error's text.
    ServiceFailed(String),
    /// The session task ended without a reason (a handler panicked).
    Aborted,
    /// The drain timeout passed before the session finished closing for
    /// the reason it carries (a graceful close, or the last frame of an
    /// abnormal one, not written in time): answers, pushes and the
    /// farewell not written by then were dropped.
    DrainTimeout(Box<CloseReason>),
}

impl CloseReason {
    /// A bounded, metrics-safe label for the reason (no peer or
    /// application text): one of `peer_disconnect`, `peer_closed`,
    /// `peer_reset`, `idle_timeout`, `handshake_timeout`,
    /// `protocol_violation`, `server_shutdown`, `slow_consumer`,
    /// `client_id_taken_over`, `closed`, `service_failed`, `aborted`,
    /// `drain_timeout`.
    pub fn kind(&self) -> &'static str {
        match self {
            CloseReason::PeerDisconnect(_) => "peer_disconnect",
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::PeerReset(_) => "peer_reset",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::ProtocolViolation { .. } => "protocol_violation",
            CloseReason::ServerShutdown => "server_shutdown",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::ClientIdTakenOver => "client_id_taken_over",
            CloseReason::Closed(_) => "closed",
            CloseReason::ServiceFailed(_) => "service_failed",
            CloseReason::Aborted => "aborted",
            CloseReason::DrainTimeout(_) => "drain_timeout",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::PeerDisconnect(r) if r.is_empty() => f.write_str("peer disconnect"),
            CloseReason::PeerDisconnect(r) => write!(f, "peer disconnect: {r}"),
            CloseReason::PeerClosed => f.write_str("peer closed"),
            CloseReason::PeerReset(kind) => write!(f, "connection reset: {kind}"),
            CloseReason::IdleTimeout => f.write_str("idle timeout"),
            CloseReason::HandshakeTimeout => f.write_str("handshake timeout"),
            CloseReason::ProtocolViolation { detail, .. } => {
                write!(f, "protocol violation: {detail}")
            }
            CloseReason::ServerShutdown => f.write_str("server shutdown"),
            CloseReason::SlowConsumer => f.write_str("slow consumer"),
            CloseReason::ClientIdTakenOver => f.write_str("client id taken over"),
            CloseReason::Closed(r) => f.write_str(r),
            CloseReason::ServiceFailed(r) => write!(f, "service failed: {r}"),
            CloseReason::Aborted => f.write_str("aborted"),
            CloseReason::DrainTimeout(r) => write!(f, "drain timeout passed ({r})"),
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
    /// The frame was for another node, and the backplane did not take it.
    #[error("the backplane did not take the frame")]
    Backplane(#[source] crate::BackplaneError),
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
    info: ConnectInfo,
    connected_at: SystemTime,
    started: Instant,
    /// Milliseconds after `started` at which the last frame was received.
    last_activity_ms: AtomicU64,
    /// The announced client id; `None` means the session id is the client id.
    client_id: Mutex<Option<Arc<str>>>,
    data: Mutex<Extensions>,
    outbox: Mutex<Outbox>,
    /// Shared by the server's sessions: one pointer here, not 12 bytes.
    limits: Arc<OutboxLimits>,
    close_reason: OnceLock<CloseReason>,
    waker: AtomicWaker,
}

/// What a session's outbox takes: frames up to a size, and how many and
/// how many bytes (as counted by [`Outbox::cost`]) it may hold. (`u32`s:
/// this is in every session.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutboxLimits {
    pub(crate) frames: u32,
    pub(crate) bytes: u32,
    /// The largest frame the session's framing is sure to encode
    /// (`Framing::max_encoded_len`, capped at 4 GiB - 1, what the MSGI
    /// length field carries); larger pushes are refused up front.
    pub(crate) max_frame_len: u32,
}

/// Pushed frames waiting for the session's task.
#[derive(Default)]
struct Outbox {
    frames: VecDeque<Frame>,
    /// The sum of [`Outbox::cost`] over `frames` (saturating).
    bytes: u32,
    /// No more pushes are taken. Checked under the same lock as the push
    /// itself, so a push either is refused or is in the queue before the
    /// session decides what is left to write.
    closed: bool,
    /// A push found the outbox full: the session ends as a slow consumer,
    /// whatever close was under way (the close reason is set once, so a
    /// graceful close set earlier cannot say it).
    slow: bool,
    /// The session has ended and released its data: data inserted now
    /// would never be dropped before the session itself (see
    /// [`Session::insert_data`]). Kept here, where a `bool` costs no
    /// memory, and only ever checked under the data lock.
    released: bool,
}

impl Outbox {
    /// What a frame counts against the byte bound: its payload and the
    /// largest header.
    fn cost(frame: &Frame) -> u32 {
        let bytes = frame.payload().len().saturating_add(CORRELATED_HEADER_LEN);
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks stays consistent even if a holder
    // panicked (every critical section is a single operation).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Session {
    /// A session whose outbox takes what `limits` allows (the server's
    /// `build` checked that both bounds are at least 1).
    pub(crate) fn new(id: SessionId, info: ConnectInfo, limits: Arc<OutboxLimits>) -> Session {
        Session {
            inner: Arc::new(Inner {
                id,
                info,
                connected_at: SystemTime::now(),
                started: Instant::now(),
                last_activity_ms: AtomicU64::new(0),
                client_id: Mutex::new(None),
                data: Mutex::new(Extensions::new()),
                outbox: Mutex::new(Outbox::default()),
                limits,
                close_reason: OnceLock::new(),
                waker: AtomicWaker::new(),
            }),
        }
    }

    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.inner.id
    }

    /// True if the session belongs to the server whose outbox limits are
    /// `limits`: each `Server::build` makes its own, so pointer identity
    /// tells the servers sharing one registry apart without a byte more
    /// per session.
    pub(crate) fn served_with(&self, limits: &Arc<OutboxLimits>) -> bool {
        Arc::ptr_eq(&self.inner.limits, limits)
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

    /// The peer's IP address, if it has one (TCP; not a Unix socket or an
    /// in-memory pipe). The same as `connect_info::<SocketAddr>()`.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.inner.info.peer_addr()
    }

    /// What the transport and the accept step recorded about the peer, by
    /// type, in the manner of axum's `ConnectInfo`: [`SocketAddr`] for TCP,
    /// [`tokio::net::unix::SocketAddr`] for a Unix socket, and whatever the
    /// server's accept step or [`Server::serve_connection`]'s caller added
    /// (see [`ConnectInfo`]).
    ///
    /// [`Server::serve_connection`]: crate::Server::serve_connection
    pub fn connect_info<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.inner.info.get::<T>()
    }

    /// When the session was accepted (wall clock).
    pub fn connected_at(&self) -> SystemTime {
        self.inner.connected_at
    }

    /// When the last frame was received from the peer (the accept time if none).
    pub fn last_activity(&self) -> Instant {
        let ms = self.inner.last_activity_ms.load(Ordering::Relaxed);
        let started = self.inner.started;
        started
            .checked_add(std::time::Duration::from_millis(ms))
            .unwrap_or(started)
    }

    pub(crate) fn touch(&self, now: std::time::Instant) {
        let ms = Instant::from_std(now)
            .saturating_duration_since(self.inner.started)
            .as_millis();
        self.inner
            .last_activity_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Stores a value of type `T` in the session's data, replacing and
    /// returning the previous one.
    ///
    /// The data lives while the session does: it is dropped once the
    /// session has ended and its disconnect hook has run. So data may hold
    /// a `Session` (this one included) without keeping the session alive.
    /// Once that has happened (a task still holding the session inserts
    /// late), the value is not stored: it is dropped at once and `None` is
    /// returned.
    pub fn insert_data<T: Clone + Send + Sync + 'static>(&self, value: T) -> Option<T> {
        let mut data = lock(&self.inner.data);
        if self.is_released() {
            drop(data);
            drop(value);
            return None;
        }
        data.insert(value)
    }

    /// Whether the session's data was released; the caller holds the data
    /// lock, so a release cannot slip in between the check and an insert.
    fn is_released(&self) -> bool {
        lock(&self.inner.outbox).released
    }

    /// A clone of the session's value of type `T`.
    pub fn data<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        lock(&self.inner.data).get::<T>().cloned()
    }

    /// Runs `f` on the session's data, under the session's own lock: keep
    /// it brief, and do not call this session's data methods from inside `f`
    /// (the lock is not re-entrant). Once the session's data was released
    /// (see [`insert_data`](Session::insert_data)), `f` gets an empty map
    /// that is dropped when it returns.
    pub fn with_data<R>(&self, f: impl FnOnce(&mut Extensions) -> R) -> R {
        let mut data = lock(&self.inner.data);
        if self.is_released() {
            drop(data);
            return f(&mut Extensions::new());
        }
        f(&mut data)
    }

    /// Queues a frame for this session's peer.
    ///
    /// `Ok(())` means the frame will be written, before the DISCONNECT of a
    /// graceful close, unless the session ends abnormally first (slow
    /// consumer, reset, protocol violation, timeout, drain timeout); its
    /// [`CloseReason`] then says why queued frames were lost. Once the
    /// session has stopped taking pushes this returns
    /// [`SendError::Closed`].
    ///
    /// Never blocks. The outbox holds at most the server's
    /// `outbox_capacity` frames and `outbox_bytes` bytes (a frame
    /// counts its payload plus 14 header bytes; a frame pushed into an
    /// empty outbox is always taken). A push beyond either bound means the
    /// peer is not keeping up: the session is closed with
    /// [`CloseReason::SlowConsumer`] and this returns
    /// [`SendError::SlowConsumer`]. Frames queued before are not written,
    /// and no later push is taken. This holds during a graceful close too:
    /// the session then ends as a slow consumer, not gracefully.
    ///
    /// A frame the session's framing could not encode, because it is over
    /// the maximum frame size once the wire transforms have added their
    /// bytes, is refused here with [`SendError::TooLarge`], so that a frame
    /// accepted by `send` never fails to encode for its size later. A
    /// session that no longer takes pushes says [`SendError::Closed`]
    /// first, whatever the frame's size.
    ///
    /// The frame's extensions are dropped (they never reach the wire).
    pub fn send(&self, mut frame: Frame) -> Result<(), SendError> {
        // A queued frame never holds a `Session`, so an outbox cannot keep
        // its own session (or another) alive. (Cleared before the lock: the
        // frame is consumed either way.)
        frame.extensions_mut().clear();
        let length = frame.wire_len();
        let cost = Outbox::cost(&frame);
        let limits = &*self.inner.limits;
        let mut outbox = lock(&self.inner.outbox);
        if outbox.closed {
            return Err(SendError::Closed);
        }
        let max = usize::try_from(limits.max_frame_len).unwrap_or(usize::MAX);
        if length > max {
            return Err(SendError::TooLarge { length, max });
        }
        let queued = u32::try_from(outbox.frames.len()).unwrap_or(u32::MAX);
        let full = queued >= limits.frames
            || (queued > 0 && outbox.bytes.saturating_add(cost) > limits.bytes);
        if full {
            // Sealed under the lock: no later push can be taken after this
            // one was refused (the peer would see a gap). `slow` overrides
            // a graceful close already requested; the driver aborts on it.
            outbox.closed = true;
            outbox.slow = true;
            drop(outbox);
            self.close_with(CloseReason::SlowConsumer);
            self.inner.waker.wake();
            return Err(SendError::SlowConsumer);
        }
        outbox.bytes = outbox.bytes.saturating_add(cost);
        let was_empty = outbox.frames.is_empty();
        let (len, capacity) = (outbox.frames.len(), outbox.frames.capacity());
        if len == capacity && (IDLE_OUTBOX_SLOTS..BURST_OUTBOX_SLOTS).contains(&capacity) {
            outbox.frames.reserve(BURST_OUTBOX_SLOTS - len);
        }
        outbox.frames.push_back(frame);
        drop(outbox);
        PUSHES.with(|p| p.set(p.get().wrapping_add(1)));
        // One wake-up per batch, not per frame: a push into a non-empty
        // outbox was announced already. The push that made it non-empty
        // woke the driver, which has not drained it yet, or the driver
        // left frames there because its write queue is at the high-water
        // mark, and takes them when the socket takes that queue (see
        // `drain_outbox`).
        if was_empty {
            self.inner.waker.wake();
        }
        Ok(())
    }

    /// Closes the session gracefully: requests already received are
    /// answered, then the peer gets DISCONNECT with `reason` and the
    /// connection closes. Returns false, and changes nothing, if the
    /// session was already closing for any reason: closed before, the
    /// server shutting down, or the peer closing (its DISCONNECT or
    /// half-close, after which no DISCONNECT is sent back) or the session
    /// ending on its own (timeout, violation, reset).
    ///
    /// The DISCONNECT carries `reason` cut (at a character boundary) to
    /// what fits in the largest frame the session can send; the
    /// [`CloseReason::Closed`] given to the disconnect hook keeps it whole.
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

    /// True once the session is closing or has ended, whoever began it
    /// (the application, the server, the peer, or a timeout).
    pub fn is_closing(&self) -> bool {
        self.inner.close_reason.get().is_some()
    }

    /// Registers the driver's waker, woken by pushes and close requests.
    pub(crate) fn register(&self, cx: &Context<'_>) {
        self.inner.waker.register(cx.waker());
    }

    /// Why the session must close, if it must: the close request, except
    /// that a full outbox ([`CloseReason::SlowConsumer`]) overrides any
    /// graceful close requested before it. Locks the outbox only once a
    /// close was requested.
    pub(crate) fn closing(&self) -> Option<CloseReason> {
        let reason = self.inner.close_reason.get()?;
        if *reason != CloseReason::SlowConsumer && lock(&self.inner.outbox).slow {
            return Some(CloseReason::SlowConsumer);
        }
        Some(reason.clone())
    }

    /// The DISCONNECT frame for `reason`, its text cut (at a character
    /// boundary) so that the frame fits the largest frame this session's
    /// framing sends: an over-long application reason must not turn the
    /// farewell into an ERROR.
    pub(crate) fn farewell(&self, reason: &CloseReason) -> Frame {
        let mut text = match reason {
            // Tells a client of acknowledged delivery which frames it took.
            CloseReason::ServerShutdown => crate::delivery::shutdown_farewell(self),
            _ => None,
        }
        .unwrap_or_else(|| reason.to_string());
        let max = usize::try_from(self.inner.limits.max_frame_len)
            .unwrap_or(usize::MAX)
            .saturating_sub(msgi_proto::HEADER_LEN);
        if text.len() > max {
            let mut end = max;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        Frame::disconnect(text)
    }

    /// Moves queued frames into `sink` while it accepts them; the driver's
    /// waker must have been registered first. Frames left behind (`sink`
    /// said stop) get no new wake-up from later pushes: the caller must
    /// come back for them on its own (the driver does when its write queue
    /// drains).
    ///
    /// The buffer keeps its size here: a session under a steady stream of
    /// broadcasts reuses it instead of freeing and growing it again at
    /// every wake-up; [`free_outbox`](Session::free_outbox) gives it back
    /// once the session goes quiet.
    pub(crate) fn drain_outbox(&self, mut sink: impl FnMut(Frame) -> bool) -> bool {
        let mut outbox = lock(&self.inner.outbox);
        let mut moved = false;
        while let Some(frame) = outbox.frames.pop_front() {
            outbox.bytes = outbox.bytes.saturating_sub(Outbox::cost(&frame));
            moved = true;
            if !sink(frame) {
                break;
            }
        }
        moved
    }

    /// Pushed frames waiting in the outbox (one lock: for the observer).
    pub(crate) fn outbox_len(&self) -> usize {
        lock(&self.inner.outbox).frames.len()
    }

    /// Frees the outbox's buffer if it is empty and larger than an idle
    /// session keeps ([`IDLE_OUTBOX_SLOTS`]): the driver calls this when the
    /// session goes quiet after a burst of pushes. A session that takes a
    /// few pushes at a time keeps its small buffer, so steady broadcasts
    /// allocate nothing per delivery.
    pub(crate) fn free_outbox(&self) {
        let mut outbox = lock(&self.inner.outbox);
        if outbox.frames.is_empty() && outbox.frames.capacity() > IDLE_OUTBOX_SLOTS {
            outbox.frames = VecDeque::new();
        }
    }

    /// Refuses further pushes, keeping those already taken; true when none
    /// of them is left to move into the write queue.
    pub(crate) fn seal_outbox(&self) -> bool {
        let mut outbox = lock(&self.inner.outbox);
        outbox.closed = true;
        outbox.frames.is_empty()
    }

    /// Refuses further pushes and drops those still queued; returns how
    /// many were dropped.
    pub(crate) fn close_outbox(&self) -> usize {
        let dropped = {
            let mut outbox = lock(&self.inner.outbox);
            outbox.closed = true;
            outbox.bytes = 0;
            std::mem::take(&mut outbox.frames)
        };
        dropped.len()
    }

    /// Called once the session has ended and its disconnect hook has run:
    /// drops what the session holds for others (pushes, data), so that
    /// no `Session` stored there keeps this one alive.
    pub(crate) fn release(&self) {
        self.close_outbox();
        let data = {
            let mut data = lock(&self.inner.data);
            // Under the data lock, so no insert checks `released` before
            // this and stores after the take below.
            lock(&self.inner.outbox).released = true;
            std::mem::take(&mut *data)
        };
        drop(data);
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.inner.id)
            .field("client_id", &self.client_id())
            .field("peer_addr", &self.inner.info.peer_addr())
            .finish()
    }
}

impl PartialEq for Session {
    fn eq(&self, other: &Session) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

#[cfg(test)]
pub(crate) fn limits(frames: u32) -> Arc<OutboxLimits> {
    Arc::new(OutboxLimits {
        frames,
        bytes: u32::MAX,
        max_frame_len: u32::MAX,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_outbox_closes_as_slow_consumer() {
        let s = Session::new(SessionId(1), ConnectInfo::new(), limits(2));
        assert_eq!(s.send(Frame::data("a")), Ok(()));
        assert_eq!(s.send(Frame::data("b")), Ok(()));
        assert_eq!(s.send(Frame::data("c")), Err(SendError::SlowConsumer));
        assert!(s.is_closing());
        assert_eq!(s.closing(), Some(CloseReason::SlowConsumer));
        s.close_outbox();
        assert_eq!(s.send(Frame::data("d")), Err(SendError::Closed));
    }

    #[test]
    fn outbox_is_bounded_in_bytes_too() {
        let limits = Arc::new(OutboxLimits {
            frames: 1024,
            bytes: 1000,
            max_frame_len: u32::MAX,
        });
        let s = Session::new(SessionId(1), ConnectInfo::new(), limits.clone());
        let payload = bytes::Bytes::from(vec![0u8; 400]);
        assert_eq!(s.send(Frame::data(payload.clone())), Ok(()));
        assert_eq!(s.send(Frame::data(payload.clone())), Ok(()));
        // 3 x (400 + 14) > 1000.
        assert_eq!(
            s.send(Frame::data(payload.clone())),
            Err(SendError::SlowConsumer)
        );
        assert_eq!(s.closing(), Some(CloseReason::SlowConsumer));

        // Moving frames out frees their bytes; one frame larger than the
        // bound is taken by an empty outbox.
        let s = Session::new(SessionId(2), ConnectInfo::new(), limits);
        assert_eq!(s.send(Frame::data(payload.clone())), Ok(()));
        assert_eq!(s.send(Frame::data(payload.clone())), Ok(()));
        assert!(s.drain_outbox(|_| true));
        assert_eq!(s.send(Frame::data(vec![0u8; 5000])), Ok(()));
        assert_eq!(s.send(Frame::data("x")), Err(SendError::SlowConsumer));
    }

    #[test]
    fn a_push_after_the_outbox_closed_is_refused_not_lost() {
        // The order the old race allowed: the session closes its outbox,
        // then a push arrives. It must be refused, never left queued.
        let s = Session::new(SessionId(1), ConnectInfo::new(), limits(8));
        assert_eq!(s.send(Frame::data("before")), Ok(()));
        assert_eq!(s.close_outbox(), 1, "the frame taken before is reported");
        assert_eq!(s.send(Frame::data("after")), Err(SendError::Closed));
        assert!(!s.drain_outbox(|_| true), "nothing left behind");

        // Sealing keeps what was taken (it is written before the
        // farewell) and refuses the rest.
        let s = Session::new(SessionId(2), ConnectInfo::new(), limits(8));
        assert_eq!(s.send(Frame::data("taken")), Ok(()));
        assert!(!s.seal_outbox(), "one frame still to write");
        assert_eq!(s.send(Frame::data("late")), Err(SendError::Closed));
        let mut written = Vec::new();
        s.drain_outbox(|f| {
            written.push(f);
            true
        });
        assert_eq!(written, vec![Frame::data("taken")]);
        assert!(s.seal_outbox());
    }

    #[test]
    fn a_pushed_frame_does_not_keep_a_session_alive() {
        let s = Session::new(SessionId(1), ConnectInfo::new(), limits(8));
        let weak = Arc::downgrade(&s.inner);
        let mut frame = Frame::data("forwarded request");
        frame.extensions_mut().insert(s.clone());
        assert_eq!(s.send(frame), Ok(()));
        s.drain_outbox(|f| {
            assert!(f.extensions().is_empty(), "extensions never reach the wire");
            true
        });
        let mut frame = Frame::data("again");
        frame.extensions_mut().insert(s.clone());
        assert_eq!(s.send(frame), Ok(()));
        drop(s);
        assert!(weak.upgrade().is_none(), "the outbox kept its own session");
    }

    #[tokio::test]
    async fn an_ended_session_is_freed_even_if_its_data_holds_it() {
        use msgi_proto::FrameCodec;
        use msgi_proto::Framing as _;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        #[derive(Clone)]
        struct Partner(#[allow(dead_code)] Session);

        let weak = Arc::new(Mutex::new(None));
        let seen = weak.clone();
        let service = tower::service_fn(move |frame: Frame| {
            let seen = seen.clone();
            async move {
                if let Some(session) = frame.extensions().get::<Session>().cloned() {
                    *lock(&seen) = Some(Arc::downgrade(&session.inner));
                    session.insert_data(session.clone());
                    session.insert_data(Partner(session.clone()));
                    // The request, with the session in its extensions,
                    // pushed back to its own session.
                    let _ = session.send(frame.clone());
                }
                Ok::<_, std::convert::Infallible>(Some(frame))
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = crate::Server::builder().build().unwrap();
        let serving = tokio::spawn(
            server
                .serve(listener, service)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                }),
        );

        let mut peer = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut out = bytes::BytesMut::new();
        FrameCodec::new()
            .encode(Frame::data("hi").with_request_id(1), &mut out)
            .unwrap();
        peer.write_all(&out).await.unwrap();
        let mut got = bytes::BytesMut::new();
        let mut codec = FrameCodec::new();
        let answers = async {
            let mut n = 0;
            while n < 2 {
                while codec.decode(&mut got).unwrap().is_some() {
                    n += 1;
                }
                if n < 2 && peer.read_buf(&mut got).await.unwrap() == 0 {
                    break;
                }
            }
            n
        };
        let n = tokio::time::timeout(std::time::Duration::from_secs(20), answers)
            .await
            .unwrap();
        assert_eq!(n, 2, "the answer and the push");
        drop(peer);
        let _ = stop.send(());
        tokio::time::timeout(std::time::Duration::from_secs(20), serving)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let weak = lock(&weak).take().expect("the handler ran");
        assert!(
            weak.upgrade().is_none(),
            "the session's data keeps its own session alive"
        );
    }

    #[test]
    fn a_frame_the_framing_cannot_send_is_refused_up_front() {
        let s = Session::new(
            SessionId(1),
            ConnectInfo::new(),
            Arc::new(OutboxLimits {
                max_frame_len: 20,
                ..*limits(2)
            }),
        );
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
        let s = Session::new(SessionId(1), ConnectInfo::new(), limits(2));
        assert!(s.close("kicked"));
        assert!(!s.close_with(CloseReason::ServerShutdown));
        assert_eq!(s.closing(), Some(CloseReason::Closed("kicked".into())));
    }

    #[test]
    fn a_full_outbox_during_a_graceful_close_ends_the_session_as_slow_consumer() {
        let s = Session::new(SessionId(1), ConnectInfo::new(), limits(2));
        assert!(s.close("bye"));
        assert_eq!(s.send(Frame::data("a")), Ok(()));
        assert_eq!(s.send(Frame::data("b")), Ok(()));
        assert_eq!(s.send(Frame::data("c")), Err(SendError::SlowConsumer));
        // The slow consumer overrides the graceful close ...
        assert_eq!(s.closing(), Some(CloseReason::SlowConsumer));
        // ... and nothing is taken after the refused push: no gap.
        let mut out = Vec::new();
        s.drain_outbox(|f| {
            out.push(f);
            true
        });
        assert_eq!(s.send(Frame::data("d")), Err(SendError::Closed));
    }

    #[test]
    fn a_closed_session_says_closed_before_too_large() {
        let s = Session::new(
            SessionId(1),
            ConnectInfo::new(),
            Arc::new(OutboxLimits {
                max_frame_len: 20,
                ..*limits(2)
            }),
        );
        s.close_outbox();
        assert_eq!(s.send(Frame::data(vec![0u8; 100])), Err(SendError::Closed));
    }

    #[test]
    fn the_farewell_fits_the_largest_frame_the_session_sends() {
        let s = Session::new(
            SessionId(1),
            ConnectInfo::new(),
            Arc::new(OutboxLimits {
                max_frame_len: 64,
                ..*limits(2)
            }),
        );
        // 'é' is two bytes: the cut must fall on a character boundary.
        let reason = CloseReason::Closed("é".repeat(100));
        let frame = s.farewell(&reason);
        assert_eq!(frame.kind(), crate::Kind::DISCONNECT);
        assert!(frame.wire_len() <= 64, "{}", frame.wire_len());
        assert_eq!(frame.payload().as_ref(), "é".repeat(27).as_bytes());
        let short = s.farewell(&CloseReason::Closed("bye".into()));
        assert_eq!(short.payload().as_ref(), b"bye");
    }

    #[test]
    fn data_inserted_after_release_is_not_kept() {
        let s = Session::new(SessionId(1), ConnectInfo::new(), limits(2));
        let weak = Arc::downgrade(&s.inner);
        s.release();
        // A task spawned by a handler, still holding the session, stores
        // the session in its own data after the session ended.
        assert_eq!(s.insert_data(s.clone()), None);
        assert_eq!(s.data::<Session>(), None);
        s.with_data(|d| d.insert(s.clone()));
        assert_eq!(s.data::<Session>(), None);
        drop(s);
        assert!(weak.upgrade().is_none(), "the session keeps itself alive");
    }

    #[test]
    fn session_ids_parse_and_print_as_canonical_decimal() {
        let node = NodeId::new(NodeId::MAX).unwrap();
        let first = SessionId::nth(node, 0);
        assert_eq!(first.node(), node);
        assert_eq!(first.as_u64() & MAX_SERIAL, 1);
        // The largest id fits in 20 digits, and parses back.
        let last = SessionId::nth(node, MAX_SERIAL - 1);
        assert_eq!(last.as_u64(), u64::MAX);
        assert_eq!(last.to_string(), u64::MAX.to_string());
        assert_eq!(SessionId::parse_decimal(&last.to_string()), Some(last));
        // After 2^44 - 1 sessions a node starts again at 1, never 0.
        assert_eq!(SessionId::nth(node, MAX_SERIAL), first);
        for bad in [
            "",
            "0",
            "01",
            "+1",
            "-1",
            " 1",
            "1 ",
            "18446744073709551616",
        ] {
            assert_eq!(SessionId::parse_decimal(bad), None, "{bad:?}");
        }
        // Node 0 and serial 0 are never handed out.
        assert_eq!(SessionId::from_u64(1), None);
        assert_eq!(SessionId::from_u64(1 << 44), None);
        assert_eq!(
            SessionId::from_u64((1 << 44) | 1),
            Some(SessionId::nth(NodeId(1), 0))
        );
        assert_eq!(SessionId::parse_decimal("1"), None);
    }

    #[test]
    fn node_ids_are_checked() {
        assert!(NodeId::new(0).is_err());
        assert!(NodeId::new(NodeId::MAX + 1).is_err());
        assert_eq!(NodeId::new(1).map(NodeId::get), Ok(1));
        for _ in 0..100 {
            let n = NodeId::random().get();
            assert!((1..=NodeId::MAX).contains(&n));
        }
    }

    #[test]
    fn session_data() {
        let s = Session::new(SessionId(7), ConnectInfo::new(), limits(2));
        assert_eq!(s.client_id(), "7");
        assert_eq!(s.insert_data(5u32), None);
        assert_eq!(s.data::<u32>(), Some(5));
        s.with_data(|d| *d.get_mut::<u32>().unwrap() += 1);
        assert_eq!(s.data::<u32>(), Some(6));
    }

    /// A waker that counts its wake-ups.
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_burst_of_pushes_wakes_the_driver_once_and_keeps_the_buffer() {
        let s = Session::new(SessionId(1), ConnectInfo::new(), limits(1024));
        let count = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
        let waker = std::task::Waker::from(count.clone());
        let wakes = || count.0.load(Ordering::SeqCst);
        s.register(&Context::from_waker(&waker));
        for i in 0..100 {
            assert_eq!(s.send(Frame::data(format!("{i}"))), Ok(()));
        }
        assert_eq!(wakes(), 1, "one wake-up for the burst");
        // The driver takes part of it (its write queue filled up): the
        // frames left are its to come back for; pushes on top wake nobody.
        s.register(&Context::from_waker(&waker));
        let mut taken = Vec::new();
        s.drain_outbox(|f| {
            taken.push(f);
            taken.len() < 40
        });
        assert_eq!(s.send(Frame::data("more")), Ok(()));
        assert_eq!(wakes(), 1);
        s.drain_outbox(|f| {
            taken.push(f);
            true
        });
        let texts: Vec<String> = taken
            .iter()
            .map(|f| f.payload_text().into_owned())
            .collect();
        let expected: Vec<String> = (0..100)
            .map(|i| i.to_string())
            .chain(["more".to_owned()])
            .collect();
        assert_eq!(texts, expected, "every frame, in order");
        // Drained: the buffer the burst grew is kept for the next burst
        // (no allocation per wake-up) until the driver frees it, quiet.
        assert!(lock(&s.inner.outbox).frames.capacity() >= 100);
        // The next push into the empty outbox wakes the driver again.
        s.register(&Context::from_waker(&waker));
        assert_eq!(s.send(Frame::data("again")), Ok(()));
        assert_eq!(wakes(), 2);
        s.drain_outbox(|_| true);
        s.free_outbox();
        assert_eq!(lock(&s.inner.outbox).frames.capacity(), 0);
        // A full outbox and a close wake it whatever it holds.
        let full = Session::new(SessionId(2), ConnectInfo::new(), limits(2));
        full.register(&Context::from_waker(&waker));
        assert_eq!(full.send(Frame::data("a")), Ok(()));
        assert_eq!(wakes(), 3);
        full.register(&Context::from_waker(&waker));
        assert_eq!(full.send(Frame::data("b")), Ok(()));
        assert_eq!(full.send(Frame::data("c")), Err(SendError::SlowConsumer));
        assert_eq!(wakes(), 4);
    }
}
