//! The observer hook: what only the runtime sees, reported to an
//! [`Observer`] set with [`ServerBuilder::observer`](crate::ServerBuilder::observer).
//!
//! Sessions opening and closing, connections rejected, and what each
//! session's task did ([`Activity`]: frames and bytes each way by kind,
//! request latencies, write stalls, queue depths, errors by kind), counted
//! during one wake-up of the task and reported once at its end. A metrics
//! backend (Prometheus counters, a live view of the sessions) is an
//! `Observer`; this crate has no metrics dependency.

use std::time::Duration;

use msgi_proto::Kind;

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
/// Every method does nothing by default (the trait can grow without breaking
/// an implementation); implement those you need. Methods are called from the
/// connection's task (or the accept loop), so they must be quick and must
/// not block.
///
/// # Cost
///
/// Without an observer (the default) a session counts nothing: no
/// allocation, no dynamic call and no clock read per frame, one branch where
/// a frame is read or queued. With one, a session allocates its counters
/// once when it starts, counts into them (no call per frame), and makes one
/// [`session_activity`](Observer::session_activity) call per wake-up of its
/// task that did something (or one per 32 requests answered, if a wake-up
/// answers more), with one clock read and one look at its outbox (a lock).
///
/// # Per-session counters
///
/// Every call names its [`Session`]: a backend that keeps a view of the live
/// sessions (frames and bytes each way, last activity, queue depths) keys
/// its entries by [`Session::id`], makes one in
/// [`session_opened`](Observer::session_opened), adds each
/// [`Activity`] to it, and drops it in
/// [`session_closed`](Observer::session_closed) (called once, after the
/// session's last activity report).
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use msgi::{Activity, Observer, Session};
///
/// #[derive(Default)]
/// struct Totals { frames_in: AtomicU64, answered: AtomicU64 }
///
/// impl Observer for Totals {
///     fn session_activity(&self, _session: &Session, activity: &Activity) {
///         self.frames_in.fetch_add(activity.frames_in.frames(), Ordering::Relaxed);
///         self.answered.fetch_add(activity.latencies().len() as u64, Ordering::Relaxed);
///     }
/// }
/// let server = msgi::Server::builder().observer(Totals::default()).build()?;
/// # Ok::<(), msgi::ConfigError>(())
/// ```
#[allow(unused_variables)]
pub trait Observer: Send + Sync + 'static {
    /// A session started (after the accept step, before its first frame).
    fn session_opened(&self, session: &Session) {}

    /// A session ended, once, with its reason
    /// ([`CloseReason::kind`] is a bounded label).
    fn session_closed(&self, session: &Session, reason: &CloseReason) {}

    /// A connection got no session.
    fn connection_rejected(&self, rejection: Rejection) {}

    /// What `session`'s task did in one wake-up (see [`Activity`]); only
    /// for a wake-up that read, queued or wrote something, saw an error, or
    /// left other queue depths than the last report gave.
    fn session_activity(&self, session: &Session, activity: &Activity) {}
}

/// A shared observer: the application keeps a handle (to read its
/// metrics, say) and gives the server a clone.
impl<O: Observer + ?Sized> Observer for std::sync::Arc<O> {
    fn session_opened(&self, session: &Session) {
        (**self).session_opened(session);
    }

    fn session_closed(&self, session: &Session, reason: &CloseReason) {
        (**self).session_closed(session, reason);
    }

    fn connection_rejected(&self, rejection: Rejection) {
        (**self).connection_rejected(rejection);
    }

    fn session_activity(&self, session: &Session, activity: &Activity) {
        (**self).session_activity(session, activity);
    }
}

/// Two observers told the same things, the first first: metrics and a live
/// view at once. Nest pairs for more: `(a, (b, c))`.
///
/// ```
/// # use msgi::{Observer, Session};
/// # #[derive(Default)] struct Metrics; impl Observer for Metrics {}
/// # #[derive(Default)] struct LiveView; impl Observer for LiveView {}
/// let server = msgi::Server::builder()
///     .observer((Metrics::default(), LiveView::default()))
///     .build()?;
/// # Ok::<(), msgi::ConfigError>(())
/// ```
impl<A: Observer, B: Observer> Observer for (A, B) {
    fn session_opened(&self, session: &Session) {
        self.0.session_opened(session);
        self.1.session_opened(session);
    }

    fn session_closed(&self, session: &Session, reason: &CloseReason) {
        self.0.session_closed(session, reason);
        self.1.session_closed(session, reason);
    }

    fn connection_rejected(&self, rejection: Rejection) {
        self.0.connection_rejected(rejection);
        self.1.connection_rejected(rejection);
    }

    fn session_activity(&self, session: &Session, activity: &Activity) {
        self.0.session_activity(session, activity);
        self.1.session_activity(session, activity);
    }
}

/// The kinds of frame counted apart in [`ByKind`]: one per kind the
/// protocol defines, one for all application kinds (`0x100`-`0xFFF`), one
/// for reserved kinds (a peer's mistake). A bounded set of labels.
const KIND_LABELS: [&str; 9] = [
    "ping",
    "pong",
    "data",
    "control",
    "error",
    "heartbeat",
    "disconnect",
    "application",
    "reserved",
];

/// The index of `kind` in [`KIND_LABELS`].
#[inline]
fn kind_index(kind: Kind) -> usize {
    match kind {
        Kind::PING => 0,
        Kind::PONG => 1,
        Kind::DATA => 2,
        Kind::CONTROL => 3,
        Kind::ERROR => 4,
        Kind::HEARTBEAT => 5,
        Kind::DISCONNECT => 6,
        _ if kind.get() >= Kind::APP_MIN => 7,
        _ => 8,
    }
}

/// The bounded, metrics-safe label of a frame kind: `ping`, `pong`,
/// `data`, `control`, `error`, `heartbeat`, `disconnect`, `application`
/// (every kind from `0x100`) or `reserved`.
pub fn kind_label(kind: Kind) -> &'static str {
    KIND_LABELS[kind_index(kind)]
}

/// Frames and their bytes, counted by kind ([`kind_label`]). Bytes are
/// [`Frame::wire_len`](crate::Frame::wire_len): header and payload as the
/// session sees them, before any wire transform (compression, encryption).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByKind {
    frames: [u64; KIND_LABELS.len()],
    bytes: [u64; KIND_LABELS.len()],
}

impl ByKind {
    /// Counts one frame of `kind` and `bytes`.
    #[inline]
    pub(crate) fn add(&mut self, kind: Kind, bytes: usize) {
        let i = kind_index(kind);
        self.frames[i] += 1;
        self.bytes[i] += bytes as u64;
    }

    /// Frames counted, all kinds.
    pub fn frames(&self) -> u64 {
        self.frames.iter().sum()
    }

    /// Bytes counted, all kinds.
    pub fn bytes(&self) -> u64 {
        self.bytes.iter().sum()
    }

    /// Frames and bytes counted for `kind`'s label (every application kind
    /// counts under `application`).
    pub fn get(&self, kind: Kind) -> (u64, u64) {
        let i = kind_index(kind);
        (self.frames[i], self.bytes[i])
    }

    /// `(label, frames, bytes)` for each kind with at least one frame.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64, u64)> + '_ {
        KIND_LABELS
            .iter()
            .zip(self.frames.iter().zip(&self.bytes))
            .filter(|(_, (frames, _))| **frames > 0)
            .map(|(label, (frames, bytes))| (*label, *frames, *bytes))
    }

    fn clear(&mut self) {
        *self = ByKind::default();
    }
}

/// An error a session's task saw and went on from (a close has its own
/// report: [`Observer::session_closed`] with [`CloseReason::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCause {
    /// The handler returned an error: the peer got ERROR with its text.
    Handler,
    /// The handler answered a correlated request with nothing: the peer
    /// got ERROR `no response`.
    NoResponse,
    /// The handler answered with a kind that cannot answer (PING, PONG,
    /// HEARTBEAT, DISCONNECT, reserved): the peer got an ERROR.
    AnswerKind,
    /// An answer could not be encoded (over the maximum frame size, or
    /// refused by a wire transform): the peer got ERROR `answer not sent`.
    AnswerNotSent,
    /// A pushed frame could not be encoded (a wire transform refused it)
    /// and was dropped.
    PushDropped,
    /// The peer sent an ERROR frame.
    Peer,
}

impl ErrorCause {
    const ALL: [ErrorCause; 6] = [
        ErrorCause::Handler,
        ErrorCause::NoResponse,
        ErrorCause::AnswerKind,
        ErrorCause::AnswerNotSent,
        ErrorCause::PushDropped,
        ErrorCause::Peer,
    ];

    /// A bounded, metrics-safe label.
    pub fn label(self) -> &'static str {
        match self {
            ErrorCause::Handler => "handler",
            ErrorCause::NoResponse => "no_response",
            ErrorCause::AnswerKind => "answer_kind",
            ErrorCause::AnswerNotSent => "answer_not_sent",
            ErrorCause::PushDropped => "push_dropped",
            ErrorCause::Peer => "peer",
        }
    }

    fn index(self) -> usize {
        match self {
            ErrorCause::Handler => 0,
            ErrorCause::NoResponse => 1,
            ErrorCause::AnswerKind => 2,
            ErrorCause::AnswerNotSent => 3,
            ErrorCause::PushDropped => 4,
            ErrorCause::Peer => 5,
        }
    }
}

/// The most request latencies one [`Activity`] holds: a wake-up that
/// answers more is reported in several.
pub(crate) const LATENCIES: usize = 32;

/// What one session's task did in one wake-up, reported to
/// [`Observer::session_activity`]. Counts are for that wake-up only (add
/// them up for totals); depths are as the wake-up left them.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Activity {
    /// Frames read from the peer, by kind.
    pub frames_in: ByKind,
    /// Frames queued for the peer, by kind: answers, pushes, and the
    /// session's own (PONG, HEARTBEAT, WELCOME, ERROR, DISCONNECT).
    pub frames_out: ByKind,
    /// Bytes the transport wrote (on the wire: after wire transforms).
    pub bytes_written: u64,
    /// Writes that could not finish: the peer reads slower than the
    /// session writes (its write queue waits for the socket).
    pub write_stalls: u32,
    /// Bytes queued to write and not yet written, after the wake-up
    /// (the write queue's depth; the session stops reading at its
    /// high-water mark).
    pub write_queue: usize,
    /// Pushed frames waiting in the session's outbox, after the wake-up.
    pub outbox: usize,
    /// Requests read and not yet answered, after the wake-up.
    ///
    /// All three depths are zero in a session's last report (as it ends).
    pub in_flight: usize,
    errors: [u32; ErrorCause::ALL.len()],
    latencies: [Duration; LATENCIES],
    answered: usize,
    previous: Depths,
}

/// A session's queue depths, as one report left them (see
/// [`Activity::depth_changes`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Depths {
    pub(crate) write_queue: usize,
    pub(crate) outbox: usize,
    pub(crate) in_flight: usize,
}

/// How a session's depths changed since its previous report, new minus
/// old (see [`Activity::depth_changes`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DepthChanges {
    /// Change of [`Activity::write_queue`], in bytes.
    pub write_queue: i64,
    /// Change of [`Activity::outbox`], in frames.
    pub outbox: i64,
    /// Change of [`Activity::in_flight`], in requests.
    pub in_flight: i64,
}

impl Activity {
    /// How long each request answered in this wake-up took, from the
    /// wake-up that read it to the end of the one that queued its answer
    /// (after that wake-up's write: so its answer was written, or queued
    /// behind a full socket). Measured on the runtime's clock, read once
    /// per wake-up. One-way requests answered with nothing count too.
    pub fn latencies(&self) -> &[Duration] {
        &self.latencies[..self.answered]
    }

    /// Errors seen, by cause: `(cause, count)` for each cause seen.
    pub fn errors(&self) -> impl Iterator<Item = (ErrorCause, u32)> + '_ {
        ErrorCause::ALL
            .iter()
            .zip(&self.errors)
            .filter(|(_, n)| **n > 0)
            .map(|(kind, n)| (*kind, *n))
    }

    /// Errors seen of `cause`.
    pub fn error_count(&self, cause: ErrorCause) -> u32 {
        self.errors[cause.index()]
    }

    /// How the depths changed since the session's previous report (from
    /// zero for its first). A session is reported when its depths change,
    /// even if it did nothing else, and its last report (as it ends) gives
    /// depths of zero: so these changes, added up over every report of
    /// every session, are the server's current totals (bytes waiting to be
    /// written, pushes waiting in outboxes, requests in flight) with no
    /// per-session state in the observer.
    pub fn depth_changes(&self) -> DepthChanges {
        let change = |new: usize, old: usize| {
            i64::try_from(new).unwrap_or(i64::MAX) - i64::try_from(old).unwrap_or(i64::MAX)
        };
        DepthChanges {
            write_queue: change(self.write_queue, self.previous.write_queue),
            outbox: change(self.outbox, self.previous.outbox),
            in_flight: change(self.in_flight, self.previous.in_flight),
        }
    }

    /// Sets the depths this report gives, and those of the previous one.
    pub(crate) fn set_depths(&mut self, depths: Depths, previous: Depths) {
        self.write_queue = depths.write_queue;
        self.outbox = depths.outbox;
        self.in_flight = depths.in_flight;
        self.previous = previous;
    }

    /// The report of `counts`, with the latencies of the requests read at
    /// `started` and answered by `now`, and the depths the wake-up left.
    pub(crate) fn new(
        counts: &Counts,
        started: &[std::time::Instant],
        now: std::time::Instant,
        write_stalls: u32,
    ) -> Activity {
        let mut latencies = [Duration::ZERO; LATENCIES];
        for (latency, started) in latencies.iter_mut().zip(started) {
            *latency = now.saturating_duration_since(*started);
        }
        Activity {
            frames_in: counts.frames_in,
            frames_out: counts.frames_out,
            bytes_written: counts.bytes_written,
            write_stalls,
            write_queue: 0,
            outbox: 0,
            in_flight: 0,
            errors: counts.errors,
            latencies,
            answered: started.len().min(LATENCIES),
            previous: Depths::default(),
        }
    }
}

/// What a session's task counts between two reports (kept only while an
/// observer is installed).
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) frames_in: ByKind,
    pub(crate) frames_out: ByKind,
    pub(crate) bytes_written: u64,
    errors: [u32; ErrorCause::ALL.len()],
}

impl Counts {
    #[inline]
    pub(crate) fn error(&mut self, cause: ErrorCause) {
        self.errors[cause.index()] += 1;
    }

    /// Whether nothing was counted since the last report.
    pub(crate) fn is_empty(&self) -> bool {
        self.bytes_written == 0
            && self.frames_in == ByKind::default()
            && self.frames_out == ByKind::default()
            && self.errors.iter().all(|n| *n == 0)
    }

    /// Starts afresh after a report.
    pub(crate) fn clear(&mut self) {
        self.frames_in.clear();
        self.frames_out.clear();
        self.bytes_written = 0;
        self.errors = [0; ErrorCause::ALL.len()];
    }
}
