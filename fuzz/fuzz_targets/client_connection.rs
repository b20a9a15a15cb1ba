//! The sans-IO client state machine (`msgi_proto::client::Connection`)
//! driven by arbitrary event sequences as its tokio driver would drive it:
//! transports come and go (lost, end of stream, undecodable bytes), the
//! application sends, calls, abandons calls, closes, aborts or drops every
//! handle, the server's frames arrive (WELCOME, answers to pending ids,
//! made-up ids, pushes, PINGs, ERRORs, DISCONNECT, any kind and flags), bytes
//! are written in any amounts, and time advances, by huge steps too.
//!
//! Checks: never panics; every call is answered exactly once, or dropped
//! only after its caller gave up (a caller dropped unanswered and not
//! abandoned is a finding, also when the client closes); an answer carries
//! the request id its call was written with, and no two pending calls share
//! an id (nor use the handshake's); the write queue stays within its bound
//! while the driver respects `accepts_work`/`may_read`; a timer due is
//! consumed (`poll_timeout` is never in the past after `handle_timeout`).
#![no_main]

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use msgi_proto::client::{Caller, Config, Connection, ConnectionError, Event, Phase, HANDSHAKE_ID};
use msgi_proto::session::Timers;
use msgi_proto::{CodecError, Flags, Frame, FrameCodec, Framing, Kind};

/// Shared by the harness and its callers.
#[derive(Default)]
struct Book {
    /// Callers dropped without an answer while not abandoned.
    lost: RefCell<Vec<u64>>,
    /// Whether dropping an unanswered caller is a finding (off while the
    /// harness drops a connection that is not closed).
    strict: Cell<bool>,
}

struct Call {
    id: u64,
    abandoned: Rc<Cell<bool>>,
    answered: bool,
    book: Rc<Book>,
}

impl Caller for Call {
    fn is_abandoned(&self) -> bool {
        self.abandoned.get()
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.answered && !self.abandoned.get() && self.book.strict.get() {
            self.book.lost.borrow_mut().push(self.id);
        }
    }
}

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
enum Id {
    None,
    Handshake,
    /// The id of the n-th call pending on the transport.
    Pending(u8),
    Any(u32),
}

#[derive(Arbitrary, Debug)]
enum Ev {
    Connect {
        handshake_deadline: Option<Span>,
    },
    Lost,
    EndOfStream,
    DecodeError,
    Send {
        payload: Vec<u8>,
    },
    Call {
        payload: Vec<u8>,
        deadline: Option<Span>,
    },
    Abandon(u8),
    Abandoned,
    HandlesGone,
    Close,
    Abort,
    Transmit,
    Written(u16),
    Flushed,
    Welcome,
    Server {
        kind: u16,
        flags: u8,
        id: Id,
        payload: Vec<u8>,
    },
    Advance(Span),
    Timeout,
    TakeUnsent,
}

#[derive(Arbitrary, Debug)]
struct Input {
    client_id: bool,
    binary: bool,
    idle: Option<u16>,
    heartbeat: Option<u16>,
    queue_timeout: Option<u16>,
    close_linger: Option<u16>,
    early_frames: u8,
    early_bytes: u16,
    high_water: u16,
    held_sends: u8,
    max_frame: u16,
    events: Vec<Ev>,
}

/// Calls the driver lets in flight at once (the client's call limit).
const MAX_CALLS: usize = 16;

struct Harness {
    book: Rc<Book>,
    codec: FrameCodec,
    wire: BytesMut,
    /// Request id -> call id, for calls written on the current transport
    /// and not yet answered.
    pending: HashMap<u32, u64>,
    /// Call ids written on the current transport (with their request id).
    written: HashMap<u64, u32>,
    /// Calls made and not answered yet: id -> abandoned flag.
    live: HashMap<u64, Rc<Cell<bool>>>,
    answered: HashSet<u64>,
    /// Calls whose caller gave up, not yet forgotten by `handle_abandoned`.
    abandoned: HashSet<u64>,
    next_call: u64,
    max_frame: usize,
    high_water: usize,
}

fn call_id(frame: &Frame) -> Option<u64> {
    let p = frame.payload().get(..8)?;
    Some(u64::from_be_bytes(p.try_into().ok()?))
}

impl Harness {
    fn transmit(&mut self, conn: &mut Connection<Call>, now: Instant) {
        let codec = &mut self.codec;
        let wire = &mut self.wire;
        let mut encoded = Vec::new();
        conn.poll_transmit(now, |frame: Frame| -> Result<usize, CodecError> {
            let before = wire.len();
            let meta = (frame.request_id(), frame.kind(), call_id(&frame));
            codec.encode(frame, wire)?;
            encoded.push(meta);
            Ok(wire.len() - before)
        });
        for (rid, kind, cid) in encoded {
            let Some(rid) = rid else { continue };
            if kind == Kind::CONTROL && rid == HANDSHAKE_ID {
                continue; // HELLO
            }
            if kind != Kind::DATA {
                continue; // a PONG or an ERROR keeps the server's id
            }
            let Some(cid) = cid else { continue };
            assert_ne!(rid, HANDSHAKE_ID, "a call took the handshake's id");
            assert!(
                !self.pending.contains_key(&rid),
                "request id {rid} given to two pending calls"
            );
            self.pending.insert(rid, cid);
            self.written.insert(cid, rid);
        }
        // Only the bytes of the current transport are kept.
        if self.wire.len() > 1 << 20 {
            self.wire.clear();
        }
    }

    fn events(&mut self, conn: &mut Connection<Call>) {
        while let Some(event) = conn.poll_event() {
            match event {
                Event::Answer(mut caller, result) => {
                    caller.answered = true;
                    assert!(
                        self.answered.insert(caller.id),
                        "call {} answered twice",
                        caller.id
                    );
                    self.live.remove(&caller.id);
                    if let Some(rid) = self.written.remove(&caller.id) {
                        self.pending.remove(&rid);
                        if let Ok(frame) = &result {
                            assert_eq!(frame.request_id(), Some(rid), "answer to another id");
                        }
                    } else {
                        assert!(result.is_err(), "a call never written got an answer frame");
                    }
                }
                Event::Lost(_) | Event::Closed => {
                    // Calls written on the transport were all answered (failed).
                    self.pending.clear();
                    self.written.retain(|cid, _| self.live.contains_key(cid));
                    self.wire.clear();
                }
                Event::Connected
                | Event::Push(_)
                | Event::LateAnswer { .. }
                | Event::Unsendable(_) => {}
                _ => {}
            }
        }
    }
}

fn ms(n: Option<u16>) -> Option<Duration> {
    n.map(|n| Duration::from_millis(u64::from(n).max(1)))
}

fuzz_target!(|input: Input| {
    let book = Rc::new(Book::default());
    book.strict.set(true);
    let max_frame = 64 + usize::from(input.max_frame);
    let high_water = 64 + usize::from(input.high_water);
    let Ok(config) = Config::builder()
        .timers(Timers {
            idle_timeout: ms(input.idle),
            heartbeat_interval: ms(input.heartbeat),
            handshake_timeout: None,
        })
        .binary(input.binary)
        .client_id(input.client_id.then(|| "fuzz".to_owned()))
        .early_frames(usize::from(input.early_frames))
        .early_bytes(usize::from(input.early_bytes))
        .high_water(high_water)
        .held_sends(usize::from(input.held_sends).max(1))
        .queue_timeout(ms(input.queue_timeout))
        .close_linger(ms(input.close_linger))
        .build()
    else {
        return;
    };
    let mut now = Instant::now();
    let mut conn: Connection<Call> = Connection::new(config, now);
    let mut h = Harness {
        book: book.clone(),
        codec: FrameCodec::with_max_frame_size(max_frame),
        wire: BytesMut::new(),
        pending: HashMap::new(),
        written: HashMap::new(),
        live: HashMap::new(),
        answered: HashSet::new(),
        abandoned: HashSet::new(),
        next_call: 0,
        max_frame,
        high_water,
    };
    for ev in input.events {
        match ev {
            Ev::Connect { handshake_deadline } => {
                let d = handshake_deadline.and_then(|s| now.checked_add(s.get()));
                conn.handle_connected(now, d);
            }
            Ev::Lost => conn.handle_connection_lost(ConnectionError::Transport("fuzz".into()), now),
            Ev::EndOfStream => conn.handle_end_of_stream(now),
            Ev::DecodeError => conn.handle_decode_error(CodecError::BadMagic, now),
            Ev::Send { payload } => {
                if conn.accepts_work() {
                    conn.send(Frame::data(payload), now);
                }
            }
            Ev::Call { payload, deadline } => {
                if h.live.len() < MAX_CALLS {
                    let id = h.next_call;
                    h.next_call += 1;
                    let mut p = id.to_be_bytes().to_vec();
                    p.extend_from_slice(&payload);
                    let abandoned = Rc::new(Cell::new(false));
                    h.live.insert(id, abandoned.clone());
                    let caller = Call {
                        id,
                        abandoned,
                        answered: false,
                        book: h.book.clone(),
                    };
                    let d = deadline.and_then(|s| now.checked_add(s.get()));
                    conn.call(Frame::data(p), caller, d, now);
                }
            }
            Ev::Abandon(n) => {
                let mut ids: Vec<u64> = h.live.keys().copied().collect();
                ids.sort_unstable();
                if !ids.is_empty() {
                    let id = ids[usize::from(n) % ids.len()];
                    if let Some(flag) = h.live.remove(&id) {
                        flag.set(true);
                    }
                    h.abandoned.insert(id);
                }
            }
            Ev::Abandoned => {
                conn.handle_abandoned(now);
                // Forgotten: their ids are free again.
                for id in h.abandoned.drain() {
                    if let Some(rid) = h.written.remove(&id) {
                        h.pending.remove(&rid);
                    }
                }
            }
            Ev::HandlesGone => conn.handle_handles_gone(now),
            Ev::Close => conn.close(now),
            Ev::Abort => conn.abort(now),
            Ev::Transmit => h.transmit(&mut conn, now),
            Ev::Written(n) => {
                let n = usize::from(n).min(conn.pending_bytes());
                conn.handle_written(n, now);
            }
            Ev::Flushed => {
                conn.handle_written(conn.pending_bytes(), now);
                conn.handle_flushed(now);
            }
            Ev::Welcome => {
                if conn.may_read() {
                    let f = Frame::control("WELCOME 1").with_request_id(HANDSHAKE_ID);
                    conn.handle_frame(f, now);
                }
            }
            Ev::Server {
                kind,
                flags,
                id,
                payload,
            } => {
                if conn.may_read() {
                    let kind = Kind::new(kind & Kind::MAX).unwrap_or(Kind::DATA);
                    let flags = Flags::from_bits_truncate(u16::from(flags) << 12);
                    let mut f = Frame::new(kind, payload).with_flags(flags);
                    let mut ids: Vec<u32> = h.pending.keys().copied().collect();
                    ids.sort_unstable();
                    f.set_request_id(match id {
                        Id::None => None,
                        Id::Handshake => Some(HANDSHAKE_ID),
                        Id::Pending(n) if !ids.is_empty() => Some(ids[usize::from(n) % ids.len()]),
                        Id::Pending(n) => Some(u32::from(n)),
                        Id::Any(n) => Some(n),
                    });
                    conn.handle_frame(f, now);
                }
            }
            Ev::Advance(span) => now = now.checked_add(span.get()).unwrap_or(now),
            Ev::Timeout => {
                for round in 0.. {
                    match conn.poll_timeout() {
                        Some(t) if t <= now => {
                            assert!(round < 8, "timers keep firing at {now:?}");
                            conn.handle_timeout(now);
                            h.events(&mut conn);
                            // A HEARTBEAT is written before the next check.
                            h.transmit(&mut conn, now);
                        }
                        _ => break,
                    }
                }
            }
            Ev::TakeUnsent => {
                let _ = conn.take_unsent();
            }
        }
        h.events(&mut conn);
        let lost = std::mem::take(&mut *book.lost.borrow_mut());
        assert!(lost.is_empty(), "calls {lost:?} dropped without an answer");
        // The write queue: below twice the high-water mark when a frame is
        // read, so at most that plus what one wake-up encodes (a reply, a
        // held item, a HEARTBEAT, DISCONNECT, an ERROR).
        assert!(
            conn.pending_bytes() <= 2 * h.high_water + 5 * h.max_frame,
            "{} bytes queued (high water {})",
            conn.pending_bytes(),
            h.high_water
        );
    }
    // At the end: a closed client owes nothing; one still running is just
    // dropped by its driver.
    let closed = conn.phase() == Phase::Closed;
    book.strict.set(closed);
    if closed {
        assert_eq!(conn.pending_calls(), 0);
    }
    drop(conn);
    let lost = std::mem::take(&mut *book.lost.borrow_mut());
    assert!(
        lost.is_empty(),
        "calls {lost:?} left unanswered by a closed client"
    );
    book.strict.set(false);
    drop(h);
});
