//! The session rules without I/O: what each kind does, the handshake, and
//! the heartbeat, idle, handshake and drain timers.
//!
//! [`Protocol`] never touches a socket or a clock. The session driver feeds
//! it each decoded frame and the current time, asks it when it next needs to
//! be woken, and acts on what it returns. That keeps every rule of
//! PROTOCOL.md section 3 testable on a simulated clock.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::frame::{Flags, Frame, Kind};

/// The prefix of the handshake CONTROL payload: `HELLO <client-id>`.
pub(crate) const HELLO_PREFIX: &[u8] = b"HELLO ";
/// The prefix of the server's answer to a handshake: `WELCOME <session-id>`.
pub(crate) const WELCOME_PREFIX: &str = "WELCOME ";
/// The longest client id accepted, in bytes.
pub(crate) const MAX_CLIENT_ID_LEN: usize = 255;

/// Which end of the session this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Accepted the connection: honours the handshake and the handshake timer.
    Server,
    /// Opened the connection.
    Client,
}

/// Timer settings. `None` disables a timer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timers {
    /// Close when nothing has been received for this long.
    pub(crate) idle_timeout: Option<Duration>,
    /// Send a HEARTBEAT when nothing has been sent for this long.
    pub(crate) heartbeat_interval: Option<Duration>,
    /// Close when the first frame has not arrived within this long (server only).
    pub(crate) handshake_timeout: Option<Duration>,
}

/// What the driver must do with a received frame.
#[derive(Debug, PartialEq)]
pub(crate) enum Inbound {
    /// Hand the frame to the service.
    Deliver(Frame),
    /// Write this frame back to the peer (PONG, or ERROR for a reserved kind).
    Reply(Frame),
    /// The peer announced its client id (server role). `Err` holds the reason
    /// the id was refused; the request id is the handshake's, for the answer.
    Hello {
        client_id: Result<String, &'static str>,
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
pub(crate) enum Expired {
    /// Send a HEARTBEAT now.
    Heartbeat,
    /// Nothing received for the idle timeout.
    Idle,
    /// No first frame within the handshake timeout.
    Handshake,
    /// The drain deadline passed.
    Drain,
}

/// The state of one session's protocol rules.
#[derive(Debug)]
pub(crate) struct Protocol {
    role: Role,
    timers: Timers,
    binary: bool,
    started: Instant,
    last_rx: Instant,
    last_tx: Instant,
    received_any: bool,
    delivered_any: bool,
    hello_done: bool,
    drain_deadline: Option<Instant>,
}

impl Protocol {
    /// A new session at time `now`. `binary` is false for framings without
    /// kinds (text lines): then the handshake does not apply.
    pub(crate) fn new(role: Role, timers: Timers, binary: bool, now: Instant) -> Protocol {
        Protocol {
            role,
            timers,
            binary,
            started: now,
            last_rx: now,
            last_tx: now,
            received_any: false,
            delivered_any: false,
            hello_done: false,
            drain_deadline: None,
        }
    }

    /// Classifies a received frame and records the activity.
    pub(crate) fn on_frame(&mut self, frame: Frame, now: Instant) -> Inbound {
        self.last_rx = now;
        self.received_any = true;
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
            Kind::DISCONNECT => Inbound::PeerDisconnect(frame.payload_text().into_owned()),
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

    /// Records that a frame was written at `now` (resets the heartbeat timer).
    pub(crate) fn on_sent(&mut self, now: Instant) {
        self.last_tx = now;
    }

    /// Starts the drain: the session must be closed by `now + deadline`.
    /// A second call keeps the earlier deadline.
    pub(crate) fn start_drain(&mut self, now: Instant, deadline: Duration) {
        if self.drain_deadline.is_none() {
            self.drain_deadline = Some(now + deadline);
        }
    }

    /// Brings the drain deadline forward to `deadline` if it is later.
    pub(crate) fn shorten_drain(&mut self, deadline: Instant) {
        self.drain_deadline = Some(self.drain_deadline.map_or(deadline, |d| d.min(deadline)));
    }

    /// When the driver must next call [`on_timeout`](Protocol::on_timeout).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        if let Some(drain) = self.drain_deadline {
            // While draining only the drain deadline matters.
            return Some(drain);
        }
        let idle = self.timers.idle_timeout.map(|t| self.last_rx + t);
        let heartbeat = self.timers.heartbeat_interval.map(|t| self.last_tx + t);
        let handshake = self.handshake_deadline();
        [idle, heartbeat, handshake].into_iter().flatten().min()
    }

    fn handshake_deadline(&self) -> Option<Instant> {
        if self.role == Role::Server && !self.received_any {
            self.timers.handshake_timeout.map(|t| self.started + t)
        } else {
            None
        }
    }

    /// Reports the timer that has fired by `now`, if any. After
    /// [`Expired::Heartbeat`] the caller sends a HEARTBEAT; this records it.
    pub(crate) fn on_timeout(&mut self, now: Instant) -> Option<Expired> {
        if let Some(drain) = self.drain_deadline {
            return (now >= drain).then_some(Expired::Drain);
        }
        if self.handshake_deadline().is_some_and(|d| now >= d) {
            return Some(Expired::Handshake);
        }
        if let Some(t) = self.timers.idle_timeout {
            if now >= self.last_rx + t {
                return Some(Expired::Idle);
            }
        }
        if let Some(t) = self.timers.heartbeat_interval {
            if now >= self.last_tx + t {
                self.last_tx = now;
                return Some(Expired::Heartbeat);
            }
        }
        None
    }
}

/// Checks a client id from a handshake: 1 to 255 bytes of UTF-8 without
/// control characters.
pub(crate) fn parse_client_id(raw: &[u8]) -> Result<String, &'static str> {
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
    Ok(text.to_owned())
}

/// The handshake frame a client sends to announce `client_id`.
pub(crate) fn hello_frame(client_id: &str) -> Frame {
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
}
