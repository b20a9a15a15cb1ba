//! A server connection closing gracefully hands on the complete frames the
//! runtime had already read (`Close::GracefulHandingOnRead`), under the
//! same limits as reading, on a simulated clock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use msgi_proto::server::{Close, Config, Connection, Phase, Token};
use msgi_proto::session::Timers;
use msgi_proto::{Frame, Kind};

fn conn(now: Instant) -> Connection {
    let timers = Timers {
        idle_timeout: None,
        heartbeat_interval: None,
        handshake_timeout: None,
    };
    let config = Config::new(timers, 2, 1 << 20, Duration::from_secs(5), 64 << 10).unwrap();
    Connection::new(Arc::new(config), true, now)
}

/// Hands in a frame the runtime read before the close; false if refused now.
fn buffered(c: &mut Connection, frame: Frame, now: Instant) -> bool {
    match c.poll_read_buffered(0) {
        Some(permit) => {
            permit.handle_frame(frame, now);
            true
        }
        None => false,
    }
}

fn take(c: &mut Connection) -> Token {
    c.poll_request().expect("a request").token
}

fn answer(c: &mut Connection, token: Token) {
    c.handle_answer(token, Ok::<_, &str>(None));
}

#[test]
fn frames_read_before_the_close_are_handed_on_under_the_limits() {
    let now = Instant::now();
    let mut c = conn(now);
    c.poll_read(0, now)
        .unwrap()
        .handle_frame(Frame::data("0"), now);
    let t0 = take(&mut c);
    c.handle_close(Close::GracefulHandingOnRead, now);
    assert_eq!(c.phase(), Phase::Draining);
    assert!(c.poll_read(0, now).is_none(), "nothing more from the peer");
    assert!(buffered(&mut c, Frame::data("1"), now));
    let t1 = take(&mut c);
    // Two requests out: at the limit, as when reading.
    assert!(c.poll_read_buffered(0).is_none());
    assert!(!c.answered_all(), "frames may still be buffered");
    answer(&mut c, t0);
    assert!(buffered(&mut c, Frame::data("2"), now));
    let t2 = take(&mut c);
    answer(&mut c, t1);
    answer(&mut c, t2);
    assert!(
        !c.answered_all(),
        "the runtime has not said it holds no more"
    );
    c.handle_buffered_done();
    assert!(c.poll_read_buffered(0).is_none());
    assert!(c.answered_all());
    c.handle_pushes_done(|| "server shutdown".into());
    assert_eq!(
        c.poll_transmit(),
        Some(Frame::disconnect("server shutdown"))
    );
}

#[test]
fn a_ping_is_answered_and_a_disconnect_ends_the_buffered_frames() {
    let now = Instant::now();
    let mut c = conn(now);
    c.handle_close(Close::GracefulHandingOnRead, now);
    assert!(buffered(&mut c, Frame::ping("p"), now));
    let pong = c.poll_transmit().expect("a PONG");
    assert_eq!(pong.kind(), Kind::PONG);
    assert!(buffered(&mut c, Frame::disconnect("bye"), now));
    assert!(!c.takes_buffered(), "nothing after the peer's DISCONNECT");
    assert!(c.answered_all());
    // Our close goes on as it began: the farewell is still said.
    c.handle_pushes_done(|| "server shutdown".into());
    assert_eq!(
        c.poll_transmit(),
        Some(Frame::disconnect("server shutdown"))
    );
}

#[test]
fn a_plain_graceful_close_takes_nothing_buffered() {
    let now = Instant::now();
    let mut c = conn(now);
    c.handle_close(Close::Graceful, now);
    assert!(!c.takes_buffered());
    assert!(c.poll_read_buffered(0).is_none());
    assert!(c.answered_all());
}
