//! The observer's session activity over real loopback sessions: what a
//! counting observer is told, checked against what the client sent and
//! received.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use msgi::{
    kind_label, Activity, CloseReason, ErrorCause, Frame, FrameCodec, Framing, Kind, Observer,
    Server, Session,
};
use support::{serve, within, RawPeer};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// What a counting observer saw, in order.
#[derive(Debug)]
enum Seen {
    Opened,
    Activity(Box<Activity>),
    Closed(&'static str),
}

#[derive(Clone)]
struct Recording(Arc<Mutex<Vec<Seen>>>, mpsc::UnboundedSender<()>);

impl Observer for Recording {
    fn session_opened(&self, _session: &Session) {
        self.0.lock().unwrap().push(Seen::Opened);
    }

    fn session_activity(&self, _session: &Session, activity: &Activity) {
        self.0
            .lock()
            .unwrap()
            .push(Seen::Activity(Box::new(activity.clone())));
    }

    fn session_closed(&self, _session: &Session, reason: &CloseReason) {
        self.0.lock().unwrap().push(Seen::Closed(reason.kind()));
        let _ = self.1.send(());
    }
}

/// Echo, except: `fail` fails, `none` answers nothing, `push` also pushes
/// a frame to its own session, `slow` answers after 30 ms.
fn service() -> impl tower::Service<
    Frame,
    Response = Option<Frame>,
    Error = msgi::BoxError,
    Future = impl std::future::Future<Output = Result<Option<Frame>, msgi::BoxError>> + Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(|frame: Frame| async move {
        match frame.payload().as_ref() {
            b"fail" => Err("it failed".into()),
            b"none" => Ok(None),
            b"push" => {
                let session = frame.extensions().get::<Session>().cloned().unwrap();
                session.send(Frame::data("pushed")).unwrap();
                Ok(Some(Frame::data("push")))
            }
            b"slow" => {
                tokio::time::sleep(Duration::from_millis(30)).await;
                Ok(Some(Frame::data("slow")))
            }
            _ => Ok(Some(Frame::data(frame.payload().clone()))),
        }
    })
}

fn wire_len(frame: &Frame) -> u64 {
    frame.wire_len() as u64
}

#[tokio::test]
async fn activity_counts_what_the_client_sent_and_received() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (closed_tx, mut closed) = mpsc::unbounded_channel();
    let builder = Server::builder()
        .heartbeat_interval(None)
        .observer(Recording(seen.clone(), closed_tx));
    let mut server = serve(builder, service()).await;
    let mut peer = RawPeer::connect(server.addr).await;

    // What the client sends, and what it expects back, in frames.
    let mut sent_frames = Vec::new();
    for i in 0..10u32 {
        sent_frames.push(Frame::data(vec![b'x'; 10 * i as usize]).with_request_id(i + 1));
    }
    for (id, payload) in [(20, "fail"), (21, "none"), (22, "push"), (23, "slow")] {
        sent_frames.push(Frame::data(payload).with_request_id(id));
    }
    sent_frames.push(Frame::ping("p"));
    sent_frames.push(Frame::error("the client is unhappy"));
    let mut wire = Vec::new();
    for frame in &sent_frames {
        wire.extend_from_slice(&peer.encode(frame.clone()));
    }
    peer.write(&wire).await;

    // 10 echoes, `fail` and `none` (ERRORs), `push` and its push, `slow`,
    // the PONG: 16 frames.
    let mut received = Vec::new();
    while received.len() < 16 {
        received.push(peer.recv().await.expect("an answer"));
    }
    // The client leaves: the session ends.
    peer.stream.shutdown().await.unwrap();
    let rest = peer.read_to_end().await;
    assert!(rest.is_empty(), "{} more bytes", rest.len());
    within(closed.recv()).await.unwrap();
    server.shutdown().await;

    let mut received_bytes = 0;
    for frame in &received {
        let mut bytes = bytes::BytesMut::new();
        FrameCodec::new().encode(frame.clone(), &mut bytes).unwrap();
        received_bytes += bytes.len() as u64;
    }

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(matches!(seen.first(), Some(Seen::Opened)), "{seen:?}");
    assert!(
        matches!(seen.last(), Some(Seen::Closed("peer_closed"))),
        "{seen:?}"
    );
    let reports: Vec<&Activity> = seen[1..seen.len() - 1]
        .iter()
        .map(|s| match s {
            Seen::Activity(a) => &**a,
            other => panic!("{other:?} between open and close"),
        })
        .collect();
    assert!(!reports.is_empty());

    let mut frames_in = Vec::new();
    let mut frames_out = Vec::new();
    let mut written = 0;
    let mut latencies = Vec::new();
    let mut errors = [0u32; 3];
    for report in &reports {
        frames_in.extend(report.frames_in.iter());
        frames_out.extend(report.frames_out.iter());
        written += report.bytes_written;
        latencies.extend_from_slice(report.latencies());
        errors[0] += report.error_count(ErrorCause::Handler);
        errors[1] += report.error_count(ErrorCause::NoResponse);
        errors[2] += report.error_count(ErrorCause::Peer);
        assert_eq!(report.error_count(ErrorCause::AnswerNotSent), 0);
    }
    assert_eq!(summed(&frames_in), summed(&counted(&sent_frames)));
    assert_eq!(summed(&frames_out), summed(&counted(&received)));
    assert_eq!(written, received_bytes);
    assert_eq!(errors, [1, 1, 1]);
    // Every request answered (the PING is not a request), `slow` after its
    // 30 ms.
    assert_eq!(latencies.len(), 14);
    let slowest = latencies.iter().max().unwrap();
    assert!(*slowest >= Duration::from_millis(30), "{latencies:?}");
    assert!(*slowest < support::LIMIT);
    // The session ended with nothing in flight or queued.
    let last = reports.last().unwrap();
    assert_eq!((last.in_flight, last.write_queue, last.outbox), (0, 0, 0));
    // The kinds, as the reports count them.
    let by_label = |label| summed(&frames_out).into_iter().find(|e| e.0 == label);
    assert_eq!(by_label("data").map(|e| e.1), Some(13));
    assert_eq!(by_label("error").map(|e| e.1), Some(2));
    assert_eq!(
        by_label("pong"),
        Some(("pong", 1, wire_len(&Frame::ping("p"))))
    );
    let data_in: u64 = reports.iter().map(|r| r.frames_in.get(Kind::DATA).0).sum();
    assert_eq!(data_in, 14);
}

/// While a request is with the service, the report says it is in flight.
#[tokio::test]
async fn a_request_with_the_service_is_in_flight() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (closed_tx, mut closed) = mpsc::unbounded_channel();
    let builder = Server::builder()
        .heartbeat_interval(None)
        .observer(Recording(seen.clone(), closed_tx));
    let mut server = serve(builder, service()).await;
    let mut peer = RawPeer::connect(server.addr).await;
    peer.send(Frame::data("slow").with_request_id(1)).await;
    assert_eq!(peer.recv().await.unwrap().payload_text(), "slow");
    peer.stream.shutdown().await.unwrap();
    peer.read_to_end().await;
    within(closed.recv()).await.unwrap();
    server.shutdown().await;
    let seen = seen.lock().unwrap();
    let in_flight: Vec<usize> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Activity(a) => Some(a.in_flight),
            _ => None,
        })
        .collect();
    // The wake-up that read it left it with the service; a later one
    // answered it.
    assert_eq!(in_flight.first(), Some(&1), "{in_flight:?}");
    assert_eq!(in_flight.last(), Some(&0), "{in_flight:?}");
}

/// An answer too large to send is counted as an error, and the ERROR sent
/// in its place as a frame out.
#[tokio::test]
async fn an_answer_not_sent_is_counted() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (closed_tx, mut closed) = mpsc::unbounded_channel();
    let builder = Server::builder()
        .heartbeat_interval(None)
        .max_frame_size(1024)
        .observer(Recording(seen.clone(), closed_tx));
    let big = tower::service_fn(|_frame: Frame| async move {
        Ok::<_, std::convert::Infallible>(Some(Frame::data(vec![0u8; 2000])))
    });
    let mut server = serve(builder, big).await;
    let mut peer = RawPeer::connect(server.addr).await;
    peer.send(Frame::data("q").with_request_id(9)).await;
    let answer = peer.recv().await.unwrap();
    assert_eq!(answer.kind(), Kind::ERROR);
    assert!(answer.payload_text().starts_with("answer not sent"));
    peer.stream.shutdown().await.unwrap();
    peer.read_to_end().await;
    within(closed.recv()).await.unwrap();
    server.shutdown().await;
    let seen = seen.lock().unwrap();
    let reports: Vec<&Activity> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Activity(a) => Some(&**a),
            _ => None,
        })
        .collect();
    let not_sent: u32 = reports
        .iter()
        .map(|r| r.error_count(ErrorCause::AnswerNotSent))
        .sum();
    assert_eq!(not_sent, 1);
    let out: Vec<_> = reports.iter().flat_map(|r| r.frames_out.iter()).collect();
    assert_eq!(summed(&out), vec![("error", 1, wire_len(&answer))]);
}

#[test]
fn kind_labels_are_bounded() {
    assert_eq!(kind_label(Kind::DATA), "data");
    assert_eq!(kind_label(Kind::app(0x100).unwrap()), "application");
    assert_eq!(kind_label(Kind::app(0xFFF).unwrap()), "application");
    assert_eq!(kind_label(Kind::new(0x0).unwrap()), "reserved");
    assert_eq!(kind_label(Kind::new(0x0FF).unwrap()), "reserved");
    assert_eq!(kind_label(Kind::DISCONNECT), "disconnect");
}

/// `(label, frames, bytes)` summed by label, sorted.
fn summed(entries: &[(&'static str, u64, u64)]) -> Vec<(&'static str, u64, u64)> {
    let mut out: Vec<(&'static str, u64, u64)> = Vec::new();
    for (label, frames, bytes) in entries {
        match out.iter_mut().find(|(l, _, _)| l == label) {
            Some(entry) => {
                entry.1 += frames;
                entry.2 += bytes;
            }
            None => out.push((label, *frames, *bytes)),
        }
    }
    out.sort();
    out
}

/// `(label, 1, bytes)` for each frame, as a report counts them.
fn counted(frames: &[Frame]) -> Vec<(&'static str, u64, u64)> {
    frames
        .iter()
        .map(|f| (kind_label(f.kind()), 1, wire_len(f)))
        .collect()
}

/// Counts each call, for the fan-out test.
#[derive(Default)]
struct Calls {
    opened: std::sync::atomic::AtomicU32,
    frames_in: std::sync::atomic::AtomicU64,
    closed: std::sync::atomic::AtomicU32,
    rejected: std::sync::atomic::AtomicU32,
}

impl Observer for Calls {
    fn session_opened(&self, _session: &Session) {
        self.opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    fn session_activity(&self, _session: &Session, activity: &Activity) {
        self.frames_in.fetch_add(
            activity.frames_in.frames(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    fn session_closed(&self, _session: &Session, _reason: &CloseReason) {
        self.closed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    fn connection_rejected(&self, _rejection: msgi::Rejection) {
        self.rejected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Calls {
    fn get(&self) -> (u32, u64, u32, u32) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.opened.load(Relaxed),
            self.frames_in.load(Relaxed),
            self.closed.load(Relaxed),
            self.rejected.load(Relaxed),
        )
    }
}

#[tokio::test]
async fn a_pair_of_observers_and_a_shared_one_are_each_told_everything() {
    let (first, second) = (Arc::new(Calls::default()), Arc::new(Calls::default()));
    let (closed_tx, mut closed) = mpsc::unbounded_channel();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let builder = Server::builder()
        .heartbeat_interval(None)
        .max_connections(1)
        .observer((first.clone(), (second.clone(), Recording(seen, closed_tx))));
    let mut server = serve(builder, service()).await;
    let mut peer = RawPeer::connect(server.addr).await;
    let mut wire = Vec::new();
    for id in 1..=3 {
        wire.extend_from_slice(&peer.encode(Frame::data("x").with_request_id(id)));
    }
    peer.write(&wire).await;
    for _ in 0..3 {
        peer.recv().await.expect("an answer");
    }
    // The one place is taken: a second connection is rejected.
    let mut refused = RawPeer::connect(server.addr).await;
    let error = refused.recv().await.expect("the server's ERROR");
    assert_eq!(error.kind(), Kind::ERROR);
    peer.stream.shutdown().await.unwrap();
    peer.read_to_end().await;
    within(closed.recv()).await.unwrap();
    server.shutdown().await;
    assert_eq!(first.get(), (1, 3, 1, 1));
    assert_eq!(second.get(), (1, 3, 1, 1));
}

/// Sends every report on a channel, and `None` at the close.
struct Reports(mpsc::UnboundedSender<Option<Activity>>);

impl Observer for Reports {
    fn session_activity(&self, _session: &Session, activity: &Activity) {
        let _ = self.0.send(Some(activity.clone()));
    }
    fn session_closed(&self, _session: &Session, _reason: &CloseReason) {
        let _ = self.0.send(None);
    }
}

/// Depth changes add up to the depths each report gives, and to zero once
/// the session is gone, even one that ends with a request in flight.
#[tokio::test]
async fn depth_changes_add_up_to_the_depths_and_to_zero_at_the_end() {
    let (tx, mut reports) = mpsc::unbounded_channel();
    let builder = Server::builder()
        .heartbeat_interval(None)
        .observer(Reports(tx));
    let hang = tower::service_fn(|_frame: Frame| {
        std::future::pending::<Result<Option<Frame>, std::convert::Infallible>>()
    });
    let mut server = serve(builder, hang).await;
    let mut peer = RawPeer::connect(server.addr).await;
    peer.send(Frame::data("hang").with_request_id(1)).await;
    let mut sums = [0i64; 3];
    let mut add = |activity: &Activity| {
        let change = activity.depth_changes();
        sums[0] += change.write_queue;
        sums[1] += change.outbox;
        sums[2] += change.in_flight;
        let depths = [
            activity.write_queue as i64,
            activity.outbox as i64,
            activity.in_flight as i64,
        ];
        assert_eq!(sums, depths, "{activity:?}");
        depths
    };
    // Until the request is with the service.
    loop {
        let activity = within(reports.recv()).await.unwrap().expect("a report");
        if add(&activity)[2] == 1 {
            break;
        }
    }
    // The peer resets the connection: the session ends, its request unanswered.
    peer.stream.set_zero_linger().unwrap();
    drop(peer);
    let mut last = None;
    while let Some(activity) = within(reports.recv()).await.unwrap() {
        add(&activity);
        last = Some(activity);
    }
    let last = last.expect("a last report");
    assert_eq!((last.write_queue, last.outbox, last.in_flight), (0, 0, 0));
    server.shutdown().await;
}
