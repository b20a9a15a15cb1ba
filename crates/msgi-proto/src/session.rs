//! The session rules without I/O: what each kind does, the handshake, and
//! the heartbeat, idle, handshake and drain timers.
//!
//! [`Protocol`] never touches a socket or a clock. The session driver feeds
//! it each decoded frame and the current time, asks it when it next needs to
//! be woken, and acts on what it returns. That keeps every rule of
//! PROTOCOL.md section 3 testable on a simulated clock.

use std::time::Duration;

use bytes::Bytes;
use std::time::Instant;

use crate::frame::{Flags, Frame, Kind};
use crate::text::PeerText;

/// The prefix of the handshake CONTROL payload: `HELLO <client-id>`.
pub const HELLO_PREFIX: &[u8] = b"HELLO ";
/// The prefix of the server's answer to a handshake: `WELCOME <session-id>`.
pub const WELCOME_PREFIX: &str = "WELCOME ";
/// The longest client id accepted, in bytes.
pub const MAX_CLIENT_ID_LEN: usize = 255;

/// Which end of the session this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepted the connection: honours the handshake and the handshake timer.
    Server,
    /// Opened the connection.
    Client,
}

/// Timer settings. `None` disables a timer.
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    /// Close when nothing has been received for this long.
    pub idle_timeout: Option<Duration>,
    /// Send a HEARTBEAT when nothing has been sent for this long.
    pub heartbeat_interval: Option<Duration>,
    /// Close when the first frame has not arrived within this long (server only).
    pub handshake_timeout: Option<Duration>,
}

/// What the driver must do with a received frame.
#[derive(Debug, PartialEq)]
pub enum Inbound {
    /// Hand the frame to the service.
    Deliver(Frame),
    /// Write this frame back to the peer (PONG, or ERROR for a reserved kind).
    Reply(Frame),
    /// The peer announced its client id (server role). `Err` holds the reason
    /// the id was refused; the request id is the handshake's, for the answer.
    Hello {
        /// The announced client id, or why it was refused.
        client_id: Result<String, &'static str>,
        /// The handshake's request id, for the answer.
        request_id: Option<u32>,
    },
    /// A PONG arrived.
    Pong(Frame),
    /// The peer reported an error.
    PeerError(Frame),
    /// The peer is closing gracefully, with this reason.
    PeerDisconnect(String),
    /// The frame breaks the protocol (flags for a transform this session
    /// does not run); close with an ERROR carrying this reason.
    Violation(String),
    /// Nothing to do (HEARTBEAT).
    Nothing,
}

/// A timer that fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// Send a HEARTBEAT now.
    Heartbeat,
    /// Nothing received for the idle timeout.
    Idle,
    /// No first frame within the handshake timeout.
    Handshake,
    /// The drain deadline passed.
    Drain,
}

/// Whether the session reads the connection, as the idle timer sees it.
///
/// Idleness must measure the peer, not our own backpressure: while the
/// session holds back from reading, a live peer's HEARTBEATs sit unread in
/// the socket, so the idle clock stops; it resumes where it stopped when
/// reading does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// Reading frames as they come: the idle clock runs.
    Open,
    /// Not reading because of this session's own backpressure (requests in
    /// flight at their limit, the service not ready): the idle clock stops.
    HeldBack,
    /// Not reading because the peer does not take our output (the write
    /// queue is above its high-water mark): the idle clock runs, and every
    /// write the peer takes counts as a sign of life. A peer that neither
    /// sends nor reads for the idle timeout is idle.
    BlockedOnPeer,
}

/// [`Reading`], with when the idle clock stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Open,
    HeldBack { since: Instant },
    BlockedOnPeer,
}

/// The state of one session's protocol rules.
#[derive(Debug)]
pub struct Protocol {
    role: Role,
    binary: bool,
    delivered_any: bool,
    hello_done: bool,
    draining: bool,
    idle_timeout: Option<Duration>,
    heartbeat_interval: Option<Duration>,
    /// Before draining: the handshake deadline, until the first frame
    /// arrives (server role; `None` once it has, or when there is no
    /// handshake timer or it is too far away to count). While draining:
    /// the drain deadline, `None` for a drain without one. (One field for
    /// both keeps a session small: only one of them matters at a time.)
    deadline: Option<Instant>,
    /// The idle clock's origin: the last frame received, moved forward by
    /// the time the session held back from reading since.
    last_rx: Instant,
    last_tx: Instant,
    read_state: ReadState,
}

/// `at + after`, or `None` ("never") when that is beyond what an
/// [`Instant`] can hold: a huge configured timeout means no timeout.
fn deadline(at: Instant, after: Duration) -> Option<Instant> {
    at.checked_add(after)
}

impl Protocol {
    /// A new session at time `now`. `binary` is false for framings without
    /// kinds (text lines): then the handshake does not apply.
    pub fn new(role: Role, timers: Timers, binary: bool, now: Instant) -> Protocol {
        let deadline = match role {
            Role::Server => timers.handshake_timeout.and_then(|t| deadline(now, t)),
            Role::Client => None,
        };
        Protocol {
            role,
            binary,
            delivered_any: false,
            hello_done: false,
            draining: false,
            idle_timeout: timers.idle_timeout,
            heartbeat_interval: timers.heartbeat_interval,
            deadline,
            last_rx: now,
            last_tx: now,
            read_state: ReadState::Open,
        }
    }

    /// The common case of [`on_frame`](Protocol::on_frame), without moving
    /// the frame: a DATA frame or one of an application kind, with no
    /// transform flag, is for the service. Then records the activity as
    /// `on_frame` would and returns true (`on_frame` would have returned
    /// [`Inbound::Deliver`]); otherwise changes nothing and returns false
    /// (call `on_frame`).
    #[inline]
    pub(crate) fn on_request(&mut self, frame: &Frame, now: Instant) -> bool {
        let kind = frame.kind();
        // CONTROL may be a handshake: left to `on_frame`.
        if !(kind == Kind::DATA || kind.get() >= Kind::APP_MIN)
            || !frame.flags().without(Flags::CORRELATED).is_empty()
        {
            return false;
        }
        self.last_rx = now;
        if !self.draining {
            self.deadline = None;
        }
        self.delivered_any = true;
        true
    }

    /// Classifies a received frame and records the activity.
    pub fn on_frame(&mut self, frame: Frame, now: Instant) -> Inbound {
        self.last_rx = now;
        if !self.draining {
            // The first frame ends the handshake timer.
            self.deadline = None;
        }
        // Each wire transform the session runs removes its own flag while
        // decoding; a transform flag still set here has no transform.
        let transforms = frame.flags().without(Flags::CORRELATED);
        if !transforms.is_empty() {
            return Inbound::Violation(format!("unsupported flags {transforms:?}"));
        }
        let kind = frame.kind();
        match kind {
            Kind::PING => Inbound::Reply(frame.reply(Kind::PONG, frame.payload().clone())),
            Kind::PONG => Inbound::Pong(frame),
            Kind::HEARTBEAT => Inbound::Nothing,
            Kind::ERROR => Inbound::PeerError(frame),
            // The reason is the peer's text: kept escaped and capped, as
            // it ends up in logs and close reasons.
            Kind::DISCONNECT => Inbound::PeerDisconnect(PeerText(frame.payload()).to_string()),
            _ if kind.is_reserved() => Inbound::Reply(frame.reply(
                Kind::ERROR,
                Bytes::from(format!("reserved kind {:#05x}", kind.get())),
            )),
            Kind::CONTROL if self.accepts_hello() && frame.payload().starts_with(HELLO_PREFIX) => {
                self.hello_done = true;
                let id = frame.payload().slice(HELLO_PREFIX.len()..);
                Inbound::Hello {
                    client_id: parse_client_id(&id),
                    request_id: frame.request_id(),
                }
            }
            _ => {
                self.delivered_any = true;
                Inbound::Deliver(frame)
            }
        }
    }

    fn accepts_hello(&self) -> bool {
        self.role == Role::Server && self.binary && !self.hello_done && !self.delivered_any
    }

    /// Records that bytes were written at `now`: resets the heartbeat timer
    /// and, while reading is blocked on the peer, shows the peer is alive.
    #[inline]
    pub fn on_sent(&mut self, now: Instant) {
        self.last_tx = now;
        if self.read_state == ReadState::BlockedOnPeer {
            self.last_rx = now;
        }
    }

    /// Records whether the session reads at `now` (see [`Reading`]). Cheap
    /// when nothing changes.
    #[inline]
    pub fn set_reading(&mut self, reading: Reading, now: Instant) {
        let next = match reading {
            Reading::Open => ReadState::Open,
            Reading::HeldBack => match self.read_state {
                ReadState::HeldBack { .. } => return,
                _ => ReadState::HeldBack { since: now },
            },
            Reading::BlockedOnPeer => ReadState::BlockedOnPeer,
        };
        if let ReadState::HeldBack { since } = self.read_state {
            // The idle clock stood still from `since` to `now`.
            let held = now.saturating_duration_since(since);
            self.last_rx = self.last_rx.checked_add(held).unwrap_or(now).min(now);
        }
        self.read_state = next;
    }

    /// Starts the drain: the session must be closed by `now + deadline`
    /// (never, if that is beyond what the clock can hold). A second call
    /// keeps the first deadline.
    #[inline]
    pub fn start_drain(&mut self, now: Instant, within: Duration) {
        if !self.draining {
            self.draining = true;
            self.deadline = deadline(now, within);
        }
    }

    /// Brings the drain deadline forward to `now + within` if that is
    /// earlier (and starts a drain if none was running).
    pub fn shorten_drain(&mut self, now: Instant, within: Duration) {
        let Some(new) = deadline(now, within) else {
            self.start_drain(now, within);
            return;
        };
        let current = self.deadline.filter(|_| self.draining);
        self.draining = true;
        self.deadline = Some(current.map_or(new, |d| d.min(new)));
    }

    /// When the driver must next call [`on_timeout`](Protocol::on_timeout);
    /// `None` when no timer runs.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.draining {
            // While draining only the drain deadline matters.
            return self.deadline;
        }
        [
            self.idle_deadline(),
            self.heartbeat_deadline(),
            self.deadline,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn idle_deadline(&self) -> Option<Instant> {
        match self.read_state {
            ReadState::HeldBack { .. } => None,
            ReadState::Open | ReadState::BlockedOnPeer => {
                self.idle_timeout.and_then(|t| deadline(self.last_rx, t))
            }
        }
    }

    fn heartbeat_deadline(&self) -> Option<Instant> {
        self.heartbeat_interval
            .and_then(|t| deadline(self.last_tx, t))
    }

    /// Reports the timer that has fired by `now`, if any. After
    /// [`Expired::Heartbeat`] the caller sends a HEARTBEAT; this records it.
    pub fn on_timeout(&mut self, now: Instant) -> Option<Expired> {
        if self.draining {
            return self
                .deadline
                .is_some_and(|d| now >= d)
                .then_some(Expired::Drain);
        }
        if self.deadline.is_some_and(|d| now >= d) {
            return Some(Expired::Handshake);
        }
        if self.idle_deadline().is_some_and(|d| now >= d) {
            return Some(Expired::Idle);
        }
        if self.heartbeat_deadline().is_some_and(|d| now >= d) {
            self.last_tx = now;
            return Some(Expired::Heartbeat);
        }
        None
    }
}

/// Checks a client id from a handshake: 1 to 255 bytes of UTF-8 without
/// control characters, and not digits only (those are default ids).
pub fn parse_client_id(raw: &[u8]) -> Result<String, &'static str> {
    let text = std::str::from_utf8(raw).map_err(|_| "client id is not UTF-8")?;
    if text.is_empty() {
        return Err("client id is empty");
    }
    if text.len() > MAX_CLIENT_ID_LEN {
        return Err("client id longer than 255 bytes");
    }
    if text.chars().any(char::is_control) {
        return Err("client id has control characters");
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        // A session without a handshake has its session id, in decimal, as
        // client id: an announced id must never take one over.
        return Err("digits only (reserved for session ids)");
    }
    Ok(text.to_owned())
}

/// The handshake frame a client sends to announce `client_id`.
pub fn hello_frame(client_id: &str) -> Frame {
    let mut payload = Vec::with_capacity(HELLO_PREFIX.len() + client_id.len());
    payload.extend_from_slice(HELLO_PREFIX);
    payload.extend_from_slice(client_id.as_bytes());
    Frame::control(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn timers() -> Timers {
        Timers {
            idle_timeout: Some(10 * SEC),
            heartbeat_interval: Some(3 * SEC),
            handshake_timeout: Some(5 * SEC),
        }
    }

    fn server(now: Instant) -> Protocol {
        Protocol::new(Role::Server, timers(), true, now)
    }

    #[test]
    fn ping_is_answered_with_same_payload_and_id() {
        let t0 = Instant::now();
        let mut p = server(t0);
        let out = p.on_frame(Frame::ping("hi").with_request_id(4), t0);
        let expected = Frame::new(Kind::PONG, "hi").with_request_id(4);
        assert_eq!(out, Inbound::Reply(expected));
    }

    #[test]
    fn reserved_kinds_get_an_error_with_the_request_id() {
        let t0 = Instant::now();
        let mut p = server(t0);
        let reserved = Kind::new(0x0AB).unwrap();
        let Inbound::Reply(err) = p.on_frame(Frame::new(reserved, "").with_request_id(9), t0)
        else {
            panic!("reserved kind must be answered");
        };
        assert_eq!(err.kind(), Kind::ERROR);
        assert_eq!(err.request_id(), Some(9));
        assert_eq!(err.payload_text(), "reserved kind 0x0ab");
    }

    #[test]
    fn hello_is_recognised_only_before_data() {
        let t0 = Instant::now();
        let mut p = server(t0);
        let out = p.on_frame(Frame::control("HELLO alice").with_request_id(1), t0);
        assert_eq!(
            out,
            Inbound::Hello {
                client_id: Ok("alice".into()),
                request_id: Some(1)
            }
        );
        // A second HELLO is ordinary CONTROL for the service.
        let again = Frame::control("HELLO bob");
        assert_eq!(p.on_frame(again.clone(), t0), Inbound::Deliver(again));

        let mut p = server(t0);
        assert!(matches!(
            p.on_frame(Frame::data("x"), t0),
            Inbound::Deliver(_)
        ));
        assert!(matches!(
            p.on_frame(Frame::control("HELLO late"), t0),
            Inbound::Deliver(_)
        ));
    }

    #[test]
    fn bad_client_ids_are_refused() {
        assert!(parse_client_id(b"").is_err());
        assert!(parse_client_id(b"a\nb").is_err());
        assert!(parse_client_id(&[0xff, 0xfe]).is_err());
        assert!(parse_client_id(&[b'a'; 256]).is_err());
        assert_eq!(parse_client_id("zoë".as_bytes()), Ok("zoë".to_owned()));
    }

    #[test]
    fn clients_do_not_interpret_hello() {
        let t0 = Instant::now();
        let mut p = Protocol::new(Role::Client, timers(), true, t0);
        assert!(matches!(
            p.on_frame(Frame::control("HELLO x"), t0),
            Inbound::Deliver(_)
        ));
    }

    #[test]
    fn heartbeat_then_idle_on_a_simulated_clock() {
        let t0 = Instant::now();
        let mut p = server(t0);
        p.on_frame(Frame::heartbeat(), t0);
        assert_eq!(p.next_deadline(), Some(t0 + 3 * SEC));
        assert_eq!(p.on_timeout(t0 + 2 * SEC), None);
        assert_eq!(p.on_timeout(t0 + 3 * SEC), Some(Expired::Heartbeat));
        assert_eq!(p.next_deadline(), Some(t0 + 6 * SEC));
        // Sending resets the heartbeat timer.
        p.on_sent(t0 + 5 * SEC);
        assert_eq!(p.next_deadline(), Some(t0 + 8 * SEC));
        assert_eq!(p.on_timeout(t0 + 8 * SEC), Some(Expired::Heartbeat));
        assert_eq!(p.next_deadline(), Some(t0 + 10 * SEC));
        assert_eq!(p.on_timeout(t0 + 10 * SEC), Some(Expired::Idle));
    }

    #[test]
    fn any_frame_resets_idle() {
        let t0 = Instant::now();
        let mut p = Protocol::new(
            Role::Server,
            Timers {
                heartbeat_interval: None,
                ..timers()
            },
            true,
            t0,
        );
        p.on_frame(Frame::heartbeat(), t0 + 9 * SEC);
        assert_eq!(p.on_timeout(t0 + 10 * SEC), None);
        assert_eq!(p.next_deadline(), Some(t0 + 19 * SEC));
        assert_eq!(p.on_timeout(t0 + 19 * SEC), Some(Expired::Idle));
    }

    #[test]
    fn handshake_timer_needs_a_first_frame() {
        let t0 = Instant::now();
        let mut p = Protocol::new(
            Role::Server,
            Timers {
                heartbeat_interval: None,
                ..timers()
            },
            true,
            t0,
        );
        assert_eq!(p.next_deadline(), Some(t0 + 5 * SEC));
        assert_eq!(p.on_timeout(t0 + 5 * SEC), Some(Expired::Handshake));

        let mut p = server(t0);
        p.on_frame(Frame::data("straight away"), t0 + SEC);
        assert_ne!(p.on_timeout(t0 + 5 * SEC), Some(Expired::Handshake));
    }

    #[test]
    fn drain_deadline_replaces_other_timers() {
        let t0 = Instant::now();
        let mut p = server(t0);
        p.start_drain(t0, 2 * SEC);
        p.start_drain(t0 + SEC, 5 * SEC);
        assert_eq!(p.next_deadline(), Some(t0 + 2 * SEC));
        assert_eq!(p.on_timeout(t0 + SEC), None);
        assert_eq!(p.on_timeout(t0 + 2 * SEC), Some(Expired::Drain));
    }

    #[test]
    fn a_frame_read_while_draining_keeps_the_drain_deadline() {
        let t0 = Instant::now();
        let mut p = server(t0);
        // Draining before the handshake: the drain deadline replaces it.
        p.start_drain(t0, 2 * SEC);
        p.on_frame(Frame::data("late"), t0 + SEC);
        assert_eq!(p.next_deadline(), Some(t0 + 2 * SEC));
        assert_eq!(p.on_timeout(t0 + 2 * SEC), Some(Expired::Drain));
    }

    #[test]
    fn transform_flags_need_a_transform() {
        let t0 = Instant::now();
        let compressed = Frame::data("z").with_flags(Flags::COMPRESSED);
        let mut p = server(t0);
        assert_eq!(
            p.on_frame(compressed.clone(), t0),
            Inbound::Violation("unsupported flags COMPRESSED".into())
        );
        let both = Frame::data("z").with_flags(Flags::COMPRESSED | Flags::ENCRYPTED);
        assert_eq!(
            p.on_frame(both, t0),
            Inbound::Violation("unsupported flags COMPRESSED | ENCRYPTED".into())
        );
    }

    #[test]
    fn idle_clock_stops_while_the_session_holds_back_from_reading() {
        let t0 = Instant::now();
        let mut p = Protocol::new(
            Role::Server,
            Timers {
                heartbeat_interval: None,
                ..timers()
            },
            true,
            t0,
        );
        p.on_frame(Frame::data("slow request"), t0 + SEC);
        // Requests in flight at their limit from 2 s: the peer's frames
        // stay unread, so their absence says nothing about the peer.
        p.set_reading(Reading::HeldBack, t0 + 2 * SEC);
        assert_eq!(p.next_deadline(), None);
        assert_eq!(p.on_timeout(t0 + 11 * SEC), None);
        assert_eq!(p.on_timeout(t0 + 100 * SEC), None);
        // Held again while held: the clock does not restart.
        p.set_reading(Reading::HeldBack, t0 + 50 * SEC);
        // Reading again at 102 s: the idle clock resumes where it stopped
        // (1 s used of 10), so a silent peer is still found, 9 s later.
        p.set_reading(Reading::Open, t0 + 102 * SEC);
        assert_eq!(p.next_deadline(), Some(t0 + 111 * SEC));
        assert_eq!(p.on_timeout(t0 + 110 * SEC), None);
        assert_eq!(p.on_timeout(t0 + 111 * SEC), Some(Expired::Idle));
    }

    #[test]
    fn a_peer_that_takes_our_output_is_alive_while_we_are_blocked_on_it() {
        let t0 = Instant::now();
        let mut p = Protocol::new(
            Role::Server,
            Timers {
                heartbeat_interval: None,
                ..timers()
            },
            true,
            t0,
        );
        p.on_frame(Frame::data("x"), t0);
        p.set_reading(Reading::BlockedOnPeer, t0 + SEC);
        // The peer reads our answers: alive.
        p.on_sent(t0 + 8 * SEC);
        assert_eq!(p.on_timeout(t0 + 12 * SEC), None);
        assert_eq!(p.next_deadline(), Some(t0 + 18 * SEC));
        // It stops reading and sends nothing we can read: idle.
        assert_eq!(p.on_timeout(t0 + 18 * SEC), Some(Expired::Idle));

        // Writes while reading normally do not count as the peer's activity.
        let mut p = Protocol::new(
            Role::Server,
            Timers {
                heartbeat_interval: None,
                ..timers()
            },
            true,
            t0,
        );
        p.on_frame(Frame::data("x"), t0);
        p.on_sent(t0 + 8 * SEC);
        assert_eq!(p.on_timeout(t0 + 10 * SEC), Some(Expired::Idle));
    }

    #[test]
    fn huge_timeouts_mean_never() {
        let t0 = Instant::now();
        let forever = Timers {
            idle_timeout: Some(Duration::MAX),
            heartbeat_interval: Some(Duration::MAX),
            handshake_timeout: Some(Duration::MAX),
        };
        let mut p = Protocol::new(Role::Server, forever, true, t0);
        assert_eq!(p.next_deadline(), None);
        assert_eq!(p.on_timeout(t0 + 1_000_000 * SEC), None);
        p.set_reading(Reading::HeldBack, t0 + SEC);
        p.set_reading(Reading::BlockedOnPeer, t0 + 2 * SEC);
        p.on_sent(t0 + 3 * SEC);
        p.on_frame(Frame::heartbeat(), t0 + 4 * SEC);
        assert_eq!(p.next_deadline(), None);
        assert_eq!(p.on_timeout(t0 + 1_000_000 * SEC), None);
        p.start_drain(t0 + 5 * SEC, Duration::MAX);
        assert_eq!(p.next_deadline(), None);
        assert_eq!(p.on_timeout(t0 + 1_000_000 * SEC), None);
        // The linger still bounds the end of a drain without a deadline.
        p.shorten_drain(t0 + 6 * SEC, SEC);
        assert_eq!(p.next_deadline(), Some(t0 + 7 * SEC));
        p.shorten_drain(t0 + 6 * SEC, Duration::MAX);
        assert_eq!(p.on_timeout(t0 + 7 * SEC), Some(Expired::Drain));
        // The client role, too.
        let mut p = Protocol::new(Role::Client, forever, true, t0);
        assert_eq!(p.on_timeout(t0 + 1_000_000 * SEC), None);
    }

    #[test]
    fn disconnect_reasons_are_escaped_and_capped() {
        let t0 = Instant::now();
        let mut p = server(t0);
        let mut hostile = b"bye\x1b[2J\n".to_vec();
        hostile.resize(1 << 20, b'x');
        let Inbound::PeerDisconnect(reason) = p.on_frame(Frame::new(Kind::DISCONNECT, hostile), t0)
        else {
            panic!("DISCONNECT must be reported");
        };
        assert!(reason.starts_with("bye\\u{1b}[2J\\n"), "{reason}");
        assert!(reason.len() < 300, "{} bytes kept", reason.len());
        assert!(!reason.chars().any(char::is_control));
    }

    #[test]
    fn announced_ids_cannot_take_a_default_id() {
        assert!(parse_client_id(b"7").is_err());
        assert!(parse_client_id(b"0042").is_err());
        assert_eq!(parse_client_id(b"7a"), Ok("7a".to_owned()));
        assert_eq!(parse_client_id(b"+7"), Ok("+7".to_owned()));
    }

    #[test]
    fn disconnect_and_error_are_reported() {
        let t0 = Instant::now();
        let mut p = server(t0);
        assert_eq!(
            p.on_frame(Frame::disconnect("bye"), t0),
            Inbound::PeerDisconnect("bye".into())
        );
        assert!(matches!(
            p.on_frame(Frame::error("oops"), t0),
            Inbound::PeerError(_)
        ));
    }

    /// The fast path a server connection takes for each request agrees
    /// with `on_frame` on every kind and flag combination, in every state
    /// that matters (before and after the handshake, while draining): when
    /// it takes a frame, `on_frame` would have delivered it and left the
    /// same state; when it does not, it changed nothing.
    #[test]
    fn on_request_agrees_with_on_frame() {
        let t0 = Instant::now();
        let t1 = t0 + SEC;
        let states: [fn(Instant) -> Protocol; 4] = [
            server,
            |t| {
                let mut p = server(t);
                let _ = p.on_frame(Frame::data("x"), t);
                p
            },
            |t| {
                let mut p = server(t);
                p.start_drain(t, SEC);
                p
            },
            |t| Protocol::new(Role::Client, timers(), true, t),
        ];
        let mut delivered = 0;
        for make in states {
            for kind in 0..=Kind::MAX {
                for high in 0..16u16 {
                    let flags = Flags::from_bits_truncate(high << 12);
                    let kind = Kind::new(kind).unwrap();
                    let payload: &[u8] = if kind == Kind::CONTROL {
                        b"HELLO abc"
                    } else {
                        b"x"
                    };
                    let frame = Frame::new(kind, Bytes::copy_from_slice(payload)).with_flags(flags);
                    let (mut fast, mut full) = (make(t0), make(t0));
                    let before = format!("{fast:?}");
                    if fast.on_request(&frame, t1) {
                        delivered += 1;
                        assert_eq!(full.on_frame(frame.clone(), t1), Inbound::Deliver(frame));
                        assert_eq!(format!("{fast:?}"), format!("{full:?}"));
                    } else {
                        assert_eq!(format!("{fast:?}"), before, "{frame:?}");
                    }
                }
            }
        }
        // DATA and the application kinds, with no flag or CORRELATED only.
        assert_eq!(
            delivered,
            4 * 2 * (1 + usize::from(Kind::MAX - Kind::APP_MIN + 1))
        );
    }
}
