//! The sans-IO session rules (`msgi_proto::session::Protocol`) fed arbitrary
//! event sequences: frames of any kind, flags and id (handshakes among
//! them), time advances including huge ones, writes, changes of reading
//! state, drains started and shortened, and timer checks.
//!
//! Checks: never panics; `next_deadline` and `on_timeout` agree (a timer
//! fires exactly when the earliest deadline has passed); once the due timers
//! are handled the next deadline is in the future; the idle timer never fires
//! before the idle timeout has passed since the last frame (or, while blocked
//! on the peer, the last write), and never while the session holds back from
//! reading; the heartbeat never before the interval since the last write; the
//! handshake timer only on the server before its first frame; while draining
//! only the drain deadline fires, and it never moves later; frames are
//! classified as PROTOCOL.md says.
#![no_main]

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use msgi_proto::session::{Expired, Inbound, Protocol, Reading, Role, Timers};
use msgi_proto::{Flags, Frame, Kind};

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Span {
    Nanos(u16),
    Millis(u16),
    Secs(u32),
    Huge(u64),
    Max,
}

impl Span {
    fn get(self) -> Duration {
        match self {
            Span::Nanos(n) => Duration::from_nanos(u64::from(n)),
            Span::Millis(n) => Duration::from_millis(u64::from(n)),
            Span::Secs(n) => Duration::from_secs(u64::from(n)),
            Span::Huge(n) => Duration::from_secs(n),
            Span::Max => Duration::MAX,
        }
    }

    /// A timer setting: never zero (builders refuse zero).
    fn timer(self) -> Duration {
        self.get().max(Duration::from_nanos(1))
    }
}

#[derive(Arbitrary, Debug)]
enum Event {
    Frame {
        kind: u16,
        flags: u8,
        request_id: Option<u32>,
        payload: Vec<u8>,
    },
    Hello {
        id: Vec<u8>,
        request_id: Option<u32>,
    },
    Advance(Span),
    Sent,
    Reading(u8),
    StartDrain(Span),
    ShortenDrain(Span),
    Timeout,
}

#[derive(Arbitrary, Debug)]
struct Input {
    server: bool,
    binary: bool,
    idle: Option<Span>,
    heartbeat: Option<Span>,
    handshake: Option<Span>,
    events: Vec<Event>,
}

/// What the harness knows without looking inside `Protocol`.
struct Model {
    server: bool,
    binary: bool,
    start: Instant,
    /// When the session began holding back from reading.
    held_since: Option<Instant>,
    last_rx: Instant,
    last_tx: Instant,
    any_frame: bool,
    reading: Reading,
    draining: bool,
    drain_deadline: Option<Option<Instant>>,
    delivered_any: bool,
    hello_done: bool,
}

fuzz_target!(|input: Input| {
    let timers = Timers {
        idle_timeout: input.idle.map(Span::timer),
        heartbeat_interval: input.heartbeat.map(Span::timer),
        handshake_timeout: input.handshake.map(Span::timer),
    };
    let role = if input.server {
        Role::Server
    } else {
        Role::Client
    };
    let start = Instant::now();
    let mut now = start;
    let mut p = Protocol::new(role, timers, input.binary, now);
    let mut m = Model {
        server: input.server,
        binary: input.binary,
        start,
        held_since: None,
        last_rx: now,
        last_tx: now,
        any_frame: false,
        reading: Reading::Open,
        draining: false,
        drain_deadline: None,
        delivered_any: false,
        hello_done: false,
    };
    for event in input.events {
        match event {
            Event::Frame {
                kind,
                flags,
                request_id,
                payload,
            } => {
                let kind = Kind::new(kind & Kind::MAX).unwrap_or(Kind::DATA);
                let flags = Flags::from_bits_truncate(u16::from(flags) << 12);
                let mut frame = Frame::new(kind, payload).with_flags(flags);
                frame.set_request_id(request_id);
                on_frame(&mut p, &mut m, frame, now);
            }
            Event::Hello { id, request_id } => {
                let mut frame = msgi_proto::session::hello_frame("");
                let mut payload = frame.payload().to_vec();
                payload.extend_from_slice(&id);
                *frame.payload_mut() = payload.into();
                frame.set_request_id(request_id);
                on_frame(&mut p, &mut m, frame, now);
            }
            Event::Advance(span) => {
                // A clock that cannot go further stays where it is.
                now = now.checked_add(span.get()).unwrap_or(now);
            }
            Event::Sent => {
                p.on_sent(now);
                m.last_tx = now;
                if m.reading == Reading::BlockedOnPeer {
                    m.last_rx = m.last_rx.max(now);
                }
            }
            Event::Reading(r) => {
                let reading = match r % 3 {
                    0 => Reading::Open,
                    1 => Reading::HeldBack,
                    _ => Reading::BlockedOnPeer,
                };
                p.set_reading(reading, now);
                match (m.held_since, reading) {
                    (None, Reading::HeldBack) => m.held_since = Some(now),
                    (Some(_), Reading::HeldBack) => {}
                    (Some(since), _) => {
                        // The idle clock stood still while held back: it
                        // resumes where it stopped.
                        m.last_rx = m.last_rx.checked_add(now - since).unwrap_or(now).min(now);
                        m.held_since = None;
                    }
                    (None, _) => {}
                }
                m.reading = reading;
            }
            Event::StartDrain(span) => {
                p.start_drain(now, span.get());
                if !m.draining {
                    m.draining = true;
                    m.drain_deadline = Some(now.checked_add(span.get()));
                }
            }
            Event::ShortenDrain(span) => {
                p.shorten_drain(now, span.get());
                let new = now.checked_add(span.get());
                m.drain_deadline = Some(match (m.drain_deadline.filter(|_| m.draining), new) {
                    (Some(Some(old)), Some(new)) => Some(old.min(new)),
                    (Some(old), None) => old,
                    (Some(None), new) | (None, new) => new,
                });
                m.draining = true;
            }
            Event::Timeout => {}
        }
        check_timers(&mut p, &mut m, &timers, role, now);
    }
});

fn on_frame(p: &mut Protocol, m: &mut Model, frame: Frame, now: Instant) {
    let kind = frame.kind();
    let transform_flags = !frame.flags().without(Flags::CORRELATED).is_empty();
    let request_id = frame.request_id();
    let accepts_hello = m.server && m.binary && !m.hello_done && !m.delivered_any;
    let is_hello = kind == Kind::CONTROL
        && frame
            .payload()
            .starts_with(msgi_proto::session::HELLO_PREFIX);
    let payload = frame.payload().clone();
    let got = p.on_frame(frame, now);
    m.last_rx = now;
    m.any_frame = true;
    match got {
        Inbound::Violation(_) => assert!(transform_flags),
        _ if transform_flags => panic!("transform flags accepted: {got:?}"),
        Inbound::Reply(reply) => {
            assert!(
                kind == Kind::PING || kind.is_reserved(),
                "{kind:?} answered"
            );
            assert_eq!(
                reply.request_id(),
                request_id,
                "a reply keeps the request id"
            );
            if kind == Kind::PING {
                assert_eq!(reply.kind(), Kind::PONG);
                assert_eq!(reply.payload(), &payload);
            } else {
                assert_eq!(reply.kind(), Kind::ERROR);
            }
        }
        Inbound::Pong(_) => assert_eq!(kind, Kind::PONG),
        Inbound::Nothing => assert_eq!(kind, Kind::HEARTBEAT),
        Inbound::PeerError(_) => assert_eq!(kind, Kind::ERROR),
        Inbound::PeerDisconnect(reason) => {
            assert_eq!(kind, Kind::DISCONNECT);
            // 200 characters, each escaped to at most 10, and the cut mark.
            assert!(
                reason.len() <= 200 * 10 + 40,
                "reason not capped: {}",
                reason.len()
            );
        }
        Inbound::Hello {
            client_id,
            request_id: rid,
        } => {
            assert!(
                is_hello && accepts_hello,
                "HELLO taken when it should not be"
            );
            assert_eq!(rid, request_id);
            if let Ok(id) = client_id {
                assert!(!id.is_empty() && id.len() <= msgi_proto::session::MAX_CLIENT_ID_LEN);
                assert!(!id.bytes().all(|b| b.is_ascii_digit()));
            }
            m.hello_done = true;
        }
        Inbound::Deliver(f) => {
            assert!(kind.is_delivered(), "{kind:?} delivered");
            assert!(!(is_hello && accepts_hello), "a first HELLO was delivered");
            assert_eq!(f.request_id(), request_id);
            m.delivered_any = true;
        }
    }
}

fn check_timers(p: &mut Protocol, m: &mut Model, timers: &Timers, role: Role, now: Instant) {
    // Handle every timer due at `now`; at most a few can be (one of each).
    for round in 0.. {
        let deadline = p.next_deadline();
        if m.draining {
            let expected = m.drain_deadline.flatten();
            assert_eq!(
                deadline, expected,
                "while draining only the drain deadline counts"
            );
        }
        let fired = p.on_timeout(now);
        match deadline {
            Some(d) if d <= now => assert!(fired.is_some(), "deadline {d:?} passed, nothing fired"),
            _ => {
                assert_eq!(fired, None, "fired before its deadline ({deadline:?})");
                return;
            }
        }
        assert!(
            round < 4,
            "timers keep firing at the same instant: {fired:?}"
        );
        match fired {
            Some(Expired::Drain) => {
                assert!(m.draining);
                return; // the driver closes
            }
            Some(Expired::Handshake) => {
                assert!(!m.draining);
                assert_eq!(role, Role::Server);
                assert!(!m.any_frame, "handshake timer after a frame");
                let t = timers.handshake_timeout.expect("a handshake timer");
                assert!(now.duration_since(m.start) >= t);
                return; // the driver closes
            }
            Some(Expired::Idle) => {
                assert!(!m.draining);
                assert_ne!(m.reading, Reading::HeldBack, "idle while holding back");
                let t = timers.idle_timeout.expect("an idle timer");
                assert!(
                    now.saturating_duration_since(m.last_rx) >= t,
                    "idle after {:?} of {t:?}",
                    now.saturating_duration_since(m.last_rx)
                );
                return; // the driver closes
            }
            Some(Expired::Heartbeat) => {
                assert!(!m.draining);
                let t = timers.heartbeat_interval.expect("a heartbeat timer");
                assert!(now.duration_since(m.last_tx) >= t, "heartbeat too early");
                // The driver sends the HEARTBEAT; `on_timeout` recorded it.
                m.last_tx = now;
            }
            None => unreachable!(),
        }
    }
}
