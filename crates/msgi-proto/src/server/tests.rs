//! The server connection's rules on a simulated clock: events in,
//! assertions on what comes out. No socket, no runtime.

use super::*;
use crate::frame::Flags;

const SEC: Duration = Duration::from_secs(1);

fn config() -> Config {
    Config {
        timers: Timers {
            idle_timeout: Some(10 * SEC),
            heartbeat_interval: None,
            handshake_timeout: None,
        },
        max_concurrent_requests: 2,
        max_concurrent_request_bytes: 100,
        drain_timeout: 5 * SEC,
        high_water: 1000,
    }
}

fn conn_with(config: Config, t0: Instant) -> Connection {
    Connection::new(Arc::new(config), true, t0)
}

fn conn(t0: Instant) -> Connection {
    conn_with(config(), t0)
}

/// Hands `frame` in if the connection reads now (nothing queued to write).
fn read(c: &mut Connection, frame: Frame, now: Instant) -> bool {
    match c.poll_read(0, now) {
        Some(permit) => {
            permit.handle_frame(frame, now);
            true
        }
        None => false,
    }
}

/// Reads a request and takes it, as a runtime with a ready service does.
fn request(c: &mut Connection, frame: Frame, now: Instant) -> Token {
    assert!(read(c, frame, now), "the connection must read");
    match c.poll_request() {
        Some(request) => request.token,
        None => panic!("the frame must be a request"),
    }
}

fn transmits(c: &mut Connection) -> Vec<Frame> {
    std::iter::from_fn(|| c.poll_transmit()).collect()
}

fn events(c: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn ok(frame: Frame) -> Result<Option<Frame>, &'static str> {
    Ok(Some(frame))
}

#[test]
fn a_request_is_answered_once_with_its_id() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    let token = request(&mut c, Frame::data("q").with_request_id(7), t0);
    assert_eq!(token.request_id(), Some(7));
    assert_eq!(c.outstanding(), 1);
    assert_eq!(c.outstanding_bytes(), 1);
    // The handler's frame carries no id (or another): the request's wins.
    c.handle_answer(token, ok(Frame::data("a").with_request_id(99)));
    assert_eq!(transmits(&mut c), vec![Frame::data("a").with_request_id(7)]);
    assert_eq!(c.outstanding(), 0);
    assert_eq!(c.outstanding_bytes(), 0);
}

#[test]
fn answers_that_cannot_answer_become_errors_with_the_id() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    for kind in [Kind::PING, Kind::PONG, Kind::HEARTBEAT, Kind::DISCONNECT] {
        let token = request(&mut c, Frame::data("q").with_request_id(1), t0);
        c.handle_answer(token, ok(Frame::new(kind, "x")));
        let out = transmits(&mut c);
        assert_eq!(
            out,
            vec![Frame::error(format!("handler answered with kind {kind}")).with_request_id(1)]
        );
    }
    let reserved = Kind::new(0x0AB).unwrap_or(Kind::PING);
    let token = request(&mut c, Frame::data("q").with_request_id(2), t0);
    c.handle_answer(token, ok(Frame::new(reserved, "x")));
    assert_eq!(transmits(&mut c)[0].kind(), Kind::ERROR);
    // ERROR, DATA, CONTROL and application kinds do answer.
    for kind in [Kind::ERROR, Kind::DATA, Kind::CONTROL, app_kind()] {
        let token = request(&mut c, Frame::data("q").with_request_id(3), t0);
        c.handle_answer(token, ok(Frame::new(kind, "x")));
        assert_eq!(
            transmits(&mut c),
            vec![Frame::new(kind, "x").with_request_id(3)]
        );
    }
}

#[test]
fn no_answer_and_handler_errors_still_answer_a_correlated_request() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    let token = request(&mut c, Frame::data("q").with_request_id(4), t0);
    c.handle_answer(token, Ok::<_, &str>(None));
    assert_eq!(
        transmits(&mut c),
        vec![Frame::error("no response").with_request_id(4)]
    );
    let token = request(&mut c, Frame::data("q").with_request_id(5), t0);
    c.handle_answer(token, Err::<Option<Frame>, _>("database down"));
    assert_eq!(
        transmits(&mut c),
        vec![Frame::error("database down").with_request_id(5)]
    );
}

#[test]
fn one_way_requests_answer_as_they_are_or_not_at_all() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    let token = request(&mut c, Frame::data("q"), t0);
    assert_eq!(token.request_id(), None);
    c.handle_answer(token, Ok::<_, &str>(None));
    assert_eq!(transmits(&mut c), vec![]);
    let token = request(&mut c, Frame::data("q"), t0);
    c.handle_answer(token, ok(Frame::new(Kind::HEARTBEAT, "")));
    assert_eq!(transmits(&mut c), vec![Frame::new(Kind::HEARTBEAT, "")]);
    let token = request(&mut c, Frame::data("q"), t0);
    c.handle_answer(token, Err::<Option<Frame>, _>("failed"));
    assert_eq!(transmits(&mut c), vec![Frame::error("failed")]);
    assert_eq!(c.outstanding(), 0);
}

#[test]
fn a_graceful_close_answers_what_it_received_then_says_disconnect() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    let first = request(&mut c, Frame::data("1").with_request_id(1), t0);
    let second = request(&mut c, Frame::data("2").with_request_id(2), t0);
    c.handle_close(Close::Graceful, t0);
    assert_eq!(c.phase(), Phase::Draining);
    assert!(c.poll_read(0, t0).is_none(), "no reading while draining");
    assert!(
        c.takes_pushes(0),
        "pushes taken before the close still go out"
    );
    assert!(!c.answered_all());
    // Not answered yet: the farewell must wait.
    c.handle_pushes_done(|| Bytes::from_static(b"too early"));
    assert_eq!(c.phase(), Phase::Draining);
    assert_eq!(transmits(&mut c), vec![]);

    c.handle_answer(second, ok(Frame::data("b")));
    assert!(!c.answered_all());
    c.handle_answer(first, ok(Frame::data("a")));
    assert!(c.answered_all());
    c.handle_pushes_done(|| Bytes::from_static(b"server shutdown"));
    assert_eq!(
        transmits(&mut c),
        vec![
            Frame::data("b").with_request_id(2),
            Frame::data("a").with_request_id(1),
            Frame::disconnect("server shutdown"),
        ]
    );
    assert_eq!(c.phase(), Phase::Flushing);
    assert!(!c.takes_pushes(0));

    c.handle_write_closed(t0 + SEC);
    assert_eq!(c.phase(), Phase::Lingering);
    assert_eq!(c.poll_timeout(), Some(t0 + SEC + LINGER));
    c.handle_peer_closed(t0 + SEC);
    let closed = Closed {
        cause: Cause::Local,
        drain_timed_out: false,
        unanswered: 0,
    };
    assert_eq!(c.closed(), Some(closed.clone()));
    // Reported once, and nothing after.
    assert_eq!(events(&mut c), vec![Event::Closed(closed)]);
    assert_eq!(events(&mut c), vec![]);
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn a_drain_the_peer_began_says_nothing_at_its_end() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    let token = request(&mut c, Frame::data("1").with_request_id(1), t0);
    assert!(read(&mut c, Frame::disconnect("bye"), t0));
    assert_eq!(
        events(&mut c),
        vec![Event::Closing {
            cause: Cause::PeerDisconnect("bye".into()),
            drain: true
        }]
    );
    // The runtime's own close, asked now, does not replace the peer's.
    c.handle_close(Close::Graceful, t0);
    c.handle_answer(token, ok(Frame::data("a")));
    c.handle_pushes_done(|| panic!("no farewell after the peer's DISCONNECT"));
    assert_eq!(transmits(&mut c), vec![Frame::data("a").with_request_id(1)]);
    c.handle_write_closed(t0);
    c.handle_peer_closed(t0);
    assert_eq!(
        c.closed(),
        Some(Closed {
            cause: Cause::PeerDisconnect("bye".into()),
            drain_timed_out: false,
            unanswered: 0
        })
    );
}

#[test]
fn end_of_stream_while_open_drains_and_a_half_close_while_draining_changes_nothing() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    let token = request(&mut c, Frame::data("1").with_request_id(1), t0);
    c.handle_peer_closed(t0);
    assert_eq!(
        events(&mut c),
        vec![Event::Closing {
            cause: Cause::PeerClosed,
            drain: true
        }]
    );
    c.handle_peer_closed(t0);
    assert_eq!(c.phase(), Phase::Draining);
    c.handle_answer(token, ok(Frame::data("a")));
    assert_eq!(transmits(&mut c).len(), 1);
}

#[test]
fn end_of_stream_while_a_request_waits_for_the_service_still_answers_it() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    // A request read, the service not ready yet: it waits in the machine.
    assert!(read(&mut c, Frame::data("q").with_request_id(1), t0));
    assert!(c.has_request());
    c.handle_peer_closed(t0);
    assert_eq!(
        events(&mut c),
        vec![Event::Closing {
            cause: Cause::PeerClosed,
            drain: true
        }]
    );
    assert_eq!(c.phase(), Phase::Draining);
    // The drain hands the waiting request to the service ...
    let Some(request) = c.poll_request() else {
        panic!("the waiting request was dropped by the close");
    };
    assert_eq!(c.outstanding(), 1);
    assert!(!c.answered_all());
    c.handle_answer(request.token, ok(Frame::data("a")));
    assert_eq!(transmits(&mut c), vec![Frame::data("a").with_request_id(1)]);
    // ... and ends normally, well before its deadline.
    assert!(c.answered_all());
    c.handle_pushes_done(|| Bytes::from_static(b"bye"));
    assert_eq!(
        transmits(&mut c),
        vec![],
        "a drain the peer began says nothing"
    );
    c.handle_write_closed(t0 + SEC);
    c.handle_peer_closed(t0 + SEC);
    assert_eq!(
        c.closed(),
        Some(Closed {
            cause: Cause::PeerClosed,
            drain_timed_out: false,
            unanswered: 0
        })
    );
}

#[test]
fn end_of_stream_while_a_hello_waits_still_reports_and_welcomes_it() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    assert!(read(
        &mut c,
        Frame::control("HELLO alice").with_request_id(1),
        t0
    ));
    c.handle_peer_closed(t0);
    assert_eq!(
        events(&mut c),
        vec![
            Event::Hello {
                client_id: "alice".into(),
                request_id: Some(1)
            },
            Event::Closing {
                cause: Cause::PeerClosed,
                drain: true
            }
        ]
    );
    c.welcome(Some(1), 7);
    assert_eq!(
        transmits(&mut c),
        vec![Frame::control("WELCOME 7").with_request_id(1)]
    );
}

#[test]
fn the_drain_deadline_cuts_a_close_short_and_says_so() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    let late = request(&mut c, Frame::data("slow").with_request_id(1), t0);
    c.handle_close(Close::Graceful, t0 + SEC);
    assert_eq!(c.poll_timeout(), Some(t0 + 6 * SEC));
    c.handle_timeout(t0 + 5 * SEC);
    assert_eq!(c.phase(), Phase::Draining);
    c.handle_timeout(t0 + 6 * SEC);
    assert_eq!(
        c.closed(),
        Some(Closed {
            cause: Cause::Local,
            drain_timed_out: true,
            unanswered: 1
        })
    );
    // The cut request's late answer is dropped: nothing after the end.
    c.handle_answer(late, ok(Frame::data("late")));
    assert_eq!(transmits(&mut c), vec![]);
    assert_eq!(c.outstanding(), 0);
}

#[test]
fn the_drain_deadline_also_bounds_writing() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    c.handle_close(Close::Graceful, t0);
    c.handle_pushes_done(|| Bytes::from_static(b"bye"));
    assert_eq!(c.phase(), Phase::Flushing);
    // The peer does not read: the flush never ends.
    c.handle_timeout(t0 + 5 * SEC);
    assert_eq!(c.closed().map(|c| c.drain_timed_out), Some(true));
}

#[test]
fn lingering_that_runs_out_is_a_normal_end() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    c.handle_close(Close::Graceful, t0);
    c.handle_pushes_done(|| Bytes::from_static(b"bye"));
    c.handle_write_closed(t0);
    assert!(!c.handle_timeout(t0 + LINGER / 2), "nothing is due yet");
    assert_eq!(c.phase(), Phase::Lingering);
    assert!(c.handle_timeout(t0 + LINGER), "the linger timer fires");
    assert_eq!(
        c.closed(),
        Some(Closed {
            cause: Cause::Local,
            drain_timed_out: false,
            unanswered: 0
        })
    );
    // Lingering ends within the drain deadline, too.
    let mut c = conn_with(
        Config {
            drain_timeout: SEC / 2,
            ..config()
        },
        t0,
    );
    c.handle_close(Close::Graceful, t0);
    c.handle_pushes_done(|| Bytes::from_static(b"bye"));
    c.handle_write_closed(t0);
    assert_eq!(c.poll_timeout(), Some(t0 + SEC / 2));
}

#[test]
fn a_violation_closes_at_once_and_cuts_the_requests_in_flight() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    let token = request(&mut c, Frame::data("1").with_request_id(1), t0);
    assert!(read(
        &mut c,
        Frame::data("z").with_flags(Flags::COMPRESSED),
        t0
    ));
    assert_eq!(
        transmits(&mut c),
        vec![Frame::error("unsupported flags COMPRESSED")]
    );
    let cause = Cause::ProtocolViolation(Violation::Frame, "unsupported flags COMPRESSED".into());
    assert_eq!(
        events(&mut c),
        vec![Event::Closing {
            cause: cause.clone(),
            drain: false
        }]
    );
    assert_eq!(c.phase(), Phase::Flushing);
    // The ERROR is the last frame: a late answer is dropped.
    c.handle_answer(token, ok(Frame::data("late")));
    assert_eq!(transmits(&mut c), vec![]);
    c.handle_write_closed(t0);
    c.handle_peer_closed(t0);
    assert_eq!(
        c.closed(),
        Some(Closed {
            cause,
            drain_timed_out: false,
            unanswered: 1
        })
    );
}

#[test]
fn a_decode_error_is_a_violation_told_with_an_error() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    c.handle_decode_error(&CodecError::BadMagic, t0);
    assert_eq!(transmits(&mut c), vec![Frame::error("bad magic")]);
    assert_eq!(
        events(&mut c),
        vec![Event::Closing {
            cause: Cause::ProtocolViolation(Violation::Framing, "bad magic".into()),
            drain: false
        }]
    );
}

#[test]
fn a_failed_service_cuts_the_waiting_request() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    assert!(read(&mut c, Frame::data("1").with_request_id(1), t0));
    assert!(c.has_request());
    c.handle_service_failed("gone".into(), t0);
    assert!(!c.has_request());
    assert_eq!(transmits(&mut c), vec![Frame::error("service unavailable")]);
    assert_eq!(
        events(&mut c),
        vec![Event::Closing {
            cause: Cause::ServiceFailed("gone".into()),
            drain: false
        }]
    );
    c.handle_peer_reset(std::io::ErrorKind::ConnectionReset);
    assert_eq!(c.closed().map(|c| c.unanswered), Some(1));
}

#[test]
fn a_reset_or_an_abort_ends_at_once_writing_nothing_more() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    let _held = request(&mut c, Frame::data("1").with_request_id(1), t0);
    c.handle_peer_reset(std::io::ErrorKind::ConnectionReset);
    assert_eq!(c.phase(), Phase::Closed);
    assert_eq!(
        c.closed(),
        Some(Closed {
            cause: Cause::PeerReset(std::io::ErrorKind::ConnectionReset),
            drain_timed_out: false,
            unanswered: 1
        })
    );

    // A slow consumer: even frames not yet taken are not written.
    let mut c = conn(t0);
    assert!(read(&mut c, Frame::ping("p"), t0));
    c.handle_close(Close::Abort, t0);
    assert_eq!(transmits(&mut c), vec![]);
    assert_eq!(c.closed().map(|c| c.cause), Some(Cause::Local));
    // An abort overrides a graceful close under way.
    let mut c = conn(t0);
    assert!(read(&mut c, Frame::disconnect("bye"), t0));
    c.handle_close(Close::Abort, t0);
    assert_eq!(c.closed().map(|c| c.cause), Some(Cause::Local));
    // Nothing happens after the end.
    c.handle_peer_reset(std::io::ErrorKind::ConnectionReset);
    assert!(
        !c.handle_timeout(t0 + 100 * SEC),
        "no timer runs once closed"
    );
    assert_eq!(c.closed().map(|c| c.cause), Some(Cause::Local));
    assert!(c.poll_read(0, t0).is_none());
}

#[test]
fn a_reset_while_lingering_is_the_normal_end() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    let token = request(&mut c, Frame::data("1").with_request_id(1), t0);
    c.handle_close(Close::Graceful, t0);
    c.handle_answer(token, ok(Frame::data("a")));
    c.handle_pushes_done(|| Bytes::from_static(b"bye"));
    assert_eq!(transmits(&mut c).len(), 2);
    c.handle_write_closed(t0);
    assert_eq!(c.phase(), Phase::Lingering);
    // The peer resets instead of closing: its last frame was read, so this
    // ends the linger as a close would, not as a failure.
    c.handle_peer_reset(std::io::ErrorKind::ConnectionReset);
    assert_eq!(
        c.closed(),
        Some(Closed {
            cause: Cause::Local,
            drain_timed_out: false,
            unanswered: 0
        })
    );
    assert_eq!(
        events(&mut c),
        vec![Event::Closed(Closed {
            cause: Cause::Local,
            drain_timed_out: false,
            unanswered: 0
        })]
    );
}

#[test]
fn only_delivered_kinds_and_error_can_answer() {
    assert!(can_answer(Kind::DATA));
    assert!(can_answer(Kind::ERROR));
    assert!(can_answer(app_kind()));
    for kind in [Kind::PING, Kind::PONG, Kind::HEARTBEAT, Kind::DISCONNECT] {
        assert!(!can_answer(kind), "{kind}");
    }
}

#[test]
fn a_config_that_would_never_read_is_refused() {
    let timers = config().timers;
    let make =
        |requests, bytes, high_water| Config::new(timers, requests, bytes, 5 * SEC, high_water);
    for (requests, bytes, high_water, setting) in [
        (0, 100, 1000, "max_concurrent_requests"),
        (2, 0, 1000, "max_concurrent_request_bytes"),
        (2, 100, 0, "high_water"),
    ] {
        match make(requests, bytes, high_water) {
            Err(e) => assert_eq!(e.setting(), setting),
            Ok(c) => panic!("{c:?} was taken"),
        }
    }
    if let Ok(too_many) = usize::try_from(u64::from(u32::MAX) + 1) {
        let e = make(too_many, 100, 1000).err();
        assert_eq!(e.map(|e| e.setting()), Some("max_concurrent_requests"));
    }
    let Ok(c) = make(1, 1, 1) else {
        panic!("the smallest limits are taken");
    };
    assert_eq!(
        (
            c.max_concurrent_requests(),
            c.max_concurrent_request_bytes(),
            c.high_water()
        ),
        (1, 1, 1)
    );
    assert_eq!(c.drain_timeout(), 5 * SEC);
    // The smallest limits still read: one request at a time.
    let t0 = Instant::now();
    let mut c = conn_with(c, t0);
    let token = request(&mut c, Frame::data("q").with_request_id(1), t0);
    assert!(c.poll_read(0, t0).is_none());
    c.handle_answer(token, ok(Frame::data("a")));
    assert_eq!(transmits(&mut c).len(), 1);
    assert!(c.poll_read(0, t0).is_some());
}

#[test]
fn reading_stops_and_says_why() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    assert!(c.poll_read(0, t0).is_some());
    assert_eq!(c.reading(), Reading::Open);
    // The peer does not read our output: blocked on it.
    assert!(c.poll_read(1000, t0).is_none());
    assert_eq!(c.reading(), Reading::BlockedOnPeer);
    assert!(c.poll_read(999, t0).is_some());
    // A request waits for the service: held back.
    assert!(read(&mut c, Frame::data("1"), t0));
    assert!(c.poll_read(0, t0).is_none());
    assert_eq!(c.reading(), Reading::HeldBack);
    let first = c.poll_request().map(|r| r.token);
    assert!(c.poll_read(0, t0).is_some());
    // Requests at max_concurrent_requests (2): held back.
    let second = request(&mut c, Frame::data("2"), t0);
    assert!(c.poll_read(0, t0).is_none());
    assert_eq!(c.reading(), Reading::HeldBack);
    // The write queue's level comes first.
    assert!(c.poll_read(5000, t0).is_none());
    assert_eq!(c.reading(), Reading::BlockedOnPeer);
    c.handle_answer(second, Ok::<_, &str>(None));
    assert!(c.poll_read(0, t0).is_some());
    if let Some(first) = first {
        c.handle_answer(first, Ok::<_, &str>(None));
    }
    // Request bytes at max_concurrent_request_bytes (100): held back.
    let big = request(&mut c, Frame::data(vec![0u8; 100]), t0);
    assert_eq!(c.outstanding_bytes(), 100);
    assert!(c.poll_read(0, t0).is_none());
    assert_eq!(c.reading(), Reading::HeldBack);
    c.handle_answer(big, Ok::<_, &str>(None));
    assert!(c.poll_read(0, t0).is_some());
    // A frame waiting to be written: held back until it is taken.
    assert!(read(&mut c, Frame::ping("p"), t0));
    assert!(c.poll_read(0, t0).is_none());
    assert_eq!(transmits(&mut c).len(), 1);
    assert!(c.poll_read(0, t0).is_some());
}

#[test]
fn pushes_are_taken_below_the_high_water_mark_until_the_answers_are_in() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    assert!(c.takes_pushes(999));
    assert!(!c.takes_pushes(1000));
    c.handle_close(Close::Graceful, t0);
    assert!(c.takes_pushes(0));
    c.handle_pushes_done(Bytes::new);
    assert!(!c.takes_pushes(0));
}

#[test]
fn the_idle_clock_stops_while_held_back_and_runs_while_blocked_on_the_peer() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    let _held = request(&mut c, Frame::data("1"), t0);
    let _held2 = request(&mut c, Frame::data("2"), t0);
    assert_eq!(c.poll_timeout(), Some(t0 + 10 * SEC));
    // At the request limit from 1 s: the idle clock stops.
    assert!(c.poll_read(0, t0 + SEC).is_none());
    assert_eq!(c.poll_timeout(), None);
    c.handle_timeout(t0 + 100 * SEC);
    assert_eq!(c.phase(), Phase::Open);
    // Blocked on the peer at 100 s: the clock resumes (1 s used of 10);
    // our writes taken by the peer count as its activity.
    assert!(c.poll_read(1000, t0 + 100 * SEC).is_none());
    assert_eq!(c.poll_timeout(), Some(t0 + 109 * SEC));
    c.handle_written(t0 + 105 * SEC);
    assert_eq!(c.poll_timeout(), Some(t0 + 115 * SEC));
    c.handle_timeout(t0 + 115 * SEC);
    assert_eq!(transmits(&mut c), vec![Frame::disconnect("idle timeout")]);
    assert_eq!(
        events(&mut c),
        vec![Event::Closing {
            cause: Cause::IdleTimeout,
            drain: false
        }]
    );
    assert_eq!(c.poll_timeout(), Some(t0 + 120 * SEC), "the drain deadline");
}

#[test]
fn a_silent_connection_hits_the_handshake_timeout() {
    let t0 = Instant::now();
    let mut c = conn_with(
        Config {
            timers: Timers {
                idle_timeout: None,
                heartbeat_interval: None,
                handshake_timeout: Some(2 * SEC),
            },
            ..config()
        },
        t0,
    );
    c.handle_timeout(t0 + 2 * SEC);
    assert_eq!(
        transmits(&mut c),
        vec![Frame::disconnect("handshake timeout")]
    );
    assert_eq!(
        events(&mut c),
        vec![Event::Closing {
            cause: Cause::HandshakeTimeout,
            drain: false
        }]
    );
}

#[test]
fn a_heartbeat_goes_out_only_when_nothing_else_waits() {
    let t0 = Instant::now();
    let mut c = conn_with(
        Config {
            timers: Timers {
                idle_timeout: None,
                heartbeat_interval: Some(3 * SEC),
                handshake_timeout: None,
            },
            ..config()
        },
        t0,
    );
    assert_eq!(c.poll_timeout(), Some(t0 + 3 * SEC));
    c.handle_timeout(t0 + 3 * SEC);
    // The runtime has not taken it yet: the next beat adds nothing.
    c.handle_timeout(t0 + 6 * SEC);
    c.handle_timeout(t0 + 9 * SEC);
    assert_eq!(transmits(&mut c), vec![Frame::heartbeat()]);
    c.handle_timeout(t0 + 12 * SEC);
    assert_eq!(transmits(&mut c), vec![Frame::heartbeat()]);
    // Writing resets the heartbeat timer.
    c.handle_written(t0 + 14 * SEC);
    assert_eq!(c.poll_timeout(), Some(t0 + 17 * SEC));
}

#[test]
fn hello_is_for_the_runtime_to_register_and_welcome() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    assert!(read(
        &mut c,
        Frame::control("HELLO alice").with_request_id(1),
        t0
    ));
    assert!(!c.has_request());
    assert_eq!(
        events(&mut c),
        vec![Event::Hello {
            client_id: "alice".into(),
            request_id: Some(1)
        }]
    );
    c.welcome(Some(1), 42);
    // One HELLO, one WELCOME.
    c.welcome(Some(1), 42);
    assert_eq!(
        transmits(&mut c),
        vec![Frame::control("WELCOME 42").with_request_id(1)]
    );

    // A runtime that could not register the id refuses it instead: one
    // answer per HELLO all the same.
    let mut c = conn(t0);
    assert!(read(
        &mut c,
        Frame::control("HELLO bob").with_request_id(5),
        t0
    ));
    assert_eq!(events(&mut c).len(), 1);
    c.refuse_client_id(Some(5), "taken elsewhere");
    c.welcome(Some(5), 42);
    c.refuse_client_id(Some(5), "again");
    assert_eq!(
        transmits(&mut c),
        vec![Frame::error("invalid client id: taken elsewhere").with_request_id(5)]
    );

    // An invalid id is refused by the connection itself.
    let mut c = conn(t0);
    assert!(read(
        &mut c,
        Frame::control("HELLO 42").with_request_id(2),
        t0
    ));
    assert_eq!(events(&mut c), vec![]);
    let out = transmits(&mut c);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].kind(), Kind::ERROR);
    assert_eq!(out[0].request_id(), Some(2));
    assert!(out[0].payload_text().starts_with("invalid client id:"));
}

#[test]
fn ping_is_answered_and_peer_errors_are_reported() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    assert!(read(&mut c, Frame::ping("hi").with_request_id(3), t0));
    assert_eq!(
        transmits(&mut c),
        vec![Frame::new(Kind::PONG, "hi").with_request_id(3)]
    );
    assert!(read(&mut c, Frame::error("oops"), t0));
    assert_eq!(
        events(&mut c),
        vec![Event::PeerError(Bytes::from_static(b"oops"))]
    );
    assert!(read(&mut c, Frame::heartbeat(), t0));
    assert!(read(&mut c, Frame::new(Kind::PONG, ""), t0));
    assert_eq!(transmits(&mut c), vec![]);
    assert_eq!(events(&mut c), vec![]);
    assert_eq!(c.outstanding(), 0);
}

#[test]
fn frames_wait_in_order_when_the_runtime_does_not_take_them_at_once() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    assert!(read(&mut c, Frame::control("HELLO bob"), t0));
    assert_eq!(events(&mut c).len(), 1);
    let a = request(&mut c, Frame::data("1").with_request_id(1), t0);
    let b = request(&mut c, Frame::data("2").with_request_id(2), t0);
    c.handle_answer(b, ok(Frame::data("b")));
    c.handle_answer(a, ok(Frame::data("a")));
    c.welcome(Some(3), 1);
    let ids: Vec<_> = transmits(&mut c).iter().map(Frame::request_id).collect();
    assert_eq!(ids, vec![Some(2), Some(1), Some(3)]);
    assert!(c.more.is_none(), "the overflow is freed once empty");
}

/// Property: whatever the peer sends, whenever the handler answers (in any
/// order, with any result), whatever the runtime does and however time
/// moves, the connection never panics, never answers a request twice,
/// ends with every request either answered or reported cut, and holds a
/// bounded number of frames.
mod property {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        /// The peer's next frame, if the connection reads.
        Frame {
            kind: u8,
            len: u8,
            flagged: bool,
        },
        /// The service is ready: take the waiting request.
        Take,
        /// The handler finishes the held request at this index.
        Answer {
            index: u8,
            outcome: u8,
        },
        /// Time passes, then the runtime runs the timers if due.
        Advance {
            millis: u16,
        },
        /// The runtime's write queue holds this many bytes.
        Queued {
            bytes: u16,
        },
        Close {
            graceful: bool,
        },
        PeerClosed,
        PeerReset,
        DecodeError,
        ServiceFailed,
        Written,
        PushesDone,
        WriteClosed,
        /// The runtime takes what waits (it may skip this for a while).
        Drain,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            30 => (any::<u8>(), any::<u8>(), prop::bool::weighted(0.02))
                .prop_map(|(kind, len, flagged)| Step::Frame { kind, len, flagged }),
            20 => Just(Step::Take),
            20 => (any::<u8>(), any::<u8>()).prop_map(|(index, outcome)| Step::Answer { index, outcome }),
            8 => (0u16..8000).prop_map(|millis| Step::Advance { millis }),
            5 => (0u16..1500).prop_map(|bytes| Step::Queued { bytes }),
            2 => any::<bool>().prop_map(|graceful| Step::Close { graceful }),
            2 => Just(Step::PeerClosed),
            1 => Just(Step::PeerReset),
            1 => Just(Step::DecodeError),
            1 => Just(Step::ServiceFailed),
            8 => Just(Step::Written),
            8 => Just(Step::PushesDone),
            6 => Just(Step::WriteClosed),
            20 => Just(Step::Drain),
        ]
    }

    struct Harness {
        c: Connection,
        now: Instant,
        queued: usize,
        next_id: u32,
        held: Vec<Token>,
        /// Request ids the connection took as requests.
        requests: std::collections::HashSet<u32>,
        /// Times each request id was seen in an answer on the wire.
        answered_on_wire: std::collections::HashMap<u32, u32>,
        /// Answers the connection accepted (it was still answering).
        answers_accepted: usize,
        /// Frames taken out since the last drain.
        waiting_out: usize,
        closed: Option<Closed>,
        /// The connection's last frame went out (a DISCONNECT, or an ERROR
        /// without a request id: every request here has one, so such an
        /// ERROR can only be a closing one).
        last_sent: Option<Frame>,
    }

    impl Harness {
        fn frame(&mut self, kind: u8, len: u8, flagged: bool) -> Frame {
            self.next_id += 1;
            let payload = vec![b'x'; usize::from(len)];
            let frame = match kind % 10 {
                0 => Frame::ping(payload),
                1 => Frame::new(Kind::PONG, payload),
                2 => Frame::heartbeat(),
                3 => Frame::error("peer error"),
                4 => Frame::disconnect("bye"),
                5 => Frame::control("HELLO someone"),
                6 => Frame::control("HELLO 12"),
                7 => Frame::new(Kind::new(0x0AB).unwrap_or(Kind::PING), payload),
                _ => Frame::data(payload),
            };
            let frame = frame.with_request_id(self.next_id);
            if flagged {
                frame.with_flags(Flags::ENCRYPTED)
            } else {
                frame
            }
        }

        fn drain(&mut self) {
            let limit = self.c.config().max_concurrent_requests + 4;
            while let Some(frame) = self.c.poll_transmit() {
                self.waiting_out += 1;
                self.on_wire(frame);
            }
            assert!(
                self.waiting_out <= limit,
                "{} frames waited to be written",
                self.waiting_out
            );
            self.waiting_out = 0;
            while let Some(event) = self.c.poll_event() {
                match event {
                    Event::Hello { request_id, .. } => self.c.welcome(request_id, 7),
                    Event::Closed(closed) => {
                        assert!(self.closed.is_none(), "Closed reported twice");
                        self.closed = Some(closed);
                    }
                    Event::PeerError(_) | Event::Closing { .. } => {}
                }
            }
            // Welcome frames, once.
            while let Some(frame) = self.c.poll_transmit() {
                self.on_wire(frame);
            }
        }

        fn on_wire(&mut self, frame: Frame) {
            if let Some(last) = &self.last_sent {
                panic!("{frame:?} went out after the last frame {last:?}");
            }
            if let Some(id) = frame.request_id() {
                let count = self.answered_on_wire.entry(id).or_default();
                *count += 1;
                assert!(*count <= 1, "request id {id} answered {count} times");
            }
            let closing_error = frame.kind() == Kind::ERROR && frame.request_id().is_none();
            if frame.kind() == Kind::DISCONNECT || closing_error {
                self.last_sent = Some(frame);
            }
        }

        fn check(&self) {
            let answered_or_cut =
                self.answers_accepted + self.c.outstanding() + self.c.unanswered();
            assert_eq!(
                answered_or_cut,
                self.requests.len(),
                "every request is answered, outstanding or cut"
            );
            if self.c.phase() == Phase::Closed {
                assert_eq!(self.c.outstanding(), 0);
            }
            if matches!(self.c.phase(), Phase::Open | Phase::Draining) {
                // Counted from the harness's side: the tokens it holds and
                // the request waiting to be taken.
                assert_eq!(
                    self.c.outstanding(),
                    self.held.len() + usize::from(self.c.has_request()),
                    "outstanding counts the tokens out and the waiting request"
                );
            }
        }
    }

    fn run(steps: Vec<Step>) {
        let t0 = Instant::now();
        let config = Config {
            timers: Timers {
                idle_timeout: Some(20 * SEC),
                heartbeat_interval: Some(3 * SEC),
                handshake_timeout: Some(10 * SEC),
            },
            ..config()
        };
        let mut h = Harness {
            c: conn_with(config, t0),
            now: t0,
            queued: 0,
            next_id: 0,
            held: Vec::new(),
            requests: Default::default(),
            answered_on_wire: Default::default(),
            answers_accepted: 0,
            waiting_out: 0,
            closed: None,
            last_sent: None,
        };
        for step in steps {
            let now = h.now;
            match step {
                Step::Frame { kind, len, flagged } => {
                    let frame = h.frame(kind, len, flagged);
                    let id = h.next_id;
                    let queued = h.queued;
                    let (outstanding, bytes) = (h.c.outstanding(), h.c.outstanding_bytes());
                    let cfg = *h.c.config();
                    if let Some(permit) = h.c.poll_read(queued, now) {
                        assert!(outstanding < cfg.max_concurrent_requests);
                        assert!(bytes < cfg.max_concurrent_request_bytes);
                        assert!(queued < cfg.high_water);
                        permit.handle_frame(frame, now);
                        if h.c.has_request() {
                            h.requests.insert(id);
                        }
                    }
                }
                Step::Take => {
                    if let Some(request) = h.c.poll_request() {
                        h.held.push(request.token);
                    }
                }
                Step::Answer { index, outcome } => {
                    if !h.held.is_empty() {
                        let token = h.held.remove(usize::from(index) % h.held.len());
                        let answering = matches!(h.c.phase(), Phase::Open | Phase::Draining);
                        let result = match outcome % 5 {
                            0 => Ok(None),
                            1 => Err("failed"),
                            2 => Ok(Some(Frame::ping("not an answer"))),
                            3 => Ok(Some(Frame::error("no"))),
                            _ => Ok(Some(Frame::data("answer"))),
                        };
                        h.c.handle_answer(token, result);
                        if answering {
                            h.answers_accepted += 1;
                        }
                    }
                }
                Step::Advance { millis } => {
                    h.now += Duration::from_millis(u64::from(millis));
                    if h.c.poll_timeout().is_some_and(|d| d <= h.now) {
                        h.c.handle_timeout(h.now);
                    }
                }
                Step::Queued { bytes } => h.queued = usize::from(bytes),
                Step::Close { graceful } => h.c.handle_close(
                    if graceful {
                        Close::Graceful
                    } else {
                        Close::Abort
                    },
                    now,
                ),
                Step::PeerClosed => h.c.handle_peer_closed(now),
                Step::PeerReset => h.c.handle_peer_reset(std::io::ErrorKind::ConnectionReset),
                Step::DecodeError => h.c.handle_decode_error(&CodecError::BadMagic, now),
                Step::ServiceFailed => h.c.handle_service_failed("down".into(), now),
                Step::Written => h.c.handle_written(now),
                Step::PushesDone => h.c.handle_pushes_done(|| Bytes::from_static(b"bye")),
                Step::WriteClosed => h.c.handle_write_closed(now),
                Step::Drain => h.drain(),
            }
            h.check();
            if h.c.phase() == Phase::Closed {
                let mut out = 0;
                while let Some(frame) = h.c.poll_transmit() {
                    h.on_wire(frame);
                    out += 1;
                }
                assert_eq!(out, 0, "nothing is written after the end");
            }
        }
        // End it: whatever was pending is answered or reported cut.
        h.drain();
        h.c.handle_peer_reset(std::io::ErrorKind::UnexpectedEof);
        h.drain();
        h.check();
        let closed = h.closed.clone().or_else(|| h.c.closed());
        let Some(closed) = closed else {
            panic!("a reset always ends the connection");
        };
        assert_eq!(
            h.answers_accepted + closed.unanswered,
            h.requests.len(),
            "{closed:?}"
        );
        // Answers after the end change nothing.
        for token in std::mem::take(&mut h.held) {
            h.c.handle_answer(token, Ok::<_, &str>(Some(Frame::data("late"))));
        }
        assert!(h.c.poll_transmit().is_none());
        assert_eq!(h.c.closed(), Some(closed));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
        #[test]
        fn any_sequence_keeps_the_invariants(steps in prop::collection::vec(step(), 0..120)) {
            run(steps);
        }
    }
}

fn app_kind() -> Kind {
    Kind::new(Kind::APP_MIN).unwrap_or(Kind::DATA)
}

#[test]
fn has_output_says_whether_a_transmit_or_event_waits() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    assert!(!c.has_output(), "a new connection has nothing");
    let token = request(&mut c, Frame::data("q").with_request_id(1), t0);
    assert!(!c.has_output(), "a request taken leaves nothing to write");
    c.handle_answer(token, ok(Frame::data("a")));
    assert!(c.has_output(), "an answer waits to be written");
    assert_eq!(transmits(&mut c).len(), 1);
    assert!(!c.has_output());
    assert!(read(&mut c, Frame::ping("p"), t0));
    assert!(c.has_output(), "a PONG waits to be written");
    assert_eq!(transmits(&mut c).len(), 1);
    assert!(read(&mut c, Frame::error("bad"), t0));
    assert!(c.has_output(), "a peer error waits to be reported");
    assert_eq!(events(&mut c).len(), 1);
    assert!(!c.has_output());
    c.handle_peer_reset(std::io::ErrorKind::ConnectionReset);
    assert!(c.has_output(), "the close waits to be reported");
    assert_eq!(events(&mut c).len(), 1);
    assert!(!c.has_output(), "reported once");
}

#[test]
fn take_answer_hands_the_answer_back_only_when_nothing_waits_before_it() {
    let t0 = Instant::now();
    let mut c = conn(t0);
    let first = request(&mut c, Frame::data("1").with_request_id(1), t0);
    let second = request(&mut c, Frame::data("2").with_request_id(2), t0);
    // The first answer waits in the transmit queue: the second goes behind it.
    c.handle_answer(first, ok(Frame::data("a")));
    assert_eq!(c.take_answer(second, ok(Frame::data("b"))), None);
    assert_eq!(
        transmits(&mut c),
        vec![
            Frame::data("a").with_request_id(1),
            Frame::data("b").with_request_id(2)
        ]
    );
    // Nothing waits: handed back, by the same rules, and counted as answered.
    let third = request(&mut c, Frame::data("3").with_request_id(3), t0);
    assert_eq!(
        c.take_answer(third, Ok::<_, &str>(None)),
        Some(Frame::error("no response").with_request_id(3))
    );
    assert_eq!(transmits(&mut c), vec![]);
    assert_eq!(c.outstanding(), 0);
    assert_eq!(c.outstanding_bytes(), 0);
    // A one-way request's `None` sends nothing; after a cut, nothing either.
    let one_way = request(&mut c, Frame::data("4"), t0);
    assert_eq!(c.take_answer(one_way, Ok::<_, &str>(None)), None);
    let cut = request(&mut c, Frame::data("5").with_request_id(5), t0);
    c.handle_peer_reset(std::io::ErrorKind::ConnectionReset);
    assert_eq!(c.take_answer(cut, ok(Frame::data("late"))), None);
    assert_eq!(c.closed().map(|closed| closed.unanswered), Some(1));
}
