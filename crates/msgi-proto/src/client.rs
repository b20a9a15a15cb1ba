//! The client side of a connection, without I/O: the handshake, the
//! timers, request ids, matching answers to calls, what a lost connection
//! does to calls and one-way frames, and the graceful close.
//!
//! [`Connection`] is one client's state across its successive transports
//! (a reconnect is a new transport for the same `Connection`). It never
//! touches a socket, a task or a clock: the driver feeds it what happened
//! (`handle_*(.., now)`) and what the application asks ([`send`], [`call`],
//! [`close`]), and acts on what it asks for (`poll_*`): frames to encode
//! ([`poll_transmit`]), when to wake it ([`poll_timeout`]), and what to tell
//! the application ([`poll_event`]). Every rule here runs in tests on a
//! simulated clock.
//!
//! The rules, in PROTOCOL.md's terms:
//!
//! - **Handshake.** With a client id over a binary framing, a new transport
//!   sends HELLO (request id 0) and waits for WELCOME. An ERROR with id 0,
//!   or an ERROR or DISCONNECT without an id, refuses it
//!   ([`ConnectionError::HandshakeRefused`]). Other frames before WELCOME
//!   count against [`ConfigBuilder::early_frames`] and [`ConfigBuilder::early_bytes`]
//!   (beyond: [`Violation::TooManyBeforeWelcome`]); all but HEARTBEAT, PING
//!   and PONG go through the session rules once WELCOME arrives, in order,
//!   as if they came after it (a request id: a late answer; flags for a
//!   transform not run: a violation; the rest: pushes).
//! - **Request ids** are allocated per transport from 1 (0 is the
//!   handshake's), skipping ids still pending, wrapping around past
//!   `u32::MAX`.
//! - **Matching.** Any frame carrying the id of a pending call completes
//!   it: an ERROR as [`CallError::Remote`], a kind that cannot answer (PING,
//!   HEARTBEAT, a reserved kind) as [`CallError::BadAnswer`], without acting
//!   on the frame. A frame whose id matches no pending call is a late
//!   answer: dropped ([`Event::LateAnswer`]), never a push.
//! - **Abandoned calls** ([`Caller::is_abandoned`]) are forgotten at the
//!   next [`handle_abandoned`](Connection::handle_abandoned), written or
//!   not.
//! - **A lost transport** fails the calls written on it
//!   ([`CallError::ConnectionLost`]); calls not written yet stay held for
//!   the next transport, each failing with [`CallError::NotConnected`] at
//!   its queue deadline; one-way frames whose bytes were not all written go
//!   first on the next transport, in order.
//! - **Close.** [`close`](Connection::close) fails the calls not written
//!   ([`CallError::NotSent`]), writes the held one-way frames, then
//!   DISCONNECT, and ends when they are flushed or at the close linger.
//!
//! [`send`]: Connection::send
//! [`call`]: Connection::call
//! [`close`]: Connection::close
//! [`poll_transmit`]: Connection::poll_transmit
//! [`poll_timeout`]: Connection::poll_timeout
//! [`poll_event`]: Connection::poll_event

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::CodecError;
use crate::config::ConfigError;
use crate::delivery;
use crate::frame::{Flags, Frame, Kind};
use crate::session::{self, Expired, Inbound, Protocol, Reading, Role, Timers, WELCOME_PREFIX};
use crate::text::PeerText;

/// The request id of the handshake; calls use ids from 1.
pub const HANDSHAKE_ID: u32 = 0;

/// The least write-queue high-water mark, as the server's.
pub const MIN_HIGH_WATER: usize = 64 * 1024;

/// [`ConfigBuilder::max_events`] by default.
pub const DEFAULT_MAX_EVENTS: usize = 256;

/// What waits for a call's answer: the driver's reply handle (a oneshot
/// sender in msgi), kept by the [`Connection`] until the call completes.
pub trait Caller {
    /// True once nobody waits for the answer any more (the caller dropped
    /// its future): the call may be forgotten.
    fn is_abandoned(&self) -> bool;

    /// The caller marked the call idempotent: if the transport is lost
    /// after it was written and before its answer, it is sent again on the
    /// next transport instead of failing with
    /// [`CallError::ConnectionLost`] (default false: a call whose bytes
    /// may have reached the server is reported, never sent twice).
    fn is_idempotent(&self) -> bool {
        false
    }
}

/// Settings of a client [`Connection`], checked when built
/// ([`Config::builder`], [`ConfigBuilder::build`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    timers: Timers,
    binary: bool,
    client_id: Option<String>,
    early_frames: usize,
    early_bytes: usize,
    high_water: usize,
    max_events: usize,
    held_sends: usize,
    queue_timeout: Option<Duration>,
    close_linger: Option<Duration>,
    ack: Option<AckWindow>,
    recover_pushes: bool,
}

/// Acknowledged delivery's bounds on the client (docs/PROTOCOL.md, section
/// 3, *Acknowledged delivery*): one-way frames sent and not yet
/// acknowledged are kept, at most this many and this many wire bytes;
/// [`Connection::accepts_work`] is false while the window is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckWindow {
    /// Frames kept, at most (at least 1).
    pub frames: usize,
    /// Wire bytes kept, at most (at least 1; a frame into an empty window
    /// is always taken).
    pub bytes: usize,
    /// This run of the client (1 to `u64::MAX`): the server forgets the
    /// numbers of another epoch for the same client id. Draw it at random
    /// when the client starts.
    pub epoch: u64,
}

impl Default for Config {
    /// The defaults of [`ConfigBuilder`] (which pass its checks).
    fn default() -> Self {
        ConfigBuilder::default().settings
    }
}

impl Config {
    /// Settings to adjust, then check with [`ConfigBuilder::build`].
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// The client id announced in HELLO, if any.
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }

    /// The write-queue high-water mark.
    pub fn high_water(&self) -> usize {
        self.high_water
    }
}

/// Builds a client [`Config`]: each setter replaces one value, and
/// [`build`](ConfigBuilder::build) refuses a combination that cannot work
/// with a [`ConfigError`] naming the setting.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    settings: Config,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        ConfigBuilder {
            settings: Config {
                timers: Timers {
                    idle_timeout: Some(Duration::from_secs(60)),
                    heartbeat_interval: Some(Duration::from_secs(20)),
                    handshake_timeout: None,
                },
                binary: true,
                client_id: None,
                early_frames: 1024,
                early_bytes: 4 * 1024 * 1024,
                high_water: MIN_HIGH_WATER,
                max_events: DEFAULT_MAX_EVENTS,
                held_sends: 1024,
                queue_timeout: Some(Duration::from_secs(10)),
                close_linger: Some(Duration::from_secs(5)),
                ack: None,
                recover_pushes: false,
            },
        }
    }
}

impl ConfigBuilder {
    /// Heartbeat and idle timers (default 20 s and 60 s; the handshake
    /// timer is not used: the driver gives each transport its handshake
    /// deadline). A zero interval or timeout is refused (`None` disables).
    pub fn timers(mut self, timers: Timers) -> Self {
        self.settings.timers = timers;
        self
    }

    /// False for framings without kinds and request ids (text lines): no
    /// handshake, no calls (default true).
    pub fn binary(mut self, binary: bool) -> Self {
        self.settings.binary = binary;
        self
    }

    /// The client id announced in HELLO (default `None`: no handshake).
    /// Over a binary framing it must be one the server can accept (1 to 255
    /// bytes of UTF-8 without control characters, not digits only).
    pub fn client_id(mut self, id: Option<String>) -> Self {
        self.settings.client_id = id;
        self
    }

    /// Frames the server may send before WELCOME, at most (default 1024).
    pub fn early_frames(mut self, frames: usize) -> Self {
        self.settings.early_frames = frames;
        self
    }

    /// Wire bytes the server may send before WELCOME, at most (default
    /// 4 MiB).
    pub fn early_bytes(mut self, bytes: usize) -> Self {
        self.settings.early_bytes = bytes;
        self
    }

    /// Bytes queued for writing at or above which no more held work is
    /// encoded ([`Connection::accepts_work`] is false); reading stops at
    /// twice this ([`Connection::may_read`]). Default [`MIN_HIGH_WATER`];
    /// at least 1.
    pub fn high_water(mut self, bytes: usize) -> Self {
        self.settings.high_water = bytes;
        self
    }

    /// Events waiting in [`Connection::poll_event`] at or above which
    /// reading stops ([`Connection::may_read`] is false) until the driver
    /// drains them (default [`DEFAULT_MAX_EVENTS`]; at least 1).
    pub fn max_events(mut self, events: usize) -> Self {
        self.settings.max_events = events;
        self
    }

    /// One-way frames taken while not connected and held, at most (the
    /// outbox capacity; default 1024; at least 1):
    /// [`Connection::accepts_work`] is false beyond.
    pub fn held_sends(mut self, frames: usize) -> Self {
        self.settings.held_sends = frames;
        self
    }

    /// How long a call held while not connected waits for a connection
    /// (default 10 s); `None`: as long as the client tries.
    pub fn queue_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.settings.queue_timeout = timeout;
        self
    }

    /// How long a graceful close waits for its bytes to be written (default
    /// 5 s); `None`: for ever.
    pub fn close_linger(mut self, linger: Option<Duration>) -> Self {
        self.settings.close_linger = linger;
        self
    }

    /// Acknowledged delivery: every one-way frame is kept until the server
    /// acknowledges it and sent again after a reconnect (default `None`:
    /// one-way frames are at most once). Needs a client id and a binary
    /// framing.
    pub fn acknowledged(mut self, window: Option<AckWindow>) -> Self {
        self.settings.ack = window;
        self
    }

    /// Push recovery, with acknowledged delivery: RESUME asks the server to
    /// keep the pushes for this client id while it is away and to number
    /// them; the client drops the ones it has already, says which it has
    /// (`PUSHED <n>`), and [`Connection::recovered`] and
    /// [`Connection::missed_pushes`] tell what the server kept (default
    /// off; docs/PROTOCOL.md, section 3, *Push recovery*).
    pub fn recover_pushes(mut self, on: bool) -> Self {
        self.settings.recover_pushes = on;
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first setting refused: a zero limit
    /// (`high_water`, `max_events`: the connection would never write or
    /// read; `held_sends`), a zero idle timeout or heartbeat interval (use
    /// `None`), or a client id the
    /// server would refuse.
    pub fn build(self) -> Result<Config, ConfigError> {
        let s = &self.settings;
        for (setting, n) in [
            ("high_water", s.high_water),
            ("max_events", s.max_events),
            ("held_sends", s.held_sends),
        ] {
            if n == 0 {
                return Err(ConfigError::new(setting, "must be at least 1"));
            }
        }
        for (setting, t) in [
            ("idle_timeout", s.timers.idle_timeout),
            ("heartbeat_interval", s.timers.heartbeat_interval),
        ] {
            if t.is_some_and(|t| t.is_zero()) {
                return Err(ConfigError::new(
                    setting,
                    "must be above zero (None disables it)",
                ));
            }
        }
        if let Some(window) = &s.ack {
            if window.frames == 0 || window.bytes == 0 || window.epoch == 0 {
                return Err(ConfigError::new(
                    "acknowledged",
                    "window frames, bytes and epoch must be at least 1",
                ));
            }
            if s.client_id.is_none() || !s.binary {
                return Err(ConfigError::new(
                    "acknowledged",
                    "needs a client id and a binary framing (the server keeps \
                     the numbers per client id)",
                ));
            }
        }
        if s.recover_pushes && s.ack.is_none() {
            return Err(ConfigError::new(
                "recover_pushes",
                "needs acknowledged delivery (RESUME carries it)",
            ));
        }
        if let (Some(id), true) = (&s.client_id, s.binary) {
            session::parse_client_id(id.as_bytes())
                .map_err(|why| ConfigError::new("client_id", why))?;
        }
        Ok(self.settings)
    }
}

/// How the server broke the protocol.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Violation {
    /// Its bytes could not be decoded (bad magic, a length out of range, a
    /// wire transform refusing a frame): `Display` and `source` are the
    /// codec error's.
    Codec(Arc<CodecError>),
    /// A frame broke a session rule (flags for a transform this session
    /// does not run), with the rule's text.
    Rule(String),
    /// A call was answered with a frame of a kind that cannot answer
    /// (PING, HEARTBEAT, a reserved kind).
    BadAnswer {
        /// The call's request id.
        id: u32,
        /// The kind of the frame that carried it.
        kind: Kind,
    },
    /// More frames or bytes than allowed arrived before WELCOME.
    TooManyBeforeWelcome {
        /// The frame limit.
        frames: usize,
        /// The byte limit.
        bytes: usize,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Codec(e) => fmt::Display::fmt(e, f),
            Violation::Rule(rule) => f.write_str(rule),
            Violation::BadAnswer { id, kind } => {
                write!(f, "call {id} answered with a {kind} frame")
            }
            Violation::TooManyBeforeWelcome { frames, bytes } => {
                write!(
                    f,
                    "more than {frames} frames or {bytes} bytes before WELCOME"
                )
            }
        }
    }
}

impl std::error::Error for Violation {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // Transparent: the codec error's own source.
            Violation::Codec(e) => e.source(),
            _ => None,
        }
    }
}

/// Why a transport ended.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The server closed the connection between frames; with the text of
    /// its last uncorrelated ERROR, if one came (`server full`).
    ServerClosed {
        /// The reason of the server's last ERROR without a request id.
        last_error: Option<String>,
    },
    /// The server sent DISCONNECT with this reason (escaped, capped).
    ServerDisconnected(String),
    /// Nothing arrived from the server for the idle timeout.
    IdleTimeout,
    /// The server broke the protocol; an ERROR naming it was queued.
    Violation(Violation),
    /// The server refused the handshake, with this reason (escaped, capped).
    HandshakeRefused(String),
    /// WELCOME did not arrive by the handshake deadline.
    HandshakeTimeout,
    /// The transport failed or ended inside a frame (reported by the
    /// driver), with what it said.
    Transport(String),
    /// The client closed the connection itself.
    ClientClosed,
    /// The server did not take up acknowledged delivery: its answer to
    /// RESUME (escaped, capped).
    DeliveryRefused(String),
}

impl ConnectionError {
    /// A short label for the cause, from a bounded set (for metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectionError::ServerClosed { .. } => "server_closed",
            ConnectionError::ServerDisconnected(_) => "server_disconnected",
            ConnectionError::IdleTimeout => "idle_timeout",
            ConnectionError::Violation(Violation::Codec(_)) => "undecodable",
            ConnectionError::Violation(_) => "protocol_violation",
            ConnectionError::HandshakeRefused(_) => "handshake_refused",
            ConnectionError::HandshakeTimeout => "handshake_timeout",
            ConnectionError::Transport(_) => "transport",
            ConnectionError::ClientClosed => "client_closed",
            ConnectionError::DeliveryRefused(_) => "delivery_refused",
        }
    }

    /// The server broke the protocol: how.
    pub fn violation(&self) -> Option<&Violation> {
        match self {
            ConnectionError::Violation(v) => Some(v),
            _ => None,
        }
    }
}

impl fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionError::ServerClosed { last_error: None } => f.write_str("closed by server"),
            ConnectionError::ServerClosed {
                last_error: Some(error),
            } => write!(f, "closed by server after ERROR \"{error}\""),
            ConnectionError::ServerDisconnected(why) => write!(f, "server disconnected: {why}"),
            ConnectionError::IdleTimeout => f.write_str("server silent for the idle timeout"),
            ConnectionError::Violation(v) => write!(f, "protocol violation by server: {v}"),
            ConnectionError::HandshakeRefused(why) => write!(f, "handshake refused: {why}"),
            ConnectionError::HandshakeTimeout => f.write_str("handshake not answered in time"),
            ConnectionError::Transport(why) => f.write_str(why),
            ConnectionError::ClientClosed => f.write_str("the client closed"),
            ConnectionError::DeliveryRefused(why) => {
                write!(f, "acknowledged delivery refused by server: {why}")
            }
        }
    }
}

impl std::error::Error for ConnectionError {
    /// The violation's own source (its text is part of `Display`).
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectionError::Violation(v) => std::error::Error::source(v),
            _ => None,
        }
    }
}

/// Why a call failed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum CallError {
    /// The server answered with this ERROR frame (its reason, escaped and
    /// capped, is [`PeerText`] of its payload).
    Remote(Frame),
    /// The server answered with a frame of a kind that cannot answer.
    BadAnswer {
        /// The call's request id.
        id: u32,
        /// The kind of the frame that carried it.
        kind: Kind,
    },
    /// Written, then the transport ended before the answer: it may or may
    /// not have been processed.
    ConnectionLost(ConnectionError),
    /// Held past its queue deadline without a connection; not sent.
    NotConnected,
    /// The framing refused to encode it; not sent.
    Encode(Arc<CodecError>),
    /// The client closed or stopped before the call was written; not sent.
    NotSent,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Remote(error) => write!(f, "server error: {}", PeerText(error.payload())),
            CallError::BadAnswer { id, kind } => {
                write!(f, "call {id} answered with a {kind} frame")
            }
            CallError::ConnectionLost(e) => {
                write!(f, "connection dropped before the answer arrived ({e})")
            }
            CallError::NotConnected => f.write_str("not connected within the queue timeout"),
            CallError::Encode(_) => f.write_str("the call could not be encoded"),
            CallError::NotSent => f.write_str("the client stopped before the call was sent"),
        }
    }
}

impl std::error::Error for CallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CallError::ConnectionLost(e) => std::error::Error::source(e),
            CallError::Encode(e) => Some(&**e),
            _ => None,
        }
    }
}

/// What the driver must tell the application, or do.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<R> {
    /// The transport is ready for calls (WELCOME arrived, or there is no
    /// handshake).
    Connected,
    /// A frame the server pushed (no request id, or no handshake yet).
    Push(Frame),
    /// A call completed: hand the result to its caller.
    Answer(R, Result<Frame, CallError>),
    /// A frame whose request id matches no pending call was dropped (its
    /// caller gave up, or the server made the id up).
    LateAnswer {
        /// Its request id.
        id: u32,
        /// Its kind.
        kind: Kind,
    },
    /// A one-way frame the framing refused to encode was dropped.
    Unsendable(Arc<CodecError>),
    /// The transport ended: write what [`Connection::poll_transmit`] still
    /// gives (best effort: an ERROR naming a violation), then drop it.
    Lost(ConnectionError),
    /// The client is done: drop the transport (after a graceful close its
    /// bytes are written) and stop; [`Connection::take_unsent`] gives the
    /// one-way frames never written.
    Closed,
}

/// Where a [`Connection`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// No transport (before the first, or between two).
    Disconnected,
    /// A transport, waiting for WELCOME.
    Handshaking,
    /// Ready for calls.
    Open,
    /// DISCONNECT queued or about to be; waiting for the bytes to go.
    Closing,
    /// Done for good.
    Closed,
}

enum State {
    Disconnected,
    Handshaking {
        deadline: Option<Instant>,
        frames: usize,
        bytes: usize,
        early: Vec<Frame>,
    },
    Open,
    Closing {
        linger: Option<Instant>,
        disconnect_queued: bool,
    },
    Closed,
}

/// Work held by the connection, not yet encoded, in order.
enum Held<R> {
    /// A one-way frame; `counted`: taken while not connected (it counts
    /// against [`ConfigBuilder::held_sends`]).
    Send { frame: Frame, counted: bool },
    /// A call, failed with [`CallError::NotConnected`] at its deadline
    /// while not connected (`None`: never).
    Call {
        frame: Frame,
        caller: R,
        deadline: Option<Instant>,
        /// The deadline was given by the application (kept for ever), not
        /// computed from the queue timeout (cleared when a transport opens).
        given: bool,
    },
}

/// One client's protocol state across its successive transports. See the
/// [module documentation](self) for the rules it keeps.
pub struct Connection<R> {
    config: Config,
    state: State,
    proto: Protocol,
    /// Calls written on the current transport, by request id.
    calls: HashMap<u32, R>,
    /// The frames of the idempotent ones among them, to send again.
    replay: HashMap<u32, Frame>,
    next_id: u32,
    held: VecDeque<Held<R>>,
    /// `Held::Send`s with `counted` set.
    held_taken: usize,
    /// The client's own frames (HELLO, PONG, ERROR, HEARTBEAT), written
    /// before held work and regardless of the high-water mark (reading
    /// stops at twice the mark, which bounds them).
    own: VecDeque<Frame>,
    /// Wire bytes of `own` (counted by [`may_read`](Connection::may_read)).
    own_bytes: usize,
    /// One-way frames encoded on this transport, with the stream offset
    /// where each ends; given back to `held` if the transport drops first.
    unwritten: VecDeque<(u64, Frame)>,
    queued: u64,
    written: u64,
    /// The reason of the server's last uncorrelated ERROR on this transport.
    last_error: Option<String>,
    handles_gone: bool,
    events: VecDeque<Event<R>>,
    /// Acknowledged delivery's window, when on.
    acks: Option<Acks>,
}

/// One-way frames sent and not yet acknowledged, in order.
struct Acks {
    limits: AckWindow,
    window: VecDeque<Frame>,
    /// Wire bytes in `window`.
    bytes: usize,
    /// The sequence number of `window[0]` (numbers start at 1).
    base: u64,
    /// Frames of `window`, from the front, encoded on this transport.
    sent: usize,
    resume: Resume,
    /// Push recovery, when asked for.
    pushes: Option<Pushes>,
}

/// What the client knows of the server's numbered pushes.
#[derive(Debug, Default)]
struct Pushes {
    /// The highest push number received in this run.
    last: u64,
    /// The highest number told to the server (`PUSHED`).
    told: u64,
    /// This connection's server numbers pushes (its RESUMED said so).
    on: bool,
    /// The last RESUMED said `recovered`.
    recovered: bool,
    /// Pushes the server said were missed, over the run.
    missed: u64,
    /// RESUMED answers that said `fresh`, over the run.
    fresh: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// Not asked on this transport yet.
    Idle,
    /// RESUME sent with this request id.
    Waiting(u32),
    /// RESUMED arrived: frames of the window go out.
    Done,
}

impl Acks {
    fn full(&self) -> bool {
        self.window.len() >= self.limits.frames
            || (!self.window.is_empty() && self.bytes >= self.limits.bytes)
    }

    /// Forgets the frames up to `last` (acknowledged).
    fn acknowledge(&mut self, last: u64) {
        while self.base <= last {
            let Some(frame) = self.window.pop_front() else {
                break;
            };
            self.bytes = self.bytes.saturating_sub(frame.wire_len());
            self.sent = self.sent.saturating_sub(1);
            self.base += 1;
        }
    }
}

impl<R: Caller> fmt::Debug for Connection<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("phase", &self.phase())
            .field("calls", &self.calls.len())
            .field("held", &self.held.len())
            .field("pending_bytes", &self.pending_bytes())
            .finish_non_exhaustive()
    }
}

fn after(now: Instant, d: Option<Duration>) -> Option<Instant> {
    d.and_then(|d| now.checked_add(d))
}

impl<R: Caller> Connection<R> {
    /// A client without a transport yet, at `now`.
    pub fn new(config: Config, now: Instant) -> Self {
        let proto = Protocol::new(Role::Client, config.timers, config.binary, now);
        Connection {
            state: State::Disconnected,
            proto,
            calls: HashMap::new(),
            replay: HashMap::new(),
            next_id: HANDSHAKE_ID + 1,
            held: VecDeque::new(),
            held_taken: 0,
            own: VecDeque::new(),
            own_bytes: 0,
            unwritten: VecDeque::new(),
            queued: 0,
            written: 0,
            last_error: None,
            handles_gone: false,
            events: VecDeque::new(),
            acks: config.ack.map(|limits| Acks {
                limits,
                window: VecDeque::new(),
                bytes: 0,
                base: 1,
                sent: 0,
                resume: Resume::Idle,
                pushes: config.recover_pushes.then(Pushes::default),
            }),
            config,
        }
    }

    /// One-way frames kept until the server acknowledges them (sent or
    /// not); 0 without acknowledged delivery.
    pub fn unacknowledged(&self) -> usize {
        self.acks.as_ref().map_or(0, |a| a.window.len())
    }

    /// The highest sequence number the server acknowledged (0: none yet, or
    /// no acknowledged delivery).
    pub fn acknowledged(&self) -> u64 {
        self.acks.as_ref().map_or(0, |a| a.base - 1)
    }

    /// With push recovery: whether the server said, at the last RESUME,
    /// that it had kept this client id's pushes while it was away (false on
    /// a first connection, after the grace period, from a server without
    /// push recovery).
    pub fn recovered(&self) -> bool {
        self.pushes().is_some_and(|p| p.recovered)
    }

    /// With push recovery: pushes the server said were lost for this
    /// client id (accepted and dropped: at the end of the grace period, or
    /// with its place given to another client id; a push refused, its
    /// buffer full, was told to its pusher instead), over this run.
    pub fn missed_pushes(&self) -> u64 {
        self.pushes().map_or(0, |p| p.missed)
    }

    /// With push recovery: how many RESUMED answers said `fresh` (the
    /// server had nothing kept for this client id: a first connection, the
    /// grace period passed, a server that lost its store), over this run.
    /// Each one after the first connection is a point where pushes may
    /// have been lost without a count.
    pub fn fresh_resumes(&self) -> u64 {
        self.pushes().map_or(0, |p| p.fresh)
    }

    fn pushes(&self) -> Option<&Pushes> {
        self.acks.as_ref().and_then(|a| a.pushes.as_ref())
    }

    /// Where the connection is.
    pub fn phase(&self) -> Phase {
        match self.state {
            State::Disconnected => Phase::Disconnected,
            State::Handshaking { .. } => Phase::Handshaking,
            State::Open => Phase::Open,
            State::Closing { .. } => Phase::Closing,
            State::Closed => Phase::Closed,
        }
    }

    fn has_transport(&self) -> bool {
        matches!(
            self.state,
            State::Handshaking { .. } | State::Open | State::Closing { .. }
        )
    }

    /// Calls written on the current transport and not yet answered.
    pub fn pending_calls(&self) -> usize {
        self.calls.len()
    }

    /// Work held, not yet encoded (one-way frames and calls).
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Bytes encoded on the current transport and not yet written.
    pub fn pending_bytes(&self) -> usize {
        usize::try_from(self.queued.saturating_sub(self.written)).unwrap_or(usize::MAX)
    }

    /// A new transport is up at `now`: sends HELLO and waits for WELCOME
    /// until `handshake_deadline`, or is ready at once without a handshake.
    /// Ignored once closed or closing.
    pub fn handle_connected(&mut self, now: Instant, handshake_deadline: Option<Instant>) {
        if !matches!(self.state, State::Disconnected) {
            if self.has_transport() {
                // A second transport replaces the first: that one is lost.
                self.lose(ConnectionError::Transport("replaced".into()), now);
            }
            if !matches!(self.state, State::Disconnected) {
                return;
            }
        }
        self.clear_own();
        self.unwritten.clear();
        self.queued = 0;
        self.written = 0;
        self.next_id = HANDSHAKE_ID + 1;
        self.last_error = None;
        self.proto = Protocol::new(Role::Client, self.config.timers, self.config.binary, now);
        match &self.config.client_id {
            Some(id) if self.config.binary => {
                self.push_own(session::hello_frame(id).with_request_id(HANDSHAKE_ID));
                self.state = State::Handshaking {
                    deadline: handshake_deadline,
                    frames: 0,
                    bytes: 0,
                    early: Vec::new(),
                };
            }
            _ => self.open(now),
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = State::Open;
        // Timers from now: the handshake's wait is not the server's silence.
        self.proto = Protocol::new(Role::Client, self.config.timers, self.config.binary, now);
        // Held calls wait for nothing more: a queue deadline computed while
        // not connected no longer runs (a lost transport computes a new one).
        for held in &mut self.held {
            if let Held::Call {
                deadline,
                given: false,
                ..
            } = held
            {
                *deadline = None;
            }
        }
        if self.acks.is_some() {
            let id = self.allocate_id();
            if let Some(acks) = &mut self.acks {
                acks.resume = Resume::Waiting(id);
                acks.sent = 0;
                let resume = match &mut acks.pushes {
                    Some(pushes) => {
                        pushes.on = false;
                        pushes.told = pushes.last;
                        delivery::resume_frame_with_pushes(
                            acks.limits.epoch,
                            acks.base,
                            pushes.last,
                        )
                    }
                    None => delivery::resume_frame(acks.limits.epoch, acks.base),
                };
                self.push_own(resume.with_request_id(id));
            }
        }
        self.events.push_back(Event::Connected);
        self.check_orphaned(now);
    }

    /// The transport ended (end of stream, a read or write error): calls
    /// written on it fail, what it did not write is held for the next one.
    pub fn handle_connection_lost(&mut self, error: ConnectionError, now: Instant) {
        if self.has_transport() {
            self.lose(error, now);
        }
    }

    fn lose(&mut self, error: ConnectionError, now: Instant) {
        let closing = matches!(self.state, State::Closing { .. });
        self.state = State::Disconnected;
        if let Some(acks) = &mut self.acks {
            // Sent or not, kept until acknowledged: all again next time.
            acks.sent = 0;
            acks.resume = Resume::Idle;
        }
        let mut again = Vec::new();
        for (id, caller) in self.calls.drain() {
            match self.replay.remove(&id) {
                Some(frame) if !closing && !caller.is_abandoned() => {
                    again.push((id, caller, frame));
                }
                _ => self.events.push_back(Event::Answer(
                    caller,
                    Err(CallError::ConnectionLost(error.clone())),
                )),
            }
        }
        self.replay.clear();
        // Not all of their bytes went out: first on the next transport.
        for (_, frame) in self.unwritten.drain(..).rev() {
            self.held.push_front(Held::Send {
                frame,
                counted: false,
            });
        }
        // Idempotent calls written and not answered: again, in the order
        // they were written, before any held work (a new id each).
        again.sort_unstable_by_key(|(id, ..)| *id);
        for (_, caller, frame) in again.into_iter().rev() {
            self.held.push_front(Held::Call {
                frame,
                caller,
                deadline: None,
                given: false,
            });
        }
        let deadline = after(now, self.config.queue_timeout);
        for held in &mut self.held {
            if let Held::Call { deadline: d, .. } = held {
                if d.is_none() {
                    *d = deadline;
                }
            }
        }
        self.last_error = None;
        self.events.push_back(Event::Lost(error));
        if closing {
            self.stop();
        } else {
            self.check_orphaned(now);
        }
    }

    /// Queues a one-way frame (its request id removed).
    pub fn send(&mut self, mut frame: Frame, _now: Instant) {
        frame.set_request_id(None);
        if let Some(acks) = &mut self.acks {
            acks.bytes = acks.bytes.saturating_add(frame.wire_len());
            acks.window.push_back(frame);
            return;
        }
        let counted = !matches!(self.state, State::Open | State::Closing { .. });
        self.held_taken += usize::from(counted);
        self.held.push_back(Held::Send { frame, counted });
    }

    /// Queues a call. `deadline`: when it fails with
    /// [`CallError::NotConnected`] if still held without a connection
    /// (`None`: the queue timeout from when the connection is missed).
    pub fn call(&mut self, frame: Frame, caller: R, deadline: Option<Instant>, now: Instant) {
        if caller.is_abandoned() {
            return;
        }
        match self.state {
            State::Closing { .. } | State::Closed => {
                self.events
                    .push_back(Event::Answer(caller, Err(CallError::NotSent)));
                return;
            }
            State::Open => {}
            State::Disconnected | State::Handshaking { .. } => {
                let given = deadline.is_some();
                let deadline = deadline.or_else(|| after(now, self.config.queue_timeout));
                self.held.push_back(Held::Call {
                    frame,
                    caller,
                    deadline,
                    given,
                });
                return;
            }
        }
        self.held.push_back(Held::Call {
            frame,
            caller,
            given: deadline.is_some(),
            deadline,
        });
    }

    /// Whether the driver should take more work off the application's
    /// queue: while open, when nothing is held and the write queue is below
    /// the high-water mark; while not connected, until
    /// [`ConfigBuilder::held_sends`] one-way frames are held; never once closing
    /// or after every handle is gone.
    pub fn accepts_work(&self) -> bool {
        if self.handles_gone || self.acks.as_ref().is_some_and(Acks::full) {
            return false;
        }
        match self.state {
            State::Open => self.held.is_empty() && self.pending_bytes() < self.config.high_water,
            State::Disconnected | State::Handshaking { .. } => {
                self.held_taken < self.config.held_sends
            }
            State::Closing { .. } | State::Closed => false,
        }
    }

    /// Whether the driver should read: the bytes the client owes (encoded
    /// and not written, plus its own replies not encoded yet: PONGs,
    /// ERRORs) are below twice the high-water mark, and fewer than
    /// [`ConfigBuilder::max_events`] events wait in [`poll_event`](Connection::poll_event).
    /// A peer that does not read, or a driver that does not drain events,
    /// stops being read: reading never grows either queue past its bound
    /// (by more than the one frame that crossed it).
    pub fn may_read(&self) -> bool {
        self.has_transport() && self.owes_room() && self.events.len() < self.config.max_events
    }

    /// The write side's bound for reading: bytes owed below twice the
    /// high-water mark.
    fn owes_room(&self) -> bool {
        self.pending_bytes().saturating_add(self.own_bytes)
            < self.config.high_water.saturating_mul(2)
    }

    fn push_own(&mut self, frame: Frame) {
        self.own_bytes = self.own_bytes.saturating_add(frame.wire_len());
        self.own.push_back(frame);
    }

    fn clear_own(&mut self) {
        self.own.clear();
        self.own_bytes = 0;
    }

    fn update_reading(&mut self, now: Instant) {
        // Blocked on the peer only when the bytes it does not read stop
        // reading; events waiting are the driver's to drain.
        let reading = if self.owes_room() {
            Reading::Open
        } else {
            Reading::BlockedOnPeer
        };
        self.proto.set_reading(reading, now);
    }

    /// Encodes what is due with `encode` (which appends the frame to the
    /// transport's write queue and returns the bytes it took): the client's
    /// own frames, then held work up to the high-water mark while open (all
    /// of it, then DISCONNECT, while closing). Also call it after
    /// [`Event::Lost`], before dropping the transport, for a last ERROR.
    pub fn poll_transmit<E>(&mut self, now: Instant, mut encode: E)
    where
        E: FnMut(Frame) -> Result<usize, CodecError>,
    {
        self.tell_pushes();
        while let Some(frame) = self.own.pop_front() {
            self.own_bytes = self.own_bytes.saturating_sub(frame.wire_len());
            match encode(frame) {
                Ok(n) => self.queued += n as u64,
                Err(e) => self.events.push_back(Event::Unsendable(Arc::new(e))),
            }
        }
        if let State::Open = self.state {
            while self.pending_bytes() < self.config.high_water {
                let Some(held) = self.held.pop_front() else {
                    break;
                };
                self.transmit(held, &mut encode);
            }
            self.transmit_window(self.config.high_water, &mut encode);
            // Every handle gone and the last held frame out: close now.
            self.check_orphaned(now);
        }
        match self.state {
            State::Open => {}
            State::Closing {
                disconnect_queued: false,
                linger,
            } => {
                while let Some(held) = self.held.pop_front() {
                    self.transmit(held, &mut encode);
                }
                self.transmit_window(usize::MAX, &mut encode);
                if self.unacknowledged() > 0 {
                    // DISCONNECT once the server has taken every frame (or
                    // at the close linger).
                    self.update_reading(now);
                    return;
                }
                match encode(Frame::disconnect("client closed")) {
                    Ok(n) => self.queued += n as u64,
                    Err(e) => self.events.push_back(Event::Unsendable(Arc::new(e))),
                }
                self.state = State::Closing {
                    linger,
                    disconnect_queued: true,
                };
            }
            _ => return,
        }
        self.update_reading(now);
    }

    fn transmit<E>(&mut self, held: Held<R>, encode: &mut E)
    where
        E: FnMut(Frame) -> Result<usize, CodecError>,
    {
        match held {
            Held::Send { frame, counted } => {
                self.held_taken -= usize::from(counted);
                match encode(frame.clone()) {
                    Ok(n) => {
                        self.queued += n as u64;
                        self.unwritten.push_back((self.queued, frame));
                    }
                    Err(e) => self.events.push_back(Event::Unsendable(Arc::new(e))),
                }
            }
            Held::Call {
                mut frame, caller, ..
            } => {
                if caller.is_abandoned() {
                    return;
                }
                let id = self.allocate_id();
                frame.set_request_id(Some(id));
                let keep = caller.is_idempotent().then(|| frame.clone());
                match encode(frame) {
                    Ok(n) => {
                        self.queued += n as u64;
                        self.calls.insert(id, caller);
                        if let Some(frame) = keep {
                            self.replay.insert(id, frame);
                        }
                    }
                    Err(e) => self
                        .events
                        .push_back(Event::Answer(caller, Err(CallError::Encode(Arc::new(e))))),
                }
            }
        }
    }

    /// Encodes frames of the acknowledged window not sent on this transport
    /// yet, once RESUMED came, while the write queue is below `up_to`.
    fn transmit_window<E>(&mut self, up_to: usize, encode: &mut E)
    where
        E: FnMut(Frame) -> Result<usize, CodecError>,
    {
        loop {
            let pending = self.pending_bytes();
            let Some(acks) = &mut self.acks else {
                return;
            };
            if acks.resume != Resume::Done || pending >= up_to {
                return;
            }
            let Some(frame) = acks.window.get(acks.sent) else {
                return;
            };
            match encode(frame.clone()) {
                Ok(n) => {
                    self.queued += n as u64;
                    acks.sent += 1;
                }
                Err(e) => {
                    // Never on the wire: it takes no number, the frames
                    // after it move up.
                    if let Some(frame) = acks.window.remove(acks.sent) {
                        acks.bytes = acks.bytes.saturating_sub(frame.wire_len());
                    }
                    self.events.push_back(Event::Unsendable(Arc::new(e)));
                }
            }
        }
    }

    /// The next free request id: never the handshake's, never one pending.
    /// At most `calls.len() + 1` tries (fewer ids are pending than exist).
    fn allocate_id(&mut self) -> u32 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1).max(HANDSHAKE_ID + 1);
            if !self.calls.contains_key(&id) {
                return id;
            }
        }
    }

    /// `bytes` more of what was encoded were written at `now`.
    pub fn handle_written(&mut self, bytes: usize, now: Instant) {
        if !self.has_transport() || bytes == 0 {
            return;
        }
        self.written = self.written.saturating_add(bytes as u64).min(self.queued);
        while self
            .unwritten
            .front()
            .is_some_and(|(end, _)| *end <= self.written)
        {
            self.unwritten.pop_front();
        }
        self.proto.on_sent(now);
        self.update_reading(now);
    }

    /// Everything encoded was written and flushed at `now`: a graceful
    /// close ends here.
    pub fn handle_flushed(&mut self, now: Instant) {
        let _ = now;
        if matches!(
            self.state,
            State::Closing {
                disconnect_queued: true,
                ..
            }
        ) && self.pending_bytes() == 0
        {
            self.stop();
        }
    }

    /// A frame arrived at `now`.
    pub fn handle_frame(&mut self, frame: Frame, now: Instant) {
        self.take_frame(frame, now);
        if self.has_transport() {
            self.update_reading(now);
        }
    }

    fn take_frame(&mut self, frame: Frame, now: Instant) {
        match &mut self.state {
            State::Handshaking {
                frames,
                bytes,
                early,
                ..
            } => {
                match (frame.kind(), frame.request_id()) {
                    (Kind::CONTROL, Some(HANDSHAKE_ID))
                        if frame.payload().starts_with(WELCOME_PREFIX.as_bytes()) =>
                    {
                        let early = std::mem::take(early);
                        self.open(now);
                        // The same session rules as any frame after WELCOME:
                        // one with a request id is a late answer (no call
                        // was written yet), flags this session does not run
                        // are a violation.
                        for frame in early {
                            if !matches!(self.state, State::Open) {
                                break;
                            }
                            self.on_frame(frame, now);
                        }
                        return;
                    }
                    (Kind::ERROR, Some(HANDSHAKE_ID)) | (Kind::ERROR | Kind::DISCONNECT, None) => {
                        let why = PeerText(frame.payload()).to_string();
                        self.lose(ConnectionError::HandshakeRefused(why), now);
                        return;
                    }
                    _ => {}
                }
                // Everything else counts against the bound, kept or not.
                *frames += 1;
                *bytes = bytes.saturating_add(frame.wire_len());
                if *frames > self.config.early_frames || *bytes > self.config.early_bytes {
                    let violation = Violation::TooManyBeforeWelcome {
                        frames: self.config.early_frames,
                        bytes: self.config.early_bytes,
                    };
                    self.lose(ConnectionError::Violation(violation), now);
                    return;
                }
                if !matches!(frame.kind(), Kind::HEARTBEAT | Kind::PONG | Kind::PING) {
                    early.push(frame);
                }
            }
            State::Open | State::Closing { .. } => self.on_frame(frame, now),
            // From a transport already given up: nothing to do with it.
            State::Disconnected | State::Closed => {}
        }
    }

    fn on_frame(&mut self, frame: Frame, now: Instant) {
        if let Some(acks) = &self.acks {
            let plain = frame.flags().without(Flags::CORRELATED).is_empty();
            match (acks.resume, frame.request_id()) {
                (Resume::Waiting(id), Some(rid)) if rid == id => {
                    return self.on_resumed(frame, now);
                }
                (_, None) if plain && frame.kind() == delivery::ACK => {
                    return self.on_ack(frame, now);
                }
                (_, None) if plain && frame.kind() == delivery::PUSH => {
                    return self.on_push(frame, now);
                }
                (Resume::Done, None) if plain && frame.kind() == Kind::DISCONNECT => {
                    self.on_shutdown_last(&frame);
                }
                _ => {}
            }
        }
        let kind = frame.kind();
        let request_id = frame.request_id();
        // One lookup per answer: the call is taken out at once.
        let call = request_id.and_then(|id| self.calls.remove(&id).map(|c| (id, c)));
        let replayed = match (&call, self.replay.is_empty()) {
            (Some((id, _)), false) => self.replay.remove(id).map(|f| (*id, f)),
            _ => None,
        };
        match self.proto.on_frame(frame, now) {
            Inbound::Deliver(frame) | Inbound::Pong(frame) => match (call, request_id) {
                (Some((_, caller)), _) => self.answer(caller, Ok(frame), now),
                (None, _) if kind == Kind::PONG => {}
                // Pushes are uncorrelated: a request id that matches no
                // pending call is a late answer to an abandoned call.
                (None, Some(id)) => self.events.push_back(Event::LateAnswer { id, kind }),
                (None, None) => self.events.push_back(Event::Push(frame)),
            },
            Inbound::PeerError(frame) => {
                match (call, request_id) {
                    (Some((_, caller)), _) => {
                        self.answer(caller, Err(CallError::Remote(frame)), now)
                    }
                    (None, Some(id)) => self.events.push_back(Event::LateAnswer { id, kind }),
                    (None, None) => {
                        // Kept to explain a close that may follow.
                        self.last_error = Some(PeerText(frame.payload()).to_string());
                        self.events.push_back(Event::Push(frame));
                    }
                }
            }
            // Any other frame carrying the id of a pending call is that
            // call's answer, of a kind that cannot answer: the call fails
            // instead of waiting for ever, and the frame is not acted on.
            Inbound::Reply(_) | Inbound::Nothing | Inbound::Hello { .. } if call.is_some() => {
                if let Some((id, caller)) = call {
                    self.answer(caller, Err(CallError::BadAnswer { id, kind }), now);
                }
            }
            Inbound::Reply(frame) => self.push_own(frame),
            Inbound::PeerDisconnect(why) => {
                self.put_back(call, replayed);
                self.lose(ConnectionError::ServerDisconnected(why), now);
            }
            Inbound::Violation(reason) => {
                self.put_back(call, replayed);
                self.push_own(Frame::error(reason.clone()));
                self.lose(ConnectionError::Violation(Violation::Rule(reason)), now);
            }
            Inbound::Hello { .. } | Inbound::Nothing => {}
        }
    }

    /// The answer to RESUME: the window's frames up to its number were
    /// taken; the rest go out now, numbered from the next.
    fn on_resumed(&mut self, frame: Frame, now: Instant) {
        // Activity, as any frame (a HEARTBEAT's classification).
        self.proto.on_frame(Frame::heartbeat(), now);
        let resumed = match frame.kind() {
            Kind::CONTROL => delivery::parse_resumed_with_pushes(frame.payload()),
            _ => None,
        };
        let Some(acks) = &mut self.acks else {
            return;
        };
        match resumed {
            Some((last, answer)) if last < acks.base + acks.window.len() as u64 => {
                acks.acknowledge(last);
                acks.resume = Resume::Done;
                acks.sent = 0;
                if let Some(pushes) = &mut acks.pushes {
                    let (on, recovered, missed) = match answer {
                        Some(delivery::PushResume::Recovered { missed }) => (true, true, missed),
                        Some(delivery::PushResume::Fresh { missed }) => (true, false, missed),
                        None => (false, false, 0),
                    };
                    pushes.on = on;
                    pushes.recovered = recovered;
                    pushes.missed = pushes.missed.saturating_add(missed);
                    if on && !recovered {
                        pushes.fresh = pushes.fresh.saturating_add(1);
                    }
                }
            }
            Some((last, _)) => {
                let rule = format!(
                    "RESUMED {last} names frames never sent (next is {})",
                    acks.base + acks.window.len() as u64
                );
                self.push_own(Frame::error(rule.clone()));
                self.lose(ConnectionError::Violation(Violation::Rule(rule)), now);
            }
            None => {
                let why = PeerText(frame.payload()).to_string();
                self.lose(ConnectionError::DeliveryRefused(why), now);
            }
        }
    }

    /// DISCONNECT `server shutdown; last <n>`: the server took the frames
    /// up to `n` and refused the others (they go to the next connection).
    /// A number beyond the frames sent is not taken as an acknowledgement
    /// (the connection ends anyway).
    fn on_shutdown_last(&mut self, frame: &Frame) {
        let Some(last) = delivery::parse_shutdown_last(frame.payload()) else {
            return;
        };
        if let Some(acks) = &mut self.acks {
            let sent_through = acks.base + acks.sent as u64 - 1;
            if last <= sent_through {
                acks.acknowledge(last);
            }
        }
    }

    /// A numbered push: handed on unless the client has it already.
    fn on_push(&mut self, frame: Frame, now: Instant) {
        self.proto.on_frame(Frame::heartbeat(), now);
        let pushes = self
            .acks
            .as_mut()
            .filter(|a| a.resume == Resume::Done)
            .and_then(|a| a.pushes.as_mut())
            .filter(|p| p.on);
        let rule = match (pushes, delivery::parse_push(frame.payload())) {
            (Some(pushes), Some((seq, carried))) => {
                if seq > pushes.last {
                    pushes.last = seq;
                    self.events.push_back(Event::Push(carried));
                }
                return;
            }
            (None, _) => "PUSH without push recovery".to_owned(),
            (Some(_), None) => "PUSH payload is not a numbered push".to_owned(),
        };
        self.push_own(Frame::error(rule.clone()));
        self.lose(ConnectionError::Violation(Violation::Rule(rule)), now);
    }

    /// Tells the server the pushes received since it was last told: one
    /// `PUSHED` per transmit round, however many came.
    fn tell_pushes(&mut self) {
        if !matches!(self.state, State::Open | State::Closing { .. }) {
            return;
        }
        let Some(pushes) = self.acks.as_mut().and_then(|a| a.pushes.as_mut()) else {
            return;
        };
        if pushes.on && pushes.last > pushes.told {
            pushes.told = pushes.last;
            let frame = delivery::pushed_frame(pushes.last);
            self.push_own(frame);
        }
    }

    /// An ACK: every frame up to its number was handed to the application.
    fn on_ack(&mut self, frame: Frame, now: Instant) {
        self.proto.on_frame(Frame::heartbeat(), now);
        let Some(acks) = &mut self.acks else {
            return;
        };
        let sent_through = acks.base + acks.sent as u64 - 1;
        let rule = match delivery::parse_ack(&frame) {
            Some(_) if acks.resume != Resume::Done => "ACK before RESUMED".to_owned(),
            Some(last) if last <= sent_through => {
                acks.acknowledge(last);
                self.check_orphaned(now);
                return;
            }
            Some(last) => format!("ACK {last} for frames not sent (sent up to {sent_through})"),
            None => "ACK payload is not 8 bytes".to_owned(),
        };
        self.push_own(Frame::error(rule.clone()));
        self.lose(ConnectionError::Violation(Violation::Rule(rule)), now);
    }

    fn answer(&mut self, caller: R, result: Result<Frame, CallError>, now: Instant) {
        self.events.push_back(Event::Answer(caller, result));
        self.check_orphaned(now);
    }

    /// A call taken out for a frame that ends the transport instead of
    /// answering it goes back, to fail with the others.
    fn put_back(&mut self, call: Option<(u32, R)>, replayed: Option<(u32, Frame)>) {
        if let Some((id, caller)) = call {
            self.calls.insert(id, caller);
        }
        if let Some((id, frame)) = replayed {
            self.replay.insert(id, frame);
        }
    }

    /// The server closed the connection between frames (a clean end of
    /// stream): the transport is lost, with the server's last uncorrelated
    /// ERROR as its reason if one came.
    pub fn handle_end_of_stream(&mut self, now: Instant) {
        if !self.has_transport() {
            return;
        }
        let last_error = self.last_error.take();
        self.lose(ConnectionError::ServerClosed { last_error }, now);
    }

    /// The server's bytes could not be decoded: an ERROR naming why is
    /// queued (best effort) and the transport is lost.
    pub fn handle_decode_error(&mut self, error: CodecError, now: Instant) {
        if !self.has_transport() {
            return;
        }
        self.push_own(Frame::error(error.to_string()));
        let violation = Violation::Codec(Arc::new(error));
        self.lose(ConnectionError::Violation(violation), now);
    }

    /// When [`handle_timeout`](Connection::handle_timeout) must next be
    /// called; `None` when no timer runs.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let held = || {
            self.held
                .iter()
                .filter_map(|h| match h {
                    Held::Call { deadline, .. } => *deadline,
                    Held::Send { .. } => None,
                })
                .min()
        };
        match &self.state {
            State::Disconnected => held(),
            State::Handshaking { deadline, .. } => min(*deadline, held()),
            State::Open => self.proto.next_deadline(),
            State::Closing { linger, .. } => min(self.proto.next_deadline(), *linger),
            State::Closed => None,
        }
    }

    /// Runs the timers due at `now`: a HEARTBEAT, the idle timeout, the
    /// handshake deadline, held calls past their queue deadline, the close
    /// linger.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.state {
            State::Disconnected => self.expire_held(now),
            State::Handshaking { deadline, .. } => {
                if deadline.is_some_and(|d| d <= now) {
                    self.lose(ConnectionError::HandshakeTimeout, now);
                }
                self.expire_held(now);
            }
            State::Open | State::Closing { .. } => {
                if let State::Closing {
                    linger: Some(linger),
                    ..
                } = self.state
                {
                    if linger <= now {
                        // Queued bytes not written in time: dropped.
                        self.stop();
                        return;
                    }
                }
                match self.proto.on_timeout(now) {
                    Some(Expired::Heartbeat) => self.push_own(Frame::heartbeat()),
                    Some(Expired::Idle) => self.lose(ConnectionError::IdleTimeout, now),
                    Some(_) | None => {}
                }
            }
            State::Closed => {}
        }
    }

    /// Fails the held calls whose queue deadline has passed (one pass,
    /// order kept).
    fn expire_held(&mut self, now: Instant) {
        let events = &mut self.events;
        let mut kept = VecDeque::with_capacity(self.held.len());
        for held in self.held.drain(..) {
            match held {
                Held::Call {
                    caller,
                    deadline: Some(d),
                    ..
                } if d <= now => {
                    events.push_back(Event::Answer(caller, Err(CallError::NotConnected)));
                }
                held => kept.push_back(held),
            }
        }
        self.held = kept;
        self.check_orphaned(now);
    }

    /// Some callers may have given up: forgets every call (written or held)
    /// whose caller is gone, so abandoned calls never hold a place.
    pub fn handle_abandoned(&mut self, now: Instant) {
        self.calls.retain(|_, caller| !caller.is_abandoned());
        if !self.replay.is_empty() {
            let calls = &self.calls;
            self.replay.retain(|id, _| calls.contains_key(id));
        }
        self.held.retain(|held| match held {
            Held::Call { caller, .. } => !caller.is_abandoned(),
            Held::Send { .. } => true,
        });
        self.check_orphaned(now);
    }

    /// Every application handle is gone: no more work will come. The client
    /// closes once nothing is left to answer (while connected: after the
    /// held frames are written; while not: at once, unless a call is held).
    pub fn handle_handles_gone(&mut self, now: Instant) {
        self.handles_gone = true;
        self.check_orphaned(now);
    }

    fn check_orphaned(&mut self, now: Instant) {
        if !self.handles_gone {
            return;
        }
        match self.state {
            State::Open if self.calls.is_empty() && self.held.is_empty() => self.close(now),
            State::Disconnected | State::Handshaking { .. } => {
                let waiting = self.held.iter().any(|h| match h {
                    Held::Call { caller, .. } => !caller.is_abandoned(),
                    Held::Send { .. } => false,
                });
                if !waiting {
                    self.stop();
                }
            }
            _ => {}
        }
    }

    /// Closes gracefully: while open, calls not written fail with
    /// [`CallError::NotSent`], held one-way frames are written, then
    /// DISCONNECT, within the close linger; calls written keep their
    /// chance of an answer until the close ends. While not connected, stops
    /// at once ([`abort`](Connection::abort)).
    pub fn close(&mut self, now: Instant) {
        match self.state {
            State::Open => {
                self.fail_held_calls();
                self.state = State::Closing {
                    linger: after(now, self.config.close_linger),
                    disconnect_queued: false,
                };
            }
            State::Disconnected | State::Handshaking { .. } => self.stop(),
            State::Closing { .. } | State::Closed => {}
        }
    }

    /// Stops for good at once: calls written fail with
    /// [`CallError::ConnectionLost`], calls held with
    /// [`CallError::NotSent`]; one-way frames held stay for
    /// [`take_unsent`](Connection::take_unsent).
    pub fn abort(&mut self, now: Instant) {
        let _ = now;
        self.stop();
    }

    fn fail_held_calls(&mut self) {
        let mut kept = VecDeque::with_capacity(self.held.len());
        for held in self.held.drain(..) {
            match held {
                Held::Call { caller, .. } => {
                    self.events
                        .push_back(Event::Answer(caller, Err(CallError::NotSent)));
                }
                send => kept.push_back(send),
            }
        }
        self.held = kept;
    }

    fn stop(&mut self) {
        if matches!(self.state, State::Closed) {
            return;
        }
        self.state = State::Closed;
        self.replay.clear();
        for (_, caller) in self.calls.drain() {
            self.events.push_back(Event::Answer(
                caller,
                Err(CallError::ConnectionLost(ConnectionError::ClientClosed)),
            ));
        }
        // Bytes not written belong to a transport being dropped.
        for (_, frame) in self.unwritten.drain(..).rev() {
            self.held.push_front(Held::Send {
                frame,
                counted: false,
            });
        }
        self.fail_held_calls();
        self.clear_own();
        self.events.push_back(Event::Closed);
    }

    /// One-way frames never written, once closed (each returned once).
    pub fn take_unsent(&mut self) -> Vec<Frame> {
        if !matches!(self.state, State::Closed) {
            return Vec::new();
        }
        self.held_taken = 0;
        let window = self.acks.as_mut().map(|a| {
            a.bytes = 0;
            a.sent = 0;
            std::mem::take(&mut a.window)
        });
        window
            .into_iter()
            .flatten()
            .chain(self.held.drain(..).filter_map(|held| match held {
                Held::Send { frame, .. } => Some(frame),
                Held::Call { .. } => None,
            }))
            .collect()
    }

    /// What the driver must do or tell next.
    pub fn poll_event(&mut self) -> Option<Event<R>> {
        self.events.pop_front()
    }
}

fn min(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Waiting;

    impl Caller for Waiting {
        fn is_abandoned(&self) -> bool {
            false
        }
    }

    #[test]
    fn request_ids_wrap_around_past_the_handshake_id_and_skip_pending_ones() {
        let now = Instant::now();
        let mut conn = Connection::<Waiting>::new(Config::default(), now);
        conn.handle_connected(now, None);
        conn.calls.insert(u32::MAX, Waiting);
        conn.calls.insert(1, Waiting);
        conn.next_id = u32::MAX - 1;
        assert_eq!(conn.allocate_id(), u32::MAX - 1);
        // u32::MAX is pending, 0 is the handshake's, 1 is pending.
        assert_eq!(conn.allocate_id(), 2);
        assert_eq!(conn.allocate_id(), 3);
    }
}
