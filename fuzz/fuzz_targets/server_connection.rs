//! The sans-IO server connection state machine
//! (`msgi_proto::server::Connection`) driven by arbitrary event sequences as
//! msgi's session driver drives it: frames read (only through a
//! `ReadPermit`; any kind, flags, id, HELLOs) with any write-queue depth,
//! requests taken by the service, answered in any order with a frame of any
//! kind, `None` or an error, or never; WELCOME; graceful and abortive
//! closes, the peer closing or resetting, undecodable bytes, a failing
//! service; writes, pushes done, write side closed; time, by huge steps too.
//!
//! Checks: never panics; every request let in is answered, outstanding or
//! counted as cut (`unanswered`), and the count reported at the close is
//! exactly the requests never answered; a close that drains (the peer's
//! DISCONNECT or end of stream, a graceful close) and ends within its
//! deadline leaves none unanswered; one `handle_answer` makes at most one
//! frame with its request id; nothing is written after the closing frame
//! or once closed; requests in flight stay within `max_concurrent_requests`
//! (+ the one read at the limit) and the frames queued within the documented
//! bound; a due timer is consumed.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use msgi_proto::server::{Cause, Close, Config, Connection, Event, Phase, Request};
use msgi_proto::session::Timers;
use msgi_proto::{Flags, Frame, Kind};

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Span {
    Millis(u16),
    Secs(u16),
    Huge(u64),
}

impl Span {
    fn get(self) -> Duration {
        match self {
            Span::Millis(n) => Duration::from_millis(u64::from(n)),
            Span::Secs(n) => Duration::from_secs(u64::from(n)),
            Span::Huge(n) => Duration::from_secs(n),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Answer {
    Frame { kind: u16, payload: Vec<u8> },
    Nothing,
    Error,
}

#[derive(Arbitrary, Debug)]
enum Ev {
    Read {
        kind: u16,
        flags: u8,
        id: Option<u32>,
        payload: Vec<u8>,
        queued: u16,
    },
    Hello {
        id: Vec<u8>,
        request_id: Option<u32>,
        queued: u16,
    },
    Take,
    Answer {
        which: u8,
        answer: Answer,
    },
    Welcome,
    Graceful,
    Abort,
    PeerClosed,
    PeerReset,
    DecodeError,
    ServiceFailed,
    Written,
    PushesDone,
    WriteClosed,
    Transmit,
    Advance(Span),
    Timeout,
}

#[derive(Arbitrary, Debug)]
struct Input {
    binary: bool,
    idle: Option<u16>,
    heartbeat: Option<u16>,
    handshake: Option<u16>,
    max_requests: u8,
    max_bytes: u16,
    drain_ms: u16,
    high_water: u16,
    events: Vec<Ev>,
}

fn ms(n: Option<u16>) -> Option<Duration> {
    n.map(|n| Duration::from_millis(u64::from(n).max(1)))
}

struct Harness {
    /// Requests the service holds.
    service: Vec<Request>,
    /// Requests let in (handed to the service or waiting for it).
    let_in: usize,
    /// Answers given while the connection still counted them.
    answered: usize,
    /// A pending HELLO's request id, for `welcome`.
    hello: Option<Option<u32>>,
    /// The machine wrote its closing frame (or closed).
    last_written: bool,
    aborted: bool,
    closed: bool,
    max_requests: usize,
    max_bytes: usize,
    largest_payload: usize,
}

impl Harness {
    fn transmit(&mut self, conn: &mut Connection) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(frame) = conn.poll_transmit() {
            assert!(!self.closed, "a frame written after the close: {frame:?}");
            assert!(
                !self.last_written,
                "a frame written after the closing frame: {frame:?}"
            );
            out.push(frame);
        }
        // Past draining, what was queued ends with the closing frame.
        if !matches!(conn.phase(), Phase::Open | Phase::Draining) {
            self.last_written = true;
        }
        // Answers, PONGs/ERRORs, a HEARTBEAT, WELCOME, the closing frame.
        assert!(
            out.len() <= self.max_requests + 1 + 4,
            "{} frames queued at once (limit {} requests)",
            out.len(),
            self.max_requests
        );
        out
    }

    fn events(&mut self, conn: &mut Connection) {
        while let Some(event) = conn.poll_event() {
            match event {
                Event::Hello { request_id, .. } => self.hello = Some(request_id),
                Event::PeerError(_) => {}
                Event::Closing { .. } => {}
                Event::Closed(closed) => {
                    assert!(!self.closed, "closed reported twice");
                    self.closed = true;
                    assert_eq!(
                        closed.unanswered,
                        self.let_in - self.answered,
                        "the close counts the requests never answered"
                    );
                    let drained =
                        matches!(closed.cause, Cause::PeerDisconnect(_) | Cause::PeerClosed)
                            || (closed.cause == Cause::Local && !self.aborted);
                    if drained && !closed.drain_timed_out {
                        assert_eq!(
                            closed.unanswered, 0,
                            "a drain that ended in time cut requests: {closed:?}"
                        );
                    }
                }
                // Event is non_exhaustive: a later event is not checked here.
                _ => {}
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let max_requests = usize::from(input.max_requests % 16) + 1;
    let max_bytes = usize::from(input.max_bytes) + 1;
    // Every limit is at least 1: Config::new takes it.
    let Ok(config) = Config::new(
        Timers {
            idle_timeout: ms(input.idle),
            heartbeat_interval: ms(input.heartbeat),
            handshake_timeout: ms(input.handshake),
        },
        max_requests,
        max_bytes,
        Duration::from_millis(u64::from(input.drain_ms).max(1)),
        usize::from(input.high_water) + 1,
    ) else {
        return;
    };
    let config = Arc::new(config);
    let mut now = Instant::now();
    let mut conn = Connection::new(config, input.binary, now);
    let mut h = Harness {
        service: Vec::new(),
        let_in: 0,
        answered: 0,
        hello: None,
        last_written: false,
        aborted: false,
        closed: false,
        max_requests,
        max_bytes,
        largest_payload: 0,
    };
    for ev in input.events {
        match ev {
            Ev::Read {
                kind,
                flags,
                id,
                payload,
                queued,
            } => {
                let kind = Kind::new(kind & Kind::MAX).unwrap_or(Kind::DATA);
                let flags = Flags::from_bits_truncate(u16::from(flags) << 12);
                let mut frame = Frame::new(kind, payload).with_flags(flags);
                frame.set_request_id(id);
                read(&mut conn, &mut h, frame, usize::from(queued), now);
            }
            Ev::Hello {
                id,
                request_id,
                queued,
            } => {
                let mut frame = msgi_proto::session::hello_frame("");
                let mut payload = frame.payload().to_vec();
                payload.extend_from_slice(&id);
                *frame.payload_mut() = payload.into();
                frame.set_request_id(request_id);
                read(&mut conn, &mut h, frame, usize::from(queued), now);
            }
            Ev::Take => {
                if let Some(request) = conn.poll_request() {
                    h.service.push(request);
                }
            }
            Ev::Answer { which, answer } => {
                if !h.service.is_empty() {
                    let i = usize::from(which) % h.service.len();
                    let request = h.service.swap_remove(i);
                    let id = request.token.request_id();
                    let counted = matches!(conn.phase(), Phase::Open | Phase::Draining);
                    let result: Result<Option<Frame>, &str> = match answer {
                        Answer::Frame { kind, payload } => {
                            let kind = Kind::new(kind & Kind::MAX).unwrap_or(Kind::DATA);
                            Ok(Some(Frame::new(kind, payload)))
                        }
                        Answer::Nothing => Ok(None),
                        Answer::Error => Err("handler failed"),
                    };
                    // What was queued before goes out first, so `out` below
                    // holds only what this answer made.
                    h.transmit(&mut conn);
                    let outstanding = conn.outstanding();
                    conn.handle_answer(request.token, result);
                    if counted {
                        h.answered += 1;
                        assert_eq!(conn.outstanding() + 1, outstanding);
                    }
                    let out = h.transmit(&mut conn);
                    if let Some(id) = id {
                        let answers = out.iter().filter(|f| f.request_id() == Some(id)).count();
                        assert!(
                            answers <= 1,
                            "one answer made {answers} frames with id {id}"
                        );
                        if counted {
                            assert_eq!(answers, 1, "a correlated request got no answer");
                        }
                    }
                }
            }
            Ev::Welcome => {
                if let Some(rid) = h.hello.take() {
                    conn.welcome(rid, 1);
                }
            }
            Ev::Graceful => conn.handle_close(Close::Graceful, now),
            Ev::Abort => {
                if conn.phase() != Phase::Closed {
                    h.aborted = true;
                }
                conn.handle_close(Close::Abort, now)
            }
            Ev::PeerClosed => conn.handle_peer_closed(now),
            Ev::PeerReset => conn.handle_peer_reset(std::io::ErrorKind::ConnectionReset),
            Ev::DecodeError => conn.handle_decode_error(&msgi_proto::CodecError::BadMagic, now),
            Ev::ServiceFailed => conn.handle_service_failed("down".into(), now),
            Ev::Written => conn.handle_written(now),
            Ev::PushesDone => conn.handle_pushes_done(|| Bytes::from_static(b"bye")),
            Ev::WriteClosed => conn.handle_write_closed(now),
            Ev::Transmit => {
                h.transmit(&mut conn);
            }
            Ev::Advance(span) => now = now.checked_add(span.get()).unwrap_or(now),
            Ev::Timeout => {
                for round in 0.. {
                    match conn.poll_timeout() {
                        Some(t) if t <= now => {
                            assert!(round < 8, "timers keep firing at the same instant");
                            conn.handle_timeout(now);
                            h.transmit(&mut conn);
                        }
                        _ => break,
                    }
                }
            }
        }
        h.events(&mut conn);
        assert_eq!(
            h.let_in,
            h.answered + conn.outstanding() + conn.unanswered(),
            "requests let in = answered + outstanding + cut"
        );
        assert!(
            conn.outstanding() <= h.max_requests + 1,
            "{} requests in flight",
            conn.outstanding()
        );
        assert!(
            conn.outstanding_bytes() <= h.max_bytes + h.largest_payload,
            "{} request bytes in flight",
            conn.outstanding_bytes()
        );
        if conn.phase() == Phase::Closed {
            assert!(conn.poll_transmit().is_none());
            assert!(conn.poll_timeout().is_none());
            assert!(conn.poll_read(0, now).is_none());
        }
    }
});

fn read(conn: &mut Connection, h: &mut Harness, frame: Frame, queued: usize, now: Instant) {
    let payload = frame.payload().len();
    let Some(permit) = conn.poll_read(queued, now) else {
        return;
    };
    permit.handle_frame(frame, now);
    if conn.has_request() {
        h.let_in += 1;
        h.largest_payload = h.largest_payload.max(payload);
    }
}
