//! The metrics of a real server over loopback move by exactly what its
//! clients did.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::BytesMut;
use msgi::{Frame, FrameCodec, Framing, Kind, Server};
use msgi_metrics::Metrics;
use msgi_middleware::{Limit, RateLimitLayer, RatePolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tower::{Service, ServiceBuilder, ServiceExt};

const LIMIT: Duration = Duration::from_secs(5);

async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, fut).await.expect("in time")
}

/// The value of the sample `name` (labels included) in a scrape; 0 when
/// absent (a counter family leaves out its zero entries).
pub fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().unwrap())
}

/// Reads frames from `stream` until `n` are decoded.
async fn read_frames(stream: &mut TcpStream, buf: &mut BytesMut, n: usize) -> Vec<Frame> {
    let mut codec = FrameCodec::new();
    let mut frames = Vec::new();
    while frames.len() < n {
        if let Some(frame) = codec.decode(buf).unwrap() {
            frames.push(frame);
            continue;
        }
        let read = within(stream.read_buf(buf)).await.unwrap();
        assert!(read > 0, "closed after {} frames", frames.len());
    }
    frames
}

fn encoded(frame: &Frame) -> BytesMut {
    let mut out = BytesMut::new();
    FrameCodec::new().encode(frame.clone(), &mut out).unwrap();
    out
}

#[tokio::test]
async fn counters_move_by_exactly_what_the_clients_did() {
    let metrics = Metrics::new();
    let (ended_tx, mut ended) = mpsc::unbounded_channel();
    let server = Server::builder()
        .heartbeat_interval(None)
        .max_connections(1)
        .observer(metrics.clone())
        .on_disconnect(move |_, _| {
            let _ = ended_tx.send(());
        })
        .build()
        .unwrap();
    let echo =
        tower::service_fn(|f: Frame| async move { Ok::<_, std::convert::Infallible>(Some(f)) });
    let handler = ServiceBuilder::new()
        .layer(metrics.layer())
        .layer(RateLimitLayer::new(RatePolicy::Reject).per_session(Limit::frames(2.0).unwrap()))
        .service(echo);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(
        server
            .serve(listener, handler)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            }),
    );

    let before = metrics.encode();
    assert_eq!(sample(&before, "msgi_connections_opened_total"), 0.0);
    assert!(before.ends_with("# EOF\n"), "{before}");

    // Three requests (the third over the rate of 2 per second) and a PING.
    let sent = [
        Frame::data("one").with_request_id(1),
        Frame::data("two").with_request_id(2),
        Frame::data("three").with_request_id(3),
        Frame::ping("p"),
    ];
    let mut client = TcpStream::connect(addr).await.unwrap();
    let mut wire = BytesMut::new();
    for frame in &sent {
        wire.extend_from_slice(&encoded(frame));
    }
    client.write_all(&wire).await.unwrap();
    let mut buf = BytesMut::new();
    let answers = read_frames(&mut client, &mut buf, 4).await;
    let kinds: Vec<Kind> = answers.iter().map(Frame::kind).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == Kind::DATA).count(),
        2,
        "{answers:?}"
    );
    let refused = answers.iter().find(|f| f.kind() == Kind::ERROR).unwrap();
    assert_eq!(refused.payload_text(), "rate limited");
    assert!(kinds.contains(&Kind::PONG));

    let live = metrics.encode();
    assert_eq!(sample(&live, "msgi_connections"), 1.0);

    // The one place is taken: a second connection is told so and rejected.
    let mut second = TcpStream::connect(addr).await.unwrap();
    let full = read_frames(&mut second, &mut BytesMut::new(), 1).await;
    assert_eq!(full[0].kind(), Kind::ERROR);

    // The client leaves: its session ends, `peer_closed`.
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within(client.read_to_end(&mut rest)).await.unwrap();
    within(ended.recv()).await.unwrap();

    let text = metrics.encode();
    let len = |f: &Frame| f.wire_len() as f64;
    let of = |frames: &[Frame], kind: Kind| -> (f64, f64) {
        let of_kind = frames.iter().filter(|f| f.kind() == kind);
        (of_kind.clone().count() as f64, of_kind.map(len).sum())
    };
    assert_eq!(sample(&text, "msgi_connections"), 0.0, "{text}");
    assert_eq!(sample(&text, "msgi_connections_opened_total"), 1.0);
    assert_eq!(
        sample(
            &text,
            "msgi_connections_rejected_total{reason=\"server_full\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "msgi_connections_closed_total{reason=\"peer_closed\"}"
        ),
        1.0
    );
    for (kind, label) in [(Kind::DATA, "data"), (Kind::PING, "ping")] {
        let (n, bytes) = of(&sent, kind);
        assert_eq!(
            sample(
                &text,
                &format!("msgi_frames_received_total{{kind=\"{label}\"}}")
            ),
            n
        );
        assert_eq!(
            sample(
                &text,
                &format!("msgi_received_bytes_total{{kind=\"{label}\"}}")
            ),
            bytes
        );
    }
    for (kind, label) in [
        (Kind::DATA, "data"),
        (Kind::ERROR, "error"),
        (Kind::PONG, "pong"),
    ] {
        let (n, bytes) = of(&answers, kind);
        assert_eq!(
            sample(
                &text,
                &format!("msgi_frames_sent_total{{kind=\"{label}\"}}")
            ),
            n,
            "{label}"
        );
        assert_eq!(
            sample(&text, &format!("msgi_sent_bytes_total{{kind=\"{label}\"}}")),
            bytes
        );
    }
    let written: usize = answers.iter().map(|f| encoded(f).len()).sum();
    assert_eq!(sample(&text, "msgi_written_bytes_total"), written as f64);
    assert_eq!(
        sample(&text, "msgi_requests_rejected_total{layer=\"rate_limit\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "msgi_requests_rejected_total{layer=\"timeout\"}"),
        0.0
    );
    // Three requests answered (a PING is not a request).
    assert_eq!(sample(&text, "msgi_request_duration_seconds_count"), 3.0);
    assert_eq!(
        sample(&text, "msgi_request_duration_seconds_bucket{le=\"+Inf\"}"),
        3.0
    );
    assert_eq!(
        sample(&text, "msgi_request_duration_seconds_bucket{le=\"10.0\"}"),
        3.0
    );
    assert!(sample(&text, "msgi_request_duration_seconds_sum") < 10.0);
    // Nothing left queued or in flight.
    assert_eq!(sample(&text, "msgi_requests_in_flight"), 0.0);
    assert_eq!(sample(&text, "msgi_write_queue_bytes"), 0.0);
    assert_eq!(sample(&text, "msgi_outbox_frames"), 0.0);
    assert!(
        text.contains("# TYPE msgi_request_duration_seconds histogram"),
        "{text}"
    );

    stop.send(()).unwrap();
    within(task).await.unwrap().unwrap();
}

/// A request in flight is in the gauge while it waits, and out of it once
/// answered.
#[tokio::test]
async fn in_flight_gauge_follows_a_waiting_request() {
    let metrics = Metrics::new();
    let server = Server::builder()
        .heartbeat_interval(None)
        .observer(metrics.clone())
        .build()
        .unwrap();
    let (release_tx, release) = tokio::sync::watch::channel(false);
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let handler = tower::service_fn(move |f: Frame| {
        let mut release = release.clone();
        let arrived = arrived_tx.clone();
        async move {
            let _ = arrived.send(());
            let _ = release.wait_for(|go| *go).await;
            Ok::<_, std::convert::Infallible>(Some(f))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(server.serve(listener, handler));
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(&encoded(&Frame::data("wait").with_request_id(1)))
        .await
        .unwrap();
    within(arrived.recv()).await.unwrap();
    // The report of the wake-up that called the handler comes at its end:
    // wait for it without sleeping, by yielding until the gauge moves.
    within(async {
        while sample(&metrics.encode(), "msgi_requests_in_flight") != 1.0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    release_tx.send(true).unwrap();
    read_frames(&mut client, &mut BytesMut::new(), 1).await;
    within(async {
        while sample(&metrics.encode(), "msgi_requests_in_flight") != 0.0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    task.abort();
}

/// tower's LoadShed and Timeout refuse with errors: counted by layer.
#[tokio::test(start_paused = true)]
async fn tower_refusals_are_counted_by_layer() {
    let metrics = Metrics::new();
    let never = tower::service_fn(|_: Frame| {
        std::future::pending::<Result<Option<Frame>, msgi::BoxError>>()
    });
    let mut shed = ServiceBuilder::new()
        .layer(metrics.layer())
        .load_shed()
        .concurrency_limit(1)
        .service(never);
    // The first call takes the one place (and waits forever); the second is shed.
    let first = shed.ready().await.unwrap().call(Frame::data("a"));
    let error = shed
        .ready()
        .await
        .unwrap()
        .call(Frame::data("b"))
        .await
        .unwrap_err();
    assert!(error.is::<tower::load_shed::error::Overloaded>());
    drop(first);

    let mut timed = ServiceBuilder::new()
        .layer(metrics.layer())
        .timeout(Duration::from_millis(10))
        .service(never);
    let error = timed
        .ready()
        .await
        .unwrap()
        .call(Frame::data("c"))
        .await
        .unwrap_err();
    assert!(error.is::<tower::timeout::error::Elapsed>());

    let text = metrics.encode();
    assert_eq!(
        sample(&text, "msgi_requests_rejected_total{layer=\"load_shed\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "msgi_requests_rejected_total{layer=\"timeout\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "msgi_requests_rejected_total{layer=\"rate_limit\"}"),
        0.0
    );
}
