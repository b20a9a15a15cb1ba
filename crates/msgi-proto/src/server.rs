//! The server side of one connection as a state machine without I/O.
//!
//! [`Connection`] holds every rule a server session keeps beyond the codec:
//! the handshake and timers (through [`Protocol`]), the close phases
//! ([`Phase`]), exactly one answer per request, the requests in flight
//! (count and payload bytes), when to stop reading and why, and how each
//! kind of close ends. It never touches a socket, a clock or a task: a
//! runtime (msgi's session driver, a fuzzer, a test) feeds it inputs and
//! acts on its outputs, in quinn-proto's manner.
//!
//! # Driving it
//!
//! Inputs, each with the current time where time matters:
//! - a frame read from the peer, only through a [`ReadPermit`] from
//!   [`Connection::poll_read`]: the machine decides when to read, so a
//!   runtime cannot hand it more than it can hold;
//! - [`Connection::handle_answer`]: a request's result, with the request's
//!   [`Token`];
//! - [`Connection::handle_close`] (the runtime closes: gracefully or at
//!   once), [`Connection::handle_peer_closed`] (end of stream),
//!   [`Connection::handle_peer_reset`] (the transport failed),
//!   [`Connection::handle_decode_error`], [`Connection::handle_service_failed`];
//! - [`Connection::handle_timeout`] once [`Connection::poll_timeout`] has passed;
//! - [`Connection::handle_written`] (bytes went out),
//!   [`Connection::handle_pushes_done`] (the runtime writes no more pushes: the
//!   farewell may go), [`Connection::handle_write_closed`] (the write side is shut).
//!
//! Outputs: [`Connection::poll_transmit`] (frames to write, in order),
//! [`Connection::poll_request`] (a request for the service, with its token:
//! take it when the service is ready), [`Connection::poll_event`] (handshake,
//! peer errors, closing, closed), [`Connection::poll_timeout`] and
//! [`Connection::phase`] (what the runtime's I/O should do).
//!
//! A runtime drains `poll_transmit` and `poll_event` after each input. The
//! machine holds one pending request or event and a transmit queue bounded
//! by the requests it has let in: at most `max_concurrent_requests`
//! answers, plus one reply to the last frame read, one HEARTBEAT (only when
//! nothing else waits to be sent), the WELCOME and one closing frame. While
//! a frame waits to be written or a request or event to be taken,
//! [`Connection::poll_read`] gives no permit.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//! use msgi_proto::server::{Close, Config, Connection, Phase};
//! use msgi_proto::session::Timers;
//! use msgi_proto::Frame;
//!
//! let timers = Timers { idle_timeout: None, heartbeat_interval: None, handshake_timeout: None };
//! let config = Config::new(timers, 64, 4 << 20, Duration::from_secs(5), 64 << 10)?;
//! let now = Instant::now();
//! let mut conn = Connection::new(Arc::new(config), true, now);
//!
//! // A request arrives (the runtime's write queue is empty) ...
//! if let Some(permit) = conn.poll_read(0, now) {
//!     permit.handle_frame(Frame::data("hi").with_request_id(1), now);
//! }
//! // ... the service is ready and takes it ...
//! let request = conn.poll_request().expect("a request");
//! // ... the runtime closes while it runs: no farewell before the answer.
//! conn.handle_close(Close::Graceful, now);
//! assert!(!conn.answered_all());
//! conn.handle_answer(request.token, Ok::<_, &str>(Some(Frame::data("hello"))));
//! assert_eq!(conn.poll_transmit(), Some(Frame::data("hello").with_request_id(1)));
//! assert!(conn.answered_all());
//! conn.handle_pushes_done(|| "server shutdown".into());
//! assert_eq!(conn.poll_transmit(), Some(Frame::disconnect("server shutdown")));
//! assert_eq!(conn.phase(), Phase::Flushing);
//! # Ok::<(), msgi_proto::ConfigError>(())
//! ```
//!
//! # Exactly one answer
//!
//! Each request the service gets comes with a [`Token`] that is not `Clone`:
//! [`Connection::handle_answer`] consumes it, so the type makes a second
//! answer impossible. The machine counts the tokens out
//! ([`Connection::outstanding`]). A graceful close answers every one before
//! its farewell; a close that cannot wait (a protocol violation, a timeout,
//! the drain deadline, a failed service or transport) reports how many it
//! cut ([`Closed::unanswered`]), and an answer arriving after that is
//! dropped: the peer never sees an answer after the connection's last frame.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::codec::CodecError;
use crate::config::ConfigError;
use crate::frame::{Frame, Kind};
use crate::session::{Expired, Inbound, Protocol, Reading, Role, Timers, WELCOME_PREFIX};

/// How long a closing connection keeps reading (and discarding) after its
/// write side is shut, waiting for the peer to close first. Closing with
/// unread input makes the kernel send a reset, which can destroy the last
/// frame before the peer reads it. The drain deadline bounds it too.
pub const LINGER: Duration = Duration::from_secs(1);

/// A server connection's settings; one copy shared by all of a server's
/// connections. Made only through [`Config::new`], which refuses values
/// that would stall a connection (it would never read and never time out).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Config {
    timers: Timers,
    max_concurrent_requests: usize,
    max_concurrent_request_bytes: usize,
    drain_timeout: Duration,
    high_water: usize,
}

impl Config {
    /// Checks and makes the settings:
    /// - `timers`: the heartbeat, idle and handshake timers;
    /// - `max_concurrent_requests`: requests in the service (or waiting for
    ///   it) at which the connection stops reading (`1..=u32::MAX`);
    /// - `max_concurrent_request_bytes`: payload bytes (as decoded: after
    ///   decompression) of those requests at or above which it stops
    ///   reading (at least 1);
    /// - `drain_timeout`: how long a close may take, from its start to its end;
    /// - `high_water`: queued output bytes at or above which it stops
    ///   reading requests and taking pushes until the peer has read some
    ///   (at least 1).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first setting refused: a zero limit
    /// (the connection would never read a frame, so not even the idle
    /// timer would end it) or more concurrent requests than it counts.
    pub fn new(
        timers: Timers,
        max_concurrent_requests: usize,
        max_concurrent_request_bytes: usize,
        drain_timeout: Duration,
        high_water: usize,
    ) -> Result<Config, ConfigError> {
        for (setting, n) in [
            ("max_concurrent_requests", max_concurrent_requests),
            ("max_concurrent_request_bytes", max_concurrent_request_bytes),
            ("high_water", high_water),
        ] {
            if n == 0 {
                return Err(ConfigError::new(setting, "must be at least 1"));
            }
        }
        // `Connection` counts the requests in flight in 32 bits.
        if u32::try_from(max_concurrent_requests).is_err() {
            return Err(ConfigError::new(
                "max_concurrent_requests",
                format_args!("must be at most {}", u32::MAX),
            ));
        }
        Ok(Config {
            timers,
            max_concurrent_requests,
            max_concurrent_request_bytes,
            drain_timeout,
            high_water,
        })
    }

    /// The heartbeat, idle and handshake timers.
    #[inline]
    pub fn timers(&self) -> Timers {
        self.timers
    }

    /// Requests in the service (or waiting for it) at which the connection
    /// stops reading.
    #[inline]
    pub fn max_concurrent_requests(&self) -> usize {
        self.max_concurrent_requests
    }

    /// Payload bytes (as decoded) of the requests in the service at or
    /// above which the connection stops reading.
    #[inline]
    pub fn max_concurrent_request_bytes(&self) -> usize {
        self.max_concurrent_request_bytes
    }

    /// How long a close may take, from its start to its end.
    #[inline]
    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout
    }

    /// Queued output bytes at or above which the connection stops reading
    /// requests and taking pushes.
    #[inline]
    pub fn high_water(&self) -> usize {
        self.high_water
    }
}

/// Why a connection closed (or began closing), as plain data: the runtime
/// maps it to its own reason type.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cause {
    /// The runtime asked ([`Connection::handle_close`]); it knows why.
    Local,
    /// The peer sent DISCONNECT with this reason (escaped and capped: see
    /// [`PeerText`](crate::text::PeerText)).
    PeerDisconnect(String),
    /// The peer closed the connection between frames.
    PeerClosed,
    /// The transport failed, or closed inside a frame
    /// ([`UnexpectedEof`](std::io::ErrorKind::UnexpectedEof)).
    PeerReset(std::io::ErrorKind),
    /// Nothing was received for the idle timeout.
    IdleTimeout,
    /// No first frame within the handshake timeout.
    HandshakeTimeout,
    /// The peer broke the protocol (or the framing): what kind of rule,
    /// and the text it was told in an ERROR.
    ProtocolViolation(Violation, String),
    /// The service failed (`poll_ready` returned an error).
    ServiceFailed(String),
}

/// The kind of protocol rule a peer broke
/// ([`Cause::ProtocolViolation`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Violation {
    /// Bytes that are not a frame: bad magic, a length below the header.
    Framing,
    /// A frame (or text line) over the maximum size.
    TooLarge,
    /// A wire transform refused the frame (decompression, decryption,
    /// authentication).
    Transform,
    /// A well-formed frame the session rules refuse (unsupported flags).
    Frame,
}

impl Violation {
    /// A bounded, metrics-safe label.
    pub fn label(self) -> &'static str {
        match self {
            Violation::Framing => "framing",
            Violation::TooLarge => "too_large",
            Violation::Transform => "transform",
            Violation::Frame => "frame",
        }
    }

    /// The kind of a decoding error.
    pub fn of(e: &CodecError) -> Violation {
        use CodecError as E;
        match e {
            E::FrameTooLarge { .. } | E::LineTooLong { .. } => Violation::TooLarge,
            E::Transform(_) => Violation::Transform,
            _ => Violation::Framing,
        }
    }
}

/// How the runtime closes a connection ([`Connection::handle_close`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Close {
    /// Stop reading, answer every request received, then send DISCONNECT
    /// with the runtime's reason (asked for in
    /// [`Connection::handle_pushes_done`]). Ignored while the connection
    /// already closes.
    Graceful,
    /// [`Graceful`](Close::Graceful), and the complete frames the runtime
    /// had already read from the peer when the close began (in its read
    /// buffer: it reads nothing more from the peer for them) are taken
    /// too, through [`Connection::poll_read_buffered`], until the runtime
    /// calls [`Connection::handle_buffered_done`]: a server shutting down
    /// hands on what it read instead of discarding it. A DISCONNECT among
    /// them ends the buffered frames.
    GracefulHandingOnRead,
    /// End at once, writing nothing more (a slow consumer). Requests not
    /// answered are cut.
    Abort,
}

/// What the runtime's I/O should do, by close phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Read frames (when [`Connection::poll_read`] permits), write, take pushes.
    Open,
    /// Read no more from the peer (after [`Close::GracefulHandingOnRead`],
    /// hand in the frames already read, through
    /// [`Connection::poll_read_buffered`]); pass the waiting request to the service, collect
    /// answers, take pushes; once [`Connection::answered_all`], seal the
    /// pushes and call [`Connection::handle_pushes_done`].
    Draining,
    /// Write what is queued, then shut the write side and call
    /// [`Connection::handle_write_closed`].
    Flushing,
    /// Discard input until the peer closes, then call
    /// [`Connection::handle_peer_closed`] (or wait for the linger timeout).
    Lingering,
    /// Done: write nothing more. [`Connection::closed`] says how it ended.
    Closed,
}

/// The right to answer one request: handed out with the request, consumed
/// by [`Connection::handle_answer`]. Not `Clone`, so a request cannot be
/// answered twice. A token belongs to the connection that made it.
///
/// A token dropped without an answer keeps its request counted
/// ([`Connection::outstanding`], against `max_concurrent_requests` and
/// `max_concurrent_request_bytes`) until the connection closes, and a
/// graceful close then waits for it until the drain deadline
/// ([`Closed::drain_timed_out`], the request counted in
/// [`Closed::unanswered`]).
#[derive(Debug)]
#[must_use = "a request must be answered: pass its token to Connection::handle_answer"]
pub struct Token {
    request_id: Option<u32>,
    bytes: usize,
}

impl Token {
    /// The request id the answer will carry (`None` for a one-way request).
    #[inline]
    pub fn request_id(&self) -> Option<u32> {
        self.request_id
    }

    /// The request's payload bytes, counted against
    /// [`Config::max_concurrent_request_bytes`] until it is answered.
    #[inline]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// A request for the service, and the token its answer needs.
#[derive(Debug)]
pub struct Request {
    /// The frame as read (request id included).
    pub frame: Frame,
    /// Pass it back with the result to [`Connection::handle_answer`].
    pub token: Token,
}

/// Something the runtime must know or act on ([`Connection::poll_event`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The peer announced a valid client id. The runtime registers it and
    /// calls [`Connection::welcome`]. (An invalid id is answered with an
    /// ERROR by the machine itself.)
    Hello {
        /// The announced client id.
        client_id: String,
        /// The handshake's request id, for the answer.
        request_id: Option<u32>,
    },
    /// The peer reported an error (an ERROR frame): its payload, for logs
    /// (escape it: see [`PeerText`](crate::text::PeerText)).
    PeerError(Bytes),
    /// The connection began closing for a reason of its own (not asked
    /// through [`Connection::handle_close`]).
    Closing {
        /// Why.
        cause: Cause,
        /// `true`: it answers the requests received, then closes.
        /// `false`: the requests not answered are cut (drop their calls)
        /// and the pushes not written are lost.
        drain: bool,
    },
    /// The connection ended (reported once; [`Connection::closed`] keeps it).
    Closed(Closed),
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// Why it closed.
    pub cause: Cause,
    /// The drain deadline cut the close short (answers or writes were
    /// still pending).
    pub drain_timed_out: bool,
    /// Requests received and never answered: cut by a close that could not
    /// wait. Zero after a graceful close within its deadline.
    pub unanswered: usize,
}

/// The pending request or event (one at a time: no frame is read while
/// one waits).
#[derive(Debug)]
enum Slot {
    Empty,
    Request(Frame),
    Hello {
        client_id: String,
        request_id: Option<u32>,
    },
    PeerError(Bytes),
}

#[derive(Debug)]
enum State {
    Open,
    /// `farewell`: a DISCONNECT goes out when answered (a close the
    /// runtime asked for; a drain the peer began says nothing).
    Draining {
        farewell: bool,
        /// Frames the runtime read before the close are still taken
        /// ([`Close::GracefulHandingOnRead`]).
        buffered: bool,
    },
    Flushing,
    Lingering,
    Closed {
        reported: bool,
        drain_timed_out: bool,
    },
}

/// The server side of one connection, without I/O (see the [module
/// docs](self)).
#[derive(Debug)]
pub struct Connection {
    proto: Protocol,
    config: Arc<Config>,
    state: State,
    /// Set when the connection begins closing.
    cause: Option<Cause>,
    slot: Slot,
    /// An [`Event::Closing`] is owed, with its `drain`: kept apart from
    /// `slot` so that beginning a close never drops the request or event
    /// waiting there (reported after that event; a waiting request stays
    /// for the service).
    closing_owed: Option<bool>,
    /// The next frame to write; later ones wait in `more`, which exists
    /// only for a runtime that does not drain after each input (one
    /// pointer here: every idle session carries this struct).
    transmit: Option<Frame>,
    #[allow(clippy::box_collection)]
    more: Option<Box<VecDeque<Frame>>>,
    /// Requests let in (waiting in `slot` or with the service) and not
    /// answered. At most `max_concurrent_requests` (no frame is read once
    /// it is reached), so a `u32` (the builder keeps the limit within it).
    outstanding: u32,
    /// Requests cut by a close (saturating).
    unanswered: u32,
    outstanding_bytes: usize,
    reading: Reading,
    /// A valid HELLO was reported and not yet answered: one WELCOME (or
    /// refusal) is owed.
    hello_answer_owed: bool,
}

impl Connection {
    /// A connection accepted at `now`. `binary` is false for framings
    /// without kinds (text lines): then the handshake does not apply.
    pub fn new(config: Arc<Config>, binary: bool, now: Instant) -> Connection {
        Connection {
            proto: Protocol::new(Role::Server, config.timers, binary, now),
            config,
            state: State::Open,
            cause: None,
            slot: Slot::Empty,
            closing_owed: None,
            transmit: None,
            more: None,
            outstanding: 0,
            outstanding_bytes: 0,
            unanswered: 0,
            reading: Reading::Open,
            hello_answer_owed: false,
        }
    }

    /// The settings.
    #[inline]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The close phase: what the runtime's I/O should do.
    #[inline]
    pub fn phase(&self) -> Phase {
        match self.state {
            State::Open => Phase::Open,
            State::Draining { .. } => Phase::Draining,
            State::Flushing => Phase::Flushing,
            State::Lingering => Phase::Lingering,
            State::Closed { .. } => Phase::Closed,
        }
    }

    /// The last reading decision of [`poll_read`](Connection::poll_read).
    #[inline]
    pub fn reading(&self) -> Reading {
        self.reading
    }

    /// Requests let in and not answered (one waiting for the service
    /// included).
    #[inline]
    pub fn outstanding(&self) -> usize {
        self.outstanding as usize
    }

    /// Requests cut so far: let in, and never to be answered because a
    /// close could not wait for them ([`Closed::unanswered`] at the end).
    #[inline]
    pub fn unanswered(&self) -> usize {
        self.unanswered as usize
    }

    /// Payload bytes of the [`outstanding`](Connection::outstanding) requests.
    #[inline]
    pub fn outstanding_bytes(&self) -> usize {
        self.outstanding_bytes
    }

    /// Whether the runtime may move pushes into its write queue, which
    /// holds `write_queued` bytes: while open or draining, below the
    /// high-water mark.
    #[inline]
    pub fn takes_pushes(&self, write_queued: usize) -> bool {
        matches!(self.state, State::Open | State::Draining { .. })
            && write_queued < self.config.high_water
    }

    /// Decides whether to read a frame now, given the bytes the runtime
    /// has queued to write, and records why not for the idle clock (see
    /// [`Reading`]): blocked on the peer at the high-water mark; held back
    /// while a request or event waits to be taken, a frame waits to be
    /// written, or the requests let in are at `max_concurrent_requests` or
    /// `max_concurrent_request_bytes`. `None` also once closing.
    #[inline]
    pub fn poll_read(&mut self, write_queued: usize, now: Instant) -> Option<ReadPermit<'_>> {
        if !matches!(self.state, State::Open) {
            return None;
        }
        let config = &*self.config;
        let reading = if write_queued >= config.high_water {
            Reading::BlockedOnPeer
        } else if !matches!(self.slot, Slot::Empty)
            || self.transmit.is_some()
            || self.outstanding as usize >= config.max_concurrent_requests
            || self.outstanding_bytes >= config.max_concurrent_request_bytes
        {
            Reading::HeldBack
        } else {
            Reading::Open
        };
        self.reading = reading;
        self.proto.set_reading(reading, now);
        (reading == Reading::Open).then_some(ReadPermit { conn: self })
    }

    /// While a [`Close::GracefulHandingOnRead`] drains: a permit to hand
    /// in the next complete frame the runtime already holds (read from the
    /// peer before the close began), under the limits of
    /// [`poll_read`](Connection::poll_read) (`None` while a request waits,
    /// a frame waits to be written, or the requests are at their limits;
    /// ask again once they are not). `None` too once the runtime said it
    /// holds no more ([`handle_buffered_done`](Connection::handle_buffered_done))
    /// or for any other close. The runtime must not read from the peer
    /// for it.
    #[inline]
    pub fn poll_read_buffered(&mut self, write_queued: usize) -> Option<ReadPermit<'_>> {
        if !self.takes_buffered() {
            return None;
        }
        let config = &*self.config;
        let held = write_queued >= config.high_water
            || !matches!(self.slot, Slot::Empty)
            || self.transmit.is_some()
            || self.outstanding as usize >= config.max_concurrent_requests
            || self.outstanding_bytes >= config.max_concurrent_request_bytes;
        (!held).then_some(ReadPermit { conn: self })
    }

    /// The runtime holds no more complete frames read before the close
    /// (or cannot hand them in): the drain goes on to its farewell once
    /// every request is answered.
    pub fn handle_buffered_done(&mut self) {
        if let State::Draining { buffered, .. } = &mut self.state {
            *buffered = false;
        }
    }

    /// Whether a [`Close::GracefulHandingOnRead`] still takes frames the
    /// runtime read before it ([`poll_read_buffered`](Connection::poll_read_buffered)).
    #[inline]
    pub fn takes_buffered(&self) -> bool {
        matches!(self.state, State::Draining { buffered: true, .. })
    }

    #[inline]
    fn handle_frame(&mut self, frame: Frame, now: Instant) {
        // A request (the common case) goes to the slot without being moved
        // through `Protocol::on_frame` and its `Inbound`.
        if self.proto.on_request(&frame, now) {
            self.deliver(frame);
        } else {
            self.handle_other_frame(frame, now);
        }
    }

    /// A request for the service: counted from here until answered (its
    /// payload as decoded), and waiting in the slot.
    #[inline]
    fn deliver(&mut self, frame: Frame) {
        self.outstanding = self.outstanding.saturating_add(1);
        self.outstanding_bytes = self.outstanding_bytes.saturating_add(frame.payload().len());
        self.slot = Slot::Request(frame);
    }

    #[inline(never)]
    fn handle_other_frame(&mut self, frame: Frame, now: Instant) {
        match self.proto.on_frame(frame, now) {
            Inbound::Deliver(frame) => self.deliver(frame),
            Inbound::Reply(frame) => self.push_transmit(frame),
            Inbound::Hello {
                client_id: Ok(client_id),
                request_id,
            } => {
                self.hello_answer_owed = true;
                self.slot = Slot::Hello {
                    client_id,
                    request_id,
                }
            }
            Inbound::Hello {
                client_id: Err(why),
                request_id,
            } => {
                let mut answer = Frame::error(format!("invalid client id: {why}"));
                answer.set_request_id(request_id);
                self.push_transmit(answer);
            }
            Inbound::PeerError(frame) => self.slot = Slot::PeerError(frame.into_payload()),
            // Among the frames read before a close of ours: nothing after
            // it counts, and our close goes on as it began.
            Inbound::PeerDisconnect(_) if matches!(self.state, State::Draining { .. }) => {
                self.handle_buffered_done();
            }
            Inbound::PeerDisconnect(why) => {
                self.begin_drain(Cause::PeerDisconnect(why), false, now);
                self.closing_owed = Some(true);
            }
            Inbound::Violation(reason) => {
                let last = Frame::error(reason.clone());
                let cause = Cause::ProtocolViolation(Violation::Frame, reason);
                self.close_now(cause, last, now);
            }
            Inbound::Pong(_) | Inbound::Nothing => {}
        }
    }

    /// Whether a request waits for the service ([`poll_request`](Connection::poll_request)).
    #[inline]
    pub fn has_request(&self) -> bool {
        matches!(self.slot, Slot::Request(_))
    }

    /// The request waiting for the service, with its token. Take it once
    /// the service is ready: until then the connection reads nothing more.
    #[inline]
    pub fn poll_request(&mut self) -> Option<Request> {
        if !self.has_request() {
            return None;
        }
        let Slot::Request(frame) = std::mem::replace(&mut self.slot, Slot::Empty) else {
            return None;
        };
        let token = Token {
            request_id: frame.request_id(),
            bytes: frame.payload().len(),
        };
        Some(Request { frame, token })
    }

    /// Takes the service's result for the request `token` came with and
    /// makes the answer, by these rules:
    /// - a frame answering a correlated request gets the request's id; one
    ///   of a kind that cannot answer (PING, PONG, HEARTBEAT, DISCONNECT, a
    ///   reserved kind) becomes ERROR `handler answered with kind K`;
    /// - `None` to a correlated request becomes ERROR `no response`;
    /// - an error becomes ERROR with its text (and the request id, if any);
    /// - a one-way request's frame goes out as it is; its `None` sends nothing.
    ///
    /// An answer to a request the connection cut (it closed without
    /// waiting) is dropped.
    pub fn handle_answer<E: fmt::Display>(
        &mut self,
        token: Token,
        result: Result<Option<Frame>, E>,
    ) {
        if let Some(frame) = self.take_answer(token, result) {
            self.push_transmit(frame);
        }
    }

    /// [`handle_answer`](Connection::handle_answer), handing the answer
    /// back instead of queueing it when nothing waits to be written before
    /// it: the runtime writes it next, before anything
    /// [`poll_transmit`](Connection::poll_transmit) gives later. (Behind
    /// frames already queued, it is queued and `None` comes back.) Saves a
    /// runtime that writes at once the trip through the transmit queue.
    #[inline(always)]
    pub fn take_answer<E: fmt::Display>(
        &mut self,
        token: Token,
        result: Result<Option<Frame>, E>,
    ) -> Option<Frame> {
        let frame = match result {
            // The common case, inline: a frame that may answer (or any
            // frame for a one-way request), while the connection answers.
            Ok(Some(mut frame))
                if matches!(self.state, State::Open | State::Draining { .. })
                    && (token.request_id.is_none() || can_answer(frame.kind())) =>
            {
                self.answered(&token);
                if token.request_id.is_some() {
                    frame.set_request_id(token.request_id);
                }
                frame
            }
            result => self.make_answer(token, result)?,
        };
        if self.transmit.is_none() {
            return Some(frame);
        }
        self.push_transmit(frame);
        None
    }

    /// The answer to the request of `token`, by the rules of
    /// [`handle_answer`](Connection::handle_answer); `None` when nothing
    /// is sent.
    #[inline(never)]
    fn make_answer<E: fmt::Display>(
        &mut self,
        token: Token,
        result: Result<Option<Frame>, E>,
    ) -> Option<Frame> {
        if !matches!(self.state, State::Open | State::Draining { .. }) {
            return None;
        }
        self.answered(&token);
        let frame = match (token.request_id, result) {
            // Only what a client can take as an answer answers a request:
            // a PING, PONG, HEARTBEAT, DISCONNECT or reserved kind (0
            // included) would never complete the caller's call.
            (Some(id), Ok(Some(frame))) if !can_answer(frame.kind()) => {
                Frame::error(format!("handler answered with kind {}", frame.kind()))
                    .with_request_id(id)
            }
            (Some(id), Ok(Some(mut frame))) => {
                frame.set_request_id(Some(id));
                frame
            }
            (None, Ok(Some(frame))) => frame,
            (Some(id), Ok(None)) => Frame::error("no response").with_request_id(id),
            (None, Ok(None)) => return None,
            (id, Err(error)) => {
                let mut frame = Frame::error(error.to_string());
                frame.set_request_id(id);
                frame
            }
        };
        Some(frame)
    }

    /// The request of `token` is answered: no longer counted.
    #[inline]
    fn answered(&mut self, token: &Token) {
        self.outstanding = self.outstanding.saturating_sub(1);
        self.outstanding_bytes = self.outstanding_bytes.saturating_sub(token.bytes);
    }

    /// Answers the handshake of [`Event::Hello`] with `WELCOME <session_id>`
    /// (after the runtime registered the client id). Once per HELLO, and
    /// nothing once the connection stopped answering.
    pub fn welcome(&mut self, request_id: Option<u32>, session_id: impl fmt::Display) {
        if std::mem::take(&mut self.hello_answer_owed)
            && matches!(self.state, State::Open | State::Draining { .. })
        {
            let mut answer = Frame::control(format!("{WELCOME_PREFIX}{session_id}"));
            answer.set_request_id(request_id);
            self.push_transmit(answer);
        }
    }

    /// Refuses the handshake of [`Event::Hello`] with ERROR `invalid client
    /// id: <why>` when the runtime could not register the id (a cluster's
    /// bus refused it): the session keeps its session id as client id, as
    /// for an id refused here. Once per HELLO (instead of
    /// [`welcome`](Connection::welcome)), and nothing once the connection
    /// stopped answering.
    pub fn refuse_client_id(&mut self, request_id: Option<u32>, why: impl fmt::Display) {
        // One answer per HELLO: this, or the WELCOME.
        if std::mem::take(&mut self.hello_answer_owed)
            && matches!(self.state, State::Open | State::Draining { .. })
        {
            let mut answer = Frame::error(format!("invalid client id: {why}"));
            answer.set_request_id(request_id);
            self.push_transmit(answer);
        }
    }

    /// The runtime closes the connection (see [`Close`]).
    pub fn handle_close(&mut self, close: Close, now: Instant) {
        match close {
            Close::Abort => self.abort(Cause::Local),
            Close::Graceful => {
                if matches!(self.state, State::Open) {
                    self.begin_drain(Cause::Local, true, now);
                }
            }
            Close::GracefulHandingOnRead => {
                if matches!(self.state, State::Open) {
                    self.begin_drain(Cause::Local, true, now);
                    self.state = State::Draining {
                        farewell: true,
                        buffered: true,
                    };
                }
            }
        }
    }

    /// The peer closed its side between frames: while open, the connection
    /// answers what it received and closes ([`Cause::PeerClosed`]); while
    /// lingering, this is the normal end. A half-close while draining or
    /// flushing changes nothing: the answers still go out.
    pub fn handle_peer_closed(&mut self, now: Instant) {
        match self.state {
            State::Open => {
                // A request (or event) waiting in the slot stays: the
                // drain hands it to the service and answers it.
                self.begin_drain(Cause::PeerClosed, false, now);
                self.closing_owed = Some(true);
            }
            State::Lingering => self.finish(false),
            _ => {}
        }
    }

    /// The transport failed (a read or write error, or end of stream inside
    /// a frame): the connection ends at once, cutting what is pending
    /// ([`Cause::PeerReset`]). While lingering it is the normal end.
    pub fn handle_peer_reset(&mut self, why: std::io::ErrorKind) {
        match self.state {
            State::Lingering => self.finish(false),
            _ => self.abort(Cause::PeerReset(why)),
        }
    }

    /// The bytes read broke the framing: ERROR with the reason, then close
    /// without waiting for answers ([`Cause::ProtocolViolation`]).
    pub fn handle_decode_error(&mut self, error: &CodecError, now: Instant) {
        let reason = error.to_string();
        let last = Frame::error(reason.clone());
        let cause = Cause::ProtocolViolation(Violation::of(error), reason);
        self.close_now(cause, last, now);
    }

    /// The service failed: ERROR `service unavailable`, then close without
    /// waiting for answers ([`Cause::ServiceFailed`]).
    #[inline]
    pub fn handle_service_failed(&mut self, why: String, now: Instant) {
        self.close_now(
            Cause::ServiceFailed(why),
            Frame::error("service unavailable"),
            now,
        );
    }

    /// Bytes were written at `now`: resets the heartbeat timer and, while
    /// reading waits for the peer, shows the peer is alive.
    #[inline]
    pub fn handle_written(&mut self, now: Instant) {
        self.proto.on_sent(now);
    }

    /// Whether a draining connection has answered every request it let in:
    /// then the runtime seals its pushes (those taken are written first)
    /// and calls [`handle_pushes_done`](Connection::handle_pushes_done).
    #[inline]
    pub fn answered_all(&self) -> bool {
        matches!(
            self.state,
            State::Draining {
                buffered: false,
                ..
            }
        ) && self.outstanding == 0
    }

    /// The runtime writes no more pushes: a draining connection that has
    /// answered everything moves to [`Phase::Flushing`], and if the runtime
    /// began the close ([`Close::Graceful`]) it says DISCONNECT with the
    /// reason `farewell` makes (the runtime's text, cut to fit its
    /// framing; asked for only then, so a peer's drain makes none).
    pub fn handle_pushes_done(&mut self, farewell: impl FnOnce() -> Bytes) {
        if !self.answered_all() {
            return;
        }
        if let State::Draining { farewell: true, .. } =
            std::mem::replace(&mut self.state, State::Flushing)
        {
            self.push_transmit(Frame::new(Kind::DISCONNECT, farewell()));
        }
    }

    /// The write side is shut (everything written): linger for the peer to
    /// close, at most [`LINGER`] (and within the drain deadline).
    #[inline]
    pub fn handle_write_closed(&mut self, now: Instant) {
        if matches!(self.state, State::Flushing) {
            self.state = State::Lingering;
            self.proto.shorten_drain(now, LINGER);
        }
    }

    /// When [`handle_timeout`](Connection::handle_timeout) must next be
    /// called; `None` when no timer runs.
    #[inline]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closed { .. } => None,
            _ => self.proto.next_deadline(),
        }
    }

    /// Runs the timers due by `now`: a HEARTBEAT (only when nothing else
    /// waits to be written), the idle and handshake timeouts (DISCONNECT
    /// with the reason, close without waiting for answers), the drain
    /// deadline (the close is cut short, and [`Closed::drain_timed_out`]
    /// says so; while lingering it is the normal end).
    ///
    /// Returns whether a timer fired (`false` before any deadline, or once
    /// closed): a runtime counts only that as progress.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        if matches!(self.state, State::Closed { .. }) {
            return false;
        }
        let expired = self.proto.on_timeout(now);
        let fired = expired.is_some();
        match expired {
            Some(Expired::Heartbeat) if self.transmit.is_none() => {
                self.push_transmit(Frame::heartbeat());
            }
            // Something waits to be written already: it does the beat's job.
            None | Some(Expired::Heartbeat) => {}
            Some(Expired::Idle) => {
                self.close_now(Cause::IdleTimeout, Frame::disconnect("idle timeout"), now)
            }
            Some(Expired::Handshake) => self.close_now(
                Cause::HandshakeTimeout,
                Frame::disconnect("handshake timeout"),
                now,
            ),
            Some(Expired::Drain) => {
                let timed_out = !matches!(self.state, State::Lingering);
                self.finish(timed_out);
            }
        }
        fired
    }

    /// Whether [`poll_transmit`](Connection::poll_transmit) or
    /// [`poll_event`](Connection::poll_event) has anything: when not, a
    /// runtime may skip both (the per-request hot path).
    #[inline]
    pub fn has_output(&self) -> bool {
        self.transmit.is_some()
            || !matches!(self.slot, Slot::Empty | Slot::Request(_))
            || self.closing_owed.is_some()
            || matches!(
                self.state,
                State::Closed {
                    reported: false,
                    ..
                }
            )
    }

    /// The next frame to write.
    #[inline]
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        let next = self.transmit.take();
        if self.more.is_some() {
            self.refill_transmit();
        }
        next
    }

    #[cold]
    fn refill_transmit(&mut self) {
        if let Some(more) = &mut self.more {
            self.transmit = more.pop_front();
            if more.is_empty() {
                self.more = None;
            }
        }
    }

    /// The next event (the request for the service comes from
    /// [`poll_request`](Connection::poll_request)).
    #[inline]
    pub fn poll_event(&mut self) -> Option<Event> {
        // The common case (a request or nothing in the slot, no close to
        // report) answers without a call.
        if !self.has_output() {
            return None;
        }
        self.poll_event_slow()
    }

    #[cold]
    fn poll_event_slow(&mut self) -> Option<Event> {
        // Checked first: on the hot path the slot holds a request (or
        // nothing), which stays where it is.
        if !matches!(self.slot, Slot::Empty | Slot::Request(_)) {
            if let Some(event) = self.take_event() {
                return Some(event);
            }
        }
        if let Some(drain) = self.closing_owed.take() {
            return Some(Event::Closing {
                cause: self.cause.clone().unwrap_or(Cause::Local),
                drain,
            });
        }
        if let State::Closed { reported, .. } = &mut self.state {
            if !*reported {
                *reported = true;
                return self.closed().map(Event::Closed);
            }
        }
        None
    }

    fn take_event(&mut self) -> Option<Event> {
        match std::mem::replace(&mut self.slot, Slot::Empty) {
            Slot::Empty => None,
            Slot::Request(frame) => {
                self.slot = Slot::Request(frame);
                None
            }
            Slot::Hello {
                client_id,
                request_id,
            } => Some(Event::Hello {
                client_id,
                request_id,
            }),
            Slot::PeerError(frame) => Some(Event::PeerError(frame)),
        }
    }

    /// How the connection ended, once it has ([`Phase::Closed`]).
    pub fn closed(&self) -> Option<Closed> {
        let State::Closed {
            drain_timed_out, ..
        } = self.state
        else {
            return None;
        };
        Some(Closed {
            cause: self.cause.clone().unwrap_or(Cause::Local),
            drain_timed_out,
            unanswered: self.unanswered as usize,
        })
    }

    #[inline(never)]
    fn push_transmit(&mut self, frame: Frame) {
        if self.transmit.is_none() {
            self.transmit = Some(frame);
        } else {
            self.more.get_or_insert_with(Box::default).push_back(frame);
        }
    }

    /// Stops reading; answers what was received, then sends `farewell`.
    fn begin_drain(&mut self, cause: Cause, farewell: bool, now: Instant) {
        self.cause = Some(cause);
        self.state = State::Draining {
            farewell,
            buffered: false,
        };
        self.proto.start_drain(now, self.config.drain_timeout);
    }

    /// Cuts what is pending, sends `last` and closes.
    fn close_now(&mut self, cause: Cause, last: Frame, now: Instant) {
        if !matches!(self.state, State::Open | State::Draining { .. }) {
            return;
        }
        self.cut();
        self.cause = Some(cause);
        self.closing_owed = Some(false);
        self.push_transmit(last);
        self.state = State::Flushing;
        self.proto.start_drain(now, self.config.drain_timeout);
    }

    /// Ends at once, writing nothing more.
    fn abort(&mut self, cause: Cause) {
        if matches!(self.state, State::Closed { .. }) {
            return;
        }
        self.cause = Some(cause);
        self.finish(false);
    }

    /// Closed: what was not answered is cut, nothing more is written.
    fn finish(&mut self, drain_timed_out: bool) {
        self.cut();
        // Closed supersedes it (a reset right after a violation).
        self.closing_owed = None;
        self.transmit = None;
        self.more = None;
        if self.cause.is_none() {
            self.cause = Some(Cause::Local);
        }
        self.state = State::Closed {
            reported: false,
            drain_timed_out,
        };
    }

    /// Counts the requests not answered as cut; a waiting one is dropped.
    fn cut(&mut self) {
        self.unanswered = self.unanswered.saturating_add(self.outstanding);
        self.outstanding = 0;
        self.outstanding_bytes = 0;
        if matches!(self.slot, Slot::Request(_)) {
            self.slot = Slot::Empty;
        }
    }
}

/// Whether a frame of `kind` can answer a correlated request: what a
/// client takes as an answer (a delivered kind or ERROR). A PING, PONG,
/// HEARTBEAT, DISCONNECT or reserved kind (0 included) would never complete
/// the caller's call: [`Connection::handle_answer`] turns it into an ERROR.
pub fn can_answer(kind: Kind) -> bool {
    kind.is_delivered() || kind == Kind::ERROR
}

/// Leave to hand one frame to the connection, from
/// [`Connection::poll_read`]. It borrows the connection, so nothing can
/// change the decision between it and the frame.
#[derive(Debug)]
pub struct ReadPermit<'a> {
    conn: &'a mut Connection,
}

impl ReadPermit<'_> {
    /// Hands in the frame read at `now`: PING is answered with PONG, a
    /// reserved kind with ERROR, a transform flag without its transform
    /// closes with ERROR ([`Cause::ProtocolViolation`]), HELLO becomes
    /// [`Event::Hello`] (or an ERROR for an invalid id), DISCONNECT begins
    /// a graceful close ([`Cause::PeerDisconnect`]), ERROR becomes
    /// [`Event::PeerError`], and every other frame is a request for the
    /// service ([`Connection::poll_request`]).
    #[inline]
    pub fn handle_frame(self, frame: Frame, now: Instant) {
        self.conn.handle_frame(frame, now);
    }
}
#[cfg(test)]
mod tests;
