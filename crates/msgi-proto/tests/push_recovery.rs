//! Push recovery on the client machine (docs/PROTOCOL.md, section 3, *Push
//! recovery*): numbered pushes handed on once across reconnects, told back
//! with one `PUSHED` per transmit round, and what the server kept read from
//! RESUMED. A server stand-in in memory, no clock needed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use bytes::BytesMut;
use msgi_proto::client::{AckWindow, Caller, Config, Connection, ConnectionError, Event, Phase};
use msgi_proto::delivery::{self, PushResume};
use msgi_proto::session::WELCOME_PREFIX;
use msgi_proto::{Frame, FrameCodec, Framing, Kind};

struct NoCall;

impl Caller for NoCall {
    fn is_abandoned(&self) -> bool {
        false
    }
}

struct Link {
    now: Instant,
    client: Connection<NoCall>,
    codec: FrameCodec,
    /// What the client wrote on this transport, decoded.
    written: Vec<Frame>,
    to_client: BytesMut,
    pushes: Vec<String>,
    lost: Vec<ConnectionError>,
}

fn config(recover: bool) -> Config {
    Config::builder()
        .client_id(Some("bob".into()))
        .acknowledged(Some(AckWindow {
            frames: 100,
            bytes: 1 << 20,
            epoch: 3,
        }))
        .recover_pushes(recover)
        .build()
        .unwrap()
}

impl Link {
    fn new(recover: bool) -> Link {
        let now = Instant::now();
        Link {
            now,
            client: Connection::new(config(recover), now),
            codec: FrameCodec::new(),
            written: Vec::new(),
            to_client: BytesMut::new(),
            pushes: Vec::new(),
            lost: Vec::new(),
        }
    }

    fn events(&mut self) {
        while let Some(event) = self.client.poll_event() {
            match event {
                Event::Push(frame) => self.pushes.push(frame.payload_text().into_owned()),
                Event::Lost(e) => self.lost.push(e),
                _ => {}
            }
        }
    }

    /// What the client writes now.
    fn transmit(&mut self) -> Vec<Frame> {
        let mut wire = BytesMut::new();
        let codec = &mut self.codec;
        self.client.poll_transmit(self.now, |frame| {
            let before = wire.len();
            codec.encode(frame, &mut wire)?;
            Ok(wire.len() - before)
        });
        let n = wire.len();
        self.client.handle_written(n, self.now);
        self.client.handle_flushed(self.now);
        self.events();
        let mut out = Vec::new();
        let mut codec = FrameCodec::new();
        while let Ok(Some(frame)) = codec.decode(&mut wire) {
            out.push(frame);
        }
        self.written.extend(out.clone());
        out
    }

    fn server_sends(&mut self, frame: Frame) {
        FrameCodec::new()
            .encode(frame, &mut self.to_client)
            .unwrap();
        while let Ok(Some(frame)) = self.codec.decode(&mut self.to_client) {
            self.client.handle_frame(frame, self.now);
            self.events();
        }
    }

    /// Connects; returns the RESUME the client sent, after answering its
    /// HELLO. The caller answers the RESUME.
    fn connect(&mut self) -> Frame {
        self.client.handle_connected(self.now, None);
        self.events();
        self.transmit();
        self.server_sends(Frame::control(format!("{WELCOME_PREFIX}1")).with_request_id(0));
        let sent = self.transmit();
        let resume = sent
            .into_iter()
            .find(|f| f.payload_text().starts_with("RESUME"))
            .unwrap();
        resume
    }

    fn resumed(&mut self, resume: &Frame, answer: Frame) {
        self.server_sends(answer.with_request_id(resume.request_id().unwrap()));
        assert_eq!(self.client.phase(), Phase::Open);
    }

    fn push(&mut self, seq: u64) {
        let frame = delivery::push_frame(seq, &Frame::data(seq.to_string())).unwrap();
        self.server_sends(frame);
    }

    fn lose(&mut self) {
        self.client
            .handle_connection_lost(ConnectionError::Transport("cut".into()), self.now);
        self.events();
    }
}

fn pushed(frames: &[Frame]) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f.kind() == Kind::CONTROL)
        .filter_map(|f| delivery::parse_pushed(f.payload()))
        .collect()
}

#[test]
fn numbered_pushes_are_handed_on_once_across_reconnects_and_told_back_in_batches() {
    let mut link = Link::new(true);
    let resume = link.connect();
    assert_eq!(resume.payload_text(), "RESUME 3 1 0");
    link.resumed(
        &resume,
        delivery::resumed_frame_with_pushes(0, PushResume::Fresh { missed: 0 }),
    );
    assert!(
        !link.client.recovered(),
        "nothing kept on a first connection"
    );
    for seq in 1..=5 {
        link.push(seq);
    }
    // One PUSHED for the five.
    assert_eq!(pushed(&link.transmit()), [5]);
    assert_eq!(
        pushed(&link.transmit()),
        [] as [u64; 0],
        "nothing new to tell"
    );
    link.push(6);
    link.push(7);
    // Lost before telling 6 and 7: the next RESUME says 7 (received),
    // the server resends from its buffer what it was not told, 6 and 7
    // included: dropped as duplicates.
    link.lose();
    let resume = link.connect();
    assert_eq!(resume.payload_text(), "RESUME 3 1 7");
    link.resumed(
        &resume,
        delivery::resumed_frame_with_pushes(0, PushResume::Recovered { missed: 2 }),
    );
    assert!(link.client.recovered());
    assert_eq!(link.client.missed_pushes(), 2);
    for seq in 6..=9 {
        link.push(seq);
    }
    assert_eq!(pushed(&link.transmit()), [9]);
    let expected: Vec<String> = (1..=9).map(|n| n.to_string()).collect();
    assert_eq!(link.pushes, expected);
    // The grace period passed: fresh, with the count of what was dropped.
    link.lose();
    let resume = link.connect();
    link.resumed(
        &resume,
        delivery::resumed_frame_with_pushes(0, PushResume::Fresh { missed: 4 }),
    );
    assert!(!link.client.recovered());
    assert_eq!(link.client.missed_pushes(), 6);
}

#[test]
fn a_server_without_push_recovery_numbers_nothing_and_a_stray_push_is_a_violation() {
    let mut link = Link::new(true);
    let resume = link.connect();
    // A server of acknowledged delivery only: RESUMED with one number.
    link.resumed(&resume, delivery::resumed_frame(0));
    assert!(!link.client.recovered());
    link.server_sends(Frame::data("plain push"));
    assert_eq!(link.pushes, ["plain push"]);
    link.push(1);
    assert!(
        matches!(link.lost.as_slice(), [ConnectionError::Violation(_)]),
        "{:?}",
        link.lost
    );

    // A client that did not ask sends the two-number RESUME.
    let mut link = Link::new(false);
    let resume = link.connect();
    assert_eq!(resume.payload_text(), "RESUME 3 1");
    link.resumed(&resume, delivery::resumed_frame(0));
    link.push(1);
    assert_eq!(link.lost.len(), 1);
}

#[test]
fn a_malformed_push_is_a_violation() {
    let mut link = Link::new(true);
    let resume = link.connect();
    link.resumed(
        &resume,
        delivery::resumed_frame_with_pushes(0, PushResume::Fresh { missed: 0 }),
    );
    link.server_sends(Frame::new(delivery::PUSH, vec![0u8; 9]));
    assert_eq!(link.lost.len(), 1);
}

#[test]
fn push_recovery_needs_acknowledged_delivery() {
    let refused = Config::builder()
        .client_id(Some("bob".into()))
        .recover_pushes(true)
        .build();
    assert_eq!(
        refused.map_err(|e| e.setting()).err(),
        Some("recover_pushes")
    );
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
            "C→S RESUME 9 1 0",
            delivery::resume_frame_with_pushes(9, 1, 0).with_request_id(1),
        ),
        (
            "S→C RESUMED 0 fresh 0",
            delivery::resumed_frame_with_pushes(0, PushResume::Fresh { missed: 0 })
                .with_request_id(1),
        ),
        (
            "S→C PUSH 1 DATA hi",
            delivery::push_frame(1, &Frame::data("hi")).unwrap(),
        ),
        ("C→S PUSHED 1", delivery::pushed_frame(1)),
        (
            "C→S RESUME 9 1 1",
            delivery::resume_frame_with_pushes(9, 1, 1).with_request_id(1),
        ),
        (
            "S→C RESUMED 0 recovered 0",
            delivery::resumed_frame_with_pushes(0, PushResume::Recovered { missed: 0 })
                .with_request_id(1),
        ),
        (
            "S→C PUSH 2 DATA yo",
            delivery::push_frame(2, &Frame::data("yo")).unwrap(),
        ),
    ];
    for (label, frame) in lines {
        let line = doc
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("{label} not in PROTOCOL.md"));
        let documented: String = line[label.len()..].split_whitespace().collect();
        assert_eq!(documented, hex(frame), "{label}");
    }
}
