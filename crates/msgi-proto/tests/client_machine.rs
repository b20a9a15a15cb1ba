//! The client state machine against the server-side session rules, in
//! memory on a simulated clock: bytes move only when a test says so.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use msgi_proto::client::{
    CallError, Caller, Config, ConfigBuilder, Connection, ConnectionError, Event, Phase, Violation,
};
use msgi_proto::session::{Inbound, Protocol, Role, Timers, WELCOME_PREFIX};
use msgi_proto::{Frame, FrameCodec, Framing, Kind};
use proptest::prelude::*;

const SEC: Duration = Duration::from_secs(1);

/// A caller: its number, and whether it gave up.
struct Call {
    n: usize,
    gone: Rc<Cell<bool>>,
}

impl Caller for Call {
    fn is_abandoned(&self) -> bool {
        self.gone.get()
    }
}

/// What the server does with a delivered frame.
type Handler = fn(&Frame) -> Option<Frame>;

fn echo(frame: &Frame) -> Option<Frame> {
    frame
        .request_id()
        .map(|_| frame.reply(Kind::DATA, frame.payload().clone()))
}

/// A client machine, a server `Protocol`, and the bytes between them.
struct Pair {
    now: Instant,
    client: Connection<Call>,
    client_codec: FrameCodec,
    /// The client's write queue, not yet written.
    write_queue: BytesMut,
    /// Written by the client, not yet read by the server.
    to_server: BytesMut,
    server: Option<Protocol>,
    server_codec: FrameCodec,
    to_client: BytesMut,
    /// Frames the server received (after the session rules).
    server_got: Vec<Frame>,
    handler: Handler,
    welcome: bool,
    results: HashMap<usize, Vec<Result<Frame, CallError>>>,
    gone: HashMap<usize, Rc<Cell<bool>>>,
    next_call: usize,
    pushes: Vec<Frame>,
    late: Vec<u32>,
    lost: Vec<ConnectionError>,
    connected: usize,
    closed: usize,
}

fn settings() -> ConfigBuilder {
    Config::builder()
        .timers(Timers {
            idle_timeout: Some(10 * SEC),
            heartbeat_interval: Some(3 * SEC),
            handshake_timeout: None,
        })
        .client_id(Some("alice".into()))
        .early_frames(4)
        .early_bytes(1000)
        .high_water(64)
        .held_sends(8)
        .queue_timeout(Some(5 * SEC))
        .close_linger(Some(2 * SEC))
}

fn config() -> Config {
    settings().build().unwrap_or_else(|e| panic!("{e}"))
}

fn build(settings: ConfigBuilder) -> Config {
    settings.build().unwrap_or_else(|e| panic!("{e}"))
}

impl Pair {
    fn new(config: Config) -> Pair {
        let now = Instant::now();
        Pair {
            now,
            client: Connection::new(config, now),
            client_codec: FrameCodec::new(),
            write_queue: BytesMut::new(),
            to_server: BytesMut::new(),
            server: None,
            server_codec: FrameCodec::new(),
            to_client: BytesMut::new(),
            server_got: Vec::new(),
            handler: echo,
            welcome: true,
            results: HashMap::new(),
            gone: HashMap::new(),
            next_call: 0,
            pushes: Vec::new(),
            late: Vec::new(),
            lost: Vec::new(),
            connected: 0,
            closed: 0,
        }
    }

    /// A new transport: fresh buffers and a fresh server session.
    fn connect(&mut self) {
        self.write_queue.clear();
        self.to_server.clear();
        self.to_client.clear();
        self.server = Some(Protocol::new(
            Role::Server,
            Timers {
                idle_timeout: None,
                heartbeat_interval: None,
                handshake_timeout: None,
            },
            true,
            self.now,
        ));
        self.client
            .handle_connected(self.now, self.now.checked_add(4 * SEC));
        self.events();
    }

    fn call(&mut self, frame: Frame) -> usize {
        let n = self.next_call;
        self.next_call += 1;
        let gone = Rc::new(Cell::new(false));
        self.gone.insert(n, gone.clone());
        self.client.call(frame, Call { n, gone }, None, self.now);
        self.events();
        n
    }

    fn abandon(&mut self, n: usize) {
        if let Some(gone) = self.gone.get(&n) {
            gone.set(true);
        }
        self.client.handle_abandoned(self.now);
        self.events();
    }

    fn transmit(&mut self) {
        let queue = &mut self.write_queue;
        let codec = &mut self.client_codec;
        self.client.poll_transmit(self.now, |frame| {
            let before = queue.len();
            codec.encode(frame, queue)?;
            Ok(queue.len() - before)
        });
        self.events();
    }

    /// Writes at most `n` bytes of the client's queue.
    fn write(&mut self, n: usize) {
        self.transmit();
        let n = n.min(self.write_queue.len());
        let bytes = self.write_queue.split_to(n);
        self.to_server.extend_from_slice(&bytes);
        self.client.handle_written(n, self.now);
        if self.write_queue.is_empty() {
            self.client.handle_flushed(self.now);
        }
        self.events();
    }

    /// The server reads and answers everything written so far.
    fn serve(&mut self) {
        let Some(server) = self.server.as_mut() else {
            return;
        };
        while let Ok(Some(frame)) = self.server_codec.decode(&mut self.to_server) {
            let answer = match server.on_frame(frame, self.now) {
                Inbound::Hello { request_id, .. } if self.welcome => request_id
                    .map(|id| Frame::control(format!("{WELCOME_PREFIX}1")).with_request_id(id)),
                Inbound::Hello { .. } => None,
                Inbound::Deliver(frame) => {
                    let answer = (self.handler)(&frame);
                    self.server_got.push(frame);
                    answer
                }
                Inbound::Reply(frame) => Some(frame),
                Inbound::PeerDisconnect(why) => {
                    self.server_got.push(Frame::disconnect(why));
                    None
                }
                Inbound::PeerError(frame) | Inbound::Pong(frame) => {
                    self.server_got.push(frame);
                    None
                }
                _ => None,
            };
            if let Some(answer) = answer {
                self.server_codec
                    .encode(answer, &mut self.to_client)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }

    fn server_send(&mut self, frame: Frame) {
        self.server_codec
            .encode(frame, &mut self.to_client)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// The client reads everything the server sent.
    fn read(&mut self) {
        while self.client.may_read() {
            match self.client_codec.decode(&mut self.to_client) {
                Ok(Some(frame)) => self.client.handle_frame(frame, self.now),
                Ok(None) => break,
                Err(e) => self.client.handle_decode_error(e, self.now),
            }
            self.events();
        }
    }

    /// Everything moves until nothing more does.
    fn settle(&mut self) {
        for _ in 0..16 {
            self.write(usize::MAX);
            self.serve();
            self.read();
            self.transmit();
            if self.write_queue.is_empty() && self.to_client.is_empty() {
                break;
            }
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        if self.client.poll_timeout().is_some_and(|t| t <= self.now) {
            self.client.handle_timeout(self.now);
        }
        self.events();
    }

    fn events(&mut self) {
        while let Some(event) = self.client.poll_event() {
            match event {
                Event::Connected => self.connected += 1,
                Event::Push(frame) => self.pushes.push(frame),
                Event::Answer(call, result) => self.results.entry(call.n).or_default().push(result),
                Event::LateAnswer { id, .. } => self.late.push(id),
                Event::Unsendable(e) => panic!("unsendable: {e}"),
                Event::Lost(e) => self.lost.push(e),
                Event::Closed => self.closed += 1,
                _ => panic!("an event this harness does not know"),
            }
        }
    }

    fn answer(&self, n: usize) -> &Result<Frame, CallError> {
        match self.results.get(&n).map(Vec::as_slice) {
            Some([one]) => one,
            other => panic!("call {n}: {other:?}"),
        }
    }

    fn server_data(&self) -> Vec<String> {
        self.server_got
            .iter()
            .filter(|f| f.kind() == Kind::DATA)
            .map(|f| f.payload_text().into_owned())
            .collect()
    }
}

fn open_pair() -> Pair {
    let mut pair = Pair::new(config());
    pair.connect();
    pair.settle();
    assert_eq!(pair.client.phase(), Phase::Open);
    pair
}

#[test]
fn handshake_sends_hello_and_waits_for_welcome() {
    let mut pair = Pair::new(config());
    pair.connect();
    assert_eq!(pair.client.phase(), Phase::Handshaking);
    // A call made before WELCOME waits for it.
    let n = pair.call(Frame::data("early call"));
    pair.write(usize::MAX);
    let mut hello = pair.to_server.clone();
    let hello = FrameCodec::new().decode(&mut hello).unwrap().unwrap();
    assert_eq!(hello.kind(), Kind::CONTROL);
    assert_eq!(hello.request_id(), Some(0));
    assert_eq!(hello.payload_text(), "HELLO alice");
    assert_eq!(pair.connected, 0);
    pair.settle();
    assert_eq!(pair.connected, 1);
    assert_eq!(
        pair.answer(n).as_ref().unwrap().payload_text(),
        "early call"
    );
}

#[test]
fn frames_before_welcome_are_bounded_then_pushed() {
    let mut pair = Pair::new(config());
    pair.welcome = false;
    pair.connect();
    pair.settle();
    pair.server_send(Frame::data("one"));
    pair.server_send(Frame::heartbeat());
    pair.server_send(Frame::data("two"));
    pair.server_send(Frame::control(format!("{WELCOME_PREFIX}9")).with_request_id(0));
    pair.read();
    assert_eq!(pair.client.phase(), Phase::Open);
    let pushed: Vec<_> = pair.pushes.iter().map(|f| f.payload_text()).collect();
    assert_eq!(pushed, ["one", "two"], "HEARTBEAT is not kept");

    // Five frames (the limit is 4) before WELCOME: a violation.
    let mut pair = Pair::new(config());
    pair.welcome = false;
    pair.connect();
    pair.settle();
    for _ in 0..5 {
        pair.server_send(Frame::heartbeat());
    }
    pair.read();
    assert!(
        matches!(
            pair.lost.as_slice(),
            [ConnectionError::Violation(
                Violation::TooManyBeforeWelcome { frames: 4, .. }
            )]
        ),
        "{:?}",
        pair.lost
    );
    assert_eq!(pair.client.phase(), Phase::Disconnected);

    // And in bytes: one frame larger than 1000 bytes.
    let mut pair = Pair::new(config());
    pair.welcome = false;
    pair.connect();
    pair.server_send(Frame::data(vec![0u8; 1001]));
    pair.read();
    assert_eq!(pair.lost.len(), 1, "{:?}", pair.lost);
}

#[test]
fn handshake_refusal_and_timeout() {
    let mut pair = Pair::new(config());
    pair.welcome = false;
    pair.connect();
    pair.server_send(Frame::error("server full").with_request_id(0));
    pair.read();
    assert!(
        matches!(&pair.lost[..], [ConnectionError::HandshakeRefused(why)] if why == "server full"),
        "{:?}",
        pair.lost
    );

    let mut pair = Pair::new(config());
    pair.welcome = false;
    pair.connect();
    pair.settle();
    pair.advance(3 * SEC);
    assert!(pair.lost.is_empty());
    pair.advance(SEC);
    assert!(matches!(
        &pair.lost[..],
        [ConnectionError::HandshakeTimeout]
    ));
}

#[test]
fn heartbeat_and_idle_timers() {
    let mut pair = open_pair();
    pair.advance(2 * SEC);
    pair.transmit();
    assert!(pair.write_queue.is_empty(), "nothing to send yet");
    pair.advance(SEC);
    pair.transmit();
    let mut wire = pair.write_queue.clone();
    let beat = FrameCodec::new().decode(&mut wire).unwrap().unwrap();
    assert_eq!(beat.kind(), Kind::HEARTBEAT);
    pair.settle();
    // Written at 3 s: the next HEARTBEAT is due at 6 s.
    assert_eq!(pair.client.poll_timeout(), Some(pair.now + 3 * SEC));
    pair.handler = |_| None;
    let n = pair.call(Frame::data("never answered"));
    pair.settle();
    // Idle counts from the last frame received (WELCOME, at 0 s), not
    // from what the client sent.
    pair.advance(3 * SEC);
    pair.advance(3 * SEC);
    assert!(pair.lost.is_empty(), "{:?}", pair.lost);
    pair.advance(SEC);
    assert!(matches!(&pair.lost[..], [ConnectionError::IdleTimeout]));
    assert!(matches!(
        pair.answer(n),
        Err(CallError::ConnectionLost(ConnectionError::IdleTimeout))
    ));
}

#[test]
fn answers_match_calls_in_any_order() {
    let mut pair = open_pair();
    pair.handler = |_| None;
    let a = pair.call(Frame::data("a"));
    let b = pair.call(Frame::data("b"));
    let c = pair.call(Frame::data("c"));
    pair.settle();
    let ids: Vec<u32> = pair
        .server_got
        .iter()
        .filter_map(Frame::request_id)
        .collect();
    assert_eq!(ids, [1, 2, 3], "ids from 1, in order");
    // Answered backwards, one as an ERROR, one with a frame that cannot
    // answer (a PING: no PONG goes back for it).
    pair.server_send(Frame::error("no").with_request_id(3));
    pair.server_send(Frame::ping("").with_request_id(2));
    pair.server_send(Frame::data("A").with_request_id(1));
    pair.read();
    assert_eq!(pair.answer(a).as_ref().unwrap().payload_text(), "A");
    assert!(matches!(
        pair.answer(b),
        Err(CallError::BadAnswer {
            id: 2,
            kind: Kind::PING
        })
    ));
    assert!(
        matches!(pair.answer(c), Err(CallError::Remote(error)) if error.payload_text() == "no")
    );
    pair.server_got.clear();
    pair.settle();
    assert!(
        pair.server_got.iter().all(|f| f.kind() != Kind::PONG),
        "a PING answering a call is not acted on"
    );
    // A duplicate answer and an unknown id are late answers, not pushes;
    // a frame without an id is a push.
    pair.server_send(Frame::data("again").with_request_id(1));
    pair.server_send(Frame::data("made up").with_request_id(77));
    pair.server_send(Frame::data("news"));
    pair.read();
    assert_eq!(pair.late, [1, 77]);
    assert_eq!(pair.pushes.len(), 1);
    assert_eq!(pair.pushes[0].payload_text(), "news");
    assert_eq!(pair.answer(a).as_ref().unwrap().payload_text(), "A");
}

#[test]
fn abandoned_calls_are_evicted_and_their_late_answers_dropped() {
    let mut pair = open_pair();
    pair.handler = |_| None;
    let n = pair.call(Frame::data("slow"));
    pair.settle();
    assert_eq!(pair.client.pending_calls(), 1);
    pair.abandon(n);
    assert_eq!(pair.client.pending_calls(), 0);
    pair.server_send(Frame::data("too late").with_request_id(1));
    pair.read();
    assert_eq!(pair.late, [1]);
    assert!(pair.pushes.is_empty());
    assert!(!pair.results.contains_key(&n));

    // Abandoned while held (not connected): never sent.
    let mut pair = Pair::new(config());
    let n = pair.call(Frame::data("held"));
    pair.abandon(n);
    assert_eq!(pair.client.held(), 0);
    pair.connect();
    pair.settle();
    assert!(pair.server_data().is_empty());
}

#[test]
fn request_ids_skip_ids_still_pending_on_a_new_transport() {
    let mut pair = open_pair();
    pair.handler = |_| None;
    let first = pair.call(Frame::data("a"));
    let _second = pair.call(Frame::data("b"));
    pair.settle();
    // Answer the first only: id 1 is free, id 2 pending.
    pair.server_send(Frame::data("A").with_request_id(1));
    pair.read();
    assert!(pair.answer(first).is_ok());
    pair.server_got.clear();
    pair.call(Frame::data("c"));
    pair.settle();
    assert_eq!(pair.server_got[0].request_id(), Some(3));
}

#[test]
fn one_way_frames_not_fully_written_are_sent_first_after_a_reconnect() {
    let mut pair = open_pair();
    pair.client.send(Frame::data("first"), pair.now);
    pair.client.send(Frame::data("second"), pair.now);
    pair.transmit();
    // Header of 10 bytes + 5 of "first": written whole; "second" half.
    pair.write(15 + 5);
    pair.serve();
    assert_eq!(pair.server_data(), ["first"]);
    pair.client
        .handle_connection_lost(ConnectionError::Transport("reset".into()), pair.now);
    pair.events();
    assert_eq!(pair.client.phase(), Phase::Disconnected);
    pair.client.send(Frame::data("third"), pair.now);
    pair.server_got.clear();
    pair.connect();
    pair.settle();
    assert_eq!(pair.server_data(), ["second", "third"]);
}

#[test]
fn a_lost_transport_fails_written_calls_and_holds_unwritten_ones() {
    let mut pair = Pair::new(build(settings().high_water(16)));
    pair.connect();
    pair.settle();
    pair.handler = |_| None;
    let written = pair.call(Frame::data("written"));
    // Above the high-water mark: the second stays held, unwritten.
    let held = pair.call(Frame::data("held"));
    pair.transmit();
    assert_eq!(pair.client.pending_calls(), 1);
    assert_eq!(pair.client.held(), 1);
    pair.write(usize::MAX);
    pair.client.handle_end_of_stream(pair.now);
    pair.events();
    assert!(matches!(
        pair.answer(written),
        Err(CallError::ConnectionLost(ConnectionError::ServerClosed {
            last_error: None
        }))
    ));
    assert!(!pair.results.contains_key(&held));
    // It waits for the next transport, within its queue deadline.
    pair.advance(4 * SEC);
    assert!(!pair.results.contains_key(&held));
    pair.handler = echo;
    pair.server_got.clear();
    pair.connect();
    pair.settle();
    assert_eq!(pair.answer(held).as_ref().unwrap().payload_text(), "held");

    // Held past the queue deadline without a connection: NotConnected.
    let mut pair = Pair::new(config_with_queue(5 * SEC));
    let n = pair.call(Frame::data("x"));
    assert_eq!(pair.client.poll_timeout(), Some(pair.now + 5 * SEC));
    pair.advance(5 * SEC);
    assert!(matches!(pair.answer(n), Err(CallError::NotConnected)));
}

fn config_with_queue(queue: Duration) -> Config {
    build(settings().queue_timeout(Some(queue)))
}

#[test]
fn the_last_uncorrelated_error_explains_a_close() {
    let mut pair = open_pair();
    pair.server_send(Frame::error("server full"));
    pair.read();
    pair.client.handle_end_of_stream(pair.now);
    pair.events();
    assert_eq!(pair.pushes.len(), 1, "the ERROR is a push");
    assert!(matches!(
        &pair.lost[..],
        [ConnectionError::ServerClosed { last_error: Some(e) }] if e == "server full"
    ));
    // A late ERROR (an id) is not kept as the server's last word.
    let mut pair = open_pair();
    pair.server_send(Frame::error("late error").with_request_id(5));
    pair.read();
    pair.client.handle_end_of_stream(pair.now);
    pair.events();
    assert!(matches!(
        &pair.lost[..],
        [ConnectionError::ServerClosed { last_error: None }]
    ));
}

#[test]
fn violations_queue_an_error_and_lose_the_transport() {
    let mut pair = open_pair();
    pair.to_client
        .extend_from_slice(b"NOPE\0\0\0\x10xxxxxxxxxxxx");
    pair.read();
    assert!(matches!(
        &pair.lost[..],
        [ConnectionError::Violation(Violation::Codec(_))]
    ));
    assert_eq!(pair.lost[0].kind(), "undecodable");
    // The ERROR still goes out on the old transport, best effort.
    pair.write(usize::MAX);
    pair.serve();
    assert!(
        pair.server_got
            .iter()
            .any(|f| f.kind() == Kind::ERROR && f.payload_text() == "bad magic"),
        "{:?}",
        pair.server_got
    );
}

#[test]
fn close_writes_held_frames_then_disconnect_and_fails_unwritten_calls() {
    let mut pair = Pair::new(build(settings().high_water(16)));
    pair.connect();
    pair.settle();
    pair.handler = |_| None;
    let written = pair.call(Frame::data("written"));
    pair.transmit();
    pair.client.send(Frame::data("one-way"), pair.now);
    let unwritten = pair.call(Frame::data("unwritten"));
    pair.client.close(pair.now);
    pair.events();
    assert!(matches!(pair.answer(unwritten), Err(CallError::NotSent)));
    assert_eq!(pair.client.phase(), Phase::Closing);
    // Calls written keep their chance of an answer while closing.
    pair.server_send(Frame::data("W").with_request_id(1));
    pair.read();
    assert!(pair.answer(written).is_ok());
    pair.settle();
    assert_eq!(pair.server_data(), ["written", "one-way"]);
    assert_eq!(
        pair.server_got.last().map(Frame::kind),
        Some(Kind::DISCONNECT)
    );
    assert_eq!(pair.closed, 1);
    assert_eq!(pair.client.phase(), Phase::Closed);

    // Bytes that never go out: the close ends at the linger.
    let mut pair = open_pair();
    pair.client.close(pair.now);
    pair.transmit();
    pair.advance(SEC);
    assert_eq!(pair.closed, 0);
    pair.advance(SEC);
    assert_eq!(pair.closed, 1);
}

#[test]
fn closing_while_disconnected_stops_at_once_and_gives_back_one_way_frames() {
    let mut pair = Pair::new(config());
    pair.client.send(Frame::data("kept"), pair.now);
    let n = pair.call(Frame::data("call"));
    pair.client.close(pair.now);
    pair.events();
    assert_eq!(pair.closed, 1);
    assert!(matches!(pair.answer(n), Err(CallError::NotSent)));
    let unsent = pair.client.take_unsent();
    assert_eq!(unsent.len(), 1);
    assert_eq!(unsent[0].payload_text(), "kept");
    assert!(pair.client.take_unsent().is_empty(), "each returned once");
}

#[test]
fn held_one_way_frames_are_bounded_while_disconnected() {
    let mut pair = Pair::new(config());
    for i in 0..8 {
        assert!(pair.client.accepts_work());
        pair.client.send(Frame::data(i.to_string()), pair.now);
    }
    assert!(!pair.client.accepts_work(), "held_sends is 8");
    pair.connect();
    pair.settle();
    assert!(pair.client.accepts_work());
    assert_eq!(pair.server_data().len(), 8);
}

#[test]
fn with_every_handle_gone_the_client_closes_after_its_last_answer() {
    let mut pair = open_pair();
    pair.handler = |_| None;
    let n = pair.call(Frame::data("last"));
    pair.settle();
    pair.client.handle_handles_gone(pair.now);
    assert_eq!(pair.client.phase(), Phase::Open, "an answer is owed");
    pair.server_send(Frame::data("L").with_request_id(1));
    pair.read();
    assert!(pair.answer(n).is_ok());
    pair.settle();
    assert_eq!(pair.closed, 1);
    assert_eq!(
        pair.server_got.last().map(Frame::kind),
        Some(Kind::DISCONNECT)
    );

    // Not connected, nothing held: stops at once.
    let mut pair = Pair::new(config());
    pair.client.handle_handles_gone(pair.now);
    pair.events();
    assert_eq!(pair.closed, 1);
}

/// One step of the property test.
#[derive(Debug, Clone)]
enum Step {
    Call,
    Send,
    /// Write this many bytes of the client's queue.
    Write(usize),
    Serve,
    Read,
    /// The server sends a DATA with this request id (0: none).
    Answer(u32),
    ErrorAnswer(u32),
    PingAnswer(u32),
    Abandon(usize),
    Lose,
    Reconnect,
    Advance(u64),
    HandlesGone,
    Close,
    /// The server sends DISCONNECT.
    Disconnect,
    /// The server sends bytes that do not decode (bad magic).
    Garbage,
    /// The server refuses the handshake (ERROR with request id 0).
    Refuse,
    /// Whether the server answers the next handshakes with WELCOME.
    Welcoming(bool),
    /// The server sends WELCOME unasked (late, or a second one).
    Welcome,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => Just(Step::Call),
        2 => Just(Step::Send),
        3 => (0usize..200).prop_map(Step::Write),
        3 => Just(Step::Serve),
        3 => Just(Step::Read),
        2 => (0u32..12).prop_map(Step::Answer),
        1 => (0u32..12).prop_map(Step::ErrorAnswer),
        1 => (1u32..12).prop_map(Step::PingAnswer),
        2 => (0usize..40).prop_map(Step::Abandon),
        1 => Just(Step::Lose),
        2 => Just(Step::Reconnect),
        2 => (0u64..4000).prop_map(Step::Advance),
        1 => Just(Step::HandlesGone),
        1 => Just(Step::Close),
        1 => Just(Step::Disconnect),
        1 => Just(Step::Garbage),
        1 => Just(Step::Refuse),
        1 => any::<bool>().prop_map(Step::Welcoming),
        1 => Just(Step::Welcome),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Never panics; every call completes at most once, abandoned calls
    /// never; queues stay bounded; at the end (closed, or every held call
    /// past its deadline) no call is left waiting without a bound.
    #[test]
    fn arbitrary_event_sequences_keep_the_invariants(steps in prop::collection::vec(step(), 1..120)) {
        let mut pair = Pair::new(build(settings().high_water(48)));
        pair.handler = |_| None;
        let mut handles_gone = false;
        let mut pushes_at_connect = 0;
        for step in steps {
            match step {
                Step::Call if !handles_gone => {
                    if pair.client.accepts_work() || pair.client.phase() != Phase::Open {
                        pair.call(Frame::data("c"));
                    }
                }
                Step::Send if !handles_gone => {
                    if pair.client.accepts_work() {
                        pair.client.send(Frame::data("s"), pair.now);
                    }
                }
                Step::Call | Step::Send => {}
                Step::Write(n) => {
                    if matches!(pair.client.phase(), Phase::Handshaking | Phase::Open | Phase::Closing) {
                        pair.write(n);
                    }
                }
                Step::Serve => pair.serve(),
                Step::Read => pair.read(),
                Step::Answer(id) => {
                    let frame = Frame::data("a");
                    pair.server_send(if id == 0 { frame } else { frame.with_request_id(id) });
                }
                Step::ErrorAnswer(id) => {
                    let frame = Frame::error("e");
                    pair.server_send(if id == 0 { frame } else { frame.with_request_id(id) });
                }
                Step::PingAnswer(id) => pair.server_send(Frame::ping("").with_request_id(id)),
                Step::Abandon(n) => {
                    if !pair.results.contains_key(&n) {
                        pair.abandon(n);
                    }
                }
                Step::Lose => {
                    pair.client.handle_connection_lost(ConnectionError::Transport("cut".into()), pair.now);
                    pair.events();
                }
                Step::Reconnect => {
                    if pair.client.phase() == Phase::Disconnected {
                        pair.connect();
                    }
                }
                Step::Advance(ms) => pair.advance(Duration::from_millis(ms)),
                Step::HandlesGone => {
                    handles_gone = true;
                    pair.client.handle_handles_gone(pair.now);
                    pair.events();
                }
                Step::Close => {
                    pair.client.close(pair.now);
                    pair.events();
                }
                Step::Disconnect | Step::Garbage | Step::Refuse => {
                    // Read at once, with nothing before it: the frame is the
                    // next the client reads, unless reading is blocked.
                    let phase = pair.client.phase();
                    let alone = pair.to_client.is_empty() && pair.client.may_read();
                    let lost = pair.lost.len();
                    match step {
                        Step::Disconnect => pair.server_send(Frame::disconnect("bye")),
                        Step::Garbage => pair.to_client.extend_from_slice(b"XSGI\0\0\0\x0a\0\x10"),
                        _ => pair.server_send(Frame::error("refused").with_request_id(0)),
                    }
                    pair.read();
                    let ends = match step {
                        Step::Refuse => phase == Phase::Handshaking,
                        _ => matches!(phase, Phase::Handshaking | Phase::Open | Phase::Closing),
                    };
                    if alone && ends {
                        // The transport is gone, and said why (a closing
                        // client stops for good instead).
                        prop_assert!(
                            matches!(pair.client.phase(), Phase::Disconnected | Phase::Closed),
                            "{step:?} in {phase:?} left {:?}",
                            pair.client.phase()
                        );
                        if phase != Phase::Closing {
                            prop_assert_eq!(pair.lost.len(), lost + 1);
                            let kind = match step {
                                // Before WELCOME, DISCONNECT refuses too.
                                Step::Disconnect if phase == Phase::Handshaking => "handshake_refused",
                                Step::Disconnect => "server_disconnected",
                                Step::Garbage => "undecodable",
                                _ => "handshake_refused",
                            };
                            prop_assert_eq!(pair.lost[lost].kind(), kind);
                        }
                    }
                    if step_is_refuse(&step) && phase == Phase::Open && alone {
                        // Id 0 matches no call once open: a late answer.
                        prop_assert_eq!(pair.client.phase(), Phase::Open);
                    }
                }
                Step::Welcoming(on) => pair.welcome = on,
                Step::Welcome => {
                    pair.server_send(Frame::control(format!("{WELCOME_PREFIX}1")).with_request_id(0));
                }
            }
            // Frames that arrive before WELCOME are never handed on before
            // it: a handshaking client has made no push since it connected.
            if pair.client.phase() == Phase::Handshaking {
                prop_assert_eq!(pair.pushes.len(), pushes_at_connect);
            } else {
                pushes_at_connect = pair.pushes.len();
            }
            // At most one completion per call; none for an abandoned one
            // after it was abandoned (abandoned before: never completed).
            for (n, results) in &pair.results {
                prop_assert!(results.len() == 1, "call {n} completed {} times", results.len());
            }
            // A completed call is no longer pending: the machine holds at
            // most the calls that have not completed (abandoned ones until
            // it evicts them). The write queue stays within twice the
            // high-water mark plus a frame while reading.
            let open = (0..pair.next_call)
                .filter(|n| !pair.results.contains_key(n))
                .count();
            prop_assert!(
                pair.client.pending_calls() <= open,
                "{} pending, {open} not completed",
                pair.client.pending_calls()
            );
            prop_assert!(pair.write_queue.len() <= 48 * 2 + 64, "{}", pair.write_queue.len());
        }
        // Every call either completed, was abandoned, or is still pending
        // on a transport or held with a deadline (no call waits for ever
        // without a bound).
        let outstanding = (0..pair.next_call)
            .filter(|n| !pair.results.contains_key(n) && !pair.gone[n].get())
            .count();
        match pair.client.phase() {
            Phase::Closed => prop_assert_eq!(outstanding, 0),
            Phase::Disconnected => {
                // Past every queue deadline, nothing held is left.
                pair.advance(Duration::from_secs(6));
                let left = (0..pair.next_call)
                    .filter(|n| !pair.results.contains_key(n) && !pair.gone[n].get())
                    .count();
                prop_assert_eq!(left, 0);
            }
            _ => {
                // Losing the transport settles every written call.
                pair.client.handle_connection_lost(ConnectionError::Transport("end".into()), pair.now);
                pair.events();
                pair.advance(Duration::from_secs(6));
                let left = (0..pair.next_call)
                    .filter(|n| !pair.results.contains_key(n) && !pair.gone[n].get())
                    .count();
                prop_assert_eq!(left, 0);
            }
        }
    }
}

fn step_is_refuse(step: &Step) -> bool {
    matches!(step, Step::Refuse)
}

/// Feeds `frames` encoded server frames to a machine read as a driver
/// would (while `may_read`), without encoding or draining in between:
/// returns how many were read.
fn read_without_draining(
    conn: &mut Connection<Call>,
    frames: &mut BytesMut,
    now: Instant,
) -> usize {
    let mut codec = FrameCodec::new();
    let mut read = 0;
    while conn.may_read() {
        match codec.decode(frames) {
            Ok(Some(frame)) => conn.handle_frame(frame, now),
            _ => break,
        }
        read += 1;
    }
    read
}

#[test]
fn replies_owed_stop_reading_at_twice_the_high_water_mark() {
    let now = Instant::now();
    let high_water = 64 * 1024;
    let mut conn = Connection::<Call>::new(build(Config::builder().high_water(high_water)), now);
    conn.handle_connected(now, None);
    let mut server = FrameCodec::new();
    let mut to_client = BytesMut::new();
    for _ in 0..100_000 {
        server
            .encode(Frame::ping(""), &mut to_client)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let read = read_without_draining(&mut conn, &mut to_client, now);
    assert!(read < 100_000, "read every PING: {read}");
    assert!(!conn.may_read());
    // What reading made due, encoded: within the documented bound.
    let mut queue = BytesMut::new();
    let mut codec = FrameCodec::new();
    conn.poll_transmit(now, |frame| {
        let before = queue.len();
        codec.encode(frame, &mut queue)?;
        Ok(queue.len() - before)
    });
    let pong = Frame::ping("").wire_len();
    assert!(
        queue.len() < 2 * high_water + pong,
        "{} bytes of PONGs owed",
        queue.len()
    );
    assert!(queue.len() >= 2 * high_water - pong);
    assert!(!conn.may_read(), "nothing written yet: still not reading");
    // Written: reading resumes.
    conn.handle_written(queue.len(), now);
    assert!(conn.may_read());
}

#[test]
fn undrained_events_stop_reading() {
    let now = Instant::now();
    let mut conn = Connection::<Call>::new(build(Config::builder().max_events(10)), now);
    conn.handle_connected(now, None);
    let mut server = FrameCodec::new();
    let mut to_client = BytesMut::new();
    for i in 0..1000 {
        server
            .encode(Frame::data(format!("push {i}")), &mut to_client)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let read = read_without_draining(&mut conn, &mut to_client, now);
    // Connected + 9 pushes reach the bound of 10.
    assert_eq!(read, 9);
    assert!(!conn.may_read());
    let mut events = 0;
    while conn.poll_event().is_some() {
        events += 1;
    }
    assert_eq!(events, 10);
    assert!(conn.may_read(), "drained: reading resumes");
}

#[test]
fn frames_before_welcome_meet_the_session_rules_once_open() {
    let now = Instant::now();
    let mut conn = Connection::<Call>::new(config(), now);
    conn.handle_connected(now, None);
    conn.handle_frame(Frame::data("late").with_request_id(7), now);
    conn.handle_frame(Frame::data("plain"), now);
    conn.handle_frame(
        Frame::control(format!("{WELCOME_PREFIX}1")).with_request_id(0),
        now,
    );
    let mut pushes = Vec::new();
    let mut late = Vec::new();
    while let Some(event) = conn.poll_event() {
        match event {
            Event::Push(frame) => pushes.push(frame.payload_text().into_owned()),
            Event::LateAnswer { id, .. } => late.push(id),
            _ => {}
        }
    }
    assert_eq!(pushes, ["plain"], "a frame with a request id is no push");
    assert_eq!(late, [7]);
    assert_eq!(conn.phase(), Phase::Open);
}

#[test]
fn a_flagged_frame_before_welcome_is_a_violation_once_open() {
    let now = Instant::now();
    let mut conn = Connection::<Call>::new(config(), now);
    conn.handle_connected(now, None);
    conn.handle_frame(
        Frame::data("flagged").with_flags(msgi_proto::Flags::COMPRESSED),
        now,
    );
    conn.handle_frame(
        Frame::control(format!("{WELCOME_PREFIX}1")).with_request_id(0),
        now,
    );
    let mut pushes = 0;
    let mut lost = Vec::new();
    while let Some(event) = conn.poll_event() {
        match event {
            Event::Push(_) => pushes += 1,
            Event::Lost(e) => lost.push(e),
            _ => {}
        }
    }
    assert_eq!(pushes, 0);
    assert!(
        matches!(
            lost.as_slice(),
            [ConnectionError::Violation(Violation::Rule(_))]
        ),
        "{lost:?}"
    );
}

#[test]
fn a_call_held_during_the_handshake_gets_a_fresh_queue_deadline_when_lost() {
    let now = Instant::now();
    let mut conn = Connection::<Call>::new(config_with_queue(10 * SEC), now);
    conn.handle_connected(now, None);
    let gone = Rc::new(Cell::new(false));
    // Held during the handshake: its queue deadline is now + 10 s.
    conn.call(Frame::data("x"), Call { n: 0, gone }, None, now);
    conn.handle_frame(
        Frame::control(format!("{WELCOME_PREFIX}1")).with_request_id(0),
        now + SEC,
    );
    assert_eq!(conn.phase(), Phase::Open);
    // Not written; the transport is lost at 30 s.
    let lost_at = now + 30 * SEC;
    conn.handle_connection_lost(ConnectionError::Transport("gone".into()), lost_at);
    while conn.poll_event().is_some() {}
    assert_eq!(conn.poll_timeout(), Some(lost_at + 10 * SEC));
    conn.handle_timeout(lost_at + SEC);
    assert!(
        !std::iter::from_fn(|| conn.poll_event()).any(|e| matches!(e, Event::Answer(..))),
        "failed before its queue timeout from the loss"
    );
    conn.handle_timeout(lost_at + 10 * SEC);
    assert!(std::iter::from_fn(|| conn.poll_event())
        .any(|e| matches!(e, Event::Answer(_, Err(CallError::NotConnected)))));
}

#[test]
fn settings_that_cannot_work_are_refused_when_built() {
    let refused = |b: ConfigBuilder| match b.build() {
        Err(e) => e.setting(),
        Ok(_) => panic!("accepted"),
    };
    assert_eq!(refused(Config::builder().high_water(0)), "high_water");
    assert_eq!(refused(Config::builder().max_events(0)), "max_events");
    assert_eq!(refused(Config::builder().held_sends(0)), "held_sends");
    let timers = |idle, heartbeat| Timers {
        idle_timeout: idle,
        heartbeat_interval: heartbeat,
        handshake_timeout: None,
    };
    assert_eq!(
        refused(Config::builder().timers(timers(Some(Duration::ZERO), None))),
        "idle_timeout"
    );
    assert_eq!(
        refused(Config::builder().timers(timers(None, Some(Duration::ZERO)))),
        "heartbeat_interval"
    );
    for id in ["", "007", "a\nb"] {
        assert_eq!(
            refused(Config::builder().client_id(Some(id.into()))),
            "client_id",
            "{id:?}"
        );
    }
    // A text framing sends no HELLO: its client id is not checked.
    assert!(Config::builder()
        .binary(false)
        .client_id(Some(String::new()))
        .build()
        .is_ok());
    assert!(Config::builder().timers(timers(None, None)).build().is_ok());
    assert_eq!(
        Config::builder()
            .client_id(Some("zoë".into()))
            .build()
            .map(|c| c.client_id().map(str::to_owned)),
        Ok(Some("zoë".to_owned()))
    );
}

#[test]
fn a_server_that_does_not_read_makes_written_bytes_count_as_its_activity() {
    // Reading stops at twice the high-water mark of replies owed; the idle
    // clock then runs, and each write the server takes is a sign of life.
    let timers = Timers {
        idle_timeout: Some(10 * SEC),
        heartbeat_interval: None,
        handshake_timeout: None,
    };
    let mut pair = Pair::new(build(settings().high_water(16).timers(timers)));
    pair.connect();
    pair.settle();
    for _ in 0..8 {
        pair.server_send(Frame::ping(""));
    }
    pair.read();
    pair.transmit();
    assert!(!pair.client.may_read(), "blocked on the server");
    pair.advance(8 * SEC);
    pair.write(5);
    pair.advance(8 * SEC);
    assert!(pair.lost.is_empty(), "{:?}", pair.lost);
    // Nothing written for the idle timeout (since 8 s): idle at 18 s,
    // blocked or not.
    pair.advance(SEC);
    assert!(pair.lost.is_empty(), "{:?}", pair.lost);
    pair.advance(SEC);
    assert!(
        matches!(pair.lost.as_slice(), [ConnectionError::IdleTimeout]),
        "{:?}",
        pair.lost
    );
}

/// An encoder that refuses every frame, as a framing refuses one too large
/// for it.
fn refuse(frame: Frame) -> Result<usize, msgi_proto::CodecError> {
    Err(msgi_proto::CodecError::FrameTooLarge {
        length: frame.wire_len() as u64,
        max: 1,
    })
}

#[test]
fn a_call_the_framing_refuses_fails_with_encode_and_frees_its_place() {
    let now = Instant::now();
    let mut conn = Connection::<Call>::new(config_without_handshake(), now);
    conn.handle_connected(now, None);
    assert!(matches!(conn.poll_event(), Some(Event::Connected)));
    let gone = Rc::new(Cell::new(false));
    conn.call(Frame::data("too big"), Call { n: 7, gone }, None, now);
    conn.poll_transmit(now, refuse);
    match conn.poll_event() {
        Some(Event::Answer(call, Err(CallError::Encode(e)))) => {
            assert_eq!(call.n, 7);
            assert!(matches!(*e, msgi_proto::CodecError::FrameTooLarge { .. }));
        }
        _ => panic!("the call did not fail with Encode"),
    }
    assert_eq!(conn.pending_calls(), 0);
    assert_eq!(conn.held(), 0);
    assert_eq!(conn.phase(), Phase::Open);
}

#[test]
fn a_one_way_frame_the_framing_refuses_is_reported_unsendable() {
    let now = Instant::now();
    let mut conn = Connection::<Call>::new(config_without_handshake(), now);
    conn.handle_connected(now, None);
    assert!(matches!(conn.poll_event(), Some(Event::Connected)));
    conn.send(Frame::data("too big"), now);
    conn.poll_transmit(now, refuse);
    assert!(
        matches!(conn.poll_event(), Some(Event::Unsendable(e)) if matches!(*e, msgi_proto::CodecError::FrameTooLarge { .. }))
    );
    assert!(conn.poll_event().is_none());
    assert_eq!(conn.held(), 0);
    assert_eq!(conn.pending_bytes(), 0);
    assert_eq!(conn.phase(), Phase::Open);
}

fn config_without_handshake() -> Config {
    build(settings().client_id(None))
}
