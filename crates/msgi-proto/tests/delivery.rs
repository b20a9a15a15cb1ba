//! Acknowledged delivery on the client machine, against a server stand-in
//! that keeps the numbers per client id as docs/PROTOCOL.md says, in
//! memory on a simulated clock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::BytesMut;
use msgi_proto::client::{AckWindow, Caller, Config, Connection, ConnectionError, Event, Phase};
use msgi_proto::delivery::{self, ACK};
use msgi_proto::session::WELCOME_PREFIX;
use msgi_proto::{Frame, FrameCodec, Framing, Kind};

struct NoCall;

impl Caller for NoCall {
    fn is_abandoned(&self) -> bool {
        false
    }
}

/// What the server keeps for the client id: its epoch and the highest
/// number handed to the application.
#[derive(Default)]
struct Store {
    state: Option<(u64, u64)>,
    /// Every frame the application was handed, in order.
    handed: Vec<String>,
}

/// One transport: a client machine's bytes to a server session and back.
struct Link {
    now: Instant,
    client: Connection<NoCall>,
    codec: FrameCodec,
    queue: BytesMut,
    server_codec: FrameCodec,
    to_client: BytesMut,
    /// The number of the next frame this server session reads (after
    /// RESUMED).
    next: Option<u64>,
    lost: Vec<ConnectionError>,
    closed: bool,
}

fn window(frames: usize, bytes: usize) -> Config {
    Config::builder()
        .client_id(Some("alice".into()))
        .acknowledged(Some(AckWindow {
            frames,
            bytes,
            epoch: 7,
        }))
        .close_linger(Some(Duration::from_secs(2)))
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

impl Link {
    fn new(config: Config) -> Link {
        let now = Instant::now();
        Link {
            now,
            client: Connection::new(config, now),
            codec: FrameCodec::new(),
            queue: BytesMut::new(),
            server_codec: FrameCodec::new(),
            to_client: BytesMut::new(),
            next: None,
            lost: Vec::new(),
            closed: false,
        }
    }

    fn connect(&mut self) {
        self.queue.clear();
        self.to_client.clear();
        self.next = None;
        self.client.handle_connected(self.now, None);
        self.events();
    }

    fn events(&mut self) {
        while let Some(event) = self.client.poll_event() {
            match event {
                Event::Lost(e) => self.lost.push(e),
                Event::Closed => self.closed = true,
                Event::Unsendable(e) => panic!("{e}"),
                _ => {}
            }
        }
    }

    fn transmit(&mut self) {
        let (queue, codec) = (&mut self.queue, &mut self.codec);
        self.client.poll_transmit(self.now, |frame| {
            let before = queue.len();
            codec.encode(frame, queue)?;
            Ok(queue.len() - before)
        });
        self.events();
    }

    /// Writes the client's queue; the server reads the first `frames`
    /// frames of it (the rest is lost with the transport, if it is).
    fn serve(&mut self, store: &mut Store, frames: usize) {
        self.transmit();
        let n = self.queue.len();
        let mut bytes = self.queue.split_to(n);
        self.client.handle_written(n, self.now);
        self.client.handle_flushed(self.now);
        for _ in 0..frames {
            let Ok(Some(frame)) = self.server_codec.decode(&mut bytes) else {
                break;
            };
            self.server_takes(store, frame);
        }
        self.events();
    }

    fn server_takes(&mut self, store: &mut Store, frame: Frame) {
        let answer = match (frame.kind(), frame.request_id()) {
            (Kind::CONTROL, Some(0)) => Some(Frame::control(format!("{WELCOME_PREFIX}1"))),
            (Kind::CONTROL, Some(_)) => {
                let (epoch, first) = delivery::parse_resume(frame.payload()).expect("RESUME");
                let last = match store.state {
                    Some((e, last)) if e == epoch => last.max(first - 1),
                    _ => first - 1,
                };
                store.state = Some((epoch, last));
                self.next = Some(last + 1);
                Some(delivery::resumed_frame(last))
            }
            (Kind::DATA, None) => {
                let next = self.next.as_mut().expect("a numbered frame before RESUMED");
                let seq = *next;
                *next += 1;
                let state = store.state.as_mut().expect("state");
                if seq > state.1 {
                    state.1 = seq;
                    store.handed.push(frame.payload_text().into_owned());
                }
                None
            }
            (Kind::DISCONNECT, _) => None,
            other => panic!("unexpected {other:?}"),
        };
        if let Some(answer) = answer {
            let answer = match frame.request_id() {
                Some(id) => answer.with_request_id(id),
                None => answer,
            };
            self.server_codec
                .encode(answer, &mut self.to_client)
                .unwrap();
        }
    }

    fn ack(&mut self, store: &Store) {
        let last = store.state.map_or(0, |s| s.1);
        self.server_codec
            .encode(delivery::ack_frame(last), &mut self.to_client)
            .unwrap();
    }

    fn read(&mut self) {
        while let Ok(Some(frame)) = self.codec.decode(&mut self.to_client) {
            self.client.handle_frame(frame, self.now);
            self.events();
        }
    }

    fn lose(&mut self) {
        self.client
            .handle_connection_lost(ConnectionError::Transport("cut".into()), self.now);
        self.events();
    }

    fn send(&mut self, text: &str) {
        assert!(self.client.accepts_work(), "window full at {text}");
        self.client.send(Frame::data(text.to_owned()), self.now);
    }
}

fn numbered(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|n| n.to_string()).collect()
}

/// Connects, and brings the handshake and RESUME through.
fn open(link: &mut Link, store: &mut Store) {
    link.connect();
    link.serve(store, usize::MAX);
    link.read();
    link.serve(store, usize::MAX);
    link.read();
    assert_eq!(link.client.phase(), Phase::Open);
}

#[test]
fn unacknowledged_frames_are_sent_again_and_handed_once_across_reconnects() {
    let mut store = Store::default();
    let mut link = Link::new(window(100, 1 << 20));
    open(&mut link, &mut store);
    for n in 0..10 {
        link.send(&n.to_string());
    }
    // The server reads 6 of them, acknowledges none; the transport drops.
    link.serve(&mut store, 6);
    assert_eq!(store.handed, numbered(0..6));
    link.lose();
    assert_eq!(link.client.unacknowledged(), 10);
    // RESUMED 6: the client sends 7 to 10 only.
    open(&mut link, &mut store);
    assert_eq!(link.client.acknowledged(), 6);
    link.serve(&mut store, usize::MAX);
    assert_eq!(store.handed, numbered(0..10));
    link.ack(&store);
    link.read();
    assert_eq!(link.client.unacknowledged(), 0);
    assert_eq!(link.client.acknowledged(), 10);
    // Acknowledged frames are never sent again.
    link.lose();
    open(&mut link, &mut store);
    link.send("10");
    link.serve(&mut store, usize::MAX);
    assert_eq!(store.handed, numbered(0..11));
}

#[test]
fn a_server_that_lost_its_state_gets_every_unacknowledged_frame_again() {
    let mut store = Store::default();
    let mut link = Link::new(window(100, 1 << 20));
    open(&mut link, &mut store);
    for n in 0..6 {
        link.send(&n.to_string());
    }
    link.serve(&mut store, usize::MAX);
    link.ack(&store);
    link.read();
    for n in 6..10 {
        link.send(&n.to_string());
    }
    link.serve(&mut store, usize::MAX);
    // The server crashes before acknowledging 6..10: a new one knows
    // nothing. Nothing is lost; what was handed and not acknowledged is
    // handed again (at least once).
    link.lose();
    let mut restarted = Store::default();
    open(&mut link, &mut restarted);
    link.serve(&mut restarted, usize::MAX);
    assert_eq!(restarted.handed, numbered(6..10));
}

#[test]
fn a_full_window_takes_no_more_work_until_acknowledged() {
    let mut store = Store::default();
    let mut link = Link::new(window(4, 1 << 20));
    open(&mut link, &mut store);
    for n in 0..4 {
        link.send(&n.to_string());
    }
    assert!(!link.client.accepts_work());
    link.serve(&mut store, usize::MAX);
    assert!(!link.client.accepts_work(), "sent is not acknowledged");
    link.ack(&store);
    link.read();
    assert!(link.client.accepts_work());

    // In bytes: a frame into an empty window is always taken.
    let mut link = Link::new(window(100, 10));
    let mut store = Store::default();
    open(&mut link, &mut store);
    link.send("a frame larger than ten bytes");
    assert!(!link.client.accepts_work());
    // Also while disconnected.
    link.lose();
    assert!(!link.client.accepts_work());
}

#[test]
fn an_ack_for_frames_never_sent_is_a_violation() {
    let mut store = Store::default();
    let mut link = Link::new(window(100, 1 << 20));
    open(&mut link, &mut store);
    link.send("0");
    link.server_codec
        .encode(delivery::ack_frame(2), &mut link.to_client)
        .unwrap();
    link.read();
    assert!(
        matches!(link.lost.as_slice(), [ConnectionError::Violation(_)]),
        "{:?}",
        link.lost
    );
    assert_eq!(
        link.client.unacknowledged(),
        1,
        "kept for the next transport"
    );
    // A malformed ACK too.
    let mut link = Link::new(window(100, 1 << 20));
    open(&mut link, &mut store);
    link.server_codec
        .encode(Frame::new(ACK, vec![1u8; 3]), &mut link.to_client)
        .unwrap();
    link.read();
    assert_eq!(link.lost.len(), 1);
}

#[test]
fn a_server_without_acknowledged_delivery_refuses_it() {
    let mut link = Link::new(window(100, 1 << 20));
    link.connect();
    link.transmit();
    link.queue.clear();
    link.server_codec
        .encode(
            Frame::control(format!("{WELCOME_PREFIX}1")).with_request_id(0),
            &mut link.to_client,
        )
        .unwrap();
    // An echo server echoes RESUME back.
    link.server_codec
        .encode(
            delivery::resume_frame(7, 1).with_request_id(1),
            &mut link.to_client,
        )
        .unwrap();
    link.read();
    assert!(
        matches!(link.lost.as_slice(), [ConnectionError::DeliveryRefused(why)] if why.starts_with("RESUME ")),
        "{:?}",
        link.lost
    );
}

#[test]
fn close_waits_for_the_last_acknowledgement_then_disconnects() {
    let mut store = Store::default();
    let mut link = Link::new(window(100, 1 << 20));
    open(&mut link, &mut store);
    link.send("0");
    link.send("1");
    link.client.close(link.now);
    link.serve(&mut store, usize::MAX);
    assert_eq!(store.handed, numbered(0..2));
    assert!(!link.closed, "no DISCONNECT before the ACK");
    link.ack(&store);
    link.read();
    link.transmit();
    let mut wire = link.queue.clone();
    let disconnect = FrameCodec::new().decode(&mut wire).unwrap().unwrap();
    assert_eq!(disconnect.kind(), Kind::DISCONNECT);
    link.serve(&mut store, usize::MAX);
    assert!(link.closed);
    assert!(link.client.take_unsent().is_empty());

    // Not acknowledged by the close linger: handed back unconfirmed.
    let mut store = Store::default();
    let mut link = Link::new(window(100, 1 << 20));
    open(&mut link, &mut store);
    link.send("2");
    link.client.close(link.now);
    link.serve(&mut store, usize::MAX);
    link.now += Duration::from_secs(2);
    link.client.handle_timeout(link.now);
    link.events();
    assert!(link.closed);
    let unsent: Vec<_> = link
        .client
        .take_unsent()
        .iter()
        .map(|f| f.payload_text().into_owned())
        .collect();
    assert_eq!(unsent, ["2"]);
}

#[test]
fn acknowledged_delivery_needs_a_client_id() {
    let refused = Config::builder()
        .acknowledged(Some(AckWindow {
            frames: 1,
            bytes: 1,
            epoch: 1,
        }))
        .build();
    assert_eq!(refused.map_err(|e| e.setting()).err(), Some("acknowledged"));
    let refused = Config::builder()
        .client_id(Some("a".into()))
        .acknowledged(Some(AckWindow {
            frames: 0,
            bytes: 1,
            epoch: 1,
        }))
        .build();
    assert!(refused.is_err());
}

/// DISCONNECT `server shutdown; last 2` on a link.
fn shut_down(link: &mut Link, last: u64) {
    link.server_codec
        .encode(
            Frame::disconnect(delivery::shutdown_reason(last)),
            &mut link.to_client,
        )
        .unwrap();
    link.read();
}

#[test]
fn a_shutdown_disconnect_says_which_frames_the_server_took() {
    let mut store = Store::default();
    let mut link = Link::new(window(100, 1 << 20));
    open(&mut link, &mut store);
    for n in 0..5 {
        link.send(&n.to_string());
    }
    // The server hands on 3, acknowledges none, and shuts down saying so.
    link.serve(&mut store, 3);
    shut_down(&mut link, 3);
    assert!(
        matches!(link.lost.as_slice(), [ConnectionError::ServerDisconnected(why)] if why.starts_with("server shutdown")),
        "{:?}",
        link.lost
    );
    assert_eq!(link.client.acknowledged(), 3);
    assert_eq!(link.client.unacknowledged(), 2);
    // The next server knows nothing (a new process): it gets 3 and 4
    // only, nothing twice.
    let mut restarted = Store::default();
    open(&mut link, &mut restarted);
    link.serve(&mut restarted, usize::MAX);
    assert_eq!(restarted.handed, numbered(3..5));

    // A number beyond the frames sent acknowledges nothing.
    let mut store = Store::default();
    let mut link = Link::new(window(100, 1 << 20));
    open(&mut link, &mut store);
    link.send("0");
    // Written, not read by the server.
    link.serve(&mut store, 0);
    shut_down(&mut link, 2);
    assert_eq!(link.client.acknowledged(), 0);
    assert_eq!(link.client.unacknowledged(), 1);
    // Nor does a plain `server shutdown`.
    link.lost.clear();
    open(&mut link, &mut store);
    link.server_codec
        .encode(Frame::disconnect("server shutdown"), &mut link.to_client)
        .unwrap();
    link.read();
    assert_eq!(
        link.lost.len(),
        1,
        "{:?} {:?}",
        link.lost,
        link.client.phase()
    );
    assert_eq!(link.client.unacknowledged(), 1);
}

#[test]
fn worked_example_bytes() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/PROTOCOL.md"
    ))
    .unwrap();
    let hex = |frame: Frame| {
        let mut wire = BytesMut::new();
        FrameCodec::new().encode(frame, &mut wire).unwrap();
        wire.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let lines = [
        (
            "C→S RESUME 9 1",
            delivery::resume_frame(9, 1).with_request_id(1),
        ),
        (
            "S→C RESUMED 0",
            delivery::resumed_frame(0).with_request_id(1),
        ),
        ("C→S DATA a (#1)", Frame::data("a")),
        ("C→S DATA b (#2)", Frame::data("b")),
        ("S→C ACK 2", delivery::ack_frame(2)),
        (
            "S→C DISCONNECT server shutdown; last 2",
            Frame::disconnect(delivery::shutdown_reason(2)),
        ),
        (
            "C→S RESUME 9 3",
            delivery::resume_frame(9, 3).with_request_id(1),
        ),
        (
            "S→C RESUMED 2",
            delivery::resumed_frame(2).with_request_id(1),
        ),
        ("C→S DATA c (#3)", Frame::data("c")),
    ];
    for (label, frame) in lines {
        let line = doc
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("{label} not in PROTOCOL.md"));
        let documented: String = line[label.len()..].split_whitespace().collect();
        assert_eq!(documented, hex(frame), "{label}");
    }
    // And the machine says the same: the client's RESUME is these bytes.
    let mut link = Link::new(window(100, 1 << 20));
    let mut store = Store::default();
    link.connect();
    link.serve(&mut store, usize::MAX);
    link.read();
    link.transmit();
    let mut wire = link.queue.clone();
    let resume = FrameCodec::new().decode(&mut wire).unwrap().unwrap();
    assert_eq!(resume.kind(), Kind::CONTROL);
    assert_eq!(resume.payload_text(), "RESUME 7 1");
}
